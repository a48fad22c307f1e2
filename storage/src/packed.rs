//! A chunk's samples packed for memory, not for disk: the decoded cache's
//! second tier.
//!
//! Decoded samples take 16 bytes each; a range-coded chunk takes about 1.4
//! but costs 60 ns a sample to decode. This form sits between: timestamps as
//! differences from the previous one in units of the largest power of ten that
//! divides them all, values (when every one is an exact short decimal) as
//! differences of their scaled integers, otherwise as raw `f64`s; each
//! stream's differences in the narrowest of 1, 2, 4 or 8 bytes that holds them
//! all. Scraped data packs to 4 to 6 bytes a sample and unpacks in one or two
//! nanoseconds a sample (prefix sums, no decisions). Unpacking gives back the
//! same bits that were packed, NaNs and negative zeros included.

use crate::codec::{decimal_exponent, timestamp_scale, to_decimal, POW10};
use crate::model::Sample;

/// Differences, each in the narrowest width that holds all of them.
enum Lanes {
    I8(Box<[i8]>),
    I16(Box<[i16]>),
    I32(Box<[i32]>),
    I64(Box<[i64]>),
}

impl Lanes {
    fn new(deltas: &[i64]) -> Self {
        let (lo, hi) = deltas
            .iter()
            .fold((0i64, 0i64), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        let fits = |min: i64, max: i64| lo >= min && hi <= max;
        if fits(i8::MIN.into(), i8::MAX.into()) {
            Self::I8(deltas.iter().map(|&d| d as i8).collect())
        } else if fits(i16::MIN.into(), i16::MAX.into()) {
            Self::I16(deltas.iter().map(|&d| d as i16).collect())
        } else if fits(i32::MIN.into(), i32::MAX.into()) {
            Self::I32(deltas.iter().map(|&d| d as i32).collect())
        } else {
            Self::I64(deltas.into())
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::I8(d) => d.len(),
            Self::I16(d) => d.len() * 2,
            Self::I32(d) => d.len() * 4,
            Self::I64(d) => d.len() * 8,
        }
    }

    /// Calls `f` with every difference, widened (one match, then a tight loop).
    #[inline]
    fn for_each(&self, mut f: impl FnMut(i64)) {
        match self {
            Self::I8(d) => d.iter().for_each(|&x| f(x.into())),
            Self::I16(d) => d.iter().for_each(|&x| f(x.into())),
            Self::I32(d) => d.iter().for_each(|&x| f(x.into())),
            Self::I64(d) => d.iter().for_each(|&x| f(x)),
        }
    }
}

enum Values {
    /// `m / 10^k`, `m` rebuilt from the first one and the differences.
    Decimal {
        first: i64,
        k: u8,
        deltas: Lanes,
    },
    Raw(Box<[f64]>),
}

pub(crate) struct PackedChunk {
    len: usize,
    first_time: i64,
    /// Timestamps are multiples of this power of ten; differences are in its units.
    time_unit: i64,
    time_deltas: Lanes,
    values: Values,
}

impl PackedChunk {
    pub fn pack(samples: &[Sample]) -> Self {
        let Some(first) = samples.first() else {
            return Self {
                len: 0,
                first_time: 0,
                time_unit: 1,
                time_deltas: Lanes::I8(Box::new([])),
                values: Values::Raw(Box::new([])),
            };
        };
        // The unit divides every difference as it divides every timestamp;
        // differences that overflow are kept wrapped, in units of one (exact
        // in two's complement, where dividing a wrapped one would not be).
        let exact: Option<Vec<i64>> = samples
            .windows(2)
            .map(|w| w[1].timestamp.checked_sub(w[0].timestamp))
            .collect();
        let (time_unit, time_deltas) = match exact {
            Some(deltas) => {
                let unit = 10i64.pow(timestamp_scale(samples).into());
                (
                    unit,
                    deltas.into_iter().map(|d| d / unit).collect::<Vec<_>>(),
                )
            }
            None => (
                1,
                samples
                    .windows(2)
                    .map(|w| w[1].timestamp.wrapping_sub(w[0].timestamp))
                    .collect(),
            ),
        };
        let values = match decimal_exponent(samples) {
            Some(k) => {
                let ms: Vec<i64> = samples
                    .iter()
                    .map(|s| to_decimal(s.value, k.into()).expect("decimal_exponent checked it"))
                    .collect();
                // |m| <= 2^53: the differences do not overflow.
                let deltas: Vec<i64> = ms.windows(2).map(|w| w[1] - w[0]).collect();
                Values::Decimal {
                    first: ms[0],
                    k,
                    deltas: Lanes::new(&deltas),
                }
            }
            None => Values::Raw(samples.iter().map(|s| s.value).collect()),
        };
        Self {
            len: samples.len(),
            first_time: first.timestamp,
            time_unit,
            time_deltas: Lanes::new(&time_deltas),
            values,
        }
    }

    /// Memory held, for the cache's budget.
    pub fn bytes(&self) -> usize {
        let values = match &self.values {
            Values::Decimal { deltas, .. } => deltas.bytes(),
            Values::Raw(v) => v.len() * 8,
        };
        std::mem::size_of::<Self>() + self.time_deltas.bytes() + values
    }

    /// Appends the samples to `out`, exactly as they were packed.
    pub fn unpack_into(&self, out: &mut Vec<Sample>) {
        if self.len == 0 {
            return;
        }
        let start = out.len();
        out.reserve(self.len);
        let mut t = self.first_time;
        out.push(Sample::new(t, 0.0));
        let unit = self.time_unit;
        self.time_deltas.for_each(|d| {
            t = t.wrapping_add(d.wrapping_mul(unit));
            out.push(Sample::new(t, 0.0));
        });
        let samples = &mut out[start..];
        match &self.values {
            Values::Decimal { first, k, deltas } => {
                let scale = POW10[usize::from(*k)];
                let mut m = *first;
                samples[0].value = m as f64 / scale;
                let mut rest = samples[1..].iter_mut();
                deltas.for_each(|d| {
                    m += d;
                    if let Some(s) = rest.next() {
                        s.value = m as f64 / scale;
                    }
                });
            }
            Values::Raw(values) => {
                for (s, &v) in samples.iter_mut().zip(values.iter()) {
                    s.value = v;
                }
            }
        }
    }

    pub fn unpack(&self) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.len);
        self.unpack_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same_bits(a: &[Sample], b: &[Sample]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.timestamp == y.timestamp && x.value.to_bits() == y.value.to_bits())
    }

    #[test]
    fn scraped_data_packs_into_a_few_bytes_a_sample() {
        // Millisecond timestamps jittered around a 10 s grid, a gauge with
        // two decimals moving by a few units.
        let samples: Vec<Sample> = (0..720i64)
            .map(|i| {
                let jitter = (i * 7919 % 11) - 5;
                let value = 40.0 + ((i * 31 % 200) as f64 - 100.0) / 100.0;
                Sample::new(
                    1_767_225_600_000_000_000 + i * 10_000_000_000 + jitter * 1_000_000,
                    (value * 100.0).round() / 100.0,
                )
            })
            .collect();
        let packed = PackedChunk::pack(&samples);
        assert!(same_bits(&packed.unpack(), &samples));
        assert!(packed.bytes() <= 720 * 4 + 128, "{} bytes", packed.bytes());
    }

    #[test]
    fn values_that_are_not_short_decimals_pack_raw_and_come_back_exactly() {
        let samples = vec![
            Sample::new(-5, f64::NAN),
            Sample::new(0, -0.0),
            Sample::new(3, f64::INFINITY),
            Sample::new(i64::MAX, 0.1 + 0.2),
            Sample::new(i64::MIN, f64::from_bits(0x7ff8_dead_beef_0001)),
        ];
        assert!(same_bits(&PackedChunk::pack(&samples).unpack(), &samples));
        assert!(PackedChunk::pack(&[]).unpack().is_empty());
        let one = [Sample::new(7, 1.5)];
        assert!(same_bits(&PackedChunk::pack(&one).unpack(), &one));
    }

    proptest! {
        #[test]
        fn any_samples_come_back_bit_for_bit(
            raw in prop::collection::vec((any::<i64>(), prop_oneof![
                any::<f64>(),
                (-1_000_000i64..1_000_000).prop_map(|m| m as f64 / 100.0),
                (0u64..1 << 53).prop_map(|m| m as f64),
            ]), 0..300),
            sorted in any::<bool>(),
        ) {
            let mut samples: Vec<Sample> =
                raw.into_iter().map(|(t, v)| Sample::new(t, v)).collect();
            if sorted {
                samples.sort_by_key(|s| s.timestamp);
            }
            let mut out = vec![Sample::new(1, 2.0)];
            PackedChunk::pack(&samples).unpack_into(&mut out);
            prop_assert!(same_bits(&out[1..], &samples));
            prop_assert_eq!(out[0].timestamp, 1);
        }
    }
}

//! Format 1's modelled encodings, kept so chunks written before format 2
//! still decode: grid timestamps and modelled decimals coded as chains of
//! adaptive binary decisions (`range`). The encoders only run in tests (to
//! check that format 1 still decodes what it encoded); a node writes format 2.

#[cfg(test)]
use super::range::RangeEncoder;
use super::range::{RangeDecoder, UintModel};
use super::{
    get_uvarint, grid_advance, unzigzag, CodecError, DecimalSteps, TimeStream, ValueStream,
    GRID_OVERFLOW,
};
#[cfg(test)]
use super::{grid_interval, grid_split, put_uvarint, zigzag};
#[cfg(test)]
use crate::model::Sample;

#[cfg(test)]
/// Timestamps as offsets from a regular grid, range coded.
///
/// Scrapers sample on a grid (interval plus a per-target phase) with a little jitter
/// around each grid point. Delta-of-delta sees the jitter twice (it differences two
/// independent offsets); offsets from the grid see it once. Per sample the coder
/// stores how many intervals the grid advances (almost always one) and the offset.
/// A large offset (the target restarted, the phase moved) re-anchors the grid on the
/// sample so one disturbance does not cost every later sample. `None` when the
/// arithmetic would overflow (timestamps spread over most of the i64 range).
pub(super) fn grid_timestamps(samples: &[Sample], scale: u8, min_time: i64) -> Option<Vec<u8>> {
    let div = 10i64.pow(scale as u32);
    let ts: Vec<i64> = samples.iter().map(|s| s.timestamp / div).collect();
    let first = *ts.first()?;
    let interval = grid_interval(&ts);
    let mut out = vec![scale];
    put_uvarint(&mut out, first.checked_sub(min_time / div)? as u64);
    put_uvarint(&mut out, interval as u64);
    let mut enc = RangeEncoder::new(out);
    let (mut steps, mut offsets) = grid_models();
    let mut grid = first;
    for &t in &ts[1..] {
        let (step, offset) = grid_split(t.checked_sub(grid)?, interval);
        steps.encode(&mut enc, zigzag(step.checked_sub(1)?));
        offsets.encode(&mut enc, zigzag(offset));
        grid = grid_advance(grid, step, offset, interval)?;
    }
    Some(enc.finish())
}

const GRID_STEP_BITS: u32 = 1;
const GRID_OFFSET_BITS: u32 = 5;

/// Grid steps are almost always one interval (coded as 0); jitter offsets are
/// usually a few units either side of the grid.
fn grid_models() -> (UintModel, UintModel) {
    (
        UintModel::with_small_bits(GRID_STEP_BITS),
        UintModel::with_small_bits(GRID_OFFSET_BITS),
    )
}

/// Reads grid timestamps one at a time (so a decode can interleave them with
/// the values: the two streams' decisions are independent, and the CPU
/// overlaps them).
pub(super) struct GridTimestamps<'a> {
    dec: RangeDecoder<'a>,
    steps: UintModel,
    offsets: UintModel,
    grid: i64,
    interval: i64,
    mul: i64,
}

impl<'a> GridTimestamps<'a> {
    /// The reader and the first timestamp.
    pub(super) fn open(bytes: &'a [u8], min_time: i64) -> Result<(Self, i64), CodecError> {
        let scale = *bytes.first().ok_or(CodecError::Truncated)?;
        if scale > 18 {
            return Err(CodecError::Malformed("timestamp scale over 18"));
        }
        let mul = 10i64.pow(scale as u32);
        let mut pos = 1;
        let first = (min_time / mul)
            .checked_add_unsigned(get_uvarint(bytes, &mut pos)?)
            .ok_or(GRID_OVERFLOW)?;
        let interval = i64::try_from(get_uvarint(bytes, &mut pos)?).map_err(|_| GRID_OVERFLOW)?;
        if interval < 1 {
            return Err(CodecError::Malformed("grid interval below one"));
        }
        let (steps, offsets) = grid_models();
        let reader = Self {
            dec: RangeDecoder::new(&bytes[pos..]),
            steps,
            offsets,
            grid: first,
            interval,
            mul,
        };
        Ok((reader, first.checked_mul(mul).ok_or(GRID_OVERFLOW)?))
    }
}

impl TimeStream for GridTimestamps<'_> {
    #[inline(always)]
    fn next(&mut self) -> Result<i64, CodecError> {
        let step = unzigzag(self.steps.decode_small::<GRID_STEP_BITS>(&mut self.dec)?)
            .checked_add(1)
            .ok_or(GRID_OVERFLOW)?;
        let offset = unzigzag(
            self.offsets
                .decode_small::<GRID_OFFSET_BITS>(&mut self.dec)?,
        );
        let t = step
            .checked_mul(self.interval)
            .and_then(|d| self.grid.checked_add(d))
            .and_then(|g| g.checked_add(offset))
            .ok_or(GRID_OVERFLOW)?;
        self.grid = grid_advance(self.grid, step, offset, self.interval).ok_or(GRID_OVERFLOW)?;
        t.checked_mul(self.mul).ok_or(GRID_OVERFLOW)
    }
}

#[cfg(test)]
/// Modelled decimals (see `decimal_model_residuals`), range coded.
pub(super) fn decimal_model_values(samples: &[Sample], k: u8, out: &mut Vec<u8>) {
    let residuals = super::decimal_model_residuals(samples, k, out);
    let mut enc = RangeEncoder::new(std::mem::take(out));
    let mut model = UintModel::default();
    for r in residuals {
        model.encode(&mut enc, r);
    }
    *out = enc.finish();
}

/// Reads modelled decimals one at a time (see [`GridTimestamps`]).
pub(super) struct DecimalModelValues<'a> {
    dec: RangeDecoder<'a>,
    model: UintModel,
    steps: DecimalSteps,
}

impl<'a> DecimalModelValues<'a> {
    /// The reader and the first value.
    pub(super) fn open(bytes: &'a [u8]) -> Result<(Self, f64), CodecError> {
        let (steps, first, pos) = DecimalSteps::open(bytes)?;
        let reader = Self {
            dec: RangeDecoder::new(&bytes[pos..]),
            model: UintModel::default(),
            steps,
        };
        Ok((reader, first))
    }
}

impl ValueStream for DecimalModelValues<'_> {
    #[inline(always)]
    fn next(&mut self) -> Result<f64, CodecError> {
        let residual = self.model.decode_general(&mut self.dec)?;
        self.steps.next(residual)
    }
}

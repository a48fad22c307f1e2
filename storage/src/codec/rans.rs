//! Adaptive multi-symbol rANS for chunk format 2's modelled encodings.
//!
//! Format 1 coded every integer as a chain of adaptive binary decisions (a grid
//! timestamp took six, a value five or more), each a multiply, a compare and a
//! renormalisation that the next one waits on. Here a whole symbol (a jitter
//! offset, a residual's bit length with its top bit) is one step: the symbol is
//! found by comparing the state's slot against the model's cumulative
//! frequencies all at once (a few SIMD compares), then one multiply and at most
//! one 16-bit refill. Bits that carry no skew (a long residual's low bits) go to
//! a separate plain bit stream, off the state's dependency chain.
//!
//! Models adapt as they code, like format 1's: after each symbol the cumulative
//! frequencies move toward it by a shift that starts large (so a chunk of a few
//! hundred samples learns its distribution quickly) and settles at
//! `RATE_LIMIT`. rANS decodes in the order opposite to encoding, so the encoder
//! runs the models forward, records each symbol's interval, and codes the
//! intervals backwards.

use super::CodecError;

/// Probabilities are in units of 2^-15.
const PREC: u32 = 15;
const TOTAL: u32 = 1 << PREC;
/// The state stays in [2^16, 2^32) between symbols; it is refilled 16 bits at a time.
const STATE_LOW: u32 = 1 << 16;
const RATE_LIMIT: u32 = 7;

/// An adaptive distribution over `N` symbols (`2 <= N <= 64`).
///
/// `upper[j]` is one less than the cumulative frequency below symbol `j + 1`
/// (`upper[N - 1]` is `TOTAL - 1`), so the symbol a slot falls in is the number
/// of entries below the slot. Every symbol keeps a frequency of at least one:
/// the model's own probabilities (`upper[j] - j`) span `TOTAL - N`, and symbol
/// `i` gets one unit more.
#[derive(Clone)]
pub struct SymbolModel<const N: usize> {
    upper: [i16; N],
    seen: u8,
}

impl<const N: usize> Default for SymbolModel<N> {
    fn default() -> Self {
        const { assert!(N >= 2 && N <= 64) };
        let spread = TOTAL - N as u32;
        let mut upper = [0i16; N];
        for (j, u) in upper.iter_mut().enumerate() {
            let i = j as u32 + 1;
            // Uniform: the model's boundary i at spread * i / N, plus i reserved units.
            *u = (spread * i / N as u32 + i - 1) as i16;
        }
        Self { upper, seen: 0 }
    }
}

impl<const N: usize> SymbolModel<N> {
    /// A prior of about one symbol in sixteen of the alphabet (fitted on the
    /// storage bench's data: 2 for grid offsets, 3 for residuals).
    const WEIGHTS: [u16; WEIGHTS] = weights(N.div_ceil(16) as u32);

    /// The cumulative frequency below `s` and its frequency.
    #[inline(always)]
    fn interval(&self, s: usize) -> (u32, u32) {
        let start = if s == 0 {
            0
        } else {
            self.upper[s - 1] as u32 + 1
        };
        let end = self.upper[s] as u32 + 1;
        (start, end - start)
    }

    /// The symbol whose interval holds `slot` (`slot < TOTAL`).
    #[inline(always)]
    fn find(&self, slot: u32) -> usize {
        let slot = slot as i16;
        // A fixed-length count of compares, in 16-bit lanes: it vectorises.
        self.upper.iter().fold(0i16, |n, &u| n + (u < slot) as i16) as usize
    }

    /// Moves the distribution toward `s`.
    #[inline(always)]
    fn update(&mut self, s: usize) {
        let w = Self::WEIGHTS[self.seen as usize];
        self.seen += ((self.seen as usize) < WEIGHTS - 1) as u8;
        let spread = (TOTAL - N as u32) as u16;
        // 16-bit lanes throughout (the index too), so it vectorises.
        let s = s as i16;
        for (j, u) in (0i16..).zip(self.upper.iter_mut()) {
            // The model's own boundary j + 1 (without the reserved units).
            let c = (*u - j) as u16;
            let down = ((c as u32 * w as u32) >> 16) as u16;
            let up = (((spread - c) as u32 * w as u32) >> 16) as u16;
            let c = if j < s { c - down } else { c + up };
            *u = c as i16 + j;
        }
    }
}

/// How far an update moves the distribution, in units of 2^-16, after `seen`
/// symbols: `1 / (seen + PRIOR + 1)`, the running average of what the model
/// has seen with `PRIOR` symbols' weight on the uniform start, until it
/// settles at 2^-RATE_LIMIT and keeps tracking drift. A small prior learns a
/// stream that repeats one symbol (a constant series) in a few bytes.
const fn weights(prior: u32) -> [u16; WEIGHTS] {
    let mut t = [0u16; WEIGHTS];
    let mut i = 0;
    while i < WEIGHTS {
        let mut d = i as u32 + prior + 1;
        if d > 1 << RATE_LIMIT {
            d = 1 << RATE_LIMIT;
        }
        t[i] = ((65536 + d / 2) / d) as u16;
        i += 1;
    }
    t
}

const WEIGHTS: usize = 1 << RATE_LIMIT;

/// Records symbols forward and codes them backward (see the module comment).
#[derive(Default)]
pub struct RansEncoder {
    intervals: Vec<(u16, u16)>,
    bits: BitSink,
}

impl RansEncoder {
    #[inline]
    pub fn symbol<const N: usize>(&mut self, model: &mut SymbolModel<N>, s: usize) {
        debug_assert!(s < N);
        let (start, freq) = model.interval(s);
        // `freq <= TOTAL - N + 1 < 2^16` and `start < TOTAL`.
        self.intervals.push((start as u16, freq as u16));
        model.update(s);
    }

    /// The low `n` bits of `value` (`n <= 64`) into the plain bit stream.
    #[inline]
    pub fn bits(&mut self, value: u64, n: u32) {
        self.bits.put(value, n);
    }

    /// Appends the section to `out`: the coded state and its words from the
    /// front, the plain bits from the back (byte order reversed), so neither
    /// needs a length.
    pub fn finish(self, out: &mut Vec<u8>) {
        let mut x = STATE_LOW;
        let mut words: Vec<u16> = Vec::with_capacity(self.intervals.len() / 2 + 2);
        for &(start, freq) in self.intervals.iter().rev() {
            let (start, freq) = (start as u32, freq as u32);
            // Shift out a word if coding would leave the state's range.
            if u64::from(x) >= (u64::from(STATE_LOW >> PREC) << 16) * u64::from(freq) {
                words.push(x as u16);
                x >>= 16;
            }
            x = ((x / freq) << PREC) + (x % freq) + start;
        }
        let coded = out.len();
        out.extend_from_slice(&x.to_le_bytes());
        for w in words.iter().rev() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let bits = self.bits.finish();
        if bits.is_empty() {
            // Trailing zero bytes carry nothing: the decoder reads zeros past the end.
            while out.len() > coded && out.last() == Some(&0) {
                out.pop();
            }
        }
        out.extend(bits.iter().rev());
    }
}

/// Reads a section [`RansEncoder::finish`] wrote.
///
/// Bytes past the end read as zero, so a damaged section decodes to wrong
/// numbers rather than failing or panicking: the chunk checksum is what rejects
/// damage before it gets here.
pub struct RansDecoder<'a> {
    input: &'a [u8],
    pos: usize,
    x: u32,
    bits: BitSource<'a>,
}

impl<'a> RansDecoder<'a> {
    pub fn new(section: &'a [u8]) -> Self {
        let mut x = [0u8; 4];
        for (i, b) in x.iter_mut().enumerate() {
            *b = section.get(i).copied().unwrap_or(0);
        }
        Self {
            input: section,
            pos: 4,
            x: u32::from_le_bytes(x),
            bits: BitSource::new(section),
        }
    }

    #[inline(always)]
    pub fn symbol<const N: usize>(&mut self, model: &mut SymbolModel<N>) -> usize {
        let slot = self.x & (TOTAL - 1);
        let s = model.find(slot);
        let (start, freq) = model.interval(s);
        // `slot >= start` by the search and `freq * 2^17 <= 2^32`: no overflow.
        self.x = freq * (self.x >> PREC) + slot - start;
        model.update(s);
        // One refill restores the range: the state was at least 2^16, so it is
        // now at least 2 * freq >= 2, and a word lifts it to 2^17 or more.
        let due = self.x < STATE_LOW;
        let word = self.word() as u32;
        self.x = if due { (self.x << 16) | word } else { self.x };
        self.pos += 2 * due as usize;
        s
    }

    #[inline(always)]
    fn word(&self) -> u16 {
        match self.input.get(self.pos..self.pos + 2) {
            Some(w) => u16::from_le_bytes([w[0], w[1]]),
            None => self.input.get(self.pos).copied().unwrap_or(0) as u16,
        }
    }

    /// `n` plain bits (`n <= 64`).
    #[inline(always)]
    pub fn bits(&mut self, n: u32) -> u64 {
        self.bits.get(n)
    }
}

/// Bits packed least significant first.
#[derive(Default)]
struct BitSink {
    out: Vec<u8>,
    acc: u64,
    filled: u32,
}

impl BitSink {
    fn put(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        let mut left = n;
        let mut v = if n == 64 {
            value
        } else {
            value & ((1u64 << n) - 1)
        };
        while left > 0 {
            let take = left.min(32);
            let part = v & ((1u64 << take) - 1);
            self.acc |= part << self.filled;
            self.filled += take;
            v = v.checked_shr(take).unwrap_or(0);
            left -= take;
            while self.filled >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.filled -= 8;
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Reads a [`BitSink`]'s bytes stored in reverse at the end of `bytes`. A
/// valid section never reads past the bits it holds; a damaged one reads the
/// coded words in front of them, then zeros.
struct BitSource<'a> {
    bytes: &'a [u8],
    /// Bits consumed.
    pos: usize,
}

impl<'a> BitSource<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// `n <= 64` bits.
    #[inline(always)]
    fn get(&mut self, n: u32) -> u64 {
        if n <= 56 {
            return self.get_short(n);
        }
        let low = self.get_short(32);
        low | self.get_short(n - 32) << 32
    }

    #[inline(always)]
    fn get_short(&mut self, n: u32) -> u64 {
        // The eight bytes ending at the current one, read so that the current
        // byte is the least significant.
        let end = self.bytes.len().saturating_sub(self.pos >> 3);
        let word = match end.checked_sub(8).map(|start| &self.bytes[start..end]) {
            Some(w) => u64::from_be_bytes(w.try_into().expect("eight bytes")),
            None => self.head_word(end),
        };
        let v = (word >> (self.pos & 7)) & ((1u64 << n) - 1);
        self.pos += n as usize;
        v
    }

    #[cold]
    fn head_word(&self, end: usize) -> u64 {
        let mut w = [0u8; 8];
        w[8 - end..].copy_from_slice(&self.bytes[..end]);
        u64::from_be_bytes(w)
    }
}

/// Residual symbols: values below 16 exactly; a longer value's bit length (5 to
/// 19) with the bit below its leading one; longer values escape.
pub const UINT_SYMBOLS: usize = 48;
const UINT_EXACT: u64 = 16;
const UINT_FIRST_LEN: u32 = 5;
const UINT_LAST_LEN: u32 = 19;
const UINT_ESCAPE: usize = 16 + 2 * (UINT_LAST_LEN - UINT_FIRST_LEN + 1) as usize;

/// Codes an integer that is usually small through `model`.
#[inline]
pub fn encode_uint(enc: &mut RansEncoder, model: &mut SymbolModel<UINT_SYMBOLS>, v: u64) {
    if v < UINT_EXACT {
        enc.symbol(model, v as usize);
        return;
    }
    let len = 64 - v.leading_zeros();
    if len <= UINT_LAST_LEN {
        let top = (v >> (len - 2)) & 1;
        let s = 16 + 2 * (len - UINT_FIRST_LEN) as usize + top as usize;
        enc.symbol(model, s);
        enc.bits(v, len - 2);
    } else {
        enc.symbol(model, UINT_ESCAPE);
        enc.bits((len - UINT_LAST_LEN - 1) as u64, 6);
        enc.bits(v, len - 1);
    }
}

/// What a residual symbol contributes: the value's high bits and how many plain
/// bits follow.
const UINT_TABLE: [(u64, u8); UINT_SYMBOLS] = {
    let mut t = [(0u64, 0u8); UINT_SYMBOLS];
    let mut s = 0;
    while s < UINT_SYMBOLS {
        t[s] = if s < UINT_EXACT as usize {
            (s as u64, 0)
        } else if s < UINT_ESCAPE {
            let len = UINT_FIRST_LEN + ((s - 16) / 2) as u32;
            let top = ((s - 16) % 2) as u64;
            ((0b10 | top) << (len - 2), (len - 2) as u8)
        } else {
            (0, 0)
        };
        s += 1;
    }
    t
};

#[inline(always)]
pub fn decode_uint(
    dec: &mut RansDecoder<'_>,
    model: &mut SymbolModel<UINT_SYMBOLS>,
) -> Result<u64, CodecError> {
    let s = dec.symbol(model);
    if s >= UINT_ESCAPE {
        return decode_long(dec, s);
    }
    let (high, n) = UINT_TABLE[s];
    Ok(high | dec.bits(n as u32))
}

#[cold]
#[inline(never)]
fn decode_long(dec: &mut RansDecoder<'_>, s: usize) -> Result<u64, CodecError> {
    if s != UINT_ESCAPE {
        return Err(CodecError::Malformed("reserved integer symbol"));
    }
    let len = dec.bits(6) as u32 + UINT_LAST_LEN + 1;
    if len > 64 {
        return Err(CodecError::Malformed("integer longer than 64 bits"));
    }
    Ok(1u64.checked_shl(len - 1).unwrap_or(0) | dec.bits(len - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(values: &[u64]) -> usize {
        let mut enc = RansEncoder::default();
        let mut model = SymbolModel::default();
        for &v in values {
            encode_uint(&mut enc, &mut model, v);
        }
        let mut bytes = Vec::new();
        enc.finish(&mut bytes);
        let mut dec = RansDecoder::new(&bytes);
        let mut model = SymbolModel::default();
        for &v in values {
            assert_eq!(decode_uint(&mut dec, &mut model).unwrap(), v);
        }
        bytes.len()
    }

    /// Every symbol keeps a frequency of at least one however long one symbol
    /// repeats, and the boundaries stay ordered.
    #[test]
    fn every_symbol_stays_codable() {
        for s in [0, 1, 17, 47] {
            let mut m = SymbolModel::<48>::default();
            for _ in 0..100_000 {
                m.update(s);
                for t in 0..48 {
                    let (start, freq) = m.interval(t);
                    assert!(freq >= 1, "symbol {t} after {s}s");
                    assert!(start + freq <= TOTAL);
                }
            }
        }
    }

    #[test]
    fn zeros_cost_almost_nothing() {
        assert!(round_trip(&[0; 1000]) < 16);
    }

    #[test]
    fn extremes_round_trip() {
        round_trip(&[
            u64::MAX,
            0,
            1,
            2,
            3,
            u64::MAX - 1,
            1 << 63,
            4,
            5,
            7,
            8,
            15,
            16,
        ]);
        round_trip(&(0..64).map(|b| 1u64 << b).collect::<Vec<_>>());
        round_trip(&(1..64).map(|b| (1u64 << b) - 1).collect::<Vec<_>>());
    }

    #[test]
    fn small_values_cost_about_their_entropy() {
        // Uniform over 0..16: 4 bits of entropy each.
        let values: Vec<u64> = (0..4000u64).map(|i| (i * 7919) % 16).collect();
        let bytes = round_trip(&values);
        assert!(bytes * 8 < 4000 * 9 / 2, "{bytes} bytes");
    }

    proptest! {
        #[test]
        fn arbitrary_integers_round_trip(values in prop::collection::vec(
            prop_oneof![any::<u64>(), 0u64..4, 0u64..1000, 0u64..1 << 20], 0..500)) {
            round_trip(&values);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            let mut dec = RansDecoder::new(&bytes);
            let mut model = SymbolModel::default();
            for _ in 0..300 {
                let _ = decode_uint(&mut dec, &mut model);
            }
        }
    }
}

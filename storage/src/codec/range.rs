//! Adaptive binary range coding for chunk format 1's modelled encodings
//! (format 2 codes them with `rans`; the encoder here only runs in tests).
//!
//! A carry-propagating range coder over binary decisions with adaptive
//! probabilities (the scheme LZMA popularised), plus a model for unsigned integers:
//! the bit length is coded through an adaptive binary tree, the bits below the
//! leading one adaptively (all of them for short integers, the top three for long
//! ones), the rest directly. Residuals of a good predictor are
//! concentrated near zero, and this spends close to their entropy on them, where a
//! fixed bucket code (Gorilla's) or a varint spends whole bits or bytes.

use super::CodecError;

const PROB_BITS: u32 = 12;
const PROB_ONE: u16 = 1 << PROB_BITS;
/// Adaptation: a model moves by about 1/(n+2) of the gap after its n-th bit (close
/// to counting frequencies while it is young, which matters in a chunk of a few
/// hundred samples), then by 2^-RATE_LIMIT so it keeps tracking drift.
const RATE_LIMIT: u32 = 6;
const TOP: u32 = 1 << 24;
/// Direct bits per division: the range keeps at least 2^(24 - 16) = 256 steps.
const DIRECT_STEP: u32 = 16;
/// Bit lengths below 15 take a 4-level tree; 15 escapes to a 6-level tree for the
/// rest (15..=64), so typical residuals cost four decisions for their length.
const LENGTH_TREE_BITS: u32 = 4;
const LENGTH_ESCAPE: u32 = (1 << LENGTH_TREE_BITS) - 1;
const LONG_LENGTH_BITS: u32 = 6;

/// Probability that the next bit is 0, in units of 2^-12, and how many bits the
/// model has seen (up to the last entry of `RATES`, after which the rate stays).
#[derive(Clone, Copy)]
pub struct BitModel {
    p: u16,
    seen: u8,
}

impl Default for BitModel {
    fn default() -> Self {
        Self {
            p: PROB_ONE / 2,
            seen: 0,
        }
    }
}

impl BitModel {
    #[inline]
    fn bound(&self, range: u32) -> u32 {
        (range >> PROB_BITS) * self.p as u32
    }

    #[inline]
    fn update(&mut self, bit: bool) {
        let rate = RATES[self.seen as usize % RATES.len()];
        self.seen += (self.seen < RATES.len() as u8 - 1) as u8;
        // Down by p >> rate after a 1, up by (ONE - p) >> rate after a 0,
        // without a branch: a coded bit is as hard to predict as it is
        // informative, and a mispredicted branch per decision was most of
        // a chunk's decoding time. `mask` negates the step after a 1.
        let mask = (bit as u16).wrapping_neg();
        let step = select(bit, self.p, PROB_ONE - self.p) >> rate;
        self.p = self.p.wrapping_add((step ^ mask).wrapping_sub(mask));
    }
}

/// `a` if `bit`, else `b`, by masks (the compiler keeps a branch for an `if`
/// whose outcome it cannot know is unpredictable).
trait Select: Sized {
    fn select(bit: bool, a: Self, b: Self) -> Self;
}

impl Select for u16 {
    #[inline(always)]
    fn select(bit: bool, a: u16, b: u16) -> u16 {
        let mask = (bit as u16).wrapping_neg();
        (a & mask) | (b & !mask)
    }
}

impl Select for u32 {
    #[inline(always)]
    fn select(bit: bool, a: u32, b: u32) -> u32 {
        let mask = (bit as u32).wrapping_neg();
        (a & mask) | (b & !mask)
    }
}

#[inline(always)]
fn select<T: Select>(bit: bool, a: T, b: T) -> T {
    T::select(bit, a, b)
}

/// The adaptation shift after `seen` bits, `ilog2(seen + 2)` up to
/// `RATE_LIMIT`, as a table: it is read on every decision.
const RATES: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let r = (i as u32 + 2).ilog2();
        t[i] = if r < RATE_LIMIT {
            r as u8
        } else {
            RATE_LIMIT as u8
        };
        i += 1;
    }
    t
};

#[cfg(test)]
pub struct RangeEncoder {
    low: u64,
    range: u32,
    cache: u8,
    pending: u64,
    out: Vec<u8>,
    /// Where the coded bytes start in `out` (a caller's header may precede them).
    start: usize,
    /// The coder's first output byte is always 0; it is not stored.
    first: bool,
}

#[cfg(test)]
impl RangeEncoder {
    /// Appends the coded stream to `out`.
    pub fn new(out: Vec<u8>) -> Self {
        Self {
            start: out.len(),
            low: 0,
            range: u32::MAX,
            cache: 0,
            pending: 1,
            out,
            first: true,
        }
    }

    #[inline]
    pub fn bit(&mut self, model: &mut BitModel, bit: bool) {
        let bound = model.bound(self.range);
        if bit {
            self.low += bound as u64;
            self.range -= bound;
        } else {
            self.range = bound;
        }
        model.update(bit);
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// The low `n` bits of `value`, each with probability one half, coded up to
    /// `DIRECT_STEP` bits at a time.
    #[inline]
    pub fn direct(&mut self, value: u64, n: u32) {
        let mut left = n;
        while left > 0 {
            let step = left.min(DIRECT_STEP);
            left -= step;
            let part = (value >> left) & ((1u64 << step) - 1);
            self.range >>= step;
            self.low += part * self.range as u64;
            while self.range < TOP {
                self.range <<= 8;
                self.shift_low();
            }
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut byte = self.cache;
            loop {
                let b = byte.wrapping_add(carry);
                if self.first {
                    debug_assert_eq!(b, 0);
                    self.first = false;
                } else {
                    self.out.push(b);
                }
                byte = 0xFF;
                self.pending -= 1;
                if self.pending == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.pending += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    pub fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        // Trailing zero bytes carry no information: the decoder reads zeros past the end.
        while self.out.len() > self.start && self.out.last() == Some(&0) {
            self.out.pop();
        }
        self.out
    }
}

pub struct RangeDecoder<'a> {
    input: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> RangeDecoder<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        let mut d = Self {
            input,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | d.peek_byte() as u32;
            d.pos += 1;
        }
        d
    }

    /// Bytes past the end read as zero (the encoder trims them), so a short stream
    /// decodes to wrong numbers rather than failing: the chunk checksum is what
    /// rejects a damaged stream before it gets here.
    #[inline(always)]
    fn peek_byte(&self) -> u8 {
        self.input.get(self.pos).copied().unwrap_or(0)
    }

    #[inline]
    pub fn bit(&mut self, model: &mut BitModel) -> bool {
        let bound = model.bound(self.range);
        // Branch-free, as in `BitModel::update`: `bound < range` always,
        // so both candidates are well-formed.
        let bit = self.code >= bound;
        self.code -= select(bit, bound, 0);
        self.range = select(bit, self.range - bound, bound);
        model.update(bit);
        // A model's probability stays within [16, PROB_ONE - 16] (see the
        // test), so one decision leaves at least 2^12 * 16 = 2^16 of the
        // range: a single byte restores it.
        self.shift_in_byte_if_due();
        debug_assert!(self.range >= TOP);
        bit
    }

    /// One byte into the range if it is below `TOP`, without a branch
    /// (whether it is due is as unpredictable as the bits decoded).
    #[inline(always)]
    fn shift_in_byte_if_due(&mut self) {
        let due = self.range < TOP;
        let shift = 8 * due as u32;
        let byte = self.peek_byte() as u32 & (due as u32).wrapping_neg();
        self.range <<= shift;
        self.code = (self.code << shift) | byte;
        self.pos += due as usize;
    }

    #[inline]
    pub fn direct(&mut self, n: u32) -> u64 {
        if n <= DIRECT_STEP {
            return self.direct_step(n) as u64;
        }
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let step = left.min(DIRECT_STEP);
            left -= step;
            v = (v << step) | self.direct_step(step) as u64;
        }
        v
    }

    /// Up to `DIRECT_STEP` direct bits (none when `step` is 0, with the state
    /// unchanged), by one division and without a branch on `step`.
    #[inline(always)]
    fn direct_step(&mut self, step: u32) -> u32 {
        self.range >>= step;
        // A damaged stream can make the quotient exceed the step; clamp so the
        // state stays well-formed (the checksum has already vouched for it).
        let part = (self.code / self.range).min((1 << step) - 1);
        self.code -= part * self.range;
        // At most two bytes: the range kept 2^(24 - DIRECT_STEP) = 2^8 steps.
        self.shift_in_byte_if_due();
        self.shift_in_byte_if_due();
        debug_assert!(self.range >= TOP);
        part
    }
}

/// Mantissa bits below the leading one that get adaptive models: all of them for
/// short integers (so any distribution over small values is learnt exactly), the
/// top few for long ones (the rest of a long residual is close to uniform).
const MODELLED_SHORT: u32 = 3;
const MODELLED_LONG: u32 = 1;
const MANTISSA_TREE: usize = 1 << MODELLED_SHORT;

#[inline]
fn modelled_bits(len: u32) -> u32 {
    let rest = len.saturating_sub(1);
    if rest <= MODELLED_SHORT {
        rest
    } else {
        MODELLED_LONG
    }
}

/// Widest optional tree for a small alphabet in front of the general code.
const MAX_SMALL_BITS: u32 = 6;

/// Adaptive model of unsigned 64-bit integers that are usually small.
///
/// With `small_bits = k`, values below `2^k - 1` are coded in one `k`-level tree
/// (any distribution over them is learnt, at `k` decisions each) and the largest
/// code escapes to the general form: length, then mantissa. Streams with a known
/// small alphabet (grid steps, jitter) decode several times faster that way.
pub struct UintModel {
    small_bits: u32,
    small: [BitModel; 1 << MAX_SMALL_BITS],
    length: [BitModel; 1 << LENGTH_TREE_BITS],
    long_length: [BitModel; 1 << LONG_LENGTH_BITS],
    /// A binary tree over the modelled mantissa bits, per length.
    mantissa: [BitModel; 65 * MANTISSA_TREE],
}

impl Default for UintModel {
    fn default() -> Self {
        Self::with_small_bits(0)
    }
}

impl UintModel {
    /// A model whose values are usually below `2^small_bits - 1` (`small_bits <= 6`).
    pub fn with_small_bits(small_bits: u32) -> Self {
        Self {
            small_bits: small_bits.min(MAX_SMALL_BITS),
            small: [BitModel::default(); 1 << MAX_SMALL_BITS],
            length: [BitModel::default(); 1 << LENGTH_TREE_BITS],
            long_length: [BitModel::default(); 1 << LONG_LENGTH_BITS],
            mantissa: [BitModel::default(); 65 * MANTISSA_TREE],
        }
    }

    #[cfg(test)]
    #[inline]
    pub fn encode(&mut self, enc: &mut RangeEncoder, v: u64) {
        if self.small_bits > 0 {
            let escape = (1u64 << self.small_bits) - 1;
            let symbol = v.min(escape);
            encode_tree(enc, &mut self.small, self.small_bits, symbol);
            if symbol < escape {
                return;
            }
        }
        let len = 64 - v.leading_zeros();
        encode_tree(
            enc,
            &mut self.length,
            LENGTH_TREE_BITS,
            len.min(LENGTH_ESCAPE) as u64,
        );
        if len >= LENGTH_ESCAPE {
            let long = (len - LENGTH_ESCAPE) as u64;
            encode_tree(enc, &mut self.long_length, LONG_LENGTH_BITS, long);
        }
        let rest = len.saturating_sub(1);
        let modelled = modelled_bits(len);
        let tree = &mut self.mantissa[len as usize * MANTISSA_TREE..][..MANTISSA_TREE];
        let mut node = 1usize;
        for i in (rest - modelled..rest).rev() {
            let bit = (v >> i) & 1 == 1;
            enc.bit(&mut tree[node], bit);
            node = node * 2 + bit as usize;
        }
        enc.direct(v, rest - modelled);
    }

    /// Decodes a value whatever the model's `small_bits` (the chunk readers
    /// call the specialised forms below).
    #[cfg(test)]
    pub fn decode(&mut self, dec: &mut RangeDecoder<'_>) -> Result<u64, CodecError> {
        match self.small_bits {
            0 => self.decode_general(dec),
            1 => self.decode_small::<1>(dec),
            5 => self.decode_small::<5>(dec),
            bits => {
                let symbol = decode_tree(dec, &mut self.small, bits);
                if symbol < (1u64 << bits) - 1 {
                    return Ok(symbol);
                }
                self.decode_escaped(dec)
            }
        }
    }

    /// [`UintModel::decode`] for a model built `with_small_bits(BITS)`,
    /// inlined into the reader's loop with the tree unrolled: a grid
    /// timestamp is two of these, and an out-of-line call per integer
    /// (prologue, dispatch on `small_bits`) cost a tenth of its decoding time.
    #[inline(always)]
    pub fn decode_small<const BITS: u32>(
        &mut self,
        dec: &mut RangeDecoder<'_>,
    ) -> Result<u64, CodecError> {
        debug_assert_eq!(self.small_bits, BITS);
        let symbol = decode_tree_of::<BITS, { 1 << MAX_SMALL_BITS }>(dec, &mut self.small);
        if symbol < (1u64 << BITS) - 1 {
            return Ok(symbol);
        }
        self.decode_escaped(dec)
    }

    /// The general form after a small alphabet's escape: rare, kept out of line.
    #[cold]
    #[inline(never)]
    fn decode_escaped(&mut self, dec: &mut RangeDecoder<'_>) -> Result<u64, CodecError> {
        self.decode_general(dec)
    }

    /// Bit length, then mantissa (a model without a small alphabet).
    #[inline(always)]
    pub fn decode_general(&mut self, dec: &mut RangeDecoder<'_>) -> Result<u64, CodecError> {
        let mut len = decode_tree_of::<LENGTH_TREE_BITS, _>(dec, &mut self.length) as u32;
        if len == LENGTH_ESCAPE {
            len += decode_tree(dec, &mut self.long_length, LONG_LENGTH_BITS) as u32;
        }
        if len > 64 {
            return Err(CodecError::Malformed("integer longer than 64 bits"));
        }
        if len == 0 {
            return Ok(0);
        }
        let rest = len - 1;
        let modelled = modelled_bits(len);
        let tree = &mut self.mantissa[len as usize * MANTISSA_TREE..][..MANTISSA_TREE];
        let mut node = 1usize;
        for _ in 0..modelled {
            node = node * 2 + dec.bit(&mut tree[node % MANTISSA_TREE]) as usize;
        }
        let top = (1u64 << modelled) | (node as u64 - (1 << modelled));
        let low = dec.direct(rest - modelled);
        Ok((top << (rest - modelled)) | low)
    }
}

/// Codes the low `bits` bits of `symbol` through a binary tree of models.
#[cfg(test)]
#[inline]
fn encode_tree(enc: &mut RangeEncoder, tree: &mut [BitModel], bits: u32, symbol: u64) {
    let mut node = 1usize;
    for i in (0..bits).rev() {
        let bit = (symbol >> i) & 1 == 1;
        enc.bit(&mut tree[node], bit);
        node = node * 2 + bit as usize;
    }
}

#[inline]
fn decode_tree(dec: &mut RangeDecoder<'_>, tree: &mut [BitModel], bits: u32) -> u64 {
    let mut node = 1usize;
    for _ in 0..bits {
        node = node * 2 + dec.bit(&mut tree[node]) as usize;
    }
    (node - (1 << bits)) as u64
}

/// [`decode_tree`] with the depth known when compiling, so the loop unrolls.
#[inline(always)]
fn decode_tree_of<const BITS: u32, const N: usize>(
    dec: &mut RangeDecoder<'_>,
    tree: &mut [BitModel; N],
) -> u64 {
    const { assert!(1 << BITS <= N) };
    let mut node = 1usize;
    for _ in 0..BITS {
        // `node < 2^BITS <= N`: the mask only tells the compiler so.
        node = node * 2 + dec.bit(&mut tree[node % N]) as usize;
    }
    (node - (1 << BITS)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(values: &[u64]) -> usize {
        let mut enc = RangeEncoder::new(Vec::new());
        let mut model = UintModel::default();
        for &v in values {
            model.encode(&mut enc, v);
        }
        let bytes = enc.finish();
        let mut dec = RangeDecoder::new(&bytes);
        let mut model = UintModel::default();
        for &v in values {
            assert_eq!(model.decode(&mut dec).unwrap(), v);
        }
        bytes.len()
    }

    /// The decoder renormalises once per decision, which holds while every
    /// probability stays within [16, PROB_ONE - 16] (then one decision
    /// leaves at least 2^12 * 16 = 2^16 of a range of at least 2^24). The
    /// update moves monotonically, so the extremes are reached by runs of
    /// one bit: follow the longest such runs.
    #[test]
    fn probabilities_stay_where_one_renormalisation_suffices() {
        for bit in [false, true] {
            let mut m = BitModel::default();
            for _ in 0..100_000 {
                m.update(bit);
                assert!((16..=PROB_ONE - 16).contains(&m.p), "p = {}", m.p);
            }
        }
    }

    #[test]
    fn zeros_cost_almost_nothing() {
        assert!(round_trip(&[0; 1000]) < 16);
    }

    #[test]
    fn extremes_round_trip() {
        round_trip(&[u64::MAX, 0, 1, 2, 3, u64::MAX - 1, 1 << 63, 4, 5, 7, 8]);
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
            prop_oneof![any::<u64>(), 0u64..4, 0u64..1000], 0..500)) {
            round_trip(&values);
        }
    }
}

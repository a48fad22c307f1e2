//! Format 2's modelled encodings: grid timestamps and modelled decimals,
//! coded with the multi-symbol rANS of [`super::rans`].
//!
//! What is coded is what format 1 codes (`modelled_v1`): per timestamp, how
//! many grid intervals it advances and its offset from the grid; per value,
//! the scaled decimal's step less the chunk's median step. Only the coding
//! differs: a typical timestamp (one interval on, a small offset) is one
//! symbol, a typical value one symbol and a few plain bits.

use super::rans::{decode_uint, encode_uint, RansDecoder, RansEncoder, SymbolModel, UINT_SYMBOLS};
use super::{
    get_uvarint, grid_advance, grid_interval, grid_split, put_uvarint, to_decimal, unzigzag,
    zigzag, CodecError, TimeStream, ValueStream, GRID_OVERFLOW, MAX_DECIMAL_DIGITS, POW10,
};
use crate::model::Sample;

/// Grid symbols: a step of one interval with a zigzagged offset below 31, or
/// the escape, after which the step and the offset are coded as integers.
const GRID_SYMBOLS: usize = 32;
const GRID_ESCAPE: usize = GRID_SYMBOLS - 1;

#[derive(Default)]
struct GridModels {
    joint: SymbolModel<GRID_SYMBOLS>,
    steps: SymbolModel<UINT_SYMBOLS>,
    offsets: SymbolModel<UINT_SYMBOLS>,
}

/// Layout: first timestamp's distance from `min_time`, interval (both in
/// units of 10^`scale`, which the chunk header holds), then the coded section.
/// `None` when the arithmetic would overflow.
pub(super) fn grid_timestamps(samples: &[Sample], scale: u8, min_time: i64) -> Option<Vec<u8>> {
    let div = 10i64.pow(scale as u32);
    let ts: Vec<i64> = samples.iter().map(|s| s.timestamp / div).collect();
    let first = *ts.first()?;
    let interval = grid_interval(&ts);
    let mut out = Vec::new();
    put_uvarint(&mut out, first.checked_sub(min_time / div)? as u64);
    put_uvarint(&mut out, interval as u64);
    let mut enc = RansEncoder::default();
    let mut models = GridModels::default();
    let mut grid = first;
    for &t in &ts[1..] {
        let (step, offset) = grid_split(t.checked_sub(grid)?, interval);
        let symbol = zigzag(offset);
        if step == 1 && symbol < GRID_ESCAPE as u64 {
            enc.symbol(&mut models.joint, symbol as usize);
        } else {
            enc.symbol(&mut models.joint, GRID_ESCAPE);
            encode_uint(&mut enc, &mut models.steps, zigzag(step.checked_sub(1)?));
            encode_uint(&mut enc, &mut models.offsets, symbol);
        }
        grid = grid_advance(grid, step, offset, interval)?;
    }
    enc.finish(&mut out);
    Some(out)
}

/// Reads grid timestamps one at a time.
pub(super) struct GridReader<'a> {
    dec: RansDecoder<'a>,
    models: GridModels,
    grid: i64,
    interval: i64,
    mul: i64,
}

impl<'a> GridReader<'a> {
    /// The reader and the first timestamp.
    pub(super) fn open(
        bytes: &'a [u8],
        scale: u8,
        min_time: i64,
    ) -> Result<(Self, i64), CodecError> {
        if scale > 18 {
            return Err(CodecError::Malformed("timestamp scale over 18"));
        }
        let mul = 10i64.pow(scale as u32);
        let mut pos = 0;
        let first = (min_time / mul)
            .checked_add_unsigned(get_uvarint(bytes, &mut pos)?)
            .ok_or(GRID_OVERFLOW)?;
        let interval = i64::try_from(get_uvarint(bytes, &mut pos)?).map_err(|_| GRID_OVERFLOW)?;
        if interval < 1 {
            return Err(CodecError::Malformed("grid interval below one"));
        }
        let reader = Self {
            dec: RansDecoder::new(&bytes[pos..]),
            models: GridModels::default(),
            grid: first,
            interval,
            mul,
        };
        Ok((reader, first.checked_mul(mul).ok_or(GRID_OVERFLOW)?))
    }

    #[cold]
    #[inline(never)]
    fn escaped(&mut self) -> Result<(i64, i64), CodecError> {
        let step = unzigzag(decode_uint(&mut self.dec, &mut self.models.steps)?)
            .checked_add(1)
            .ok_or(GRID_OVERFLOW)?;
        let offset = unzigzag(decode_uint(&mut self.dec, &mut self.models.offsets)?);
        Ok((step, offset))
    }
}

impl TimeStream for GridReader<'_> {
    #[inline(always)]
    fn next(&mut self) -> Result<i64, CodecError> {
        let symbol = self.dec.symbol(&mut self.models.joint);
        let (step, offset) = if symbol < GRID_ESCAPE {
            (1, unzigzag(symbol as u64))
        } else {
            self.escaped()?
        };
        let t = step
            .checked_mul(self.interval)
            .and_then(|d| self.grid.checked_add(d))
            .and_then(|g| g.checked_add(offset))
            .ok_or(GRID_OVERFLOW)?;
        self.grid = grid_advance(self.grid, step, offset, self.interval).ok_or(GRID_OVERFLOW)?;
        t.checked_mul(self.mul).ok_or(GRID_OVERFLOW)
    }
}

/// Exact short decimals as scaled integers: the deltas, divided by their common
/// divisor and less their median (a counter's typical increase), coded.
/// Layout: `k`, first value, divisor, median, then the coded section.
pub(super) fn decimal_model_values(samples: &[Sample], k: u8, out: &mut Vec<u8>) {
    let ms: Vec<i64> = samples
        .iter()
        .map(|s| to_decimal(s.value, k as usize).expect("decimal_exponent checked every value"))
        .collect();
    let divisor = ms
        .windows(2)
        .fold(0u64, |g, w| {
            super::gcd(g, w[1].wrapping_sub(w[0]).unsigned_abs())
        })
        .max(1) as i64;
    // |m| <= 2^53, so deltas and their quotients are exact in i64.
    let steps: Vec<i64> = ms.windows(2).map(|w| (w[1] - w[0]) / divisor).collect();
    let median = if steps.is_empty() {
        0
    } else {
        let mid = steps.len() / 2;
        *steps.clone().select_nth_unstable(mid).1
    };
    out.push(k);
    put_uvarint(out, zigzag(ms[0]));
    put_uvarint(out, divisor as u64);
    put_uvarint(out, zigzag(median));
    let mut enc = RansEncoder::default();
    let mut model = SymbolModel::default();
    for s in &steps {
        encode_uint(&mut enc, &mut model, zigzag(s - median));
    }
    enc.finish(out);
}

/// Reads modelled decimals one at a time.
pub(super) struct DecimalReader<'a> {
    dec: RansDecoder<'a>,
    model: SymbolModel<UINT_SYMBOLS>,
    prev: i64,
    divisor: i64,
    median: i64,
    scale: f64,
}

const DECIMAL_OVERFLOW: CodecError = CodecError::Malformed("decimal value out of range");

impl<'a> DecimalReader<'a> {
    /// The reader and the first value.
    pub(super) fn open(bytes: &'a [u8]) -> Result<(Self, f64), CodecError> {
        let k = *bytes.first().ok_or(CodecError::Truncated)? as usize;
        if k > MAX_DECIMAL_DIGITS {
            return Err(CodecError::Malformed("decimal exponent out of range"));
        }
        let mut pos = 1;
        let prev = unzigzag(get_uvarint(bytes, &mut pos)?);
        let divisor = i64::try_from(get_uvarint(bytes, &mut pos)?).map_err(|_| DECIMAL_OVERFLOW)?;
        let median = unzigzag(get_uvarint(bytes, &mut pos)?);
        let reader = Self {
            dec: RansDecoder::new(&bytes[pos..]),
            model: SymbolModel::default(),
            prev,
            divisor,
            median,
            scale: POW10[k],
        };
        Ok((reader, prev as f64 / POW10[k]))
    }
}

impl ValueStream for DecimalReader<'_> {
    #[inline(always)]
    fn next(&mut self) -> Result<f64, CodecError> {
        let step = unzigzag(decode_uint(&mut self.dec, &mut self.model)?)
            .checked_add(self.median)
            .ok_or(DECIMAL_OVERFLOW)?;
        self.prev = step
            .checked_mul(self.divisor)
            .and_then(|d| self.prev.checked_add(d))
            .ok_or(DECIMAL_OVERFLOW)?;
        Ok(self.prev as f64 / self.scale)
    }
}

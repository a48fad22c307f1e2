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
    decimal_model_residuals, get_uvarint, grid_advance, grid_interval, grid_split, put_uvarint,
    unzigzag, zigzag, CodecError, DecimalSteps, TimeStream, ValueStream, GRID_OVERFLOW,
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

/// Modelled decimals (see `decimal_model_residuals`), coded.
pub(super) fn decimal_model_values(samples: &[Sample], k: u8, out: &mut Vec<u8>) {
    let residuals = decimal_model_residuals(samples, k, out);
    let mut enc = RansEncoder::default();
    let mut model = SymbolModel::default();
    for r in residuals {
        encode_uint(&mut enc, &mut model, r);
    }
    enc.finish(out);
}

/// Reads modelled decimals one at a time.
pub(super) struct DecimalReader<'a> {
    dec: RansDecoder<'a>,
    model: SymbolModel<UINT_SYMBOLS>,
    steps: DecimalSteps,
}

impl<'a> DecimalReader<'a> {
    /// The reader and the first value.
    pub(super) fn open(bytes: &'a [u8]) -> Result<(Self, f64), CodecError> {
        let (steps, first, pos) = DecimalSteps::open(bytes)?;
        let reader = Self {
            dec: RansDecoder::new(&bytes[pos..]),
            model: SymbolModel::default(),
            steps,
        };
        Ok((reader, first))
    }
}

impl ValueStream for DecimalReader<'_> {
    #[inline(always)]
    fn next(&mut self) -> Result<f64, CodecError> {
        let residual = decode_uint(&mut self.dec, &mut self.model)?;
        self.steps.next(residual)
    }
}

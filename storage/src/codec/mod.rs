//! Chunk codecs: a chunk is a run of samples of one series, encoded and checksummed.
//!
//! Timestamps use delta-of-delta, values use Gorilla XOR (Pelkonen et al., VLDB 2015),
//! both after dividing timestamps by the largest power of ten they share. A second
//! candidate stores delta-of-delta timestamps and, when every value is an exact short
//! decimal, the scaled integers' deltas as varints, then compresses that with zstd. The
//! encoder keeps whichever candidate is smallest, raw samples included, so a chunk is
//! never larger than the raw fallback. Layout: `docs/storage.md`.

mod bits;
mod modelled;
mod modelled_v1;
mod range;
mod rans;
mod varint;

use std::fmt;

pub use varint::{get_uvarint, put_uvarint, unzigzag, zigzag};

use crate::model::Sample;
use bits::{BitReader, BitWriter};
use modelled::{DecimalReader, GridReader};
use modelled_v1::{DecimalModelValues, GridTimestamps};

/// Current chunk format version (the first byte of every chunk). Format 2
/// codes the modelled encodings (grid timestamps, modelled decimals) with
/// multi-symbol rANS; format 1 coded them bit by bit with a binary range coder
/// and still decodes. The other encodings are the same in both.
pub const FORMAT_VERSION: u8 = 2;
const FORMAT_V1: u8 = 1;
/// Upper bound on samples in one chunk; larger counts in a header mean corruption.
pub const MAX_CHUNK_SAMPLES: usize = 1 << 20;
const CHECKSUM_LEN: usize = 4;
const MAX_DECIMAL_DIGITS: usize = 9;
pub(crate) const POW10: [f64; MAX_DECIMAL_DIGITS + 1] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Integers up to 2^53 are exact in an f64.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Why a chunk could not be decoded. The shard adds the series and time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    Truncated,
    Malformed(&'static str),
    ChecksumMismatch { stored: u32, computed: u32 },
    UnsupportedVersion(u8),
    Decompress,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated => write!(f, "chunk is truncated"),
            CodecError::Malformed(what) => write!(f, "chunk is malformed: {what}"),
            CodecError::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            CodecError::UnsupportedVersion(v) => write!(f, "unsupported chunk format version {v}"),
            CodecError::Decompress => write!(f, "compressed body does not decompress"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum TsEncoding {
    Raw = 0,
    GorillaDod = 1,
    VarintDod = 2,
    Grid = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ValueEncoding {
    Raw = 0,
    GorillaXor = 1,
    DecimalDelta = 2,
    DecimalModel = 3,
}

const FLAG_ZSTD: u8 = 1 << 4;

/// What a chunk says about itself without decoding the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub count: usize,
    pub min_time: i64,
    pub max_time: i64,
}

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// zstd level for the byte-oriented candidate.
    pub zstd_level: i32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self { zstd_level: 9 }
    }
}

/// Encodes samples (any order, duplicates allowed) into a checksummed chunk.
///
/// # Panics
/// Never for any input; an empty slice encodes to an empty chunk.
pub fn encode_chunk(samples: &[Sample], opts: EncodeOptions) -> Vec<u8> {
    let count = samples.len();
    let (min_time, max_time) = samples.iter().fold((i64::MAX, i64::MIN), |(lo, hi), s| {
        (lo.min(s.timestamp), hi.max(s.timestamp))
    });
    let (min_time, max_time) = if count == 0 {
        (0, 0)
    } else {
        (min_time, max_time)
    };
    let scale = timestamp_scale(samples);

    // Candidate 1: the smaller of the Gorilla paper's bit-packed encodings and the
    // range-coded models, chosen separately for timestamps and values.
    let mut ts_enc = TsEncoding::GorillaDod;
    let mut ts = gorilla_timestamps(samples, scale);
    if let Some(grid) = modelled::grid_timestamps(samples, scale, min_time) {
        if grid.len() < ts.len() {
            (ts_enc, ts) = (TsEncoding::Grid, grid);
        }
    }
    let mut packed = Vec::with_capacity(ts.len() + samples.len() + 16);
    put_uvarint(&mut packed, ts.len() as u64);
    packed.extend_from_slice(&ts);
    let values_at = packed.len();
    gorilla_values(samples, &mut packed);
    let mut value_enc = ValueEncoding::GorillaXor;
    if let Some(k) = decimal_exponent(samples).filter(|_| count > 1) {
        let mut modelled = Vec::new();
        modelled::decimal_model_values(samples, k, &mut modelled);
        if modelled.len() < packed.len() - values_at {
            packed.truncate(values_at);
            packed.extend_from_slice(&modelled);
            value_enc = ValueEncoding::DecimalModel;
        }
    }
    let mut best = (ts_enc, value_enc, false, packed);

    // Candidate 2: byte-oriented varints, general-purpose compressed.
    if count > 1 {
        let mut bytes = Vec::with_capacity(count * 3);
        let ts = varint_timestamps(samples, scale);
        put_uvarint(&mut bytes, ts.len() as u64);
        bytes.extend_from_slice(&ts);
        let value_enc = match decimal_exponent(samples) {
            Some(k) => {
                decimal_values(samples, k, &mut bytes);
                ValueEncoding::DecimalDelta
            }
            None => {
                gorilla_values(samples, &mut bytes);
                ValueEncoding::GorillaXor
            }
        };
        if let Ok(packed) = zstd_compress(&bytes, opts.zstd_level) {
            if packed.len() < best.3.len() {
                best = (TsEncoding::VarintDod, value_enc, true, packed);
            }
        }
    }

    // Raw fallback, only when it is smaller.
    if count * 16 < best.3.len() {
        let mut raw = Vec::with_capacity(count * 16 + 1);
        put_uvarint(&mut raw, (count * 8) as u64);
        for s in samples {
            raw.extend_from_slice(&s.timestamp.to_le_bytes());
        }
        for s in samples {
            raw.extend_from_slice(&s.value.to_bits().to_le_bytes());
        }
        best = (TsEncoding::Raw, ValueEncoding::Raw, false, raw);
    }

    let (ts_enc, value_enc, zstd, body) = best;
    let mut out = Vec::with_capacity(32 + body.len());
    out.push(FORMAT_VERSION);
    out.push(ts_enc as u8 | (value_enc as u8) << 2 | if zstd { FLAG_ZSTD } else { 0 });
    put_uvarint(&mut out, count as u64);
    out.extend_from_slice(&min_time.to_le_bytes());
    // The span in the timestamps' own unit: a few bytes where format 1 spent eight.
    out.push(scale);
    let span = (max_time as u64).wrapping_sub(min_time as u64) / 10u64.pow(scale as u32);
    put_uvarint(&mut out, span);
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// zstd with a context kept per thread and level: creating one per chunk was
/// a tenth of a cut's time (the output is the same either way).
fn zstd_compress(bytes: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use std::cell::RefCell;
    thread_local! {
        static CONTEXT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    CONTEXT.with(|context| {
        let mut context = context.borrow_mut();
        if context.as_ref().is_none_or(|(l, _)| *l != level) {
            *context = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = context.as_mut().expect("set above");
        compressor.compress(bytes)
    })
}

/// Reads and checks the header (and the checksum) without decoding samples.
pub fn chunk_header(chunk: &[u8]) -> Result<ChunkHeader, CodecError> {
    parse(chunk).map(|p| p.header)
}

/// Decodes a chunk into its samples, in the order they were encoded.
pub fn decode_chunk(chunk: &[u8]) -> Result<Vec<Sample>, CodecError> {
    let mut out = Vec::new();
    decode_chunk_into(chunk, &mut out)?;
    Ok(out)
}

/// Decodes a chunk, appending its samples to `out`.
pub fn decode_chunk_into(chunk: &[u8], out: &mut Vec<Sample>) -> Result<ChunkHeader, CodecError> {
    decode(chunk, None, out)
}

/// [`decode_chunk_into`] up to the first sample at or after `end`, for a
/// chunk whose timestamps ascend (every chunk a shard writes: heads are
/// sorted when cut). A read of a window that ends inside the chunk decodes
/// only that far: the streams are sequential, so what comes before the
/// window is still decoded, what comes after is not. The whole chunk is
/// still checksummed.
pub fn decode_chunk_before(
    chunk: &[u8],
    end: i64,
    out: &mut Vec<Sample>,
) -> Result<ChunkHeader, CodecError> {
    decode(chunk, Some(end), out)
}

fn decode(
    chunk: &[u8],
    end: Option<i64>,
    out: &mut Vec<Sample>,
) -> Result<ChunkHeader, CodecError> {
    let Parsed {
        header,
        version,
        flags,
        scale,
        body,
    } = parse(chunk)?;
    let count = header.count;
    let decompressed;
    let body = if flags & FLAG_ZSTD != 0 {
        // Bound the output so a corrupt length cannot allocate without limit.
        let limit = count * 20 + 64;
        decompressed = zstd::bulk::decompress(body, limit).map_err(|_| CodecError::Decompress)?;
        &decompressed[..]
    } else {
        body
    };
    let mut pos = 0;
    let ts_len = get_uvarint(body, &mut pos)? as usize;
    let ts_bytes = body
        .get(pos..pos.checked_add(ts_len).ok_or(CodecError::Truncated)?)
        .ok_or(CodecError::Truncated)?;
    let value_bytes = &body[pos + ts_len..];
    let (ts_encoding, value_encoding) = (flags & 0b11, (flags >> 2) & 0b11);
    out.reserve(count);
    let v1 = version == FORMAT_V1;
    if ts_encoding == TsEncoding::Grid as u8 && value_encoding == ValueEncoding::DecimalModel as u8
    {
        let min_time = header.min_time;
        if v1 {
            let times = || GridTimestamps::open(ts_bytes, min_time);
            read_pair(
                DecimalModelValues::open(value_bytes)?,
                times,
                count,
                end,
                out,
            )?;
        } else {
            let sections = PairSections {
                ts: ts_bytes,
                values: value_bytes,
                scale,
                min_time,
                count,
                end,
            };
            read_grid_decimal(sections, out)?;
        }
        return Ok(header);
    }
    let start = out.len();
    match ts_encoding {
        x if x == TsEncoding::Raw as u8 => {
            if ts_bytes.len() != count * 8 {
                return Err(CodecError::Malformed("raw timestamp section length"));
            }
            for c in ts_bytes.chunks_exact(8) {
                let t = i64::from_le_bytes(c.try_into().expect("chunks_exact(8)"));
                if past(t, end) {
                    break;
                }
                out.push(Sample::new(t, 0.0));
            }
        }
        x if x == TsEncoding::GorillaDod as u8 => {
            decode_gorilla_timestamps(ts_bytes, count, end, out)?
        }
        x if x == TsEncoding::VarintDod as u8 => {
            decode_varint_timestamps(ts_bytes, count, end, out)?
        }
        // An empty grid section has no header to read.
        x if x == TsEncoding::Grid as u8 && count == 0 => {}
        x if x == TsEncoding::Grid as u8 && v1 => read_times(
            GridTimestamps::open(ts_bytes, header.min_time)?,
            count,
            end,
            out,
        )?,
        x if x == TsEncoding::Grid as u8 => read_times(
            GridReader::open(ts_bytes, scale, header.min_time)?,
            count,
            end,
            out,
        )?,
        _ => return Err(CodecError::Malformed("unknown timestamp encoding")),
    }
    let samples = &mut out[start..];
    match value_encoding {
        x if x == ValueEncoding::Raw as u8 => {
            if value_bytes.len() != count * 8 {
                return Err(CodecError::Malformed("raw value section length"));
            }
            for (s, c) in samples.iter_mut().zip(value_bytes.chunks_exact(8)) {
                s.value =
                    f64::from_bits(u64::from_le_bytes(c.try_into().expect("chunks_exact(8)")));
            }
        }
        x if x == ValueEncoding::GorillaXor as u8 => decode_gorilla_values(value_bytes, samples)?,
        x if x == ValueEncoding::DecimalDelta as u8 => decode_decimal_values(value_bytes, samples)?,
        x if x == ValueEncoding::DecimalModel as u8 && v1 => {
            read_values(DecimalModelValues::open(value_bytes)?, samples)?
        }
        x if x == ValueEncoding::DecimalModel as u8 => {
            read_values(DecimalReader::open(value_bytes)?, samples)?
        }
        _ => return Err(CodecError::Malformed("unknown value encoding")),
    }
    Ok(header)
}

/// Whether a timestamp is at or past the end a partial decode stops at.
#[inline]
fn past(t: i64, end: Option<i64>) -> bool {
    end.is_some_and(|end| t >= end)
}

/// The CRC-32 a chunk was stored with (its last four bytes), unverified.
pub fn stored_checksum(chunk: &[u8]) -> Option<u32> {
    let tail = chunk.get(chunk.len().checked_sub(CHECKSUM_LEN)?..)?;
    Some(u32::from_le_bytes(tail.try_into().ok()?))
}

/// What a chunk's header says, and its body.
struct Parsed<'a> {
    header: ChunkHeader,
    version: u8,
    flags: u8,
    /// The power of ten every timestamp shares (format 2 keeps it in the
    /// header; format 1 only in the timestamp sections that need it).
    scale: u8,
    body: &'a [u8],
}

fn parse(chunk: &[u8]) -> Result<Parsed<'_>, CodecError> {
    if chunk.len() < 2 + CHECKSUM_LEN {
        return Err(CodecError::Truncated);
    }
    let (content, crc) = chunk.split_at(chunk.len() - CHECKSUM_LEN);
    let stored = u32::from_le_bytes(crc.try_into().expect("split at CHECKSUM_LEN"));
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(CodecError::ChecksumMismatch { stored, computed });
    }
    let version = content[0];
    if version != FORMAT_VERSION && version != FORMAT_V1 {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let flags = content[1];
    let mut pos = 2;
    let count = get_uvarint(content, &mut pos)? as usize;
    if count > MAX_CHUNK_SAMPLES {
        return Err(CodecError::Malformed("sample count over the chunk limit"));
    }
    let fixed = |pos: usize| -> Result<i64, CodecError> {
        let bytes = content.get(pos..pos + 8).ok_or(CodecError::Truncated)?;
        Ok(i64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    };
    let min_time = fixed(pos)?;
    pos += 8;
    let (max_time, scale) = if version == FORMAT_V1 {
        pos += 8;
        (fixed(pos - 8)?, 0)
    } else {
        let scale = *content.get(pos).ok_or(CodecError::Truncated)?;
        pos += 1;
        let span = get_uvarint(content, &mut pos)?;
        let max_time = 10u64
            .checked_pow(scale as u32)
            .and_then(|unit| span.checked_mul(unit))
            .map(|span| (min_time as u64).wrapping_add(span) as i64)
            .filter(|&max| max >= min_time)
            .ok_or(CodecError::Malformed("time span out of range"))?;
        (max_time, scale)
    };
    Ok(Parsed {
        header: ChunkHeader {
            count,
            min_time,
            max_time,
        },
        version,
        flags,
        scale,
        body: &content[pos..],
    })
}

/// The largest power of ten (exponent) that divides every timestamp.
pub(crate) fn timestamp_scale(samples: &[Sample]) -> u8 {
    let mut scale = 18u8;
    for s in samples {
        while scale > 0 && s.timestamp % 10i64.pow(scale as u32) != 0 {
            scale -= 1;
        }
        if scale == 0 {
            break;
        }
    }
    scale
}

/// Delta-of-delta timestamps in the paper's variable-length buckets.
fn gorilla_timestamps(samples: &[Sample], scale: u8) -> Vec<u8> {
    let mut out = vec![scale];
    let Some(first) = samples.first() else {
        return out;
    };
    let div = 10i64.pow(scale as u32);
    let first = first.timestamp / div;
    put_uvarint(&mut out, zigzag(first));
    let mut w = BitWriter::with_capacity(samples.len() / 4 + 8);
    let (mut prev, mut prev_delta) = (first, 0i64);
    for s in &samples[1..] {
        let t = s.timestamp / div;
        let delta = t.wrapping_sub(prev);
        let dod = delta.wrapping_sub(prev_delta);
        match dod {
            0 => w.write(0, 1),
            -63..=64 => {
                w.write(0b10, 2);
                w.write((dod + 63) as u64, 7);
            }
            -255..=256 => {
                w.write(0b110, 3);
                w.write((dod + 255) as u64, 9);
            }
            -2047..=2048 => {
                w.write(0b1110, 4);
                w.write((dod + 2047) as u64, 12);
            }
            // The paper's last bucket is 32 bits; nanosecond clocks need a 64-bit one too.
            -2_147_483_647..=2_147_483_648 => {
                w.write(0b11110, 5);
                w.write((dod + 2_147_483_647) as u64, 32);
            }
            _ => {
                w.write(0b11111, 5);
                w.write(dod as u64, 64);
            }
        }
        prev = t;
        prev_delta = delta;
    }
    out.extend_from_slice(&w.finish());
    out
}

fn decode_gorilla_timestamps(
    bytes: &[u8],
    count: usize,
    end: Option<i64>,
    out: &mut Vec<Sample>,
) -> Result<(), CodecError> {
    if count == 0 {
        return Ok(());
    }
    let (mul, first, pos) = scaled_first(bytes)?;
    if past(first.wrapping_mul(mul), end) {
        return Ok(());
    }
    out.push(Sample::new(first.wrapping_mul(mul), 0.0));
    let mut r = BitReader::new(&bytes[pos..]);
    let (mut prev, mut prev_delta) = (first, 0i64);
    for _ in 1..count {
        let dod = if !r.read_bit()? {
            0
        } else if !r.read_bit()? {
            r.read(7)? as i64 - 63
        } else if !r.read_bit()? {
            r.read(9)? as i64 - 255
        } else if !r.read_bit()? {
            r.read(12)? as i64 - 2047
        } else if !r.read_bit()? {
            r.read(32)? as i64 - 2_147_483_647
        } else {
            r.read(64)? as i64
        };
        let delta = prev_delta.wrapping_add(dod);
        let t = prev.wrapping_add(delta);
        if past(t.wrapping_mul(mul), end) {
            break;
        }
        out.push(Sample::new(t.wrapping_mul(mul), 0.0));
        prev = t;
        prev_delta = delta;
    }
    Ok(())
}

fn scaled_first(bytes: &[u8]) -> Result<(i64, i64, usize), CodecError> {
    let scale = *bytes.first().ok_or(CodecError::Truncated)?;
    if scale > 18 {
        return Err(CodecError::Malformed("timestamp scale over 18"));
    }
    let mut pos = 1;
    let first = unzigzag(get_uvarint(bytes, &mut pos)?);
    Ok((10i64.pow(scale as u32), first, pos))
}

/// Delta-of-delta timestamps as zigzag varints (compressed afterwards).
fn varint_timestamps(samples: &[Sample], scale: u8) -> Vec<u8> {
    let mut out = vec![scale];
    let div = 10i64.pow(scale as u32);
    let (mut prev, mut prev_delta) = (0i64, 0i64);
    for (i, s) in samples.iter().enumerate() {
        let t = s.timestamp / div;
        if i == 0 {
            put_uvarint(&mut out, zigzag(t));
        } else {
            let delta = t.wrapping_sub(prev);
            put_uvarint(&mut out, zigzag(delta.wrapping_sub(prev_delta)));
            prev_delta = delta;
        }
        prev = t;
    }
    out
}

fn decode_varint_timestamps(
    bytes: &[u8],
    count: usize,
    end: Option<i64>,
    out: &mut Vec<Sample>,
) -> Result<(), CodecError> {
    if count == 0 {
        return Ok(());
    }
    let (mul, first, mut pos) = scaled_first(bytes)?;
    if past(first.wrapping_mul(mul), end) {
        return Ok(());
    }
    out.push(Sample::new(first.wrapping_mul(mul), 0.0));
    let (mut prev, mut prev_delta) = (first, 0i64);
    for _ in 1..count {
        let delta = prev_delta.wrapping_add(unzigzag(get_uvarint(bytes, &mut pos)?));
        let t = prev.wrapping_add(delta);
        if past(t.wrapping_mul(mul), end) {
            break;
        }
        out.push(Sample::new(t.wrapping_mul(mul), 0.0));
        prev = t;
        prev_delta = delta;
    }
    Ok(())
}

/// Gorilla XOR values; the leading/trailing-zero window is reused while the next
/// XOR fits inside it, as the paper describes.
fn gorilla_values(samples: &[Sample], out: &mut Vec<u8>) {
    let mut w = BitWriter::with_capacity(samples.len() + 8);
    let mut prev = 0u64;
    // No window until the first non-zero XOR with a new window.
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for (i, s) in samples.iter().enumerate() {
        let bits = s.value.to_bits();
        if i == 0 {
            w.write(bits, 64);
            prev = bits;
            continue;
        }
        let xor = bits ^ prev;
        prev = bits;
        if xor == 0 {
            w.write(0, 1);
            continue;
        }
        let l = xor.leading_zeros().min(31);
        let t = xor.trailing_zeros();
        if lead != u32::MAX && l >= lead && t >= trail {
            w.write(0b10, 2);
            w.write(xor >> trail, 64 - lead - trail);
        } else {
            let len = 64 - l - t;
            w.write(0b11, 2);
            w.write(l as u64, 5);
            w.write((len - 1) as u64, 6);
            w.write(xor >> t, len);
            lead = l;
            trail = t;
        }
    }
    out.extend_from_slice(&w.finish());
}

fn decode_gorilla_values(bytes: &[u8], samples: &mut [Sample]) -> Result<(), CodecError> {
    let mut r = BitReader::new(bytes);
    let mut prev = 0u64;
    let (mut lead, mut trail) = (u32::MAX, 0u32);
    for (i, s) in samples.iter_mut().enumerate() {
        if i == 0 {
            prev = r.read(64)?;
        } else if r.read_bit()? {
            if !r.read_bit()? {
                if lead == u32::MAX {
                    return Err(CodecError::Malformed(
                        "XOR window reused before one was set",
                    ));
                }
                prev ^= r.read(64 - lead - trail)? << trail;
            } else {
                let l = r.read(5)? as u32;
                let len = r.read(6)? as u32 + 1;
                if l + len > 64 {
                    return Err(CodecError::Malformed("XOR window wider than 64 bits"));
                }
                let t = 64 - l - len;
                prev ^= r.read(len)? << t;
                lead = l;
                trail = t;
            }
        }
        s.value = f64::from_bits(prev);
    }
    Ok(())
}

/// The smallest k such that every value is exactly `m / 10^k` for an integer `m`
/// of at most 53 bits, or `None` (NaN, infinities, -0.0 and long fractions).
pub(crate) fn decimal_exponent(samples: &[Sample]) -> Option<u8> {
    let mut k = 0usize;
    for s in samples {
        while to_decimal(s.value, k).is_none() {
            k += 1;
            if k > MAX_DECIMAL_DIGITS {
                return None;
            }
        }
    }
    // A value may need fewer digits than k yet not round-trip at k; check them all.
    samples
        .iter()
        .all(|s| to_decimal(s.value, k).is_some())
        .then_some(k as u8)
}

#[inline]
pub(crate) fn to_decimal(v: f64, k: usize) -> Option<i64> {
    let m = (v * POW10[k]).round();
    if m.is_nan() || m.abs() > MAX_EXACT_INT {
        return None;
    }
    // Round-trip through the integer, as the decoder will: -0.0 comes back as 0.0.
    let back = (m as i64) as f64 / POW10[k];
    (back.to_bits() == v.to_bits()).then_some(m as i64)
}

/// The values as integers scaled by `10^k`, and the greatest common divisor of
/// their deltas (at least one).
fn scaled_decimals(samples: &[Sample], k: u8) -> (Vec<i64>, u64) {
    let ms: Vec<i64> = samples
        .iter()
        .map(|s| to_decimal(s.value, k as usize).expect("decimal_exponent checked every value"))
        .collect();
    let divisor = ms
        .windows(2)
        .fold(0u64, |g, w| gcd(g, w[1].wrapping_sub(w[0]).unsigned_abs()))
        .max(1);
    (ms, divisor)
}

/// Exact short decimals as scaled integers: the deltas, divided by their common
/// divisor and less their median (a counter's typical increase). Writes the
/// modelled-decimal header (`k`, first value, divisor, median; the same in both
/// formats) and returns the zigzagged residuals for the section's coder.
fn decimal_model_residuals(samples: &[Sample], k: u8, out: &mut Vec<u8>) -> Vec<u64> {
    let (ms, divisor) = scaled_decimals(samples, k);
    let divisor = divisor as i64;
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
    steps.iter().map(|s| zigzag(s - median)).collect()
}

const DECIMAL_OVERFLOW: CodecError = CodecError::Malformed("decimal value out of range");

/// What a modelled-decimal reader carries from value to value (both formats).
struct DecimalSteps {
    prev: i64,
    divisor: i64,
    median: i64,
    scale: f64,
}

impl DecimalSteps {
    /// Reads the header: the state, the first value, and where the coded
    /// residuals start.
    fn open(bytes: &[u8]) -> Result<(Self, f64, usize), CodecError> {
        let k = *bytes.first().ok_or(CodecError::Truncated)? as usize;
        if k > MAX_DECIMAL_DIGITS {
            return Err(CodecError::Malformed("decimal exponent out of range"));
        }
        let mut pos = 1;
        let prev = unzigzag(get_uvarint(bytes, &mut pos)?);
        let divisor = i64::try_from(get_uvarint(bytes, &mut pos)?).map_err(|_| DECIMAL_OVERFLOW)?;
        let median = unzigzag(get_uvarint(bytes, &mut pos)?);
        let steps = Self {
            prev,
            divisor,
            median,
            scale: POW10[k],
        };
        Ok((steps, prev as f64 / POW10[k], pos))
    }

    /// The next value, from its decoded residual.
    #[inline(always)]
    fn next(&mut self, residual: u64) -> Result<f64, CodecError> {
        let step = unzigzag(residual)
            .checked_add(self.median)
            .ok_or(DECIMAL_OVERFLOW)?;
        self.prev = step
            .checked_mul(self.divisor)
            .and_then(|d| self.prev.checked_add(d))
            .ok_or(DECIMAL_OVERFLOW)?;
        Ok(self.prev as f64 / self.scale)
    }
}

/// Decimal deltas divided by their greatest common divisor (memory gauges move in
/// whole pages, counters in fixed steps): `k`, first value, divisor, then deltas.
fn decimal_values(samples: &[Sample], k: u8, out: &mut Vec<u8>) {
    out.push(k);
    let (ms, divisor) = scaled_decimals(samples, k);
    put_uvarint(out, zigzag(ms[0]));
    put_uvarint(out, divisor);
    for w in ms.windows(2) {
        // Exact: the divisor divides every delta (as a wrapping difference it is
        // the true difference, |m| <= 2^53).
        put_uvarint(out, zigzag(w[1].wrapping_sub(w[0]) / divisor as i64));
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn decode_decimal_values(bytes: &[u8], samples: &mut [Sample]) -> Result<(), CodecError> {
    let k = *bytes.first().ok_or(CodecError::Truncated)? as usize;
    if k > MAX_DECIMAL_DIGITS {
        return Err(CodecError::Malformed("decimal exponent out of range"));
    }
    let mut pos = 1;
    let mut prev = unzigzag(get_uvarint(bytes, &mut pos)?);
    let divisor = get_uvarint(bytes, &mut pos)? as i64;
    for (i, s) in samples.iter_mut().enumerate() {
        if i > 0 {
            prev = prev.wrapping_add(unzigzag(get_uvarint(bytes, &mut pos)?).wrapping_mul(divisor));
        }
        s.value = prev as f64 / POW10[k];
    }
    Ok(())
}

/// The grid interval: the typical positive delta, refined over the whole chunk so
/// a jittered median (10.001 s) does not drift against the true interval (10 s).
fn grid_interval(ts: &[i64]) -> i64 {
    let mut deltas: Vec<i64> = ts
        .windows(2)
        .filter_map(|w| w[1].checked_sub(w[0]))
        .filter(|&d| d > 0)
        .collect();
    if deltas.is_empty() {
        return 1;
    }
    let mid = deltas.len() / 2;
    let median = *deltas.select_nth_unstable(mid).1;
    let (mut span, mut steps) = (0i128, 0i128);
    for &d in &deltas {
        let q = (d as i128 + median as i128 / 2) / median as i128;
        // Only deltas near a whole number of intervals: a phase shift is not drift.
        let off_grid = (d as i128 - q * median as i128).abs() > median as i128 / 8;
        if q > 0 && q < 1 << 20 && !off_grid {
            span += d as i128;
            steps += q;
        }
    }
    if steps == 0 {
        return median;
    }
    ((span + steps / 2) / steps).clamp(1, i64::MAX as i128) as i64
}

/// Splits a distance from the grid into whole intervals and a remainder of at most
/// half an interval.
#[inline]
fn grid_split(delta: i64, interval: i64) -> (i64, i64) {
    let q = delta.div_euclid(interval);
    let r = delta.rem_euclid(interval);
    if r > interval / 2 {
        (q + 1, r - interval)
    } else {
        (q, r)
    }
}

#[inline]
fn grid_advance(grid: i64, step: i64, offset: i64, interval: i64) -> Option<i64> {
    let next = grid.checked_add(step.checked_mul(interval)?)?;
    if offset.unsigned_abs() > (interval / 8) as u64 {
        next.checked_add(offset)
    } else {
        Some(next)
    }
}

/// A modelled timestamp section read a sample at a time, so a decode can
/// interleave it with the values: the two sections are coded independently,
/// and the CPU overlaps their dependency chains.
trait TimeStream {
    fn next(&mut self) -> Result<i64, CodecError>;
}

/// A modelled value section read a sample at a time (see [`TimeStream`]).
trait ValueStream {
    fn next(&mut self) -> Result<f64, CodecError>;
}

const GRID_OVERFLOW: CodecError = CodecError::Malformed("grid timestamp out of range");

/// Timestamps up to `end`, from an opened section and its first timestamp.
fn read_times<T: TimeStream>(
    (mut reader, first): (T, i64),
    count: usize,
    end: Option<i64>,
    out: &mut Vec<Sample>,
) -> Result<(), CodecError> {
    let mut t = first;
    for i in 0..count {
        if i > 0 {
            t = reader.next()?;
        }
        if past(t, end) {
            break;
        }
        out.push(Sample::new(t, 0.0));
    }
    Ok(())
}

/// Values into `samples`, from an opened section and its first value.
fn read_values<V: ValueStream>(
    (mut reader, first): (V, f64),
    samples: &mut [Sample],
) -> Result<(), CodecError> {
    for (i, s) in samples.iter_mut().enumerate() {
        s.value = if i == 0 { first } else { reader.next()? };
    }
    Ok(())
}

/// Where format 2's common pair is, and how much of it to read.
#[derive(Clone, Copy)]
struct PairSections<'a> {
    ts: &'a [u8],
    values: &'a [u8],
    scale: u8,
    min_time: i64,
    count: usize,
    end: Option<i64>,
}

/// Format 2's common pair, compiled twice: for baseline x86-64 and with AVX2
/// and friends, picked when the chunk is read. A symbol's search and its
/// model's update are loops over 16-bit lanes; AVX2 does each in half the
/// instructions.
fn read_grid_decimal(p: PairSections<'_>, out: &mut Vec<Sample>) -> Result<(), CodecError> {
    #[cfg(target_arch = "x86_64")]
    if x86_v3_subset() {
        // SAFETY: the CPU has every feature the function enables, checked just above.
        return unsafe { read_grid_decimal_avx2(p, out) };
    }
    read_grid_decimal_here(p, out)
}

/// Whether the CPU has what [`read_grid_decimal_avx2`] is compiled for (the
/// detection is cached by std). Tests can turn it off to check the baseline.
#[cfg(target_arch = "x86_64")]
fn x86_v3_subset() -> bool {
    #[cfg(test)]
    if tests::BASELINE_ONLY.with(|b| b.get()) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("popcnt")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("lzcnt")
}

/// With the instructions of x86-64-v3 that help here (AVX2 for the 16-bit lane
/// loops; POPCNT, BMI and LZCNT for counts, shifts and bit lengths): 24 → 18 ns
/// a sample in `codec_report`. (AVX-512 made it 44: not used.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1,bmi2,lzcnt")]
fn read_grid_decimal_avx2(p: PairSections<'_>, out: &mut Vec<Sample>) -> Result<(), CodecError> {
    read_grid_decimal_here(p, out)
}

/// The loop itself, inlined into each of the above.
#[inline(always)]
fn read_grid_decimal_here(p: PairSections<'_>, out: &mut Vec<Sample>) -> Result<(), CodecError> {
    let times = || GridReader::open(p.ts, p.scale, p.min_time);
    read_pair(DecimalReader::open(p.values)?, times, p.count, p.end, out)
}

/// The common pair (grid timestamps, modelled decimals) a sample at a time,
/// timestamp and value side by side in one loop. The value section is opened
/// first, even for an empty chunk, as the section-at-a-time decoders do: a
/// damaged header is an error either way.
#[inline(always)]
fn read_pair<T: TimeStream, V: ValueStream>(
    (mut values, first_value): (V, f64),
    open_times: impl FnOnce() -> Result<(T, i64), CodecError>,
    count: usize,
    end: Option<i64>,
    out: &mut Vec<Sample>,
) -> Result<(), CodecError> {
    if count == 0 {
        return Ok(());
    }
    let (mut times, first) = open_times()?;
    if past(first, end) {
        return Ok(());
    }
    out.push(Sample::new(first, first_value));
    for _ in 1..count {
        let t = times.next()?;
        if past(t, end) {
            break;
        }
        out.push(Sample::new(t, values.next()?));
    }
    Ok(())
}
#[cfg(test)]
mod tests;

//! RocksDB column families and key layouts (documented in docs/storage.md).

use crate::model::put_str;

/// Series key bytes -> series id.
pub const CF_SERIES: &str = "series";
/// Series id -> tier byte + series key bytes.
pub const CF_SERIES_IDS: &str = "series_ids";
/// Label pair (with `__name__` for the metric) + series id -> nothing.
pub const CF_POSTINGS: &str = "postings";
/// Tier + chunk window + series id + sequence -> encoded chunk.
pub const CF_CHUNKS: &str = "chunks";
/// Sequence -> a logged write batch not yet covered by chunks.
pub const CF_HEAD_LOG: &str = "head_log";
/// Series id -> what of the series' head is already in chunks.
pub const CF_SERIES_STATE: &str = "series_state";
/// Engine-wide values (next series id, durable index, downsampling progress).
pub const CF_META: &str = "meta";
/// Replicated key-value state for features (layout in shard/state.rs).
pub const CF_STATE: &str = "state";

pub const ALL_CFS: [&str; 8] = [
    CF_SERIES,
    CF_SERIES_IDS,
    CF_POSTINGS,
    CF_CHUNKS,
    CF_HEAD_LOG,
    CF_SERIES_STATE,
    CF_META,
    CF_STATE,
];

pub const META_NEXT_SERIES_ID: &[u8] = b"next_series_id";
pub const META_DURABLE_INDEX: &[u8] = b"durable_index";
pub const META_DOWNSAMPLED_PREFIX: &str = "downsampled_until/";

/// Order-preserving encoding of a signed time.
#[inline]
pub fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

#[inline]
pub fn time_from_bytes(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

pub fn u64_from(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// `tier(1) | window start(8) | series id(8) | sequence(8)`.
pub fn chunk_key(tier: u8, window: i64, id: u64, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = tier;
    k[1..9].copy_from_slice(&time_bytes(window));
    k[9..17].copy_from_slice(&id.to_be_bytes());
    k[17..25].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix shared by one series' chunks in one window.
pub fn chunk_prefix(tier: u8, window: i64, id: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k.copy_from_slice(&chunk_key(tier, window, id, 0)[..17]);
    k
}

/// The first key of a tier's window (used as a range-delete bound).
pub fn chunk_window_start(tier: u8, window: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tier;
    k[1..].copy_from_slice(&time_bytes(window));
    k
}

pub struct ChunkKey {
    pub tier: u8,
    pub window: i64,
    pub seq: u64,
}

pub fn parse_chunk_key(k: &[u8]) -> Option<ChunkKey> {
    if k.len() != 25 {
        return None;
    }
    Some(ChunkKey {
        tier: k[0],
        window: time_from_bytes(&k[1..9]),
        seq: u64_from(&k[17..25])?,
    })
}

/// `len name | name | len value | value` — the prefix of a label pair's postings.
pub fn postings_prefix(name: &str, value: &str) -> Vec<u8> {
    let mut k = postings_name_prefix(name);
    put_str(&mut k, value);
    k
}

/// The prefix of all postings of one label name.
pub fn postings_name_prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 24);
    put_str(&mut k, name);
    k
}

pub fn postings_key(name: &str, value: &str, id: u64) -> Vec<u8> {
    let mut k = postings_prefix(name, value);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Splits a postings key into (value, id), given the length of its name prefix.
#[cfg(test)]
pub fn parse_postings_key(key: &[u8], name_prefix_len: usize) -> Option<(&[u8], u64)> {
    let rest = key.get(name_prefix_len..)?;
    let mut pos = 0;
    let len = crate::codec::get_uvarint(rest, &mut pos).ok()? as usize;
    let value = rest.get(pos..pos + len)?;
    let id = u64_from(rest.get(pos + len..)?)?;
    Some((value, id))
}

/// `series_state` value: flushed sequence, flushed-below window, last flushed
/// time, and (when known) the value flushed at that time: 24 or 32 bytes.
pub fn series_state_value(
    flushed_seq: u64,
    flushed_below: i64,
    max_time: i64,
    last_value: Option<f64>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&flushed_seq.to_be_bytes());
    v.extend_from_slice(&time_bytes(flushed_below));
    v.extend_from_slice(&time_bytes(max_time));
    if let Some(value) = last_value {
        v.extend_from_slice(&value.to_bits().to_be_bytes());
    }
    v
}

/// What [`series_state_value`] wrote: (flushed sequence, flushed-below
/// window, last flushed time, the value at that time if it was kept).
pub fn parse_series_state(v: &[u8]) -> Option<(u64, i64, i64, Option<f64>)> {
    if v.len() != 24 && v.len() != 32 {
        return None;
    }
    let last_value = v.get(24..).and_then(u64_from).map(f64::from_bits);
    Some((
        u64_from(&v[..8])?,
        time_from_bytes(&v[8..16]),
        time_from_bytes(&v[16..24]),
        last_value,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_encoding_preserves_order() {
        let ts = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in ts.windows(2) {
            assert!(time_bytes(w[0]) < time_bytes(w[1]));
            assert_eq!(time_from_bytes(&time_bytes(w[0])), w[0]);
        }
    }

    #[test]
    fn chunk_and_postings_keys_round_trip() {
        let k = parse_chunk_key(&chunk_key(2, -7_200, 42, 9)).unwrap();
        assert_eq!((k.tier, k.window, k.seq), (2, -7_200, 9));
        assert_eq!(&chunk_key(2, -7_200, 42, 9)[9..17], &42u64.to_be_bytes());
        let name_len = postings_name_prefix("host").len();
        let key = postings_key("host", "web-1", 77);
        assert_eq!(
            parse_postings_key(&key, name_len),
            Some((&b"web-1"[..], 77))
        );
        assert!(key.starts_with(&postings_prefix("host", "web-1")));
        assert!(!postings_key("hostname", "x", 1).starts_with(&postings_name_prefix("host")));
    }
}

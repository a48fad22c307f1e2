//! A bounded cache of decoded chunks, in two tiers.
//!
//! Chunks are range coded for size (about 1.4 bytes per sample), which makes
//! decoding the dominant cost of a query over data already in RocksDB's block
//! cache: a few hundred instructions per sample, and a chunk decodes whole even
//! when a query needs its last minutes. So chunks read recently stay decoded:
//!
//! * the **decoded tier** (a quarter of the budget) holds samples as queries use
//!   them, 16 bytes each: a hit costs nothing;
//! * the **packed tier** (the other three quarters) holds the same chunks packed
//!   ([`PackedChunk`]: about 4 to 6 bytes a sample on scraped data), so a working
//!   set three or four times larger than the decoded tier still avoids the range
//!   decoder; a hit unpacks in one or two nanoseconds a sample and copies the
//!   chunk into the decoded tier (the packed entry stays).
//!
//! A chunk decoded for a read enters both tiers; one written by a cut enters the
//! decoded tier only (write-through: recent data is what is read, and packing
//! every cut would cost ingest CPU). Each tier's policy (CLOCK-Pro in
//! `quick_cache`) resists one-off scans evicting its hot set.
//!
//! Entries are keyed by where the chunk is stored *and* by its checksum, so a
//! chunk rewritten under the same key (a merge of late samples) never serves
//! its stale decoding: no invalidation is needed.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::model::Sample;
use crate::packed::PackedChunk;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct ChunkId {
    pub series: u64,
    pub tier: u8,
    pub window: i64,
    pub seq: u64,
    /// The chunk's stored CRC-32 trailer.
    pub checksum: u32,
}

/// Per-entry bookkeeping counted on top of an entry's own bytes; never zero
/// (a zero weight pins an entry).
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct DecodedWeighter;

impl Weighter<ChunkId, Arc<[Sample]>> for DecodedWeighter {
    fn weight(&self, _key: &ChunkId, samples: &Arc<[Sample]>) -> u64 {
        std::mem::size_of_val(&samples[..]) as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone)]
struct PackedWeighter;

impl Weighter<ChunkId, Arc<PackedChunk>> for PackedWeighter {
    fn weight(&self, _key: &ChunkId, chunk: &Arc<PackedChunk>) -> u64 {
        chunk.bytes() as u64 + ENTRY_OVERHEAD
    }
}

type FxBuild = std::hash::BuildHasherDefault<rustc_hash::FxHasher>;

/// Where a chunk was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Decoded,
    Packed,
}

pub(crate) struct DecodedCache {
    decoded: Cache<ChunkId, Arc<[Sample]>, DecodedWeighter, FxBuild>,
    packed: Cache<ChunkId, Arc<PackedChunk>, PackedWeighter, FxBuild>,
}

/// A decoded chunk is ~720 samples × 16 bytes, a packed one about a quarter of
/// that; used to size the hash tables.
const TYPICAL_DECODED_BYTES: usize = 720 * 16;
const TYPICAL_PACKED_BYTES: usize = 720 * 4;

impl DecodedCache {
    /// `None` when `bytes` is zero (caching off).
    pub fn new(bytes: usize) -> Option<Self> {
        if bytes == 0 {
            return None;
        }
        let decoded_bytes = (bytes / 4).max(1);
        let packed_bytes = (bytes - bytes / 4).max(1);
        Some(Self {
            decoded: Cache::with(
                (decoded_bytes / TYPICAL_DECODED_BYTES).max(16),
                decoded_bytes as u64,
                DecodedWeighter,
                FxBuild::default(),
                Default::default(),
            ),
            packed: Cache::with(
                (packed_bytes / TYPICAL_PACKED_BYTES).max(16),
                packed_bytes as u64,
                PackedWeighter,
                FxBuild::default(),
                Default::default(),
            ),
        })
    }

    /// The chunk's samples, and which tier had them. A packed hit is
    /// unpacked and copied into the decoded tier (it stays packed too).
    pub fn get(&self, id: &ChunkId) -> Option<(Arc<[Sample]>, Found)> {
        if let Some(samples) = self.decoded.get(id) {
            return Some((samples, Found::Decoded));
        }
        let samples: Arc<[Sample]> = self.packed.get(id)?.unpack().into();
        self.decoded.insert(*id, samples.clone());
        Some((samples, Found::Packed))
    }

    /// A chunk a read decoded: into both tiers.
    pub fn insert_read(&self, id: ChunkId, samples: Arc<[Sample]>) {
        self.packed
            .insert(id, Arc::new(PackedChunk::pack(&samples)));
        self.decoded.insert(id, samples);
    }

    /// A chunk a cut just wrote: into the decoded tier.
    pub fn insert_written(&self, id: ChunkId, samples: Arc<[Sample]>) {
        self.decoded.insert(id, samples);
    }

    /// Bytes held in both tiers (by the weighers' count).
    pub fn weight(&self) -> u64 {
        self.decoded.weight() + self.packed.weight()
    }

    /// Bytes held in the packed tier.
    #[cfg(test)]
    pub fn packed_weight(&self) -> u64 {
        self.packed.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(series: u64) -> ChunkId {
        ChunkId {
            series,
            tier: 0,
            window: 0,
            seq: 0,
            checksum: 7,
        }
    }

    fn chunk(n: i64) -> Arc<[Sample]> {
        (0..n)
            .map(|i| Sample::new(i * 10_000, (i % 50) as f64 / 10.0))
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn a_chunk_pushed_out_of_the_decoded_tier_is_still_found_packed() {
        // A budget whose decoded quarter holds about two chunks of 720
        // samples, and whose packed three quarters hold all twenty.
        let cache = DecodedCache::new(4 * 2 * (720 * 16 + 64) + 1000).unwrap();
        let samples = chunk(720);
        for s in 0..20 {
            cache.insert_read(id(s), samples.clone());
        }
        let mut found = Vec::new();
        for s in 0..20 {
            let (got, tier) = cache.get(&id(s)).expect("every chunk is held in some form");
            assert_eq!(&got[..], &samples[..]);
            found.push(tier);
        }
        assert!(found.contains(&Found::Packed), "{found:?}");
        // A packed hit copied the chunk into the decoded tier.
        let last_packed = found.iter().rposition(|f| *f == Found::Packed).unwrap();
        assert_eq!(
            cache.get(&id(last_packed as u64)).unwrap().1,
            Found::Decoded
        );
        assert!(cache.weight() <= 4 * 2 * (720 * 16 + 64) + 1000);
    }

    #[test]
    fn a_written_chunk_is_held_decoded_only() {
        let cache = DecodedCache::new(1 << 20).unwrap();
        cache.insert_written(id(1), chunk(100));
        assert_eq!(cache.get(&id(1)).unwrap().1, Found::Decoded);
        assert_eq!(cache.packed_weight(), 0);
        assert!(DecodedCache::new(0).is_none());
    }
}

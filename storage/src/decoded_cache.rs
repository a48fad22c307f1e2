//! A bounded cache of decoded chunks.
//!
//! Chunks are range coded for size (about 1.4 bytes per sample), which makes
//! decoding the dominant cost of a query over data already in RocksDB's block
//! cache: a few hundred instructions per sample, and a chunk decodes whole even
//! when a query needs its last minutes. Recently read chunks are kept decoded
//! (16 bytes per sample) up to a byte budget; the policy (CLOCK-Pro in
//! `quick_cache`) resists one-off scans evicting the hot set. Chunks are also
//! inserted when they are written (write-through): recent data is what is read.
//!
//! Entries are keyed by where the chunk is stored *and* by its checksum, so a
//! chunk rewritten under the same key (a merge of late samples) never serves
//! its stale decoding: no invalidation is needed.

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::model::Sample;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct ChunkId {
    pub series: u64,
    pub tier: u8,
    pub window: i64,
    pub seq: u64,
    /// The chunk's stored CRC-32 trailer.
    pub checksum: u32,
}

#[derive(Clone)]
struct BytesWeighter;

impl Weighter<ChunkId, Arc<[Sample]>> for BytesWeighter {
    fn weight(&self, _key: &ChunkId, samples: &Arc<[Sample]>) -> u64 {
        // Samples plus the entry's own bookkeeping; never zero (zero pins an entry).
        (std::mem::size_of_val(&samples[..]) + 64) as u64
    }
}

type FxBuild = std::hash::BuildHasherDefault<rustc_hash::FxHasher>;

pub(crate) struct DecodedCache {
    cache: Cache<ChunkId, Arc<[Sample]>, BytesWeighter, FxBuild>,
}

/// A decoded chunk is ~720 samples × 16 bytes; used to size the hash table.
const TYPICAL_ENTRY_BYTES: usize = 720 * 16;

impl DecodedCache {
    /// `None` when `bytes` is zero (caching off).
    pub fn new(bytes: usize) -> Option<Self> {
        (bytes > 0).then(|| Self {
            cache: Cache::with(
                (bytes / TYPICAL_ENTRY_BYTES).max(16),
                bytes as u64,
                BytesWeighter,
                FxBuild::default(),
                Default::default(),
            ),
        })
    }

    pub fn get(&self, id: &ChunkId) -> Option<Arc<[Sample]>> {
        self.cache.get(id)
    }

    pub fn insert(&self, id: ChunkId, samples: Arc<[Sample]>) {
        self.cache.insert(id, samples);
    }

    /// Bytes held (by the weigher's count).
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }
}

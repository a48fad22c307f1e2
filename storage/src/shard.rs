//! A storage shard: one RocksDB database holding many series.
//!
//! Writes land in a per-series in-memory head and, in the same RocksDB write, in a log
//! (`head_log`) or, under Raft, in the caller's log. Heads are cut into compressed
//! chunks per epoch-aligned window; the durable index says which logged batches are
//! fully in chunks, and the log is truncated up to it. Reads merge chunks and head.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rocksdb::{
    checkpoint::Checkpoint, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    DBCompressionType, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use rustc_hash::{FxHashMap, FxHasher};
use tracing::{debug, info_span};

use crate::aggregate::{
    is_aggregatable, window_start, AggregateFunction, AggregateSeries, CounterWindow, Partial,
};
use crate::codec::{self, encode_chunk, get_uvarint, put_uvarint, unzigzag, zigzag};
use crate::config::{nanos, DownsampleRule, ShardConfig};
use crate::decoded_cache::{ChunkId, DecodedCache, Found};
use crate::keys::*;
use crate::matcher::{MatchOp, Matcher};
use crate::model::{
    decode_points, encode_points, EncodedPoints, Label, LabelPair, Limits, Point, PointsView,
    Sample, SeriesKey, METRIC_LABEL,
};
use crate::postings::Postings;
use crate::{Result, StorageError};

mod parallel;
mod state;

struct SeriesEntry {
    /// Shared with readers, which name the series only if a chunk is corrupt.
    key: Arc<SeriesKey>,
    tier: u8,
    head: Vec<Sample>,
    /// Lowest sequence whose samples may be in `head` (valid while it is not empty).
    head_first_seq: u64,
    /// Newest chunk window seen in the head, and the sequence that first wrote to it.
    head_window: i64,
    window_first_seq: u64,
    /// What the chunks already hold: samples up to `flushed_seq` in windows below
    /// `flushed_below` (replay skips those), and the newest flushed timestamp.
    flushed_seq: u64,
    flushed_below: i64,
    max_time: i64,
    /// The sample at `max_time` as the chunks hold it, kept from the cut
    /// that wrote it, so that "the last value" is answered without decoding
    /// a chunk. `None` after a restart (until the next cut) and once a
    /// delete or retention may have removed it.
    last_flushed: Option<Sample>,
    cut_marked: bool,
}

impl SeriesEntry {
    fn new(key: SeriesKey, tier: u8) -> Self {
        Self {
            key: key.into(),
            tier,
            head: Vec::new(),
            head_first_seq: 0,
            head_window: i64::MIN,
            window_first_seq: 0,
            flushed_seq: 0,
            flushed_below: i64::MIN,
            max_time: i64::MIN,
            last_flushed: None,
            cut_marked: false,
        }
    }
}

#[derive(Default)]
struct State {
    by_hash: FxHashMap<u64, Vec<u64>>,
    postings: Postings,
    series: FxHashMap<u64, SeriesEntry>,
    /// (head_first_seq, id) of every series with a non-empty head.
    pending: BTreeSet<(u64, u64)>,
    to_cut: Vec<u64>,
    next_id: u64,
    last_seq: u64,
    durable: u64,
    log_truncated_to: u64,
    /// Idempotency records (and their expiry index) changed by entries after
    /// the durable index: the value and the entry that set it (`None`:
    /// deleted). RocksDB holds them as of the durable index, like chunks, so
    /// a replay from there decides exactly as the first run did.
    idem_overlay: BTreeMap<Vec<u8>, (Option<Vec<u8>>, u64)>,
    /// The same changes in entry order, written as the durable index passes them.
    idem_pending: VecDeque<(u64, Vec<u8>, Option<Vec<u8>>)>,
    /// Indexes of downsampling entries whose output is recorded in `meta`
    /// (see [`Shard::apply_downsample`]), dropped once the durable index
    /// passes them.
    downsample_records: VecDeque<u64>,
}

impl State {
    fn lookup<L: LabelPair>(&self, hash: u64, metric: &str, labels: &[L]) -> Option<u64> {
        self.by_hash.get(&hash)?.iter().copied().find(|id| {
            self.series
                .get(id)
                .is_some_and(|e| same_series(&e.key, metric, labels))
        })
    }
}

fn series_hash<L: LabelPair>(metric: &str, labels: &[L]) -> u64 {
    let mut h = FxHasher::default();
    metric.hash(&mut h);
    for l in labels.iter().filter(|l| !l.value().is_empty()) {
        l.name().hash(&mut h);
        l.value().hash(&mut h);
    }
    h.finish()
}

fn same_series<L: LabelPair>(key: &SeriesKey, metric: &str, labels: &[L]) -> bool {
    key.metric == metric
        && key
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .eq(labels
                .iter()
                .filter(|l| !l.value().is_empty())
                .map(|l| (l.name(), l.value())))
}

/// How many samples a cut moved into chunks, for tests and reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushReport {
    pub series: usize,
    pub chunks: usize,
    pub samples: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub tiers_trimmed: usize,
    pub series_removed: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DownsampleReport {
    pub rules_run: usize,
    pub points_written: usize,
}

/// One run of a downsampling rule as a replicated entry carries it: the
/// rule itself (so a replica applies it whatever its own settings), the
/// tier its output lives in, the end of the run (exclusive, ns; fixed by
/// the leader's clock) and the most windows one entry covers.
#[derive(Debug, Clone)]
pub struct DownsampleStep {
    pub rule: DownsampleRule,
    pub tier: u8,
    pub to: i64,
    pub max_windows: u32,
}

impl PartialEq for DownsampleStep {
    fn eq(&self, other: &Self) -> bool {
        let matchers = |s: &Self| {
            s.rule
                .matchers
                .iter()
                .map(|m| (m.name.clone(), m.op, m.value.clone()))
                .collect::<Vec<_>>()
        };
        self.rule.window == other.rule.window
            && self.rule.function == other.rule.function
            && self.tier == other.tier
            && self.to == other.to
            && self.max_windows == other.max_windows
            && matchers(self) == matchers(other)
    }
}

/// Where the output of the downsampling entry at `index` is recorded.
fn downsample_record_key(index: u64) -> Vec<u8> {
    let mut key = DOWNSAMPLE_RECORD_PREFIX.to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Prefix of [`downsample_record_key`] in `meta`.
const DOWNSAMPLE_RECORD_PREFIX: &[u8] = b"downsample_output/";

/// Where a rule's progress is kept (in `meta`).
fn downsample_progress_key(rule: &DownsampleRule) -> Vec<u8> {
    format!("{META_DOWNSAMPLED_PREFIX}{}", rule.suffix()).into_bytes()
}

/// `<metric>:<duration>:<function>`: the name a downsampling rule gives
/// its output.
fn is_downsampled_name(metric: &str) -> bool {
    let mut parts = metric.rsplitn(3, ':');
    let (Some(function), Some(window), Some(base)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !base.is_empty() && function.parse::<AggregateFunction>().is_ok() && humantime_like(window)
}

/// `90s`, `5m`, `2h`, `7d`, `250ms`: what `format_duration` writes.
fn humantime_like(text: &str) -> bool {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(&text[digits..], "ms" | "s" | "m" | "h" | "d")
}

/// A consistent copy of a shard, made by [`Shard::checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub path: PathBuf,
    /// Every batch up to this index is in the checkpoint, nothing after it.
    pub applied_index: u64,
}

/// One keyed part of a batch: points `start..start + len` of the batch belong
/// to the write with this idempotency key (its `part`-th piece in this shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedPart<'a> {
    pub key: &'a str,
    pub part: u32,
    pub start: u32,
    pub len: u32,
}

/// Fixed in the log entry by the leader, so every replica decides alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedStamp {
    /// Unique per submission: a retry is a new submission.
    pub nonce: u64,
    /// When the leader proposed it (ns since the epoch).
    pub at: i64,
    /// How long a key is remembered (ns).
    pub window: i64,
}

/// What applying a keyed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyedApply {
    /// False for an index already applied (nothing done).
    pub fresh: bool,
    pub written: usize,
    /// Parts skipped as retries of a write already applied.
    pub duplicates: Vec<usize>,
}

/// Keeps the head samples of series `id` that pass `keep`; a head left empty
/// no longer holds the durable frontier back.
/// Drops the head samples `keep` refuses. What removes head samples removes
/// chunk samples too: true when the newest flushed sample is forgotten for
/// that (the caller writes the series state again, so a restart agrees).
#[must_use]
fn trim_head(st: &mut State, id: u64, keep: impl Fn(&Sample) -> bool) -> bool {
    let Some(e) = st.series.get_mut(&id) else {
        return false;
    };
    let forgot = e.last_flushed.is_some_and(|s| !keep(&s));
    if forgot {
        e.last_flushed = None;
    }
    if e.head.is_empty() {
        return forgot;
    }
    e.head.retain(|s| keep(s));
    if e.head.is_empty() {
        let first = e.head_first_seq;
        st.pending.remove(&(first, id));
    }
    forgot
}

fn idem_set(st: &mut State, index: u64, key: Vec<u8>, value: Option<Vec<u8>>) {
    st.idem_overlay.insert(key.clone(), (value.clone(), index));
    st.idem_pending.push_back((index, key, value));
}

/// Records that the entry at `index` applied `record` (an idempotency key's
/// part, or a delete's id) under `stamp`, with its expiry index entry.
fn remember(st: &mut State, index: u64, record: Vec<u8>, stamp: KeyedStamp) {
    let mut value = stamp.nonce.to_be_bytes().to_vec();
    value.extend_from_slice(&(stamp.at as u64).to_be_bytes());
    idem_set(
        st,
        index,
        idempotency_expiry_key(stamp.at, &record),
        Some(Vec::new()),
    );
    idem_set(st, index, record, Some(value));
}

const IDEMPOTENCY_PREFIX: &[u8] = b"idem/";
const IDEMPOTENCY_EXPIRY_PREFIX: &[u8] = b"idemx/";

fn idempotency_key(key: &str, part: u32) -> Vec<u8> {
    let mut k = IDEMPOTENCY_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// Expiry index: time (order-preserving) then the record's key.
fn idempotency_expiry_key(at: i64, record: &[u8]) -> Vec<u8> {
    let mut k = IDEMPOTENCY_EXPIRY_PREFIX.to_vec();
    k.extend_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(record);
    k
}

/// What a delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Series matched.
    pub series: usize,
    /// Samples removed (from chunks and heads).
    pub samples: usize,
    /// Chunks rewritten or dropped.
    pub chunks_rewritten: usize,
    /// The entry repeated a delete already applied (nothing done).
    pub repeated: bool,
}

/// How much of what was applied a checkpoint holds on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableFrontier {
    /// Every batch applied so far (no head holds unwritten samples).
    Everything,
    /// Every batch up to and including this index; later ones live (in part)
    /// only in heads, and must be replayed from the log.
    UpTo(u64),
}

/// Grouping of an aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// One group per distinct value combination of these labels (`__name__` allowed).
    Labels(Vec<String>),
    /// One group per series; the group carries all its labels and `__name__`.
    Series,
}

/// A windowed aggregation evaluated inside the shard.
#[derive(Debug, Clone)]
pub struct AggregateRequest {
    pub matchers: Vec<Matcher>,
    /// Inclusive start, exclusive end, nanoseconds.
    pub start: i64,
    pub end: i64,
    /// Window length in ns; 0 means one window covering `[start, end)`.
    pub window: i64,
    pub function: AggregateFunction,
    pub group_by: GroupBy,
}

/// Partial aggregates per group and window, mergeable across shards.
pub type PartialGroups = BTreeMap<Vec<Label>, BTreeMap<i64, Partial>>;

/// [`Shard::content_digest`] of one column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentDigest {
    pub column_family: &'static str,
    pub entries: u64,
    pub bytes: u64,
    pub crc32: u32,
}

/// One column family's RocksDB figures ([`Shard::engine_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnFamilyStats {
    pub name: &'static str,
    /// SST files the current version uses.
    pub live_sst_bytes: u64,
    /// Every SST file, including those kept for snapshots or iterators.
    pub total_sst_bytes: u64,
    /// Active and immutable memtables.
    pub memtable_bytes: u64,
    /// What compaction estimates it still has to rewrite.
    pub pending_compaction_bytes: u64,
}

/// A shard's RocksDB figures ([`Shard::engine_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStats {
    pub column_families: Vec<ColumnFamilyStats>,
    pub block_cache_bytes: u64,
    /// Writes are stopped (too many L0 files or memtables, or pending compaction).
    pub write_stopped: bool,
    /// Bytes per second writes are slowed to; 0 when they are not delayed.
    pub delayed_write_rate: u64,
    pub decoded_cache_bytes: u64,
    /// What reads cost since the shard opened.
    pub reads: ReadCounts,
}

/// What reads cost, counted since a shard opened (exported as metrics:
/// docs/observability.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Chunks read and found in the decoded cache (either tier).
    pub decoded_cache_hits: u64,
    /// Of those, chunks found in its packed tier only (unpacked, not decoded).
    pub packed_cache_hits: u64,
    /// Chunks read and not found there (decoded; always, with the cache off).
    pub decoded_cache_misses: u64,
    /// Chunks decoded, and the samples they held.
    pub chunks_decoded: u64,
    pub samples_decoded: u64,
    /// Series whose newest sample an instant read took from memory, and
    /// those for which it read chunks.
    pub last_from_memory: u64,
    pub last_from_chunks: u64,
    /// Selections whose chunks were decoded on more than one thread.
    pub reads_in_parallel: u64,
}

#[derive(Debug, Default)]
struct ReadStats {
    decoded_cache_hits: AtomicU64,
    packed_cache_hits: AtomicU64,
    decoded_cache_misses: AtomicU64,
    chunks_decoded: AtomicU64,
    samples_decoded: AtomicU64,
    last_from_memory: AtomicU64,
    last_from_chunks: AtomicU64,
    reads_in_parallel: AtomicU64,
}

fn bump(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, AtomicOrdering::Relaxed);
}

/// One stored chunk as [`Shard::sample_chunks`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledChunk {
    pub encoded_bytes: usize,
    pub samples: Vec<Sample>,
}

/// A time-series shard on RocksDB. All methods take `&self`; writers serialize.
pub struct Shard {
    db: DB,
    path: PathBuf,
    config: ShardConfig,
    chunk_range: i64,
    state: RwLock<State>,
    writer: Mutex<()>,
    decoded: Option<Arc<DecodedCache>>,
    reads: Arc<ReadStats>,
}

impl Shard {
    /// Opens (or creates) the shard under `path` and replays its log into the head.
    pub fn open(path: impl AsRef<Path>, config: ShardConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let _span = info_span!("shard_open", path = %path.display()).entered();
        if config.max_chunk_samples == 0 || config.chunk_range.is_zero() {
            return Err(StorageError::InvalidRequest(
                "max_chunk_samples and chunk_range must be positive".into(),
            ));
        }
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            match *name {
                // Chunks are compressed already; the log is short-lived.
                CF_CHUNKS | CF_HEAD_LOG => {
                    o.set_compression_type(DBCompressionType::None);
                    table.set_block_size(32 << 10);
                    o.set_write_buffer_size(64 << 20);
                }
                _ => o.set_compression_type(DBCompressionType::Zstd),
            }
            o.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, &path, cfs)?;
        let shard = Self {
            db,
            path,
            chunk_range: nanos(config.chunk_range),
            decoded: DecodedCache::new(config.decoded_cache_bytes).map(Arc::new),
            reads: Arc::default(),
            config,
            state: RwLock::new(State::default()),
            writer: Mutex::new(()),
        };
        shard.load()?;
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened in Shard::open")
    }

    fn load(&self) -> Result<()> {
        let mut st = self.state.write();
        st.next_id = self.meta_u64(META_NEXT_SERIES_ID)?.unwrap_or(1);
        st.durable = self.meta_u64(META_DURABLE_INDEX)?.unwrap_or(0);
        st.last_seq = st.durable;
        st.log_truncated_to = st.durable;
        for item in self
            .db
            .iterator_cf(self.cf(CF_SERIES_IDS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let id = u64_from(&k).ok_or_else(|| corrupt("series_ids", "key is not a u64"))?;
            let (&tier, key_bytes) = v
                .split_first()
                .ok_or_else(|| corrupt("series_ids", "empty value"))?;
            let key = SeriesKey::decode(key_bytes).map_err(|e| corrupt("series_ids", e))?;
            let hash = series_hash(&key.metric, &key.labels);
            st.by_hash.entry(hash).or_default().push(id);
            st.postings.add(id, &key);
            st.series.insert(id, SeriesEntry::new(key, tier));
        }
        for item in self
            .db
            .iterator_cf(self.cf(CF_SERIES_STATE), IteratorMode::Start)
        {
            let (k, v) = item?;
            let id = u64_from(&k).ok_or_else(|| corrupt("series_state", "key is not a u64"))?;
            let (seq, below, max_time, last_value) =
                parse_series_state(&v).ok_or_else(|| corrupt("series_state", "bad length"))?;
            if let Some(e) = st.series.get_mut(&id) {
                e.flushed_seq = seq;
                e.flushed_below = below;
                e.max_time = max_time;
                e.last_flushed = last_value.map(|value| Sample {
                    timestamp: max_time,
                    value,
                });
            }
        }
        // Downsampling outputs recorded for entries a replay may apply again.
        let prefix = DOWNSAMPLE_RECORD_PREFIX;
        let mut it = self.db.raw_iterator_cf(self.cf(CF_META));
        it.seek(prefix);
        while let Some(key) = it.key() {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(index) = u64_from(&key[prefix.len()..]) {
                st.downsample_records.push_back(index);
            }
            it.next();
        }
        it.status()?;
        // Replay logged batches the chunks do not cover yet.
        let start = (st.durable + 1).to_be_bytes();
        let mut replayed = 0usize;
        for item in self.db.iterator_cf(
            self.cf(CF_HEAD_LOG),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, v) = item?;
            let seq = u64_from(&k).ok_or_else(|| corrupt("head_log", "key is not a u64"))?;
            let samples = decode_log_record(&v).map_err(|e| corrupt("head_log", e))?;
            for (id, sample) in samples {
                let Some(e) = st.series.get(&id) else {
                    continue; // removed by retention after it was logged
                };
                if seq <= e.flushed_seq
                    && window_start(sample.timestamp, self.chunk_range) < e.flushed_below
                {
                    continue;
                }
                self.insert(&mut st, id, sample, seq);
            }
            st.last_seq = seq;
            let mut wb = WriteBatch::default();
            self.cut_marked(&mut st, seq, &mut wb);
            self.write_unsynced(wb)?;
            replayed += 1;
        }
        debug!(
            series = st.series.len(),
            replayed,
            durable = st.durable,
            "shard loaded"
        );
        Ok(())
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => u64_from(&v)
                .map(Some)
                .ok_or_else(|| corrupt("meta", "value is not a u64")),
        }
    }

    /// Writes a batch atomically; it is durable (per `sync_writes`) and visible to
    /// reads when this returns. Returns the batch's sequence number.
    pub fn write_batch(&self, points: &[Point]) -> Result<u64> {
        self.write_view(PointsView::from_points(points))
    }

    /// [`Shard::write_batch`] of a borrowed batch (a
    /// [`crate::PointBatch::view`], which holds each series once).
    pub fn write_view(&self, points: PointsView<'_>) -> Result<u64> {
        let _span = info_span!("write_batch", points = points.len()).entered();
        let _writer = self.writer.lock();
        let seq = self.state.read().last_seq + 1;
        self.ingest(points, seq, true)?;
        Ok(seq)
    }

    /// Applies a batch at a log index chosen by the caller (the Raft state machine).
    ///
    /// Deterministic: the same sequence of applies gives the same state. Indexes at or
    /// below the last applied one are ignored (replay after restart), so this returns
    /// `false` for them.
    pub fn apply(&self, index: u64, points: &[Point]) -> Result<bool> {
        self.apply_view(index, PointsView::from_points(points))
    }

    /// [`Shard::apply`] for an encoded batch (a Raft entry as logged), read in
    /// place: no string of it is copied unless it names a new series.
    pub fn apply_encoded(&self, index: u64, batch: &EncodedPoints) -> Result<bool> {
        let view = batch.view().map_err(|e| StorageError::CorruptRecord {
            what: "point batch",
            reason: e.to_string(),
        })?;
        self.apply_view(index, view)
    }

    /// [`Shard::apply_encoded`] for a batch carrying idempotency keys: each
    /// keyed part (one request's points, or a piece of them) is applied at most
    /// once per key and part number within `stamp.window` nanoseconds of the
    /// stamp that first wrote it; a later entry with the same key and part
    /// (a retry, a re-send) is skipped. Records reach RocksDB with the
    /// durable frontier, so a replay after a restart decides as the first run
    /// did. The stamp comes from the entry, so every replica decides the same.
    pub fn apply_encoded_keyed(
        &self,
        index: u64,
        batch: &EncodedPoints,
        parts: &[KeyedPart<'_>],
        stamp: KeyedStamp,
    ) -> Result<KeyedApply> {
        let mut view = batch.view().map_err(|e| StorageError::CorruptRecord {
            what: "point batch",
            reason: e.to_string(),
        })?;
        let _span = info_span!("apply_keyed", index, points = view.len()).entered();
        let _writer = self.writer.lock();
        if index <= self.state.read().last_seq {
            return Ok(KeyedApply::default());
        }
        let mut duplicates = Vec::new();
        {
            let mut st = self.state.write();
            for (i, part) in parts.iter().enumerate() {
                let record = idempotency_key(part.key, part.part);
                let recorded = self
                    .idem_get(&st, &record)?
                    .and_then(|v| Some((u64_from(v.get(..8)?)?, u64_from(v.get(8..16)?)? as i64)));
                // Any record within the window makes this part a repeat: a
                // client's retry, a re-send of a forwarded write, the same key
                // twice in one batch. (A replay never sees its own entry's
                // record: records reach the disk with the durable frontier.)
                if recorded.is_some_and(|(_, at)| stamp.at.saturating_sub(at) < stamp.window) {
                    duplicates.push(i);
                    continue;
                }
                remember(&mut st, index, record, stamp);
            }
            self.expire_idempotency(&mut st, index, stamp)?;
        }
        if !duplicates.is_empty() {
            let skip: Vec<std::ops::Range<usize>> = duplicates
                .iter()
                .map(|&i| {
                    let p = &parts[i];
                    p.start as usize..(p.start as usize).saturating_add(p.len as usize)
                })
                .collect();
            view.retain_indexes(|i| !skip.iter().any(|r| r.contains(&i)));
        }
        let written = view.len();
        self.ingest(view, index, false)?;
        Ok(KeyedApply {
            fresh: true,
            written,
            duplicates,
        })
    }

    /// An idempotency record as of the last applied entry.
    fn idem_get(&self, st: &State, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match st.idem_overlay.get(key) {
            Some((value, _)) => Ok(value.clone()),
            None => Ok(self.db.get_cf(self.cf(CF_META), key)?),
        }
    }

    /// Forgets records older than the window (a bounded number per entry,
    /// oldest first). Decided from the state as of this entry, so every
    /// replica, and every replay, forgets the same ones.
    fn expire_idempotency(&self, st: &mut State, index: u64, stamp: KeyedStamp) -> Result<()> {
        let cutoff = stamp.at.saturating_sub(stamp.window);
        let bound = idempotency_expiry_key(cutoff, b"");
        // Expiry keys below the cutoff: on disk (unless deleted since) and in the overlay.
        // The oldest live expiry keys (disk as of the durable frontier, with
        // the overlay over it), the same on every replica whatever its
        // frontier: keys the overlay deleted are skipped, not counted.
        let mut candidates: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_META));
        it.seek(IDEMPOTENCY_EXPIRY_PREFIX);
        while let Some(key) = it.key() {
            if !key.starts_with(IDEMPOTENCY_EXPIRY_PREFIX) || key >= bound.as_slice() {
                break;
            }
            if !matches!(st.idem_overlay.get(key), Some((None, _))) {
                candidates.insert(key.to_vec());
                if candidates.len() >= 1024 {
                    break;
                }
            }
            it.next();
        }
        for (key, (value, _)) in st
            .idem_overlay
            .range(IDEMPOTENCY_EXPIRY_PREFIX.to_vec()..bound.clone())
        {
            if value.is_some() {
                candidates.insert(key.clone());
            }
        }
        for key in candidates.into_iter().take(1024) {
            let rest = &key[IDEMPOTENCY_EXPIRY_PREFIX.len()..];
            let at = rest
                .get(..8)
                .and_then(u64_from)
                .map(|a| (a ^ (1 << 63)) as i64);
            let record = rest[8.min(rest.len())..].to_vec();
            // The record may have been written again since; only its own
            // expiry removes it.
            let current = self.idem_get(st, &record)?;
            if current
                .as_deref()
                .and_then(|v| v.get(8..16))
                .and_then(u64_from)
                .map(|a| a as i64)
                == at
            {
                idem_set(st, index, record, None);
            }
            idem_set(st, index, key, None);
        }
        Ok(())
    }

    fn apply_view(&self, index: u64, points: PointsView<'_>) -> Result<bool> {
        let _span = info_span!("apply", index, points = points.len()).entered();
        let _writer = self.writer.lock();
        if index <= self.state.read().last_seq {
            return Ok(false);
        }
        self.ingest(points, index, false)?;
        Ok(true)
    }

    /// The last index given to `apply` or `write_batch`.
    pub fn last_applied(&self) -> u64 {
        self.state.read().last_seq
    }

    /// Every batch up to this index is in chunks on disk; after a restart without the
    /// shard's own log, batches after it must be applied again.
    pub fn durable_index(&self) -> u64 {
        self.state.read().durable
    }

    fn ingest(&self, points: PointsView<'_>, seq: u64, log: bool) -> Result<()> {
        self.ingest_as(points, seq, log, None)
    }

    /// [`Shard::ingest`], with the tier of new series given (a replicated
    /// downsampling entry names its tier) instead of read from this
    /// shard's rules.
    fn ingest_as(
        &self,
        mut points: PointsView<'_>,
        seq: u64,
        log: bool,
        tier: Option<u8>,
    ) -> Result<()> {
        // Labels out of order are sorted in the view (its own slice of references).
        points.sort_labels();
        if log {
            // A direct write: validated here, all or nothing.
            points
                .validate(&self.config.limits)
                .map_err(|(index, problem)| StorageError::InvalidPoint { index, problem })?;
        } else {
            // A committed entry, validated when it was proposed. Applying is
            // total and the same on every replica whatever its own limits: only
            // what no shard can hold (a malformed name, a duplicate label) is
            // left out, the same way everywhere, and the rest applied.
            let dropped = points.retain_valid(&Limits::structural());
            if let Some((index, problem)) = dropped.first() {
                tracing::error!(
                    seq,
                    dropped = dropped.len(),
                    first = index,
                    %problem,
                    "committed entry held points no shard can store; applied without them"
                );
            }
        }

        // Resolve series ids; new series are written with the batch.
        let mut ids = Vec::with_capacity(points.len());
        let mut new_series: Vec<(u64, u64, SeriesKey)> = Vec::new();
        let mut new_by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut wb = WriteBatch::default();
        {
            let st = self.state.read();
            let mut next_id = st.next_id;
            // A batch names each of its series once (its series slots): the
            // id is looked up once per slot, not per point. Ids start at 1.
            let mut by_slot = vec![0u64; points.series_count()];
            for (slot, p) in points.iter_with_series() {
                if by_slot[slot] != 0 {
                    ids.push(by_slot[slot]);
                    continue;
                }
                let hash = series_hash(p.metric, p.labels);
                let id = match st.lookup(hash, p.metric, p.labels) {
                    Some(id) => id,
                    None => {
                        let known = new_by_hash.get(&hash).and_then(|c| {
                            c.iter()
                                .find(|&&n| same_series(&new_series[n].2, p.metric, p.labels))
                        });
                        match known {
                            Some(&n) => new_series[n].0,
                            None => {
                                let id = next_id;
                                next_id = next_id
                                    .checked_add(1)
                                    .ok_or(StorageError::SeriesIdsExhausted)?;
                                let labels = p.labels.iter().map(|&l| l.into()).collect();
                                let key = SeriesKey::new(p.metric, labels);
                                new_by_hash.entry(hash).or_default().push(new_series.len());
                                new_series.push((id, hash, key));
                                id
                            }
                        }
                    }
                };
                by_slot[slot] = id;
                ids.push(id);
            }
            if !new_series.is_empty() {
                for (id, _, key) in &new_series {
                    let tier = tier.unwrap_or_else(|| self.tier_of(&key.metric));
                    self.put_series(&mut wb, *id, key, tier);
                }
                wb.put_cf(self.cf(CF_META), META_NEXT_SERIES_ID, next_id.to_be_bytes());
            }
        }
        if log {
            let record = encode_log_record(&ids, &points);
            wb.put_cf(self.cf(CF_HEAD_LOG), seq.to_be_bytes(), record);
        }
        if !wb.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(log && self.config.sync_writes);
            self.write_db(wb, &wo)?;
        }

        let mut st = self.state.write();
        for (id, hash, key) in new_series {
            let tier = tier.unwrap_or_else(|| self.tier_of(&key.metric));
            st.by_hash.entry(hash).or_default().push(id);
            st.postings.add(id, &key);
            st.series.insert(id, SeriesEntry::new(key, tier));
            st.next_id = st.next_id.max(id + 1);
        }
        for (id, p) in ids.iter().zip(points.iter()) {
            self.insert(&mut st, *id, Sample::new(p.timestamp, p.value), seq);
        }
        st.last_seq = seq;
        let mut wb = WriteBatch::default();
        self.cut_marked(&mut st, seq, &mut wb);
        // Written before the state lock is let go: the cut took the samples
        // out of the head, and a read planned between the two would find
        // them neither in the head nor in a chunk (the chaos harness found
        // reads missing hundreds of acknowledged points this way).
        self.write_unsynced(wb)?;
        drop(st);
        Ok(())
    }

    fn put_series(&self, wb: &mut WriteBatch, id: u64, key: &SeriesKey, tier: u8) {
        let encoded = key.encode();
        let mut v = Vec::with_capacity(encoded.len() + 1);
        v.push(tier);
        v.extend_from_slice(&encoded);
        wb.put_cf(self.cf(CF_SERIES), &encoded, id.to_be_bytes());
        wb.put_cf(self.cf(CF_SERIES_IDS), id.to_be_bytes(), v);
        wb.put_cf(
            self.cf(CF_POSTINGS),
            postings_key(METRIC_LABEL, &key.metric, id),
            [],
        );
        for l in &key.labels {
            wb.put_cf(
                self.cf(CF_POSTINGS),
                postings_key(&l.name, &l.value, id),
                [],
            );
        }
    }

    /// Writes what `e` says the chunks hold (with the newest flushed value
    /// while it is known, so a restart keeps it).
    fn put_series_state(&self, wb: &mut WriteBatch, id: u64, e: &SeriesEntry) {
        let last_value = e
            .last_flushed
            .filter(|s| s.timestamp == e.max_time)
            .map(|s| s.value);
        wb.put_cf(
            self.cf(CF_SERIES_STATE),
            id.to_be_bytes(),
            series_state_value(e.flushed_seq, e.flushed_below, e.max_time, last_value),
        );
    }

    fn delete_series(&self, wb: &mut WriteBatch, id: u64, key: &SeriesKey) {
        wb.delete_cf(self.cf(CF_SERIES), key.encode());
        wb.delete_cf(self.cf(CF_SERIES_IDS), id.to_be_bytes());
        wb.delete_cf(self.cf(CF_SERIES_STATE), id.to_be_bytes());
        wb.delete_cf(
            self.cf(CF_POSTINGS),
            postings_key(METRIC_LABEL, &key.metric, id),
        );
        for l in &key.labels {
            wb.delete_cf(self.cf(CF_POSTINGS), postings_key(&l.name, &l.value, id));
        }
    }

    /// Downsampled series (`<metric>:<window>:<fn>` of a rule) live in the rule's tier.
    fn tier_of(&self, metric: &str) -> u8 {
        self.config
            .downsample
            .iter()
            .position(|r| {
                metric
                    .strip_suffix(r.suffix().as_str())
                    .is_some_and(|base| base.len() > 1 && base.ends_with(':'))
            })
            .map_or(0, |i| (i + 1).min(u8::MAX as usize) as u8)
    }

    fn insert(&self, st: &mut State, id: u64, s: Sample, seq: u64) {
        let w = window_start(s.timestamp, self.chunk_range);
        let max = self.config.effective_max_chunk_samples();
        let e = st
            .series
            .get_mut(&id)
            .expect("ids are resolved before insert");
        let mut newly_pending = false;
        if e.head.is_empty() {
            e.head_first_seq = seq;
            e.head_window = w;
            e.window_first_seq = seq;
            newly_pending = true;
        } else if w > e.head_window {
            e.head_window = w;
            e.window_first_seq = seq;
            e.cut_marked = true;
        }
        e.head.push(s);
        if e.head.len() >= max {
            e.cut_marked = true;
        }
        let marked = e.cut_marked;
        if newly_pending {
            st.pending.insert((seq, id));
        }
        if marked && !st.to_cut.contains(&id) {
            st.to_cut.push(id);
        }
    }

    /// Cuts marked heads (and old ones holding the log back) into chunks.
    fn cut_marked(&self, st: &mut State, seq: u64, wb: &mut WriteBatch) {
        let max = self.config.effective_max_chunk_samples();
        let marked: Vec<(u64, bool)> = std::mem::take(&mut st.to_cut)
            .into_iter()
            .map(|id| {
                let full = st.series.get(&id).is_some_and(|e| e.head.len() >= max);
                (id, !full)
            })
            .collect();
        self.cut_series(st, &marked, seq, wb);
        if st.last_seq.saturating_sub(st.durable) > self.config.max_log_lag {
            let threshold = st.durable + self.config.max_log_lag / 2;
            let old: Vec<(u64, bool)> = st
                .pending
                .iter()
                .take_while(|(first, _)| *first <= threshold)
                .map(|&(_, id)| (id, false))
                .collect();
            self.cut_series(st, &old, seq, wb);
        }
        self.advance_durable(st, wb);
    }

    fn advance_durable(&self, st: &mut State, wb: &mut WriteBatch) {
        let durable = st
            .pending
            .first()
            .map_or(st.last_seq, |&(first, _)| first - 1);
        if durable > st.durable {
            st.durable = durable;
            wb.put_cf(self.cf(CF_META), META_DURABLE_INDEX, durable.to_be_bytes());
            // Idempotency changes reach the disk with the entries they belong to.
            while st
                .idem_pending
                .front()
                .is_some_and(|(i, _, _)| *i <= durable)
            {
                let (i, key, value) = st.idem_pending.pop_front().expect("checked");
                match &value {
                    Some(v) => wb.put_cf(self.cf(CF_META), &key, v),
                    None => wb.delete_cf(self.cf(CF_META), &key),
                }
                if st.idem_overlay.get(&key).is_some_and(|(_, by)| *by <= i) {
                    st.idem_overlay.remove(&key);
                }
            }
            while st.downsample_records.front().is_some_and(|&i| i <= durable) {
                let i = st.downsample_records.pop_front().expect("checked");
                wb.delete_cf(self.cf(CF_META), downsample_record_key(i));
            }
            // Range deletes are cheap but not free: truncate the log in steps.
            if durable >= st.log_truncated_to + 64 || st.pending.is_empty() {
                wb.delete_range_cf(
                    self.cf(CF_HEAD_LOG),
                    0u64.to_be_bytes(),
                    (durable + 1).to_be_bytes(),
                );
                st.log_truncated_to = durable;
            }
        }
    }

    /// Moves series' heads into chunks: each `(id, keep_newest_window)`; with
    /// `keep_newest_window`, samples in the newest window stay in the head
    /// (that window is still being written). The chunks are encoded together,
    /// on up to `encode_threads` threads, since a scrape's series all cross a
    /// window at once.
    fn cut_series(
        &self,
        st: &mut State,
        cuts: &[(u64, bool)],
        seq: u64,
        wb: &mut WriteBatch,
    ) -> FlushReport {
        let range = self.chunk_range;
        let mut report = FlushReport::default();
        // What each series flushes, split into windows, and what it keeps.
        struct Cut {
            id: u64,
            samples: Vec<Sample>,
            keep_from: i64,
            windows: Vec<(i64, std::ops::Range<usize>)>,
        }
        let mut taken = Vec::with_capacity(cuts.len());
        for &(id, keep_newest_window) in cuts {
            let Some(e) = st.series.get_mut(&id) else {
                continue;
            };
            e.cut_marked = false;
            if e.head.is_empty() {
                continue;
            }
            let samples = sort_dedup(std::mem::take(&mut e.head));
            let keep_from = if keep_newest_window {
                e.head_window
            } else {
                i64::MAX
            };
            let split = samples.partition_point(|s| window_start(s.timestamp, range) < keep_from);
            let mut windows = Vec::new();
            let mut i = 0;
            while i < split {
                let w = window_start(samples[i].timestamp, range);
                let n =
                    samples[i..split].partition_point(|s| window_start(s.timestamp, range) == w);
                windows.push((w, i..i + n));
                i += n;
            }
            taken.push(Cut {
                id,
                samples,
                keep_from,
                windows,
            });
        }
        let runs: Vec<&[Sample]> = taken
            .iter()
            .flat_map(|c| c.windows.iter().map(|(_, r)| &c.samples[r.clone()]))
            .collect();
        let mut chunks = parallel::encode_runs(
            &runs,
            self.config.effective_encode(),
            self.config.encode_threads,
        )
        .into_iter();
        for cut in taken {
            let e = st
                .series
                .get_mut(&cut.id)
                .expect("the series was found above, under the same lock");
            let old_first = e.head_first_seq;
            let flushed = cut.windows.last().map_or(0, |(_, run)| run.end);
            let (flush, keep) = cut.samples.split_at(flushed);
            for (w, run) in cut.windows {
                let chunk = chunks.next().expect("one chunk per window");
                // Write-through: what was just written is what dashboards read
                // next, and its samples are at hand. Keyed by checksum, an entry
                // for a batch that then fails to commit is never matched.
                if let Some(cache) = &self.decoded {
                    if let Some(key) = chunk_id(cut.id, e.tier, w, seq, &chunk) {
                        cache.insert_written(key, flush[run].into());
                    }
                }
                wb.put_cf(self.cf(CF_CHUNKS), chunk_key(e.tier, w, cut.id, seq), chunk);
                report.chunks += 1;
            }
            if let Some(last) = flush.last() {
                // At an equal time the later cut's sample is what reads return.
                if last.timestamp >= e.max_time {
                    e.last_flushed = Some(*last);
                }
                e.max_time = e.max_time.max(last.timestamp);
            }
            report.samples += flush.len();
            report.series += 1;
            e.flushed_seq = seq;
            e.flushed_below = cut.keep_from;
            self.put_series_state(wb, cut.id, e);
            e.head = keep.to_vec();
            let new_first = (!e.head.is_empty()).then_some(e.window_first_seq);
            if let Some(first) = new_first {
                e.head_first_seq = first;
            }
            st.pending.remove(&(old_first, cut.id));
            if let Some(first) = new_first {
                st.pending.insert((first, cut.id));
            }
        }
        report
    }

    /// Every write of the shard goes through here, past the disk-fault
    /// failpoint chaos runs set.
    fn write_db(&self, wb: WriteBatch, wo: &WriteOptions) -> Result<()> {
        crate::faults::check(crate::faults::WRITE).map_err(|source| StorageError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.db.write_opt(wb, wo)?;
        Ok(())
    }

    fn write_unsynced(&self, wb: WriteBatch) -> Result<()> {
        if !wb.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(false);
            self.write_db(wb, &wo)?;
        }
        Ok(())
    }

    /// Cuts every head into chunks and syncs, so the durable index reaches the last
    /// applied one and the log is empty.
    pub fn flush(&self) -> Result<FlushReport> {
        let _writer = self.writer.lock();
        self.flush_locked()
    }

    fn flush_locked(&self) -> Result<FlushReport> {
        let mut st = self.state.write();
        let seq = st.last_seq;
        let mut wb = WriteBatch::default();
        let ids: Vec<(u64, bool)> = st.pending.iter().map(|&(_, id)| (id, false)).collect();
        let total = self.cut_series(&mut st, &ids, seq, &mut wb);
        st.to_cut.clear();
        self.advance_durable(&mut st, &mut wb);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.write_db(wb, &wo)?;
        Ok(total)
    }

    /// Flushes and compacts every column family (for measuring size on disk).
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name))?;
            self.db
                .compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Series ever created in this shard (ids are never reused): its rate
    /// is the series churn.
    pub fn series_created(&self) -> u64 {
        self.state.read().next_id.saturating_sub(1)
    }

    /// Bytes held by the decoded-chunk cache (0 when it is off).
    pub fn decoded_cache_bytes(&self) -> u64 {
        self.decoded.as_ref().map_or(0, |c| c.weight())
    }

    /// What the shard holds, per column family: its entries, their bytes and
    /// a CRC-32 of every key and value in key order. Two replicas that
    /// applied the same entries and cut their heads at the same index have
    /// equal digests whatever their files look like (flushes and compactions
    /// differ): a byte-for-byte comparison without copying the data. Reads
    /// a consistent snapshot of the database; takes as long as a full scan.
    pub fn content_digest(&self) -> Result<Vec<ContentDigest>> {
        let snapshot = self.db.snapshot();
        ALL_CFS
            .iter()
            .map(|name| {
                let mut digest = ContentDigest {
                    column_family: name,
                    entries: 0,
                    bytes: 0,
                    crc32: 0,
                };
                let mut crc = crc32fast::Hasher::new();
                let mut read = ReadOptions::default();
                read.set_snapshot(&snapshot);
                read.fill_cache(false);
                for item in self
                    .db
                    .iterator_cf_opt(self.cf(name), read, IteratorMode::Start)
                {
                    let (k, v) = item?;
                    // Lengths first, so no two different streams concatenate alike.
                    crc.update(&(k.len() as u64).to_le_bytes());
                    crc.update(&k);
                    crc.update(&(v.len() as u64).to_le_bytes());
                    crc.update(&v);
                    digest.entries += 1;
                    digest.bytes += (k.len() + v.len()) as u64;
                }
                digest.crc32 = crc.finalize();
                Ok(digest)
            })
            .collect()
    }

    /// RocksDB's own figures for this shard, per column family and for the
    /// database (read at scrape time: each is a property lookup, no I/O).
    pub fn engine_stats(&self) -> EngineStats {
        let int = |cf: &ColumnFamily, name: &str| {
            self.db
                .property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let column_families = ALL_CFS
            .iter()
            .map(|name| {
                let cf = self.cf(name);
                ColumnFamilyStats {
                    name,
                    live_sst_bytes: int(cf, "rocksdb.live-sst-files-size"),
                    total_sst_bytes: int(cf, "rocksdb.total-sst-files-size"),
                    memtable_bytes: int(cf, "rocksdb.cur-size-all-mem-tables"),
                    pending_compaction_bytes: int(cf, "rocksdb.estimate-pending-compaction-bytes"),
                }
            })
            .collect();
        let db = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        EngineStats {
            column_families,
            // One cache serves every column family of the shard.
            block_cache_bytes: int(self.cf(CF_CHUNKS), "rocksdb.block-cache-usage"),
            write_stopped: db("rocksdb.is-write-stopped") != 0,
            delayed_write_rate: db("rocksdb.actual-delayed-write-rate"),
            decoded_cache_bytes: self.decoded_cache_bytes(),
            reads: self.read_counts(),
        }
    }

    /// What reads cost since the shard opened.
    pub fn read_counts(&self) -> ReadCounts {
        let r = &self.reads;
        let get = |c: &AtomicU64| c.load(AtomicOrdering::Relaxed);
        ReadCounts {
            decoded_cache_hits: get(&r.decoded_cache_hits),
            packed_cache_hits: get(&r.packed_cache_hits),
            decoded_cache_misses: get(&r.decoded_cache_misses),
            chunks_decoded: get(&r.chunks_decoded),
            samples_decoded: get(&r.samples_decoded),
            last_from_memory: get(&r.last_from_memory),
            last_from_chunks: get(&r.last_from_chunks),
            reads_in_parallel: get(&r.reads_in_parallel),
        }
    }

    /// Bytes of live SST files across column families.
    pub fn sst_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for name in ALL_CFS {
            total += self
                .db
                .property_int_value_cf(self.cf(name), "rocksdb.total-sst-files-size")?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// A consistent RocksDB checkpoint in `dir` (which must not exist yet).
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<SnapshotMeta> {
        let dir = dir.as_ref();
        let _span = info_span!("checkpoint", dir = %dir.display()).entered();
        let _writer = self.writer.lock();
        self.flush_locked()?;
        // After the flush the durable index equals the last applied one and is synced.
        let applied_index = self.state.read().last_seq;
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(SnapshotMeta {
            path: dir.to_path_buf(),
            applied_index,
        })
    }

    /// A consistent RocksDB checkpoint in `dir` (which must not exist yet),
    /// taken without cutting heads into chunks: the checkpoint holds every
    /// batch up to the durable frontier it returns, and possibly parts of
    /// later ones (replaying those is harmless: samples already in chunks are
    /// written again with the same values, and reads keep one per timestamp).
    /// Cutting heads for every snapshot would fragment chunks and cost ratio.
    pub fn checkpoint_durable(&self, dir: impl AsRef<Path>) -> Result<DurableFrontier> {
        let dir = dir.as_ref();
        let _span = info_span!("checkpoint_durable", dir = %dir.display()).entered();
        // No batch is applied while the checkpoint is taken, so the frontier
        // read here is the checkpoint's.
        let _writer = self.writer.lock();
        let frontier = {
            let st = self.state.read();
            match st.pending.first() {
                None => DurableFrontier::Everything,
                Some(&(first, _)) => DurableFrontier::UpTo(first - 1),
            }
        };
        Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(frontier)
    }

    /// Replaces `data_dir` with a copy of a checkpoint and opens it.
    pub fn restore(
        checkpoint: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
        config: ShardConfig,
    ) -> Result<Self> {
        let (src, dst) = (checkpoint.as_ref(), data_dir.as_ref());
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Io { path, source }
        };
        if dst.exists() {
            std::fs::remove_dir_all(dst).map_err(io(dst))?;
        }
        std::fs::create_dir_all(dst).map_err(io(dst))?;
        for entry in std::fs::read_dir(src).map_err(io(src))? {
            let entry = entry.map_err(io(src))?;
            let target = dst.join(entry.file_name());
            // SST files are immutable: hard-link when possible. Others
            // (MANIFEST, CURRENT, OPTIONS, WAL) are copied: RocksDB may
            // write to them, and the checkpoint must stay as it was.
            let immutable = entry.path().extension().is_some_and(|e| e == "sst");
            if !immutable || std::fs::hard_link(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target).map_err(io(&target))?;
            }
        }
        Self::open(dst, config)
    }

    /// Series matching all matchers (Prometheus semantics), through the postings.
    pub fn select(&self, matchers: &[Matcher]) -> Result<Vec<(u64, SeriesKey)>> {
        if !matchers.iter().any(|m| !m.matches("")) {
            return Err(StorageError::InvalidRequest(
                "at least one matcher must not match the empty string".into(),
            ));
        }
        let mut include: Option<Vec<u64>> = None;
        let mut exclude: Vec<u64> = Vec::new();
        for m in matchers {
            if m.matches("") {
                // Matches series without the label: exclude those whose value fails.
                exclude.extend(self.postings(m, true)?);
            } else {
                let ids = self.postings(m, false)?;
                include = Some(match include {
                    None => ids,
                    Some(prev) => intersect(&prev, &ids),
                });
            }
        }
        let mut ids = include.unwrap_or_default();
        exclude.sort_unstable();
        exclude.dedup();
        ids.retain(|id| exclude.binary_search(id).is_err());
        let st = self.state.read();
        Ok(ids
            .into_iter()
            .filter_map(|id| st.series.get(&id).map(|e| (id, SeriesKey::clone(&e.key))))
            .collect())
    }

    /// Sorted ids of series whose label matches (or, with `negate`, does not match).
    fn postings(&self, m: &Matcher, negate: bool) -> Result<Vec<u64>> {
        Ok(self.state.read().postings.matching(m, negate))
    }

    /// The keys of series matching `matchers` that have data in `[start, end)`
    /// (`i64::MIN..i64::MAX`: any, nothing read), or `None` when more than
    /// `max_series` match (the request should be narrowed).
    pub fn series_keys(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Option<Vec<SeriesKey>>> {
        let selected = self.select(matchers)?;
        if selected.len() > max_series {
            return Ok(None);
        }
        let keep = if start == i64::MIN && end == i64::MAX {
            vec![true; selected.len()]
        } else {
            let ids: Vec<u64> = selected.iter().map(|(id, _)| *id).collect();
            self.have_data(&ids, start, end)?
        };
        Ok(Some(
            selected
                .into_iter()
                .zip(keep)
                .filter_map(|((_, key), keep)| keep.then_some(key))
                .collect(),
        ))
    }

    /// Which of `ids` hold data in `[start, end)` (nanoseconds), at the
    /// granularity of chunk windows: a series counts if a sample in its head
    /// falls in the range or it has a chunk in a window that overlaps it (as
    /// Prometheus answers series and label lookups at block granularity).
    /// Nothing is decoded: one seek per series and window at most.
    pub fn have_data(&self, ids: &[u64], start: i64, end: i64) -> Result<Vec<bool>> {
        if start >= end {
            return Ok(vec![false; ids.len()]);
        }
        let range = self.chunk_range;
        let mut out = vec![false; ids.len()];
        let mut tiers = Vec::with_capacity(ids.len());
        let snapshot;
        {
            let st = self.state.read();
            snapshot = self.db.snapshot();
            for (slot, id) in out.iter_mut().zip(ids) {
                let e = st.series.get(id);
                *slot = e.is_some_and(|e| {
                    e.head
                        .iter()
                        .any(|s| s.timestamp >= start && s.timestamp < end)
                });
                tiers.push(e.map(|e| (e.tier, e.max_time)));
            }
        }
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snapshot);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_CHUNKS), ro);
        for ((slot, id), tier) in out.iter_mut().zip(ids).zip(tiers) {
            let Some((tier, newest)) = tier else { continue };
            if *slot {
                continue;
            }
            let mut w = window_start(start, range);
            let stop = end.min(newest.saturating_add(1));
            while w < stop && !*slot {
                let prefix = chunk_prefix(tier, w, *id);
                seek_forward(&mut it, &prefix);
                *slot = it.key().is_some_and(|k| k.starts_with(&prefix));
                w = match w.checked_add(range) {
                    Some(next) => next,
                    None => break,
                };
            }
            it.status()?;
        }
        Ok(out)
    }

    /// Reads `[start, end)` of one series as an iterator of samples in time order.
    pub fn scan(&self, id: u64, start: i64, end: i64) -> Result<SeriesIter> {
        self.read_plan(&[id], start, end)?
            .next()
            .unwrap_or_else(|| Ok(SeriesIter::empty(start, end)))
    }

    /// Selects series and reads `[start, end)` of each.
    pub fn query(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<SeriesSamples>> {
        Ok(self
            .query_limited(matchers, start, end, usize::MAX)?
            .unwrap_or_default())
    }

    /// [`Self::query`] that stops decoding once more than `max_samples` samples
    /// were read, answering `None`: an over-limit query is refused before it
    /// holds its whole answer in memory.
    pub fn query_limited(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Option<Vec<SeriesSamples>>> {
        let selected = self.select(matchers)?;
        let ids: Vec<u64> = selected.iter().map(|(id, _)| *id).collect();
        let plan = self.read_plan(&ids, start, end)?;
        let budget = parallel::SampleBudget::new(max_samples);
        let failed = AtomicBool::new(false);
        // Each series: its samples, or `None` once the read went over budget.
        // An error (a corrupt chunk) stops the reading as the budget does.
        // Over budget wins over an error met on another thread at the same
        // time: the read is refused either way.
        let (read, threads) = parallel::map_series(
            plan,
            self.config.decode_threads,
            || budget.overdrawn() || failed.load(AtomicOrdering::Relaxed),
            SeriesIter::encoded_bytes,
            self.config.on_decode_thread_start,
            |series| {
                let samples = series.collect_within(&budget);
                if samples.is_err() {
                    failed.store(true, AtomicOrdering::Relaxed);
                }
                samples
            },
        );
        if threads > 1 {
            bump(&self.reads.reads_in_parallel, 1);
        }
        let mut out = Vec::with_capacity(selected.len());
        for ((_, key), samples) in selected.into_iter().zip(read) {
            match samples?? {
                Some(samples) => out.push((key, samples)),
                None => return Ok(None),
            }
        }
        // A read cut short by `stop` ends with the series that stopped it
        // (over budget: `None`; failed: its error), answered above.
        Ok(Some(out))
    }

    /// Selects series and reads the newest sample of each in `[start, end)`
    /// (series without one have none): what an instant selector needs. It
    /// is answered from memory (the head, or the newest flushed sample)
    /// where that settles it, and by reading the range only for series whose
    /// newest sample in the range may sit in a chunk older than that.
    pub fn query_last(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>> {
        let selected = self.select(matchers)?;
        let settled = self.newest_from_memory(&selected, start, end, |_| true);
        let cold: Vec<u64> = unsettled(&selected, &settled);
        // Nothing to read (the usual case): no snapshot, no iterator.
        let mut reads = if cold.is_empty() {
            None
        } else {
            Some(self.read_plan(&cold, start, end)?)
        };
        let mut out: Vec<SeriesSamples> = Vec::with_capacity(selected.len());
        for ((_, key), known) in selected.into_iter().zip(settled) {
            let newest = match known {
                Some(newest) => newest,
                None => {
                    let mut last = None;
                    for s in planned(reads.as_mut())?? {
                        last = Some(s?);
                    }
                    last
                }
            };
            out.push((key, newest.into_iter().collect()));
        }
        Ok(out)
    }

    /// Each selected series' newest sample in `[start, end)` where memory
    /// settles it (`Some`, holding `None` when the range has none), or
    /// `None` where its chunks must be read. `usable` refuses a newest
    /// sample the caller cannot answer with. Counted in [`ReadCounts`].
    fn newest_from_memory(
        &self,
        selected: &[(u64, SeriesKey)],
        start: i64,
        end: i64,
        usable: impl Fn(&Sample) -> bool,
    ) -> Vec<Option<Option<Sample>>> {
        let settled: Vec<Option<Option<Sample>>> = {
            let st = self.state.read();
            selected
                .iter()
                .map(
                    |(id, _)| match st.series.get(id).map(|e| newest_in_memory(e, start, end)) {
                        None => Some(None),
                        Some(Newest::Known(s)) if s.is_none_or(|s| usable(&s)) => Some(s),
                        Some(_) => None,
                    },
                )
                .collect()
        };
        let from_memory = settled.iter().filter(|s| s.is_some()).count();
        bump(&self.reads.last_from_memory, from_memory);
        bump(&self.reads.last_from_chunks, selected.len() - from_memory);
        settled
    }

    /// The first `count` samples of the matching series taken in key order
    /// (metric, then labels), each series in time order: reading stops once
    /// there are `count`. The flag says whether anything was left unread.
    /// Series without samples in the range are left out.
    pub fn query_first(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        count: usize,
    ) -> Result<(Vec<SeriesSamples>, bool)> {
        let mut selected = self.select(matchers)?;
        selected.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        let ids: Vec<u64> = selected.iter().map(|(id, _)| *id).collect();
        let iters = self.read_plan(&ids, start, end)?;
        let mut left = count;
        let mut out = Vec::new();
        for ((_, key), it) in selected.into_iter().zip(iters) {
            let mut samples = Vec::new();
            for s in it? {
                let s = s?;
                if left == 0 {
                    if !samples.is_empty() {
                        out.push((key, samples));
                    }
                    return Ok((out, true));
                }
                left -= 1;
                samples.push(s);
            }
            if !samples.is_empty() {
                out.push((key, samples));
            }
        }
        Ok((out, false))
    }

    /// Takes, under one consistent view, the head samples of each series; the
    /// returned plan reads each series' chunk bytes from that view only when the
    /// caller gets to it, so a read that stops early (a limit) never gathered
    /// the rest.
    fn read_plan(&self, ids: &[u64], start: i64, end: i64) -> Result<ReadPlan<'_>> {
        crate::faults::check(crate::faults::READ).map_err(|source| StorageError::Io {
            path: self.path.clone(),
            source,
        })?;
        if start >= end {
            return Ok(ReadPlan::empty(self, ids.len(), start, end));
        }
        let snapshot;
        let mut series = Vec::with_capacity(ids.len());
        {
            let st = self.state.read();
            snapshot = self.db.snapshot();
            for id in ids {
                let Some(e) = st.series.get(id) else {
                    series.push(PlannedSeries {
                        id: *id,
                        tier: 0,
                        key: None,
                        head: Vec::new(),
                        newest: i64::MIN,
                    });
                    continue;
                };
                let newest = e
                    .head
                    .iter()
                    .map(|s| s.timestamp)
                    .fold(e.max_time, i64::max);
                let head: Vec<Sample> = e
                    .head
                    .iter()
                    .filter(|s| s.timestamp >= start && s.timestamp < end)
                    .copied()
                    .collect();
                series.push(PlannedSeries {
                    id: *id,
                    tier: e.tier,
                    key: Some(e.key.clone()),
                    head: sort_dedup(head),
                    newest,
                });
            }
        }
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snapshot);
        let it = self.db.raw_iterator_cf_opt(self.cf(CF_CHUNKS), ro);
        Ok(ReadPlan {
            shard: self,
            it: Some(it),
            _snapshot: Some(snapshot),
            series: series.into_iter(),
            oldest_by_tier: HashMap::new(),
            start,
            end,
        })
    }

    /// The chunk bytes of one planned series, read through `it` (the plan's view).
    fn series_iter(
        &self,
        it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, DB>,
        oldest_by_tier: &mut HashMap<u8, i64>,
        planned: PlannedSeries,
        start: i64,
        end: i64,
    ) -> Result<SeriesIter> {
        let range = self.chunk_range;
        let first_window = window_start(start, range);
        let PlannedSeries {
            id,
            tier,
            key: name,
            head,
            newest,
        } = planned;
        // Windows before the tier's oldest chunk hold nothing: start there.
        let oldest = match oldest_by_tier.get(&tier) {
            Some(w) => *w,
            None => {
                it.seek(chunk_window_start(tier, i64::MIN));
                let w = it
                    .key()
                    .and_then(parse_chunk_key)
                    .filter(|k| k.tier == tier)
                    .map_or(i64::MAX, |k| k.window);
                it.status()?;
                oldest_by_tier.insert(tier, w);
                w
            }
        };
        let mut windows: VecDeque<WindowData> = VecDeque::new();
        let mut w = first_window.max(oldest);
        let stop = end.min(newest.saturating_add(1));
        while w < stop {
            let prefix = chunk_prefix(tier, w, id);
            seek_forward(it, &prefix);
            let mut chunks = Vec::new();
            while let Some(key) = it.key() {
                if !key.starts_with(&prefix) {
                    break;
                }
                let seq = parse_chunk_key(key).map_or(0, |k| k.seq);
                let bytes = it.value().unwrap_or_default();
                // A chunk already decoded is not copied out of RocksDB again.
                let chunk = match self
                    .decoded
                    .as_ref()
                    .and_then(|cache| cache.get(&chunk_id(id, tier, w, seq, bytes)?))
                {
                    Some((samples, found)) => {
                        bump(&self.reads.decoded_cache_hits, 1);
                        if found == Found::Packed {
                            bump(&self.reads.packed_cache_hits, 1);
                        }
                        StoredChunk::Decoded(samples)
                    }
                    None => {
                        bump(&self.reads.decoded_cache_misses, 1);
                        StoredChunk::Encoded(bytes.to_vec())
                    }
                };
                chunks.push((seq, chunk));
                it.next();
            }
            it.status()?;
            if !chunks.is_empty() {
                windows.push_back(WindowData {
                    window: w,
                    chunks,
                    head: Vec::new(),
                });
            }
            w = match w.checked_add(range) {
                Some(next) => next,
                None => break,
            };
        }
        // Head samples join the window they belong to (windows stay in order).
        for s in head {
            let w = window_start(s.timestamp, range);
            match windows.iter_mut().find(|d| d.window == w) {
                Some(d) => d.head.push(s),
                None => {
                    let at = windows.partition_point(|d| d.window < w);
                    windows.insert(
                        at,
                        WindowData {
                            window: w,
                            chunks: Vec::new(),
                            head: vec![s],
                        },
                    );
                }
            }
        }
        Ok(SeriesIter {
            id,
            tier,
            cache: self.decoded.clone(),
            reads: Some(self.reads.clone()),
            series: name,
            chunk_range: range,
            windows,
            current: Vec::new().into_iter(),
            start,
            end,
        })
    }

    /// Partial aggregates per group and window, for merging across shards.
    pub fn aggregate_partials(&self, req: &AggregateRequest) -> Result<PartialGroups> {
        let _span =
            info_span!("aggregate", function = ?req.function, start = req.start, end = req.end)
                .entered();
        req.function.validate()?;
        if req.window < 0 {
            return Err(StorageError::InvalidRequest(
                "window must not be negative".into(),
            ));
        }
        let selected = self.select(&req.matchers)?;
        // `last` over one window (SQL's and CQL's lastpoint) needs each
        // series' newest sample: where memory settles it, nothing is read.
        let settled = if req.function == AggregateFunction::Last && req.window == 0 {
            // A staleness marker is not aggregated: the sample before it
            // is, so that series is read.
            self.newest_from_memory(&selected, req.start, req.end, is_aggregatable)
        } else {
            vec![None; selected.len()]
        };
        let mut iters = self.read_plan(&unsettled(&selected, &settled), req.start, req.end)?;
        let keep_values = matches!(req.function, AggregateFunction::Percentile(_));
        let is_rate = req.function == AggregateFunction::Rate;
        let mut groups: PartialGroups = BTreeMap::new();
        for ((_, key), known) in selected.iter().zip(settled) {
            let group = group_labels(key, &req.group_by);
            let windows = groups.entry(group).or_default();
            if let Some(newest) = known {
                if let Some(s) = newest {
                    windows.entry(req.start).or_default().push(s, keep_values);
                }
                continue;
            }
            let iter = planned(Some(&mut iters))??;
            let mut counter: Option<(i64, CounterWindow)> = None;
            for sample in iter {
                let s = sample?;
                if !is_aggregatable(&s) {
                    continue;
                }
                let w = if req.window == 0 {
                    req.start
                } else {
                    window_start(s.timestamp, req.window)
                };
                if is_rate {
                    match &mut counter {
                        Some((cw, c)) if *cw == w => c.push(s),
                        _ => {
                            if let Some((cw, c)) = counter.take() {
                                fold_rate(windows, cw, &c);
                            }
                            let mut c = CounterWindow::default();
                            c.push(s);
                            counter = Some((w, c));
                        }
                    }
                } else {
                    windows.entry(w).or_default().push(s, keep_values);
                }
            }
            if let Some((cw, c)) = counter {
                fold_rate(windows, cw, &c);
            }
        }
        groups.retain(|_, w| !w.is_empty());
        Ok(groups)
    }

    /// Windowed aggregation grouped by labels, evaluated in the shard.
    pub fn aggregate(&self, req: &AggregateRequest) -> Result<Vec<AggregateSeries>> {
        let partials = self.aggregate_partials(req)?;
        Ok(finish_groups(partials, req.function))
    }

    /// Deletes chunks of whole windows older than each tier's retention, and series
    /// left with no data. `now` is in nanoseconds.
    pub fn enforce_retention(&self, now: i64) -> Result<RetentionReport> {
        let _span = info_span!("retention", now).entered();
        let _writer = self.writer.lock();
        self.retain(&self.retention_cutoffs(now))
    }

    /// Applies a replicated retention entry at `index` (the Raft state
    /// machine): the cutoffs come with the entry, so every replica deletes the
    /// same windows. Indexes already applied are skipped (replay), as for
    /// point batches.
    pub fn apply_retention(&self, index: u64, cutoffs: &[(u8, i64)]) -> Result<bool> {
        let _span = info_span!("apply_retention", index).entered();
        let _writer = self.writer.lock();
        if index <= self.state.read().last_seq {
            return Ok(false);
        }
        let report = self.retain(cutoffs)?;
        self.state.write().last_seq = index;
        debug!(
            index,
            series_removed = report.series_removed,
            "retention applied"
        );
        Ok(true)
    }

    /// Deletes the samples of the series matching `matchers` with timestamps
    /// in `[start, end]` (nanoseconds, both inclusive: Prometheus's
    /// `delete_series`), at log index `index` (a replicated entry; an index
    /// already applied does nothing). Chunks cut before this entry are
    /// rewritten without the samples (or dropped); chunks cut after it hold
    /// only samples written after the delete and are left alone, so a replay
    /// after a restart deletes exactly what the first run did. Heads lose
    /// the samples too, and readers see all of it at once or none: the
    /// chunks and heads change under the state lock readers take. Series
    /// stay in the index (as Prometheus keeps them until compaction).
    pub fn apply_delete(
        &self,
        index: u64,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        once: Option<KeyedStamp>,
    ) -> Result<DeleteReport> {
        let _span = info_span!("apply_delete", index, start, end).entered();
        let _writer = self.writer.lock();
        let mut report = DeleteReport::default();
        if index <= self.state.read().last_seq {
            return Ok(report);
        }
        // `once`: the delete's id (the nonce) and stamp. A second entry of the
        // same delete (a re-sent request) within the window does nothing, so
        // it cannot remove what was written between the two.
        if let Some(stamp) = once {
            let mut st = self.state.write();
            let record = idempotency_key(&format!("delete/{:016x}", stamp.nonce), 0);
            let recorded = self
                .idem_get(&st, &record)?
                .and_then(|v| Some(u64_from(v.get(8..16)?)? as i64));
            if recorded.is_some_and(|at| stamp.at.saturating_sub(at) < stamp.window) {
                st.last_seq = index;
                let mut wb = WriteBatch::default();
                self.advance_durable(&mut st, &mut wb);
                self.write_unsynced(wb)?;
                report.repeated = true;
                return Ok(report);
            }
            remember(&mut st, index, record, stamp);
            self.expire_idempotency(&mut st, index, stamp)?;
        }
        let selected = if start <= end {
            self.select(matchers)?
        } else {
            Vec::new()
        };
        let mut by_tier: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
        {
            let st = self.state.read();
            for (id, _) in &selected {
                if let Some(e) = st.series.get(id) {
                    by_tier.entry(e.tier).or_default().push(*id);
                }
            }
        }
        // Readers are held off from here to the end, so they see the delete
        // whole or not at all while it is written in bounded batches.
        let mut st = self.state.write();
        let mut wb = WriteBatch::default();
        let range = self.chunk_range;
        for (tier, mut ids) in by_tier {
            ids.sort_unstable();
            let mut it = self.db.raw_iterator_cf(self.cf(CF_CHUNKS));
            let mut window = window_start(start, range);
            loop {
                // The next window holding any chunk of this tier.
                it.seek(chunk_window_start(tier, window));
                let Some(found) = it.key().and_then(parse_chunk_key) else {
                    break;
                };
                if found.tier != tier || found.window > end {
                    break;
                }
                window = found.window;
                for &id in &ids {
                    let prefix = chunk_prefix(tier, window, id);
                    it.seek(prefix);
                    while let (Some(key), Some(value)) = (it.key(), it.value()) {
                        if !key.starts_with(&prefix) {
                            break;
                        }
                        let seq = parse_chunk_key(key).map_or(u64::MAX, |k| k.seq);
                        if seq < index {
                            let samples = codec::decode_chunk(value).map_err(|e| {
                                StorageError::CorruptChunk {
                                    series: format!("id {id}"),
                                    start: window,
                                    end: window.saturating_add(range - 1),
                                    reason: e,
                                }
                            })?;
                            let kept: Vec<Sample> = samples
                                .iter()
                                .copied()
                                .filter(|s| s.timestamp < start || s.timestamp > end)
                                .collect();
                            if kept.len() < samples.len() {
                                report.samples += samples.len() - kept.len();
                                report.chunks_rewritten += 1;
                                if kept.is_empty() {
                                    wb.delete_cf(self.cf(CF_CHUNKS), key);
                                } else {
                                    let chunk = encode_chunk(&kept, self.config.effective_encode());
                                    wb.put_cf(self.cf(CF_CHUNKS), key, chunk);
                                }
                                // Bounded memory: a crash between batches is
                                // safe, the entry is replayed and rewriting
                                // an already rewritten chunk changes nothing.
                                if wb.size_in_bytes() > 32 << 20 {
                                    self.write_db(
                                        std::mem::take(&mut wb),
                                        &WriteOptions::default(),
                                    )?;
                                }
                            }
                        }
                        it.next();
                    }
                }
                match window.checked_add(range) {
                    Some(next) if next <= end => window = next,
                    _ => break,
                }
            }
            it.status()?;
        }
        for (id, _) in &selected {
            let before = st.series.get(id).map_or(0, |e| e.head.len());
            if trim_head(&mut st, *id, |s| s.timestamp < start || s.timestamp > end) {
                if let Some(e) = st.series.get(id) {
                    self.put_series_state(&mut wb, *id, e);
                }
            }
            let after = st.series.get(id).map_or(0, |e| e.head.len());
            report.samples += before - after;
        }
        report.series = selected.len();
        st.last_seq = index;
        self.advance_durable(&mut st, &mut wb);
        let mut wo = WriteOptions::default();
        wo.set_sync(self.config.sync_writes);
        self.write_db(wb, &wo)?;
        drop(st);
        debug!(index, ?report, "delete applied");
        Ok(report)
    }

    /// Per tier, the start of the first chunk window `now` keeps under this
    /// shard's retention settings (raw data is tier 0, downsampling rules
    /// tiers 1, 2, ...). Empty when nothing expires.
    pub fn retention_cutoffs(&self, now: i64) -> Vec<(u8, i64)> {
        self.retention_cutoffs_with(now, self.config.retention)
    }

    /// [`Shard::retention_cutoffs`] with `raw` as the raw data's retention
    /// (a run-time setting in place of the configured one).
    pub fn retention_cutoffs_with(
        &self,
        now: i64,
        raw: Option<std::time::Duration>,
    ) -> Vec<(u8, i64)> {
        let mut cutoffs: Vec<(u8, i64)> = Vec::new();
        if let Some(r) = raw {
            cutoffs.push((
                0,
                window_start(now.saturating_sub(nanos(r)), self.chunk_range),
            ));
        }
        for (i, rule) in self.config.downsample.iter().enumerate() {
            if let Some(r) = rule.retention {
                let tier = (i + 1).min(u8::MAX as usize) as u8;
                cutoffs.push((
                    tier,
                    window_start(now.saturating_sub(nanos(r)), self.chunk_range),
                ));
            }
        }
        cutoffs
    }

    /// Deletes, per (tier, cutoff), the chunk windows before the cutoff, and
    /// the series left with no data. The caller holds the writer lock.
    fn retain(&self, cutoffs: &[(u8, i64)]) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let mut wb = WriteBatch::default();
        for &(tier, cut) in cutoffs {
            wb.delete_range_cf(
                self.cf(CF_CHUNKS),
                chunk_window_start(tier, i64::MIN),
                chunk_window_start(tier, cut),
            );
            report.tiers_trimmed += 1;
        }
        let mut st = self.state.write();
        // Samples before a cutoff go from the head too: which samples sit in
        // chunks and which still in a head differs between replicas (a cut
        // at shutdown, a restart), what retention leaves must not.
        let ids: Vec<u64> = st.series.keys().copied().collect();
        for id in ids {
            let tier = st.series[&id].tier;
            if let Some(&(_, cut)) = cutoffs.iter().find(|(t, _)| *t == tier) {
                if trim_head(&mut st, id, |s| s.timestamp >= cut) {
                    if let Some(e) = st.series.get(&id) {
                        self.put_series_state(&mut wb, id, e);
                    }
                }
            }
        }
        let gone: Vec<u64> = st
            .series
            .iter()
            .filter(|(_, e)| {
                e.head.is_empty()
                    && cutoffs
                        .iter()
                        .any(|&(tier, cut)| tier == e.tier && e.max_time < cut)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(e) = st.series.remove(&id) {
                self.delete_series(&mut wb, id, &e.key);
                st.postings.remove(id, &e.key);
                let hash = series_hash(&e.key.metric, &e.key.labels);
                if let Some(list) = st.by_hash.get_mut(&hash) {
                    list.retain(|x| *x != id);
                    if list.is_empty() {
                        st.by_hash.remove(&hash);
                    }
                }
                report.series_removed += 1;
            }
        }
        drop(st);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.write_db(wb, &wo)?;
        Ok(report)
    }

    /// Runs every downsampling rule over the complete windows it has not
    /// covered yet, through the shard's own log (the engine alone; a node
    /// runs rules as replicated entries, [`Shard::apply_downsample`]).
    pub fn run_downsampling(&self, now: i64) -> Result<DownsampleReport> {
        let mut report = DownsampleReport::default();
        for rule in &self.config.downsample {
            let _span = info_span!("downsample", rule = %rule.suffix()).entered();
            let window = nanos(rule.window);
            if window <= 0 {
                return Err(StorageError::InvalidRequest(
                    "downsampling window must be positive".into(),
                ));
            }
            let to = window_start(now, window);
            let Some(from) = self.downsample_from(&self.state.read(), rule)? else {
                continue;
            };
            if from >= to {
                continue;
            }
            let points = self.downsample_points(rule, from, to)?;
            for batch in points.chunks(10_000) {
                self.write_batch(batch)?;
            }
            report.points_written += points.len();
            report.rules_run += 1;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.put_cf_opt(
                self.cf(CF_META),
                downsample_progress_key(rule),
                (to as u64).to_be_bytes(),
                &wo,
            )?;
        }
        Ok(report)
    }

    /// Where `rule` goes on from: the end of what it covered, or the window
    /// of the oldest raw sample; `None` when there is no raw data.
    fn downsample_from(&self, st: &State, rule: &DownsampleRule) -> Result<Option<i64>> {
        let window = nanos(rule.window).max(1);
        if let Some(done) = self
            .idem_get(st, &downsample_progress_key(rule))?
            .and_then(|v| u64_from(&v))
        {
            return Ok(Some(done as i64));
        }
        Ok(self
            .oldest_raw_time_locked(st)?
            .map(|t| window_start(t, window)))
    }

    /// What a node's leader proposes for `rule` at `now` (ns): the complete
    /// windows after what this replica has covered, at most
    /// `max_windows` of them; `None` when nothing is due.
    pub fn downsample_due(
        &self,
        rule: &DownsampleRule,
        tier: u8,
        now: i64,
        max_points: usize,
    ) -> Result<Option<DownsampleStep>> {
        let window = nanos(rule.window);
        if window <= 0 {
            return Ok(None);
        }
        let st = self.state.read();
        let Some(from) = self.downsample_from(&st, rule)? else {
            return Ok(None);
        };
        let to = window_start(now, window);
        if from >= to {
            return Ok(None);
        }
        // Bound what one entry writes (one point per series and window).
        let series = st.series.len().max(1);
        let max_windows = (max_points / series).clamp(1, 100_000) as u32;
        Ok(Some(DownsampleStep {
            rule: rule.clone(),
            tier,
            to,
            max_windows,
        }))
    }

    /// Applies a replicated downsampling entry at log index `index`: the
    /// rule, its tier and the end of the run come with the entry, the
    /// start is this shard's progress as of the entry, the same on every
    /// replica (progress reaches RocksDB with the durable frontier, like
    /// idempotency records). The output is computed from the shard as it
    /// stands at this index, which only the first application sees: by a
    /// replay after a restart, chunks may already hold samples of later
    /// entries. So the output is recorded (synced, in `meta`, until the
    /// durable index passes the entry) and a replay writes the recorded
    /// points instead of computing them again.
    pub fn apply_downsample(&self, index: u64, step: &DownsampleStep) -> Result<DownsampleReport> {
        let _span = info_span!("apply_downsample", index, rule = %step.rule.suffix(), to = step.to)
            .entered();
        let _writer = self.writer.lock();
        let mut report = DownsampleReport::default();
        if index <= self.state.read().last_seq {
            return Ok(report);
        }
        let record_key = downsample_record_key(index);
        let (to, points) = match self.db.get_cf(self.cf(CF_META), &record_key)? {
            Some(record) => {
                let (to, points) = record
                    .split_first_chunk::<8>()
                    .map(|(to, rest)| (i64::from_be_bytes(*to), rest))
                    .ok_or_else(|| corrupt("meta", "a downsampling record is too short"))?;
                let points = decode_points(points).map_err(|e| corrupt("meta", e))?;
                (Some(to), points)
            }
            None => {
                let (to, points) = self.downsample_output(step)?;
                let mut record = to.unwrap_or(i64::MIN).to_be_bytes().to_vec();
                record.extend_from_slice(&encode_points(&points));
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_cf_opt(self.cf(CF_META), &record_key, record, &wo)?;
                self.state.write().downsample_records.push_back(index);
                (to, points)
            }
        };
        if let Some(to) = to.filter(|&t| t != i64::MIN) {
            idem_set(
                &mut self.state.write(),
                index,
                downsample_progress_key(&step.rule),
                Some((to as u64).to_be_bytes().to_vec()),
            );
            report.rules_run = 1;
            report.points_written = points.len();
        }
        self.ingest_as(
            PointsView::from_points(&points),
            index,
            false,
            Some(step.tier),
        )?;
        Ok(report)
    }

    /// What `step` writes from the shard as it stands: the end of the run
    /// (`None`: nothing to do) and the points.
    fn downsample_output(&self, step: &DownsampleStep) -> Result<(Option<i64>, Vec<Point>)> {
        let window = nanos(step.rule.window);
        if window <= 0 {
            return Ok((None, Vec::new()));
        }
        let Some(from) = self.downsample_from(&self.state.read(), &step.rule)? else {
            return Ok((None, Vec::new()));
        };
        let span = window.saturating_mul(i64::from(step.max_windows.max(1)));
        let to = window_start(step.to, window).min(from.saturating_add(span));
        if from >= to {
            return Ok((None, Vec::new()));
        }
        Ok((Some(to), self.downsample_points(&step.rule, from, to)?))
    }

    /// The output of `rule` over the complete windows in `[from, to)`:
    /// one point per raw series and window, named `<metric>:<suffix>`, in
    /// label order (new series get their ids in this order on every
    /// replica).
    fn downsample_points(&self, rule: &DownsampleRule, from: i64, to: i64) -> Result<Vec<Point>> {
        let mut matchers = rule.matchers.clone();
        if !matchers.iter().any(|m| !m.matches("")) {
            matchers.push(Matcher::new(MatchOp::Regex, METRIC_LABEL, ".+")?);
        }
        let req = AggregateRequest {
            matchers,
            start: from,
            end: to,
            window: nanos(rule.window),
            function: rule.function,
            group_by: GroupBy::Series,
        };
        let partials = self.aggregate_partials(&req)?;
        let suffix = rule.suffix();
        let mut points = Vec::new();
        for series in finish_groups(partials, rule.function) {
            let Some(metric) = series.group.iter().find(|l| l.name == METRIC_LABEL) else {
                continue;
            };
            // Never downsample a downsampled series.
            if is_downsampled_name(&metric.value) || self.tier_of(&metric.value) != 0 {
                continue;
            }
            let name = format!("{}:{suffix}", metric.value);
            let labels: Vec<Label> = series
                .group
                .iter()
                .filter(|l| l.name != METRIC_LABEL)
                .cloned()
                .collect();
            for s in series.points {
                points.push(Point::new(
                    name.clone(),
                    labels.clone(),
                    s.value,
                    s.timestamp,
                ));
            }
        }
        Ok(points)
    }

    fn oldest_raw_time_locked(&self, st: &State) -> Result<Option<i64>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_CHUNKS));
        it.seek(chunk_window_start(0, i64::MIN));
        let from_chunks = it
            .key()
            .and_then(parse_chunk_key)
            .filter(|k| k.tier == 0)
            .map(|k| k.window);
        it.status()?;
        // Aligned to the chunk window like the chunks' keys: which samples
        // sit in chunks and which still in heads differs between replicas,
        // the answer must not.
        let from_head = st
            .series
            .values()
            .filter(|e| e.tier == 0)
            .flat_map(|e| e.head.iter().map(|s| s.timestamp))
            .min()
            .map(|t| window_start(t, self.chunk_range));
        Ok(match (from_chunks, from_head) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Number of series the shard holds.
    pub fn series_count(&self) -> usize {
        self.state.read().series.len()
    }

    /// How many samples each series holds in its head (memory not yet cut
    /// into chunks), one entry per series with a non-empty head.
    pub fn head_lengths(&self) -> Vec<u32> {
        self.state
            .read()
            .series
            .values()
            .filter(|e| !e.head.is_empty())
            .map(|e| u32::try_from(e.head.len()).unwrap_or(u32::MAX))
            .collect()
    }

    /// Up to `limit` of the newest raw (tier 0) chunks, decoded, each with
    /// its encoded size: what capacity planning re-encodes to measure what
    /// a compression or chunk-size change would do to this shard's data.
    /// Reads newest windows first; at most `limit` chunks are decoded.
    pub fn sample_chunks(&self, limit: usize) -> Result<Vec<SampledChunk>> {
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut it = self.db.raw_iterator_cf(self.cf(CF_CHUNKS));
        // Tier 0 sorts first: start below tier 1 and walk back.
        let mut last_raw = [0xffu8; 25];
        last_raw[0] = 0;
        it.seek_for_prev(last_raw);
        while out.len() < limit {
            let (Some(key), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            if key.first() != Some(&0) {
                break;
            }
            let samples = codec::decode_chunk(value).map_err(|e| corrupt("chunks", e))?;
            out.push(SampledChunk {
                encoded_bytes: value.len(),
                samples,
            });
            it.prev();
        }
        it.status()?;
        Ok(out)
    }
}

fn fold_rate(windows: &mut BTreeMap<i64, Partial>, w: i64, c: &CounterWindow) {
    if let Some(r) = c.rate() {
        let p = windows.entry(w).or_default();
        p.rate += r;
        p.rate_series += 1;
    }
}

/// Turns partial groups into output series (windows without a value are left out).
pub fn finish_groups(groups: PartialGroups, function: AggregateFunction) -> Vec<AggregateSeries> {
    groups
        .into_iter()
        .map(|(group, windows)| AggregateSeries {
            group,
            points: windows
                .into_iter()
                .filter_map(|(w, mut p)| p.finish(function).map(|v| Sample::new(w, v)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

fn group_labels(key: &SeriesKey, by: &GroupBy) -> Vec<Label> {
    match by {
        GroupBy::Series => {
            let mut l = vec![Label::new(METRIC_LABEL, key.metric.clone())];
            l.extend(key.labels.iter().cloned());
            l
        }
        GroupBy::Labels(names) => {
            let mut l: Vec<Label> = names
                .iter()
                .filter_map(|n| key.label(n).map(|v| Label::new(n.clone(), v)))
                .collect();
            l.sort();
            l.dedup();
            l
        }
    }
}

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Sorts by time (stable) and keeps the last-written sample of each timestamp.
/// The ids of the series whose newest sample memory did not settle.
fn unsettled(selected: &[(u64, SeriesKey)], settled: &[Option<Option<Sample>>]) -> Vec<u64> {
    selected
        .iter()
        .zip(settled)
        .filter(|(_, known)| known.is_none())
        .map(|((id, _), _)| *id)
        .collect()
}

/// The next series of a read planned for the unsettled ones.
fn planned(plan: Option<&mut ReadPlan<'_>>) -> Result<Result<SeriesIter>> {
    plan.and_then(Iterator::next)
        .ok_or_else(|| corrupt("read plan", "fewer series than planned"))
}

/// Where a series' newest sample in a range is.
enum Newest {
    /// In memory: this one, or none in the range.
    Known(Option<Sample>),
    /// Possibly in a chunk: read the range.
    InChunks,
}

fn newest_in_memory(e: &SeriesEntry, start: i64, end: i64) -> Newest {
    if start >= end {
        return Newest::Known(None);
    }
    // The head's newest in the range; of equal times the later write, as
    // the head's own de-duplication keeps.
    let mut head: Option<Sample> = None;
    for s in &e.head {
        if s.timestamp >= start
            && s.timestamp < end
            && head.is_none_or(|h| s.timestamp >= h.timestamp)
        {
            head = Some(*s);
        }
    }
    match head {
        // The head is newer than anything flushed (and wins at equal times).
        Some(h) if h.timestamp >= e.max_time => Newest::Known(Some(h)),
        // Nothing flushed reaches the range.
        _ if e.max_time < start => Newest::Known(head),
        // The chunks' newest sample is in the range and newer than the head's.
        _ if e.max_time < end => match e.last_flushed {
            Some(s) if s.timestamp == e.max_time => Newest::Known(Some(s)),
            _ => Newest::InChunks,
        },
        // The range ends before the newest flushed sample: read it.
        _ => Newest::InChunks,
    }
}

fn sort_dedup(mut samples: Vec<Sample>) -> Vec<Sample> {
    if !samples.windows(2).all(|w| w[0].timestamp < w[1].timestamp) {
        samples.sort_by_key(|s| s.timestamp);
        let mut out: Vec<Sample> = Vec::with_capacity(samples.len());
        for s in samples {
            match out.last_mut() {
                Some(last) if last.timestamp == s.timestamp => *last = s,
                _ => out.push(s),
            }
        }
        return out;
    }
    samples
}

fn corrupt(what: &'static str, reason: impl std::fmt::Display) -> StorageError {
    StorageError::CorruptRecord {
        what,
        reason: reason.to_string(),
    }
}

/// Log record: count, then per point the series id, the timestamp (delta from the
/// previous point's) and the value's bits.
fn encode_log_record(ids: &[u64], points: &PointsView<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * 16 + 8);
    put_uvarint(&mut out, points.len() as u64);
    let mut prev = 0i64;
    for (id, p) in ids.iter().zip(points.iter()) {
        put_uvarint(&mut out, *id);
        put_uvarint(&mut out, zigzag(p.timestamp.wrapping_sub(prev)));
        out.extend_from_slice(&p.value.to_bits().to_le_bytes());
        prev = p.timestamp;
    }
    out
}

fn decode_log_record(bytes: &[u8]) -> std::result::Result<Vec<(u64, Sample)>, codec::CodecError> {
    let mut pos = 0;
    let n = get_uvarint(bytes, &mut pos)? as usize;
    let mut out = Vec::with_capacity(n.min(bytes.len()));
    let mut prev = 0i64;
    for _ in 0..n {
        let id = get_uvarint(bytes, &mut pos)?;
        let t = prev.wrapping_add(unzigzag(get_uvarint(bytes, &mut pos)?));
        let v = bytes
            .get(pos..pos + 8)
            .ok_or(codec::CodecError::Truncated)?;
        pos += 8;
        out.push((
            id,
            Sample::new(
                t,
                f64::from_bits(u64::from_le_bytes(v.try_into().expect("8 bytes"))),
            ),
        ));
        prev = t;
    }
    Ok(out)
}

/// One series of a [`ReadPlan`]: what was taken under the plan's lock.
struct PlannedSeries {
    id: u64,
    tier: u8,
    key: Option<Arc<SeriesKey>>,
    head: Vec<Sample>,
    newest: i64,
}

/// Reads series one at a time from one consistent view (a RocksDB snapshot
/// and the head samples copied with it), in the order they were asked for.
struct ReadPlan<'a> {
    shard: &'a Shard,
    // Declared before the snapshot: the iterator reads through it and must be
    // dropped first.
    it: Option<rocksdb::DBRawIteratorWithThreadMode<'a, DB>>,
    _snapshot: Option<rocksdb::SnapshotWithThreadMode<'a, DB>>,
    series: std::vec::IntoIter<PlannedSeries>,
    oldest_by_tier: HashMap<u8, i64>,
    start: i64,
    end: i64,
}

impl<'a> ReadPlan<'a> {
    /// An empty time range: every series reads as empty.
    fn empty(shard: &'a Shard, count: usize, start: i64, end: i64) -> Self {
        let series: Vec<PlannedSeries> = (0..count)
            .map(|_| PlannedSeries {
                id: 0,
                tier: 0,
                key: None,
                head: Vec::new(),
                newest: i64::MIN,
            })
            .collect();
        Self {
            shard,
            it: None,
            _snapshot: None,
            series: series.into_iter(),
            oldest_by_tier: HashMap::new(),
            start,
            end,
        }
    }
}

impl Iterator for ReadPlan<'_> {
    type Item = Result<SeriesIter>;

    fn next(&mut self) -> Option<Self::Item> {
        let planned = self.series.next()?;
        let Some(it) = self.it.as_mut() else {
            return Some(Ok(SeriesIter::empty(self.start, self.end)));
        };
        Some(
            self.shard
                .series_iter(it, &mut self.oldest_by_tier, planned, self.start, self.end),
        )
    }
}

struct WindowData {
    window: i64,
    /// (sequence, chunk); a higher sequence wins on equal timestamps.
    chunks: Vec<(u64, StoredChunk)>,
    /// Head samples, sorted and deduplicated; they win over every chunk.
    head: Vec<Sample>,
}

/// A series and its samples, as queries return them.
pub type SeriesSamples = (SeriesKey, Vec<Sample>);

/// Positions `it` at the first key at or after `target`. Chunk keys run
/// window by window, series by series within a window ([`chunk_key`]), a
/// series usually holding one key per window. When the target is a few
/// series ahead in the same window, stepping there is far cheaper than a seek
/// through every level; a target further on (the next series a read selects
/// may be hundreds of ids away) or in another window is sought at once, since
/// stepping towards it would only add to the seek.
fn seek_forward(it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, DB>, target: &[u8]) {
    /// Series ids ahead within which the target is stepped to.
    const NEAR: u64 = 8;
    /// Keys stepped at most (a series may hold several chunks in a window).
    const STEPS: usize = 16;
    let near = it.key().is_some_and(|k| {
        k < target
            && k.len() >= 17
            && target.len() >= 17
            // Same tier and window: the first 9 bytes.
            && k[..9] == target[..9]
            && series_id(target).saturating_sub(series_id(k)) <= NEAR
    });
    if near {
        for _ in 0..STEPS {
            it.next();
            match it.key() {
                Some(k) if k < target => {}
                // Reached the first key at or past the target, or the end.
                _ => return,
            }
        }
    }
    it.seek(target);
}

/// The series id of a chunk key or prefix (bytes 9..17, big-endian).
fn series_id(key: &[u8]) -> u64 {
    key.get(9..17)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// A chunk as read: its stored bytes, or its samples from the decoded cache.
enum StoredChunk {
    Encoded(Vec<u8>),
    Decoded(Arc<[Sample]>),
}

fn chunk_id(series: u64, tier: u8, window: i64, seq: u64, bytes: &[u8]) -> Option<ChunkId> {
    Some(ChunkId {
        series,
        tier,
        window,
        seq,
        checksum: codec::stored_checksum(bytes)?,
    })
}

/// Samples of one series in `[start, end)`, in time order, decoded window by window.
pub struct SeriesIter {
    id: u64,
    tier: u8,
    cache: Option<Arc<DecodedCache>>,
    reads: Option<Arc<ReadStats>>,
    series: Option<Arc<SeriesKey>>,
    chunk_range: i64,
    windows: VecDeque<WindowData>,
    current: std::vec::IntoIter<Sample>,
    start: i64,
    end: i64,
}

impl SeriesIter {
    fn empty(start: i64, end: i64) -> Self {
        Self {
            id: 0,
            tier: 0,
            cache: None,
            reads: None,
            series: None,
            chunk_range: 1,
            windows: VecDeque::new(),
            current: Vec::new().into_iter(),
            start,
            end,
        }
    }

    /// One chunk's samples: as read, or decoded now (and cached).
    fn decoded(&self, window: i64, seq: u64, chunk: &StoredChunk) -> Result<Arc<[Sample]>> {
        let bytes = match chunk {
            StoredChunk::Decoded(samples) => return Ok(samples.clone()),
            StoredChunk::Encoded(bytes) => bytes,
        };
        let mut out = Vec::new();
        // With a cache the whole chunk is decoded, for the reads after this
        // one; without, only as far as this read's end.
        let decoded = match self.cache {
            Some(_) => codec::decode_chunk_into(bytes, &mut out),
            None => codec::decode_chunk_before(bytes, self.end, &mut out),
        };
        decoded.map_err(|reason| {
            // A chunk that fails its checksum has no trustworthy header: name
            // the window it is stored under instead.
            let (start, end) = match codec::chunk_header(bytes) {
                Ok(h) => (h.min_time, h.max_time),
                Err(_) => (window, window.saturating_add(self.chunk_range - 1)),
            };
            StorageError::CorruptChunk {
                series: self
                    .series
                    .as_ref()
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                start,
                end,
                reason,
            }
        })?;
        if let Some(reads) = &self.reads {
            bump(&reads.chunks_decoded, 1);
            bump(&reads.samples_decoded, out.len());
        }
        let samples: Arc<[Sample]> = out.into();
        if let Some(cache) = &self.cache {
            if let Some(key) = chunk_id(self.id, self.tier, window, seq, bytes) {
                cache.insert_read(key, samples.clone());
            }
        }
        Ok(samples)
    }

    /// Bytes of chunks still to decode (chunks served decoded count nothing).
    fn encoded_bytes(&self) -> usize {
        self.windows
            .iter()
            .flat_map(|w| &w.chunks)
            .map(|(_, chunk)| match chunk {
                StoredChunk::Encoded(bytes) => bytes.len(),
                StoredChunk::Decoded(_) => 0,
            })
            .sum()
    }

    /// All of the series' samples, spending them from `budget` a window at
    /// a time: `None` as soon as the read is over it (this series' or
    /// another's samples).
    fn collect_within(mut self, budget: &parallel::SampleBudget) -> Result<Option<Vec<Sample>>> {
        // Called on a series not yet iterated: everything is in `windows`.
        debug_assert!(self.current.as_slice().is_empty());
        let mut samples: Vec<Sample> = Vec::new();
        while let Some(w) = self.windows.pop_front() {
            if budget.overdrawn() {
                return Ok(None);
            }
            let window = self.materialize(w)?;
            if !budget.spend(window.len()) {
                return Ok(None);
            }
            if samples.is_empty() {
                samples = window;
            } else {
                samples.extend(window);
            }
        }
        Ok(Some(samples))
    }

    /// The samples of a time-ordered chunk inside `[start, end)`.
    fn in_range<'a>(&self, samples: &'a [Sample]) -> &'a [Sample] {
        debug_assert!(samples.is_sorted_by_key(|s| s.timestamp));
        let from = samples.partition_point(|s| s.timestamp < self.start);
        let to = samples.partition_point(|s| s.timestamp < self.end);
        &samples[from..to.max(from)]
    }

    fn materialize(&self, w: WindowData) -> Result<Vec<Sample>> {
        if w.chunks.len() == 1 && w.head.is_empty() {
            let (seq, chunk) = &w.chunks[0];
            let samples = self.decoded(w.window, *seq, chunk)?;
            return Ok(self.in_range(&samples).to_vec());
        }
        // Overlapping sources: order by (time, priority) and keep the newest per time.
        let mut all: Vec<(i64, u64, f64)> = Vec::new();
        for (seq, chunk) in &w.chunks {
            let samples = self.decoded(w.window, *seq, chunk)?;
            all.extend(
                self.in_range(&samples)
                    .iter()
                    .map(|s| (s.timestamp, *seq, s.value)),
            );
        }
        all.extend(w.head.iter().map(|s| (s.timestamp, u64::MAX, s.value)));
        all.sort_by_key(|&(t, seq, _)| (t, seq));
        let mut out: Vec<Sample> = Vec::with_capacity(all.len());
        for (t, _, v) in all {
            match out.last_mut() {
                Some(last) if last.timestamp == t => last.value = v,
                _ => out.push(Sample::new(t, v)),
            }
        }
        Ok(out)
    }
}

impl Iterator for SeriesIter {
    type Item = Result<Sample>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.current.next() {
                return Some(Ok(s));
            }
            let w = self.windows.pop_front()?;
            match self.materialize(w) {
                Ok(v) => self.current = v.into_iter(),
                Err(e) => {
                    self.windows.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

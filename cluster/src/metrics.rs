//! The cluster's Prometheus metrics. Events (elections, snapshots, forwarded
//! writes) are counted where they happen; each group's state (leader, term,
//! indexes, log size) and its shard's RocksDB figures are read at scrape time
//! by [`ClusterNode::refresh_metrics`](crate::ClusterNode::refresh_metrics).
//! Every label value is a shard id, a column family or a fixed word: the
//! series count is bounded by the shard count.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registered once per process; a second node in the same process (tests)
    // shares the same series.
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition"))
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"))
}

macro_rules! metric {
    ($(#[$doc:meta])* $name:ident: $ty:ty = $init:expr) => {
        $(#[$doc])*
        pub(crate) static $name: LazyLock<$ty> = LazyLock::new(|| $init);
    };
}

metric!(LEADER: IntGaugeVec = gauge(
    "chronicle_raft_is_leader",
    "1 when this node's replica of the shard leads its group",
    &["shard"]
));
metric!(HAS_LEADER: IntGaugeVec = gauge(
    "chronicle_raft_has_leader",
    "1 when this node's replica of the shard knows a leader",
    &["shard"]
));
metric!(TERM: IntGaugeVec = gauge(
    "chronicle_raft_term",
    "The Raft term this node's replica of the shard is in",
    &["shard"]
));
metric!(LAST_LOG_INDEX: IntGaugeVec = gauge(
    "chronicle_raft_last_log_index",
    "Index of the last entry in this replica's Raft log",
    &["shard"]
));
metric!(COMMIT_INDEX: IntGaugeVec = gauge(
    "chronicle_raft_commit_index",
    "Index of the last entry this replica knows committed",
    &["shard"]
));
metric!(APPLIED_INDEX: IntGaugeVec = gauge(
    "chronicle_raft_applied_index",
    "Index of the last entry this replica applied to its shard",
    &["shard"]
));
metric!(APPLY_LAG: IntGaugeVec = gauge(
    "chronicle_raft_apply_lag_entries",
    "Entries committed on this replica but not yet applied",
    &["shard"]
));
metric!(REPLICATION_LAG: IntGaugeVec = gauge(
    "chronicle_raft_replication_lag_entries",
    "On a leader: entries the slowest follower of the shard is behind",
    &["shard"]
));
metric!(LOG_ENTRIES: IntGaugeVec = gauge(
    "chronicle_raft_log_entries",
    "Entries in this replica's Raft log (not yet purged after a snapshot)",
    &["shard"]
));
metric!(LOG_BYTES: IntGaugeVec = gauge(
    "chronicle_raft_log_bytes",
    "Bytes this replica's Raft log holds in RocksDB (SST files and memtables)",
    &["shard"]
));
metric!(SNAPSHOT_INDEX: IntGaugeVec = gauge(
    "chronicle_raft_snapshot_index",
    "Index of the last entry this replica's current snapshot covers",
    &["shard"]
));
metric!(
    /// Counted by the pre-vote task each time this member stands.
    ELECTIONS: IntCounterVec = counter(
        "chronicle_raft_elections_total",
        "Elections this node's replica stood for (after winning a pre-vote)",
        &["shard"]
    )
);
metric!(LEADER_CHANGES: IntCounterVec = counter(
    "chronicle_raft_leader_changes_total",
    "Changes of the leader this node's replica of the shard follows",
    &["shard"]
));
metric!(SNAPSHOTS: IntCounterVec = counter(
    "chronicle_raft_snapshots_total",
    "Snapshots this node built or installed, by shard and kind (built, installed)",
    &["shard", "kind"]
));
metric!(SNAPSHOT_BYTES: IntCounterVec = counter(
    "chronicle_raft_snapshot_bytes_total",
    "Bytes of the snapshots this node built or installed (files of the checkpoint)",
    &["shard", "kind"]
));
metric!(SNAPSHOT_SECONDS: HistogramVec = register(
    HistogramVec::new(
        HistogramOpts::new(
            "chronicle_raft_snapshot_seconds",
            "Time to build or install a snapshot, by kind (built, installed)",
        )
        .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
        &["kind"],
    )
    .expect("static metric definition")
));
metric!(FORWARDED_WRITES: IntCounterVec = counter(
    "chronicle_cluster_forwarded_writes_total",
    "Write entries this node sent to another node's leader of the shard",
    &["shard"]
));
metric!(FORWARDED_WRITE_SECONDS: Histogram = register(
    Histogram::with_opts(
        HistogramOpts::new(
            "chronicle_cluster_forwarded_write_seconds",
            "Round trip of a write entry forwarded to the shard's leader, commit included",
        )
        .buckets(prometheus::exponential_buckets(0.0005, 2.0, 15).expect("valid buckets")),
    )
    .expect("static metric definition")
));
metric!(ROCKSDB_SST_LIVE: IntGaugeVec = gauge(
    "chronicle_rocksdb_live_sst_bytes",
    "Bytes of the SST files the shard's current RocksDB version uses",
    &["shard", "cf"]
));
metric!(ROCKSDB_SST_TOTAL: IntGaugeVec = gauge(
    "chronicle_rocksdb_total_sst_bytes",
    "Bytes of every SST file of the shard, including those kept for snapshots and readers",
    &["shard", "cf"]
));
metric!(ROCKSDB_MEMTABLE: IntGaugeVec = gauge(
    "chronicle_rocksdb_memtable_bytes",
    "Bytes in the shard's active and immutable memtables",
    &["shard", "cf"]
));
metric!(ROCKSDB_PENDING_COMPACTION: IntGaugeVec = gauge(
    "chronicle_rocksdb_pending_compaction_bytes",
    "Bytes RocksDB estimates compaction still has to rewrite",
    &["shard", "cf"]
));
metric!(ROCKSDB_BLOCK_CACHE: IntGaugeVec = gauge(
    "chronicle_rocksdb_block_cache_bytes",
    "Bytes in the shard's RocksDB block cache",
    &["shard"]
));
metric!(ROCKSDB_WRITE_STOPPED: IntGaugeVec = gauge(
    "chronicle_rocksdb_write_stopped",
    "1 while RocksDB stops the shard's writes (too many L0 files, memtables or pending compaction)",
    &["shard"]
));
metric!(ROCKSDB_WRITE_DELAYED: IntGaugeVec = gauge(
    "chronicle_rocksdb_write_delayed",
    "1 while RocksDB slows the shard's writes down (a write stall short of a stop)",
    &["shard"]
));
metric!(DECODED_CACHE: IntGaugeVec = gauge(
    "chronicle_storage_decoded_cache_bytes",
    "Bytes of decoded chunks the shard keeps in memory",
    &["shard"]
));
metric!(STORAGE_READS: IntCounterVec = counter(
    "chronicle_storage_reads_total",
    "What this replica's reads cost since its storage opened, by kind: decoded_cache_hit and decoded_cache_miss (chunks read), chunk_decoded and sample_decoded, last_from_memory and last_from_chunks (series an instant read answered from memory or by reading chunks), read_in_parallel (selections decoded on more than one thread)",
    &["shard", "kind"]
));

/// The per-shard gauges, set at each refresh.
fn gauges() -> [&'static LazyLock<IntGaugeVec>; 19] {
    [
        &LEADER,
        &HAS_LEADER,
        &TERM,
        &LAST_LOG_INDEX,
        &COMMIT_INDEX,
        &APPLIED_INDEX,
        &APPLY_LAG,
        &REPLICATION_LAG,
        &LOG_ENTRIES,
        &LOG_BYTES,
        &SNAPSHOT_INDEX,
        &ROCKSDB_SST_LIVE,
        &ROCKSDB_SST_TOTAL,
        &ROCKSDB_MEMTABLE,
        &ROCKSDB_PENDING_COMPACTION,
        &ROCKSDB_BLOCK_CACHE,
        &ROCKSDB_WRITE_STOPPED,
        &ROCKSDB_WRITE_DELAYED,
        &DECODED_CACHE,
    ]
}

/// Touches every metric so a scrape lists them before their first event.
pub(crate) fn touch() {
    for g in gauges() {
        LazyLock::force(g);
    }
    for c in [
        &ELECTIONS,
        &LEADER_CHANGES,
        &SNAPSHOTS,
        &SNAPSHOT_BYTES,
        &FORWARDED_WRITES,
    ] {
        LazyLock::force(c);
    }
    LazyLock::force(&SNAPSHOT_SECONDS);
    LazyLock::force(&FORWARDED_WRITE_SECONDS);
}

/// Clears the per-shard gauges before a refresh, so a shard that moved away
/// stops being reported.
pub(crate) fn reset_gauges() {
    for g in gauges() {
        g.reset();
    }
    STORAGE_READS.reset();
}

/// Reports a shard's read counts (counted by its storage since it opened).
pub(crate) fn set_reads(shard: &str, reads: &chronicle_storage::ReadCounts) {
    for (kind, value) in [
        ("decoded_cache_hit", reads.decoded_cache_hits),
        ("packed_cache_hit", reads.packed_cache_hits),
        ("decoded_cache_miss", reads.decoded_cache_misses),
        ("chunk_decoded", reads.chunks_decoded),
        ("sample_decoded", reads.samples_decoded),
        ("last_from_memory", reads.last_from_memory),
        ("last_from_chunks", reads.last_from_chunks),
        ("read_in_parallel", reads.reads_in_parallel),
    ] {
        let c = STORAGE_READS.with_label_values(&[shard, kind]);
        c.reset();
        c.inc_by(value);
    }
}

/// Records one snapshot built or installed.
pub(crate) fn snapshot_done(shard: u32, kind: &'static str, bytes: u64, seconds: f64) {
    let shard = shard.to_string();
    SNAPSHOTS.with_label_values(&[shard.as_str(), kind]).inc();
    SNAPSHOT_BYTES
        .with_label_values(&[shard.as_str(), kind])
        .inc_by(bytes);
    SNAPSHOT_SECONDS.with_label_values(&[kind]).observe(seconds);
}

/// Sets an `i64` gauge from a `u64` figure (saturating: a figure past
/// `i64::MAX` is not a real one).
pub(crate) fn set(g: &IntGaugeVec, labels: &[&str], value: u64) {
    g.with_label_values(labels)
        .set(i64::try_from(value).unwrap_or(i64::MAX));
}

//! Chronicle's storage engine: time-series shards on RocksDB.
//!
//! A [`Shard`] holds many series. Points are validated ([`model`]), logged and kept in
//! a per-series head, then cut into compressed chunks ([`codec`]) stored by window.
//! Reads select series through label postings ([`Matcher`]), scan time ranges, and
//! push windowed aggregates ([`aggregate`]) down into the shard. The key layout is in
//! `docs/storage.md`.

pub mod aggregate;
mod batch;
pub mod codec;
mod config;
#[cfg(feature = "engine")]
mod decoded_cache;
mod error;
pub mod faults;
#[cfg(feature = "engine")]
mod keys;
mod matcher;
pub mod model;
#[cfg(feature = "engine")]
mod packed;
#[cfg(feature = "engine")]
mod postings;
#[cfg(feature = "engine")]
mod shard;
pub mod state;
pub mod workload;

pub use aggregate::{AggregateFunction, AggregateSeries, Partial};
pub use batch::{PointBatch, SeriesId};
pub use config::{default_shard_threads, format_duration, DownsampleRule, ShardConfig, Tuning};
pub use error::{Result, StorageError};
/// The column family of encoded chunks (as [`ColumnFamilyStats::name`] names it).
#[cfg(feature = "engine")]
pub use keys::CF_CHUNKS;
pub use matcher::{MatchOp, Matcher};
pub use model::{
    EncodedPoints, Label, LabelPair, LabelRef, Limits, Point, PointProblem, PointRef, PointsView,
    Sample, SeriesKey,
};
#[cfg(feature = "engine")]
pub use shard::{
    finish_groups, AggregateRequest, ColumnFamilyStats, ContentDigest, DownsampleReport,
    DownsampleStep, DurableFrontier, EngineStats, FlushReport, GroupBy, KeyedApply, KeyedPart,
    KeyedStamp, PartialGroups, ReadCounts, RetentionReport, SampledChunk, SeriesIter,
    SeriesSamples, Shard, SnapshotMeta,
};

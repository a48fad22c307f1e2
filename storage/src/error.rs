use crate::codec::CodecError;
use crate::model::PointProblem;

/// Everything the storage engine can report.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("point {index} of the batch is invalid: {problem}")]
    InvalidPoint { index: usize, problem: PointProblem },

    #[error("invalid matcher for label {label:?}: {reason}")]
    InvalidMatcher { label: String, reason: String },

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("corrupt chunk of series {series} covering [{start}, {end}] ns: {reason}")]
    CorruptChunk {
        series: String,
        start: i64,
        end: i64,
        reason: CodecError,
    },

    #[error("corrupt {what} record: {reason}")]
    CorruptRecord { what: &'static str, reason: String },

    #[error("apply index {index} is not after the last applied index {last}")]
    StaleApply { index: u64, last: u64 },

    #[error("the state history was pruned up to revision {compacted}; changes after {requested} are gone (read the current values, then watch from their revision)")]
    Compacted { requested: u64, compacted: u64 },

    #[error("series id space exhausted")]
    SeriesIdsExhausted,

    #[error("a thread decoding this read's chunks panicked")]
    DecodeThreadPanicked,

    #[cfg(feature = "engine")]
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),

    #[error("i/o on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

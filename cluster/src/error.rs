use thiserror::Error;

/// Why a cluster operation failed.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("raft log store: {0}")]
    Log(#[from] rocksdb::Error),
    #[error("storage: {0}")]
    Storage(#[from] chronicle_storage::StorageError),
    #[error("snapshot {path}: {source}")]
    Snapshot {
        path: String,
        source: std::io::Error,
    },
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },
}

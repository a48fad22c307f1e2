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
    #[error("configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("bus: {0}")]
    Bus(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },
}

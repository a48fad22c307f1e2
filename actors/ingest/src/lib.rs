//! The ingest actor: points arrive on `chronicle.ingest.>` (line protocol or JSON)
//! or as direct messages from the HTTP front end (line protocol, JSON, Prometheus
//! remote write, OTLP metrics); they are validated, batched by size
//! and time, written durably, and acknowledged only after the write returned.

#[cfg(feature = "actor")]
mod actor;
#[cfg(feature = "actor")]
mod metrics;
pub mod otlp;
pub mod parse;
pub mod remote_write;
#[cfg(feature = "actor")]
mod writer;

#[cfg(feature = "actor")]
pub use actor::{
    Flush, IngestActor, IngestConfig, IsDrained, Ping, WritePoints, ACTOR as ACTOR_NAME,
};
#[cfg(feature = "actor")]
pub use chronicle_actor_runtime::InjectPanic;
#[cfg(feature = "actor")]
pub use metrics::register_all as register_metrics;
pub use otlp::{parse_otlp_metrics, OtlpEncoding};
pub use parse::{parse_json, parse_line_protocol, parse_payload, Precision};
pub use remote_write::parse_remote_write;
#[cfg(feature = "actor")]
pub use writer::{PendingWrite, PointSink, StorageWriter};

/// Why points were not accepted or not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("point {index}: {reason}")]
    Point { index: usize, reason: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the ingest actor restarted before this write was acknowledged; retry it")]
    Restarted,
    #[error("the ingest actor is not running")]
    Unavailable,
    /// The cluster could not commit the write (no leader reachable, or this
    /// node is cut off from the majority); nothing was acknowledged.
    #[error("not committed: {0}")]
    NotCommitted(String),
}

impl IngestError {
    /// A stable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Line { .. } => "invalid_line",
            IngestError::Point { .. } => "invalid_point",
            IngestError::BadRequest(_) => "bad_request",
            IngestError::Storage(_) => "storage_error",
            IngestError::Restarted => "retry",
            IngestError::Unavailable => "unavailable",
            IngestError::NotCommitted(_) => "not_committed",
        }
    }

    /// Whether the client sent something wrong (as opposed to a server-side failure).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            IngestError::Line { .. } | IngestError::Point { .. } | IngestError::BadRequest(_)
        )
    }
}

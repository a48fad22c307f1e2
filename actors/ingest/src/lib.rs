//! The ingest actor: points arrive on `chronicle.ingest.>` (line protocol or JSON)
//! or as direct messages from the HTTP front end (line protocol, JSON, Prometheus
//! remote write, OTLP metrics); they are validated, batched by size
//! and time, written durably, and acknowledged only after the write returned.

#[cfg(feature = "actor")]
mod actor;
mod line_protocol;
#[cfg(feature = "actor")]
mod metrics;
pub mod otlp;
pub mod parse;
#[cfg(any(test, feature = "reference-parser"))]
pub mod reference;
pub mod remote_write;
#[cfg(feature = "actor")]
mod writer;

#[cfg(feature = "actor")]
pub use actor::{
    Flush, IngestActor, IngestConfig, IsDrained, Ping, StopIntake, WritePoints, ACTOR as ACTOR_NAME,
};
#[cfg(feature = "actor")]
pub use chronicle_actor_runtime::InjectPanic;
#[cfg(feature = "actor")]
pub use metrics::register_all as register_metrics;
pub use otlp::{parse_otlp_metrics, OtlpEncoding};
pub use parse::{parse_json, parse_line_protocol, parse_payload, Precision};
pub use remote_write::parse_remote_write;
#[cfg(feature = "actor")]
pub use writer::{
    check_idempotency_key, KeyedSpan, PendingWrite, PointSink, StorageWriter, MAX_IDEMPOTENCY_KEY,
};

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
    /// The request would create more points or label bytes than one request
    /// may; nothing of it was kept. Split it.
    #[error("{0}")]
    TooLarge(String),
}

/// Counts what a request creates against [`chronicle_storage::Limits`]'s
/// per-request bounds, before the parser builds it.
#[derive(Debug)]
pub struct RequestBudget {
    points: usize,
    label_bytes: usize,
    max_points: usize,
    max_label_bytes: usize,
}

impl RequestBudget {
    pub fn new(limits: &chronicle_storage::Limits) -> Self {
        Self {
            points: 0,
            label_bytes: 0,
            max_points: limits.max_request_points,
            max_label_bytes: limits.max_request_label_bytes,
        }
    }

    /// Accounts for `points` more points that create series of
    /// `series_bytes` names and labels in all. A series is counted each time
    /// a request creates it: a remote-write time series once for all its
    /// samples, each field of a line protocol line (a series of its own, with
    /// the line's tags) once per field.
    pub fn charge(&mut self, points: usize, series_bytes: usize) -> Result<(), IngestError> {
        self.points = self.points.saturating_add(points);
        self.label_bytes = self.label_bytes.saturating_add(series_bytes);
        if self.points > self.max_points {
            return Err(IngestError::TooLarge(format!(
                "the request holds more than {} points, the most one request may; split it",
                self.max_points
            )));
        }
        if self.label_bytes > self.max_label_bytes {
            return Err(IngestError::TooLarge(format!(
                "the request's series would carry more than {} bytes of names and labels \
                 (tags repeated under many fields count once per field); split it",
                self.max_label_bytes
            )));
        }
        Ok(())
    }
}

/// Bytes of a metric name and its labels.
pub fn label_bytes<'a>(
    metric: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    labels
        .into_iter()
        .fold(metric.len(), |n, (k, v)| n + k.len() + v.len())
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
            IngestError::TooLarge(_) => "request_too_large",
        }
    }

    /// Whether the client sent something wrong (as opposed to a server-side failure).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            IngestError::Line { .. }
                | IngestError::Point { .. }
                | IngestError::BadRequest(_)
                | IngestError::TooLarge(_)
        )
    }
}

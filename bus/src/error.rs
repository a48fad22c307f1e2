use std::time::Duration;

/// Everything that can go wrong on a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        subject: String,
        reason: &'static str,
    },
    #[error("invalid queue group {0:?}: must be one non-empty token without spaces")]
    InvalidQueueGroup(String),
    #[error("no responders on {0}")]
    NoResponders(String),
    #[error("no reply on {subject} within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("message on {0} has no reply subject")]
    NoReplySubject(String),
    #[error("the bus is draining or closed")]
    Closed,
    #[error("payload of {size} bytes is over the limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("envelope: {0}")]
    Envelope(String),
    #[error("NATS connection to {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("NATS {operation}: {reason}")]
    Nats {
        operation: &'static str,
        reason: String,
    },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("partitioned: {0}")]
    Partitioned(String),
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

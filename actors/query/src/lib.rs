//! The query actor: JSON requests on `chronicle.query` (request/reply) or from the
//! HTTP front end, executed on the storage shard with limits, answered as JSON.

mod actor;
mod execute;
pub mod metrics;
pub mod promql;
pub mod request;
pub mod select;
mod source;

pub use actor::{
    Budget, CancelOnDrop, Ping, QueryActor, QueryConfig, QueryGate, RunQuery, StopIntake,
    ACTOR as ACTOR_NAME, TIMEOUT_HEADER,
};
pub use chronicle_actor_runtime::InjectPanic;
pub use execute::execute;
pub use promql::{selector_matchers, MetaAnswer, MetaKind, MetaQuery, PromqlLimits, PromqlQuery};
pub use request::{watched_metrics, QueryRequest, QueryResult, SeriesResult};
pub use select::{run_select, Cell, Table};
pub use source::{storage_error, too_many_samples, DataSource, ReadLimit, SeriesRead};

/// Why a query failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    /// The query is valid but its evaluation broke a rule of the language.
    #[error("{0}")]
    Execution(String),
    #[error("query timed out in expression evaluation")]
    Timeout,
    #[error("query cancelled: the client went away")]
    Cancelled,
    #[error("storage: {0}")]
    Storage(String),
    #[error("the query actor is not running")]
    Unavailable,
    #[error("the query actor restarted while running this query; retry it")]
    Restarted,
    /// Every slot is taken and the wait queue is full: retry later.
    #[error("the node is busy: too many queries are running or waiting; retry later")]
    Busy,
}

impl QueryError {
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::BadRequest(_) => "bad_request",
            QueryError::TooLarge(_) => "query_too_large",
            QueryError::Execution(_) => "execution_error",
            QueryError::Timeout => "timeout",
            QueryError::Cancelled => "cancelled",
            QueryError::Storage(_) => "storage_error",
            QueryError::Unavailable => "unavailable",
            QueryError::Restarted => "retry",
            QueryError::Busy => "busy",
        }
    }

    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            QueryError::BadRequest(_) | QueryError::TooLarge(_) | QueryError::Execution(_)
        )
    }
}

//! The query actor: JSON requests on `chronicle.query` (request/reply) or from the
//! HTTP front end, executed on the storage shard with limits, answered as JSON.

mod actor;
mod execute;
pub mod request;

pub use actor::{Ping, QueryActor, QueryConfig, RunQuery, ACTOR as ACTOR_NAME};
pub use chronicle_actor_runtime::InjectPanic;
pub use execute::execute;
pub use request::{QueryRequest, QueryResult, SeriesResult};

/// Why a query failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the query actor is not running")]
    Unavailable,
    #[error("the query actor restarted while running this query; retry it")]
    Restarted,
}

impl QueryError {
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::BadRequest(_) => "bad_request",
            QueryError::TooLarge(_) => "query_too_large",
            QueryError::Storage(_) => "storage_error",
            QueryError::Unavailable => "unavailable",
            QueryError::Restarted => "retry",
        }
    }

    pub fn is_client_error(&self) -> bool {
        matches!(self, QueryError::BadRequest(_) | QueryError::TooLarge(_))
    }
}

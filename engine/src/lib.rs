//! Chronicle's query engine.
//!
//! Query languages compile into one logical [`plan::Plan`]; [`eval`] runs a plan
//! over a [`source::SeriesSource`] (a storage shard, or anything that can select
//! series by label matchers and read their samples) for one instant or a range of
//! steps. PromQL is lowered by [`promql`]. SQL ([`sql`]) and CQL ([`cql`]) answer
//! with rows rather than series and lower into [`select::SelectPlan`] (ADR 0004).
//!
//! Times inside the engine are milliseconds since the epoch, as in PromQL; the
//! storage adapter converts to and from nanoseconds.

pub mod annotations;
pub mod cql;
pub mod eval;
pub mod explain;
mod functions;
pub mod plan;
pub mod promql;
pub mod select;
#[cfg(feature = "shard")]
mod shard_source;
pub mod source;
pub mod sql;
pub mod value;

mod aggregate;
#[cfg(test)]
mod annotation_tests;
mod binary;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;

pub use annotations::{Annotation, Pos, Severity};
pub use eval::{evaluate, step_count, Answer, Query, QueryLimits};
pub use functions::almost_equal;
pub use value::{Labels, QueryValue, RangeSeries, Sample};

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The query text does not parse.
    #[error("parse error: {0}")]
    Parse(String),
    /// The query text does not parse, at this line and column (1-based).
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: u64,
        column: u64,
        message: String,
    },
    /// The query parses but cannot be evaluated as written.
    #[error("{0}")]
    Invalid(String),
    /// Evaluation hit a rule of the language (e.g. duplicate series).
    #[error("{0}")]
    Execution(String),
    /// Over a configured limit (series, samples, time).
    #[error("query limit: {0}")]
    Limit(String),
    /// The query ran past its deadline.
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// Whoever asked went away.
    #[error("query cancelled")]
    Cancelled,
    /// The storage underneath failed.
    #[error("storage: {0}")]
    Storage(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

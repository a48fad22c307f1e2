//! What queries read: one storage shard, or (in the node binary) every shard
//! of a cluster through their leaders.

use chronicle_engine::source::SeriesSource;
use chronicle_storage::{
    AggregateRequest, AggregateSeries, Matcher, SeriesKey, SeriesSamples, Shard, StorageError,
};

use crate::QueryError;

/// The reads the query actor makes. Times are nanoseconds, start inclusive,
/// end exclusive. Implementations block (the actor calls them on the
/// blocking pool).
pub trait DataSource: SeriesSource + Send + Sync + 'static {
    /// The samples of every matching series.
    fn series(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QueryError>;

    /// Windowed aggregation grouped by labels.
    fn aggregate(&self, req: &AggregateRequest) -> Result<Vec<AggregateSeries>, QueryError>;

    /// The keys of matching series with data in `[start, end)`
    /// (`i64::MIN..i64::MAX`: any); `None` when more than `max_series` match.
    fn series_keys(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Option<Vec<SeriesKey>>, QueryError>;
}

/// A storage error as the query's: the request's own mistakes (a matcher that
/// selects everything, a bad regex) are the client's; anything else is the server's.
pub fn storage_error(e: StorageError) -> QueryError {
    match e {
        StorageError::InvalidMatcher { .. } | StorageError::InvalidRequest(_) => {
            QueryError::BadRequest(e.to_string())
        }
        other => QueryError::Storage(other.to_string()),
    }
}

impl DataSource for Shard {
    fn series(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, QueryError> {
        self.query(matchers, start, end).map_err(storage_error)
    }

    fn aggregate(&self, req: &AggregateRequest) -> Result<Vec<AggregateSeries>, QueryError> {
        Shard::aggregate(self, req).map_err(storage_error)
    }

    fn series_keys(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Option<Vec<SeriesKey>>, QueryError> {
        Shard::series_keys(self, matchers, start, end, max_series).map_err(storage_error)
    }
}

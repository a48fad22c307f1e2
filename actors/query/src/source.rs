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
        let selected = self.select(matchers).map_err(storage_error)?;
        if selected.len() > max_series {
            return Ok(None);
        }
        let keep = if start == i64::MIN && end == i64::MAX {
            vec![true; selected.len()]
        } else {
            let ids: Vec<u64> = selected.iter().map(|(id, _)| *id).collect();
            self.have_data(&ids, start, end).map_err(storage_error)?
        };
        Ok(Some(
            selected
                .into_iter()
                .zip(keep)
                .filter_map(|((_, key), keep)| keep.then_some(key))
                .collect(),
        ))
    }
}

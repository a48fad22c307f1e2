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
    /// The samples of matching series, read no further than `limit` allows:
    /// storage stops reading as soon as the answer has enough or too much.
    fn series(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        limit: ReadLimit,
    ) -> Result<SeriesRead, QueryError>;

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

/// How far a raw read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Every sample, but more than this many in all is an error
    /// ([`QueryError::TooLarge`]), found before they are all read.
    AtMost(usize),
    /// The first this many samples in series key order (metric, then labels);
    /// the rest is left unread and the answer marked truncated.
    First(usize),
}

/// What a limited read gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesRead {
    /// Series with samples in the range, in key order for [`ReadLimit::First`].
    pub series: Vec<SeriesSamples>,
    /// [`ReadLimit::First`] left samples unread.
    pub truncated: bool,
}

/// The error for a read over [`ReadLimit::AtMost`].
pub fn too_many_samples(max: usize) -> QueryError {
    QueryError::TooLarge(format!(
        "the query would read more than {max} samples; narrow the time range or the \
         selection, aggregate, or set a limit"
    ))
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
        limit: ReadLimit,
    ) -> Result<SeriesRead, QueryError> {
        match limit {
            ReadLimit::AtMost(max) => match self
                .query_limited(matchers, start, end, max)
                .map_err(storage_error)?
            {
                Some(series) => Ok(SeriesRead {
                    series: series.into_iter().filter(|(_, s)| !s.is_empty()).collect(),
                    truncated: false,
                }),
                None => Err(too_many_samples(max)),
            },
            ReadLimit::First(count) => {
                let (series, truncated) = self
                    .query_first(matchers, start, end, count)
                    .map_err(storage_error)?;
                Ok(SeriesRead { series, truncated })
            }
        }
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

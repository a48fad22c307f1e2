//! The node's actors over the cluster: the ingest writer's sink commits through
//! Raft, and the query actor reads every shard through its leader. The actors
//! run on actix's threads; the cluster runs on its own tokio runtime, so these
//! adapters block on it (they are called from blocking threads only).

use std::sync::Arc;

use chronicle_cluster::{ClusterError, ClusterNode, ShardAnswer, ShardRead};
use chronicle_engine::source::SeriesSource;
use chronicle_engine::{EngineError, RangeSeries};
use chronicle_ingest::{IngestError, KeyedSpan, PendingWrite, PointSink};
use chronicle_query::{
    storage_error, too_many_samples, DataSource, QueryError, ReadLimit, SeriesRead,
};
use chronicle_storage::{
    finish_groups, AggregateRequest, AggregateSeries, Matcher, PointBatch, SeriesKey, StorageError,
};
use tokio::runtime::Handle;

/// Writes through the cluster: acknowledged once committed in every shard touched.
pub struct ClusterSink {
    pub cluster: Arc<ClusterNode>,
    pub runtime: Handle,
}

impl PointSink for ClusterSink {
    /// Hands the batch to Raft (in order: the writer submits one batch at a
    /// time); the commit is awaited on the cluster's runtime.
    fn submit(
        &self,
        points: PointBatch,
        keys: Vec<KeyedSpan>,
    ) -> Result<PendingWrite, IngestError> {
        let keys: Vec<chronicle_cluster::KeySpan> = keys
            .into_iter()
            .map(|k| chronicle_cluster::KeySpan {
                key: k.key,
                start: k.start,
                len: k.len,
            })
            .collect();
        let pending = self
            .runtime
            .block_on(self.cluster.submit_keyed(points, &keys))
            .map_err(ingest_error)?;
        let commit = self.runtime.spawn(pending.wait());
        Ok(Box::pin(async move {
            match commit.await {
                Ok(result) => result.map_err(ingest_error),
                Err(e) => Err(IngestError::NotCommitted(format!(
                    "commit task failed: {e}"
                ))),
            }
        }))
    }
}

fn ingest_error(e: ClusterError) -> IngestError {
    match e {
        ClusterError::Storage(StorageError::InvalidPoint { index, problem }) => {
            IngestError::Point {
                index,
                reason: problem.to_string(),
            }
        }
        ClusterError::Storage(other) => IngestError::Storage(other.to_string()),
        other => IngestError::NotCommitted(other.to_string()),
    }
}

/// Reads through the cluster: each shard linearizably from its leader,
/// aggregations as partial aggregates merged here.
pub struct ClusterSource {
    pub cluster: Arc<ClusterNode>,
    pub runtime: Handle,
}

impl ClusterSource {
    fn ask(&self, read: ShardRead) -> Result<ShardAnswer, ClusterError> {
        self.runtime
            .block_on(self.cluster.query_on_blocking_thread(&read))
    }
}

fn query_error(e: ClusterError) -> QueryError {
    match e {
        ClusterError::Storage(e) => storage_error(e),
        other => QueryError::Storage(other.to_string()),
    }
}

fn unexpected(answer: &ShardAnswer) -> QueryError {
    QueryError::Storage(format!("the cluster answered {answer:?}"))
}

impl DataSource for ClusterSource {
    fn series(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        limit: ReadLimit,
    ) -> Result<SeriesRead, QueryError> {
        let read = match limit {
            ReadLimit::AtMost(max_samples) => ShardRead::Series {
                matchers: matchers.to_vec(),
                start,
                end,
                max_samples,
            },
            ReadLimit::First(count) => ShardRead::First {
                matchers: matchers.to_vec(),
                start,
                end,
                count,
            },
        };
        match self.ask(read).map_err(query_error)? {
            ShardAnswer::Series(Some(series)) => Ok(SeriesRead {
                series: series.into_iter().filter(|(_, s)| !s.is_empty()).collect(),
                truncated: false,
            }),
            ShardAnswer::Series(None) => Err(too_many_samples(match limit {
                ReadLimit::AtMost(max) | ReadLimit::First(max) => max,
            })),
            ShardAnswer::First { series, truncated } => Ok(SeriesRead { series, truncated }),
            other => Err(unexpected(&other)),
        }
    }

    fn aggregate(&self, req: &AggregateRequest) -> Result<Vec<AggregateSeries>, QueryError> {
        match self
            .ask(ShardRead::Partials(req.clone()))
            .map_err(query_error)?
        {
            ShardAnswer::Partials(groups) => Ok(finish_groups(groups, req.function)),
            other => Err(unexpected(&other)),
        }
    }

    fn series_keys(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_series: usize,
    ) -> Result<Option<Vec<SeriesKey>>, QueryError> {
        let read = ShardRead::Keys {
            matchers: matchers.to_vec(),
            start,
            end,
            max_series,
        };
        match self.ask(read).map_err(query_error)? {
            ShardAnswer::Keys(keys) => Ok(keys),
            other => Err(unexpected(&other)),
        }
    }
}

/// The engine's view: milliseconds, end inclusive.
impl SeriesSource for ClusterSource {
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>, EngineError> {
        let (start, end) = chronicle_engine::source::storage_window(start, end);
        let read = ShardRead::Series {
            matchers: matchers.to_vec(),
            start,
            end,
            max_samples,
        };
        match self.ask(read) {
            Ok(ShardAnswer::Series(Some(series))) => {
                Ok(chronicle_engine::source::from_storage(series))
            }
            Ok(ShardAnswer::Series(None)) => {
                Err(chronicle_engine::source::too_many_samples(max_samples))
            }
            other => Err(engine_error(other)),
        }
    }

    fn select_last(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>, EngineError> {
        let (start, end) = chronicle_engine::source::storage_window(start, end);
        let read = ShardRead::Last {
            matchers: matchers.to_vec(),
            start,
            end,
        };
        match self.ask(read) {
            // One sample a series: the budget bounds the series.
            Ok(ShardAnswer::Series(Some(series))) if series.len() > max_samples => {
                Err(chronicle_engine::source::too_many_samples(max_samples))
            }
            Ok(ShardAnswer::Series(Some(series))) => {
                Ok(chronicle_engine::source::from_storage(series))
            }
            other => Err(engine_error(other)),
        }
    }
}

/// A cluster read's failure (or unexpected answer) as the engine's error.
fn engine_error(answer: Result<ShardAnswer, ClusterError>) -> EngineError {
    match answer {
        Ok(other) => EngineError::Storage(format!("the cluster answered {other:?}")),
        Err(ClusterError::Storage(
            e @ (StorageError::InvalidMatcher { .. } | StorageError::InvalidRequest(_)),
        )) => chronicle_engine::source::storage_error(e),
        Err(e) => EngineError::Storage(e.to_string()),
    }
}

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{Actor, Handler, Message, SyncContext};
use chronicle_storage::{Point, Shard};
use tracing::error;

use crate::IngestError;

/// Where batches go: a storage shard directly (tests, tools), or the node's
/// cluster, which commits them through Raft before they count as written.
pub trait PointSink: Send + Sync + 'static {
    /// Writes `points` durably (blocking) and returns how many were written.
    fn write_points(&self, points: Vec<Point>) -> Result<usize, IngestError>;
}

impl PointSink for Shard {
    fn write_points(&self, points: Vec<Point>) -> Result<usize, IngestError> {
        self.write_batch(&points)
            .map(|_| points.len())
            .map_err(|e| IngestError::Storage(e.to_string()))
    }
}

/// Writes batches on its own thread (the sink blocks; its fsync, or the
/// cluster's commit, is what makes an acknowledgement durable).
pub struct StorageWriter {
    sink: Arc<dyn PointSink>,
}

impl StorageWriter {
    pub fn new(sink: Arc<dyn PointSink>) -> Self {
        Self { sink }
    }
}

impl Actor for StorageWriter {
    type Context = SyncContext<Self>;
}

/// One durable write of a batch.
pub struct WriteBatch(pub Vec<Point>);

impl Message for WriteBatch {
    type Result = Result<usize, IngestError>;
}

impl Handler<WriteBatch> for StorageWriter {
    type Result = Result<usize, IngestError>;

    fn handle(&mut self, batch: WriteBatch, _: &mut SyncContext<Self>) -> Self::Result {
        let _span = tracing::debug_span!("write_batch", points = batch.0.len()).entered();
        let sink = &self.sink;
        let started = std::time::Instant::now();
        let points = batch.0.len();
        let outcome = catch_unwind(AssertUnwindSafe(|| sink.write_points(batch.0)));
        tracing::debug!(points, elapsed = ?started.elapsed(), "batch written");
        match outcome {
            Ok(result) => result,
            Err(_) => {
                error!("storage write panicked; the batch is not acknowledged");
                Err(IngestError::Storage("write panicked".into()))
            }
        }
    }
}

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{Actor, Handler, Message, SyncContext};
use chronicle_storage::{Point, Shard};
use tracing::error;

use crate::IngestError;

/// Writes batches on its own thread (RocksDB calls block; the fsync per batch is
/// what makes an acknowledgement durable).
pub struct StorageWriter {
    shard: Arc<Shard>,
}

impl StorageWriter {
    pub fn new(shard: Arc<Shard>) -> Self {
        Self { shard }
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
        let shard = &self.shard;
        let started = std::time::Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| shard.write_batch(&batch.0)));
        tracing::debug!(points = batch.0.len(), elapsed = ?started.elapsed(), "batch written");
        match outcome {
            Ok(Ok(_)) => Ok(batch.0.len()),
            Ok(Err(e)) => Err(IngestError::Storage(e.to_string())),
            Err(_) => {
                error!("storage write panicked; the batch is not acknowledged");
                Err(IngestError::Storage("write panicked".into()))
            }
        }
    }
}

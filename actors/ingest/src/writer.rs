use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;

use actix::{Actor, Handler, Message, SyncContext};
use chronicle_storage::{PointBatch, Shard};
use tracing::error;

use crate::IngestError;

/// A batch handed to a sink: completes with the points written once they are
/// durable.
pub type PendingWrite = Pin<Box<dyn Future<Output = Result<usize, IngestError>> + Send>>;

/// Points `start..start + len` of a batch were sent with this idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedSpan {
    pub key: String,
    pub start: usize,
    pub len: usize,
}

/// The longest idempotency key taken, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Checks a client's idempotency key: 1 to 128 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), IngestError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(IngestError::BadRequest(format!(
            "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(())
}

/// Where batches go: a storage shard directly (tests, tools), or the node's
/// cluster, which commits them through Raft before they count as written.
pub trait PointSink: Send + Sync + 'static {
    /// Hands `points` over (blocking), ordered after every earlier batch: a
    /// later write of a point replaces an earlier one. The returned future
    /// completes when they are durable; the next batch may be submitted
    /// before it does. `keys` name the spans sent with an idempotency key.
    fn submit(&self, points: PointBatch, keys: Vec<KeyedSpan>)
        -> Result<PendingWrite, IngestError>;
}

impl PointSink for Shard {
    /// Written and synced before returning. Idempotency keys are kept by the
    /// replicated write path only.
    fn submit(
        &self,
        points: PointBatch,
        keys: Vec<KeyedSpan>,
    ) -> Result<PendingWrite, IngestError> {
        if !keys.is_empty() {
            return Err(IngestError::BadRequest(
                "idempotency keys need the node's replicated write path".into(),
            ));
        }
        let written = self
            .write_view(points.view())
            .map(|_| points.len())
            .map_err(|e| IngestError::Storage(e.to_string()))?;
        Ok(Box::pin(std::future::ready(Ok(written))))
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

/// One batch to hand to the sink (and its keyed spans); answered once it is
/// submitted, with what completes when it is durable.
/// Points, their idempotency spans, and the batch's trace span.
pub struct WriteBatch(pub PointBatch, pub Vec<KeyedSpan>, pub tracing::Span);

impl Message for WriteBatch {
    type Result = Result<PendingWrite, IngestError>;
}

impl Handler<WriteBatch> for StorageWriter {
    type Result = Result<PendingWrite, IngestError>;

    fn handle(&mut self, batch: WriteBatch, _: &mut SyncContext<Self>) -> Self::Result {
        let _span =
            tracing::info_span!(parent: &batch.2, "write_batch", points = batch.0.len()).entered();
        let sink = &self.sink;
        let started = std::time::Instant::now();
        let points = batch.0.len();
        let outcome = catch_unwind(AssertUnwindSafe(|| sink.submit(batch.0, batch.1)));
        tracing::debug!(points, elapsed = ?started.elapsed(), "batch submitted");
        match outcome {
            Ok(result) => result,
            Err(_) => {
                error!("storage write panicked; the batch is not acknowledged");
                Err(IngestError::Storage("write panicked".into()))
            }
        }
    }
}

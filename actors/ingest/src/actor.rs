use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use chronicle_actor_runtime::{error_json, guarded, InjectPanic};
use chronicle_bus::{Bus, Message as BusMessage};
use chronicle_storage::{Limits, PointBatch};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info_span, warn};

use crate::metrics::{BATCH_SECONDS, BYTES_RECEIVED, POINTS_WRITTEN, REJECTED};
use crate::parse::{parse_payload, Precision};
use crate::writer::{check_idempotency_key, KeyedSpan, StorageWriter, WriteBatch};
use crate::IngestError;

/// The name in logs and in `chronicle_actor_restarts_total{actor}`.
pub const ACTOR: &str = "ingest";

/// Settings of the ingest actor.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Subjects are `<prefix>.ingest.<anything>`.
    pub subject_prefix: String,
    /// Queue group shared by every node's ingest actor: each message is taken once.
    pub queue_group: String,
    /// A batch is written when it holds this many points...
    pub max_batch_points: usize,
    /// ...or when its first point has waited this long.
    pub max_batch_delay: Duration,
    /// Payloads at least this large are parsed on blocking threads while the
    /// actor takes the next message...
    pub parse_offload_bytes: usize,
    /// ...with at most this many messages parsing or parsed and waiting to be
    /// batched; beyond it the actor takes no input (a bound on memory).
    pub parse_queue: usize,
    /// Batches submitted and waiting for their commit at once (the sink
    /// takes the next batch while earlier ones commit); beyond it the actor
    /// holds its input.
    pub commits_in_flight: usize,
    pub limits: Limits,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "chronicle".into(),
            queue_group: "chronicle-ingest".into(),
            max_batch_points: 20_000,
            max_batch_delay: Duration::from_millis(2),
            parse_offload_bytes: 64 * 1024,
            parse_queue: 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            commits_in_flight: 4,
            limits: Limits::default(),
        }
    }
}

/// Points from the HTTP front end (already parsed), acknowledged when durable.
/// With an idempotency key, a retry of the same write within the window is
/// acknowledged without being applied again.
#[derive(Message)]
#[rtype(result = "Result<usize, IngestError>")]
pub struct WritePoints {
    pub points: PointBatch,
    pub idempotency_key: Option<String>,
    /// The caller's span: the batch that writes these points is traced as
    /// its child (`tracing::Span::current()` where the write is made).
    pub span: tracing::Span,
}

/// Answers once the actor is subscribed and serving (a readiness probe).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Who is waiting for a batch to become durable.
enum Waiter {
    Reply {
        subject: String,
        points: usize,
        span: tracing::Span,
    },
    Direct {
        tx: oneshot::Sender<Result<usize, IngestError>>,
        points: usize,
        span: tracing::Span,
    },
}

impl Waiter {
    fn span(&self) -> &tracing::Span {
        match self {
            Waiter::Reply { span, .. } | Waiter::Direct { span, .. } => span,
        }
    }
}

type Parsed = Result<PointBatch, IngestError>;

/// A message handed to a parser thread.
struct ParseTicket {
    reply: Option<String>,
    key: Option<String>,
    span: tracing::Span,
    result: oneshot::Receiver<Parsed>,
}

/// A parser thread finished a message (wakes the actor to batch it).
#[derive(Message)]
#[rtype(result = "()")]
struct ParseDone;

/// The batch being submitted: one at a time, so batches reach the sink in order.
struct InFlight {
    id: u64,
    /// Turns true once the sink has taken the batch (its commit may still be
    /// under way), or the submission failed.
    done: watch::Receiver<bool>,
}

impl InFlight {
    fn finished(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut done = self.done.clone();
        async move {
            // An error means the writing task is gone, which also ends the write.
            let _ = done.wait_for(|finished| *finished).await;
        }
    }
}

/// The supervised ingest actor.
///
/// Writes are pipelined with parsing: while one batch is being written, the next
/// fills (group commit). When the next batch is full before the write returns,
/// the actor stops taking input until it does, so a slow disk slows the
/// producers instead of growing memory: at most two batches are held.
pub struct IngestActor {
    /// Pauses restarts and reports too many (readiness).
    restarts: chronicle_actor_runtime::Restarts,
    bus: Arc<dyn Bus>,
    writer: Addr<StorageWriter>,
    config: IngestConfig,
    pending: PointBatch,
    /// Spans of `pending` sent with an idempotency key.
    pending_keys: Vec<KeyedSpan>,
    waiters: Vec<Waiter>,
    timer: Option<SpawnHandle>,
    in_flight: Option<InFlight>,
    next_write_id: u64,
    /// The batch became due while a write was in flight: write it when that returns.
    flush_when_done: bool,
    /// Messages being parsed or parsed and waiting for an earlier one, in
    /// arrival order: they are batched in that order, so a later write of a
    /// point replaces an earlier one. At most `parse_queue` long.
    parsing: VecDeque<ParseTicket>,
    /// The bus subscription ended (the bus is draining).
    drained: bool,
    /// Drains the bus subscription (shutdown stops intake with it).
    intake: Option<chronicle_bus::DrainHandle>,
    /// One permit per batch submitted and not yet committed.
    commit_slots: Arc<tokio::sync::Semaphore>,
}

/// Whether the bus subscription has ended and nothing is pending (shutdown).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsDrained;

/// Stops taking messages from the bus (shutdown's first step): the
/// subscription is drained, so what was already delivered is still written and
/// acknowledged over the bus, which stays open for the acknowledgements.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIntake;

impl Handler<StopIntake> for IngestActor {
    type Result = ();

    fn handle(&mut self, _: StopIntake, _: &mut Context<Self>) {
        match &self.intake {
            Some(intake) => intake.drain(),
            // Never subscribed: nothing to wait for.
            None => self.drained = true,
        }
    }
}

impl Handler<IsDrained> for IngestActor {
    type Result = bool;

    fn handle(&mut self, _: IsDrained, _: &mut Context<Self>) -> bool {
        self.drained
            && self.pending.is_empty()
            && self.in_flight.is_none()
            && self.parsing.is_empty()
            && self.commit_slots.available_permits() == self.config.commits_in_flight.max(1)
    }
}

impl IngestActor {
    pub fn new(bus: Arc<dyn Bus>, writer: Addr<StorageWriter>, config: IngestConfig) -> Self {
        Self {
            restarts: chronicle_actor_runtime::Restarts::new(
                ACTOR,
                chronicle_actor_runtime::RestartPolicy::default(),
            ),
            bus,
            writer,
            pending: PointBatch::new(),
            pending_keys: Vec::new(),
            waiters: Vec::new(),
            timer: None,
            in_flight: None,
            next_write_id: 0,
            flush_when_done: false,
            parsing: VecDeque::new(),
            drained: false,
            intake: None,
            commit_slots: Arc::new(tokio::sync::Semaphore::new(config.commits_in_flight.max(1))),
            config,
        }
    }

    /// Restarts recorded in `restarts` (the node's policy) instead of the
    /// default one.
    pub fn with_restarts(mut self, restarts: chronicle_actor_runtime::Restarts) -> Self {
        self.restarts = restarts;
        self
    }

    fn subject(&self) -> String {
        format!("{}.ingest.>", self.config.subject_prefix)
    }

    fn on_bus_message(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        let span = info_span!("ingest_message", subject = %msg.subject, bytes = msg.payload.len());
        chronicle_bus::trace::adopt(&msg.headers, &span);
        let _entered = span.clone().entered();
        BYTES_RECEIVED.inc_by(msg.payload.len() as u64);
        let precision = match msg.headers.get("Precision").map(str::parse).transpose() {
            Ok(p) => p.unwrap_or(Precision::Nanoseconds),
            Err(e) => return self.reject(msg.reply, e),
        };
        let key = msg.headers.get("Idempotency-Key").map(str::to_owned);
        if let Some(k) = &key {
            if let Err(e) = check_idempotency_key(k) {
                return self.reject(msg.reply, e);
            }
        }
        let job = ParseJob {
            content_type: msg.headers.get("Content-Type").map(str::to_owned),
            payload: msg.payload,
            precision,
            limits: self.config.limits,
        };
        if self.parsing.is_empty() && job.payload.len() < self.config.parse_offload_bytes {
            // Small, and nothing earlier is still parsing: parse right here.
            let result = job.run();
            return self.batch(msg.reply, key, result, span, ctx);
        }
        if self.parsing.len() >= self.config.parse_queue.max(1) {
            // Every parser is taken: take no more input until the oldest is done.
            let oldest = self.parsing.pop_front().expect("parsing is not empty");
            let reply = msg.reply;
            ctx.wait(oldest.result.into_actor(self).map(move |result, act, ctx| {
                act.batch(
                    oldest.reply,
                    oldest.key,
                    result.unwrap_or(Err(IngestError::Unavailable)),
                    oldest.span,
                    ctx,
                );
                act.batch_parsed(ctx);
                act.parse_elsewhere(reply, key, job, span, ctx);
            }));
            return;
        }
        self.parse_elsewhere(msg.reply, key, job, span, ctx);
    }

    fn parse_elsewhere(
        &mut self,
        reply: Option<String>,
        key: Option<String>,
        job: ParseJob,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        let (tx, result) = oneshot::channel();
        let actor = ctx.address();
        tokio::task::spawn_blocking(move || {
            chronicle_actor_runtime::yield_to_cluster_work();
            let result = catch_unwind(AssertUnwindSafe(|| job.run()))
                .unwrap_or_else(|_| Err(IngestError::BadRequest("the parser failed".into())));
            let _ = tx.send(result);
            actor.do_send(ParseDone);
        });
        self.parsing.push_back(ParseTicket {
            reply,
            key,
            span,
            result,
        });
    }

    /// Batches, in arrival order, the messages whose parse has finished.
    fn batch_parsed(&mut self, ctx: &mut Context<Self>) {
        while let Some(oldest) = self.parsing.front_mut() {
            let result = match oldest.result.try_recv() {
                Ok(result) => result,
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => Err(IngestError::Unavailable),
            };
            let Some(t) = self.parsing.pop_front() else {
                return;
            };
            self.batch(t.reply, t.key, result, t.span, ctx);
        }
    }

    fn batch(
        &mut self,
        reply: Option<String>,
        key: Option<String>,
        result: Parsed,
        span: tracing::Span,
        ctx: &mut Context<Self>,
    ) {
        match result {
            Err(e) => self.reject(reply, e),
            Ok(points) => {
                let waiter = reply.map(|subject| Waiter::Reply {
                    subject,
                    points: points.len(),
                    span,
                });
                self.enqueue(points, waiter, key, ctx);
            }
        }
    }

    fn reject(&self, reply: Option<String>, e: IngestError) {
        REJECTED.inc();
        debug!(error = %e, "ingest message rejected");
        if let Some(reply) = reply {
            publish_detached(
                self.bus.clone(),
                reply,
                error_json(e.code(), e.to_string()).into(),
            );
        }
    }

    fn enqueue(
        &mut self,
        points: PointBatch,
        waiter: Option<Waiter>,
        key: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        if points.is_empty() {
            if let Some(w) = waiter {
                self.answer(w, Ok(0));
            }
            return;
        }
        if let Some(key) = key {
            self.pending_keys.push(KeyedSpan {
                key,
                start: self.pending.len(),
                len: points.len(),
            });
        }
        self.pending.append(points);
        self.waiters.extend(waiter);
        if self.pending.len() >= self.config.max_batch_points {
            self.flush(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(self.config.max_batch_delay, |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }

    /// Writes the pending batch, or arranges for it to be written when the
    /// write in flight returns.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if self.pending.is_empty() {
            return;
        }
        let Some(write) = &self.in_flight else {
            return self.start_write(ctx);
        };
        if self.pending.len() >= self.config.max_batch_points {
            // Full while the disk is busy: hold all input until the write returns.
            let id = write.id;
            ctx.wait(write.finished().into_actor(self).map(move |(), act, ctx| {
                act.write_returned(id);
                act.flush(ctx);
            }));
        } else {
            self.flush_when_done = true;
        }
    }

    fn start_write(&mut self, ctx: &mut Context<Self>) {
        let points = std::mem::take(&mut self.pending);
        let keys = std::mem::take(&mut self.pending_keys);
        let waiters = std::mem::take(&mut self.waiters);
        let (done_tx, done) = watch::channel(false);
        let writer = self.writer.clone();
        let bus = self.bus.clone();
        let slots = self.commit_slots.clone();
        // One write's batch is traced in its trace; a batch of several writes
        // follows from each of them.
        let span = match waiters.as_slice() {
            [one] => info_span!(parent: one.span(), "ingest_batch", points = points.len()),
            several => {
                let span = info_span!(
                    "ingest_batch",
                    points = points.len(),
                    writes = several.len()
                );
                for w in several {
                    span.follows_from(w.span());
                }
                span
            }
        };
        let batch_span = span.clone();
        // Detached from the actor's context so the write completes and its waiters
        // are answered even while the actor holds its input (`ctx.wait`) or restarts.
        actix::spawn(chronicle_actor_runtime::guard_future(
            ACTOR,
            tracing::Instrument::instrument(
                async move {
                    let started = Instant::now();
                    // Waits while too many batches are committing (backpressure).
                    let permit = slots.acquire_owned().await;
                    let submitted = writer
                        .send(WriteBatch(points, keys, batch_span))
                        .await
                        .unwrap_or(Err(IngestError::Unavailable));
                    // The next batch may go to the sink now, behind this one.
                    let _ = done_tx.send(true);
                    let result = match submitted {
                        Ok(commit) => commit.await,
                        Err(e) => Err(e),
                    };
                    drop(permit);
                    BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
                    match &result {
                        Ok(n) => POINTS_WRITTEN.inc_by(*n as u64),
                        Err(e) => warn!(error = %e, "batch write failed; not acknowledged"),
                    }
                    for w in waiters {
                        answer(&bus, w, result.clone());
                    }
                },
                span,
            ),
        ));
        let write = InFlight {
            id: self.next_write_id,
            done,
        };
        self.next_write_id += 1;
        let id = write.id;
        ctx.spawn(write.finished().into_actor(self).map(move |(), act, ctx| {
            act.write_returned(id);
            if std::mem::take(&mut act.flush_when_done) {
                act.flush(ctx);
            }
        }));
        self.in_flight = Some(write);
    }

    fn write_returned(&mut self, id: u64) {
        if self.in_flight.as_ref().is_some_and(|w| w.id == id) {
            self.in_flight = None;
        }
    }

    /// Writes everything pending and holds the actor until it is durable:
    /// submitted, then every commit in flight finished.
    fn flush_and_wait(&mut self, ctx: &mut Context<Self>) {
        self.flush(ctx);
        if let Some(write) = &self.in_flight {
            let id = write.id;
            ctx.wait(write.finished().into_actor(self).map(move |(), act, ctx| {
                act.write_returned(id);
                act.flush_and_wait(ctx);
            }));
        } else {
            let slots = self.commit_slots.clone();
            let all = self.config.commits_in_flight.max(1) as u32;
            ctx.wait(
                async move {
                    let _ = slots.acquire_many(all).await;
                }
                .into_actor(self),
            );
        }
    }

    fn answer(&self, waiter: Waiter, result: Result<usize, IngestError>) {
        answer(&self.bus, waiter, result);
    }
}

fn answer(bus: &Arc<dyn Bus>, waiter: Waiter, result: Result<usize, IngestError>) {
    match waiter {
        Waiter::Direct { tx, points, .. } => {
            let _ = tx.send(result.map(|_| points));
        }
        Waiter::Reply {
            subject, points, ..
        } => {
            let body = match result {
                Ok(_) => format!("{{\"written\":{points}}}").into_bytes(),
                Err(e) => error_json(e.code(), e.to_string()),
            };
            publish_detached(bus.clone(), subject, body.into());
        }
    }
}

/// One payload to parse, movable to another thread.
struct ParseJob {
    content_type: Option<String>,
    payload: Bytes,
    precision: Precision,
    limits: Limits,
}

impl ParseJob {
    fn run(&self) -> Result<PointBatch, IngestError> {
        parse_payload(
            &self.payload,
            self.content_type.as_deref(),
            self.precision,
            now_ns(),
            &self.limits,
        )
    }
}

fn publish_detached(bus: Arc<dyn Bus>, subject: String, payload: Bytes) {
    actix::spawn(async move {
        if let Err(e) = bus.publish(BusMessage::new(subject, payload)).await {
            debug!(error = %e, "reply not delivered");
        }
    });
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl Actor for IngestActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The actor's own thread parses small messages and batches.
        chronicle_actor_runtime::yield_to_cluster_work();
        // Bounded mailbox: HTTP writers wait when the actor is behind.
        ctx.set_mailbox_capacity(64);
        let bus = self.bus.clone();
        let subject = self.subject();
        let group = self.config.queue_group.clone();
        ctx.wait(
            async move { bus.subscribe(&subject, Some(&group)).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(subscription) => {
                        act.intake = Some(subscription.drain_handle());
                        ctx.add_stream(subscription);
                    }
                    Err(e) => {
                        warn!(error = %e, "ingest cannot subscribe; retrying in 1 s");
                        ctx.run_later(Duration::from_secs(1), |_, ctx| ctx.stop());
                    }
                }),
        );
    }
}

impl Supervised for IngestActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // A pause that grows with repeated restarts (messages wait meanwhile).
        self.restarts.pause(ctx);
        // Nothing pending was acknowledged; tell the waiters to retry.
        self.pending = PointBatch::new();
        self.pending_keys.clear();
        self.timer = None;
        // A write in flight finishes and answers its own waiters.
        self.in_flight = None;
        self.flush_when_done = false;
        // Messages still being parsed are given up on: their senders retry.
        for ticket in std::mem::take(&mut self.parsing) {
            if let Some(subject) = ticket.reply {
                self.answer(
                    Waiter::Reply {
                        subject,
                        points: 0,
                        span: ticket.span,
                    },
                    Err(IngestError::Restarted),
                );
            }
        }
        for w in std::mem::take(&mut self.waiters) {
            self.answer(w, Err(IngestError::Restarted));
        }
    }
}

impl StreamHandler<BusMessage> for IngestActor {
    fn handle(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| act.on_bus_message(msg, ctx));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The bus is draining: write what was received, keep serving direct writes.
        self.drained = true;
        self.flush(ctx);
    }
}

impl Handler<WritePoints> for IngestActor {
    type Result = ResponseFuture<Result<usize, IngestError>>;

    fn handle(&mut self, msg: WritePoints, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let points = msg.points.len();
        if let Some(key) = &msg.idempotency_key {
            if let Err(e) = check_idempotency_key(key) {
                return Box::pin(async move { Err(e) });
            }
        }
        guarded(ACTOR, self, ctx, |act, ctx| {
            act.enqueue(
                msg.points,
                Some(Waiter::Direct {
                    tx,
                    points,
                    span: msg.span,
                }),
                msg.idempotency_key,
                ctx,
            )
        });
        Box::pin(async move { rx.await.unwrap_or(Err(IngestError::Restarted)) })
    }
}

/// Writes whatever is pending now; answered once it is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for IngestActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        // Holds the actor until everything is durable, so a Ping sent after this
        // is answered only then.
        self.flush_and_wait(ctx);
    }
}

impl Handler<ParseDone> for IngestActor {
    type Result = ();

    fn handle(&mut self, _: ParseDone, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| act.batch_parsed(ctx));
    }
}

impl Handler<Ping> for IngestActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

impl Handler<InjectPanic> for IngestActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |_, _| panic!("injected panic"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::SyncArbiter;
    use chronicle_bus::LocalBus;
    use chronicle_storage::{Matcher, Shard, ShardConfig};

    use crate::writer::PointSink;

    #[actix::test]
    async fn offloaded_parses_are_batched_in_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            sync_writes: false,
            ..Default::default()
        };
        let shard = Arc::new(Shard::open(dir.path(), config).unwrap());
        // The writer's thread holds the shard only weakly, so the test closes
        // RocksDB itself (dropping the last reference) before the process
        // exits: a database still open on another thread at exit can crash it.
        let weak = Arc::downgrade(&shard);
        let writer = SyncArbiter::start(1, move || {
            StorageWriter::new(Arc::new(WeakSink(weak.clone())) as Arc<dyn PointSink>)
        });
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let ingest = IngestActor::new(
            bus.clone(),
            writer,
            IngestConfig {
                parse_offload_bytes: 0,
                parse_queue: 2,
                ..Default::default()
            },
        )
        .start();
        ingest.send(Ping).await.unwrap();

        // Every message rewrites the same point. Large and small messages
        // alternate, so a small one finishes parsing before the large one sent
        // just before it: only arrival-order batching leaves the last value.
        let mut acks = bus.subscribe("acks.>", None).await.unwrap();
        let messages = 40;
        for i in 0..messages {
            let mut body = String::new();
            if i % 2 == 0 {
                for j in 0..3000 {
                    body.push_str(&format!("pad,n={j} value=1 {j}\n"));
                }
            }
            body.push_str(&format!("same value={i} 1000\n"));
            let msg =
                BusMessage::new("chronicle.ingest.order", body).with_reply(format!("acks.{i}"));
            bus.publish(msg).await.unwrap();
        }
        for _ in 0..messages {
            let ack = tokio::time::timeout(Duration::from_secs(20), acks.next())
                .await
                .expect("every message is acknowledged")
                .unwrap();
            assert!(
                ack.payload.starts_with(b"{\"written\":"),
                "{:?}",
                ack.payload
            );
        }
        let series = shard
            .query(&[Matcher::equal("__name__", "same")], 0, i64::MAX)
            .unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].1.len(), 1);
        assert_eq!(series[0].1[0].value, f64::from(messages - 1));
        drop(series);
        drop(shard);
    }

    /// A sink that writes to a shard it does not keep open.
    struct WeakSink(std::sync::Weak<Shard>);

    impl PointSink for WeakSink {
        fn submit(
            &self,
            points: PointBatch,
            keys: Vec<KeyedSpan>,
        ) -> Result<crate::PendingWrite, IngestError> {
            match self.0.upgrade() {
                Some(shard) => shard.submit(points, keys),
                None => Err(IngestError::Unavailable),
            }
        }
    }
}

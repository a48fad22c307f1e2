use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use chronicle_actor_runtime::{error_json, guarded, InjectPanic};
use chronicle_bus::{Bus, Message as BusMessage};
use chronicle_storage::{Limits, Point};
use tokio::sync::oneshot;
use tracing::{debug, info_span, warn};

use crate::metrics::{BATCH_SECONDS, BYTES_RECEIVED, POINTS_WRITTEN, REJECTED};
use crate::parse::{parse_payload, Precision};
use crate::writer::{StorageWriter, WriteBatch};
use crate::IngestError;

const ACTOR: &str = "ingest";

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
    pub limits: Limits,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "chronicle".into(),
            queue_group: "chronicle-ingest".into(),
            max_batch_points: 20_000,
            max_batch_delay: Duration::from_millis(2),
            limits: Limits::default(),
        }
    }
}

/// Points from the HTTP front end (already parsed), acknowledged when durable.
#[derive(Message)]
#[rtype(result = "Result<usize, IngestError>")]
pub struct WritePoints(pub Vec<Point>);

/// Answers once the actor is subscribed and serving (a readiness probe).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Who is waiting for a batch to become durable.
enum Waiter {
    Reply {
        subject: String,
        points: usize,
    },
    Direct {
        tx: oneshot::Sender<Result<usize, IngestError>>,
        points: usize,
    },
}

/// The supervised ingest actor.
pub struct IngestActor {
    bus: Arc<dyn Bus>,
    writer: Addr<StorageWriter>,
    config: IngestConfig,
    pending: Vec<Point>,
    waiters: Vec<Waiter>,
    timer: Option<SpawnHandle>,
    /// The bus subscription ended (the bus is draining).
    drained: bool,
}

/// Whether the bus subscription has ended and nothing is pending (shutdown).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsDrained;

impl Handler<IsDrained> for IngestActor {
    type Result = bool;

    fn handle(&mut self, _: IsDrained, _: &mut Context<Self>) -> bool {
        self.drained && self.pending.is_empty()
    }
}

impl IngestActor {
    pub fn new(bus: Arc<dyn Bus>, writer: Addr<StorageWriter>, config: IngestConfig) -> Self {
        Self {
            bus,
            writer,
            config,
            pending: Vec::new(),
            waiters: Vec::new(),
            timer: None,
            drained: false,
        }
    }

    fn subject(&self) -> String {
        format!("{}.ingest.>", self.config.subject_prefix)
    }

    fn on_bus_message(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        let _span = info_span!("ingest_message", subject = %msg.subject, bytes = msg.payload.len())
            .entered();
        BYTES_RECEIVED.inc_by(msg.payload.len() as u64);
        let precision = match msg.headers.get("Precision").map(str::parse).transpose() {
            Ok(p) => p.unwrap_or(Precision::Nanoseconds),
            Err(e) => return self.reject(&msg, e),
        };
        let parsed = parse_payload(
            &msg.payload,
            msg.headers.get("Content-Type"),
            precision,
            now_ns(),
            &self.config.limits,
        );
        match parsed {
            Err(e) => self.reject(&msg, e),
            Ok(points) => {
                let waiter = msg.reply.map(|subject| Waiter::Reply {
                    subject,
                    points: points.len(),
                });
                self.enqueue(points, waiter, ctx);
            }
        }
    }

    fn reject(&self, msg: &BusMessage, e: IngestError) {
        REJECTED.inc();
        debug!(error = %e, "ingest message rejected");
        if let Some(reply) = &msg.reply {
            publish_detached(
                self.bus.clone(),
                reply.clone(),
                error_json(e.code(), e.to_string()).into(),
            );
        }
    }

    fn enqueue(&mut self, points: Vec<Point>, waiter: Option<Waiter>, ctx: &mut Context<Self>) {
        if points.is_empty() {
            if let Some(w) = waiter {
                self.answer(w, Ok(0));
            }
            return;
        }
        self.pending.extend(points);
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

    /// Writes the pending batch; the actor handles nothing else until the write
    /// returns, so a slow disk slows intake (the bus buffers, then pushes back).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if self.pending.is_empty() {
            return;
        }
        let points = std::mem::take(&mut self.pending);
        let waiters = std::mem::take(&mut self.waiters);
        let started = Instant::now();
        let write = self.writer.send(WriteBatch(points));
        ctx.wait(write.into_actor(self).map(move |result, act, _| {
            BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
            let result = result.unwrap_or(Err(IngestError::Unavailable));
            match &result {
                Ok(n) => POINTS_WRITTEN.inc_by(*n as u64),
                Err(e) => warn!(error = %e, "batch write failed; not acknowledged"),
            }
            for w in waiters {
                act.answer(w, result.clone());
            }
        }));
    }

    fn answer(&self, waiter: Waiter, result: Result<usize, IngestError>) {
        match waiter {
            Waiter::Direct { tx, points } => {
                let _ = tx.send(result.map(|_| points));
            }
            Waiter::Reply { subject, points } => {
                let body = match result {
                    Ok(_) => format!("{{\"written\":{points}}}").into_bytes(),
                    Err(e) => error_json(e.code(), e.to_string()),
                };
                publish_detached(self.bus.clone(), subject, body.into());
            }
        }
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
        // Bounded mailbox: HTTP writers wait when the actor is behind.
        ctx.set_mailbox_capacity(64);
        let bus = self.bus.clone();
        let subject = self.subject();
        let group = self.config.queue_group.clone();
        ctx.wait(
            async move { bus.subscribe(&subject, Some(&group)).await }
                .into_actor(self)
                .map(|result, _, ctx| match result {
                    Ok(subscription) => {
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
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Nothing pending was acknowledged; tell the waiters to retry.
        self.pending.clear();
        self.timer = None;
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
        let points = msg.0.len();
        guarded(ACTOR, self, ctx, |act, ctx| {
            act.enqueue(msg.0, Some(Waiter::Direct { tx, points }), ctx)
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
        // `flush` holds the actor until the write returns, so a Ping sent after
        // this is answered only once the batch is durable.
        self.flush(ctx);
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

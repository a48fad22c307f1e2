use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chronicle_actor_runtime::{error_json, guarded, InjectPanic};
use chronicle_bus::{Bus, Message as BusMessage};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use crate::metrics::{self, ResultSize};
use crate::promql::{run_meta, run_promql, MetaAnswer, MetaQuery, PromqlLimits, PromqlQuery};
use crate::request::{now_ns, QueryRequest, QueryResult};
use crate::source::DataSource;
use crate::{execute, QueryError};
use chronicle_engine::Answer;

/// The name in logs and in `chronicle_actor_restarts_total{actor}`.
pub const ACTOR: &str = "query";

/// Bus header: how long the requester waits for the answer (`5s`, `250ms`);
/// the query stops when that passes.
pub const TIMEOUT_HEADER: &str = "Chronicle-Timeout";

/// Settings of the query actor.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// The subject is `<prefix>.query`.
    pub subject_prefix: String,
    pub queue_group: String,
    /// No answer holds more points than this.
    pub max_points: usize,
    /// Queries running at once; more wait for a slot.
    pub concurrency: usize,
    /// Queries waiting for a slot; one more is refused at once as busy
    /// instead of queuing without end.
    pub max_queued: usize,
    pub promql: PromqlLimits,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "chronicle".into(),
            queue_group: "chronicle-query".into(),
            max_points: 5_000_000,
            concurrency: 4,
            max_queued: 64,
            promql: PromqlLimits::default(),
        }
    }
}

/// A query from the HTTP front end.
#[derive(Message)]
#[rtype(result = "Result<QueryResult, QueryError>")]
pub struct RunQuery {
    pub request: QueryRequest,
    /// Set by the caller when its client goes away: the query stops.
    pub cancelled: Option<Arc<AtomicBool>>,
    /// The caller's span: the query is traced as its child.
    pub span: tracing::Span,
}

impl RunQuery {
    /// A query traced under the current span.
    pub fn new(request: QueryRequest) -> Self {
        Self {
            request,
            cancelled: None,
            span: tracing::Span::current(),
        }
    }
}

/// When a query must stop, and the flag that stops it.
#[derive(Debug, Clone)]
pub struct Budget {
    pub deadline: std::time::Instant,
    pub cancelled: Arc<AtomicBool>,
}

impl Budget {
    /// The node's default timeout, or the request's when shorter (zero: the default).
    pub fn new(requested: Duration, default: Duration, cancelled: Option<Arc<AtomicBool>>) -> Self {
        let timeout = if requested.is_zero() {
            default
        } else {
            requested.min(default)
        };
        Self {
            deadline: std::time::Instant::now() + timeout,
            cancelled: cancelled.unwrap_or_default(),
        }
    }

    /// No deadline worth the name and never cancelled (tools and tests).
    pub fn unbounded() -> Self {
        Self {
            deadline: std::time::Instant::now() + Duration::from_secs(365 * 86_400),
            cancelled: Arc::default(),
        }
    }

    /// Timed out or cancelled: the work should stop.
    pub fn check(&self) -> Result<(), QueryError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(QueryError::Cancelled);
        }
        if std::time::Instant::now() > self.deadline {
            return Err(QueryError::Timeout);
        }
        Ok(())
    }
}

/// Sets the flag when dropped before [`Self::done`]: whoever waited for the
/// query went away (an HTTP handler dropped by actix, a future dropped).
pub struct CancelOnDrop(Arc<AtomicBool>, bool);

impl CancelOnDrop {
    pub fn new(flag: Arc<AtomicBool>) -> Self {
        Self(flag, false)
    }

    /// The wait ended normally: nothing to cancel.
    pub fn done(mut self) {
        self.1 = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// The supervised query actor. Queries run on the blocking pool so a long scan
/// never stalls the actor; its [`QueryGate`] bounds how many run at once.
pub struct QueryActor {
    /// Pauses restarts and reports too many (readiness).
    restarts: chronicle_actor_runtime::Restarts,
    bus: Arc<dyn Bus>,
    gate: QueryGate,
    /// Drains the bus subscription (shutdown stops intake with it).
    intake: Option<chronicle_bus::DrainHandle>,
}

/// What running a query takes: the data, the limits, and admission (slots
/// for running queries, a bounded queue for waiting ones). The actor runs
/// bus requests and `RunQuery` messages through it; the node's HTTP routes
/// (JSON, PromQL, metadata) hold a clone and run a query from the HTTP worker. Through the actor, a query's
/// answer crossed two more threads (HTTP worker → actor → blocking thread →
/// actor → HTTP worker), each a wake-up of 10–40 µs on a small VM: a
/// fifth of a small query's time. Admission is the same either way: one set
/// of semaphores.
#[derive(Clone)]
pub struct QueryGate {
    source: Arc<dyn DataSource>,
    config: QueryConfig,
    /// Queries running.
    slots: Arc<Semaphore>,
    /// Queries running or waiting for a slot.
    admitted: Arc<Semaphore>,
}

/// Counts itself in a gauge while it lives (a query waiting or running;
/// dropping the query's future ends it too).
struct Gauged(&'static prometheus::IntGauge);

impl Gauged {
    fn new(gauge: &'static prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Stops taking queries from the bus: those already delivered are answered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIntake;

impl Handler<StopIntake> for QueryActor {
    type Result = ();

    fn handle(&mut self, _: StopIntake, _: &mut Context<Self>) {
        if let Some(intake) = &self.intake {
            intake.drain();
        }
    }
}

impl QueryGate {
    pub fn new(source: Arc<dyn DataSource>, config: QueryConfig) -> Self {
        let running = config.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(running));
        let admitted = Arc::new(Semaphore::new(running.saturating_add(config.max_queued)));
        Self {
            source,
            config,
            slots,
            admitted,
        }
    }

    /// Evaluates a PromQL query once admitted (see [`Self::on_source`]).
    pub fn promql(&self, q: PromqlQuery) -> impl Future<Output = Result<Answer, QueryError>> {
        let limits = self.config.promql.clone();
        let budget = Budget::new(q.timeout, limits.default_timeout, q.cancelled.clone());
        self.on_source("promql", budget, move |source, budget| {
            run_promql(source, &q, &limits, budget)
        })
    }

    /// Runs a JSON query request (`requested_timeout` is the transport's,
    /// when the request names none; zero: the default).
    pub fn run(
        &self,
        request: QueryRequest,
        requested_timeout: Duration,
        cancelled: Option<Arc<AtomicBool>>,
    ) -> Pin<Box<dyn Future<Output = Result<QueryResult, QueryError>>>> {
        let max_points = self.config.max_points;
        let limits = self.config.promql.clone();
        // The request's own timeout wins over the transport's (a bus header).
        let requested = match request.timeout() {
            Ok(t) if !t.is_zero() => t,
            Ok(_) => requested_timeout,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let budget = Budget::new(requested, limits.default_timeout, cancelled);
        let language = if request.promql.is_some() {
            "promql"
        } else if request.sql.is_some() {
            "sql"
        } else if request.cql.is_some() {
            "cql"
        } else {
            "select"
        };
        Box::pin(self.on_source(language, budget, move |source, budget| {
            execute(source, &request, now_ns(), max_points, &limits, budget)
        }))
    }

    /// Answers a series-metadata question once admitted.
    pub fn meta(&self, q: MetaQuery) -> impl Future<Output = Result<MetaAnswer, QueryError>> {
        let limits = self.config.promql.clone();
        let budget = Budget::new(Duration::ZERO, limits.default_timeout, None);
        self.on_source("metadata", budget, move |source, _| {
            run_meta(source, &q, &limits)
        })
    }

    /// Runs `work` on the blocking pool once a slot is free. Refused at once
    /// (busy) when the wait queue is full; a timeout once `budget`'s deadline
    /// passes, waiting or running (the work is told to stop, and holds its
    /// slot until it has). Dropping the future cancels the work.
    fn on_source<T: ResultSize + Send + 'static>(
        &self,
        language: &'static str,
        budget: Budget,
        work: impl FnOnce(&dyn DataSource, &Budget) -> Result<T, QueryError> + Send + 'static,
    ) -> impl Future<Output = Result<T, QueryError>> {
        let source = self.source.clone();
        let slots = self.slots.clone();
        let admitted = self.admitted.clone().try_acquire_owned();
        let started = std::time::Instant::now();
        let run = async move {
            let Ok(admitted) = admitted else {
                metrics::rejected("busy");
                return Err(QueryError::Busy);
            };
            let guard = CancelOnDrop::new(budget.cancelled.clone());
            let deadline = Instant::from_std(budget.deadline);
            let waiting = Gauged::new(&metrics::WAITING);
            let slot = match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
                Err(_) => {
                    metrics::rejected("timeout");
                    guard.done();
                    return Err(QueryError::Timeout);
                }
                Ok(slot) => slot.map_err(|_| QueryError::Unavailable)?,
            };
            drop(waiting);
            metrics::waited(started.elapsed().as_secs_f64());
            let _running = Gauged::new(&metrics::RUNNING);
            let cancelled = budget.cancelled.clone();
            // The shard reads run in the query's span (their bus requests
            // carry its trace).
            let span = tracing::Span::current();
            let task = tokio::task::spawn_blocking(move || {
                let _traced = span.enter();
                chronicle_actor_runtime::yield_to_cluster_work();
                let _held = (slot, admitted);
                budget.check()?;
                work(source.as_ref(), &budget)
            });
            let outcome = match tokio::time::timeout_at(deadline, task).await {
                Ok(joined) => {
                    joined.map_err(|_| QueryError::Storage("query task panicked".into()))?
                }
                Err(_) => {
                    cancelled.store(true, Ordering::Relaxed);
                    Err(QueryError::Timeout)
                }
            };
            guard.done();
            outcome
        };
        async move {
            let outcome = run.await;
            metrics::finished(language, &outcome, started.elapsed().as_secs_f64());
            outcome
        }
        .instrument(info_span!("query", language))
    }
}

impl QueryActor {
    pub fn new(bus: Arc<dyn Bus>, source: Arc<dyn DataSource>, config: QueryConfig) -> Self {
        Self::with_gate(bus, QueryGate::new(source, config))
    }

    /// An actor admitting its queries through `gate`, which others (the
    /// node's HTTP routes) may share.
    pub fn with_gate(bus: Arc<dyn Bus>, gate: QueryGate) -> Self {
        Self {
            restarts: chronicle_actor_runtime::Restarts::new(
                ACTOR,
                chronicle_actor_runtime::RestartPolicy::default(),
            ),
            bus,
            gate,
            intake: None,
        }
    }

    /// Restarts recorded in `restarts` (the node's policy) instead of the
    /// default one.
    pub fn with_restarts(mut self, restarts: chronicle_actor_runtime::Restarts) -> Self {
        self.restarts = restarts;
        self
    }

    fn on_bus_message(&mut self, msg: BusMessage) {
        let Some(reply) = msg.reply.clone() else {
            debug!(subject = %msg.subject, "query without reply subject ignored");
            return;
        };
        let bus = self.bus.clone();
        let answer = match serde_json::from_slice::<QueryRequest>(&msg.payload) {
            Err(e) => {
                let body = error_json("bad_request", format!("invalid query request: {e}"));
                actix::spawn(async move {
                    let _ = bus.publish(BusMessage::new(reply, body)).await;
                });
                return;
            }
            Ok(request) => {
                // A requester on the bus cannot say it stopped waiting: it says
                // how long it waits, and the query stops then.
                let waits = match msg.headers.get(TIMEOUT_HEADER).map(str::trim) {
                    None => Duration::ZERO,
                    Some(text) => match humantime::parse_duration(text) {
                        Ok(d) => d,
                        Err(e) => {
                            let body = error_json(
                                "bad_request",
                                format!("header {TIMEOUT_HEADER} {text:?}: {e}"),
                            );
                            actix::spawn(async move {
                                let _ = bus.publish(BusMessage::new(reply, body)).await;
                            });
                            return;
                        }
                    },
                };
                // The query's span is a child of the requester's trace.
                let span = info_span!("query_message", subject = %msg.subject);
                chronicle_bus::trace::adopt(&msg.headers, &span);
                let _entered = span.enter();
                self.gate.run(request, waits, None)
            }
        };
        actix::spawn(chronicle_actor_runtime::guard_future(ACTOR, async move {
            let body = match answer.await {
                Ok(result) => serde_json::to_vec(&result).unwrap_or_else(|e| {
                    error_json("internal", format!("result does not serialize: {e}"))
                }),
                Err(e) => error_json(e.code(), e.to_string()),
            };
            if let Err(e) = bus.publish(BusMessage::new(reply, body)).await {
                debug!(error = %e, "query reply not delivered");
            }
        }));
    }
}

impl Actor for QueryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let bus = self.bus.clone();
        let subject = format!("{}.query", self.gate.config.subject_prefix);
        let group = self.gate.config.queue_group.clone();
        ctx.wait(
            async move { bus.subscribe(&subject, Some(&group)).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(subscription) => {
                        act.intake = Some(subscription.drain_handle());
                        ctx.add_stream(subscription);
                    }
                    Err(e) => {
                        warn!(error = %e, "query cannot subscribe; retrying in 1 s");
                        ctx.run_later(Duration::from_secs(1), |_, ctx| ctx.stop());
                    }
                }),
        );
    }
}

impl Supervised for QueryActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // A pause that grows with repeated restarts (queries wait meanwhile).
        self.restarts.pause(ctx);
    }
}

impl StreamHandler<BusMessage> for QueryActor {
    fn handle(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, _| act.on_bus_message(msg));
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The bus is draining; direct queries from HTTP are still served.
    }
}

impl Handler<RunQuery> for QueryActor {
    type Result = ResponseFuture<Result<QueryResult, QueryError>>;

    fn handle(&mut self, msg: RunQuery, ctx: &mut Context<Self>) -> Self::Result {
        let _traced = msg.span.enter();
        match guarded(ACTOR, self, ctx, |act, _| {
            act.gate.run(msg.request, Duration::ZERO, msg.cancelled)
        }) {
            Some(fut) => fut,
            None => Box::pin(async { Err(QueryError::Restarted) }),
        }
    }
}

impl Handler<Ping> for QueryActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

/// Answers once the actor is subscribed (a readiness probe).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<InjectPanic> for QueryActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |_, _| panic!("injected panic"));
    }
}

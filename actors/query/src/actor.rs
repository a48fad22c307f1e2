use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chronicle_actor_runtime::{error_json, guarded, InjectPanic};
use chronicle_bus::{Bus, Message as BusMessage};
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

use crate::promql::{run_meta, run_promql, MetaAnswer, MetaQuery, PromqlLimits, PromqlQuery};
use crate::request::{now_ns, QueryRequest, QueryResult};
use crate::source::DataSource;
use crate::{execute, QueryError};
use chronicle_engine::Answer;

/// The name in logs and in `chronicle_actor_restarts_total{actor}`.
pub const ACTOR: &str = "query";

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
    pub promql: PromqlLimits,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            subject_prefix: "chronicle".into(),
            queue_group: "chronicle-query".into(),
            max_points: 5_000_000,
            concurrency: 4,
            promql: PromqlLimits::default(),
        }
    }
}

/// A query from the HTTP front end.
#[derive(Message)]
#[rtype(result = "Result<QueryResult, QueryError>")]
pub struct RunQuery(pub QueryRequest);

/// A PromQL evaluation (the Prometheus API).
#[derive(Message)]
#[rtype(result = "Result<Answer, QueryError>")]
pub struct RunPromql(pub PromqlQuery);

/// A series-metadata question (the Prometheus API).
#[derive(Message)]
#[rtype(result = "Result<MetaAnswer, QueryError>")]
pub struct RunMeta(pub MetaQuery);

/// The supervised query actor. Queries run on the blocking pool so a long scan
/// never stalls the actor; the semaphore bounds how many run at once.
pub struct QueryActor {
    bus: Arc<dyn Bus>,
    source: Arc<dyn DataSource>,
    config: QueryConfig,
    slots: Arc<Semaphore>,
}

impl QueryActor {
    pub fn new(bus: Arc<dyn Bus>, source: Arc<dyn DataSource>, config: QueryConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Self {
            bus,
            source,
            config,
            slots,
        }
    }

    fn run(&self, request: QueryRequest) -> impl Future<Output = Result<QueryResult, QueryError>> {
        let max_points = self.config.max_points;
        let limits = self.config.promql.clone();
        self.on_source("query", move |source| {
            execute(source, &request, now_ns(), max_points, &limits)
        })
    }

    /// Runs `work` on the blocking pool once a slot is free.
    fn on_source<T: Send + 'static>(
        &self,
        span: &'static str,
        work: impl FnOnce(&dyn DataSource) -> Result<T, QueryError> + Send + 'static,
    ) -> impl Future<Output = Result<T, QueryError>> {
        let source = self.source.clone();
        let slots = self.slots.clone();
        async move {
            let _slot = slots.acquire().await.map_err(|_| QueryError::Unavailable)?;
            tokio::task::spawn_blocking(move || work(source.as_ref()))
                .await
                .map_err(|_| QueryError::Storage("query task panicked".into()))?
        }
        .instrument(info_span!("query", kind = span))
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
            Ok(request) => self.run(request),
        };
        actix::spawn(async move {
            let body = match answer.await {
                Ok(result) => serde_json::to_vec(&result).unwrap_or_else(|e| {
                    error_json("internal", format!("result does not serialize: {e}"))
                }),
                Err(e) => error_json(e.code(), e.to_string()),
            };
            if let Err(e) = bus.publish(BusMessage::new(reply, body)).await {
                debug!(error = %e, "query reply not delivered");
            }
        });
    }
}

impl Actor for QueryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let bus = self.bus.clone();
        let subject = format!("{}.query", self.config.subject_prefix);
        let group = self.config.queue_group.clone();
        ctx.wait(
            async move { bus.subscribe(&subject, Some(&group)).await }
                .into_actor(self)
                .map(|result, _, ctx| match result {
                    Ok(subscription) => {
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

impl Supervised for QueryActor {}

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
        match guarded(ACTOR, self, ctx, |act, _| act.run(msg.0)) {
            Some(fut) => Box::pin(fut),
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

impl Handler<RunPromql> for QueryActor {
    type Result = ResponseFuture<Result<Answer, QueryError>>;

    fn handle(&mut self, msg: RunPromql, _: &mut Context<Self>) -> Self::Result {
        let limits = self.config.promql.clone();
        Box::pin(self.on_source("promql", move |source| run_promql(source, &msg.0, &limits)))
    }
}

impl Handler<RunMeta> for QueryActor {
    type Result = ResponseFuture<Result<MetaAnswer, QueryError>>;

    fn handle(&mut self, msg: RunMeta, _: &mut Context<Self>) -> Self::Result {
        let limits = self.config.promql.clone();
        Box::pin(self.on_source("metadata", move |source| run_meta(source, &msg.0, &limits)))
    }
}

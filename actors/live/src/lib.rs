//! Live queries: `GET /api/v1/live?query=...` upgrades to a WebSocket, sends
//! the query's result, then a new result each time the change feed reports
//! a write to a metric the query reads (debounced). The first user of the
//! platform's WebSocket support; a feature like any other
//! (docs/live.md).
//!
//! Bounds: a node holds at most `max_sessions` sessions (more get 503); a
//! client sends at most 64 KiB per message (it has nothing to say but
//! pings and close); one result message is at most `max_result_bytes`
//! (larger: an error message, then close); a client that does not take a
//! message within `send_timeout` is dropped (the node never queues more
//! than one result per session beyond the socket's own buffer: results
//! that come due meanwhile are coalesced); a client silent for three ping
//! intervals (no pong to the pings sent every `ping_interval_ms`, 15 s) is
//! dropped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use async_trait::async_trait;
use chronicle_platform::ws as socket;

use chronicle_platform::{Feature, FeatureContext, FeatureError, Planned, Running};
use chronicle_query::request::TimeSpec;
pub use chronicle_query::watched_metrics;
use chronicle_query::{QueryActor, QueryRequest, RunQuery};
use prometheus::{IntCounterVec, IntGauge, Opts};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{debug, info_span, Instrument};

/// Longest message a client may send, bytes.
const MAX_CLIENT_MESSAGE: usize = 64 << 10;
/// Longest query text, bytes.
const MAX_QUERY_BYTES: usize = 64 << 10;
const MIN_DEBOUNCE: Duration = Duration::from_millis(50);
const MAX_DEBOUNCE: Duration = Duration::from_secs(60);

/// `[features.live]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// Live sessions this node serves at once; more are refused with 503.
    pub max_sessions: usize,
    /// Largest result message, bytes.
    pub max_result_bytes: usize,
    /// How long a client may take to accept a message before it is dropped,
    /// milliseconds.
    pub send_timeout_ms: u64,
    /// Default wait after a write before the query runs again (coalescing
    /// the writes that follow), milliseconds; a session may ask for another
    /// between 50 ms and 60 s with `debounce`.
    pub debounce_ms: u64,
    /// Browser origins allowed to open sessions (`https://grafana.example`);
    /// a request with any other `Origin` header is refused (403), so a page
    /// elsewhere cannot ride on a browser's stored credentials. Clients that
    /// send no `Origin` (the CLI, services) are not affected.
    pub allowed_origins: Vec<String>,
    /// How often the node pings each client, milliseconds (at least 10); a
    /// client that sends nothing, not even a pong, for three intervals is
    /// dropped as silent.
    pub ping_interval_ms: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            max_result_bytes: 4 << 20,
            send_timeout_ms: 10_000,
            debounce_ms: 250,
            allowed_origins: Vec::new(),
            ping_interval_ms: 15_000,
        }
    }
}

static SESSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new("chronicle_live_sessions", "Live query sessions open")
        .expect("static metric definition");
    chronicle_actor_runtime::register(Box::new(g.clone()));
    g
});

static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_live_messages_total",
            "Live query messages sent, by kind (result, update, error)",
        ),
        &["kind"],
    )
    .expect("static metric definition");
    chronicle_actor_runtime::register(Box::new(c.clone()));
    c
});

static DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_live_sessions_dropped_total",
            "Live sessions the node closed, by reason (slow, silent, too_large, revoked, busy)",
        ),
        &["reason"],
    )
    .expect("static metric definition");
    chronicle_actor_runtime::register(Box::new(c.clone()));
    c
});

/// The feature.
#[derive(Default)]
pub struct LiveFeature;

impl Feature for LiveFeature {
    fn name(&self) -> &'static str {
        "live"
    }

    fn describe(&self) -> &'static str {
        "live queries over WebSocket: a result, then updates as writes arrive"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![chronicle_platform::RouteAccess::exact(
            "/api/v1/live",
            chronicle_platform::Access::Read,
        )]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: LiveConfig = chronicle_platform::parse_section("live", section)?;
        if config.max_sessions == 0 || config.max_result_bytes < 1024 {
            return Err(FeatureError::Config {
                feature: "live",
                message: "max_sessions must be at least 1 and max_result_bytes at least 1024"
                    .into(),
            });
        }
        Ok(Box::new(LivePlan { config }))
    }
}

struct LivePlan {
    config: LiveConfig,
}

#[async_trait(?Send)]
impl Planned for LivePlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let query = cx
            .services
            .get::<Addr<QueryActor>>()
            .ok_or_else(|| FeatureError::Start {
                feature: "live",
                message: "needs the query feature (it is disabled)".into(),
            })?;
        LazyLock::force(&SESSIONS);
        // One feed subscription per node while sessions are open, fanned
        // out to them: the names of metrics written ("*" when the feed lost
        // track). On the client bus and the feature's thread, never the
        // cluster's: with no session, the node reads no events at all.
        let (writes, _) = broadcast::channel::<Arc<str>>(1024);
        let (open, open_rx) = tokio::sync::watch::channel(0usize);
        let feed = actix::spawn(chronicle_platform::follow_written_metrics(
            cx.bus.clone(),
            cx.prefix.clone(),
            writes.clone(),
            open_rx,
        ));
        let state = web::Data::new(LiveState {
            query: (*query).clone(),
            writes,
            stopping: tokio::sync::watch::channel(false).0,
            sessions: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(open),
            auth: cx.auth.clone(),
            config: self.config,
        });
        Ok(Arc::new(RunningLive {
            state,
            feed: parking_lot::Mutex::new(Some(feed)),
        }))
    }
}

struct LiveState {
    query: Addr<QueryActor>,
    writes: broadcast::Sender<Arc<str>>,
    /// Set when the node stops: every session closes (HTTP's graceful stop
    /// would otherwise wait for them).
    stopping: tokio::sync::watch::Sender<bool>,
    sessions: Arc<AtomicUsize>,
    /// Checks that a session's token still counts.
    auth: Arc<chronicle_auth::Authenticator>,
    /// Sessions open: the feed is read only while there are some.
    open: Arc<tokio::sync::watch::Sender<usize>>,
    config: LiveConfig,
}

struct RunningLive {
    state: web::Data<LiveState>,
    feed: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait(?Send)]
impl Running for RunningLive {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        let state = self.state.clone();
        cfg.service(
            web::resource("/api/v1/live")
                .app_data(state)
                .route(web::get().to(live)),
        );
    }

    async fn stop_intake(&self) {
        self.state.stopping.send_replace(true);
        let feed = self.feed.lock().take();
        if let Some(feed) = feed {
            feed.abort();
        }
    }
}

/// The route's parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveParams {
    /// The query text.
    pub query: String,
    /// `promql` (default), `sql` or `cql`.
    #[serde(default)]
    pub lang: Option<String>,
    /// PromQL: a range query from `start` to `end` by `step`; without
    /// `step`, an instant query at `end` (default `now`). Times are
    /// re-read at each run, so `now-1h` slides.
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
    /// Wait after a write before running again (`250ms`, `2s`).
    #[serde(default)]
    pub debounce: Option<String>,
}

/// What a session runs, checked before the upgrade.
#[derive(Debug, Clone)]
pub struct LiveQuery {
    pub request: QueryRequest,
    /// Metric names the query text mentions; `None`: any write counts (a
    /// `__name__` matcher selects metrics by pattern).
    pub watched: Option<BTreeSet<String>>,
    pub debounce: Duration,
}

fn time(text: &str) -> TimeSpec {
    text.parse::<i64>()
        .map(TimeSpec::Nanos)
        .unwrap_or_else(|_| TimeSpec::Text(text.to_string()))
}

/// Checks the parameters; the error is the client's (400).
pub fn plan(params: &LiveParams, default_debounce: Duration) -> Result<LiveQuery, String> {
    let text = params.query.trim();
    if text.is_empty() {
        return Err("query is empty".into());
    }
    if text.len() > MAX_QUERY_BYTES {
        return Err(format!("query is over {MAX_QUERY_BYTES} bytes"));
    }
    let mut request = QueryRequest::default();
    match params.lang.as_deref().unwrap_or("promql") {
        "promql" => {
            request.promql = Some(text.to_string());
            request.step = params.step.clone();
            if params.step.is_some() {
                request.start = Some(time(params.start.as_deref().unwrap_or("now-1h")));
            } else if params.start.is_some() {
                return Err("start needs step (a range query)".into());
            }
            request.end = params.end.as_deref().map(time);
        }
        lang @ ("sql" | "cql") => {
            if params.start.is_some() || params.end.is_some() || params.step.is_some() {
                return Err(format!(
                    "{lang} carries its own time range: no start, end or step"
                ));
            }
            if lang == "sql" {
                request.sql = Some(text.to_string());
            } else {
                request.cql = Some(text.to_string());
            }
        }
        other => return Err(format!("lang {other:?}: promql, sql or cql")),
    }
    let debounce = match params.debounce.as_deref() {
        None => default_debounce,
        Some(d) => {
            humantime::parse_duration(d.trim()).map_err(|e| format!("debounce {d:?}: {e}"))?
        }
    };
    if !(MIN_DEBOUNCE..=MAX_DEBOUNCE).contains(&debounce) {
        return Err(format!(
            "debounce must be between {MIN_DEBOUNCE:?} and {MAX_DEBOUNCE:?}"
        ));
    }
    Ok(LiveQuery {
        watched: watched_metrics(text),
        request,
        debounce,
    })
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("application/json")
        .body(chronicle_actor_runtime::error_json("bad_request", message))
}

/// `GET /api/v1/live`: checks the request, then upgrades.
async fn live(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<LiveState>,
    params: Result<web::Query<LiveParams>, actix_web::Error>,
) -> HttpResponse {
    let params = match params {
        Ok(p) => p.into_inner(),
        Err(e) => return bad_request(format!("live query parameters: {e}")),
    };
    if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.config.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return HttpResponse::Forbidden()
                .content_type("application/json")
                .body(chronicle_actor_runtime::error_json(
                    "forbidden",
                    "this Origin may not open live queries ([features.live] allowed_origins)",
                ));
        }
    }
    let planned = match plan(&params, Duration::from_millis(state.config.debounce_ms)) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    // A slot, or 503 before the upgrade.
    let taken = state.sessions.fetch_add(1, Ordering::AcqRel);
    if taken >= state.config.max_sessions {
        state.sessions.fetch_sub(1, Ordering::AcqRel);
        DROPPED.with_label_values(&["busy"]).inc();
        return HttpResponse::ServiceUnavailable()
            .content_type("application/json")
            .body(chronicle_actor_runtime::error_json(
                "busy",
                format!(
                    "{} live sessions open on this node; retry later or on another node",
                    state.config.max_sessions
                ),
            ));
    }
    // Listening before the feed may start for it: nothing it sends is missed.
    let writes = state.writes.subscribe();
    state.open.send_modify(|n| *n += 1);
    let slot = SessionSlot(state.sessions.clone(), state.open.clone());
    let (response, session, stream) = match socket::upgrade(&req, body, MAX_CLIENT_MESSAGE) {
        Ok(upgraded) => upgraded,
        Err(e) => return bad_request(format!("not a WebSocket upgrade: {e}")),
    };
    let span =
        info_span!("live_session", query = %params.query.chars().take(200).collect::<String>());
    let stopping = state.stopping.subscribe();
    let owner = Owner {
        auth: state.auth.clone(),
        principal: actix_web::HttpMessage::extensions(&req)
            .get::<chronicle_auth::Principal>()
            .cloned(),
    };
    let (query, config) = (state.query.clone(), state.config.clone());
    // A panic in one session is logged and counted, not lost.
    actix_web::rt::spawn(chronicle_actor_runtime::guard_future(
        "live",
        async move {
            let _slot = slot;
            SESSIONS.inc();
            let reason = run_session(
                session,
                stream,
                Session {
                    writes,
                    stopping,
                    owner,
                    query,
                    planned,
                    config,
                },
            )
            .await;
            SESSIONS.dec();
            debug!(?reason, "live session ended");
        }
        .instrument(span),
    ));
    response
}

/// Frees a session slot when the session ends, however it ends.
struct SessionSlot(Arc<AtomicUsize>, Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    ClientClosed,
    Slow,
    Silent,
    TooLarge,
    NodeStopping,
    /// The token the session was opened with was revoked or expired.
    Revoked,
}

/// Who opened a session, checked again every second: a revoked token's
/// sessions end too.
struct Owner {
    auth: Arc<chronicle_auth::Authenticator>,
    principal: Option<chronicle_auth::Principal>,
}

/// What a session listens to and runs with.
struct Session {
    writes: broadcast::Receiver<Arc<str>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    owner: Owner,
    query: Addr<QueryActor>,
    planned: LiveQuery,
    config: LiveConfig,
}

async fn run_session(
    mut session: socket::Sender,
    mut stream: socket::Receiver,
    parts: Session,
) -> Ended {
    let Session {
        mut writes,
        mut stopping,
        owner,
        query,
        planned,
        config,
    } = parts;
    let send_timeout = Duration::from_millis(config.send_timeout_ms.max(1));
    let ping_every = Duration::from_millis(config.ping_interval_ms.max(10));
    let client_timeout = ping_every * 3;
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut recheck = tokio::time::interval(Duration::from_secs(1));
    recheck.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    // The next run: now (the first result), then after writes.
    let mut due = Some(tokio::time::Instant::now());
    let mut kind = "result";
    let ended = loop {
        if *stopping.borrow() {
            break Ended::NodeStopping;
        }
        let run_at =
            due.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            () = tokio::time::sleep_until(run_at), if due.is_some() => {
                due = None;
                let message = run_once(&query, &planned.request, kind).await;
                if message.len() > config.max_result_bytes {
                    let error = json!({
                        "type": "error",
                        "error": format!(
                            "the result is {} bytes, over this node's live limit of {}; narrow the query",
                            message.len(), config.max_result_bytes
                        ),
                    });
                    let _ = tokio::time::timeout(send_timeout, session.text(error.to_string())).await;
                    MESSAGES.with_label_values(&["error"]).inc();
                    break Ended::TooLarge;
                }
                match tokio::time::timeout(send_timeout, session.text(message)).await {
                    Ok(Ok(())) => MESSAGES.with_label_values(&[kind]).inc(),
                    Ok(Err(_)) => break Ended::ClientClosed,
                    Err(_) => break Ended::Slow,
                }
                kind = "update";
            }
            written = writes.recv() => {
                let relevant = match &written {
                    Ok(metric) => match &planned.watched {
                        None => true,
                        Some(names) => &**metric == "*" || names.contains(&**metric),
                    },
                    // Missed some: run again to be safe.
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => break Ended::NodeStopping,
                };
                if relevant && due.is_none() {
                    due = Some(tokio::time::Instant::now() + planned.debounce);
                }
            }
            message = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match message {
                    Ok(socket::Incoming::Ping(bytes)) => {
                        match tokio::time::timeout(send_timeout, session.pong(bytes)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break Ended::ClientClosed,
                            Err(_) => break Ended::Slow,
                        }
                    }
                    Ok(socket::Incoming::Pong | socket::Incoming::Text(_) | socket::Incoming::Binary(_)) => {}
                    Ok(socket::Incoming::Close) => break Ended::ClientClosed,
                    // Oversized or malformed frames: the protocol error closes.
                    Err(e) => {
                        debug!(error = %e, "live client sent a bad frame");
                        break Ended::ClientClosed;
                    }
                }
            }
            changed = stopping.changed() => {
                if changed.is_err() {
                    break Ended::NodeStopping;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > client_timeout {
                    break Ended::Silent;
                }
                match tokio::time::timeout(send_timeout, session.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ended::ClientClosed,
                    // A full send buffer: the client reads nothing.
                    Err(_) => break Ended::Slow,
                }
            }
            _ = recheck.tick() => {
                if let Some(who) = &owner.principal {
                    if !owner.auth.still_valid(who) {
                        break Ended::Revoked;
                    }
                }
            }
        }
    };
    match ended {
        Ended::Slow => DROPPED.with_label_values(&["slow"]).inc(),
        Ended::Silent => DROPPED.with_label_values(&["silent"]).inc(),
        Ended::TooLarge => DROPPED.with_label_values(&["too_large"]).inc(),
        Ended::Revoked => DROPPED.with_label_values(&["revoked"]).inc(),
        Ended::ClientClosed | Ended::NodeStopping => {}
    }
    if ended != Ended::ClientClosed {
        let reason = match ended {
            Ended::Slow => "the client did not keep up",
            Ended::Silent => "no pong from the client",
            Ended::TooLarge => "result too large",
            Ended::Revoked => "the token was revoked or expired",
            _ => "the node is stopping",
        };
        let _ = tokio::time::timeout(send_timeout, session.close(reason)).await;
    }
    ended
}

/// Runs the query once; the message to send (`{"type", "result"}` or
/// `{"type": "error", "error"}`).
async fn run_once(query: &Addr<QueryActor>, request: &QueryRequest, kind: &str) -> String {
    let answer = query.send(RunQuery::new(request.clone())).await;
    let value = match answer {
        Ok(Ok(result)) => json!({ "type": kind, "result": result }),
        Ok(Err(e)) => json!({ "type": "error", "error": e.to_string(), "code": e.code() }),
        Err(_) => {
            json!({ "type": "error", "error": "the query actor is restarting; the next write retries" })
        }
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> LiveParams {
        LiveParams {
            query: query.into(),
            lang: None,
            start: None,
            end: None,
            step: None,
            debounce: None,
        }
    }

    #[test]
    fn the_metrics_a_query_names_are_watched() {
        let w = watched_metrics(r#"sum by (host) (rate(http_requests_total{job="api", path=~"/x"}[5m])) / on() node:cpu:ratio"#).unwrap();
        assert!(w.contains("http_requests_total"));
        assert!(w.contains("node:cpu:ratio"));
        assert!(!w.contains("api"), "label values are not metrics: {w:?}");
        assert!(!w.contains("5m"));
        let w =
            watched_metrics("SELECT mean(value) FROM room_temp WHERE time > now() - 1h").unwrap();
        assert!(w.contains("room_temp"));
        assert!(watched_metrics(r#"{__name__=~"cpu_.*"}"#).is_none());
    }

    proptest::proptest! {
        /// Query text and parameters from any client: checked or refused,
        /// never a panic.
        #[test]
        fn any_parameters_are_planned_or_refused(
            query in ".{0,300}",
            lang in proptest::option::of("[a-z]{0,8}"),
            step in proptest::option::of(".{0,12}"),
            debounce in proptest::option::of(".{0,12}"),
        ) {
            let p = LiveParams { query: query.clone(), lang, start: None, end: None, step, debounce };
            let _ = plan(&p, Duration::from_millis(250));
            let _ = watched_metrics(&query);
        }
    }

    #[test]
    fn parameters_are_checked_before_the_upgrade() {
        let d = Duration::from_millis(250);
        assert!(plan(&params("up"), d).is_ok());
        assert!(plan(&params("  "), d).is_err());
        assert!(plan(&params(&"x".repeat(MAX_QUERY_BYTES + 1)), d).is_err());
        let mut p = params("up");
        p.lang = Some("graphql".into());
        assert!(plan(&p, d).is_err());
        let mut p = params("SELECT * FROM x");
        p.lang = Some("sql".into());
        p.step = Some("1m".into());
        assert!(plan(&p, d).is_err());
        let mut p = params("up");
        p.start = Some("now-1h".into());
        assert!(plan(&p, d).unwrap_err().contains("step"));
        for bad in ["1ms", "2h", "soon"] {
            let mut p = params("up");
            p.debounce = Some(bad.into());
            assert!(plan(&p, d).is_err(), "{bad}");
        }
        let mut p = params("rate(x[1m])");
        p.step = Some("15s".into());
        let q = plan(&p, d).unwrap();
        assert_eq!(q.request.step.as_deref(), Some("15s"));
        assert!(q.request.start.is_some());
    }
}

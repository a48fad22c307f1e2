//! The HTTP API: POST /write, POST /query, GET /health, GET /metrics.
//! Errors are JSON `{"error": {"code", "message"}}` with a fitting status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::dev::{Decompress, Server};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chronicle_actor_runtime::error_json;
use chronicle_auth::{Access, Authenticator, Principal};
use chronicle_ingest::{parse_payload, IngestActor, IngestError, Precision, WritePoints};
use chronicle_platform::{AccessTable, RouteAccess};
use chronicle_query::{CancelOnDrop, QueryError, QueryGate, QueryRequest};
use chronicle_storage::Limits;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::instrument;

use crate::metrics;

#[derive(Clone)]
pub struct AppState {
    /// `None` when the feature is disabled (its routes are not served then).
    pub ingest: Option<Addr<IngestActor>>,
    /// The query feature's admission, shared with its actor: a query runs
    /// from the HTTP worker without a round trip through the actor's thread.
    pub query: Option<QueryGate>,
    pub bus_kind: &'static str,
    pub max_body_bytes: usize,
    /// What one point and one write request may hold.
    pub limits: Limits,
    /// How OTLP resources become labels.
    pub otlp: chronicle_ingest::otlp::OtlpOptions,
    /// Bounds the /write requests in progress (body read, parsed, waiting for
    /// the durable write): a burst of large writes waits for a slot before its
    /// body is read, instead of filling memory.
    pub write_slots: Arc<Semaphore>,
    pub cluster: Arc<chronicle_cluster::ClusterNode>,
    /// Cluster futures run on the cluster's runtime.
    pub cluster_runtime: tokio::runtime::Handle,
    /// Set when the node runs with fault injection.
    pub faults: Option<Arc<chronicle_bus::FaultController>>,
    /// The node's connections, named (readiness asks whether they are up).
    pub buses: Vec<(&'static str, Arc<dyn chronicle_bus::Bus>)>,
    /// Set when shutdown begins: readiness turns false before intake stops.
    pub shutting_down: Arc<AtomicBool>,
    /// Serve the admin API (delete_series).
    pub admin_api: bool,
    /// Checks every request's credentials (lets everyone in when off).
    pub auth: Arc<Authenticator>,
    /// The started features: their routes, their readiness.
    pub features: chronicle_platform::Features,
    /// Who may call which route ([`access_table`]).
    pub access: Arc<AccessTable>,
    /// Test-only known-bad variant: acknowledge writes before they commit.
    pub ack_before_commit: bool,
}

/// 403 when the node serves admin APIs to nobody: neither `--auth` (then
/// the middleware let only admins through) nor `--enable-admin-api`.
pub(crate) fn admin_refused(state: &AppState) -> Option<HttpResponse> {
    (!state.admin_api && !state.auth.is_enabled()).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin APIs disabled; start with --auth (admin tokens) or --enable-admin-api",
        )
    })
}

/// The answer when a disabled feature's handle is asked for.
pub(crate) fn feature_disabled(name: &str) -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("the {name} feature is disabled on this node"),
    )
}

/// The node's own routes' rules (health, metrics, cluster, tokens, debug);
/// every feature states its own ([`chronicle_platform::Feature::access`]).
fn core_access() -> Vec<(RouteAccess, &'static str)> {
    use chronicle_platform::Methods;
    vec![
        (RouteAccess::exact("/health", Access::Public), "health"),
        (RouteAccess::exact("/health/live", Access::Public), "health"),
        (
            RouteAccess::exact("/health/ready", Access::Public),
            "health",
        ),
        (RouteAccess::exact("/metrics", Access::Read), "metrics"),
        // The change feed's resumable read: what was written, as a reader.
        (
            RouteAccess::exact("/api/v1/events/batches", Access::Read),
            "feed",
        ),
        (
            RouteAccess::exact("/api/v1/cluster/status", Access::Read).methods(Methods::Get),
            "cluster",
        ),
        (
            RouteAccess::prefix("/api/v1/cluster/", Access::Admin),
            "cluster",
        ),
        (RouteAccess::prefix("/api/v1/auth/", Access::Admin), "auth"),
        (RouteAccess::prefix("/debug/", Access::Admin), "debug"),
    ]
}

/// The subjects the node serves itself, under `prefix` (docs/subjects.md,
/// "Between nodes" and the change feed).
pub fn core_subjects(prefix: &str) -> Vec<(String, &'static str)> {
    ["raft.>", "cluster.>", "node.*", "inbox.>", "events.>"]
        .iter()
        .map(|s| (format!("{prefix}.{s}"), "node"))
        .collect()
}

/// Every subject of the node and its registered features, checked for
/// overlap (a message must have one meaning).
pub fn subject_table(
    features: &[Box<dyn chronicle_platform::Feature>],
    prefix: &str,
) -> Result<Vec<(String, &'static str)>, chronicle_platform::FeatureError> {
    let mut all = core_subjects(prefix);
    for f in features {
        all.extend(f.subjects(prefix).into_iter().map(|s| (s, f.name())));
    }
    chronicle_platform::check_subjects(&all)?;
    Ok(all)
}

/// The node's access table: its own rules and every registered feature's,
/// enabled or not (a disabled feature's paths keep their access and answer
/// 404). Two rules for one path are a configuration error.
pub fn access_table(
    features: &[Box<dyn chronicle_platform::Feature>],
) -> Result<AccessTable, chronicle_platform::FeatureError> {
    AccessTable::new(
        core_access().into_iter().chain(
            features
                .iter()
                .flat_map(|f| f.access().into_iter().map(move |r| (r, f.name()))),
        ),
    )
}

/// The request's credential: its `Authorization` header, or for a
/// WebSocket upgrade without one, an `access_token` query parameter
/// (RFC 6750's name): browsers cannot set headers on a WebSocket, and
/// y-websocket passes its `params` in the query string.
fn credential(req: &actix_web::dev::ServiceRequest) -> Option<Vec<u8>> {
    if let Some(v) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        return Some(v.as_bytes().to_vec());
    }
    let upgrade = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, token)| format!("Bearer {token}").into_bytes())
}

/// Authenticates and authorizes every request before its handler runs; the
/// principal goes into the request's extensions for handlers that narrow
/// further (metric-scoped writes).
async fn authorize(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    // Classified by the decoded path: the router matches `%61uth` as
    // `auth`, so the raw path would let a reader reach admin routes.
    let path = percent_encoding::percent_decode_str(req.path()).decode_utf8_lossy();
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Ok(req
            .into_response(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the node's state is missing",
            ))
            .map_into_right_body());
    };
    let (access, feature) = state.access.of(req.method(), &path);
    let checked = match access {
        Access::Public => Ok(Principal::anonymous()),
        _ => state
            .auth
            .authenticate(credential(&req).as_deref())
            .and_then(|who| who.authorize(access, feature).map(|()| who)),
    };
    match checked {
        Ok(who) => {
            actix_web::HttpMessage::extensions_mut(&req).insert(who);
            next.call(req).await.map(|r| r.map_into_left_body())
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            if matches!(e.status(), 401 | 403) {
                metrics::AUTH_REFUSED
                    .with_label_values(&[status.as_str()])
                    .inc();
            }
            let mut response = error(status, e.code(), e.to_string());
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    actix_web::http::header::WWW_AUTHENTICATE,
                    actix_web::http::header::HeaderValue::from_static(
                        "Bearer realm=\"chronicle\", Basic realm=\"chronicle\"",
                    ),
                );
            }
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// Binds and returns the server (not yet running) and the bound address;
/// HTTPS when `tls` is given.
pub fn serve(
    state: AppState,
    addr: SocketAddr,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<(Server, SocketAddr)> {
    let features = state.features.clone();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            // A malformed query string is a JSON 400 like every other refusal.
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                let why = e.to_string();
                actix_web::error::InternalError::from_response(
                    e,
                    error(StatusCode::BAD_REQUEST, "bad_request", why),
                )
                .into()
            }))
            .wrap(actix_web::middleware::from_fn(authorize))
            .route("/health", web::get().to(ready))
            .route("/health/ready", web::get().to(ready))
            .route("/health/live", web::get().to(live))
            .route("/api/v1/cluster/status", web::get().to(cluster_status))
            .route("/api/v1/events/batches", web::get().to(event_batches))
            .route("/api/v1/cluster/add-node", web::post().to(cluster_add_node))
            .route(
                "/api/v1/cluster/remove-node",
                web::post().to(cluster_remove_node),
            )
            .route(
                "/api/v1/cluster/transfer-leader",
                web::post().to(cluster_transfer_leader),
            )
            .route("/debug/faults/partition", web::post().to(fault_partition))
            .route("/debug/faults/rule", web::post().to(fault_rule))
            .route("/debug/faults/disk", web::post().to(fault_disk))
            .route("/debug/faults/clock", web::post().to(fault_clock))
            .route("/debug/faults/heal", web::post().to(fault_heal))
            .route("/metrics", web::get().to(metrics_text))
            .configure(crate::tokens::configure)
            .configure(|cfg| features.routes(cfg))
    })
    .workers(2)
    .disable_signals();
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(addr, config)?,
        None => server.bind(addr)?,
    };
    let bound = server.addrs().first().copied().unwrap_or(addr);
    Ok((server.run(), bound))
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(error_json(code, message))
}

/// Reads the body, decompressing gzip (Content-Encoding), with the limit applied
/// after decompression so a small bomb cannot expand without bound.
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, HttpResponse> {
    let mut stream = Decompress::from_headers(payload.into_inner(), req.headers());
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over this node's limit of {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `/write` and `/api/v2/write` parameters. InfluxDB's `db`, `org` and
/// `bucket` are accepted so its clients work unchanged; Chronicle has one
/// database, so they select nothing (docs/http-api.md).
#[derive(Deserialize)]
pub(crate) struct WriteParams {
    precision: Option<String>,
    #[allow(dead_code)]
    db: Option<String>,
    #[allow(dead_code)]
    org: Option<String>,
    #[allow(dead_code)]
    bucket: Option<String>,
}

fn ingest_status(e: &IngestError) -> StatusCode {
    if let IngestError::TooLarge(_) = e {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if e.is_client_error() {
        StatusCode::BAD_REQUEST
    } else if matches!(e, IngestError::Storage(_)) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// POST /write: line protocol (or JSON points with a JSON content type); 204 when
/// every point is durable, with `X-Chronicle-Points-Written`.
pub(crate) async fn write(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<WriteParams>,
    payload: web::Payload,
) -> HttpResponse {
    // The span joins the client's trace (W3C traceparent) before it starts.
    let span = tracing::info_span!("http_write");
    crate::traces::adopt_http(req.headers(), &span);
    tracing::Instrument::instrument(write_traced(state, req, params, payload), span).await
}

async fn write_traced(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<WriteParams>,
    payload: web::Payload,
) -> HttpResponse {
    // The semaphore is never closed, so acquiring cannot fail.
    let _slot = state.write_slots.acquire().await.ok();
    let body = match read_body(&req, payload, state.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let precision = match params.precision.as_deref().map(str::parse::<Precision>) {
        None => Precision::Nanoseconds,
        Some(Ok(p)) => p,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    };
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Parsing is CPU work: off the async worker.
    let limits = state.limits;
    let parsed = web::block(move || {
        parse_payload(
            &body,
            content_type.as_deref(),
            precision,
            chronicle_query::request::now_ns(),
            &limits,
        )
    })
    .await;
    write_points(&state, &req, parsed).await
}

/// Hands parsed points to the ingest actor; 204 once they are durable. A
/// parse error is the client's; a parser that did not return is ours.
async fn write_points(
    state: &AppState,
    req: &HttpRequest,
    parsed: Result<
        Result<chronicle_storage::PointBatch, IngestError>,
        actix_web::error::BlockingError,
    >,
) -> HttpResponse {
    let points = match parsed {
        Ok(Ok(points)) => points,
        Ok(Err(e)) => return error(ingest_status(&e), e.code(), e.to_string()),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the parser failed",
            )
        }
    };
    // A token limited to metric prefixes writes all of a request or none.
    if let Some(who) = actix_web::HttpMessage::extensions(req)
        .get::<Principal>()
        .filter(|who| !who.scopes.metric_prefixes.is_empty())
    {
        if let Some((_, metric, _)) = points
            .series_iter()
            .find(|(_, metric, _)| !who.may_write_metric(metric))
        {
            metrics::AUTH_REFUSED.with_label_values(&["403"]).inc();
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {} may write metrics starting with {:?}, not {:?}; nothing was written",
                    who.id, who.scopes.metric_prefixes, metric
                ),
            );
        }
    }
    // A retry with the same key within the window is acknowledged without
    // being applied again (docs/http-api.md, Idempotent writes).
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().map_err(|_| ()).and_then(|k| {
            chronicle_ingest::check_idempotency_key(k)
                .map(|()| k.to_string())
                .map_err(|_| ())
        }) {
            Ok(k) => Some(k),
            Err(()) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_idempotency_key",
                    format!(
                        "Idempotency-Key must be 1 to {} visible ASCII characters",
                        chronicle_ingest::MAX_IDEMPOTENCY_KEY
                    ),
                )
            }
        },
    };
    let write = WritePoints {
        span: tracing::Span::current(),
        points,
        idempotency_key,
    };
    let Some(ingest) = &state.ingest else {
        return feature_disabled("ingest");
    };
    if state.ack_before_commit {
        // The known-bad variant: the write goes on without anyone waiting.
        let ingest = ingest.clone();
        actix_web::rt::spawn(async move {
            let _ = ingest.send(write).await;
        });
        return HttpResponse::NoContent().finish();
    }
    match ingest.send(write).await {
        Ok(Ok(n)) => HttpResponse::NoContent()
            .insert_header(("X-Chronicle-Points-Written", n.to_string()))
            .finish(),
        Ok(Err(e)) => error(ingest_status(&e), e.code(), e.to_string()),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the ingest actor is restarting; retry",
        ),
    }
}

/// POST /v1/metrics: OTLP metrics (protobuf or JSON, gzip allowed); 200 with an
/// empty `ExportMetricsServiceResponse` once every point is durable.
#[instrument(name = "http_otlp", skip_all)]
pub(crate) async fn otlp_metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let _slot = state.write_slots.acquire().await.ok();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    let encoding = match chronicle_ingest::OtlpEncoding::from_content_type(content_type) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.code(), e.to_string()),
    };
    let body = match read_body(&req, payload, state.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let limits = state.limits;
    let options = state.otlp.clone();
    let parsed = web::block(move || {
        chronicle_ingest::parse_otlp_metrics(
            &body,
            encoding,
            chronicle_query::request::now_ns(),
            &limits,
            &options,
        )
    })
    .await;
    let written = write_points(&state, &req, parsed).await;
    if written.status() != StatusCode::NO_CONTENT {
        return written;
    }
    match encoding {
        chronicle_ingest::OtlpEncoding::Json => HttpResponse::Ok()
            .content_type("application/json")
            .body("{}"),
        // An empty message encodes as zero bytes.
        chronicle_ingest::OtlpEncoding::Protobuf => HttpResponse::Ok()
            .content_type("application/x-protobuf")
            .finish(),
    }
}

/// POST /api/v1/write: Prometheus remote write 1.0 (snappy + protobuf); 204 when
/// every sample is durable. Bad data is a 400 (Prometheus does not retry it);
/// a node that cannot write answers 5xx (Prometheus retries).
#[instrument(name = "http_remote_write", skip_all)]
pub(crate) async fn remote_write(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let _slot = state.write_slots.acquire().await.ok();
    if req
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| !e.eq_ignore_ascii_case("snappy"))
    {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "remote write bodies are snappy-compressed protobuf (Content-Encoding: snappy)",
        );
    }
    let mut body = Vec::new();
    let mut stream = payload.into_inner();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "reading the body failed",
            );
        };
        if body.len() + chunk.len() > state.max_body_bytes {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is over this node's limit of {} bytes",
                    state.max_body_bytes
                ),
            );
        }
        body.extend_from_slice(&chunk);
    }
    let max = state.max_body_bytes;
    let limits = state.limits;
    let parsed =
        web::block(move || chronicle_ingest::parse_remote_write(&body, max, &limits)).await;
    write_points(&state, &req, parsed).await
}

/// POST /query: a JSON query request; the JSON result.
pub(crate) async fn query(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    // The span joins the client's trace (W3C traceparent) before it starts.
    let span = tracing::info_span!("http_query");
    crate::traces::adopt_http(req.headers(), &span);
    tracing::Instrument::instrument(query_traced(state, req, payload), span).await
}

async fn query_traced(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let body = match read_body(&req, payload, 1 << 20).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request: QueryRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid query request: {e}"),
            )
        }
    };
    run_query(&state, request).await
}

/// Runs a query as a task of its own on this worker's thread and waits for
/// it: if actix drops the waiting handler (the node shutting down), the query
/// still ends at its next check, frees its slot and is counted.
pub(crate) async fn detached<T: 'static>(
    query: impl std::future::Future<Output = Result<T, QueryError>> + 'static,
) -> Result<T, QueryError> {
    actix::spawn(query)
        .await
        .unwrap_or_else(|_| Err(QueryError::Storage("the query task failed".into())))
}

/// Runs a query through the query feature's gate; it is cancelled if actix
/// drops this handler's future (not when the client merely goes away: see
/// docs/http-api.md, Cancellation).
async fn run_query(state: &AppState, request: QueryRequest) -> HttpResponse {
    let cancelled = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop::new(cancelled.clone());
    let Some(query) = &state.query else {
        return feature_disabled("query");
    };
    let answer = detached(query.run(request, std::time::Duration::ZERO, Some(cancelled))).await;
    guard.done();
    match answer {
        Ok(result) => HttpResponse::Ok().json(result),
        Err(e) => {
            let status = match &e {
                QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
                QueryError::TooLarge(_) | QueryError::Execution(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                QueryError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
                QueryError::Cancelled => StatusCode::BAD_REQUEST,
                QueryError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
                QueryError::Unavailable | QueryError::Restarted | QueryError::Busy => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            error(status, e.code(), e.to_string())
        }
    }
}

/// The body of the CQL routes: `{"query": "SELECT ..."}` (the Go original's shape).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CqlBody {
    query: String,
}

async fn cql_body(req: &HttpRequest, payload: web::Payload) -> Result<String, HttpResponse> {
    let body = read_body(req, payload, 1 << 20).await?;
    serde_json::from_slice::<CqlBody>(&body)
        .map(|b| b.query)
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"query\": \"SELECT ...\"}}: {e}"),
            )
        })
}

/// POST /api/v1/cql: runs a CQL query; the answer has `columns` and `rows`.
#[tracing::instrument(name = "http_cql", skip_all)]
pub(crate) async fn cql_query(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    run_cql(&state, &req, payload, false).await
}

/// A CQL body run as a `{"cql"}` query, or explained.
async fn run_cql(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    explain: bool,
) -> HttpResponse {
    match cql_body(req, payload).await {
        Ok(text) => {
            let request = QueryRequest {
                cql: Some(text),
                explain,
                ..Default::default()
            };
            run_query(state, request).await
        }
        Err(resp) => resp,
    }
}

/// POST /api/v1/cql/validate: `{"valid": true}`, or `{"valid": false, "error":
/// {"message", "line", "column"}}` (line and column when the parser knows them).
pub(crate) async fn cql_validate(req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let text = match cql_body(&req, payload).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    match chronicle_engine::cql::parse(&text) {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({"valid": true})),
        Err(chronicle_engine::EngineError::Syntax {
            line,
            column,
            message,
        }) => HttpResponse::Ok().json(serde_json::json!({
            "valid": false,
            "error": {"message": message, "line": line, "column": column},
        })),
        Err(e) => HttpResponse::Ok().json(serde_json::json!({
            "valid": false,
            "error": {"message": e.to_string()},
        })),
    }
}

/// POST /api/v1/cql/explain: `{"explain": "<one step per line>"}`.
#[tracing::instrument(name = "http_cql_explain", skip_all)]
pub(crate) async fn cql_explain(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    run_cql(&state, &req, payload, true).await
}

/// GET /health/live: the process answers HTTP (a liveness probe: restart the
/// node only when this fails).
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "live",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// What keeps this node from serving, empty when it can: shutting down, the
/// bus not connected, a replica it should hold not open, or a shard it holds
/// a replica of without a known leader (writes and linearizable reads there
/// would wait).
fn not_ready(state: &AppState) -> Vec<String> {
    let mut problems = Vec::new();
    if state.shutting_down.load(Ordering::Relaxed) {
        problems.push("shutting down".to_string());
    }
    for (name, bus) in &state.buses {
        if !bus.is_connected() {
            problems.push(format!("{name} ({}): not connected", state.bus_kind));
        }
    }
    if !state.auth.is_loaded() {
        problems.push("auth: the token registry has not loaded yet".to_string());
    }
    problems.extend(state.features.not_ready());
    problems.extend(state.cluster.group_problems());
    let me = state.cluster.node_id();
    let (_, shards) = state.cluster.status();
    for shard in shards.iter().filter(|s| s.replicas.contains(&me)) {
        if state.cluster.local_shard(shard.id).is_none() {
            problems.push(format!(
                "shard {}: this node's replica is not open",
                shard.id
            ));
        } else if shard.leader.is_none() {
            problems.push(format!("shard {}: no known leader", shard.id));
        }
    }
    problems
}

/// GET /health/ready (and /health): 200 when the node can serve reads and
/// writes, else 503 with what is not ready (a readiness probe: send traffic
/// only while this answers 200).
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let problems = not_ready(&state);
    let body = serde_json::json!({
        "status": if problems.is_empty() { "ready" } else { "not ready" },
        "not_ready": problems,
        "bus": state.bus_kind,
        "node_id": state.cluster.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if problems.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// GET /api/v1/cluster/status: see [`crate::cluster_cli::status_json`].
#[instrument(name = "http_cluster_status", skip_all)]
async fn cluster_status(state: web::Data<AppState>) -> HttpResponse {
    let cluster = state.cluster.clone();
    match state
        .cluster_runtime
        .spawn(async move { cluster.cluster_status().await })
        .await
    {
        Ok(status) => HttpResponse::Ok().json(crate::cluster_cli::status_json(&status)),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("status task failed: {e}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchParams {
    shard: u32,
    after: u64,
}

/// GET /api/v1/events/batches?shard=S&after=I: the change feed's resumable
/// read for services outside the node (docs/feed.md): the write events of
/// `shard`'s batches committed after log index `after`, with their points,
/// as the feed's subjects would have carried them; one page of about 512
/// KiB of points, `next` to read on from, `compacted` when the log no
/// longer holds what followed `after`.
#[instrument(skip_all, fields(shard = params.shard, after = params.after))]
async fn event_batches(
    state: web::Data<AppState>,
    params: web::Query<BatchParams>,
) -> HttpResponse {
    let BatchParams { shard, after } = params.into_inner();
    let cluster = state.cluster.clone();
    let page = match state
        .cluster_runtime
        .spawn(async move { cluster.committed_batches(shard, after).await })
        .await
    {
        Ok(Ok(page)) => page,
        Ok(Err(chronicle_cluster::ClusterError::Storage(
            chronicle_storage::StorageError::InvalidRequest(why),
        ))) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
        Ok(Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("read task failed: {e}"),
            )
        }
    };
    // Encoding runs off the async worker: a page holds up to ~512 KiB of points.
    let encoded = web::block(move || {
        let mut events = Vec::new();
        for batch in &page.batches {
            for (_, json) in chronicle_cluster::feed::encode_events(batch, true) {
                events.push(serde_json::from_slice::<serde_json::Value>(&json)?);
            }
        }
        serde_json::to_vec(&serde_json::json!({
            "events": events,
            "next": page.next,
            "compacted": page.compacted,
        }))
    })
    .await;
    match encoded {
        Ok(Ok(body)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the page could not be encoded",
        ),
    }
}

#[derive(Deserialize)]
struct NodeParams {
    id: u64,
}

#[derive(Deserialize)]
struct TransferParams {
    shard: u32,
    to: u64,
}

pub(crate) fn cluster_error(e: chronicle_cluster::ClusterError) -> HttpResponse {
    use chronicle_cluster::ClusterError as E;
    let (status, code) = match &e {
        E::Config(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "cluster_error"),
    };
    error(status, code, e.to_string())
}

fn moves_json(moves: &[(u32, u64, u64)]) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "moves": moves
            .iter()
            .map(|(shard, from, to)| serde_json::json!({"shard": shard, "from": from, "to": to}))
            .collect::<Vec<_>>(),
    }))
}

/// Runs a rebalancing operation on the cluster's runtime; the moves made.
async fn moves<F, Fut>(state: &AppState, operation: F) -> HttpResponse
where
    F: FnOnce(Arc<chronicle_cluster::ClusterNode>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<(u32, u64, u64)>, chronicle_cluster::ClusterError>>
        + Send
        + 'static,
{
    match state
        .cluster_runtime
        .spawn(operation(state.cluster.clone()))
        .await
    {
        Ok(Ok(moves)) => moves_json(&moves),
        Ok(Err(e)) => cluster_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// POST /api/v1/cluster/add-node?id=N: moves replicas onto node N (running
/// with `--join`) until the cluster is balanced; the moves made.
#[instrument(name = "http_cluster_add_node", skip_all)]
async fn cluster_add_node(
    state: web::Data<AppState>,
    params: web::Query<NodeParams>,
) -> HttpResponse {
    let id = params.id;
    moves(
        &state,
        move |cluster| async move { cluster.add_node(id).await },
    )
    .await
}

/// POST /api/v1/cluster/remove-node?id=N: moves every replica off node N.
#[instrument(name = "http_cluster_remove_node", skip_all)]
async fn cluster_remove_node(
    state: web::Data<AppState>,
    params: web::Query<NodeParams>,
) -> HttpResponse {
    let id = params.id;
    moves(&state, move |cluster| async move {
        cluster.remove_node(id).await
    })
    .await
}

/// POST /api/v1/cluster/transfer-leader?shard=S&to=N: 204 once N leads S.
#[instrument(name = "http_cluster_transfer_leader", skip_all)]
async fn cluster_transfer_leader(
    state: web::Data<AppState>,
    params: web::Query<TransferParams>,
) -> HttpResponse {
    let (cluster, shard, to) = (state.cluster.clone(), params.shard, params.to);
    match state
        .cluster_runtime
        .spawn(async move { cluster.transfer_leader(shard, to).await })
        .await
    {
        Ok(Ok(())) => HttpResponse::NoContent().finish(),
        Ok(Err(e)) => cluster_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

#[derive(Deserialize)]
struct PartitionParams {
    /// Comma-separated node ids this node stops hearing (and being heard by).
    from: String,
}

/// POST /debug/faults/partition?from=1,2: this node drops bus messages from
/// those nodes (each side is told, so the cut goes both ways). 404 unless the
/// node runs with `--allow-fault-injection`.
#[instrument(name = "http_fault_partition", skip_all)]
async fn fault_partition(
    state: web::Data<AppState>,
    params: web::Query<PartitionParams>,
) -> HttpResponse {
    let Some(faults) = &state.faults else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "fault injection is off (start with --allow-fault-injection)",
        );
    };
    let mut others = Vec::new();
    for id in params.from.split(',').filter(|s| !s.trim().is_empty()) {
        match id.trim().parse::<u64>() {
            Ok(id) => others.push(crate::node::fault_name(id)),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("from: {id:?} is not a node id"),
                )
            }
        }
    }
    let me = crate::node::fault_name(state.cluster.node_id());
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    faults.partition(&[me.as_str()], &others);
    tracing::warn!(node = %me, ?others, "partitioned by request");
    HttpResponse::NoContent().finish()
}

/// POST /debug/faults/heal: removes every partition, message rule and disk
/// fault, and puts the clock back.
#[instrument(name = "http_fault_heal", skip_all)]
async fn fault_heal(state: web::Data<AppState>) -> HttpResponse {
    match &state.faults {
        Some(faults) => {
            faults.clear();
            for point in DISK_FAULT_POINTS {
                fail::remove(point);
            }
            chronicle_cluster::clock::set_offset_ns(0);
            tracing::warn!("faults healed by request");
            HttpResponse::NoContent().finish()
        }
        None => fault_injection_off(),
    }
}

fn fault_injection_off() -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "fault injection is off (start with --allow-fault-injection)",
    )
}

#[derive(Deserialize)]
struct RuleParams {
    /// Subject pattern (NATS wildcards) of the messages this node sends.
    subject: String,
    /// Lose each with this probability.
    drop: Option<f64>,
    /// Deliver each this late.
    delay_ms: Option<u64>,
    /// Deliver each twice.
    #[serde(default)]
    duplicate: bool,
}

/// POST /debug/faults/rule?subject=chronicle.raft.>&drop=0.3 (or
/// `delay_ms=200`, or `duplicate=true`): messages this node sends on
/// matching subjects are lost, late or doubled (one way: only this node's
/// sends). Healed by /debug/faults/heal.
#[instrument(name = "http_fault_rule", skip_all)]
async fn fault_rule(state: web::Data<AppState>, params: web::Query<RuleParams>) -> HttpResponse {
    let Some(faults) = &state.faults else {
        return fault_injection_off();
    };
    let fault = match (params.drop, params.delay_ms, params.duplicate) {
        (Some(probability), None, false) => chronicle_bus::Fault::Drop { probability },
        (None, Some(ms), false) if ms <= 60_000 => {
            chronicle_bus::Fault::Delay(std::time::Duration::from_millis(ms))
        }
        (None, None, true) => chronicle_bus::Fault::Duplicate,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of drop (0..=1), delay_ms (at most 60000) or duplicate=true",
            )
        }
    };
    match faults.add_rule(&params.subject, fault.clone()) {
        Ok(_) => {
            tracing::warn!(subject = %params.subject, ?fault, "message fault added by request");
            HttpResponse::NoContent().finish()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    }
}

/// The disk failpoints a chaos run may set.
const DISK_FAULT_POINTS: [&str; 3] = [
    chronicle_storage::faults::WRITE,
    chronicle_storage::faults::READ,
    chronicle_cluster::RAFT_LOG_WRITE,
];

#[derive(Deserialize)]
struct DiskParams {
    /// `storage::write`, `storage::read` or `raft::log::write`.
    point: String,
    /// `enospc`, `eio`, `fsync` (fail every call with that error), `slow`
    /// (sleep `ms` in every call) or `off`.
    fault: String,
    #[serde(default)]
    ms: u64,
}

/// POST /debug/faults/disk?point=raft::log::write&fault=fsync: the storage
/// or Raft log write (or read) path fails as a broken or full disk would,
/// or slows down. Needs a build with the `failpoints` feature (501 without).
#[instrument(name = "http_fault_disk", skip_all)]
async fn fault_disk(state: web::Data<AppState>, params: web::Query<DiskParams>) -> HttpResponse {
    if state.faults.is_none() {
        return fault_injection_off();
    }
    if !chronicle_storage::faults::ENABLED {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this build has no failpoints (build with --features failpoints)",
        );
    }
    let Some(point) = DISK_FAULT_POINTS.iter().find(|p| **p == params.point) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("point must be one of {DISK_FAULT_POINTS:?}"),
        );
    };
    let action = match params.fault.as_str() {
        "off" => {
            fail::remove(point);
            return HttpResponse::NoContent().finish();
        }
        what @ ("enospc" | "eio" | "fsync") => format!("return({what})"),
        "slow" if (1..=60_000).contains(&params.ms) => format!("sleep({})", params.ms),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "fault must be enospc, eio, fsync, off, or slow with ms in 1..=60000",
            )
        }
    };
    match fail::cfg(*point, &action) {
        Ok(()) => {
            tracing::warn!(point, action, "disk fault set by request");
            HttpResponse::NoContent().finish()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", e),
    }
}

#[derive(Deserialize)]
struct ClockParams {
    /// Milliseconds this node's cluster clock runs ahead (negative: behind).
    offset_ms: i64,
}

/// POST /debug/faults/clock?offset_ms=-30000: skews this node's cluster
/// clock (proposal stamps, TTL leases, retention); at most ten years either way.
#[instrument(name = "http_fault_clock", skip_all)]
async fn fault_clock(state: web::Data<AppState>, params: web::Query<ClockParams>) -> HttpResponse {
    if state.faults.is_none() {
        return fault_injection_off();
    }
    const TEN_YEARS_MS: i64 = 10 * 366 * 86_400_000;
    if params.offset_ms.abs() > TEN_YEARS_MS {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "offset_ms must be within ten years either way",
        );
    }
    chronicle_cluster::clock::set_offset_ns(params.offset_ms * 1_000_000);
    tracing::warn!(offset_ms = params.offset_ms, "clock skewed by request");
    HttpResponse::NoContent().finish()
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics::render())
}

/// The replicated state's JSON operations (`chronicle_kv`). Served with
/// `enable_admin_api`, or under `--auth` to admin tokens (403 otherwise).
#[instrument(name = "http_kv", skip_all, fields(op = %op))]
pub(crate) async fn kv(
    state: web::Data<AppState>,
    op: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    if let Some(refused) = admin_refused(&state) {
        return refused;
    }
    let body = match read_body(&req, payload, chronicle_kv::MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (cluster, op) = (state.cluster.clone(), op.into_inner());
    let unsafe_ack = state.ack_before_commit && op == "put";
    let answer = state
        .cluster_runtime
        .spawn(async move { chronicle_kv::service::handle(&cluster, &op, &body).await });
    if unsafe_ack {
        // The known-bad variant: the put goes on without anyone waiting.
        return HttpResponse::Ok().json(serde_json::json!({"revision": 0}));
    }
    match answer.await {
        Ok(answer) => HttpResponse::build(
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .json(answer.body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("state task failed: {e}"),
        ),
    }
}

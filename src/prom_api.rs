//! The Prometheus HTTP API, so Grafana's Prometheus data source and other
//! Prometheus clients work unmodified: /api/v1/query, /api/v1/query_range,
//! /api/v1/series, /api/v1/labels, /api/v1/label/<name>/values,
//! /api/v1/metadata, /api/v1/status/buildinfo. GET with a query string or POST
//! with a form body, answered in Prometheus's JSON shapes and error format.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chronicle_engine::value::{Labels, RangeSeries, Sample};
use chronicle_engine::{Answer, QueryValue, Severity};
use chronicle_query::{MetaAnswer, MetaKind, MetaQuery, PromqlQuery, QueryError};
use serde::ser::{SerializeMap, SerializeTuple};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};
use tracing::instrument;

use crate::http::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/query", web::get().to(instant_query))
        .route("/api/v1/query", web::post().to(instant_query))
        .route("/api/v1/query_range", web::get().to(range_query))
        .route("/api/v1/query_range", web::post().to(range_query))
        .route("/api/v1/series", web::get().to(series))
        .route("/api/v1/series", web::post().to(series))
        .route("/api/v1/labels", web::get().to(label_names))
        .route("/api/v1/labels", web::post().to(label_names))
        .route("/api/v1/label/{name}/values", web::get().to(label_values))
        .route("/api/v1/metadata", web::get().to(metadata))
        .route("/api/v1/status/buildinfo", web::get().to(buildinfo))
        // Chronicle keeps no exemplars, recording/alerting rules or alerts: the
        // empty answers Prometheus gives when it has none, so clients such as
        // Grafana that ask for them work unchanged.
        .route("/api/v1/query_exemplars", web::get().to(no_exemplars))
        .route("/api/v1/query_exemplars", web::post().to(no_exemplars))
        .route("/api/v1/rules", web::get().to(no_rules))
        .route("/api/v1/alerts", web::get().to(no_alerts))
        .route(
            "/api/v1/admin/tsdb/delete_series",
            web::post().to(delete_series),
        )
        .route(
            "/api/v1/admin/tsdb/delete_series",
            web::put().to(delete_series),
        );
}

/// Query-string and form parameters together (a name may repeat: `match[]`).
struct Params(Vec<(String, String)>);

impl Params {
    fn read(req: &HttpRequest, body: &Bytes) -> Result<Self, ApiError> {
        let bad = |e: serde_urlencoded::de::Error| {
            ApiError(ErrorType::BadData, format!("invalid parameters: {e}"))
        };
        let mut pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(req.query_string()).map_err(bad)?;
        let form = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if form && !body.is_empty() {
            pairs.extend(serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).map_err(bad)?);
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An error before any query ran; becomes the JSON error response.
struct ApiError(ErrorType, String);

impl ApiError {
    fn response(self) -> HttpResponse {
        error(self.0, self.1)
    }
}

#[derive(Clone, Copy)]
enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Internal,
    Unavailable,
}

fn error(kind: ErrorType, message: impl Into<String>) -> HttpResponse {
    let (status, name) = match kind {
        ErrorType::BadData => (StatusCode::BAD_REQUEST, "bad_data"),
        ErrorType::Execution => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        ErrorType::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        ErrorType::Canceled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "canceled",
        ),
        ErrorType::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ErrorType::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    HttpResponse::build(status).json(json!({
        "status": "error",
        "errorType": name,
        "error": message.into(),
    }))
}

fn query_error(e: QueryError) -> HttpResponse {
    let kind = match &e {
        QueryError::BadRequest(_) => ErrorType::BadData,
        QueryError::Execution(_) | QueryError::TooLarge(_) => ErrorType::Execution,
        QueryError::Timeout => ErrorType::Timeout,
        QueryError::Cancelled => ErrorType::Canceled,
        QueryError::Storage(_) => ErrorType::Internal,
        QueryError::Unavailable | QueryError::Restarted | QueryError::Busy => {
            ErrorType::Unavailable
        }
    };
    error(kind, e.to_string())
}

fn success(data: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "success", "data": data}))
}

/// Prometheus's number formatting: `NaN`, `+Inf`, `-Inf`, else the shortest decimal.
struct PromNumber(f64);

impl std::fmt::Display for PromNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

// Query results are serialised straight from the engine's values: building a
// `serde_json::Value` first cost an allocation per label and per point.

/// `[<unix seconds>, "<value>"]`.
struct PointJson<'a>(&'a Sample);

impl Serialize for PointJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&(self.0.t as f64 / 1000.0))?;
        t.serialize_element(&Collected(PromNumber(self.0.v)))?;
        t.end()
    }
}

/// A `Display` value written as a JSON string without an intermediate `String`.
struct Collected<T>(T);

impl<T: std::fmt::Display> Serialize for Collected<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

struct LabelsJson<'a>(&'a Labels);

impl Serialize for LabelsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

struct VectorJson<'a>(&'a [(Labels, Sample)]);

impl Serialize for VectorJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(labels, sample)| SeriesJson {
            labels,
            points: Points::One(sample),
        }))
    }
}

enum Points<'a> {
    One(&'a Sample),
    Many(&'a [Sample]),
}

struct SeriesJson<'a> {
    labels: &'a Labels,
    points: Points<'a>,
}

impl Serialize for SeriesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metric", &LabelsJson(self.labels))?;
        match self.points {
            Points::One(p) => m.serialize_entry("value", &PointJson(p))?,
            Points::Many(ps) => {
                m.serialize_entry("values", &PointsJson(ps))?;
            }
        }
        m.end()
    }
}

/// A run of samples as a JSON array of points.
struct PointsJson<'a>(&'a [Sample]);

impl Serialize for PointsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(PointJson))
    }
}

/// The `data` of a query answer.
struct QueryData<'a>(&'a QueryValue);

impl Serialize for QueryData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        match self.0 {
            QueryValue::Scalar(p) => {
                m.serialize_entry("resultType", "scalar")?;
                m.serialize_entry("result", &PointJson(p))?;
            }
            QueryValue::String(text) => {
                m.serialize_entry("resultType", "string")?;
                m.serialize_entry("result", &(0, text))?;
            }
            QueryValue::Vector(v) => {
                m.serialize_entry("resultType", "vector")?;
                m.serialize_entry("result", &VectorJson(v))?;
            }
            QueryValue::Matrix(series) => {
                m.serialize_entry("resultType", "matrix")?;
                m.serialize_entry("result", &MatrixJson(series))?;
            }
        }
        m.end()
    }
}

struct MatrixJson<'a>(&'a [RangeSeries]);

impl Serialize for MatrixJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| SeriesJson {
            labels: &r.labels,
            points: Points::Many(&r.samples),
        }))
    }
}

/// `{"status": "success", "data": ..., "warnings": [...], "infos": [...]}`, the
/// annotation lists only when not empty (as Prometheus answers).
fn query_success(answer: &Answer) -> HttpResponse {
    #[derive(Serialize)]
    struct Envelope<'a> {
        status: &'static str,
        data: QueryData<'a>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        infos: Vec<&'a str>,
    }
    let of = |severity| {
        answer
            .annotations
            .iter()
            .filter(|a| a.severity == severity)
            .map(|a| a.message.as_str())
            .collect()
    };
    match serde_json::to_vec(&Envelope {
        status: "success",
        data: QueryData(&answer.value),
        warnings: of(Severity::Warning),
        infos: of(Severity::Info),
    }) {
        Ok(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Err(e) => HttpResponse::InternalServerError().json(json!({
            "status": "error",
            "errorType": "internal",
            "error": e.to_string(),
        })),
    }
}

/// The times storage can hold (nanoseconds in an i64: years 1677 to 2262), in
/// milliseconds. Query times are clamped to it, so no time arithmetic on them
/// can overflow.
const MIN_TIME_MS: i64 = i64::MIN / 1_000_000;
const MAX_TIME_MS: i64 = i64::MAX / 1_000_000;

/// Unix seconds (`1435781451.781`) or RFC 3339, to milliseconds, clamped to
/// what storage can hold.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() {
            let ms = (secs * 1000.0)
                .round()
                .clamp(MIN_TIME_MS as f64, MAX_TIME_MS as f64);
            return Ok(ms as i64);
        }
        return Err(format!("cannot parse {s:?} to a valid timestamp"));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))?;
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    };
    Ok(ms.clamp(MIN_TIME_MS, MAX_TIME_MS))
}

/// Seconds (`15`, `0.5`) or a duration (`15s`, `1m`), to milliseconds.
fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    humantime::parse_duration(s)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

fn now_ms() -> i64 {
    chronicle_query::request::now_ns() / 1_000_000
}

/// Evaluates through the query feature's gate; the query is cancelled if actix
/// drops this handler (not when the client merely goes away).
async fn evaluate(state: &AppState, mut q: PromqlQuery) -> Result<Answer, HttpResponse> {
    let flag = Arc::new(AtomicBool::new(false));
    q.cancelled = Some(flag.clone());
    let guard = chronicle_query::CancelOnDrop::new(flag);
    let Some(query) = &state.query else {
        return Err(error(
            ErrorType::Unavailable,
            "the query feature is disabled",
        ));
    };
    let answer = crate::http::detached(query.promql(q)).await;
    guard.done();
    answer.map_err(query_error)
}

async fn run(state: &AppState, q: PromqlQuery) -> HttpResponse {
    match evaluate(state, q).await {
        Ok(answer) => query_success(&answer),
        Err(response) => response,
    }
}

/// A range query; one of a single step is evaluated as an instant query and
/// still answered as a matrix.
async fn run_range(state: &AppState, q: PromqlQuery) -> HttpResponse {
    if q.start != q.end {
        return run(state, q).await;
    }
    let as_matrix_value = |value| match value {
        QueryValue::Vector(v) => QueryValue::Matrix(
            v.into_iter()
                .map(|(labels, s)| chronicle_engine::RangeSeries {
                    labels,
                    samples: vec![s],
                })
                .collect(),
        ),
        QueryValue::Scalar(s) => QueryValue::Matrix(vec![chronicle_engine::RangeSeries {
            labels: Labels::default(),
            samples: vec![s],
        }]),
        other => other,
    };
    match evaluate(state, q).await {
        Ok(answer) => query_success(&Answer {
            value: as_matrix_value(answer.value),
            annotations: answer.annotations,
        }),
        Err(response) => response,
    }
}

fn timeout_param(p: &Params) -> Result<Duration, ApiError> {
    match p.get("timeout") {
        None => Ok(Duration::ZERO),
        Some(t) => parse_duration(t)
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
            .map_err(|e| {
                ApiError(
                    ErrorType::BadData,
                    format!("invalid parameter \"timeout\": {e}"),
                )
            }),
    }
}

#[instrument(name = "prom_query", skip_all)]
async fn instant_query(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let p = match Params::read(&req, &body) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let Some(query) = p.get("query") else {
        return error(
            ErrorType::BadData,
            "invalid parameter \"query\": no query given",
        );
    };
    let time = match p.get("time").map(parse_time).transpose() {
        Ok(t) => t.unwrap_or_else(now_ms),
        Err(e) => {
            return error(
                ErrorType::BadData,
                format!("invalid parameter \"time\": {e}"),
            )
        }
    };
    let timeout = match timeout_param(&p) {
        Ok(t) => t,
        Err(e) => return e.response(),
    };
    run(
        &state,
        PromqlQuery {
            query: query.to_string(),
            start: time,
            end: time,
            step: 1,
            timeout,
            cancelled: None,
        },
    )
    .await
}

#[instrument(name = "prom_query_range", skip_all)]
async fn range_query(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let p = match Params::read(&req, &body) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let Some(query) = p.get("query") else {
        return error(
            ErrorType::BadData,
            "invalid parameter \"query\": no query given",
        );
    };
    let mut times = [0i64; 2];
    for (slot, name) in times.iter_mut().zip(["start", "end"]) {
        match p.get(name).map(parse_time) {
            Some(Ok(t)) => *slot = t,
            Some(Err(e)) => {
                return error(
                    ErrorType::BadData,
                    format!("invalid parameter \"{name}\": {e}"),
                )
            }
            None => {
                return error(
                    ErrorType::BadData,
                    format!("invalid parameter \"{name}\": missing"),
                )
            }
        }
    }
    let [start, end] = times;
    if end < start {
        return error(
            ErrorType::BadData,
            "invalid parameter \"end\": end timestamp must not be before start time",
        );
    }
    let step = match p.get("step").map(parse_duration) {
        Some(Ok(s)) if s > 0 => s,
        Some(Ok(_)) => {
            return error(
                ErrorType::BadData,
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            )
        }
        Some(Err(e)) => return error(ErrorType::BadData, format!("invalid parameter \"step\": {e}")),
        None => return error(ErrorType::BadData, "invalid parameter \"step\": missing"),
    };
    // Counted without overflow, before anything is built.
    if chronicle_engine::step_count(start, end, step) > 11_001 {
        return error(
            ErrorType::BadData,
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        );
    }
    let timeout = match timeout_param(&p) {
        Ok(t) => t,
        Err(e) => return e.response(),
    };
    run_range(
        &state,
        PromqlQuery {
            query: query.to_string(),
            start,
            end,
            step,
            timeout,
            cancelled: None,
        },
    )
    .await
}

async fn meta(state: &AppState, q: MetaQuery) -> HttpResponse {
    let Some(query) = &state.query else {
        return error(ErrorType::Unavailable, "the query feature is disabled");
    };
    match crate::http::detached(query.meta(q)).await {
        Ok(MetaAnswer::Series(series)) => success(json!(series)),
        Ok(MetaAnswer::Strings(s)) => success(json!(s)),
        Err(e) => query_error(e),
    }
}

/// `match[]`, `start`, `end` and `limit` of a /series or /labels request.
fn meta_query(kind: MetaKind, p: &Params) -> Result<MetaQuery, ApiError> {
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        p.get(name)
            .map(|t| {
                parse_time(t).map_err(|e| {
                    ApiError(
                        ErrorType::BadData,
                        format!("invalid parameter \"{name}\": {e}"),
                    )
                })
            })
            .transpose()
    };
    let (start, end) = (time("start")?, time("end")?);
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(ApiError(
                ErrorType::BadData,
                "invalid parameter \"end\": end timestamp must not be before start time".into(),
            ));
        }
    }
    // Prometheus: 0 (or none) means no limit; a negative limit is an error.
    let limit = match p.get("limit").map(str::parse::<i64>) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) if n > 0 => Some(n as usize),
        _ => {
            return Err(ApiError(
                ErrorType::BadData,
                "invalid parameter \"limit\": must be a non-negative integer".into(),
            ))
        }
    };
    Ok(MetaQuery {
        kind,
        selectors: p.all("match[]"),
        start,
        end,
        limit,
    })
}

async fn meta_request(
    state: &AppState,
    req: &HttpRequest,
    body: &Bytes,
    kind: MetaKind,
) -> HttpResponse {
    match Params::read(req, body).and_then(|p| meta_query(kind, &p)) {
        Ok(q) => meta(state, q).await,
        Err(e) => e.response(),
    }
}

#[instrument(name = "prom_series", skip_all)]
async fn series(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    meta_request(&state, &req, &body, MetaKind::Series).await
}

#[instrument(name = "prom_labels", skip_all)]
async fn label_names(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    meta_request(&state, &req, &body, MetaKind::LabelNames).await
}

#[instrument(name = "prom_label_values", skip_all)]
async fn label_values(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: Bytes,
) -> HttpResponse {
    meta_request(
        &state,
        &req,
        &body,
        MetaKind::LabelValues(name.into_inner()),
    )
    .await
}

/// Selectors one delete may name.
const MAX_DELETE_SELECTORS: usize = 64;

/// POST or PUT /api/v1/admin/tsdb/delete_series?match[]=..&start=..&end=..:
/// deletes the matching samples in [start, end] (inclusive; default all
/// time) through every shard's log; 204 once every shard committed it.
/// Served only with `enable_admin_api` (403 otherwise).
#[instrument(name = "prom_delete_series", skip_all)]
async fn delete_series(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    if !state.admin_api {
        return HttpResponse::Forbidden().json(json!({
            "status": "error",
            "errorType": "unavailable",
            "error": "admin APIs disabled; set enable_admin_api = true in the node's configuration",
        }));
    }
    let p = match Params::read(&req, &body) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let selectors = p.all("match[]");
    if selectors.is_empty() {
        return error(ErrorType::BadData, "no match[] parameter provided");
    }
    if selectors.len() > MAX_DELETE_SELECTORS {
        return error(
            ErrorType::BadData,
            format!("at most {MAX_DELETE_SELECTORS} match[] parameters"),
        );
    }
    let time = |name: &str, default: i64| -> Result<i64, String> {
        match p.get(name) {
            None => Ok(default),
            Some(t) => parse_time(t).map_err(|e| format!("invalid parameter \"{name}\": {e}")),
        }
    };
    let (start, end) = match (time("start", MIN_TIME_MS), time("end", MAX_TIME_MS)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(why), _) | (_, Err(why)) => return error(ErrorType::BadData, why),
    };
    if end < start {
        return error(
            ErrorType::BadData,
            "invalid parameter \"end\": end timestamp must not be before start time",
        );
    }
    let mut sets = Vec::new();
    for s in &selectors {
        match chronicle_query::selector_matchers(s) {
            Ok(found) => sets.extend(found),
            Err(e) => return error(ErrorType::BadData, e.to_string()),
        }
    }
    // Milliseconds, both inclusive, to nanoseconds.
    let start_ns = start.saturating_mul(1_000_000);
    let end_ns = end.saturating_mul(1_000_000).saturating_add(999_999);
    let cluster = state.cluster.clone();
    let deleted = state
        .cluster_runtime
        .spawn(async move {
            for set in sets {
                cluster.delete_series(&set, start_ns, end_ns).await?;
            }
            Ok::<(), chronicle_cluster::ClusterError>(())
        })
        .await;
    match deleted {
        Ok(Ok(())) => HttpResponse::NoContent().finish(),
        Ok(Err(chronicle_cluster::ClusterError::Storage(e))) => {
            error(ErrorType::BadData, e.to_string())
        }
        Ok(Err(e)) => crate::http::cluster_error(e),
        Err(e) => error(ErrorType::Internal, e.to_string()),
    }
}

/// Chronicle keeps no metric metadata (type, help, unit): an empty map.
async fn metadata() -> HttpResponse {
    success(json!({}))
}

async fn no_exemplars() -> HttpResponse {
    success(json!([]))
}

async fn no_rules() -> HttpResponse {
    success(json!({"groups": []}))
}

async fn no_alerts() -> HttpResponse {
    success(json!({"alerts": []}))
}

async fn buildinfo() -> HttpResponse {
    success(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "chronicle",
        "buildDate": "",
        "goVersion": "n/a (chronicle, Rust)",
    }))
}

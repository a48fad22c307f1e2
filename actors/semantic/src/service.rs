//! The `semantic` feature in a node: a supervised indexing actor that cuts
//! windows from the batches this node's replicas apply (every replica
//! indexes its shard, so any replica can answer for it), rebuilds a
//! shard's catalog from its replica on start, after a snapshot install and
//! on request, and drops partitions with retention. Searches fan out to
//! one replica of every shard (here when this node holds one, otherwise
//! over the node-to-node bus) and merge the top k by exact distance.
//!
//! Routes: `POST /api/semantic/search|text|reindex`, `GET
//! /api/semantic/status`, `/api/semantic/patterns` (saved patterns, in the
//! replicated state); subject `<prefix>.semantic.search`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use async_trait::async_trait;
use chronicle_actor_runtime::{guarded, Restarts};
use chronicle_auth::{Access, Authenticator};
use chronicle_bus::{Bus, Message as BusMessage};
use chronicle_cluster::feed::Applied;
use chronicle_cluster::read::{ShardAnswer, ShardRead};
use chronicle_cluster::state::StateStore;
use chronicle_cluster::ClusterNode;
use chronicle_platform::{
    http_error as error, ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running,
};
use chronicle_storage::{MatchOp, Matcher};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::{
    check_pattern_name, check_values, ms_to_ns, resample, Comparison, MatchView, SavedPattern,
    SearchAnswer, SearchRequest, ShardCoverage,
};
use crate::catalog::{
    metric_matcher, series_key, Budget, Catalog, CatalogStatus, Exclude, Filter, Layout, Match,
    SearchStats, SeriesInfo,
};
use crate::embed::{similarity, znormalize, Embedder};
use crate::explain::Features;
use crate::index::IndexParams;
use crate::SemanticError;

const ACTOR: &str = "semantic-indexer";
/// Batches held per shard while its catalog rebuilds; past it the shard
/// is rebuilt again once this rebuild ends.
const REBUILD_QUEUE: usize = 1024;
/// How long applied batches are held, to be indexed together in time
/// order: the batches of one write, forwarded to a shard's leader in
/// parts, may commit out of order. A sample older than its series' last
/// indexed one is skipped (counted in the status; a reindex takes it).
const REORDER: Duration = Duration::from_secs(1);
/// Request bodies (HTTP and the subject), bytes.
pub const MAX_BODY: usize = 256 << 10;
/// Samples a series-range pattern may read.
const MAX_RANGE_SAMPLES: usize = 200_000;

/// One `[[features.semantic.watch]]` entry: which series are indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchEntry {
    /// A glob over metric names: `cpu_*`, `*`.
    pub metric: String,
    /// Labels a series must have, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `[features.semantic]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// What to index; nothing by default.
    pub watch: Vec<WatchEntry>,
    /// Samples in a window, and samples between the starts of two windows.
    pub window: usize,
    pub stride: usize,
    /// Fingerprint dimensions (DCT coefficients).
    pub dims: usize,
    /// The graph's parameters (`[features.semantic.index]`).
    pub index: IndexParams,
    /// Windows this node indexes at most, all shards together.
    pub max_windows: usize,
    /// Series indexed per shard at most.
    pub max_series: usize,
    /// How far back a rebuild reads, and how long windows are kept (the
    /// shard's retention drops them sooner when it is shorter), hours.
    pub lookback_hours: u64,
    /// Searches running at once; more are refused with 503 at once.
    pub max_searches: usize,
    /// A search's whole time, and the time a shard's replica has to answer.
    pub search_timeout_ms: u64,
    pub shard_timeout_ms: u64,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        Self {
            watch: Vec::new(),
            window: 64,
            stride: 16,
            dims: 32,
            index: IndexParams::default(),
            max_windows: 250_000,
            max_series: 10_000,
            lookback_hours: 7 * 24,
            max_searches: 4,
            search_timeout_ms: 10_000,
            shard_timeout_ms: 2_000,
        }
    }
}

/// A watch entry as matchers.
#[derive(Debug, Clone)]
struct Watch {
    metric: Matcher,
    labels: Vec<(String, String)>,
}

impl Watch {
    fn matches<'a>(&self, metric: &str, mut label: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.metric.matches(metric)
            && self
                .labels
                .iter()
                .all(|(k, v)| label(k).is_some_and(|have| have == v))
    }

    /// Matchers selecting its series in a shard.
    fn matchers(&self) -> Vec<Matcher> {
        let mut m = vec![self.metric.clone()];
        if self.metric.matches("") {
            // `*`: the shard wants one matcher that refuses the empty name.
            m.push(Matcher::new(MatchOp::Regex, "__name__", ".+").expect("a fixed regex"));
        }
        for (k, v) in &self.labels {
            if let Ok(l) = Matcher::new(MatchOp::Equal, k.as_str(), v.as_str()) {
                m.push(l);
            }
        }
        m
    }
}

pub struct SemanticFeature;

impl Feature for SemanticFeature {
    fn name(&self) -> &'static str {
        "semantic"
    }

    fn describe(&self) -> &'static str {
        "semantic search: windows of watched series as shape fingerprints in HNSW graphs, searched by pattern, series range or shape words"
    }

    fn command(&self) -> Option<clap::Command> {
        use clap::Subcommand;
        Some(
            crate::cli::SearchCommand::augment_subcommands(clap::Command::new("search"))
                .about("Semantic search through a node: windows shaped like a pattern (`similar`) or like shape words (`text`), with `--plot` to draw them")
                .subcommand_required(true)
                .arg_required_else_help(true),
        )
    }

    fn run_command(&self, matches: &clap::ArgMatches) -> Result<(), FeatureError> {
        use clap::FromArgMatches;
        let command = crate::cli::SearchCommand::from_arg_matches(matches)
            .map_err(|e| FeatureError::Command(e.to_string()))?;
        crate::cli::run(command).map_err(|e| FeatureError::Command(e.to_string()))
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![
            // Searching and reading is a reader's; saving or deleting a
            // pattern a writer's; rebuilding the index an admin's.
            chronicle_platform::RouteAccess::exact(
                "/api/semantic/reindex",
                chronicle_platform::Access::Admin,
            ),
            chronicle_platform::RouteAccess::prefix(
                "/api/semantic/patterns",
                chronicle_platform::Access::Write,
            )
            .methods(chronicle_platform::Methods::NotGet),
            chronicle_platform::RouteAccess::prefix(
                "/api/semantic/",
                chronicle_platform::Access::Read,
            ),
        ]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: SemanticConfig = chronicle_platform::parse_section("semantic", section)?;
        let bad = |message: String| FeatureError::Config {
            feature: "semantic",
            message,
        };
        let embedder = Embedder::new(config.window, config.dims).map_err(|e| bad(e.to_string()))?;
        if config.stride == 0 || config.stride > config.window {
            return Err(bad("stride: 1 to the window's length".into()));
        }
        config.index.check().map_err(|e| bad(e.to_string()))?;
        if config.max_windows == 0 || config.max_series == 0 || config.max_searches == 0 {
            return Err(bad(
                "max_windows, max_series and max_searches: at least 1".into()
            ));
        }
        if config.lookback_hours == 0 || config.lookback_hours > 24 * 400 {
            return Err(bad("lookback_hours: 1 to 9600".into()));
        }
        if config.search_timeout_ms < 100 || config.shard_timeout_ms < 50 {
            return Err(bad(
                "search_timeout_ms at least 100, shard_timeout_ms at least 50".into(),
            ));
        }
        let mut watches = Vec::new();
        for (i, w) in config.watch.iter().enumerate() {
            let metric = metric_matcher(&w.metric).map_err(|e| bad(format!("watch {i}: {e}")))?;
            watches.push(Watch {
                metric,
                labels: w.labels.clone().into_iter().collect(),
            });
        }
        Ok(Box::new(Plan {
            config,
            embedder,
            watches,
        }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("{prefix}.semantic.search"),
            // Searches of the shards a node holds, between nodes.
            format!("{prefix}.semantic.shard.*"),
        ]
    }
}

struct Plan {
    config: SemanticConfig,
    embedder: Embedder,
    watches: Vec<Watch>,
}

#[async_trait(?Send)]
impl Planned for Plan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let c = &self.config;
        let semantic = Arc::new(Semantic {
            prefix: cx.prefix.clone(),
            layout: Layout {
                embedder: Arc::new(self.embedder),
                stride: c.stride,
                params: c.index,
                max_series: c.max_series,
                budget: Arc::new(Budget::new(c.max_windows)),
            },
            watches: Arc::new(self.watches),
            lookback: Duration::from_secs(c.lookback_hours * 3600),
            cluster: cx.cluster.clone(),
            runtime: cx.cluster_runtime.clone(),
            peers: cx.peers.clone(),
            state: cx.state("semantic")?,
            shards: parking_lot::RwLock::new(BTreeMap::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(c.max_searches)),
            timeout: Duration::from_millis(c.search_timeout_ms),
            shard_timeout: Duration::from_millis(c.shard_timeout_ms),
        });
        let s = semantic.clone();
        let (indexer, arbiter) = cx.supervise(ACTOR, move |_, restarts| Indexer::new(s, restarts));
        let intake = actix::spawn(serve_subject(
            cx.bus.clone(),
            cx.prefix.clone(),
            cx.auth.clone(),
            semantic.clone(),
        ));
        Ok(Arc::new(RunningSemantic {
            web: web::Data::new(Web {
                semantic,
                indexer: indexer.clone(),
            }),
            arbiter: ArbiterSlot::new(arbiter),
            intake: parking_lot::Mutex::new(Some(intake)),
        }))
    }
}

/// What the actor, the routes and the subject share.
pub struct Semantic {
    prefix: String,
    layout: Layout,
    watches: Arc<Vec<Watch>>,
    lookback: Duration,
    cluster: Arc<ClusterNode>,
    runtime: tokio::runtime::Handle,
    peers: Arc<dyn Bus>,
    state: StateStore,
    /// The catalogs of the shards this node holds a replica of.
    shards: parking_lot::RwLock<BTreeMap<u32, Arc<ShardIndex>>>,
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    shard_timeout: Duration,
}

/// One shard replica's catalog and its rebuild's progress.
pub struct ShardIndex {
    catalog: parking_lot::RwLock<Catalog>,
    rebuilding: AtomicBool,
    series_done: AtomicUsize,
    series_total: AtomicUsize,
}

/// A search of one shard, as the node-to-node bus carries it.
#[derive(Debug, Serialize, Deserialize)]
struct ShardQuery {
    query: Vec<f64>,
    k: usize,
    filter: Filter,
    ef: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ShardReply {
    #[serde(default)]
    matches: Vec<Match>,
    #[serde(default)]
    stats: SearchStats,
    #[serde(default)]
    rebuilding: bool,
    #[serde(default)]
    error: Option<String>,
}

fn shard_subject(prefix: &str, shard: u32) -> String {
    format!("{prefix}.semantic.shard.{shard}")
}

/// Why a search failed: an HTTP status and a message.
type Refusal = (StatusCode, String);

fn invalid(e: SemanticError) -> Refusal {
    let status = match e {
        SemanticError::Invalid(_) => StatusCode::BAD_REQUEST,
        SemanticError::Index(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string())
}

impl Semantic {
    /// Answers `req` (checked here again: every entry point calls this).
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchAnswer, Refusal> {
        let started = Instant::now();
        let k = req.check().map_err(invalid)?;
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            metrics::SEARCHES.with_label_values(&["busy"]).inc();
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many searches at once; retry".into(),
            ));
        };
        let answer = tokio::time::timeout(self.timeout, self.search_inner(req, k)).await;
        let outcome = match &answer {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "refused",
            Err(_) => "timeout",
        };
        metrics::SEARCHES.with_label_values(&[outcome]).inc();
        metrics::SEARCH_SECONDS.observe(started.elapsed().as_secs_f64());
        let mut answer = answer.map_err(|_| {
            (
                StatusCode::GATEWAY_TIMEOUT,
                format!("the search took longer than {:?}", self.timeout),
            )
        })??;
        answer.took_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(answer)
    }

    async fn search_inner(&self, req: &SearchRequest, k: usize) -> Result<SearchAnswer, Refusal> {
        let n = self.layout.embedder.window();
        let (raw, exclude) = self.resolve(req).await?;
        let query = znormalize(&resample(&raw, n)).ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "the pattern is flat (or not finite): it has no shape to search for".to_string(),
            )
        })?;
        let filter = Filter {
            metric: req.metric.clone(),
            labels: req.labels.clone(),
            start: req.start.map(ms_to_ns).transpose().map_err(invalid)?,
            end: req.end.map(ms_to_ns).transpose().map_err(invalid)?,
            exclude,
        };
        let shard_query = Arc::new(ShardQuery {
            query: query.clone(),
            k,
            filter,
            ef: req.ef_search,
        });
        let parts = (0..self.cluster.shards()).map(|shard| {
            let q = shard_query.clone();
            async move { (shard, self.search_shard(shard, q).await) }
        });
        let mut coverage = ShardCoverage::default();
        let mut stats = SearchStats::default();
        let mut all: Vec<Match> = Vec::new();
        for (shard, reply) in futures_util::future::join_all(parts).await {
            match reply {
                Some(r) if r.error.is_none() => {
                    coverage.searched.push(shard);
                    if r.rebuilding {
                        coverage.rebuilding.push(shard);
                    }
                    stats.partitions += r.stats.partitions;
                    stats.windows += r.stats.windows;
                    stats.graph += r.stats.graph;
                    stats.filtered_graph += r.stats.filtered_graph;
                    stats.scans += r.stats.scans;
                    all.extend(r.matches);
                }
                Some(r) => {
                    // The same request fails the same way on every shard.
                    return Err((StatusCode::BAD_REQUEST, r.error.unwrap_or_default()));
                }
                None => coverage.missing.push(shard),
            }
        }
        all.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        all.truncate(k);
        let query_features = Features::of(&query);
        let matches = all
            .into_iter()
            .map(|m| {
                let z = znormalize(&m.values).unwrap_or_else(|| vec![0.0; m.values.len()]);
                let explanation = query_features.compare(&Features::of(&z));
                MatchView {
                    metric: m.series.metric,
                    labels: m.series.labels,
                    shard: m.shard,
                    start: m.start.div_euclid(1_000_000),
                    end: m.end.div_euclid(1_000_000),
                    similarity: (similarity(m.distance, n) * 1e6).round() / 1e6,
                    distance: m.distance,
                    agrees: explanation
                        .iter()
                        .filter(|a| a.agrees)
                        .map(|a| a.feature.clone())
                        .collect(),
                    explanation,
                    comparison: req.compare.then(|| Comparison {
                        query: query.clone(),
                        matched: z,
                        values: m.values,
                    }),
                }
            })
            .collect();
        Ok(SearchAnswer {
            matches,
            window: n,
            query,
            shards: coverage,
            stats,
            took_ms: 0.0,
        })
    }

    /// The pattern's raw values, and the windows to leave out.
    async fn resolve(&self, req: &SearchRequest) -> Result<(Vec<f64>, Option<Exclude>), Refusal> {
        let n = self.layout.embedder.window();
        if let Some(text) = &req.text {
            let steps = crate::text::parse(text).map_err(invalid)?;
            return Ok((crate::text::template(&steps, n), None));
        }
        let pattern = req
            .pattern
            .as_ref()
            .ok_or_else(|| (StatusCode::BAD_REQUEST, "a pattern or a text".to_string()))?;
        if let Some(values) = &pattern.values {
            return Ok((values.clone(), None));
        }
        if let Some(name) = &pattern.saved {
            return match self.pattern(name).await? {
                Some(p) => Ok((p.values, None)),
                None => Err((StatusCode::NOT_FOUND, format!("no saved pattern {name:?}"))),
            };
        }
        let range = pattern
            .series
            .as_ref()
            .ok_or_else(|| (StatusCode::BAD_REQUEST, "an empty pattern".to_string()))?;
        let (start, end) = (
            ms_to_ns(range.start).map_err(invalid)?,
            ms_to_ns(range.end).map_err(invalid)?,
        );
        let mut matchers = vec![
            Matcher::new(MatchOp::Equal, "__name__", range.metric.as_str())
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
        ];
        for (k, v) in &range.labels {
            matchers.push(
                Matcher::new(MatchOp::Equal, k.as_str(), v.as_str())
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
            );
        }
        let read = ShardRead::Series {
            matchers,
            start,
            end,
            max_samples: MAX_RANGE_SAMPLES,
        };
        let cluster = self.cluster.clone();
        let answer = self
            .runtime
            .spawn(async move { cluster.query(&read).await })
            .await
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let series = match answer {
            ShardAnswer::Series(Some(s)) => s,
            ShardAnswer::Series(None) => {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the range holds more than {MAX_RANGE_SAMPLES} samples; narrow it"),
                ))
            }
            _ => {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unexpected answer".into(),
                ))
            }
        };
        // The labels name the whole series: one with more labels is another.
        let mut exact = series.into_iter().filter(|(key, _)| {
            key.labels.len() == range.labels.len()
                && key
                    .labels
                    .iter()
                    .all(|l| range.labels.get(&l.name).is_some_and(|v| *v == l.value))
        });
        let Some((key, samples)) = exact.next() else {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "no series {}{:?} with samples in the range",
                    range.metric, range.labels
                ),
            ));
        };
        let values: Vec<f64> = samples
            .iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .collect();
        if values.len() < crate::api::MIN_PATTERN {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the range holds {} samples; a pattern needs at least {}",
                    values.len(),
                    crate::api::MIN_PATTERN
                ),
            ));
        }
        let exclude = Exclude {
            series: SeriesInfo {
                metric: key.metric.clone(),
                labels: range.labels.clone(),
            },
            start: samples.first().map_or(start, |s| s.timestamp),
            end: samples.last().map_or(end, |s| s.timestamp),
        };
        Ok((values, Some(exclude)))
    }

    /// One shard's answer: from the replica here, or from one elsewhere
    /// (`None` when none answered in time).
    async fn search_shard(&self, shard: u32, q: Arc<ShardQuery>) -> Option<ShardReply> {
        let local = self.shards.read().get(&shard).cloned();
        if let Some(index) = local {
            return Some(search_local(index, q).await);
        }
        let body = serde_json::to_vec(q.as_ref()).ok()?;
        let message = BusMessage::new(shard_subject(&self.prefix, shard), body);
        match self.peers.request(message, self.shard_timeout).await {
            Ok(reply) => serde_json::from_slice(&reply.payload).ok(),
            Err(e) => {
                debug!(shard, error = %e, "semantic: no replica answered");
                None
            }
        }
    }

    fn pattern_key(name: &str) -> String {
        format!("pattern/{name}")
    }

    async fn pattern(&self, name: &str) -> Result<Option<SavedPattern>, Refusal> {
        let key = Self::pattern_key(name);
        let entry =
            chronicle_platform::on_cluster(&self.runtime, &self.state, move |s| async move {
                s.get(&key).await
            })
            .await
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?;
        Ok(entry.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    fn status(&self) -> serde_json::Value {
        let shards: Vec<serde_json::Value> = self
            .shards
            .read()
            .iter()
            .map(|(shard, index)| {
                let status: CatalogStatus = index.catalog.read().status();
                json!({
                    "shard": shard,
                    "rebuilding": index.rebuilding.load(Ordering::Relaxed),
                    "rebuild_series_done": index.series_done.load(Ordering::Relaxed),
                    "rebuild_series_total": index.series_total.load(Ordering::Relaxed),
                    "catalog": status,
                })
            })
            .collect();
        json!({
            "window": self.layout.embedder.window(),
            "stride": self.layout.stride,
            "dims": self.layout.embedder.dims(),
            "index": self.layout.params,
            "watch": self.watches.len(),
            "windows": self.layout.budget.used(),
            "max_windows": self.layout.budget.limit,
            "lookback_hours": self.lookback.as_secs() / 3600,
            "shards": shards,
        })
    }
}

/// Searches a replica's catalog off the async threads.
async fn search_local(index: Arc<ShardIndex>, q: Arc<ShardQuery>) -> ShardReply {
    let rebuilding = index.rebuilding.load(Ordering::Relaxed);
    let result = tokio::task::spawn_blocking(move || {
        index.catalog.read().search(&q.query, q.k, &q.filter, q.ef)
    })
    .await;
    match result {
        Ok(Ok((matches, stats))) => ShardReply {
            matches,
            stats,
            rebuilding,
            error: None,
        },
        Ok(Err(e)) => ShardReply {
            matches: Vec::new(),
            stats: SearchStats::default(),
            rebuilding,
            error: Some(e.to_string()),
        },
        Err(e) => ShardReply {
            matches: Vec::new(),
            stats: SearchStats::default(),
            rebuilding,
            error: Some(format!("the search failed: {e}")),
        },
    }
}

/// `<prefix>.semantic.search`: a [`SearchRequest`] in JSON; with
/// authentication on, a token that may read, in the `Authorization`
/// header. The reply is a [`SearchAnswer`] or `{"error": {"code",
/// "message"}}` with an HTTP-like code.
async fn serve_subject(
    bus: Arc<dyn Bus>,
    prefix: String,
    auth: Arc<Authenticator>,
    semantic: Arc<Semantic>,
) {
    let subject = format!("{prefix}.semantic.search");
    let mut sub = match bus.subscribe(&subject, Some("chronicle-semantic")).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "semantic: cannot serve {subject}");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let (bus, auth, semantic) = (bus.clone(), auth.clone(), semantic.clone());
        // Each request on its own task; the search's permits bound them.
        actix::spawn(async move {
            let body = match answer_subject(&msg, &auth, &semantic).await {
                Ok(answer) => serde_json::to_vec(&answer).unwrap_or_default(),
                Err((code, message)) => serde_json::to_vec(
                    &json!({"error": {"code": code.as_u16(), "message": message}}),
                )
                .unwrap_or_default(),
            };
            let _ = bus.publish(BusMessage::new(reply, body)).await;
        });
    }
}

#[tracing::instrument(name = "semantic_search_subject", skip_all)]
async fn answer_subject(
    msg: &BusMessage,
    auth: &Authenticator,
    semantic: &Semantic,
) -> Result<SearchAnswer, Refusal> {
    if auth.is_enabled() {
        let principal = auth
            .authenticate(msg.headers.get("Authorization").map(str::as_bytes))
            .map_err(|e| (status(e.status()), e.to_string()))?;
        principal
            .authorize(Access::Read, "semantic")
            .map_err(|e| (status(e.status()), e.to_string()))?;
    }
    if msg.payload.len() > MAX_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request of at most {MAX_BODY} bytes"),
        ));
    }
    let req: SearchRequest = serde_json::from_slice(&msg.payload)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    semantic.search(&req).await
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The routes' state.
struct Web {
    semantic: Arc<Semantic>,
    indexer: Addr<Indexer>,
}

struct RunningSemantic {
    web: web::Data<Web>,
    arbiter: ArbiterSlot,
    intake: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait(?Send)]
impl Running for RunningSemantic {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        // The body limit on these resources only (app_data on `cfg` would
        // bind every route of the node).
        let limit = || web::PayloadConfig::new(MAX_BODY);
        cfg.app_data(self.web.clone())
            .service(
                web::resource("/api/semantic/search")
                    .app_data(limit())
                    .route(web::post().to(search_route)),
            )
            .service(
                web::resource("/api/semantic/text")
                    .app_data(limit())
                    .route(web::post().to(text_route)),
            )
            .route("/api/semantic/status", web::get().to(status_route))
            .route("/api/semantic/reindex", web::post().to(reindex_route))
            .service(
                web::resource("/api/semantic/patterns")
                    .app_data(limit())
                    .route(web::get().to(list_patterns))
                    .route(web::post().to(save_pattern)),
            )
            .route(
                "/api/semantic/patterns/{name}",
                web::delete().to(delete_pattern),
            );
    }

    async fn stop_intake(&self) {
        if let Some(intake) = self.intake.lock().take() {
            intake.abort();
        }
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

/// The body as JSON; a body over the limit (refused while it was read)
/// or not JSON is a 413 or a 400 with a JSON error like any other.
type Body = Result<web::Bytes, actix_web::Error>;

fn parse_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Refusal> {
    let body = body.map_err(|e| {
        let status = e.as_response_error().status_code();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("a body of at most {MAX_BODY} bytes")
        } else {
            e.to_string()
        };
        (status, message)
    })?;
    if body.len() > MAX_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a body of at most {MAX_BODY} bytes"),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))
}

fn refused((code, message): Refusal) -> HttpResponse {
    error(code, code_word(code), message)
}

fn answer(result: Result<SearchAnswer, Refusal>) -> HttpResponse {
    match result {
        Ok(a) => HttpResponse::Ok().json(a),
        Err(e) => refused(e),
    }
}

fn code_word(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        413 => "too_large",
        422 => "unprocessable",
        503 => "busy",
        504 => "timeout",
        _ => "error",
    }
}

#[tracing::instrument(name = "semantic_search", skip_all)]
async fn search_route(web: web::Data<Web>, body: Body) -> HttpResponse {
    let req: SearchRequest = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    if req.pattern.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a \"pattern\" (for shape words, POST /api/semantic/text)",
        );
    }
    answer(web.semantic.search(&req).await)
}

#[tracing::instrument(name = "semantic_text", skip_all)]
async fn text_route(web: web::Data<Web>, body: Body) -> HttpResponse {
    let req: SearchRequest = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    if req.text.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a \"text\" of shape words: {}", crate::text::KNOWN),
        );
    }
    answer(web.semantic.search(&req).await)
}

#[tracing::instrument(name = "semantic_status", skip_all)]
async fn status_route(web: web::Data<Web>) -> HttpResponse {
    HttpResponse::Ok().json(web.semantic.status())
}

#[tracing::instrument(name = "semantic_reindex", skip_all)]
async fn reindex_route(web: web::Data<Web>) -> HttpResponse {
    match web.indexer.send(Reindex).await {
        Ok(shards) => HttpResponse::Accepted().json(json!({ "rebuilding": shards })),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// Most saved patterns listed.
const MAX_PATTERNS: usize = 1000;

#[tracing::instrument(name = "semantic_patterns", skip_all)]
async fn list_patterns(web: web::Data<Web>) -> HttpResponse {
    let s = &web.semantic;
    let scanned = chronicle_platform::on_cluster(&s.runtime, &s.state, |st| async move {
        st.scan("pattern/", None, MAX_PATTERNS).await
    })
    .await;
    match scanned {
        Ok((entries, more)) => {
            let patterns: Vec<SavedPattern> = entries
                .iter()
                .filter_map(|e| serde_json::from_slice(&e.value).ok())
                .collect();
            HttpResponse::Ok().json(json!({"patterns": patterns, "more": more}))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

#[tracing::instrument(name = "semantic_pattern_save", skip_all)]
async fn save_pattern(web: web::Data<Web>, body: Body) -> HttpResponse {
    let p: SavedPattern = match parse_body(body) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let checked = check_pattern_name(&p.name).and_then(|_| check_values(&p.values));
    if let Err(e) = checked {
        return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
    }
    if p.description.len() > 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "description: at most 1024 bytes",
        );
    }
    if znormalize(&p.values).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the pattern is flat: it has no shape to search for",
        );
    }
    let s = &web.semantic;
    let key = Semantic::pattern_key(&p.name);
    let value = serde_json::to_vec(&p).unwrap_or_default();
    let put = chronicle_platform::on_cluster(&s.runtime, &s.state, move |st| async move {
        st.put(&key, value).await
    })
    .await;
    match put {
        Ok(revision) => HttpResponse::Ok().json(json!({"name": p.name, "revision": revision})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

#[tracing::instrument(name = "semantic_pattern_delete", skip_all)]
async fn delete_pattern(web: web::Data<Web>, name: web::Path<String>) -> HttpResponse {
    let name = name.into_inner();
    if let Err(e) = check_pattern_name(&name) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
    }
    let s = &web.semantic;
    match s.pattern(&name).await {
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no saved pattern {name:?}"),
            )
        }
        Err((code, message)) => return error(code, code_word(code), message),
        Ok(Some(_)) => {}
    }
    let key = Semantic::pattern_key(&name);
    let deleted = chronicle_platform::on_cluster(&s.runtime, &s.state, move |st| async move {
        st.delete(&key).await
    })
    .await;
    match deleted {
        Ok(_) => HttpResponse::NoContent().finish(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

/// A followed shard, as the actor sees it.
struct Following {
    index: Arc<ShardIndex>,
    /// Batches that came while the catalog rebuilds (`None`: not rebuilding).
    queue: Option<Vec<Arc<Applied>>>,
    /// The queue overflowed: rebuild again when this rebuild ends.
    again: bool,
    /// The replica the catalog was built from (a snapshot install replaces it).
    replica: Arc<chronicle_storage::Shard>,
    /// Series hashes known not to be watched.
    ignored: HashSet<u64>,
    /// Batches held for [`REORDER`] before they are indexed together.
    pending: Vec<Arc<Applied>>,
    /// Answers other nodes' searches of this shard.
    peer_answers: SpawnHandle,
}

/// The indexing actor.
pub struct Indexer {
    semantic: Arc<Semantic>,
    restarts: Restarts,
    following: HashMap<u32, Following>,
}

impl Indexer {
    fn new(semantic: Arc<Semantic>, restarts: Restarts) -> Self {
        Self {
            semantic,
            restarts,
            following: HashMap::new(),
        }
    }

    /// Follows the shards this node holds and does not follow yet (replicas
    /// come and go with scaling); rebuilds a catalog whose replica was
    /// replaced by a snapshot install.
    fn follow_shards(&mut self, ctx: &mut Context<Self>) {
        if self.semantic.watches.is_empty() {
            return;
        }
        let cluster = self.semantic.cluster.clone();
        for shard in 0..cluster.shards() {
            if let Some(f) = self.following.get(&shard) {
                let current = cluster.local_shard(shard).map(|c| c.current());
                if current.is_some_and(|c| !Arc::ptr_eq(&c, &f.replica)) && f.queue.is_none() {
                    info!(
                        shard,
                        "semantic: the replica was replaced (snapshot install); rebuilding"
                    );
                    self.rebuild(shard, ctx);
                }
                continue;
            }
            let (Some(mut batches), Some(cell)) =
                (cluster.applied_batches(shard), cluster.local_shard(shard))
            else {
                continue;
            };
            let index = Arc::new(ShardIndex {
                catalog: parking_lot::RwLock::new(Catalog::new(
                    shard,
                    self.semantic.layout.clone(),
                )),
                rebuilding: AtomicBool::new(false),
                series_done: AtomicUsize::new(0),
                series_total: AtomicUsize::new(0),
            });
            let me = ctx.address();
            ctx.spawn(
                async move {
                    loop {
                        match batches.recv().await {
                            Ok(batch) => {
                                if me.send(Batch(batch)).await.is_err() {
                                    return;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                metrics::LAGGED.inc_by(n);
                                // Windows were missed: the catalog is rebuilt.
                                me.do_send(Rebuild(shard));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                me.do_send(Unfollow(shard));
                                return;
                            }
                        }
                    }
                }
                .into_actor(self),
            );
            let peer_answers = ctx
                .spawn(answer_peers(self.semantic.clone(), shard, index.clone()).into_actor(self));
            self.semantic.shards.write().insert(shard, index.clone());
            self.following.insert(
                shard,
                Following {
                    index,
                    queue: None,
                    again: false,
                    replica: cell.current(),
                    ignored: HashSet::new(),
                    pending: Vec::new(),
                    peer_answers,
                },
            );
            self.rebuild(shard, ctx);
        }
    }

    /// Starts rebuilding `shard`'s catalog from its replica (unless a
    /// rebuild runs; then once more after it).
    fn rebuild(&mut self, shard: u32, ctx: &mut Context<Self>) {
        let Some(cell) = self.semantic.cluster.local_shard(shard) else {
            return;
        };
        let Some(f) = self.following.get_mut(&shard) else {
            return;
        };
        if f.queue.is_some() {
            f.again = true;
            return;
        }
        // Batches held for reordering are in the replica: the rebuild reads them.
        f.pending.clear();
        f.queue = Some(Vec::new());
        f.again = false;
        f.replica = cell.current();
        f.ignored.clear();
        let index = f.index.clone();
        // A fresh catalog: the old one's windows go back to the budget.
        *index.catalog.write() = Catalog::new(shard, self.semantic.layout.clone());
        index.rebuilding.store(true, Ordering::Relaxed);
        let (replica, watches) = (f.replica.clone(), self.semantic.watches.clone());
        let from = now_ns().saturating_sub(self.semantic.window_keep().as_nanos() as i64);
        metrics::REBUILDS.inc();
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = rebuild_catalog(&index, &replica, &watches, from);
            (result, started.elapsed())
        });
        ctx.spawn(task.into_actor(self).map(move |result, act, ctx| {
            let Some(f) = act.following.get_mut(&shard) else {
                return;
            };
            match result {
                Ok((Ok(series), took)) => {
                    info!(shard, series, windows = f.index.catalog.read().windows(), took_ms = took.as_millis() as u64, "semantic: catalog rebuilt");
                }
                Ok((Err(e), _)) => warn!(shard, error = %e, "semantic: rebuilding the catalog failed; indexing goes on from new batches"),
                Err(e) => warn!(shard, error = %e, "semantic: the rebuild task failed"),
            }
            f.index.rebuilding.store(false, Ordering::Relaxed);
            let queued = f.queue.take().unwrap_or_default();
            let again = f.again;
            act.index_batches(shard, &queued);
            act.update_gauge();
            if again {
                act.rebuild(shard, ctx);
            }
        }));
    }

    fn on_batch(&mut self, batch: Arc<Applied>, ctx: &mut Context<Self>) {
        let shard = batch.shard;
        let Some(f) = self.following.get_mut(&shard) else {
            return;
        };
        if let Some(queue) = &mut f.queue {
            if queue.len() < REBUILD_QUEUE {
                queue.push(batch);
            } else {
                f.again = true;
            }
            return;
        }
        f.pending.push(batch);
        if f.pending.len() >= REBUILD_QUEUE {
            self.flush(shard);
        } else if f.pending.len() == 1 {
            ctx.run_later(REORDER, move |act, ctx| {
                guarded(ACTOR, act, ctx, |act, _| act.flush(shard));
            });
        }
    }

    /// Indexes the batches held for reordering.
    fn flush(&mut self, shard: u32) {
        let Some(f) = self.following.get_mut(&shard) else {
            return;
        };
        let batches = std::mem::take(&mut f.pending);
        if !batches.is_empty() {
            self.index_batches(shard, &batches);
            self.update_gauge();
        }
    }

    /// Cuts the windows that batches of `shard` complete, their points
    /// taken by series and time (across the batches: forwarded writes may
    /// commit out of time order).
    fn index_batches(&mut self, shard: u32, batches: &[Arc<Applied>]) {
        let Some(f) = self.following.get_mut(&shard) else {
            return;
        };
        let watches = &self.semantic.watches;
        let max_ignored = 4 * self.semantic.layout.max_series;
        let mut catalog = f.index.catalog.write();
        let mut points: Vec<(u32, i64, f64)> = Vec::new();
        for batch in batches {
            let Ok(view) = batch.points.view() else {
                continue;
            };
            for p in view.iter() {
                let mut labels: Vec<(&str, &str)> =
                    p.labels.iter().map(|l| (l.name, l.value)).collect();
                if !labels.windows(2).all(|w| w[0].0 <= w[1].0) {
                    labels.sort_unstable();
                }
                let key = series_key(p.metric, labels.iter().copied());
                if !catalog.knows(key) {
                    if f.ignored.contains(&key) {
                        continue;
                    }
                    let watched = watches.iter().any(|w| {
                        w.matches(p.metric, |name| {
                            labels.iter().find(|l| l.0 == name).map(|l| l.1)
                        })
                    });
                    if !watched {
                        if f.ignored.len() < max_ignored {
                            f.ignored.insert(key);
                        }
                        continue;
                    }
                }
                let info = || SeriesInfo {
                    metric: p.metric.to_string(),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                };
                if let Some(i) = catalog.series(key, info) {
                    points.push((i, p.timestamp, p.value));
                }
            }
        }
        points.sort_by_key(|p| (p.0, p.1));
        for (i, t, v) in points {
            catalog.push(i, t, v);
        }
    }

    /// Drops partitions older than the window kept or the shard's retention.
    fn enforce_retention(&mut self) {
        let keep = match self.semantic.cluster.raw_retention() {
            Some(r) => r.min(self.semantic.window_keep()),
            None => self.semantic.window_keep(),
        };
        let cutoff = now_ns().saturating_sub(keep.as_nanos() as i64);
        for f in self.following.values() {
            let dropped = f.index.catalog.write().drop_before(cutoff);
            if dropped > 0 {
                debug!(
                    shard = f.index.catalog.read().shard,
                    dropped, "semantic: partitions dropped by retention"
                );
            }
        }
        self.update_gauge();
    }

    fn update_gauge(&self) {
        metrics::WINDOWS.set(self.semantic.layout.budget.used() as i64);
    }
}

impl Semantic {
    /// How long windows are kept (and how far back a rebuild reads).
    fn window_keep(&self) -> Duration {
        self.lookback
    }
}

/// Reads every watched series of `replica` from `from` (ns) into the
/// catalog, series by series, the catalog locked only while a series'
/// samples go in. Returns the series read.
fn rebuild_catalog(
    index: &ShardIndex,
    replica: &chronicle_storage::Shard,
    watches: &[Watch],
    from: i64,
) -> Result<usize, String> {
    let mut selected: BTreeMap<u64, chronicle_storage::SeriesKey> = BTreeMap::new();
    for w in watches {
        for (id, key) in replica.select(&w.matchers()).map_err(|e| e.to_string())? {
            selected.insert(id, key);
        }
    }
    index.series_total.store(selected.len(), Ordering::Relaxed);
    index.series_done.store(0, Ordering::Relaxed);
    let mut chunk = Vec::with_capacity(4096);
    for (done, (id, key)) in selected.into_iter().enumerate() {
        let hash = series_key(
            &key.metric,
            key.labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
        );
        let info = SeriesInfo {
            metric: key.metric.clone(),
            labels: key
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect(),
        };
        let Some(i) = index.catalog.write().series(hash, || info) else {
            continue;
        };
        let mut samples = replica
            .scan(id, from, i64::MAX)
            .map_err(|e| e.to_string())?;
        loop {
            chunk.clear();
            for s in samples.by_ref().take(4096) {
                let s = s.map_err(|e| e.to_string())?;
                chunk.push((s.timestamp, s.value));
            }
            if chunk.is_empty() {
                break;
            }
            let mut catalog = index.catalog.write();
            for (t, v) in &chunk {
                catalog.push(i, *t, *v);
            }
        }
        index.series_done.store(done + 1, Ordering::Relaxed);
    }
    Ok(index.series_done.load(Ordering::Relaxed))
}

/// Answers other nodes' searches of `shard` (one replica of each shard
/// answers: they share a queue group).
async fn answer_peers(semantic: Arc<Semantic>, shard: u32, index: Arc<ShardIndex>) {
    let subject = shard_subject(&semantic.prefix, shard);
    let group = format!("chronicle-semantic-{shard}");
    let mut sub = match semantic.peers.subscribe(&subject, Some(&group)).await {
        Ok(s) => s,
        Err(e) => {
            warn!(shard, error = %e, "semantic: cannot answer other nodes' searches");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let reply_body = match serde_json::from_slice::<ShardQuery>(&msg.payload) {
            Ok(q)
                if q.k <= crate::api::MAX_K
                    && q.query.len() == semantic.layout.embedder.window() =>
            {
                search_local(index.clone(), Arc::new(q)).await
            }
            Ok(_) => ShardReply {
                matches: Vec::new(),
                stats: SearchStats::default(),
                rebuilding: false,
                error: Some("a shard query out of bounds".into()),
            },
            Err(e) => ShardReply {
                matches: Vec::new(),
                stats: SearchStats::default(),
                rebuilding: false,
                error: Some(e.to_string()),
            },
        };
        let body = serde_json::to_vec(&reply_body).unwrap_or_default();
        let _ = semantic.peers.publish(BusMessage::new(reply, body)).await;
    }
}

impl Actor for Indexer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.follow_shards(ctx);
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            guarded(ACTOR, act, ctx, |act, ctx| act.follow_shards(ctx));
        });
        ctx.run_interval(Duration::from_secs(60), |act, ctx| {
            guarded(ACTOR, act, ctx, |act, _| act.enforce_retention());
        });
    }
}

impl Supervised for Indexer {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Followed afresh, each catalog rebuilt from its replica.
        self.following.clear();
        self.semantic.shards.write().clear();
        self.restarts.pause(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Batch(Arc<Applied>);

impl Handler<Batch> for Indexer {
    type Result = ();

    fn handle(&mut self, msg: Batch, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| act.on_batch(msg.0, ctx));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Rebuild(u32);

impl Handler<Rebuild> for Indexer {
    type Result = ();

    fn handle(&mut self, msg: Rebuild, ctx: &mut Context<Self>) {
        self.rebuild(msg.0, ctx);
    }
}

/// Rebuilds every followed shard's catalog; answers their ids.
#[derive(Message)]
#[rtype(result = "Vec<u32>")]
struct Reindex;

impl Handler<Reindex> for Indexer {
    type Result = MessageResult<Reindex>;

    fn handle(&mut self, _: Reindex, ctx: &mut Context<Self>) -> Self::Result {
        let shards: Vec<u32> = self.following.keys().copied().collect();
        for shard in &shards {
            self.rebuild(*shard, ctx);
        }
        MessageResult(shards)
    }
}

/// A shard's replica left this node.
#[derive(Message)]
#[rtype(result = "()")]
struct Unfollow(u32);

impl Handler<Unfollow> for Indexer {
    type Result = ();

    fn handle(&mut self, msg: Unfollow, ctx: &mut Context<Self>) {
        if let Some(f) = self.following.remove(&msg.0) {
            ctx.cancel_future(f.peer_answers);
        }
        self.semantic.shards.write().remove(&msg.0);
        self.update_gauge();
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// `chronicle_semantic_*` metrics.
mod metrics {
    use super::*;

    fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
        chronicle_actor_runtime::register(Box::new(c.clone()));
        c
    }

    pub static WINDOWS: LazyLock<IntGauge> = LazyLock::new(|| {
        register(
            IntGauge::new(
                "chronicle_semantic_windows",
                "Windows indexed on this node, all shards together",
            )
            .expect("static metric definition"),
        )
    });

    pub static SEARCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register(
            IntCounterVec::new(
                Opts::new(
                    "chronicle_semantic_searches_total",
                    "Searches by outcome (ok, refused, busy, timeout)",
                ),
                &["outcome"],
            )
            .expect("static metric definition"),
        )
    });

    pub static SEARCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
        register(
            Histogram::with_opts(HistogramOpts::new(
                "chronicle_semantic_search_seconds",
                "Time of a search, fan-out and merge included",
            ))
            .expect("static metric definition"),
        )
    });

    pub static REBUILDS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
        register(
            prometheus::IntCounter::new(
                "chronicle_semantic_rebuilds_total",
                "Catalog rebuilds started (start, snapshot install, lag, reindex)",
            )
            .expect("static metric definition"),
        )
    });

    pub static LAGGED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
        register(
            prometheus::IntCounter::new(
                "chronicle_semantic_batches_lagged_total",
                "Applied batches the indexer fell too far behind to see (each lag rebuilds the shard's catalog)",
            )
            .expect("static metric definition"),
        )
    });
}

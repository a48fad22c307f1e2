//! The capacity feature: a supervised collector writes the node's usage as
//! ordinary series (`chronicle_self_*{node="<id>"}`, through the ingest
//! actor, so SQL and PromQL read them like any other), and
//! `/api/capacity/forecasts` forecasts each resource from that history
//! with [`crate::forecast`]: its value at the horizon, an interval, and
//! when it reaches its limit.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use async_trait::async_trait;
use chronicle_actor_runtime::Restarts;
use chronicle_ingest::{IngestActor, WritePoints};
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use chronicle_query::request::TimeSpec;
use chronicle_query::{QueryActor, QueryRequest, RunQuery};
use chronicle_storage::{Label, Point};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::forecast::{self, MIN_POINTS};
use crate::recommend::{recommend, ChunkProfile, Inputs, Outlook, Recommendation};
use crate::usage::Usage;
use crate::CapacityError;
use chronicle_platform::settings::{SettingChange, Settings, SettingsError};

const ACTOR: &str = "capacity";
/// Steps one forecast may look ahead at most.
pub const MAX_HORIZON_STEPS: usize = 10_000;
/// Points of history one forecast fits at most (each fit is several
/// optimiser runs over every point).
pub const MAX_HISTORY_POINTS: usize = 20_000;

mod duration_text {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `[features.capacity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// How often the collector samples the node (`"60s"`).
    #[serde(with = "duration_text")]
    pub sample_every: Duration,
    /// How much history a forecast reads (`"28d"`).
    #[serde(with = "duration_text")]
    pub history: Duration,
    /// The forecasts' resolution: history is read at this step (`"1h"`).
    #[serde(with = "duration_text")]
    pub step: Duration,
    /// How far ahead forecasts look by default (`"7d"`).
    #[serde(with = "duration_text")]
    pub horizon: Duration,
    /// Low-risk recommendations apply themselves (through the config API,
    /// audited as `capacity:auto-tune`).
    pub auto_tune: bool,
    /// How often auto-tuning looks, and how long it leaves a setting alone
    /// after any change to it (`"1h"`).
    #[serde(with = "duration_text")]
    pub tune_every: Duration,
    /// The shortest raw retention a recommendation may propose (`"1d"`).
    #[serde(with = "duration_text")]
    pub min_raw_retention: Duration,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            sample_every: Duration::from_secs(60),
            history: Duration::from_secs(28 * 86_400),
            step: Duration::from_secs(3600),
            horizon: Duration::from_secs(7 * 86_400),
            auto_tune: false,
            tune_every: Duration::from_secs(3600),
            min_raw_retention: Duration::from_secs(86_400),
        }
    }
}

impl CapacityConfig {
    fn check(&self) -> Result<(), String> {
        let every = self.sample_every.as_secs_f64();
        if !(1.0..=3600.0).contains(&every) {
            return Err("sample_every: 1s to 1h".into());
        }
        if self.step < Duration::from_secs(1) {
            return Err("step: at least 1s".into());
        }
        let points = self.history.as_secs_f64() / self.step.as_secs_f64();
        if !(MIN_POINTS as f64..=MAX_HISTORY_POINTS as f64).contains(&points) {
            return Err(format!(
                "history / step: {MIN_POINTS} to {MAX_HISTORY_POINTS} points"
            ));
        }
        self.horizon_steps(self.horizon)?;
        if self.tune_every < Duration::from_secs(10) {
            return Err("tune_every: at least 10s".into());
        }
        if self.min_raw_retention < Duration::from_secs(3600) {
            return Err("min_raw_retention: at least 1h".into());
        }
        Ok(())
    }

    fn horizon_steps(&self, horizon: Duration) -> Result<usize, String> {
        let steps = (horizon.as_secs_f64() / self.step.as_secs_f64()).ceil();
        if !(1.0..=MAX_HORIZON_STEPS as f64).contains(&steps) {
            return Err(format!(
                "horizon: 1 to {MAX_HORIZON_STEPS} steps of {}",
                humantime::format_duration(self.step)
            ));
        }
        Ok(steps as usize)
    }
}

pub struct CapacityFeature;

impl Feature for CapacityFeature {
    fn name(&self) -> &'static str {
        "capacity"
    }

    fn describe(&self) -> &'static str {
        "the node's usage as chronicle_self_* series, and Holt-Winters forecasts of when each resource runs out"
    }

    fn command(&self) -> Option<clap::Command> {
        use clap::Subcommand;
        Some(
            crate::cli::CapacityCommand::augment_subcommands(clap::Command::new("capacity"))
                .about("Capacity planning: forecasts of disk, memory, series and ingest as terminal charts, recommendations, and applying or rolling back their changes")
                .subcommand_required(true)
                .arg_required_else_help(true),
        )
    }

    fn run_command(&self, matches: &clap::ArgMatches) -> Result<(), FeatureError> {
        use clap::FromArgMatches;
        let command = crate::cli::CapacityCommand::from_arg_matches(matches)
            .map_err(|e| FeatureError::Command(e.to_string()))?;
        crate::cli::run(command).map_err(|e| FeatureError::Command(e.to_string()))
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![
            // Forecasts and recommendations are a reader's; applying and
            // rolling back change settings: an admin's.
            chronicle_platform::RouteAccess::prefix(
                "/api/capacity/",
                chronicle_platform::Access::Read,
            )
            .methods(chronicle_platform::Methods::Get),
            chronicle_platform::RouteAccess::prefix(
                "/api/capacity/",
                chronicle_platform::Access::Admin,
            )
            .methods(chronicle_platform::Methods::NotGet),
        ]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: CapacityConfig = chronicle_platform::parse_section("capacity", section)?;
        config.check().map_err(|message| FeatureError::Config {
            feature: "capacity",
            message,
        })?;
        Ok(Box::new(Plan { config }))
    }
}

struct Plan {
    config: CapacityConfig,
}

/// What the routes and the collector share.
pub struct Capacity {
    config: CapacityConfig,
    node: u64,
    data_dir: std::path::PathBuf,
    cluster: Arc<chronicle_cluster::ClusterNode>,
    query: Option<Addr<QueryActor>>,
    /// One forecast request at a time: fitting is CPU-bound, and a second
    /// caller is told to come back rather than queued without end.
    fitting: tokio::sync::Semaphore,
    /// Where the config API is published (it may start after this feature).
    services: chronicle_platform::Services,
    /// The feature's replicated state: the changes it applied.
    state: chronicle_cluster::state::StateStore,
    cluster_runtime: tokio::runtime::Handle,
    /// The recommendations last computed, and when: `apply` acts on what
    /// was shown.
    shown: parking_lot::Mutex<Option<(std::time::Instant, Vec<Recommendation>)>>,
    /// What the node's chunks measured for the recommendations last shown.
    measured: parking_lot::Mutex<Option<ChunkProfile>>,
}

#[async_trait(?Send)]
impl Planned for Plan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let capacity = Arc::new(Capacity {
            config: self.config,
            node: cx.node_id,
            data_dir: cx.cluster.data_dir().to_path_buf(),
            cluster: cx.cluster.clone(),
            query: cx.services.get::<Addr<QueryActor>>().map(|a| (*a).clone()),
            fitting: tokio::sync::Semaphore::new(1),
            services: cx.services.clone(),
            state: cx.state("capacity")?,
            cluster_runtime: cx.cluster_runtime.clone(),
            shown: parking_lot::Mutex::new(None),
            measured: parking_lot::Mutex::new(None),
        });
        std::sync::LazyLock::force(&FORECAST_SECONDS);
        std::sync::LazyLock::force(&CHANGES);
        let ingest = cx.services.get::<Addr<IngestActor>>().map(|a| (*a).clone());
        if ingest.is_none() {
            warn!("capacity: the ingest feature is disabled: the node's usage is not recorded");
        }
        let for_actor = capacity.clone();
        let (addr, arbiter) = cx.supervise(ACTOR, move |_, restarts| Collector {
            capacity: for_actor,
            ingest,
            restarts,
        });
        Ok(Arc::new(RunningCapacity {
            capacity: web::Data::new(capacity),
            _actor: addr,
            arbiter: ArbiterSlot::new(arbiter),
        }))
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The sum over all labels of `value` of each series of the metric family
/// `name` in the process registry (`None` when it is not registered).
fn family_sum(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    value: impl Fn(&prometheus::proto::Metric) -> f64,
) -> Option<f64> {
    let family = families.iter().find(|f| f.name() == name)?;
    Some(family.get_metric().iter().map(value).sum())
}

fn counter_total(families: &[prometheus::proto::MetricFamily], name: &str) -> Option<f64> {
    family_sum(families, name, |m| m.get_counter().get_value())
}

/// Observations of a histogram, over all its labels.
fn histogram_count(families: &[prometheus::proto::MetricFamily], name: &str) -> Option<f64> {
    family_sum(families, name, |m| {
        m.get_histogram().get_sample_count() as f64
    })
}

/// The sum of a histogram's observations, over all its labels.
fn histogram_sum(families: &[prometheus::proto::MetricFamily], name: &str) -> Option<f64> {
    family_sum(families, name, |m| m.get_histogram().get_sample_sum())
}

impl Capacity {
    /// One sample as points, stamped `now` (ns).
    fn points(&self, usage: &Usage, series: u64, now: i64) -> Vec<Point> {
        let node = Label::new("node", self.node.to_string());
        // One gather for every counter read below.
        let families = prometheus::gather();
        let mut out = Vec::new();
        for ((shard, kind), bytes) in &usage.disk {
            let mut labels = vec![node.clone(), Label::new("kind", *kind)];
            labels.extend(shard.map(|s| Label::new("shard", s.to_string())));
            out.push(Point::new(
                "chronicle_self_disk_bytes",
                labels,
                *bytes as f64,
                now,
            ));
        }
        let mut push = |metric: &str, extra: Option<Label>, value: Option<f64>| {
            if let Some(v) = value {
                let mut labels = vec![node.clone()];
                labels.extend(extra);
                out.push(Point::new(metric, labels, v, now));
            }
        };
        push(
            "chronicle_self_disk_free_bytes",
            None,
            usage.disk_free.map(|v| v as f64),
        );
        push(
            "chronicle_self_disk_size_bytes",
            None,
            usage.disk_size.map(|v| v as f64),
        );
        push(
            "chronicle_self_memory_rss_bytes",
            None,
            usage.memory_rss.map(|v| v as f64),
        );
        push(
            "chronicle_self_memory_limit_bytes",
            None,
            usage.memory_limit.map(|v| v as f64),
        );
        push(
            "chronicle_self_open_files",
            None,
            usage.open_files.map(|v| v as f64),
        );
        push("chronicle_self_series", None, Some(series as f64));
        push(
            "chronicle_self_ingest_points_total",
            None,
            counter_total(&families, "chronicle_ingest_points_total"),
        );
        push(
            "chronicle_self_bus_messages_total",
            None,
            counter_total(&families, "chronicle_bus_messages_total"),
        );
        push(
            "chronicle_self_queries_total",
            None,
            histogram_count(&families, "chronicle_query_duration_seconds"),
        );
        push(
            "chronicle_self_query_seconds_total",
            None,
            histogram_sum(&families, "chronicle_query_duration_seconds"),
        );
        push(
            "chronicle_self_series_created_total",
            None,
            Some(self.series_created() as f64),
        );
        out
    }

    /// Series ever created on this node's replicas.
    fn series_created(&self) -> u64 {
        self.cluster
            .local_shards()
            .iter()
            .map(|(_, shard)| shard.series_created())
            .sum()
    }

    /// Series held on this node (every local replica).
    fn series(&self) -> u64 {
        self.cluster
            .local_shards()
            .iter()
            .map(|(_, shard)| shard.series_count() as u64)
            .sum()
    }
}

/// The supervised collector.
struct Collector {
    capacity: Arc<Capacity>,
    ingest: Option<Addr<IngestActor>>,
    restarts: Restarts,
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.capacity.config.auto_tune {
            ctx.run_interval(self.capacity.config.tune_every, |this, ctx| {
                let capacity = this.capacity.clone();
                ctx.spawn(async move { capacity.auto_tune().await }.into_actor(this));
            });
        }
        let every = self.capacity.config.sample_every;
        ctx.run_interval(every, |this, ctx| {
            let Some(ingest) = this.ingest.clone() else {
                return;
            };
            let capacity = this.capacity.clone();
            let task = async move {
                let dir = capacity.data_dir.clone();
                let usage =
                    match tokio::task::spawn_blocking(move || crate::usage::sample(&dir)).await {
                        Ok(u) => u,
                        Err(e) => {
                            warn!(error = %e, "capacity: sampling failed");
                            return;
                        }
                    };
                let points = chronicle_storage::PointBatch::from_points(capacity.points(
                    &usage,
                    capacity.series(),
                    now_ns(),
                ));
                match ingest
                    .send(WritePoints {
                        span: tracing::Span::current(),
                        points,
                        idempotency_key: None,
                    })
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => debug!(error = %e, "capacity: the sample was not written"),
                    Err(e) => debug!(error = %e, "capacity: the ingest actor is away"),
                }
            };
            ctx.spawn(task.into_actor(this));
        });
    }
}

impl Supervised for Collector {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.restarts.pause(ctx);
    }
}

/// A resource forecasts cover: its PromQL over the collected series, and
/// the PromQL of its limit (if it has one).
struct Resource {
    name: &'static str,
    unit: &'static str,
    promql: String,
    limit: Option<String>,
}

fn resources(node: u64, step: &str) -> Vec<Resource> {
    let sel = |metric: &str| format!("last_over_time({metric}{{node=\"{node}\"}}[{step}])");
    vec![
        Resource {
            name: "disk",
            unit: "bytes",
            promql: format!("sum({})", sel("chronicle_self_disk_bytes")),
            // What the node may grow to: what it holds plus what is free.
            limit: Some(format!(
                "sum({}) + max({})",
                sel("chronicle_self_disk_bytes"),
                sel("chronicle_self_disk_free_bytes")
            )),
        },
        Resource {
            name: "memory",
            unit: "bytes",
            promql: format!("max({})", sel("chronicle_self_memory_rss_bytes")),
            limit: Some(format!("max({})", sel("chronicle_self_memory_limit_bytes"))),
        },
        Resource {
            name: "series",
            unit: "series",
            promql: format!("max({})", sel("chronicle_self_series")),
            limit: None,
        },
        Resource {
            name: "ingest_rate",
            unit: "points/s",
            promql: format!(
                "sum(rate(chronicle_self_ingest_points_total{{node=\"{node}\"}}[{step}]))"
            ),
            limit: None,
        },
    ]
}

/// One resource's forecast, as `/api/capacity/forecasts` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceForecast {
    pub resource: &'static str,
    pub unit: &'static str,
    /// `ok`, or `insufficient_history` (with `have` and `need` points).
    pub status: &'static str,
    pub points: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Value>,
    /// When the expected path reaches the limit, and when the interval's
    /// upper edge does (ms); absent: not within the horizon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_exhausted_ms: Option<i64>,
}

/// A regular grid from `points` (ns, value) at `step` ns: gaps filled by
/// linear interpolation. Returns the grid's first time and the values.
pub fn regular(points: &[(i64, f64)], step: i64) -> Option<(i64, Vec<f64>)> {
    let finite: Vec<(i64, f64)> = points
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite())
        .collect();
    let (first, last) = (finite.first()?.0, finite.last()?.0);
    let n = ((last - first) / step) as usize + 1;
    let mut out = Vec::with_capacity(n);
    let mut j = 0;
    for i in 0..n {
        let t = first + i as i64 * step;
        while j + 1 < finite.len() && finite[j + 1].0 <= t {
            j += 1;
        }
        let (t0, v0) = finite[j];
        let v = match finite.get(j + 1) {
            Some(&(t1, v1)) if t > t0 => v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64,
            _ => v0,
        };
        out.push(v);
    }
    Some((first, out))
}

impl Capacity {
    async fn range(&self, promql: String, start: i64, end: i64) -> Result<Vec<(i64, f64)>, String> {
        let Some(query) = &self.query else {
            return Err("the query feature is disabled on this node".into());
        };
        let request = QueryRequest {
            promql: Some(promql),
            start: Some(TimeSpec::Nanos(start)),
            end: Some(TimeSpec::Nanos(end)),
            step: Some(humantime::format_duration(self.config.step).to_string()),
            ..Default::default()
        };
        let result = query
            .send(RunQuery::new(request))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(result
            .series
            .first()
            .map(|s| s.points.iter().map(|p| (p.0, p.1)).collect())
            .unwrap_or_default())
    }

    /// Forecasts of every resource (or one) `horizon` ahead.
    pub async fn forecasts(
        &self,
        only: Option<&str>,
        horizon: Duration,
        detail: bool,
    ) -> Result<Vec<ResourceForecast>, String> {
        let _timer = FORECAST_SECONDS.start_timer();
        let steps = self.config.horizon_steps(horizon)?;
        let step_ns = self.config.step.as_nanos() as i64;
        let end = now_ns();
        let start = end - self.config.history.as_nanos() as i64;
        let step_text = humantime::format_duration(self.config.step).to_string();
        let mut out = Vec::new();
        for r in resources(self.node, &step_text) {
            if only.is_some_and(|o| o != r.name) {
                continue;
            }
            let history = self.range(r.promql.clone(), start, end).await?;
            let limit = match &r.limit {
                Some(q) => self.range(q.clone(), start, end).await?.last().map(|p| p.1),
                None => None,
            };
            let grid = regular(&history, step_ns);
            let points = grid.as_ref().map_or(0, |g| g.1.len());
            let mut f = ResourceForecast {
                resource: r.name,
                unit: r.unit,
                status: "insufficient_history",
                points,
                need: Some(MIN_POINTS),
                current: history.last().map(|p| p.1),
                limit,
                forecast: None,
                exhausted_ms: None,
                earliest_exhausted_ms: None,
            };
            let Some((first, values)) = grid.filter(|g| g.1.len() >= MIN_POINTS) else {
                out.push(f);
                continue;
            };
            let last_t = first + (values.len() as i64 - 1) * step_ns;
            let values_for_fit = values.clone();
            let fitted = tokio::task::spawn_blocking(move || {
                forecast::auto(&values_for_fit, None).map(|m| m.forecast(steps, 0.95, 1000, 1))
            })
            .await
            .map_err(|e| e.to_string())?;
            let fc = match fitted {
                Ok(fc) => fc,
                Err(e) => {
                    f.status = "no_fit";
                    f.forecast = Some(json!({"error": e.to_string()}));
                    out.push(f);
                    continue;
                }
            };
            let at = |i: usize| (last_t + (i as i64 + 1) * step_ns) / 1_000_000;
            if let Some(l) = limit {
                f.exhausted_ms = fc.mean.iter().position(|v| *v >= l).map(at);
                f.earliest_exhausted_ms = fc.upper.iter().position(|v| *v >= l).map(at);
            }
            let h = fc.mean.len() - 1;
            let mut body = json!({
                "model": fc.model, "params": fc.params, "aicc": fc.aicc, "rmse": fc.rmse,
                "coverage": fc.coverage,
                "horizon_ms": at(h),
                "at_horizon": {"mean": fc.mean[h], "lower": fc.lower[h], "upper": fc.upper[h]},
            });
            if detail {
                body["history"] = json!(values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| json!([(first + i as i64 * step_ns) / 1_000_000, v]))
                    .collect::<Vec<_>>());
                body["path"] = json!((0..fc.mean.len())
                    .map(|i| json!([at(i), fc.mean[i], fc.lower[i], fc.upper[i]]))
                    .collect::<Vec<_>>());
            }
            f.status = "ok";
            f.need = None;
            f.forecast = Some(body);
            out.push(f);
        }
        Ok(out)
    }
}

/// One change `apply` made, as stored in the feature's replicated state
/// (`applied/<ms>-<node>-<id>`) and listed by `/api/capacity/applied`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedChange {
    /// Its key: what `/api/capacity/rollback` names.
    pub record: String,
    pub recommendation: Value,
    /// The config API's record of the change.
    pub change: SettingChange,
    pub by: String,
    pub at_ms: i64,
    /// Made by auto-tuning rather than an operator.
    pub auto: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<SettingChange>,
}

/// Forecast requests' fitting time (`chronicle_capacity_forecast_seconds`).
static FORECAST_SECONDS: std::sync::LazyLock<prometheus::Histogram> =
    std::sync::LazyLock::new(|| {
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "chronicle_capacity_forecast_seconds",
                "Time to forecast the node's resources (every model fitted)",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("static metric definition");
        chronicle_actor_runtime::register(Box::new(h.clone()));
        h
    });

/// Changes made through recommendations (`chronicle_capacity_changes_total`).
static CHANGES: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "chronicle_capacity_changes_total",
            "Recommendations applied or rolled back, by action and by whom (operator or auto_tune)",
        ),
        &["action", "by"],
    )
    .expect("static metric definition");
    chronicle_actor_runtime::register(Box::new(c.clone()));
    for action in ["applied", "rolled_back"] {
        for by in ["operator", "auto_tune"] {
            c.with_label_values(&[action, by]);
        }
    }
    c
});

/// How long an applied change stays listed and can be rolled back.
pub const APPLIED_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Pages of 1,000 records `/api/capacity/applied` reads at most.
const MAX_APPLIED_PAGES: usize = 100;

/// How long recommendations shown stay what `apply` acts on.
const SHOWN_FOR: Duration = Duration::from_secs(15 * 60);

/// Whether two values of a setting are the same: equal text, or the same
/// duration written two ways (`720h` and `30d`), or both "kept forever".
fn same_value(a: &str, b: &str) -> bool {
    let forever = |v: &str| matches!(v.trim(), "none" | "forever");
    a == b
        || (forever(a) && forever(b))
        || matches!(
            (humantime::parse_duration(a.trim()), humantime::parse_duration(b.trim())),
            (Ok(x), Ok(y)) if x == y
        )
}

fn state_error(e: impl std::fmt::Display) -> CapacityError {
    CapacityError::Unavailable(format!("the replicated state: {e}"))
}

fn settings_error(e: SettingsError) -> CapacityError {
    match e {
        SettingsError::Conflict { .. } => {
            CapacityError::Conflict(format!("{e}; look at the recommendations again"))
        }
        SettingsError::Unavailable(m) => CapacityError::Unavailable(m),
        other => CapacityError::Invalid(other.to_string()),
    }
}

fn outlook(f: &ResourceForecast) -> Option<Outlook> {
    let body = f.forecast.as_ref().filter(|_| f.status == "ok")?;
    Some(Outlook {
        current: f.current?,
        limit: f.limit.filter(|l| *l > 0.0)?,
        mean: body["at_horizon"]["mean"].as_f64()?,
        upper: body["at_horizon"]["upper"].as_f64()?,
        exhausted_ms: f.exhausted_ms,
        earliest_exhausted_ms: f.earliest_exhausted_ms,
    })
}

impl Capacity {
    fn settings(&self) -> Result<Settings, CapacityError> {
        self.services
            .get::<Settings>()
            .map(|s| (*s).clone())
            .ok_or_else(|| {
                CapacityError::Unavailable("the config feature is disabled on this node".into())
            })
    }

    /// Recommendations from fresh forecasts at the configured horizon
    /// (the caller holds `fitting`).
    async fn compute_recommendations(&self) -> Result<Vec<Recommendation>, CapacityError> {
        let horizon = self.config.horizon;
        let forecasts = self
            .forecasts(None, horizon, false)
            .await
            .map_err(CapacityError::Unavailable)?;
        let of = |name: &str| {
            forecasts
                .iter()
                .find(|f| f.resource == name)
                .and_then(outlook)
        };
        let inputs = Inputs {
            horizon,
            disk: of("disk"),
            memory: of("memory"),
            raw_retention: self.cluster.raw_retention(),
            min_raw_retention: self.config.min_raw_retention,
            decoded_cache_bytes: self.cluster.shard_config().decoded_cache_bytes as u64,
            local_shards: self.cluster.local_shards().len(),
            nodes: self.cluster.status().0.len(),
            shards: self.cluster.shards(),
            replication: self.cluster.replication(),
            chunks: self.measure_chunks().await,
        };
        *self.measured.lock() = inputs.chunks.clone();
        let recommendations = recommend(&inputs);
        *self.shown.lock() = Some((std::time::Instant::now(), recommendations.clone()));
        Ok(recommendations)
    }

    /// What this node's chunks measure under other settings (`None`: no
    /// chunks yet, or the trial failed: logged, and recommendations that
    /// need it are left out).
    async fn measure_chunks(&self) -> Option<ChunkProfile> {
        let shards: Vec<_> = self
            .cluster
            .local_shards()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        match tokio::task::spawn_blocking(move || crate::profile::measure(&shards)).await {
            Ok(Ok(profile)) => profile,
            Ok(Err(e)) => {
                warn!(error = %e, "capacity: measuring the chunks failed");
                None
            }
            Err(e) => {
                warn!(error = %e, "capacity: measuring the chunks failed");
                None
            }
        }
    }

    /// Recommendations now (one computation at a time: busy otherwise).
    pub async fn recommendations(&self) -> Result<Vec<Recommendation>, CapacityError> {
        let Ok(_permit) = self.fitting.try_acquire() else {
            return Err(CapacityError::Busy);
        };
        self.compute_recommendations().await
    }

    /// The recommendation `id` as last shown (recomputed when that was
    /// longer ago than [`SHOWN_FOR`]).
    async fn shown(&self, id: &str) -> Result<Recommendation, CapacityError> {
        let recent = self
            .shown
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < SHOWN_FOR)
            .map(|(_, r)| r.clone());
        let recommendations = match recent {
            Some(r) => r,
            None => self.recommendations().await?,
        };
        recommendations
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| {
                CapacityError::NotFound(format!(
                    "no recommendation {id:?} now: GET /api/capacity/recommendations lists them"
                ))
            })
    }

    /// Makes recommendation `id`'s change through the config API, only if
    /// the setting still holds what the recommendation was computed from,
    /// and records it for rollback.
    pub async fn apply(
        &self,
        id: &str,
        principal: &str,
        auto: bool,
    ) -> Result<AppliedChange, CapacityError> {
        let r = self.shown(id).await?;
        let (Some(name), Some(to), true) =
            (r.change.setting, r.change.to.clone(), r.change.applicable)
        else {
            return Err(CapacityError::Conflict(format!(
                "{id} is not a run-time setting; an operator makes it: {}",
                r.change.how
            )));
        };
        let settings = self.settings()?;
        let view = settings
            .list()
            .await
            .map_err(settings_error)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| CapacityError::Unavailable(format!("no run-time setting {name}")))?;
        if !r
            .change
            .from
            .as_deref()
            .is_some_and(|from| same_value(from, &view.value))
        {
            return Err(CapacityError::Conflict(format!(
                "{name} is {} now, not {} as when {id} was computed; look at the recommendations again",
                view.value,
                r.change.from.as_deref().unwrap_or("-")
            )));
        }
        let stored = view.set.then_some(view.value.as_str());
        let reason = format!("capacity {id}: {}", r.description);
        let reason: String = reason.chars().take(400).collect();
        let change = settings
            .set(name, Some(&to), principal, &reason, Some(stored))
            .await
            .map_err(settings_error)?;
        let at_ms = change.at_ms;
        let record = format!("applied/{:013}-{}-{id}", at_ms.max(0), self.node);
        let applied = AppliedChange {
            record: record.clone(),
            recommendation: serde_json::to_value(&r).unwrap_or(Value::Null),
            change,
            by: principal.into(),
            at_ms,
            auto,
            rolled_back: None,
        };
        let bytes = serde_json::to_vec(&applied).expect("a record serializes");
        chronicle_platform::on_cluster(&self.cluster_runtime, &self.state, move |s| async move {
            s.put_with_ttl(&record, bytes, APPLIED_TTL).await
        })
        .await
        .map_err(state_error)?;
        // What was shown is stale now.
        *self.shown.lock() = None;
        CHANGES
            .with_label_values(&["applied", if auto { "auto_tune" } else { "operator" }])
            .inc();
        Ok(applied)
    }

    /// Undoes an applied change: the setting goes back to its previous
    /// run-time value, once, and only while it still holds what was applied.
    pub async fn rollback(
        &self,
        record: &str,
        principal: &str,
    ) -> Result<AppliedChange, CapacityError> {
        if !record.starts_with("applied/") || record.len() > 256 {
            return Err(CapacityError::Invalid(
                "record: an `applied/...` key from /api/capacity/applied".into(),
            ));
        }
        let key = record.to_string();
        let entry = chronicle_platform::on_cluster(
            &self.cluster_runtime,
            &self.state,
            move |s| async move { s.get(&key).await },
        )
        .await
        .map_err(state_error)?
        .ok_or_else(|| CapacityError::NotFound(format!("no applied change {record:?}")))?;
        let mut applied: AppliedChange = serde_json::from_slice(&entry.value)
            .map_err(|e| CapacityError::Unavailable(format!("{record}: {e}")))?;
        if applied.rolled_back.is_some() {
            return Err(CapacityError::Conflict(format!(
                "{record} was rolled back already"
            )));
        }
        let c = &applied.change;
        let undo = self
            .settings()?
            .set(
                &c.name,
                c.previous.as_deref(),
                principal,
                &format!("capacity rollback of {record}"),
                Some(c.value.as_deref()),
            )
            .await
            .map_err(settings_error)?;
        applied.rolled_back = Some(undo);
        let bytes = serde_json::to_vec(&applied).expect("a record serializes");
        let (key, revision) = (record.to_string(), entry.revision);
        chronicle_platform::on_cluster(&self.cluster_runtime, &self.state, move |s| async move {
            s.compare_and_set(&key, revision, bytes).await
        })
        .await
        .map_err(state_error)?
        .map_err(|_| CapacityError::Conflict(format!("{record} changed meanwhile")))?;
        CHANGES
            .with_label_values(&["rolled_back", "operator"])
            .inc();
        Ok(applied)
    }

    /// The changes applied (kept [`APPLIED_TTL`]), newest first, at most
    /// `limit`.
    pub async fn applied(&self, limit: usize) -> Result<Vec<AppliedChange>, CapacityError> {
        // Keys sort by time: page through, keeping the last `limit`.
        let mut newest = std::collections::VecDeque::with_capacity(limit);
        let mut after: Option<String> = None;
        for _ in 0..MAX_APPLIED_PAGES {
            let from = after.clone();
            let (entries, more) = chronicle_platform::on_cluster(
                &self.cluster_runtime,
                &self.state,
                move |s| async move { s.scan("applied/", from.as_deref(), 1000).await },
            )
            .await
            .map_err(state_error)?;
            after = entries.last().map(|e| e.key.clone());
            for e in entries {
                if newest.len() == limit {
                    newest.pop_front();
                }
                newest.push_back(e);
            }
            if !more {
                break;
            }
        }
        Ok(newest
            .iter()
            .rev()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect())
    }

    /// One round of auto-tuning: low-risk recommendations whose setting was
    /// left alone for a whole `tune_every` apply themselves.
    async fn auto_tune(&self) {
        let recommendations = {
            let _permit = self.fitting.acquire().await;
            match self.compute_recommendations().await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "capacity: auto-tuning skipped");
                    return;
                }
            }
        };
        let Ok(settings) = self.settings() else {
            return;
        };
        // The history, not the stored values: a rollback or a reset to the
        // file's value leaves no stored value but is a change all the same.
        let quiet_since = now_ns() / 1_000_000 - self.config.tune_every.as_millis() as i64;
        let changes = match settings.history(quiet_since, 1000).await {
            Ok((changes, _)) => changes,
            Err(e) => {
                debug!(error = %e, "capacity: auto-tuning skipped");
                return;
            }
        };
        for r in recommendations
            .iter()
            .filter(|r| r.risk == "low" && r.change.applicable)
        {
            let recent = changes
                .iter()
                .any(|c| Some(c.name.as_str()) == r.change.setting);
            if recent {
                debug!(id = %r.id, "capacity: the setting changed recently; auto-tuning waits");
                continue;
            }
            match self.apply(&r.id, "capacity:auto-tune", true).await {
                Ok(a) => tracing::info!(id = %r.id, record = %a.record, "capacity: auto-tuned"),
                Err(e) => warn!(id = %r.id, error = %e, "capacity: auto-tuning failed"),
            }
        }
    }
}

struct RunningCapacity {
    capacity: web::Data<Arc<Capacity>>,
    _actor: Addr<Collector>,
    arbiter: ArbiterSlot,
}

#[async_trait(?Send)]
impl Running for RunningCapacity {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.capacity.clone())
            .route("/api/capacity/forecasts", web::get().to(forecasts))
            .route(
                "/api/capacity/recommendations",
                web::get().to(recommendations),
            )
            .route("/api/capacity/applied", web::get().to(applied))
            .route("/api/capacity/apply", web::post().to(apply))
            .route("/api/capacity/rollback", web::post().to(rollback));
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastQuery {
    resource: Option<String>,
    /// `7d`, `12h`; default: the configured horizon.
    horizon: Option<String>,
    /// With the history and the forecast path (for a chart).
    #[serde(default)]
    detail: bool,
}

#[tracing::instrument(name = "capacity_forecasts", skip_all)]
async fn forecasts(
    capacity: web::Data<Arc<Capacity>>,
    query: Result<web::Query<ForecastQuery>, actix_web::Error>,
) -> HttpResponse {
    let q = match query {
        Ok(q) => q.into_inner(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let known = ["disk", "memory", "series", "ingest_rate"];
    if let Some(r) = &q.resource {
        if !known.contains(&r.as_str()) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("resource {r:?}: one of {}", known.join(", ")),
            );
        }
    }
    let horizon = match q.horizon.as_deref().map(humantime::parse_duration) {
        None => capacity.config.horizon,
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("horizon: {e}"),
            )
        }
    };
    if let Err(e) = capacity.config.horizon_steps(horizon) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e);
    }
    let Ok(_permit) = capacity.fitting.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "a forecast is being computed; try again in a few seconds",
        );
    };
    match capacity
        .forecasts(q.resource.as_deref(), horizon, q.detail)
        .await
    {
        Ok(f) => HttpResponse::Ok().json(json!({"node": capacity.node,
            "step_ms": capacity.config.step.as_millis() as u64, "forecasts": f})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

fn capacity_error(e: CapacityError) -> HttpResponse {
    let (status, code) = match &e {
        CapacityError::Invalid(_) | CapacityError::Fit(_) => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        CapacityError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        CapacityError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        CapacityError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        CapacityError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
    };
    error(status, code, e.to_string())
}

fn principal(req: &actix_web::HttpRequest) -> String {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<chronicle_auth::Principal>()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "anonymous".into())
}

#[tracing::instrument(name = "capacity_recommendations", skip_all)]
async fn recommendations(capacity: web::Data<Arc<Capacity>>) -> HttpResponse {
    match capacity.recommendations().await {
        Ok(r) => HttpResponse::Ok().json(json!({
            "node": capacity.node,
            "horizon_ms": capacity.config.horizon.as_millis() as u64,
            "auto_tune": capacity.config.auto_tune,
            "recommendations": r,
            "measured": capacity.measured.lock().clone(),
        })),
        Err(e) => capacity_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppliedQuery {
    #[serde(default)]
    limit: Option<usize>,
}

#[tracing::instrument(name = "capacity_applied", skip_all)]
async fn applied(
    capacity: web::Data<Arc<Capacity>>,
    query: Result<web::Query<AppliedQuery>, actix_web::Error>,
) -> HttpResponse {
    let limit = match query {
        Ok(q) => q.limit.unwrap_or(100),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "limit: 1 to 1000");
    }
    match capacity.applied(limit).await {
        Ok(a) => HttpResponse::Ok().json(json!({"applied": a})),
        Err(e) => capacity_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdBody {
    id: String,
}

/// The `id` of a `{"id": ...}` body, or why not (400).
fn id_body(body: &[u8], what: &str) -> Result<String, String> {
    match serde_json::from_slice::<IdBody>(body) {
        Ok(b) if !b.id.is_empty() && b.id.len() <= 256 => Ok(b.id),
        Ok(_) => Err("id: 1 to 256 bytes".into()),
        Err(e) => Err(format!("a JSON body {{\"id\": \"<{what}>\"}}: {e}")),
    }
}

#[tracing::instrument(name = "capacity_apply", skip_all)]
async fn apply(
    capacity: web::Data<Arc<Capacity>>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let id = match id_body(&body, "recommendation id") {
        Ok(id) => id,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    match capacity.apply(&id, &principal(&req), false).await {
        Ok(a) => HttpResponse::Ok().json(a),
        Err(e) => capacity_error(e),
    }
}

#[tracing::instrument(name = "capacity_rollback", skip_all)]
async fn rollback(
    capacity: web::Data<Arc<Capacity>>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let id = match id_body(&body, "applied record") {
        Ok(id) => id,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    match capacity.rollback(&id, &principal(&req)).await {
        Ok(a) => HttpResponse::Ok().json(a),
        Err(e) => capacity_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_interpolated_on_a_regular_grid() {
        let (first, v) = regular(&[(0, 1.0), (20, 3.0), (30, f64::NAN), (40, 5.0)], 10).unwrap();
        assert_eq!(first, 0);
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(regular(&[], 10).is_none());
    }

    #[test]
    fn values_compare_by_what_they_mean() {
        assert!(same_value("30d", "720h"));
        assert!(same_value("none", "forever"));
        assert!(same_value("19", "19"));
        assert!(!same_value("30d", "29d"));
        assert!(!same_value("none", "30d"));
        assert!(!same_value("512", "1024"));
    }

    #[test]
    fn the_config_is_bounded() {
        assert!(CapacityConfig::default().check().is_ok());
        let bad = CapacityConfig {
            sample_every: Duration::from_millis(10),
            ..Default::default()
        };
        assert!(bad.check().is_err());
        let bad = CapacityConfig {
            step: Duration::from_secs(1),
            ..Default::default()
        };
        assert!(bad.check().is_err(), "28 d of 1 s steps is too many points");
        let c = CapacityConfig::default();
        assert!(c.horizon_steps(Duration::from_secs(3600 * 20_000)).is_err());
        assert_eq!(c.horizon_steps(Duration::from_secs(7 * 86_400)), Ok(168));
    }
}

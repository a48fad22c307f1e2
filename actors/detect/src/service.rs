//! The `detect` feature: a supervised detector actor fed by the point
//! batches this node's replicas apply, anomalies stored in the replicated
//! state (namespace `detect`) and published on `<prefix>.anomaly.<metric>`,
//! anomalies from other services accepted on `<prefix>.anomaly.>`, and
//! `GET /api/anomalies`.
//!
//! Every replica applies every batch, so each node judges only the batches
//! of the shards it leads: a series is watched by exactly one node at a
//! time, and no anomaly is raised twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use async_trait::async_trait;
use chronicle_actor_runtime::{guarded, Restarts};
use chronicle_auth::{Access, Authenticator};
use chronicle_bus::{Bus, Message as BusMessage};
use chronicle_cluster::feed::Applied;
use chronicle_cluster::state::StateStore;
use chronicle_cluster::ClusterNode;
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use crate::anomaly::Anomaly;
use crate::detector::{DetectorConfig, Event, SeriesDetector};
use crate::metrics;
use crate::watch::Watch;

const ACTOR: &str = "detector";
/// Anomaly records are kept this long (a lease on each key).
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[features.detect]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// What to watch; nothing by default.
    pub watch: Vec<Watch>,
    /// Series watched at most (each holds a few KiB); more are counted and
    /// left alone.
    pub max_series: usize,
    /// Samples in the recent window.
    pub window: usize,
    /// How often absences are checked, seconds.
    pub absent_check_secs: u64,
    /// How often the detectors' state is saved in the replicated state,
    /// seconds (a restart or a new leader goes on from the last save).
    pub checkpoint_secs: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            watch: Vec::new(),
            max_series: 10_000,
            window: 60,
            absent_check_secs: 10,
            checkpoint_secs: 300,
        }
    }
}

pub struct DetectFeature;

impl Feature for DetectFeature {
    fn name(&self) -> &'static str {
        "detect"
    }

    fn describe(&self) -> &'static str {
        "anomaly detection on watched series (spikes, dips, level shifts, trends, absences), published on <prefix>.anomaly.<metric>"
    }

    fn command(&self) -> Option<clap::Command> {
        use clap::Subcommand;
        Some(
            crate::cli::AnomaliesCommand::augment_subcommands(clap::Command::new("anomalies"))
                .about("List the anomalies the detectors found (or show one, evidence included)")
                .subcommand_required(true)
                .arg_required_else_help(true),
        )
    }

    fn run_command(&self, matches: &clap::ArgMatches) -> Result<(), FeatureError> {
        use clap::FromArgMatches;
        let command = crate::cli::AnomaliesCommand::from_arg_matches(matches)
            .map_err(|e| FeatureError::Command(e.to_string()))?;
        crate::cli::run(command).map_err(|e| FeatureError::Command(e.to_string()))
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![chronicle_platform::RouteAccess::prefix(
            "/api/anomalies",
            chronicle_platform::Access::Read,
        )]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: DetectConfig = chronicle_platform::parse_section("detect", section)?;
        let bad = |message: String| FeatureError::Config {
            feature: "detect",
            message,
        };
        if config.max_series == 0 || config.window < 10 || config.window > 10_000 {
            return Err(bad(
                "max_series must be at least 1 and window between 10 and 10000".into(),
            ));
        }
        if config.absent_check_secs == 0 || config.checkpoint_secs < 5 {
            return Err(bad(
                "absent_check_secs must be at least 1 and checkpoint_secs at least 5".into(),
            ));
        }
        let mut watches = Vec::new();
        for (i, w) in config.watch.iter().enumerate() {
            if w.metric.is_empty() || w.metric.len() > 256 {
                return Err(bad(format!(
                    "watch {i}: metric is a glob of 1 to 256 bytes"
                )));
            }
            let threshold = w.threshold.unwrap_or(DetectorConfig::default().threshold);
            if !(2.0..=100.0).contains(&threshold) {
                return Err(bad(format!("watch {i}: threshold between 2 and 100")));
            }
            let absent_after_ms = match &w.absent_after {
                None => 0,
                Some(d) => humantime::parse_duration(d)
                    .ok()
                    .and_then(|d| i64::try_from(d.as_millis()).ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        bad(format!(
                        "watch {i}: absent_after {d:?} is a duration like \"90s\", \"10m\", \"1h\""
                    ))
                    })?,
            };
            watches.push((
                w.clone(),
                DetectorConfig {
                    threshold,
                    window: config.window,
                    warmup: config.window / 2,
                    absent_after_ms,
                    ..DetectorConfig::default()
                },
            ));
        }
        Ok(Box::new(Plan { config, watches }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}.anomaly.>")]
    }
}

struct Plan {
    config: DetectConfig,
    watches: Vec<(Watch, DetectorConfig)>,
}

#[async_trait(?Send)]
impl Planned for Plan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        metrics::init();
        let records = Arc::new(Records {
            state: cx.state("detect")?,
            runtime: cx.cluster_runtime.clone(),
        });
        let env = Env {
            cluster: cx.cluster.clone(),
            bus: cx.bus.clone(),
            prefix: cx.prefix.clone(),
            records: records.clone(),
            watches: Arc::new(self.watches),
            max_series: self.config.max_series,
            absent_check: Duration::from_secs(self.config.absent_check_secs),
            checkpoint_every: Duration::from_secs(self.config.checkpoint_secs),
        };
        let (detector, arbiter) =
            cx.supervise(ACTOR, move |_, restarts| Detector::new(env, restarts));
        // Anomalies from other services: one node of the queue group takes each.
        let intake = actix::spawn(external_intake(
            cx.bus.clone(),
            cx.prefix.clone(),
            cx.auth.clone(),
            records.clone(),
        ));
        Ok(Arc::new(RunningDetect {
            records: web::Data::new(records),
            _detector: detector,
            arbiter: ArbiterSlot::new(arbiter),
            intake: parking_lot::Mutex::new(Some(intake)),
        }))
    }
}

/// Anomaly records in the replicated state: `anomaly/<id>`, ids starting
/// with the start time (13 digits of ms), so a scan runs in time order.
pub struct Records {
    state: StateStore,
    runtime: tokio::runtime::Handle,
}

fn record_key(id: &str) -> String {
    format!("anomaly/{id}")
}

fn checkpoint_key(shard: u32, part: usize) -> String {
    format!("checkpoint/{shard:05}/{part:05}")
}

/// A checkpoint part holds about this much at most (the state's values
/// are limited to 1 MiB).
const PART_BYTES: usize = 512 << 10;

impl Records {
    /// Runs a state call on the cluster's runtime (as every state client's
    /// calls run).
    async fn run<T, F>(&self, call: impl FnOnce(StateStore) -> F) -> Result<T, String>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, chronicle_cluster::ClusterError>>
            + Send
            + 'static,
    {
        chronicle_platform::on_cluster(&self.runtime, &self.state, call).await
    }

    async fn put(&self, anomaly: &Anomaly) -> Result<(), String> {
        let value = serde_json::to_vec(anomaly).map_err(|e| e.to_string())?;
        let key = record_key(&anomaly.id);
        self.run(move |s| async move { s.put_with_ttl(&key, value, KEEP).await })
            .await
            .map(|_| ())
    }

    /// Stores an anomaly from outside unless one with its id exists.
    async fn create(&self, anomaly: &Anomaly) -> Result<bool, String> {
        let value = serde_json::to_vec(anomaly).map_err(|e| e.to_string())?;
        let key = record_key(&anomaly.id);
        let created = self
            .run(move |s| async move { s.compare_and_set(&key, 0, value).await })
            .await?;
        Ok(created.is_ok())
    }

    /// Up to `limit` anomalies starting at or after `since` (ms), oldest
    /// first, that `keep` accepts; and whether more may follow.
    pub async fn list(
        &self,
        since: i64,
        limit: usize,
        keep: impl Fn(&Anomaly) -> bool,
    ) -> Result<(Vec<Anomaly>, bool), String> {
        let mut out = Vec::new();
        // Keys before this one start earlier than `since`.
        let mut after = Some(record_key(&format!("{:013}", since.max(0))));
        // Bounded work per request: at most this many records read.
        let mut budget = 20_000usize;
        loop {
            let from = after.clone();
            let (entries, more) = self
                .run(move |s| async move { s.scan("anomaly/", from.as_deref(), 500).await })
                .await?;
            budget = budget.saturating_sub(entries.len());
            for e in &entries {
                if let Ok(a) = serde_json::from_slice::<Anomaly>(&e.value) {
                    if a.start >= since && keep(&a) {
                        out.push(a);
                        if out.len() == limit {
                            return Ok((out, true));
                        }
                    }
                }
            }
            match (more, entries.last()) {
                (true, Some(last)) if budget > 0 => after = Some(last.key.clone()),
                (true, _) => return Ok((out, true)),
                _ => return Ok((out, false)),
            }
        }
    }

    /// Replaces shard `shard`'s checkpoint with `parts` (each under the
    /// state's value limit): parts written in turn, then the old ones past
    /// them removed. A series found in two parts (the split moved between
    /// saves) is restored from the newer form.
    async fn save_checkpoint(&self, shard: u32, parts: Vec<Vec<u8>>) -> Result<(), String> {
        let count = parts.len();
        self.run(move |state| async move {
            for (i, part) in parts.into_iter().enumerate() {
                state.put(&checkpoint_key(shard, i), part).await?;
            }
            // Parts of an earlier, longer checkpoint: those after ours.
            let prefix = format!("checkpoint/{shard:05}/");
            let last = count.checked_sub(1).map(|i| checkpoint_key(shard, i));
            let (old, _) = state.scan(&prefix, last.as_deref(), 1000).await?;
            for e in old {
                state.delete(&e.key).await?;
            }
            Ok(())
        })
        .await
    }

    async fn load_checkpoint(&self, shard: u32) -> Result<Vec<Vec<u8>>, String> {
        self.run(move |state| async move {
            let prefix = format!("checkpoint/{shard:05}/");
            let mut parts = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (entries, more) = state.scan(&prefix, after.as_deref(), 16).await?;
                after = entries.last().map(|e| e.key.clone());
                parts.extend(entries.into_iter().map(|e| e.value));
                if !more || after.is_none() {
                    return Ok(parts);
                }
            }
        })
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Anomaly>, String> {
        let key = record_key(id);
        let entry = self.run(move |s| async move { s.get(&key).await }).await?;
        Ok(entry.and_then(|e| serde_json::from_slice(&e.value).ok()))
    }
}

/// `<prefix>.anomaly.>` from other services: checked, authorized (with
/// authentication on, a token that may write, in the `Authorization`
/// header), stored once. A request gets `{"stored": bool}` or an error.
async fn external_intake(
    bus: Arc<dyn Bus>,
    prefix: String,
    auth: Arc<Authenticator>,
    records: Arc<Records>,
) {
    let mut sub = match bus
        .subscribe(&format!("{prefix}.anomaly.>"), Some("chronicle-detect"))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "detect: cannot take anomalies from other services");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let answer = intake_one(&msg, &auth, &records).await;
        if let Err((code, message)) = &answer {
            metrics::EXTERNAL.with_label_values(&["refused"]).inc();
            debug!(subject = %msg.subject, code, message = %message, "detect: an anomaly refused");
        }
        if let Some(reply) = msg.reply.clone() {
            let body = match answer {
                Ok(stored) => json!({ "stored": stored }),
                Err((code, message)) => json!({"code": code, "error": message}),
            };
            let _ = bus.publish(BusMessage::new(reply, body.to_string())).await;
        }
    }
}

async fn intake_one(
    msg: &BusMessage,
    auth: &Authenticator,
    records: &Records,
) -> Result<bool, (u16, String)> {
    // What the detectors publish comes back here: it is stored already.
    if msg.headers.get(ORIGIN_HEADER).is_some() {
        return Ok(false);
    }
    if auth.is_enabled() {
        let principal = auth
            .authenticate(msg.headers.get("Authorization").map(str::as_bytes))
            .map_err(|e| (e.status(), e.to_string()))?;
        principal
            .authorize(Access::Write, "detect")
            .map_err(|e| (e.status(), e.to_string()))?;
    }
    let anomaly = Anomaly::parse(&msg.payload).map_err(|e| (400, e.to_string()))?;
    let metric = msg.subject.rsplit('.').next().unwrap_or_default();
    if metric != anomaly.metric {
        return Err((
            400,
            format!(
                "the subject names metric {metric:?}, the anomaly {:?}",
                anomaly.metric
            ),
        ));
    }
    let stored = records.create(&anomaly).await.map_err(|e| (503, e))?;
    if stored {
        metrics::EXTERNAL.with_label_values(&["stored"]).inc();
    }
    Ok(stored)
}

/// Set on what the detectors publish (the node id), so the intake skips it.
pub const ORIGIN_HEADER: &str = "Chronicle-Detector";

struct RunningDetect {
    records: web::Data<Arc<Records>>,
    _detector: Addr<Detector>,
    arbiter: ArbiterSlot,
    intake: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait(?Send)]
impl Running for RunningDetect {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.records.clone())
            .route("/api/anomalies", web::get().to(list))
            .route("/api/anomalies/{id}", web::get().to(one));
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

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

/// Most anomalies one request lists.
pub const MAX_LIST: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Start at or after (ms); default: a day ago.
    since: Option<i64>,
    /// A metric glob.
    metric: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// `open`: only those not ended.
    state: Option<String>,
    limit: Option<usize>,
}

#[tracing::instrument(name = "anomalies_list", skip_all)]
async fn list(
    records: web::Data<Arc<Records>>,
    query: Result<web::Query<ListQuery>, actix_web::Error>,
) -> HttpResponse {
    let q = match query {
        Ok(q) => q.into_inner(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit: 1 to {MAX_LIST}"),
        );
    }
    if q.metric
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.len() > 256)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "metric: a glob of 1 to 256 bytes",
        );
    }
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => match crate::Kind::ALL.iter().find(|x| x.as_str() == k) {
            Some(k) => Some(*k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "type: spike, dip, level_shift, trend or absent",
                )
            }
        },
    };
    let open_only = match q.state.as_deref() {
        None | Some("all") => false,
        Some("open") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "bad_request", "state: open or all"),
    };
    let since = q.since.unwrap_or_else(|| now_ms() - 86_400_000);
    let metric = q.metric.clone();
    let keep = move |a: &Anomaly| {
        metric
            .as_deref()
            .is_none_or(|m| crate::watch::glob_matches(m, &a.metric))
            && kind.is_none_or(|k| a.kind == k)
            && (!open_only || a.end.is_none())
    };
    match records.list(since, limit, keep).await {
        Ok((anomalies, more)) => {
            HttpResponse::Ok().json(json!({"anomalies": anomalies, "more": more}))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

#[tracing::instrument(name = "anomalies_get", skip_all)]
async fn one(records: web::Data<Arc<Records>>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    if id.is_empty() || id.len() > 128 {
        return error(StatusCode::BAD_REQUEST, "bad_request", "an anomaly id");
    }
    match records.get(&id).await {
        Ok(Some(a)) => HttpResponse::Ok().json(a),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no anomaly {id}"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the detector actor is given.
#[derive(Clone)]
struct Env {
    cluster: Arc<ClusterNode>,
    bus: Arc<dyn Bus>,
    prefix: String,
    records: Arc<Records>,
    watches: Arc<Vec<(Watch, DetectorConfig)>>,
    max_series: usize,
    absent_check: Duration,
    checkpoint_every: Duration,
}

/// One watched series.
struct Tracked {
    metric: Arc<str>,
    labels: BTreeMap<String, String>,
    shard: u32,
    /// Which watch entry (its detector settings).
    watch: usize,
    detector: SeriesDetector,
}

/// The detector actor: judges the batches of the shards this node leads.
pub struct Detector {
    env: Env,
    restarts: Restarts,
    series: HashMap<u64, Tracked>,
    /// Series hashes known not to be watched (bounded like `series`).
    ignored: HashSet<u64>,
    subscribed: HashSet<u32>,
    scratch: Vec<f64>,
    /// Shards led here whose detectors are in memory (restored from their
    /// checkpoint when the lead came).
    active: HashSet<u32>,
    /// Shards whose checkpoint is loading, with the batches that came
    /// meanwhile (bounded).
    restoring: HashMap<u32, Vec<Arc<Applied>>>,
    checkpointing: bool,
}

/// Batches held per shard while its checkpoint loads.
const RESTORE_QUEUE: usize = 1024;

impl Detector {
    fn new(env: Env, restarts: Restarts) -> Self {
        Self {
            env,
            restarts,
            series: HashMap::new(),
            ignored: HashSet::new(),
            subscribed: HashSet::new(),
            scratch: Vec::new(),
            active: HashSet::new(),
            restoring: HashMap::new(),
            checkpointing: false,
        }
    }

    /// A batch of `shard`: judged when this node leads it, after its
    /// detectors were restored.
    fn on_batch(&mut self, batch: Arc<Applied>, ctx: &mut Context<Self>) {
        let shard = batch.shard;
        if self.env.watches.is_empty() {
            return;
        }
        if !self.env.cluster.leads(shard) {
            if self.active.remove(&shard) {
                // Another node leads it now and goes on from the checkpoint.
                self.series.retain(|_, t| t.shard != shard);
                metrics::SERIES.set(self.series.len() as i64);
            }
            return;
        }
        if self.active.contains(&shard) {
            self.judge(&batch);
            return;
        }
        if let Some(queue) = self.restoring.get_mut(&shard) {
            if queue.len() < RESTORE_QUEUE {
                queue.push(batch);
            } else {
                metrics::LAGGED.inc();
            }
            return;
        }
        self.restoring.insert(shard, vec![batch]);
        let records = self.env.records.clone();
        let fut = async move { records.load_checkpoint(shard).await };
        ctx.spawn(fut.into_actor(self).map(move |parts, act, _| {
            match parts {
                Ok(parts) => act.restore(shard, &parts),
                Err(e) => warn!(shard, error = %e, "detect: loading the checkpoint failed; learning afresh"),
            }
            act.active.insert(shard);
            for batch in act.restoring.remove(&shard).unwrap_or_default() {
                act.judge(&batch);
            }
        }));
    }

    /// Puts the series of `parts` back (those not in memory, or older here).
    fn restore(&mut self, shard: u32, parts: &[Vec<u8>]) {
        let mut restored = 0usize;
        for part in parts {
            let mut r = crate::checkpoint::Reader(part);
            while !r.0.is_empty() {
                match read_tracked(&mut r, &self.env.watches, shard) {
                    Ok(Some((key, t))) => {
                        let newer = self
                            .series
                            .get(&key)
                            .is_none_or(|have| have.detector.last_ms() < t.detector.last_ms());
                        if newer
                            && (self.series.len() < self.env.max_series
                                || self.series.contains_key(&key))
                        {
                            self.series.insert(key, t);
                            restored += 1;
                        }
                    }
                    // No watch matches it any more.
                    Ok(None) => {}
                    Err(e) => {
                        warn!(shard, error = %e, "detect: a checkpoint part is corrupt; its rest is skipped");
                        break;
                    }
                }
            }
        }
        metrics::SERIES.set(self.series.len() as i64);
        debug!(shard, restored, "detect: restored from the checkpoint");
    }

    /// Saves the detectors of the shards led here.
    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        if self.checkpointing || self.active.is_empty() {
            return;
        }
        let mut by_shard: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for shard in &self.active {
            if self.env.cluster.leads(*shard) {
                by_shard.insert(*shard, vec![Vec::new()]);
            }
        }
        let mut buf = Vec::new();
        for (key, t) in &self.series {
            let Some(parts) = by_shard.get_mut(&t.shard) else {
                continue;
            };
            buf.clear();
            write_tracked(&mut buf, *key, t);
            if parts
                .last()
                .is_some_and(|p| p.len() + buf.len() > PART_BYTES)
            {
                parts.push(Vec::new());
            }
            parts
                .last_mut()
                .expect("one part at least")
                .extend_from_slice(&buf);
        }
        self.checkpointing = true;
        let records = self.env.records.clone();
        let fut = async move {
            for (shard, parts) in by_shard {
                let parts: Vec<Vec<u8>> = parts.into_iter().filter(|p| !p.is_empty()).collect();
                let bytes: usize = parts.iter().map(Vec::len).sum();
                match records.save_checkpoint(shard, parts).await {
                    Ok(()) => metrics::CHECKPOINT_BYTES.inc_by(bytes as u64),
                    Err(e) => warn!(shard, error = %e, "detect: saving the checkpoint failed"),
                }
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|_, act, _| act.checkpointing = false),
        );
    }

    /// Subscribes to the batches of shards this node holds and does not
    /// follow yet (replicas come and go with scaling).
    fn follow_shards(&mut self, ctx: &mut Context<Self>) {
        // Nothing watched: no batch needs to reach the actor.
        if self.env.watches.is_empty() {
            return;
        }
        for shard in 0..self.env.cluster.shards() {
            if self.subscribed.contains(&shard) {
                continue;
            }
            let Some(mut batches) = self.env.cluster.applied_batches(shard) else {
                continue;
            };
            self.subscribed.insert(shard);
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
        }
    }

    fn judge(&mut self, batch: &Applied) {
        let Ok(view) = batch.points.view() else {
            return;
        };
        // The watched points, by series and time (a batch need not be).
        let mut watched: Vec<(u64, i64, f64)> = Vec::new();
        for p in view.iter() {
            let mut h = xxhash_rust::xxh64::Xxh64::new(0);
            h.update(p.metric.as_bytes());
            for l in p.labels {
                h.update(&[0xff]);
                h.update(l.name.as_bytes());
                h.update(&[0xfe]);
                h.update(l.value.as_bytes());
            }
            let key = h.digest();
            if !self.series.contains_key(&key) {
                if self.ignored.contains(&key) {
                    continue;
                }
                let watch = self.env.watches.iter().position(|(w, _)| {
                    w.matches(p.metric, |name| {
                        p.labels.iter().find(|l| l.name == name).map(|l| l.value)
                    })
                });
                let Some(watch) = watch else {
                    if self.ignored.len() < 4 * self.env.max_series {
                        self.ignored.insert(key);
                    }
                    continue;
                };
                if self.series.len() >= self.env.max_series {
                    metrics::REFUSED_SERIES.inc();
                    continue;
                }
                self.series.insert(
                    key,
                    Tracked {
                        metric: Arc::from(p.metric),
                        labels: p
                            .labels
                            .iter()
                            .map(|l| (l.name.to_string(), l.value.to_string()))
                            .collect(),
                        shard: batch.shard,
                        watch,
                        detector: SeriesDetector::new(),
                    },
                );
                metrics::SERIES.set(self.series.len() as i64);
            }
            watched.push((key, p.timestamp.div_euclid(1_000_000), p.value));
        }
        metrics::POINTS.inc_by(view.len() as u64);
        watched.sort_by_key(|w| (w.0, w.1));
        let mut events = Vec::new();
        for (key, t_ms, value) in watched {
            let Some(t) = self.series.get_mut(&key) else {
                continue;
            };
            let config = &self.env.watches[t.watch].1;
            if let Some(e) = t.detector.observe(config, t_ms, value, &mut self.scratch) {
                events.push((key, e));
            }
        }
        for (key, e) in events {
            self.raise(key, e);
        }
    }

    /// Stores and publishes an episode's change.
    fn raise(&mut self, key: u64, event: Event) {
        let Some(t) = self.series.get(&key) else {
            return;
        };
        let (episode, what) = match &event {
            Event::Opened(e) => (e, "opened"),
            Event::Updated(e) => (e, "updated"),
            Event::Closed(e) => (e, "closed"),
        };
        if what == "opened" {
            metrics::ANOMALIES
                .with_label_values(&[episode.kind.as_str()])
                .inc();
        }
        let anomaly = Anomaly::from_episode(&t.metric, t.labels.clone(), key, episode);
        let (records, bus) = (self.env.records.clone(), self.env.bus.clone());
        let subject = format!("{}.anomaly.{}", self.env.prefix, t.metric);
        let node = self.env.cluster.node_id().to_string();
        actix::spawn(chronicle_actor_runtime::guard_future(ACTOR, async move {
            if let Err(e) = records.put(&anomaly).await {
                warn!(id = %anomaly.id, error = %e, "detect: storing an anomaly failed");
            }
            let body = serde_json::to_vec(&anomaly).unwrap_or_default();
            let message = BusMessage::new(subject, body).with_header(ORIGIN_HEADER, node);
            if let Err(e) = bus.publish(message).await {
                debug!(error = %e, "detect: publishing an anomaly failed");
            }
        }));
    }

    fn check_absences(&mut self) {
        let now = now_ms();
        let mut events = Vec::new();
        for (key, t) in self.series.iter_mut() {
            let config = &self.env.watches[t.watch].1;
            if config.absent_after_ms == 0
                || !self.active.contains(&t.shard)
                || !self.env.cluster.leads(t.shard)
            {
                continue;
            }
            if let Some(e) = t.detector.tick(config, now) {
                events.push((*key, e));
            }
        }
        for (key, e) in events {
            self.raise(key, e);
        }
    }
}

impl Actor for Detector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.follow_shards(ctx);
        ctx.run_interval(Duration::from_secs(5), |act, ctx| act.follow_shards(ctx));
        ctx.run_interval(self.env.absent_check, |act, ctx| {
            guarded(ACTOR, act, ctx, |act, _| act.check_absences());
        });
        ctx.run_interval(self.env.checkpoint_every, |act, ctx| {
            guarded(ACTOR, act, ctx, |act, ctx| act.checkpoint(ctx));
        });
    }
}

impl Supervised for Detector {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // The batch that panicked is not judged again; the subscriptions
        // are made anew, and the detectors restored from the checkpoint.
        self.subscribed.clear();
        self.active.clear();
        self.restoring.clear();
        self.series.clear();
        self.checkpointing = false;
        self.restarts.pause(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Batch(Arc<Applied>);

impl Handler<Batch> for Detector {
    type Result = ();

    fn handle(&mut self, msg: Batch, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| act.on_batch(msg.0, ctx));
    }
}

/// A shard's replica left this node.
#[derive(Message)]
#[rtype(result = "()")]
struct Unfollow(u32);

impl Handler<Unfollow> for Detector {
    type Result = ();

    fn handle(&mut self, msg: Unfollow, _: &mut Context<Self>) {
        self.subscribed.remove(&msg.0);
        self.active.remove(&msg.0);
        self.series.retain(|_, t| t.shard != msg.0);
        metrics::SERIES.set(self.series.len() as i64);
    }
}

/// One series in a checkpoint: key, metric, labels, detector.
fn write_tracked(out: &mut Vec<u8>, key: u64, t: &Tracked) {
    let mut w = crate::checkpoint::Writer(std::mem::take(out));
    w.u64(key);
    w.bytes(t.metric.as_bytes());
    w.u32(t.labels.len() as u32);
    for (k, v) in &t.labels {
        w.bytes(k.as_bytes());
        w.bytes(v.as_bytes());
    }
    let mut detector = Vec::new();
    t.detector.encode(&mut detector);
    w.bytes(&detector);
    *out = w.0;
}

/// Reads one series back; `None` when no watch matches it any more.
fn read_tracked(
    r: &mut crate::checkpoint::Reader,
    watches: &[(Watch, DetectorConfig)],
    shard: u32,
) -> Result<Option<(u64, Tracked)>, crate::checkpoint::CheckpointError> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| crate::checkpoint::CheckpointError("text is not UTF-8".into()))
    };
    let key = r.u64("series key")?;
    let metric = text(r.bytes("metric")?)?;
    let n = r.count(8, crate::anomaly::MAX_LABELS * 4, "labels")?;
    let mut labels = BTreeMap::new();
    for _ in 0..n {
        let k = text(r.bytes("label")?)?;
        let v = text(r.bytes("label")?)?;
        labels.insert(k, v);
    }
    let detector = r.bytes("detector")?;
    let Some(watch) = watches
        .iter()
        .position(|(w, _)| w.matches(&metric, |name| labels.get(name).map(String::as_str)))
    else {
        return Ok(None);
    };
    let detector = SeriesDetector::decode(detector, &watches[watch].1)?;
    Ok(Some((
        key,
        Tracked {
            metric: Arc::from(metric.as_str()),
            labels,
            shard,
            watch,
            detector,
        },
    )))
}

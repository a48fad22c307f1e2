//! The remediation feature: a supervised actor follows the stored anomalies
//! (the detector's namespace of the replicated state, through its change
//! feed), decides with [`Ledger::decide`] under compare-and-set (so exactly
//! one node acts on each anomaly and the limits hold cluster-wide), runs
//! the actions, queues the risky ones for approval and records every step
//! in an audit trail; `/api/remediation/*` serves it.
//!
//! State (namespace `remediation`): `action/<id>`, `rule/<id>` (JSON),
//! `ledger` (the [`Ledger`]), `pending/<id>` (an approval, with the TTL of
//! its expiry), `audit/<ms>-<node>-<n>` (records, kept 90 days).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use async_trait::async_trait;
use chronicle_actor_runtime::Restarts;
use chronicle_auth::Principal;
use chronicle_bus::{Bus, Message as BusMessage};
use chronicle_cluster::state::StateStore;
use chronicle_detect::anomaly::Anomaly;
use chronicle_platform::settings::{Settings, SettingsError};
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use chronicle_query::{QueryActor, QueryRequest, RunQuery};
use chronicle_storage::state::ChangeKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::learn::{Facts, Learning, Model, NotEnough, Ranked};
use crate::model::{Action, ActionKind, Rule, Safety};
use crate::policy::{Decision, Ledger, Outcome};
use crate::webhook::{self, WebhookPolicy};
use crate::RemediationError;

const ACTOR: &str = "remediation";
/// Audit records are kept this long.
const AUDIT_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Actions and rules in the registry at most (each).
pub const MAX_REGISTRY: usize = 1000;
/// Records one audit request returns at most.
pub const MAX_LIST: usize = 1000;
/// What a query action's result may add to its audit record.
const MAX_QUERY_RESULT: usize = 16 << 10;

/// `[features.remediation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediationConfig {
    pub safety: Safety,
    pub webhooks: WebhookPolicy,
    /// Webhook secrets by name: files holding them (read at start).
    pub secrets: BTreeMap<String, std::path::PathBuf>,
    /// Scale and restart actions: the Kubernetes API to use.
    pub kubernetes: KubeSettings,
    /// Outcomes and the recommender.
    pub learning: Learning,
    /// Actions and rules stored at start when the state has none of that id.
    pub actions: Vec<Action>,
    pub rules: Vec<Rule>,
}

/// `[features.remediation.kubernetes]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSettings {
    /// Scale and restart actions are allowed (the node reaches a
    /// Kubernetes API: in a pod, or through `kubeconfig`).
    pub enabled: bool,
    /// A kubeconfig file; unset: $KUBECONFIG, ~/.kube/config, or the pod's
    /// service account. Connected at the first action that needs it.
    pub kubeconfig: Option<std::path::PathBuf>,
}

pub struct RemediationFeature;

/// Kinds whose effect this node carries out; the others are refused when
/// registered rather than accepted and not done.
fn available(kind: &ActionKind, kubernetes: bool) -> Result<(), RemediationError> {
    match kind {
        ActionKind::Webhook { .. }
        | ActionKind::Alert { .. }
        | ActionKind::Query { .. }
        | ActionKind::Config { .. } => Ok(()),
        ActionKind::Scale { .. } | ActionKind::Restart { .. } if kubernetes => Ok(()),
        ActionKind::Scale { .. } | ActionKind::Restart { .. } => {
            Err(RemediationError::Invalid(format!(
                "{} actions need [features.remediation.kubernetes] enabled = true",
                kind.name()
            )))
        }
    }
}

impl Feature for RemediationFeature {
    fn name(&self) -> &'static str {
        "remediation"
    }

    fn describe(&self) -> &'static str {
        "rules over anomalies run actions (webhook, alert, query) within rate limits, approvals and circuit breakers, with an audit trail"
    }

    fn command(&self) -> Option<clap::Command> {
        use clap::Subcommand;
        Some(
            crate::cli::RemediationCommand::augment_subcommands(clap::Command::new("remediation"))
                .about("Remediation through a node: actions, rules, pending approvals, the audit trail, rollbacks, outcomes and recommended actions")
                .subcommand_required(true)
                .arg_required_else_help(true),
        )
    }

    fn run_command(&self, matches: &clap::ArgMatches) -> Result<(), FeatureError> {
        use clap::FromArgMatches;
        let command = crate::cli::RemediationCommand::from_arg_matches(matches)
            .map_err(|e| FeatureError::Command(e.to_string()))?;
        crate::cli::run(command).map_err(|e| FeatureError::Command(e.to_string()))
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![
            // Reading rules, pending approvals and the audit trail; changing
            // the registry, approving, rejecting: an admin's (they act on
            // systems).
            chronicle_platform::RouteAccess::prefix(
                "/api/remediation/",
                chronicle_platform::Access::Read,
            )
            .methods(chronicle_platform::Methods::Get),
            chronicle_platform::RouteAccess::prefix(
                "/api/remediation/",
                chronicle_platform::Access::Admin,
            )
            .methods(chronicle_platform::Methods::NotGet),
        ]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: RemediationConfig = chronicle_platform::parse_section("remediation", section)?;
        let bad = |message: String| FeatureError::Config {
            feature: "remediation",
            message,
        };
        config.learning.check().map_err(|e| bad(e.to_string()))?;
        if config.webhooks.attempts == 0 || config.webhooks.attempts > 10 {
            return Err(bad("webhooks.attempts: 1 to 10".into()));
        }
        for a in &config.actions {
            a.check()
                .and_then(|()| available(&a.kind, config.kubernetes.enabled))
                .map_err(|e| bad(format!("action {}: {e}", a.id)))?;
        }
        for r in &config.rules {
            r.check().map_err(|e| bad(format!("rule {}: {e}", r.id)))?;
        }
        let mut secrets = BTreeMap::new();
        for (name, path) in &config.secrets {
            if !crate::model::valid_id(name) {
                return Err(bad(format!(
                    "secret name {name:?}: letters, digits, '-', '_', '.'"
                )));
            }
            let bytes = std::fs::read(path)
                .map_err(|e| bad(format!("secret {name}: {}: {e}", path.display())))?;
            let trimmed = bytes.trim_ascii().to_vec();
            if trimmed.len() < 16 || trimmed.len() > 4096 {
                return Err(bad(format!(
                    "secret {name}: 16 to 4096 bytes (a webhook receiver checks the signature with it)"
                )));
            }
            secrets.insert(name.clone(), trimmed);
        }
        Ok(Box::new(Plan { config, secrets }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}.remediation.>")]
    }
}

struct Plan {
    config: RemediationConfig,
    secrets: BTreeMap<String, Vec<u8>>,
}

#[async_trait(?Send)]
impl Planned for Plan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        LazyLock::force(&EVENTS);
        let engine = Arc::new(Engine {
            state: cx.state("remediation")?,
            anomalies: cx.state("detect")?,
            runtime: cx.cluster_runtime.clone(),
            bus: cx.bus.clone(),
            prefix: cx.prefix.clone(),
            node: cx.node_id,
            safety: self.config.safety.clone(),
            webhooks: self.config.webhooks.clone(),
            secrets: self.secrets,
            query: cx.services.get::<Addr<QueryActor>>().map(|a| (*a).clone()),
            settings: cx.services.get::<Settings>().map(|s| (*s).clone()),
            next: AtomicU64::new(0),
            configured: (self.config.actions, self.config.rules),
            kubernetes: self.config.kubernetes,
            kube: tokio::sync::OnceCell::new(),
            learning: self.config.learning,
            model: tokio::sync::Mutex::new(None),
        });
        let for_actor = engine.clone();
        let (addr, arbiter) = cx.supervise(ACTOR, move |_, restarts| Remediator {
            engine: for_actor,
            restarts,
            follow: None,
        });
        Ok(Arc::new(RunningRemediation {
            engine: web::Data::new(engine),
            _actor: addr,
            arbiter: ArbiterSlot::new(arbiter),
        }))
    }
}

/// Audited events by kind and outcome (`chronicle_remediation_events_total`).
static EVENTS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "chronicle_remediation_events_total",
            "Remediation's audited events by event (evaluated, executed, queued, approved, rejected, outcome, rolled_back) and outcome",
        ),
        &["event", "outcome"],
    )
    .expect("static metric definition");
    chronicle_actor_runtime::register(Box::new(c.clone()));
    c
});

/// Counts an audit record; unknown words count as `other` (the label
/// values stay a fixed set).
fn count_event(record: &AuditRecord) {
    const EVENTS_KNOWN: &[&str] = &[
        "evaluated",
        "executed",
        "queued",
        "approved",
        "rejected",
        "outcome",
        "rolled_back",
    ];
    const OUTCOMES_KNOWN: &[&str] = &[
        "execute",
        "await_approval",
        "dry_run",
        "held",
        "ok",
        "failed",
        "rejected",
        "recovered",
        "not_recovered",
        "ended_before",
        "none",
    ];
    let pick = |v: &str, known: &[&'static str]| -> &'static str {
        known.iter().find(|k| **k == v).copied().unwrap_or("other")
    };
    let event = pick(&record.event, EVENTS_KNOWN);
    let outcome = pick(record.outcome.as_deref().unwrap_or("none"), OUTCOMES_KNOWN);
    EVENTS.with_label_values(&[event, outcome]).inc();
}

/// One step of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    pub at_ms: i64,
    pub node: u64,
    /// `evaluated`, `executed`, `queued`, `approved`, `rejected`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `execute`, `await_approval`, `dry_run`, `held`, `ok`, `failed`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default)]
    pub detail: Value,
}

/// An action waiting for an approval (`pending/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    pub id: String,
    pub rule: String,
    pub action: String,
    pub anomaly: Anomaly,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// What every node's remediation shares: the state and the effects.
pub struct Engine {
    state: StateStore,
    anomalies: StateStore,
    runtime: tokio::runtime::Handle,
    bus: Arc<dyn Bus>,
    prefix: String,
    node: u64,
    safety: Safety,
    webhooks: WebhookPolicy,
    secrets: BTreeMap<String, Vec<u8>>,
    query: Option<Addr<QueryActor>>,
    /// The node's config API (config actions).
    settings: Option<Settings>,
    next: AtomicU64,
    /// Actions and rules of the config, stored when absent.
    configured: (Vec<Action>, Vec<Rule>),
    kubernetes: KubeSettings,
    /// Connected at the first scale or restart.
    kube: tokio::sync::OnceCell<crate::kube::Kube>,
    learning: Learning,
    /// The recommender, with the outcomes it was trained on (newest key and
    /// count): trained again when they change.
    model: tokio::sync::Mutex<Option<(HistoryKey, Trained)>>,
}

/// The outcomes a model was trained on: the newest one's id, and how many.
type HistoryKey = (String, usize);
/// A model, or why there is none.
type Trained = Arc<Result<Model, NotEnough>>;

/// An executed action followed for its outcome (`track/<audit id>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracking {
    record: String,
    action: String,
    anomaly: Anomaly,
    executed_ms: i64,
    due_ms: i64,
}

/// What the recommender says about one anomaly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// `ok` or `not_enough_history`.
    pub status: &'static str,
    pub recommendations: Vec<Ranked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_on: Option<usize>,
    /// With `not_enough_history`: resolved outcomes there are and needed,
    /// and how many actions they name (two at least).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub have: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need: Option<usize>,
    /// With `not_enough_history`: why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What processing an anomaly gave: the recommender's ranking, and the
/// decisions (actions taken, queued, held).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Processed {
    pub recommendation: Option<Recommendation>,
    pub decisions: Vec<Decision>,
}

/// How often each node looks for the outcomes of the actions run.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Outcomes are kept this long (the recommender's history).
const OUTCOME_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Outcomes scanned at most when training.
const MAX_OUTCOME_SCAN: usize = 20_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Execute => "execute",
        Outcome::AwaitApproval { .. } => "await_approval",
        Outcome::DryRun => "dry_run",
        Outcome::Held(_) => "held",
    }
}

/// Why an engine call failed, for the routes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<RemediationError> for EngineError {
    fn from(e: RemediationError) -> Self {
        match e {
            RemediationError::Invalid(m) | RemediationError::Forbidden(m) => {
                EngineError::Invalid(m)
            }
            RemediationError::Action(m) => EngineError::Unavailable(m),
        }
    }
}

impl Engine {
    /// Runs a state call on the cluster's runtime.
    async fn run<T, F>(&self, call: impl FnOnce(StateStore) -> F) -> Result<T, String>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, chronicle_cluster::ClusterError>>
            + Send
            + 'static,
    {
        chronicle_platform::on_cluster(&self.runtime, &self.state, call).await
    }

    /// Stores the configured actions and rules that the state lacks (what
    /// the API changed since stays).
    async fn seed(&self) -> Result<(), String> {
        let (actions, rules) = &self.configured;
        let entries = actions
            .iter()
            .map(|a| (format!("action/{}", a.id), serde_json::to_vec(a)))
            .chain(
                rules
                    .iter()
                    .map(|r| (format!("rule/{}", r.id), serde_json::to_vec(r))),
            );
        for (key, value) in entries {
            let value = value.expect("the registry serializes");
            // Err(revision): it exists; kept.
            let _stored_or_kept = self
                .run(move |s| async move { s.compare_and_set(&key, 0, value).await })
                .await?;
        }
        Ok(())
    }

    /// Every entry under `prefix`, parsed (at most [`MAX_REGISTRY`]).
    async fn registry<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &'static str,
    ) -> Result<Vec<T>, String> {
        let (entries, _) = self
            .run(move |s| async move { s.scan(prefix, None, MAX_REGISTRY).await })
            .await?;
        Ok(entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect())
    }

    async fn actions(&self) -> Result<BTreeMap<String, Action>, String> {
        Ok(self
            .registry::<Action>("action/")
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect())
    }

    async fn rules(&self) -> Result<Vec<Rule>, String> {
        self.registry("rule/").await
    }

    async fn ledger(&self) -> Result<(Ledger, u64), String> {
        let entry = self.run(|s| async move { s.get("ledger").await }).await?;
        Ok(match entry {
            Some(e) => (
                serde_json::from_slice(&e.value).map_err(|e| format!("the stored ledger: {e}"))?,
                e.revision,
            ),
            None => (Ledger::default(), 0),
        })
    }

    /// Changes the ledger with `change` under compare-and-set (read again
    /// and retried when another node changed it meanwhile); returns what
    /// `change` returned for the version that was stored.
    async fn with_ledger<T>(
        &self,
        mut change: impl FnMut(&mut Ledger) -> Option<T>,
    ) -> Result<Option<T>, String> {
        for _ in 0..32 {
            let (mut ledger, revision) = self.ledger().await?;
            let Some(out) = change(&mut ledger) else {
                return Ok(None);
            };
            let value = serde_json::to_vec(&ledger).expect("the ledger serializes");
            let stored = self
                .run(move |s| async move { s.compare_and_set("ledger", revision, value).await })
                .await?;
            if stored.is_ok() {
                return Ok(Some(out));
            }
        }
        Err("the ledger kept changing under this node; try again".into())
    }

    async fn audit(&self, mut record: AuditRecord) -> String {
        count_event(&record);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        record.id = format!("{:013}-{}-{n}", record.at_ms.max(0), self.node);
        record.node = self.node;
        let key = format!("audit/{}", record.id);
        let value = serde_json::to_vec(&record).expect("an audit record serializes");
        if let Err(e) = self
            .run(move |s| async move { s.put_with_ttl(&key, value, AUDIT_TTL).await })
            .await
        {
            warn!(error = %e, "remediation: an audit record was not stored");
        }
        let subject = format!("{}.remediation.{}", self.prefix, record.event);
        let payload = serde_json::to_vec(&record).expect("an audit record serializes");
        if let Err(e) = self.bus.publish(BusMessage::new(subject, payload)).await {
            debug!(error = %e, "remediation: event not published");
        }
        record.id
    }

    fn record(&self, event: &str, anomaly: Option<&Anomaly>) -> AuditRecord {
        AuditRecord {
            id: String::new(),
            at_ms: now_ms(),
            node: self.node,
            event: event.into(),
            anomaly: anomaly.map(|a| a.id.clone()),
            metric: anomaly.map(|a| a.metric.clone()),
            rule: None,
            action: None,
            outcome: None,
            principal: None,
            detail: Value::Null,
        }
    }

    /// Decides what `anomaly` calls for and acts on it; a node that finds
    /// it decided already (another node won the ledger) does nothing.
    pub async fn process(&self, anomaly: &Anomaly) -> Result<Processed, String> {
        let (actions, rules) = (self.actions().await?, self.rules().await?);
        if !rules.iter().any(|r| r.applies(anomaly, now_ms())) {
            return Ok(Processed {
                recommendation: None,
                decisions: Vec::new(),
            });
        }
        let safety = self.safety.clone();
        let decided = self
            .with_ledger(|ledger| {
                let d = ledger.decide(anomaly, &rules, &actions, &safety, now_ms());
                (!d.is_empty()).then_some(d)
            })
            .await?
            .unwrap_or_default();
        if decided.is_empty() {
            // Another node decided (or nothing is due): it reports.
            return Ok(Processed {
                recommendation: None,
                decisions: decided,
            });
        }
        let recommendation = match self.recommend(anomaly).await {
            Ok(r) => Some(r),
            Err(e) => {
                debug!(error = %e, "remediation: no recommendation");
                None
            }
        };
        let mut evaluated = self.record("evaluated", Some(anomaly));
        evaluated.detail = json!({"anomaly": anomaly, "decisions": decided,
                                  "recommendation": recommendation});
        self.audit(evaluated).await;
        for d in &decided {
            let Some(action) = actions.get(&d.action) else {
                continue;
            };
            let rule = d.rule.as_str();
            match &d.outcome {
                Outcome::Execute => self.execute(action, rule, anomaly, None).await,
                Outcome::AwaitApproval { expires_ms } => {
                    self.queue(action, rule, anomaly, *expires_ms).await
                }
                Outcome::DryRun | Outcome::Held(_) => {}
            }
        }
        Ok(Processed {
            recommendation,
            decisions: decided,
        })
    }

    async fn queue(&self, action: &Action, rule: &str, anomaly: &Anomaly, expires_ms: i64) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let pending = PendingApproval {
            id: format!("{}-{}-{n}", now_ms(), self.node),
            rule: rule.into(),
            action: action.id.clone(),
            anomaly: anomaly.clone(),
            created_ms: now_ms(),
            expires_ms,
        };
        let ttl = Duration::from_millis(u64::try_from(expires_ms - now_ms()).unwrap_or(1).max(1));
        let key = format!("pending/{}", pending.id);
        let value = serde_json::to_vec(&pending).expect("an approval serializes");
        let stored = self
            .run(move |s| async move { s.put_with_ttl(&key, value, ttl).await })
            .await;
        let mut record = self.record("queued", Some(anomaly));
        record.rule = Some(rule.into());
        record.action = Some(action.id.clone());
        record.outcome = Some(
            if stored.is_ok() {
                "await_approval"
            } else {
                "failed"
            }
            .into(),
        );
        record.detail = json!({"approval": pending.id, "expires_ms": expires_ms,
                               "error": stored.err()});
        self.audit(record).await;
    }

    /// Runs an action and records how it went (and its breaker).
    async fn execute(
        &self,
        action: &Action,
        rule: &str,
        anomaly: &Anomaly,
        principal: Option<&str>,
    ) {
        let started = std::time::Instant::now();
        let result = self.effect(action, rule, anomaly).await;
        let ok = result.as_ref().is_ok_and(|(ok, _)| *ok);
        let safety = self.safety.clone();
        if let Err(e) = self
            .with_ledger(|ledger| {
                ledger.record(&action.id, ok, &safety, now_ms());
                Some(())
            })
            .await
        {
            warn!(error = %e, action = %action.id, "remediation: the breaker's outcome was not stored");
        }
        let mut record = self.record("executed", Some(anomaly));
        record.rule = Some(rule.into());
        record.action = Some(action.id.clone());
        record.outcome = Some(if ok { "ok" } else { "failed" }.into());
        record.principal = principal.map(str::to_string);
        record.detail = match result {
            Ok((_, detail)) => json!({"type": action.kind.name(), "result": detail,
                                      "seconds": started.elapsed().as_secs_f64()}),
            Err(e) => json!({"type": action.kind.name(), "error": e.to_string(),
                             "seconds": started.elapsed().as_secs_f64()}),
        };
        info!(action = %action.id, rule, ok, "remediation: action executed");
        let executed_ms = record.at_ms;
        let id = self.audit(record).await;
        if ok {
            self.track(id, action, anomaly, executed_ms).await;
        }
    }

    /// Follows an action that ran for its outcome: did its anomaly end
    /// within the recovery window ([`Engine::sweep`] finds out).
    async fn track(&self, record: String, action: &Action, anomaly: &Anomaly, executed_ms: i64) {
        let window = self.learning.recovery_window;
        let tracking = Tracking {
            record: record.clone(),
            action: action.id.clone(),
            anomaly: anomaly.clone(),
            executed_ms,
            due_ms: executed_ms + window.as_millis() as i64,
        };
        let key = format!("track/{record}");
        let value = serde_json::to_vec(&tracking).expect("JSON");
        // Outlives the window so a node that was down still sweeps it.
        let ttl = window + Duration::from_secs(86_400);
        if let Err(e) = self
            .run(move |s| async move { s.put_with_ttl(&key, value, ttl).await })
            .await
        {
            warn!(error = %e, "remediation: an outcome will not be learned (not tracked)");
        }
    }

    /// The detector's stored anomaly `id`, as stored.
    async fn anomaly(
        &self,
        id: &str,
    ) -> Result<Option<chronicle_storage::state::StateEntry>, String> {
        let key = format!("anomaly/{id}");
        chronicle_platform::on_cluster(&self.runtime, &self.anomalies, |s| async move {
            s.get(&key).await
        })
        .await
    }

    /// Settles the tracked actions whose anomaly ended or whose window
    /// passed: each once in the cluster (taken by compare-and-delete),
    /// stored as an outcome and recorded in the audit trail.
    pub async fn sweep(&self) -> Result<usize, String> {
        let (entries, _) = self
            .run(|s| async move { s.scan("track/", None, 1000).await })
            .await?;
        let mut settled = 0;
        for entry in entries {
            let Ok(t) = serde_json::from_slice::<Tracking>(&entry.value) else {
                continue;
            };
            let stored = self.anomaly(&t.anomaly.id).await?;
            let ended = stored
                .and_then(|e| Anomaly::parse(&e.value).ok())
                .and_then(|a| a.end)
                .or(t.anomaly.end);
            let now = now_ms();
            if ended.is_none() && now < t.due_ms {
                continue;
            }
            let (k, revision) = (entry.key.clone(), entry.revision);
            let taken = self
                .run(move |s| async move { s.compare_and_delete(&k, revision).await })
                .await?;
            if taken.is_err() {
                continue;
            }
            let outcome = crate::learn::Outcome {
                id: t.record.clone(),
                anomaly: t.anomaly.id.clone(),
                metric: t.anomaly.metric.clone(),
                kind: t.anomaly.kind,
                severity: t.anomaly.severity,
                score: t.anomaly.score,
                labels: t.anomaly.labels.clone(),
                action: t.action.clone(),
                executed_ms: t.executed_ms,
                checked_ms: now,
                recovered: ended.is_some_and(|e| e <= t.due_ms),
                ended_before: ended.is_some_and(|e| e < t.executed_ms),
                ended_ms: ended,
            };
            let key = format!("outcome/{}", t.record);
            let value = serde_json::to_vec(&outcome).expect("JSON");
            self.run(move |s| async move { s.put_with_ttl(&key, value, OUTCOME_TTL).await })
                .await?;
            let mut record = self.record("outcome", Some(&t.anomaly));
            record.action = Some(t.action.clone());
            record.outcome = Some(
                if outcome.ended_before {
                    "ended_before"
                } else if outcome.recovered {
                    "recovered"
                } else {
                    "not_recovered"
                }
                .into(),
            );
            record.detail = json!({"of": t.record, "executed_ms": t.executed_ms,
                                   "ended_ms": ended, "due_ms": t.due_ms});
            self.audit(record).await;
            settled += 1;
        }
        Ok(settled)
    }

    /// Outcomes at or after `since` (ms), oldest first, at most `limit`;
    /// and whether more may follow.
    pub async fn outcomes(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<(Vec<crate::learn::Outcome>, bool), String> {
        let mut out = Vec::new();
        let mut after = Some(format!("outcome/{:013}", since.max(0)));
        loop {
            let from = after.clone();
            let (entries, more) = self
                .run(move |s| async move { s.scan("outcome/", from.as_deref(), 1000).await })
                .await?;
            out.extend(
                entries
                    .iter()
                    .filter_map(|e| serde_json::from_slice::<crate::learn::Outcome>(&e.value).ok())
                    .filter(|o| o.executed_ms >= since),
            );
            if out.len() >= limit {
                out.truncate(limit);
                return Ok((out, true));
            }
            match (more, entries.last()) {
                (true, Some(last)) => after = Some(last.key.clone()),
                _ => return Ok((out, false)),
            }
        }
    }

    /// The recommender's ranking of the registered actions for `anomaly`.
    pub async fn recommend(&self, anomaly: &Anomaly) -> Result<Recommendation, String> {
        let model = self.model().await?;
        let registered = self.actions().await?;
        Ok(match &*model {
            Ok(m) => Recommendation {
                status: "ok",
                recommendations: m
                    .rank(&Facts::from(anomaly))
                    .into_iter()
                    .filter(|r| registered.contains_key(&r.action))
                    .collect(),
                trained_on: Some(m.trained_on),
                have: None,
                need: None,
                reason: None,
            },
            Err(short) => Recommendation {
                status: "not_enough_history",
                recommendations: Vec::new(),
                trained_on: None,
                have: Some(short.have),
                need: Some(short.need),
                reason: Some(if short.have < short.need {
                    format!(
                        "{} outcomes of executed actions are recorded; {} are needed",
                        short.have, short.need
                    )
                } else if short.actions < 2 {
                    "the outcomes recorded are of one action; two at least are needed to rank"
                        .into()
                } else {
                    "every outcome recorded is a recovery, or every one a failure: nothing tells the actions apart yet".into()
                }),
            },
        })
    }

    /// The model for the outcomes stored now (trained again only when they
    /// changed).
    async fn model(&self) -> Result<Trained, String> {
        let (history, _) = self.outcomes(0, MAX_OUTCOME_SCAN).await?;
        let key = (
            history.last().map(|o| o.id.clone()).unwrap_or_default(),
            history.len(),
        );
        let mut cached = self.model.lock().await;
        if let Some((k, m)) = &*cached {
            if *k == key {
                return Ok(m.clone());
            }
        }
        let min = self.learning.min_history;
        let trained = tokio::task::spawn_blocking(move || Model::train(&history, min))
            .await
            .map_err(|e| e.to_string())?;
        let trained = Arc::new(trained);
        *cached = Some((key, trained.clone()));
        Ok(trained)
    }

    /// The action's effect: whether it worked, and what to record.
    async fn effect(
        &self,
        action: &Action,
        rule: &str,
        anomaly: &Anomaly,
    ) -> Result<(bool, Value), RemediationError> {
        available(&action.kind, self.kubernetes.enabled)?;
        let body = json!({"anomaly": anomaly, "rule": rule, "action": action.id,
                          "node": self.node, "at_ms": now_ms()});
        match &action.kind {
            ActionKind::Webhook { url, secret } => {
                let secret = match secret {
                    Some(name) => Some(self.secrets.get(name).cloned().ok_or_else(|| {
                        RemediationError::Action(format!("secret {name} is not configured"))
                    })?),
                    None => None,
                };
                let delivery = self
                    .deliver(
                        url.clone(),
                        serde_json::to_vec(&body).expect("JSON"),
                        secret,
                    )
                    .await?;
                Ok((delivery.ok, serde_json::to_value(delivery).expect("JSON")))
            }
            ActionKind::Alert {
                subject,
                alertmanager_url,
            } => {
                let mut detail = serde_json::Map::new();
                let mut ok = true;
                if let Some(subject) = subject {
                    let subject = format!("{}.{subject}", self.prefix);
                    let sent = self
                        .bus
                        .publish(BusMessage::new(
                            subject.clone(),
                            serde_json::to_vec(&body).expect("JSON"),
                        ))
                        .await;
                    ok &= sent.is_ok();
                    detail.insert(
                        "subject".into(),
                        json!({"subject": subject,
                        "error": sent.err().map(|e| e.to_string())}),
                    );
                }
                if let Some(url) = alertmanager_url {
                    let delivery = self
                        .deliver(url.clone(), alertmanager_body(anomaly, rule), None)
                        .await?;
                    ok &= delivery.ok;
                    detail.insert(
                        "alertmanager".into(),
                        serde_json::to_value(delivery).expect("JSON"),
                    );
                }
                Ok((ok, Value::Object(detail)))
            }
            ActionKind::Query { language, query } => {
                let Some(actor) = &self.query else {
                    return Err(RemediationError::Action(
                        "the query feature is disabled on this node".into(),
                    ));
                };
                let mut request = QueryRequest::default();
                match language.as_str() {
                    "sql" => request.sql = Some(query.clone()),
                    "cql" => request.cql = Some(query.clone()),
                    _ => request.promql = Some(query.clone()),
                }
                match actor.send(RunQuery::new(request)).await {
                    Ok(Ok(result)) => {
                        let text = serde_json::to_string(&result).unwrap_or_default();
                        Ok((
                            true,
                            if text.len() > MAX_QUERY_RESULT {
                                json!({"truncated": true, "bytes": text.len(),
                                   "head": text.chars().take(MAX_QUERY_RESULT).collect::<String>()})
                            } else {
                                serde_json::from_str(&text).unwrap_or(Value::Null)
                            },
                        ))
                    }
                    Ok(Err(e)) => Ok((false, json!({"error": e.to_string()}))),
                    Err(e) => Err(RemediationError::Action(format!("the query actor: {e}"))),
                }
            }
            ActionKind::Scale {
                workload,
                by,
                to,
                min,
                max,
            } => {
                let (by, to, min, max) = (*by, *to, *min, *max);
                let scaled = self
                    .kube()
                    .await?
                    .scale(workload, |current| {
                        crate::kube::target_replicas(current, by, to, min, max)
                    })
                    .await?;
                Ok((
                    true,
                    json!({"workload": workload, "previous": scaled.previous,
                                 "replicas": scaled.replicas}),
                ))
            }
            ActionKind::Restart { workload } => {
                let now =
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                let restarted = self.kube().await?.restart(workload, &now).await?;
                Ok((
                    true,
                    json!({"workload": workload, "previous": restarted.previous,
                                 "restarted_at": restarted.restarted_at}),
                ))
            }
            ActionKind::Config { setting, value } => {
                let settings = self.settings()?;
                let change = settings
                    .set(
                        setting,
                        Some(value),
                        &format!("remediation:{rule}"),
                        &format!(
                            "anomaly {} ({} on {})",
                            anomaly.id,
                            anomaly.kind.as_str(),
                            anomaly.metric
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| RemediationError::Action(e.to_string()))?;
                Ok((
                    true,
                    json!({"setting": setting, "previous": change.previous,
                           "value": change.value}),
                ))
            }
        }
    }

    fn settings(&self) -> Result<&Settings, RemediationError> {
        self.settings.as_ref().ok_or_else(|| {
            RemediationError::Action("the config feature is disabled on this node".into())
        })
    }

    async fn kube(&self) -> Result<&crate::kube::Kube, RemediationError> {
        let path = self.kubernetes.kubeconfig.clone();
        self.kube
            .get_or_try_init(|| async move { crate::kube::Kube::connect(path.as_deref()).await })
            .await
    }

    async fn deliver(
        &self,
        url: String,
        body: Vec<u8>,
        secret: Option<Vec<u8>>,
    ) -> Result<webhook::Delivery, RemediationError> {
        let policy = self.webhooks.clone();
        tokio::task::spawn_blocking(move || {
            webhook::deliver(&policy, &url, &body, secret.as_deref())
        })
        .await
        .map_err(|e| RemediationError::Action(format!("delivery task: {e}")))?
    }

    async fn pending(&self) -> Result<Vec<PendingApproval>, String> {
        let now = now_ms();
        Ok(self
            .registry::<PendingApproval>("pending/")
            .await?
            .into_iter()
            .filter(|p| p.expires_ms > now)
            .collect())
    }

    /// Takes a pending approval out (once: two approvers cannot both win).
    async fn take_pending(&self, id: &str) -> Result<PendingApproval, EngineError> {
        if !crate::model::valid_id(id) {
            return Err(EngineError::Invalid(format!("approval id {id:?}")));
        }
        let key = format!("pending/{id}");
        let k = key.clone();
        let entry = self
            .run(move |s| async move { s.get(&k).await })
            .await
            .map_err(EngineError::Unavailable)?
            .ok_or_else(|| {
                EngineError::NotFound(format!("no pending approval {id} (decided, or expired)"))
            })?;
        let pending: PendingApproval = serde_json::from_slice(&entry.value)
            .map_err(|e| EngineError::Unavailable(format!("the stored approval: {e}")))?;
        if pending.expires_ms <= now_ms() {
            return Err(EngineError::NotFound(format!("approval {id} expired")));
        }
        let revision = entry.revision;
        let taken = self
            .run(move |s| async move { s.compare_and_delete(&key, revision).await })
            .await
            .map_err(EngineError::Unavailable)?;
        if taken.is_err() {
            return Err(EngineError::Conflict(format!(
                "approval {id} was decided meanwhile"
            )));
        }
        Ok(pending)
    }

    /// Approves a pending action: it runs now if the limits and its
    /// breaker let it (else the outcome says why not).
    pub async fn approve(&self, id: &str, principal: &str) -> Result<Outcome, EngineError> {
        let pending = self.take_pending(id).await?;
        let actions = self.actions().await.map_err(EngineError::Unavailable)?;
        let rules = self.rules().await.map_err(EngineError::Unavailable)?;
        let action = actions.get(&pending.action).cloned();
        let rule = rules.iter().find(|r| r.id == pending.rule).cloned();
        let (Some(action), Some(rule)) = (action, rule) else {
            return Err(EngineError::NotFound(format!(
                "rule {} or action {} was removed since it was queued",
                pending.rule, pending.action
            )));
        };
        let safety = self.safety.clone();
        let outcome = self
            .with_ledger(|ledger| Some(ledger.release(&rule, &action, &safety, now_ms())))
            .await
            .map_err(EngineError::Unavailable)?
            .expect("always changes");
        let mut record = self.record("approved", Some(&pending.anomaly));
        record.rule = Some(rule.id.clone());
        record.action = Some(action.id.clone());
        record.outcome = Some(outcome_name(&outcome).into());
        record.principal = Some(principal.into());
        record.detail = json!({"approval": id, "outcome": outcome});
        self.audit(record).await;
        if outcome == Outcome::Execute {
            self.execute(&action, &rule.id, &pending.anomaly, Some(principal))
                .await;
        }
        Ok(outcome)
    }

    /// Undoes an executed scale (back to the replica count it found), once.
    pub async fn rollback(&self, record_id: &str, principal: &str) -> Result<Value, EngineError> {
        if record_id.len() > 64 || !record_id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(EngineError::Invalid(format!(
                "audit record id {record_id:?}"
            )));
        }
        let key = format!("audit/{record_id}");
        let record: AuditRecord = match self
            .run(move |s| async move { s.get(&key).await })
            .await
            .map_err(EngineError::Unavailable)?
        {
            Some(e) => serde_json::from_slice(&e.value)
                .map_err(|e| EngineError::Unavailable(format!("the audit record: {e}")))?,
            None => {
                return Err(EngineError::NotFound(format!(
                    "no audit record {record_id}"
                )))
            }
        };
        let detail = &record.detail;
        if record.event != "executed" || record.outcome.as_deref() != Some("ok") {
            return Err(EngineError::Invalid(format!(
                "record {record_id} is not an action that ran"
            )));
        }
        let undo = Undo::of(record_id, detail)?;
        // Once: the marker is created only if absent.
        let marker = format!("rolledback/{record_id}");
        let value = serde_json::to_vec(&json!({"by": principal, "at_ms": now_ms()})).expect("JSON");
        let first = self
            .run(move |s| async move { s.compare_and_set(&marker, 0, value).await })
            .await
            .map_err(EngineError::Unavailable)?;
        if first.is_err() {
            return Err(EngineError::Conflict(format!(
                "record {record_id} was rolled back already"
            )));
        }
        let result = self.undo(&undo, record_id, principal).await;
        let mut audit = self.record("rolled_back", None);
        audit.anomaly = record.anomaly.clone();
        audit.metric = record.metric.clone();
        audit.rule = record.rule.clone();
        audit.action = record.action.clone();
        audit.principal = Some(principal.into());
        audit.outcome = Some(if result.is_ok() { "ok" } else { "failed" }.into());
        audit.detail = match &result {
            Ok(done) => {
                let mut d = done.clone();
                d["of"] = json!(record_id);
                d
            }
            Err(e) => json!({"of": record_id, "error": e.to_string()}),
        };
        let answer = audit.detail.clone();
        if result.is_err() {
            // Not undone: the marker goes, so it can be tried again.
            let marker = format!("rolledback/{record_id}");
            let _ = self
                .run(move |s| async move { s.delete(&marker).await })
                .await;
        }
        self.audit(audit).await;
        result.map(|_| answer)
    }

    /// Carries out an undo; what it changed.
    async fn undo(
        &self,
        undo: &Undo,
        record_id: &str,
        principal: &str,
    ) -> Result<Value, EngineError> {
        match undo {
            Undo::Scale { workload, previous } => {
                let kube = self.kube().await.map_err(EngineError::from)?;
                let s = kube
                    .scale(workload, |_| *previous)
                    .await
                    .map_err(EngineError::from)?;
                Ok(json!({"workload": workload, "previous": s.previous, "replicas": s.replicas}))
            }
            Undo::Config {
                setting,
                previous,
                value,
            } => {
                let settings = self.settings().map_err(EngineError::from)?;
                // Only while the setting still holds what the action set:
                // a later change by someone else is not undone.
                let change = settings
                    .set(
                        setting,
                        previous.as_deref(),
                        principal,
                        &format!("rollback of {record_id}"),
                        Some(value.as_deref()),
                    )
                    .await
                    .map_err(|e| match e {
                        SettingsError::Conflict { .. } => EngineError::Conflict(format!(
                            "{e}: not rolled back over a later change"
                        )),
                        SettingsError::Unavailable(m) => EngineError::Unavailable(m),
                        other => EngineError::Invalid(other.to_string()),
                    })?;
                Ok(json!({"setting": setting, "previous": change.previous,
                          "value": change.value}))
            }
        }
    }

    pub async fn reject(&self, id: &str, principal: &str) -> Result<(), EngineError> {
        let pending = self.take_pending(id).await?;
        let mut record = self.record("rejected", Some(&pending.anomaly));
        record.rule = Some(pending.rule.clone());
        record.action = Some(pending.action.clone());
        record.outcome = Some("rejected".into());
        record.principal = Some(principal.into());
        record.detail = json!({"approval": id});
        self.audit(record).await;
        Ok(())
    }

    /// Audit records at or after `since` (ms) that `keep` accepts, oldest
    /// first, up to `limit`; and whether more may follow.
    pub async fn audit_list(
        &self,
        since: i64,
        limit: usize,
        keep: impl Fn(&AuditRecord) -> bool,
    ) -> Result<(Vec<AuditRecord>, bool), String> {
        let mut out = Vec::new();
        let mut after = Some(format!("audit/{:013}", since.max(0)));
        let mut budget = 20_000usize;
        loop {
            let from = after.clone();
            let (entries, more) = self
                .run(move |s| async move { s.scan("audit/", from.as_deref(), 500).await })
                .await?;
            budget = budget.saturating_sub(entries.len());
            for e in &entries {
                if let Ok(r) = serde_json::from_slice::<AuditRecord>(&e.value) {
                    if r.at_ms >= since && keep(&r) {
                        out.push(r);
                        if out.len() == limit {
                            return Ok((out, true));
                        }
                    }
                }
            }
            match (more, entries.last()) {
                (true, Some(last)) if budget > 0 => after = Some(last.key.clone()),
                (more, _) => return Ok((out, more)),
            }
        }
    }
}

/// How an executed action is undone, from its audit record.
enum Undo {
    Scale {
        workload: crate::model::Workload,
        previous: i32,
    },
    Config {
        setting: String,
        /// Back to this run-time value (`None`: the file's).
        previous: Option<String>,
        /// What the action set (the rollback checks it is still there).
        value: Option<String>,
    },
}

impl Undo {
    fn of(record_id: &str, detail: &Value) -> Result<Self, EngineError> {
        let bad = |what: &str| EngineError::Invalid(format!("record {record_id}: {what}"));
        let result = &detail["result"];
        match detail["type"].as_str() {
            Some("scale") => Ok(Undo::Scale {
                workload: serde_json::from_value(result["workload"].clone())
                    .map_err(|e| bad(&e.to_string()))?,
                previous: result["previous"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or_else(|| bad("no previous count"))?,
            }),
            Some("config") => Ok(Undo::Config {
                setting: result["setting"]
                    .as_str()
                    .ok_or_else(|| bad("no setting"))?
                    .to_string(),
                previous: result["previous"].as_str().map(str::to_string),
                value: result["value"].as_str().map(str::to_string),
            }),
            other => Err(EngineError::Invalid(format!(
                "a {} action cannot be rolled back (scale and config actions can)",
                other.unwrap_or("?")
            ))),
        }
    }
}

/// An Alertmanager v2 `POST /api/v2/alerts` body for one anomaly.
fn alertmanager_body(a: &Anomaly, rule: &str) -> Vec<u8> {
    let mut labels = serde_json::Map::new();
    for (k, v) in &a.labels {
        labels.insert(k.clone(), json!(v));
    }
    labels.insert("alertname".into(), json!("ChronicleAnomaly"));
    labels.insert("metric".into(), json!(a.metric));
    labels.insert("anomaly_type".into(), json!(a.kind.as_str()));
    let severity = serde_json::to_value(a.severity).unwrap_or(Value::Null);
    labels.insert("severity".into(), severity.clone());
    labels.insert("rule".into(), json!(rule));
    let at = |ms: i64| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
        )
        .to_string()
    };
    let mut alert = json!({
        "labels": labels,
        "annotations": {
            "summary": format!("{} {} on {}", severity.as_str().unwrap_or("?"), a.kind.as_str(), a.metric),
            "score": format!("{:.2}", a.score),
            "anomaly_id": a.id,
        },
        "startsAt": at(a.start),
    });
    if let Some(end) = a.end {
        alert["endsAt"] = json!(at(end));
    }
    serde_json::to_vec(&json!([alert])).expect("JSON")
}

/// The supervised actor: follows the stored anomalies and has the engine
/// process each new or changed one.
struct Remediator {
    engine: Arc<Engine>,
    restarts: Restarts,
    follow: Option<SpawnHandle>,
}

impl Actor for Remediator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let engine = self.engine.clone();
        let task = async move {
            // The cluster may not have a quorum yet when the node starts:
            // the configured registry is stored once it has.
            while let Err(e) = engine.seed().await {
                debug!(error = %e, "remediation: storing the configured actions and rules; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            loop {
                if let Err(e) = follow(&engine).await {
                    warn!(error = %e, "remediation: following anomalies stopped; starting again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        self.follow = Some(ctx.spawn(task.into_actor(self)));
        // Outcomes of the actions run: every node sweeps, one settles each.
        ctx.run_interval(SWEEP_EVERY, |this, ctx| {
            let engine = this.engine.clone();
            ctx.spawn(
                async move {
                    if let Err(e) = engine.sweep().await {
                        debug!(error = %e, "remediation: outcomes not swept; next time");
                    }
                }
                .into_actor(this),
            );
        });
    }
}

impl Supervised for Remediator {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.restarts.pause(ctx);
    }
}

/// Follows `anomaly/` in the detector's namespace from now on: each new or
/// changed anomaly is processed (on every node; the ledger makes one act).
async fn follow(engine: &Arc<Engine>) -> Result<(), String> {
    let anomalies = engine.anomalies.clone();
    let page = engine
        .runtime
        .spawn(async move { anomalies.scan_page("anomaly/", None, 1).await })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let anomalies = engine.anomalies.clone();
    let revision = page.revision;
    let mut changes = engine
        .runtime
        .spawn(async move { anomalies.watch("anomaly/", revision, 256) })
        .await
        .map_err(|e| e.to_string())?;
    while let Some(change) = changes.recv().await {
        let change = change.map_err(|e| e.to_string())?;
        if change.kind != ChangeKind::Put {
            continue;
        }
        let Ok(anomaly) = Anomaly::parse(&change.value) else {
            continue;
        };
        if let Err(e) = engine.process(&anomaly).await {
            warn!(anomaly = %anomaly.id, error = %e, "remediation: processing an anomaly failed");
        }
    }
    Err("the anomaly watch ended".into())
}

struct RunningRemediation {
    engine: web::Data<Arc<Engine>>,
    _actor: Addr<Remediator>,
    arbiter: ArbiterSlot,
}

#[async_trait(?Send)]
impl Running for RunningRemediation {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.engine.clone())
            .app_data(web::PayloadConfig::new(64 << 10))
            .route("/api/remediation/actions", web::get().to(list_actions))
            .route("/api/remediation/actions", web::post().to(put_action))
            .route(
                "/api/remediation/actions/{id}",
                web::delete().to(delete_action),
            )
            .route("/api/remediation/rules", web::get().to(list_rules))
            .route("/api/remediation/rules", web::post().to(put_rule))
            .route("/api/remediation/rules/{id}", web::delete().to(delete_rule))
            .route("/api/remediation/pending", web::get().to(list_pending))
            .route("/api/remediation/approve", web::post().to(approve))
            .route("/api/remediation/reject", web::post().to(reject))
            .route("/api/remediation/rollback", web::post().to(rollback))
            .route("/api/remediation/audit", web::get().to(audit))
            .route("/api/remediation/anomalies", web::get().to(evaluated))
            .route(
                "/api/remediation/recommendations",
                web::get().to(recommendations),
            )
            .route("/api/remediation/outcomes", web::get().to(outcomes));
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

fn engine_error(e: EngineError) -> HttpResponse {
    match e {
        EngineError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        EngineError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", m),
        EngineError::Invalid(m) => error(StatusCode::BAD_REQUEST, "bad_request", m),
        EngineError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
    }
}

fn unavailable(e: String) -> HttpResponse {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e)
}

fn principal(req: &HttpRequest) -> String {
    req.extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "anonymous".into())
}

#[tracing::instrument(name = "remediation_actions", skip_all)]
async fn list_actions(engine: web::Data<Arc<Engine>>) -> HttpResponse {
    match engine.actions().await {
        Ok(a) => HttpResponse::Ok().json(json!({"actions": a.into_values().collect::<Vec<_>>()})),
        Err(e) => unavailable(e),
    }
}

#[tracing::instrument(name = "remediation_rules", skip_all)]
async fn list_rules(engine: web::Data<Arc<Engine>>) -> HttpResponse {
    match engine.rules().await {
        Ok(r) => HttpResponse::Ok().json(json!({"rules": r})),
        Err(e) => unavailable(e),
    }
}

/// Stores `value` under `key` unless the registry is full.
async fn put_entry(
    engine: &Engine,
    prefix: &'static str,
    id: &str,
    value: Vec<u8>,
) -> HttpResponse {
    let count = engine
        .run(move |s| async move { s.scan(prefix, None, MAX_REGISTRY + 1).await })
        .await;
    let key = format!("{prefix}{id}");
    match count {
        Ok((entries, _))
            if entries.len() >= MAX_REGISTRY && !entries.iter().any(|e| e.key == key) =>
        {
            error(
                StatusCode::CONFLICT,
                "full",
                format!("at most {MAX_REGISTRY} entries"),
            )
        }
        Ok(_) => match engine
            .run(move |s| async move { s.put(&key, value).await })
            .await
        {
            Ok(revision) => HttpResponse::Ok().json(json!({"id": id, "revision": revision})),
            Err(e) => unavailable(e),
        },
        Err(e) => unavailable(e),
    }
}

#[tracing::instrument(name = "remediation_action_put", skip_all)]
async fn put_action(engine: web::Data<Arc<Engine>>, body: web::Bytes) -> HttpResponse {
    let kubernetes = engine.kubernetes.enabled;
    let action = match Action::parse(&body).and_then(|a| available(&a.kind, kubernetes).map(|()| a))
    {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    if let ActionKind::Config { setting, value } = &action.kind {
        match &engine.settings {
            Some(s) => {
                if let Err(e) = s.check(setting, value) {
                    return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
                }
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "config actions need the config feature, disabled on this node",
                )
            }
        }
    }
    // A URL the settings would refuse is refused now, not at the incident.
    let urls: Vec<String> = match &action.kind {
        ActionKind::Webhook { url, .. } => vec![url.clone()],
        ActionKind::Alert {
            alertmanager_url: Some(url),
            ..
        } => vec![url.clone()],
        _ => Vec::new(),
    };
    let policy = engine.webhooks.clone();
    let permitted =
        tokio::task::spawn_blocking(move || urls.iter().try_for_each(|u| policy.permits(u))).await;
    match permitted {
        Ok(Ok(())) => {}
        Ok(Err(RemediationError::Forbidden(m))) => {
            return error(StatusCode::FORBIDDEN, "forbidden", m)
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        Err(e) => return unavailable(e.to_string()),
    }
    let value = serde_json::to_vec(&action).expect("JSON");
    put_entry(&engine, "action/", &action.id, value).await
}

#[tracing::instrument(name = "remediation_rule_put", skip_all)]
async fn put_rule(engine: web::Data<Arc<Engine>>, body: web::Bytes) -> HttpResponse {
    let rule = match Rule::parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let value = serde_json::to_vec(&rule).expect("JSON");
    put_entry(&engine, "rule/", &rule.id, value).await
}

async fn delete_entry(engine: &Engine, prefix: &str, id: &str) -> HttpResponse {
    if !crate::model::valid_id(id) {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("id {id:?}"));
    }
    let key = format!("{prefix}{id}");
    let k = key.clone();
    match engine.run(move |s| async move { s.get(&k).await }).await {
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("no {key}")),
        Ok(Some(_)) => match engine
            .run(move |s| async move { s.delete(&key).await })
            .await
        {
            Ok(_) => HttpResponse::NoContent().finish(),
            Err(e) => unavailable(e),
        },
        Err(e) => unavailable(e),
    }
}

#[tracing::instrument(name = "remediation_action_delete", skip_all)]
async fn delete_action(engine: web::Data<Arc<Engine>>, id: web::Path<String>) -> HttpResponse {
    delete_entry(&engine, "action/", &id).await
}

#[tracing::instrument(name = "remediation_rule_delete", skip_all)]
async fn delete_rule(engine: web::Data<Arc<Engine>>, id: web::Path<String>) -> HttpResponse {
    delete_entry(&engine, "rule/", &id).await
}

#[tracing::instrument(name = "remediation_pending", skip_all)]
async fn list_pending(engine: web::Data<Arc<Engine>>) -> HttpResponse {
    match engine.pending().await {
        Ok(p) => HttpResponse::Ok().json(json!({"pending": p})),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decide {
    id: String,
}

fn decide_body(body: &[u8]) -> Result<Decide, Box<HttpResponse>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("a JSON body {{\"id\": \"<approval id>\"}}: {e}"),
        ))
    })
}

#[tracing::instrument(name = "remediation_approve", skip_all)]
async fn approve(
    engine: web::Data<Arc<Engine>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let d = match decide_body(&body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match engine.approve(&d.id, &principal(&req)).await {
        Ok(outcome) => HttpResponse::Ok().json(json!({"id": d.id, "outcome": outcome})),
        Err(e) => engine_error(e),
    }
}

#[tracing::instrument(name = "remediation_reject", skip_all)]
async fn reject(
    engine: web::Data<Arc<Engine>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let d = match decide_body(&body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match engine.reject(&d.id, &principal(&req)).await {
        Ok(()) => HttpResponse::Ok().json(json!({"id": d.id, "outcome": "rejected"})),
        Err(e) => engine_error(e),
    }
}

#[tracing::instrument(name = "remediation_rollback", skip_all)]
async fn rollback(
    engine: web::Data<Arc<Engine>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let d = match decide_body(&body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match engine.rollback(&d.id, &principal(&req)).await {
        Ok(detail) => HttpResponse::Ok().json(json!({"id": d.id, "rolled_back": detail})),
        Err(e) => engine_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// At or after (ms); default: a day ago.
    since: Option<i64>,
    rule: Option<String>,
    action: Option<String>,
    event: Option<String>,
    outcome: Option<String>,
    anomaly: Option<String>,
    limit: Option<usize>,
}

#[tracing::instrument(name = "remediation_audit", skip_all)]
async fn audit(
    engine: web::Data<Arc<Engine>>,
    query: Result<web::Query<AuditQuery>, actix_web::Error>,
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
    let since = q.since.unwrap_or_else(|| now_ms() - 86_400_000);
    let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
    let result = engine
        .audit_list(since, limit, |r| {
            eq(&q.rule, &r.rule)
                && eq(&q.action, &r.action)
                && eq(&q.outcome, &r.outcome)
                && eq(&q.anomaly, &r.anomaly)
                && q.event.as_ref().is_none_or(|e| *e == r.event)
        })
        .await;
    match result {
        Ok((records, more)) => HttpResponse::Ok().json(json!({"records": records, "more": more})),
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendQuery {
    anomaly: String,
}

/// The recommender's ranking for a stored anomaly.
#[tracing::instrument(name = "remediation_recommendations", skip_all)]
async fn recommendations(
    engine: web::Data<Arc<Engine>>,
    query: Result<web::Query<RecommendQuery>, actix_web::Error>,
) -> HttpResponse {
    let id = match query {
        Ok(q) => q.into_inner().anomaly,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("?anomaly=<id>: {e}"),
            )
        }
    };
    if id.is_empty() || id.len() > chronicle_detect::anomaly::MAX_TEXT {
        return error(StatusCode::BAD_REQUEST, "bad_request", "an anomaly id");
    }
    let anomaly = match engine.anomaly(&id).await {
        Ok(Some(e)) => match Anomaly::parse(&e.value) {
            Ok(a) => a,
            Err(e) => return unavailable(format!("the stored anomaly: {e}")),
        },
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no anomaly {id}"),
            )
        }
        Err(e) => return unavailable(e),
    };
    match engine.recommend(&anomaly).await {
        Ok(r) => {
            let mut body = serde_json::to_value(&r).expect("JSON");
            body["anomaly"] = json!(id);
            HttpResponse::Ok().json(body)
        }
        Err(e) => unavailable(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceQuery {
    /// At or after (ms); default: a day ago (outcomes: 30 days).
    since: Option<i64>,
    limit: Option<usize>,
}

fn since_limit(
    query: Result<web::Query<SinceQuery>, actix_web::Error>,
    default_since: i64,
) -> Result<(i64, usize), Box<HttpResponse>> {
    let q = query
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "bad_request", e.to_string())))?
        .into_inner();
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("limit: 1 to {MAX_LIST}"),
        )));
    }
    Ok((q.since.unwrap_or(default_since), limit))
}

/// What became of the actions run (the recommender's history).
#[tracing::instrument(name = "remediation_outcomes", skip_all)]
async fn outcomes(
    engine: web::Data<Arc<Engine>>,
    query: Result<web::Query<SinceQuery>, actix_web::Error>,
) -> HttpResponse {
    let (since, limit) = match since_limit(query, now_ms() - 30 * 86_400_000) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match engine.outcomes(since, limit).await {
        Ok((outcomes, more)) => {
            HttpResponse::Ok().json(json!({"outcomes": outcomes, "more": more}))
        }
        Err(e) => unavailable(e),
    }
}

/// The anomalies remediation evaluated, each with its decisions and the
/// recommender's ranking (from the audit trail).
#[tracing::instrument(name = "remediation_anomalies", skip_all)]
async fn evaluated(
    engine: web::Data<Arc<Engine>>,
    query: Result<web::Query<SinceQuery>, actix_web::Error>,
) -> HttpResponse {
    let (since, limit) = match since_limit(query, now_ms() - 86_400_000) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match engine
        .audit_list(since, limit, |r| r.event == "evaluated")
        .await
    {
        Ok((records, more)) => {
            let anomalies: Vec<Value> = records
                .into_iter()
                .map(|r| {
                    json!({"at_ms": r.at_ms, "node": r.node, "anomaly": r.detail["anomaly"],
                           "decisions": r.detail["decisions"],
                           "recommendation": r.detail["recommendation"]})
                })
                .collect();
            HttpResponse::Ok().json(json!({"anomalies": anomalies, "more": more}))
        }
        Err(e) => unavailable(e),
    }
}

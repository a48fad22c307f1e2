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
use std::sync::Arc;
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
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use chronicle_query::{QueryActor, QueryRequest, RunQuery};
use chronicle_storage::state::ChangeKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

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
        ActionKind::Webhook { .. } | ActionKind::Alert { .. } | ActionKind::Query { .. } => Ok(()),
        ActionKind::Scale { .. } | ActionKind::Restart { .. } if kubernetes => Ok(()),
        ActionKind::Scale { .. } | ActionKind::Restart { .. } => Err(RemediationError::Invalid(
            format!(
                "{} actions need [features.remediation.kubernetes] enabled = true",
                kind.name()
            ),
        )),
        other => Err(RemediationError::Invalid(format!(
            "{} actions are not available in this version (webhook, alert, query, scale and restart are)",
            other.name()
        ))),
    }
}

impl Feature for RemediationFeature {
    fn name(&self) -> &'static str {
        "remediation"
    }

    fn describe(&self) -> &'static str {
        "rules over anomalies run actions (webhook, alert, query) within rate limits, approvals and circuit breakers, with an audit trail"
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: RemediationConfig = chronicle_platform::parse_section("remediation", section)?;
        let bad = |message: String| FeatureError::Config {
            feature: "remediation",
            message,
        };
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
            next: AtomicU64::new(0),
            configured: (self.config.actions, self.config.rules),
            kubernetes: self.config.kubernetes,
            kube: tokio::sync::OnceCell::new(),
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
    next: AtomicU64,
    /// Actions and rules of the config, stored when absent.
    configured: (Vec<Action>, Vec<Rule>),
    kubernetes: KubeSettings,
    /// Connected at the first scale or restart.
    kube: tokio::sync::OnceCell<crate::kube::Kube>,
}

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
#[derive(Debug)]
pub enum EngineError {
    NotFound(String),
    Conflict(String),
    Invalid(String),
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
        self.runtime
            .spawn(call(self.state.clone()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
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

    async fn audit(&self, mut record: AuditRecord) {
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
    pub async fn process(&self, anomaly: &Anomaly) -> Result<Vec<Decision>, String> {
        let (actions, rules) = (self.actions().await?, self.rules().await?);
        if !rules.iter().any(|r| r.applies(anomaly, now_ms())) {
            return Ok(Vec::new());
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
            return Ok(decided);
        }
        let mut evaluated = self.record("evaluated", Some(anomaly));
        evaluated.detail = json!({"anomaly": anomaly, "decisions": decided});
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
        Ok(decided)
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
        self.audit(record).await;
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
            ActionKind::Config { .. } => unreachable!("refused by available()"),
        }
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
        if detail["type"] != "scale" {
            return Err(EngineError::Invalid(format!(
                "a {} action cannot be rolled back (scale actions can)",
                detail["type"].as_str().unwrap_or("?")
            )));
        }
        let workload: crate::model::Workload =
            serde_json::from_value(detail["result"]["workload"].clone())
                .map_err(|e| EngineError::Invalid(format!("record {record_id}: {e}")))?;
        let previous = detail["result"]["previous"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| {
                EngineError::Invalid(format!("record {record_id}: no previous count"))
            })?;
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
        let result = match self.kube().await {
            Ok(kube) => kube.scale(&workload, |_| previous).await,
            Err(e) => Err(e),
        };
        let mut audit = self.record("rolled_back", None);
        audit.anomaly = record.anomaly.clone();
        audit.metric = record.metric.clone();
        audit.rule = record.rule.clone();
        audit.action = record.action.clone();
        audit.principal = Some(principal.into());
        audit.outcome = Some(if result.is_ok() { "ok" } else { "failed" }.into());
        audit.detail = match &result {
            Ok(s) => json!({"of": record_id, "workload": workload, "previous": s.previous,
                            "replicas": s.replicas}),
            Err(e) => json!({"of": record_id, "error": e.to_string()}),
        };
        let answer = audit.detail.clone();
        self.audit(audit).await;
        result.map(|_| answer).map_err(EngineError::from)
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
            .route("/api/remediation/audit", web::get().to(audit));
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

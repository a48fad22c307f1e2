//! What an operator defines: actions (what can be done, with its risk) and
//! rules (which anomalies call for which actions), and the engine's safety
//! settings. All of it is JSON in the replicated state and on the API, read
//! with bounds ([`Action::check`], [`Rule::check`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chronicle_detect::anomaly::Anomaly;
use chronicle_detect::watch::glob_matches;
use chronicle_detect::{Kind, Severity};
use serde::{Deserialize, Serialize};

use crate::RemediationError;

/// Longest id, name, URL, query or setting text, bytes.
pub const MAX_TEXT: usize = 2048;
/// Actions one rule names at most; label matchers and globs likewise.
pub const MAX_LIST: usize = 32;

/// How much harm an action can do if it was the wrong call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

/// A Kubernetes workload that scale and restart act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub namespace: String,
    /// `Deployment` or `StatefulSet`.
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

/// What an action does. Each has a real effect (see docs/remediation.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActionKind {
    /// POST the anomaly and the decision as JSON, signed with HMAC-SHA256
    /// under the named secret (`X-Chronicle-Signature: sha256=<hex>`).
    Webhook {
        url: String,
        /// The secret's name in the feature's settings (never stored here).
        #[serde(default)]
        secret: Option<String>,
    },
    /// Set a workload's replicas: `by` added to the current count (or
    /// `to`), kept within `[min, max]`.
    Scale {
        workload: Workload,
        #[serde(default)]
        by: Option<i32>,
        #[serde(default)]
        to: Option<i32>,
        #[serde(default)]
        min: Option<i32>,
        #[serde(default)]
        max: Option<i32>,
    },
    /// A rollout restart (the pod template's restartedAt annotation).
    Restart { workload: Workload },
    /// A message on a NATS subject (under the node's prefix) and/or an
    /// Alertmanager-compatible POST.
    Alert {
        #[serde(default)]
        subject: Option<String>,
        #[serde(default)]
        alertmanager_url: Option<String>,
    },
    /// Runs a query; its result goes into the audit record.
    Query { language: String, query: String },
    /// Changes a node setting at run time through the config API.
    Config { setting: String, value: String },
}

impl ActionKind {
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Webhook { .. } => "webhook",
            ActionKind::Scale { .. } => "scale",
            ActionKind::Restart { .. } => "restart",
            ActionKind::Alert { .. } => "alert",
            ActionKind::Query { .. } => "query",
            ActionKind::Config { .. } => "config",
        }
    }

    /// Whether an executed action of this kind can be undone.
    pub fn reversible(&self) -> bool {
        matches!(
            self,
            ActionKind::Scale { .. } | ActionKind::Config { .. } | ActionKind::Restart { .. }
        )
    }
}

/// One entry of the action registry. (Unknown fields are refused by the
/// flattened kind: serde's `deny_unknown_fields` does not mix with flatten.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub id: String,
    pub name: String,
    /// Higher runs first when a rule names several.
    #[serde(default)]
    pub priority: i32,
    pub risk: Risk,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(flatten)]
    pub kind: ActionKind,
}

fn yes() -> bool {
    true
}

/// When a rule applies to an anomaly, beyond its type and series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    #[serde(default)]
    pub min_severity: Option<Severity>,
    #[serde(default)]
    pub min_score: Option<f64>,
    /// The anomaly has lasted at least this long (`"5m"`): an open episode
    /// counts until now.
    #[serde(default, with = "opt_duration")]
    pub min_duration: Option<Duration>,
}

/// Which anomalies call for which actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Anomaly types it applies to; empty: all.
    #[serde(default)]
    pub types: Vec<Kind>,
    /// Metric name globs (`cpu_*`, `*`); empty: all.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Labels the anomaly's series must carry, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub conditions: Conditions,
    /// Action ids, run in priority order.
    pub actions: Vec<String>,
    /// After the rule acted on a series, it does not act on it again for
    /// this long (`"10m"`).
    #[serde(default, with = "opt_duration")]
    pub cooldown: Option<Duration>,
    /// Actions this rule may take per hour, cluster-wide.
    #[serde(default)]
    pub max_actions_per_hour: Option<u32>,
}

/// The engine's safety settings (`[features.remediation]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Safety {
    /// Actions taken per hour, all rules together.
    pub max_actions_per_hour: u32,
    /// Actions at or above this risk wait for an approval.
    pub require_approval: Risk,
    /// A pending approval expires after this long.
    #[serde(with = "humantime_serde_compat")]
    pub approval_ttl: Duration,
    /// Consecutive failures that open an action's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before letting one try through.
    #[serde(with = "humantime_serde_compat")]
    pub breaker_cooldown: Duration,
    /// Decide and record, but do not act.
    pub dry_run: bool,
}

impl Default for Safety {
    fn default() -> Self {
        Self {
            max_actions_per_hour: 20,
            require_approval: Risk::High,
            approval_ttl: Duration::from_secs(3600),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(300),
            dry_run: false,
        }
    }
}

fn text(what: &str, s: &str) -> Result<(), RemediationError> {
    if s.len() > MAX_TEXT {
        return Err(RemediationError::Invalid(format!(
            "{what} is {} bytes; at most {MAX_TEXT}",
            s.len()
        )));
    }
    Ok(())
}

/// Ids: what a key in the state and a path segment can carry.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn id(what: &str, s: &str) -> Result<(), RemediationError> {
    if !valid_id(s) {
        return Err(RemediationError::Invalid(format!(
            "{what} {s:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

impl Action {
    /// Parses an action from untrusted JSON, with bounds.
    pub fn parse(bytes: &[u8]) -> Result<Self, RemediationError> {
        if bytes.len() > 16 << 10 {
            return Err(RemediationError::Invalid(format!(
                "an action of {} bytes; at most 16 KiB",
                bytes.len()
            )));
        }
        let a: Action = serde_json::from_slice(bytes)
            .map_err(|e| RemediationError::Invalid(format!("action: {e}")))?;
        a.check()?;
        Ok(a)
    }

    pub fn check(&self) -> Result<(), RemediationError> {
        id("action id", &self.id)?;
        text("name", &self.name)?;
        match &self.kind {
            ActionKind::Webhook { url, secret } => {
                text("url", url)?;
                crate::webhook::check_url(url)?;
                if let Some(s) = secret {
                    id("secret", s)?;
                }
            }
            ActionKind::Scale {
                workload,
                by,
                to,
                min,
                max,
            } => {
                workload.check()?;
                if by.is_some() == to.is_some() {
                    return Err(RemediationError::Invalid(
                        "a scale action sets exactly one of `by` and `to`".into(),
                    ));
                }
                let (lo, hi) = (min.unwrap_or(0), max.unwrap_or(1000));
                if lo < 0 || hi < lo || to.is_some_and(|t| t < 0) {
                    return Err(RemediationError::Invalid(
                        "scale bounds: 0 <= min <= max, and `to` >= 0".into(),
                    ));
                }
            }
            ActionKind::Restart { workload } => workload.check()?,
            ActionKind::Alert {
                subject,
                alertmanager_url,
            } => {
                if subject.is_none() && alertmanager_url.is_none() {
                    return Err(RemediationError::Invalid(
                        "an alert action needs a `subject`, an `alertmanager_url` or both".into(),
                    ));
                }
                if let Some(s) = subject {
                    text("subject", s)?;
                    if s.is_empty()
                        || s.split('.').any(|t| t.is_empty() || t == "*" || t == ">")
                        || s.contains(char::is_whitespace)
                    {
                        return Err(RemediationError::Invalid(format!(
                            "subject {s:?}: dot-separated tokens, no wildcards"
                        )));
                    }
                }
                if let Some(u) = alertmanager_url {
                    text("alertmanager_url", u)?;
                    crate::webhook::check_url(u)?;
                }
            }
            ActionKind::Query { language, query } => {
                text("query", query)?;
                if !matches!(language.as_str(), "promql" | "sql" | "cql") {
                    return Err(RemediationError::Invalid(format!(
                        "query language {language:?}: promql, sql or cql"
                    )));
                }
            }
            ActionKind::Config { setting, value } => {
                text("setting", setting)?;
                text("value", value)?;
            }
        }
        Ok(())
    }
}

impl Workload {
    fn check(&self) -> Result<(), RemediationError> {
        // Kubernetes names: DNS-1123 labels and subdomains.
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns(&self.namespace) || self.namespace.len() > 63 || !dns(&self.name) {
            return Err(RemediationError::Invalid(format!(
                "workload {}/{}: Kubernetes names (lowercase letters, digits, '-', '.')",
                self.namespace, self.name
            )));
        }
        Ok(())
    }
}

impl Rule {
    /// Parses a rule from untrusted JSON, with bounds.
    pub fn parse(bytes: &[u8]) -> Result<Self, RemediationError> {
        if bytes.len() > 16 << 10 {
            return Err(RemediationError::Invalid(format!(
                "a rule of {} bytes; at most 16 KiB",
                bytes.len()
            )));
        }
        let r: Rule = serde_json::from_slice(bytes)
            .map_err(|e| RemediationError::Invalid(format!("rule: {e}")))?;
        r.check()?;
        Ok(r)
    }

    pub fn check(&self) -> Result<(), RemediationError> {
        id("rule id", &self.id)?;
        text("name", &self.name)?;
        if self.actions.is_empty() {
            return Err(RemediationError::Invalid(
                "a rule names at least one action".into(),
            ));
        }
        if self.actions.len() > MAX_LIST
            || self.metrics.len() > MAX_LIST
            || self.labels.len() > MAX_LIST
        {
            return Err(RemediationError::Invalid(format!(
                "a rule names at most {MAX_LIST} actions, metric globs and labels each"
            )));
        }
        for a in &self.actions {
            id("action id", a)?;
        }
        for m in &self.metrics {
            text("metric glob", m)?;
        }
        for (k, v) in &self.labels {
            text("label", k)?;
            text("label value", v)?;
        }
        if let Some(s) = self.conditions.min_score {
            if !s.is_finite() {
                return Err(RemediationError::Invalid("min_score must be finite".into()));
            }
        }
        Ok(())
    }

    /// Whether the rule applies to `a` at `now_ms`.
    pub fn applies(&self, a: &Anomaly, now_ms: i64) -> bool {
        let c = &self.conditions;
        let lasted = a.end.unwrap_or(now_ms).saturating_sub(a.start);
        self.enabled
            && (self.types.is_empty() || self.types.contains(&a.kind))
            && (self.metrics.is_empty() || self.metrics.iter().any(|g| glob_matches(g, &a.metric)))
            && self
                .labels
                .iter()
                .all(|(k, v)| a.labels.get(k).is_some_and(|have| have == v))
            && c.min_severity.is_none_or(|s| a.severity >= s)
            && c.min_score.is_none_or(|s| a.score >= s)
            && c.min_duration
                .is_none_or(|d| lasted >= i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_with_their_kind_and_refuse_unknown_fields() {
        let a = Action::parse(
            br#"{"id":"n","name":"n","risk":"low","type":"webhook","url":"http://h/x","secret":"s"}"#,
        )
        .unwrap();
        assert_eq!(a.kind.name(), "webhook");
        assert!(a.enabled);
        for bad in [
            r#"{"id":"n","name":"n","risk":"low","type":"webhook","url":"http://h/x","bogus":1}"#,
            r#"{"id":"n","name":"n","risk":"low","type":"nope"}"#,
            r#"{"id":"n","name":"n","risk":"odd","type":"alert","subject":"a"}"#,
            r#"{"id":"n","name":"n","risk":"low","type":"alert"}"#,
            r#"{"id":"n","name":"n","risk":"low","type":"alert","subject":"a.*"}"#,
            r#"{"id":"n","name":"n","risk":"low","type":"query","language":"x","query":"up"}"#,
            r#"{"id":"n","name":"n","risk":"low","type":"scale","workload":{"namespace":"d","kind":"Deployment","name":"w"}}"#,
        ] {
            assert!(Action::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let r = Rule::parse(
            br#"{"id":"r","actions":["n"],"cooldown":"10m","conditions":{"min_duration":"5m"}}"#,
        )
        .unwrap();
        assert_eq!(r.cooldown, Some(Duration::from_secs(600)));
        assert!(Rule::parse(br#"{"id":"r","actions":["n"],"cooldown":"soon"}"#).is_err());
    }
}

/// Durations as humantime text (`"10m"`), optional.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Durations as humantime text (`"1h"`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

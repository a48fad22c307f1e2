//! Learning from outcomes: each executed action is followed for a recovery
//! window; whether its anomaly ended inside it is an [`Outcome`]. A
//! logistic regression (smartcore) of recovery on the anomaly's features,
//! the action and their products ranks the actions for a new anomaly by
//! the probability that each resolves it. Under [`Learning::min_history`]
//! outcomes (or fewer than two actions, or no recovery or no failure among
//! them) it says so instead of guessing.
//!
//! Features (fixed width, [`FEATURES`]): the anomaly type one-hot, severity,
//! log score, and the metric name's tokens and the label pairs, each hashed
//! into buckets (so `cpu.user` and `cpu.system` share the `cpu` bucket and
//! a service label separates services).

use std::collections::BTreeMap;

use chronicle_detect::anomaly::Anomaly;
use chronicle_detect::detector::{Kind, Severity};
use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::RemediationError;

const KINDS: [Kind; 5] = [
    Kind::Spike,
    Kind::Dip,
    Kind::LevelShift,
    Kind::Trend,
    Kind::Absent,
];
const METRIC_BUCKETS: usize = 16;
const LABEL_BUCKETS: usize = 16;
/// Width of a feature vector.
pub const FEATURES: usize = KINDS.len() + 2 + METRIC_BUCKETS + LABEL_BUCKETS;
/// Outcomes one model is trained on at most (the newest).
pub const MAX_TRAINING: usize = 5000;
/// L2 regularisation: many correlated hashed features, few examples.
const ALPHA: f64 = 0.5;

/// `[features.remediation.learning]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Learning {
    /// An action's anomaly must end within this long of the action for it
    /// to count as having worked (`"10m"`).
    #[serde(with = "humantime_serde_compat")]
    pub recovery_window: std::time::Duration,
    /// Resolved outcomes needed before the recommender answers.
    pub min_history: usize,
}

impl Default for Learning {
    fn default() -> Self {
        Self {
            recovery_window: std::time::Duration::from_secs(600),
            min_history: 20,
        }
    }
}

/// Durations as humantime text (`"10m"`) in the config.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Learning {
    pub fn check(&self) -> Result<(), RemediationError> {
        let w = self.recovery_window.as_secs();
        if !(10..=86_400).contains(&w) {
            return Err(RemediationError::Invalid(
                "learning.recovery_window: 10s to 1d".into(),
            ));
        }
        if !(2..=MAX_TRAINING).contains(&self.min_history) {
            return Err(RemediationError::Invalid(format!(
                "learning.min_history: 2 to {MAX_TRAINING}"
            )));
        }
        Ok(())
    }
}

/// What became of one executed action (`outcome/<audit id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The audit record of the execution.
    pub id: String,
    pub anomaly: String,
    pub metric: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub severity: Severity,
    pub score: f64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub action: String,
    pub executed_ms: i64,
    pub checked_ms: i64,
    /// The anomaly ended within the recovery window after the action.
    pub recovered: bool,
    /// It had ended before the action ran: says nothing of the action
    /// (not learned from).
    #[serde(default)]
    pub ended_before: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
}

/// What the detector knows of an anomaly, as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts<'a> {
    pub kind: Kind,
    pub severity: Severity,
    pub score: f64,
    pub metric: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Anomaly> for Facts<'a> {
    fn from(a: &'a Anomaly) -> Self {
        Facts {
            kind: a.kind,
            severity: a.severity,
            score: a.score,
            metric: &a.metric,
            labels: &a.labels,
        }
    }
}

impl<'a> From<&'a Outcome> for Facts<'a> {
    fn from(o: &'a Outcome) -> Self {
        Facts {
            kind: o.kind,
            severity: o.severity,
            score: o.score,
            metric: &o.metric,
            labels: &o.labels,
        }
    }
}

/// FNV-1a: stable across builds and platforms (the model's features must
/// not change with the hasher's seed).
fn bucket(text: &str, buckets: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % buckets as u64) as usize
}

/// The feature vector of an anomaly.
pub fn features(f: &Facts<'_>) -> Vec<f64> {
    let mut v = vec![0.0; FEATURES];
    if let Some(i) = KINDS.iter().position(|k| *k == f.kind) {
        v[i] = 1.0;
    }
    let base = KINDS.len();
    v[base] = match f.severity {
        Severity::Low => 0.0,
        Severity::Medium => 1.0 / 3.0,
        Severity::High => 2.0 / 3.0,
        Severity::Critical => 1.0,
    };
    v[base + 1] = if f.score.is_finite() {
        f.score.abs().ln_1p().min(10.0) / 10.0
    } else {
        1.0
    };
    let metric_base = base + 2;
    let tokens: Vec<&str> = f
        .metric
        .split(['.', '_', ':', '-', '/'])
        .filter(|t| !t.is_empty())
        .collect();
    for t in &tokens {
        v[metric_base + bucket(t, METRIC_BUCKETS)] += 1.0 / tokens.len() as f64;
    }
    let label_base = metric_base + METRIC_BUCKETS;
    let n = f.labels.len().max(1) as f64;
    for (k, val) in f.labels {
        v[label_base + bucket(&format!("{k}={val}"), LABEL_BUCKETS)] += 1.0 / n;
    }
    v
}

/// One ranked action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub action: String,
    /// The model's probability that this action resolves the anomaly.
    pub confidence: f64,
}

/// A trained recommender: one logistic regression of "the anomaly ended
/// within the window" on the anomaly's features, the action, and their
/// products (so each action has its own weights on top of shared ones).
/// Failures teach as much as successes, and an action tried often is not
/// favoured for being tried often.
pub struct Model {
    /// Actions it ranks (those of the history, the most used first, at
    /// most [`MAX_ACTIONS`]).
    actions: Vec<String>,
    /// Weights over [`Model::row`], then the intercept.
    weights: Vec<f64>,
    /// Outcomes it was trained on.
    pub trained_on: usize,
}

/// Actions one model ranks at most (its width grows with each).
pub const MAX_ACTIONS: usize = 16;

/// Why the recommender does not answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotEnough {
    /// Outcomes there are (that say something of their action).
    pub have: usize,
    pub need: usize,
    /// Actions they name (two at least), and whether both a recovery and
    /// a failure are among them.
    pub actions: usize,
    pub both_outcomes: bool,
}

impl Model {
    /// The row of one (anomaly, action) pair: shared features, the action
    /// one-hot, and the features again in the action's block.
    fn row(x: &[f64], action: usize, actions: usize) -> Vec<f64> {
        let mut row = vec![0.0; FEATURES + actions + actions * FEATURES];
        row[..FEATURES].copy_from_slice(x);
        row[FEATURES + action] = 1.0;
        let block = FEATURES + actions + action * FEATURES;
        row[block..block + FEATURES].copy_from_slice(x);
        row
    }

    /// Trains on the newest [`MAX_TRAINING`] outcomes that say something
    /// of their action; `Err` when there are fewer than `min_history`,
    /// fewer than two actions, or no recovery or no failure among them.
    pub fn train(outcomes: &[Outcome], min_history: usize) -> Result<Model, NotEnough> {
        let usable: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ended_before).collect();
        let usable = &usable[usable.len().saturating_sub(MAX_TRAINING)..];
        let mut uses: BTreeMap<&str, usize> = BTreeMap::new();
        for o in usable {
            *uses.entry(o.action.as_str()).or_default() += 1;
        }
        let mut actions: Vec<(&str, usize)> = uses.into_iter().collect();
        actions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        actions.truncate(MAX_ACTIONS);
        let actions: Vec<String> = actions.into_iter().map(|(a, _)| a.to_string()).collect();
        let rows: Vec<(&Outcome, usize)> = usable
            .iter()
            .filter_map(|o| Some((*o, actions.iter().position(|a| *a == o.action)?)))
            .collect();
        let recovered = rows.iter().filter(|(o, _)| o.recovered).count();
        let short = NotEnough {
            have: rows.len(),
            need: min_history,
            actions: actions.len(),
            both_outcomes: recovered > 0 && recovered < rows.len(),
        };
        if rows.len() < min_history || actions.len() < 2 || !short.both_outcomes {
            return Err(short);
        }
        let x: Vec<Vec<f64>> = rows
            .iter()
            .map(|(o, a)| Self::row(&features(&(*o).into()), *a, actions.len()))
            .collect();
        let y: Vec<u32> = rows.iter().map(|(o, _)| u32::from(o.recovered)).collect();
        let Ok(x) = DenseMatrix::from_2d_vec(&x) else {
            return Err(short);
        };
        let params = LogisticRegressionParameters::default().with_alpha(ALPHA);
        let Ok(lr) = LogisticRegression::fit(&x, &y, params) else {
            return Err(short);
        };
        let (coef, intercept) = (lr.coefficients(), lr.intercept());
        // Two classes (0, 1): one row of weights, for "recovered".
        let mut weights: Vec<f64> = (0..coef.shape().1).map(|j| *coef.get((0, j))).collect();
        weights.push(*intercept.get((0, 0)));
        Ok(Model {
            actions,
            weights,
            trained_on: rows.len(),
        })
    }

    /// The actions, most likely to resolve `facts` first.
    pub fn rank(&self, facts: &Facts<'_>) -> Vec<Ranked> {
        let x = features(facts);
        let (w, b) = self.weights.split_at(self.weights.len() - 1);
        let mut ranked: Vec<Ranked> = self
            .actions
            .iter()
            .enumerate()
            .map(|(i, action)| {
                let row = Self::row(&x, i, self.actions.len());
                let z: f64 = row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + b[0];
                Ranked {
                    action: action.clone(),
                    confidence: 1.0 / (1.0 + (-z).exp()),
                }
            })
            .collect();
        ranked.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        ranked
    }
}

/// The baseline the model is measured against: the action that resolved
/// the most past anomalies, whatever the new one is.
pub fn most_frequent_success(outcomes: &[Outcome]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.recovered && !o.ended_before) {
        *counts.entry(&o.action).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(a, _)| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: Kind, metric: &str, action: &str, recovered: bool) -> Outcome {
        Outcome {
            id: String::new(),
            anomaly: String::new(),
            metric: metric.into(),
            kind,
            severity: Severity::High,
            score: 6.0,
            labels: BTreeMap::new(),
            action: action.into(),
            executed_ms: 0,
            checked_ms: 0,
            recovered,
            ended_before: false,
            ended_ms: None,
        }
    }

    #[test]
    fn too_little_history_is_said() {
        let few: Vec<Outcome> = (0..5)
            .map(|_| outcome(Kind::Spike, "cpu", "scale", true))
            .collect();
        let e = Model::train(&few, 20).err().expect("not enough");
        assert_eq!((e.have, e.need), (5, 20));
        // Many, but one action only: nothing to rank.
        let one: Vec<Outcome> = (0..50)
            .map(|_| outcome(Kind::Spike, "cpu", "scale", true))
            .collect();
        assert_eq!(Model::train(&one, 20).err().expect("one").actions, 1);
    }

    #[test]
    fn learns_which_action_resolves_which_anomaly() {
        let mut history = Vec::new();
        for i in 0..40 {
            history.push(outcome(Kind::Spike, "cpu.user", "scale", true));
            history.push(outcome(Kind::Spike, "cpu.user", "restart", false));
            history.push(outcome(Kind::Absent, "heartbeat", "restart", true));
            history.push(outcome(Kind::Absent, "heartbeat", "scale", false));
            history.push(outcome(Kind::Trend, "disk.used", "retention", i % 5 != 0));
            history.push(outcome(Kind::Trend, "disk.used", "restart", false));
        }
        let model = Model::train(&history, 20).expect("trains");
        assert_eq!(model.trained_on, 240);
        let o = outcome(Kind::Spike, "cpu.system", "", false);
        let ranked = model.rank(&(&o).into());
        assert_eq!(ranked[0].action, "scale", "{ranked:?}");
        assert!(ranked[0].confidence > 0.6, "{ranked:?}");
        let restart = ranked.iter().find(|r| r.action == "restart").unwrap();
        assert!(restart.confidence < 0.4, "{ranked:?}");
        let o = outcome(Kind::Absent, "heartbeat", "", false);
        assert_eq!(model.rank(&(&o).into())[0].action, "restart");
        let o = outcome(Kind::Trend, "disk.free", "", false);
        assert_eq!(model.rank(&(&o).into())[0].action, "retention");
    }

    #[test]
    fn an_action_tried_often_is_not_favoured_for_it() {
        // Restart is the habit (tried four times as often) and works one
        // time in four; scale, tried rarely, works nine times in ten. Most
        // successes are restarts, yet scale is what resolves CPU spikes.
        let mut history = Vec::new();
        for i in 0..80 {
            history.push(outcome(Kind::Spike, "cpu", "restart", i % 4 == 0));
        }
        for i in 0..20 {
            history.push(outcome(Kind::Spike, "cpu", "scale", i % 10 != 0));
        }
        assert_eq!(most_frequent_success(&history).as_deref(), Some("restart"));
        let model = Model::train(&history, 20).expect("trains");
        let o = outcome(Kind::Spike, "cpu", "", false);
        let ranked = model.rank(&(&o).into());
        assert_eq!(ranked[0].action, "scale", "{ranked:?}");
    }

    #[test]
    fn it_needs_a_failure_and_a_recovery() {
        let mut history = Vec::new();
        for _ in 0..30 {
            history.push(outcome(Kind::Spike, "cpu", "scale", true));
            history.push(outcome(Kind::Absent, "heartbeat", "restart", true));
        }
        let e = Model::train(&history, 20).err().expect("only recoveries");
        assert!(!e.both_outcomes);
        history.push(outcome(Kind::Spike, "cpu", "restart", false));
        assert!(Model::train(&history, 20).is_ok());
    }

    #[test]
    fn baseline_is_the_most_frequent_success() {
        let h = vec![
            outcome(Kind::Spike, "a", "x", true),
            outcome(Kind::Spike, "a", "y", true),
            outcome(Kind::Spike, "a", "y", true),
            outcome(Kind::Spike, "a", "x", false),
            outcome(Kind::Spike, "a", "x", false),
        ];
        assert_eq!(most_frequent_success(&h).as_deref(), Some("y"));
    }
}

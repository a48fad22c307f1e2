//! The decisions: which actions an anomaly calls for, and whether each may
//! run now, waits for an approval, or is held back (cooldown, rate limit,
//! open breaker, dry-run). Pure: the [`Ledger`] it reads and updates is one
//! value in the replicated state, changed by compare-and-set, so the limits
//! hold for the whole cluster and each (anomaly, rule) is decided once, by
//! one node, however many nodes see the anomaly.

use std::collections::BTreeMap;

use chronicle_detect::anomaly::Anomaly;
use serde::{Deserialize, Serialize};

use crate::model::{Action, Risk, Rule, Safety};

const HOUR_MS: i64 = 3_600_000;
/// How long a decided (anomaly, rule) pair is remembered, so a repeat of
/// the same anomaly (an update, another node's copy) is not acted on again.
pub const DECIDED_FOR_MS: i64 = 24 * HOUR_MS;
/// Decided pairs remembered at most (the oldest tenth goes when full): the
/// ledger is one value of the state, read and written per anomaly, so it
/// stays near 100 KiB.
pub const MAX_DECIDED: usize = 2_000;

/// A circuit breaker's state, per action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    Closed {
        failures: u32,
    },
    /// No run until `until_ms`; then one trial.
    Open {
        until_ms: i64,
    },
    /// One trial is running: its outcome closes or reopens the breaker.
    HalfOpen,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed { failures: 0 }
    }
}

impl Breaker {
    /// Whether a run may start at `now_ms` (an open breaker past its wait
    /// lets one trial through and becomes half-open).
    pub fn admit(&mut self, now_ms: i64) -> bool {
        match *self {
            Breaker::Closed { .. } => true,
            Breaker::Open { until_ms } if now_ms >= until_ms => {
                *self = Breaker::HalfOpen;
                true
            }
            Breaker::Open { .. } | Breaker::HalfOpen => false,
        }
    }

    /// A run's outcome.
    pub fn record(&mut self, ok: bool, now_ms: i64, safety: &Safety) {
        let wait = i64::try_from(safety.breaker_cooldown.as_millis()).unwrap_or(i64::MAX);
        *self = match (*self, ok) {
            (_, true) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, false) if failures + 1 < safety.breaker_failures => {
                Breaker::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => Breaker::Open {
                until_ms: now_ms.saturating_add(wait),
            },
        };
    }
}

/// One action taken (counted against the hourly limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    pub at_ms: i64,
    pub rule: String,
    pub action: String,
}

/// What the limits need to remember, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Actions taken in the last hour.
    pub taken: Vec<Taken>,
    /// `rule|series` -> no action before this time.
    pub cooldowns: BTreeMap<String, i64>,
    /// `anomaly|rule` -> when it was decided.
    pub decided: BTreeMap<String, i64>,
    pub breakers: BTreeMap<String, Breaker>,
}

/// Why an action was not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Held {
    UnknownAction,
    Disabled,
    Cooldown { until_ms: i64 },
    RateLimited { scope: String, limit: u32 },
    BreakerOpen,
}

/// What becomes of one action for one anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Run it now.
    Execute,
    /// Its risk needs an approval; queued until `expires_ms`.
    AwaitApproval { expires_ms: i64 },
    /// Dry-run: it would have run.
    DryRun,
    /// Not run.
    Held(Held),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub rule: String,
    pub action: String,
    pub risk: Option<Risk>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The series an anomaly is on, as one key.
pub fn series_key(a: &Anomaly) -> String {
    let mut k = a.metric.clone();
    for (n, v) in &a.labels {
        k.push('|');
        k.push_str(n);
        k.push('=');
        k.push_str(v);
    }
    k
}

impl Ledger {
    /// Forgets what no longer limits anything at `now_ms`.
    pub fn prune(&mut self, now_ms: i64) {
        self.taken.retain(|t| now_ms - t.at_ms < HOUR_MS);
        self.cooldowns.retain(|_, until| *until > now_ms);
        self.decided.retain(|_, at| now_ms - *at < DECIDED_FOR_MS);
        if self.decided.len() > MAX_DECIDED {
            // The oldest tenth goes at once, so this runs once in a while.
            let mut ats: Vec<i64> = self.decided.values().copied().collect();
            let cut = ats.len() - MAX_DECIDED * 9 / 10;
            let (_, nth, _) = ats.select_nth_unstable(cut);
            let cutoff = *nth;
            self.decided.retain(|_, at| *at >= cutoff);
        }
    }

    fn taken_by(&self, rule: Option<&str>) -> u32 {
        self.taken
            .iter()
            .filter(|t| rule.is_none_or(|r| t.rule == r))
            .count() as u32
    }

    /// Whether one more action of `rule` fits the hourly limits; the
    /// limit it would pass otherwise.
    pub fn within_limits(&self, rule: &Rule, safety: &Safety) -> Result<(), Held> {
        if self.taken_by(None) >= safety.max_actions_per_hour {
            return Err(Held::RateLimited {
                scope: "global".into(),
                limit: safety.max_actions_per_hour,
            });
        }
        if let Some(limit) = rule.max_actions_per_hour {
            if self.taken_by(Some(&rule.id)) >= limit {
                return Err(Held::RateLimited {
                    scope: format!("rule {}", rule.id),
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Counts an action as taken now (it runs, or an approval released it).
    pub fn take(&mut self, rule: &str, action: &str, now_ms: i64) {
        self.taken.push(Taken {
            at_ms: now_ms,
            rule: rule.to_string(),
            action: action.to_string(),
        });
    }

    /// Decides what `anomaly` calls for at `now_ms`, recording it: a pair
    /// (anomaly, rule) already decided gives nothing. Returns the decisions
    /// in rule order, each rule's actions by priority (highest first).
    pub fn decide(
        &mut self,
        anomaly: &Anomaly,
        rules: &[Rule],
        actions: &BTreeMap<String, Action>,
        safety: &Safety,
        now_ms: i64,
    ) -> Vec<Decision> {
        self.prune(now_ms);
        let series = series_key(anomaly);
        let mut out = Vec::new();
        for rule in rules.iter().filter(|r| r.applies(anomaly, now_ms)) {
            let decided = format!("{}|{}", anomaly.id, rule.id);
            if self.decided.contains_key(&decided) {
                continue;
            }
            self.decided.insert(decided, now_ms);
            let cooldown_key = format!("{}|{series}", rule.id);
            if let Some(&until_ms) = self.cooldowns.get(&cooldown_key) {
                for id in &rule.actions {
                    out.push(Decision {
                        rule: rule.id.clone(),
                        action: id.clone(),
                        risk: actions.get(id).map(|a| a.risk),
                        outcome: Outcome::Held(Held::Cooldown { until_ms }),
                    });
                }
                continue;
            }
            let mut named: Vec<(&String, Option<&Action>)> = rule
                .actions
                .iter()
                .map(|id| (id, actions.get(id)))
                .collect();
            // Stable: equal priorities keep the rule's order.
            named.sort_by_key(|(_, a)| std::cmp::Reverse(a.map_or(i32::MIN, |a| a.priority)));
            let mut acted = false;
            for (id, action) in named {
                let outcome = match action {
                    None => Outcome::Held(Held::UnknownAction),
                    Some(a) if !a.enabled => Outcome::Held(Held::Disabled),
                    Some(a) => self.admit(rule, a, safety, now_ms),
                };
                acted |= matches!(
                    outcome,
                    Outcome::Execute | Outcome::AwaitApproval { .. } | Outcome::DryRun
                );
                out.push(Decision {
                    rule: rule.id.clone(),
                    action: id.clone(),
                    risk: action.map(|a| a.risk),
                    outcome,
                });
            }
            if acted {
                if let Some(c) = rule.cooldown {
                    let until = now_ms.saturating_add(i64::try_from(c.as_millis()).unwrap_or(0));
                    self.cooldowns.insert(cooldown_key, until);
                }
            }
        }
        out
    }

    fn admit(&mut self, rule: &Rule, a: &Action, safety: &Safety, now_ms: i64) -> Outcome {
        if a.risk >= safety.require_approval {
            let ttl = i64::try_from(safety.approval_ttl.as_millis()).unwrap_or(i64::MAX);
            return Outcome::AwaitApproval {
                expires_ms: now_ms.saturating_add(ttl),
            };
        }
        self.release(rule, a, safety, now_ms)
    }

    /// Whether an action (decided, or just approved) may run now: the
    /// hourly limits and its breaker. Counts it when it may.
    pub fn release(&mut self, rule: &Rule, a: &Action, safety: &Safety, now_ms: i64) -> Outcome {
        if let Err(held) = self.within_limits(rule, safety) {
            return Outcome::Held(held);
        }
        if safety.dry_run {
            return Outcome::DryRun;
        }
        if !self.breakers.entry(a.id.clone()).or_default().admit(now_ms) {
            return Outcome::Held(Held::BreakerOpen);
        }
        self.take(&rule.id, &a.id, now_ms);
        Outcome::Execute
    }

    /// An executed action's outcome, for its breaker.
    pub fn record(&mut self, action: &str, ok: bool, safety: &Safety, now_ms: i64) {
        self.breakers
            .entry(action.to_string())
            .or_default()
            .record(ok, now_ms, safety);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chronicle_detect::{Kind, Severity};

    use super::*;
    use crate::model::ActionKind;

    fn anomaly(id: &str, metric: &str, severity: Severity) -> Anomaly {
        Anomaly {
            id: id.into(),
            kind: Kind::Spike,
            metric: metric.into(),
            labels: [("pod".to_string(), "api-1".to_string())].into(),
            severity,
            score: 12.0,
            start: 1_000,
            end: None,
            evidence: None,
            source: "detector".into(),
        }
    }

    fn action(id: &str, risk: Risk, priority: i32) -> Action {
        Action {
            id: id.into(),
            name: id.into(),
            priority,
            risk,
            enabled: true,
            kind: ActionKind::Alert {
                subject: Some("ops.page".into()),
                alertmanager_url: None,
            },
        }
    }

    fn rule(id: &str, actions: &[&str]) -> Rule {
        Rule {
            id: id.into(),
            name: String::new(),
            enabled: true,
            types: vec![Kind::Spike],
            metrics: vec!["cpu_*".into()],
            labels: BTreeMap::new(),
            conditions: Default::default(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            cooldown: None,
            max_actions_per_hour: None,
        }
    }

    fn registry(list: &[Action]) -> BTreeMap<String, Action> {
        list.iter().map(|a| (a.id.clone(), a.clone())).collect()
    }

    #[test]
    fn rules_match_by_type_glob_labels_and_conditions() {
        let mut r = rule("r", &["a"]);
        let a = anomaly("x", "cpu_seconds", Severity::Medium);
        assert!(r.applies(&a, 2_000));
        assert!(!r.applies(&anomaly("x", "mem_bytes", Severity::Medium), 2_000));
        r.labels.insert("pod".into(), "api-2".into());
        assert!(!r.applies(&a, 2_000));
        r.labels.insert("pod".into(), "api-1".into());
        assert!(r.applies(&a, 2_000));
        r.conditions.min_severity = Some(Severity::High);
        assert!(!r.applies(&a, 2_000));
        assert!(r.applies(&anomaly("x", "cpu_seconds", Severity::Critical), 2_000));
        r.conditions.min_severity = None;
        r.conditions.min_score = Some(12.5);
        assert!(!r.applies(&a, 2_000));
        r.conditions.min_score = None;
        // Open since 1 s: lasted 1 s at 2 s, 5 min later it has lasted 5 min.
        r.conditions.min_duration = Some(Duration::from_secs(300));
        assert!(!r.applies(&a, 2_000));
        assert!(r.applies(&a, 1_000 + 300_000));
        r.types = vec![Kind::Dip];
        assert!(!r.applies(&a, 1_000 + 300_000));
    }

    #[test]
    fn actions_run_by_priority_once_per_anomaly_and_rule() {
        let actions = registry(&[action("low", Risk::Low, 1), action("first", Risk::Low, 9)]);
        let rules = [rule("r", &["low", "first", "missing"])];
        let mut ledger = Ledger::default();
        let safety = Safety::default();
        let a = anomaly("x", "cpu_seconds", Severity::High);
        let d = ledger.decide(&a, &rules, &actions, &safety, 10);
        let order: Vec<(&str, &Outcome)> =
            d.iter().map(|d| (d.action.as_str(), &d.outcome)).collect();
        assert_eq!(
            order,
            vec![
                ("first", &Outcome::Execute),
                ("low", &Outcome::Execute),
                ("missing", &Outcome::Held(Held::UnknownAction)),
            ]
        );
        // The same anomaly again (an update, another node): nothing.
        assert!(ledger.decide(&a, &rules, &actions, &safety, 20).is_empty());
    }

    #[test]
    fn risky_actions_wait_for_approval_and_dry_run_acts_on_nothing() {
        let actions = registry(&[action("scale", Risk::High, 0)]);
        let rules = [rule("r", &["scale"])];
        let mut ledger = Ledger::default();
        let mut safety = Safety::default();
        let d = ledger.decide(
            &anomaly("x", "cpu_a", Severity::High),
            &rules,
            &actions,
            &safety,
            0,
        );
        assert_eq!(
            d[0].outcome,
            Outcome::AwaitApproval {
                expires_ms: 3_600_000
            }
        );
        assert!(ledger.taken.is_empty(), "queued, not taken");
        safety.require_approval = Risk::Critical;
        safety.dry_run = true;
        let d = ledger.decide(
            &anomaly("y", "cpu_a", Severity::High),
            &rules,
            &actions,
            &safety,
            0,
        );
        assert_eq!(d[0].outcome, Outcome::DryRun);
        assert!(ledger.taken.is_empty());
    }

    #[test]
    fn hourly_limits_hold_globally_and_per_rule() {
        let actions = registry(&[action("a", Risk::Low, 0)]);
        let mut r = rule("r", &["a"]);
        r.max_actions_per_hour = Some(2);
        let rules = [r];
        let mut ledger = Ledger::default();
        let mut safety = Safety::default();
        let outcome = |ledger: &mut Ledger, safety: &Safety, id: &str, now: i64| {
            ledger.decide(
                &anomaly(id, "cpu_a", Severity::High),
                &rules,
                &actions,
                safety,
                now,
            )[0]
            .outcome
            .clone()
        };
        assert_eq!(outcome(&mut ledger, &safety, "1", 0), Outcome::Execute);
        assert_eq!(outcome(&mut ledger, &safety, "2", 1), Outcome::Execute);
        assert_eq!(
            outcome(&mut ledger, &safety, "3", 2),
            Outcome::Held(Held::RateLimited {
                scope: "rule r".into(),
                limit: 2
            })
        );
        // An hour after the first, one fits again.
        assert_eq!(
            outcome(&mut ledger, &safety, "4", HOUR_MS),
            Outcome::Execute
        );
        // The global limit holds whatever the rule's allows.
        safety.max_actions_per_hour = 1;
        assert_eq!(
            outcome(&mut ledger, &safety, "5", HOUR_MS + 2),
            Outcome::Held(Held::RateLimited {
                scope: "global".into(),
                limit: 1
            })
        );
    }

    #[test]
    fn a_cooldown_holds_the_rule_back_on_that_series_only() {
        let actions = registry(&[action("a", Risk::Low, 0)]);
        let mut r = rule("r", &["a"]);
        r.cooldown = Some(Duration::from_secs(600));
        let rules = [r];
        let mut ledger = Ledger::default();
        let safety = Safety::default();
        let on = |id: &str, pod: &str| {
            let mut a = anomaly(id, "cpu_a", Severity::High);
            a.labels.insert("pod".into(), pod.into());
            a
        };
        let d = ledger.decide(&on("1", "p1"), &rules, &actions, &safety, 0);
        assert_eq!(d[0].outcome, Outcome::Execute);
        let d = ledger.decide(&on("2", "p1"), &rules, &actions, &safety, 1_000);
        assert_eq!(
            d[0].outcome,
            Outcome::Held(Held::Cooldown { until_ms: 600_000 })
        );
        let d = ledger.decide(&on("3", "p2"), &rules, &actions, &safety, 1_000);
        assert_eq!(d[0].outcome, Outcome::Execute, "another series");
        let d = ledger.decide(&on("4", "p1"), &rules, &actions, &safety, 600_000);
        assert_eq!(d[0].outcome, Outcome::Execute, "cooldown over");
    }

    #[test]
    fn a_breaker_opens_after_failures_half_opens_once_and_closes_on_success() {
        let safety = Safety {
            breaker_failures: 2,
            breaker_cooldown: Duration::from_secs(60),
            ..Safety::default()
        };
        let mut b = Breaker::default();
        assert!(b.admit(0));
        b.record(false, 0, &safety);
        assert_eq!(b, Breaker::Closed { failures: 1 });
        b.record(false, 1, &safety);
        assert_eq!(b, Breaker::Open { until_ms: 60_001 });
        assert!(!b.admit(60_000));
        assert!(b.admit(60_001), "one trial after the wait");
        assert_eq!(b, Breaker::HalfOpen);
        assert!(!b.admit(60_002), "only one trial at a time");
        b.record(false, 60_010, &safety);
        assert_eq!(
            b,
            Breaker::Open { until_ms: 120_010 },
            "a failed trial reopens"
        );
        assert!(b.admit(120_010));
        b.record(true, 120_020, &safety);
        assert_eq!(b, Breaker::Closed { failures: 0 });

        // Through the ledger: an open breaker holds the action back.
        let actions = registry(&[action("a", Risk::Low, 0)]);
        let rules = [rule("r", &["a"])];
        let mut ledger = Ledger::default();
        ledger.record("a", false, &safety, 0);
        ledger.record("a", false, &safety, 0);
        let d = ledger.decide(
            &anomaly("1", "cpu_a", Severity::High),
            &rules,
            &actions,
            &safety,
            5,
        );
        assert_eq!(d[0].outcome, Outcome::Held(Held::BreakerOpen));
    }

    #[test]
    fn the_ledger_stays_bounded() {
        let actions = registry(&[action("a", Risk::Low, 0)]);
        let rules = [rule("r", &["a"])];
        let mut ledger = Ledger::default();
        let safety = Safety {
            max_actions_per_hour: 5,
            ..Safety::default()
        };
        for i in 0..(MAX_DECIDED as i64 + 100) {
            ledger.decide(
                &anomaly(&i.to_string(), "cpu_a", Severity::High),
                &rules,
                &actions,
                &safety,
                i,
            );
        }
        assert!(ledger.decided.len() <= MAX_DECIDED);
        assert!(ledger.decided.len() >= MAX_DECIDED * 9 / 10);
        assert_eq!(ledger.taken.len(), 5);
    }
}

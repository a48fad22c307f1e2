//! `chronicle bench recommend`: how well the remediation recommender ranks
//! actions, against the baseline the issue names (the most frequent
//! successful action), on held-out incidents.
//!
//! The history is generated, since no public incident set records anomaly,
//! action and outcome: seven incident scenarios (CPU saturation, a memory
//! leak, a bad deploy, a dead agent, a filling disk, a traffic surge, slow
//! queries whose fix depends on the service), each with a probability that
//! each of six actions resolves it. Metric names vary within a scenario
//! (`cpu_user_seconds`, `cpu_system_seconds`, ...), services and
//! severities are drawn at random, one incident in ten has its anomaly type
//! drawn at random (the detector's call is not always the cause), and the
//! operators of the history tried actions by a runbook that is right only
//! half the time (else at random). Outcomes are drawn from the
//! probabilities: the best action fails sometimes, a wrong one works
//! sometimes. The newest `--holdout` share of incidents is held out.
//!
//! Reported: top-1 accuracy (the recommended action is the scenario's best),
//! and the mean probability that the recommended action resolves the
//! incident, for the model, the baseline, a random pick and the oracle; and
//! a learning curve over the training size. The model is the same
//! `chronicle_remediation::learn::Model` the node's
//! `/api/remediation/recommendations` trains on stored outcomes.

use std::collections::BTreeMap;
use std::time::Instant;

use chronicle_detect::detector::{Kind, Severity};
use chronicle_remediation::learn::{most_frequent_success, Facts, Model, Outcome};
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::bench::round3;

#[derive(Args, Debug)]
pub struct RecommendBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Incidents in the generated history.
    #[arg(long, default_value_t = 3000)]
    incidents: usize,
    /// Share of the newest incidents held out for scoring.
    #[arg(long, default_value_t = 0.3)]
    holdout: f64,
    /// Seed of the generated history (printed; the same seed gives the
    /// same history).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Resolved outcomes the model needs before it answers (the node's
    /// `learning.min_history`).
    #[arg(long, default_value_t = 20)]
    min_history: usize,
}

const ACTIONS: [&str; 6] = [
    "scale-up",
    "restart",
    "rollback-deploy",
    "shed-load",
    "shorten-retention",
    "page-oncall",
];

/// One kind of incident: what the detector sees of it, and how likely each
/// action (in [`ACTIONS`] order) resolves it.
struct Scenario {
    name: &'static str,
    metrics: &'static [&'static str],
    kinds: &'static [Kind],
    /// Success probability per action; `db` overrides for the `db`
    /// service (the fix depends on a label).
    p: [f64; 6],
    db: Option<[f64; 6]>,
    /// The runbook's (not always right) first choice.
    runbook: usize,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "cpu saturation",
        metrics: &["cpu_user_seconds", "cpu_system_seconds", "cpu_usage_ratio"],
        kinds: &[Kind::Spike, Kind::LevelShift],
        p: [0.8, 0.25, 0.2, 0.5, 0.02, 0.05],
        db: None,
        runbook: 1,
    },
    Scenario {
        name: "memory leak",
        metrics: &[
            "memory_rss_bytes",
            "heap_used_bytes",
            "memory_working_set_bytes",
        ],
        kinds: &[Kind::Trend, Kind::LevelShift],
        p: [0.3, 0.85, 0.4, 0.1, 0.02, 0.05],
        db: None,
        runbook: 1,
    },
    Scenario {
        name: "bad deploy",
        metrics: &[
            "http_errors_ratio",
            "http_server_errors_total",
            "grpc_failures_ratio",
        ],
        kinds: &[Kind::LevelShift, Kind::Spike],
        p: [0.1, 0.3, 0.85, 0.15, 0.02, 0.05],
        db: None,
        runbook: 0,
    },
    Scenario {
        name: "dead agent",
        metrics: &["agent_heartbeat", "exporter_up", "agent_last_seen_seconds"],
        kinds: &[Kind::Absent],
        p: [0.05, 0.9, 0.1, 0.02, 0.02, 0.1],
        db: None,
        runbook: 5,
    },
    Scenario {
        name: "disk filling",
        metrics: &["disk_used_bytes", "volume_used_ratio", "tsdb_disk_bytes"],
        kinds: &[Kind::Trend],
        p: [0.05, 0.05, 0.05, 0.05, 0.85, 0.1],
        db: None,
        runbook: 5,
    },
    Scenario {
        name: "traffic surge",
        metrics: &["http_requests_rate", "ingest_points_rate", "queue_depth"],
        kinds: &[Kind::Spike],
        p: [0.75, 0.1, 0.05, 0.6, 0.02, 0.05],
        db: None,
        runbook: 3,
    },
    Scenario {
        name: "slow queries",
        metrics: &[
            "latency_p99_seconds",
            "request_duration_seconds",
            "query_latency_seconds",
        ],
        kinds: &[Kind::Spike, Kind::LevelShift],
        p: [0.6, 0.2, 0.3, 0.3, 0.02, 0.05],
        db: Some([0.1, 0.45, 0.1, 0.7, 0.02, 0.05]),
        runbook: 0,
    },
];

const SERVICES: [&str; 5] = ["api", "web", "worker", "db", "cache"];
const KINDS: [Kind; 5] = [
    Kind::Spike,
    Kind::Dip,
    Kind::LevelShift,
    Kind::Trend,
    Kind::Absent,
];

/// One generated incident: the outcome the history recorded, and the
/// truth the scorer knows.
struct Incident {
    outcome: Outcome,
    /// Per action, the probability it resolves this incident.
    p: [f64; 6],
}

fn generate(n: usize, seed: u64) -> Vec<Incident> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = 1_760_000_000_000i64;
    (0..n)
        .map(|i| {
            let s = &SCENARIOS[rng.random_range(0..SCENARIOS.len())];
            let service = SERVICES[rng.random_range(0..SERVICES.len())];
            let p = match (service, s.db) {
                ("db", Some(db)) => db,
                _ => s.p,
            };
            let kind = if rng.random_bool(0.1) {
                KINDS[rng.random_range(0..KINDS.len())]
            } else {
                s.kinds[rng.random_range(0..s.kinds.len())]
            };
            let severity = [
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ][rng.random_range(0..4)];
            let action = if rng.random_bool(0.5) {
                s.runbook
            } else {
                rng.random_range(0..ACTIONS.len())
            };
            let recovered = rng.random_bool(p[action]);
            let mut labels = BTreeMap::new();
            labels.insert("service".to_string(), service.to_string());
            labels.insert(
                "instance".to_string(),
                format!("{service}-{}", rng.random_range(0..8)),
            );
            let at = t0 + i as i64 * 60_000;
            Incident {
                outcome: Outcome {
                    id: format!("{at:013}-1-{i}"),
                    anomaly: format!("a{i}"),
                    metric: s.metrics[rng.random_range(0..s.metrics.len())].to_string(),
                    kind,
                    severity,
                    score: 3.0 + rng.random_range(0.0..12.0),
                    labels,
                    action: ACTIONS[action].to_string(),
                    executed_ms: at,
                    checked_ms: at + 600_000,
                    recovered,
                    ended_before: false,
                    ended_ms: recovered.then_some(at + 300_000),
                },
                p,
            }
        })
        .collect()
}

/// Scores of one way of choosing an action on the held-out incidents.
#[derive(Default, Clone, Copy)]
struct Score {
    /// Chose the incident's best action.
    hits: usize,
    /// Sum of the chosen actions' probabilities of resolving it.
    expected: f64,
    n: usize,
}

impl Score {
    fn add(&mut self, incident: &Incident, action: usize) {
        let best = (0..ACTIONS.len())
            .max_by(|a, b| incident.p[*a].total_cmp(&incident.p[*b]))
            .expect("actions");
        self.hits += usize::from(action == best);
        self.expected += incident.p[action];
        self.n += 1;
    }
    fn accuracy(&self) -> f64 {
        self.hits as f64 / self.n.max(1) as f64
    }
    fn resolved(&self) -> f64 {
        self.expected / self.n.max(1) as f64
    }
}

fn index(action: &str) -> usize {
    ACTIONS
        .iter()
        .position(|a| *a == action)
        .expect("a known action")
}

pub fn run(args: RecommendBench) -> Result<(), Box<dyn std::error::Error>> {
    if !(0.05..=0.9).contains(&args.holdout) {
        return Err("--holdout: 0.05 to 0.9".into());
    }
    if args.incidents < 100 || args.incidents > 1_000_000 {
        return Err("--incidents: 100 to 1000000".into());
    }
    let incidents = generate(args.incidents, args.seed);
    let split = ((1.0 - args.holdout) * incidents.len() as f64) as usize;
    let (train, test) = incidents.split_at(split);
    let history: Vec<Outcome> = train.iter().map(|i| i.outcome.clone()).collect();

    let started = Instant::now();
    let model = Model::train(&history, args.min_history)
        .map_err(|e| format!("not enough history: {} outcomes, {} needed", e.have, e.need))?;
    let train_seconds = started.elapsed().as_secs_f64();
    let baseline = index(&most_frequent_success(&history).ok_or("no success in the history")?);

    let (mut learned, mut base, mut random, mut oracle) = (
        Score::default(),
        Score::default(),
        Score::default(),
        Score::default(),
    );
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut confidence = 0.0;
    let started = Instant::now();
    for incident in test {
        let ranked = model.rank(&Facts::from(&incident.outcome));
        confidence += ranked[0].confidence;
        learned.add(incident, index(&ranked[0].action));
        base.add(incident, baseline);
        random.add(incident, rng.random_range(0..ACTIONS.len()));
        let best = (0..ACTIONS.len())
            .max_by(|a, b| incident.p[*a].total_cmp(&incident.p[*b]))
            .expect("actions");
        oracle.add(incident, best);
    }
    let rank_us = started.elapsed().as_secs_f64() * 1e6 / test.len().max(1) as f64;

    // Learning curve: the newest n training incidents.
    let mut curve = Vec::new();
    for n in [50usize, 100, 200, 500, 1000, 2000] {
        if n > history.len() {
            break;
        }
        let recent = &history[history.len() - n..];
        let point = match Model::train(recent, args.min_history) {
            Ok(m) => {
                let mut s = Score::default();
                for incident in test {
                    let ranked = m.rank(&Facts::from(&incident.outcome));
                    s.add(incident, index(&ranked[0].action));
                }
                json!({"incidents": n, "outcomes": m.trained_on,
                       "accuracy": round3(s.accuracy()), "resolved": round3(s.resolved())})
            }
            Err(e) => json!({"incidents": n, "not_enough_history": e.have}),
        };
        curve.push(point);
    }

    let report = json!({
        "seed": args.seed,
        "incidents": args.incidents,
        "train": train.len(),
        "test": test.len(),
        "outcomes": model.trained_on,
        "scenarios": SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>(),
        "model": {"accuracy": round3(learned.accuracy()), "resolved": round3(learned.resolved()),
                  "mean_confidence": round3(confidence / test.len().max(1) as f64)},
        "baseline_most_frequent_success": {"action": ACTIONS[baseline],
                  "accuracy": round3(base.accuracy()), "resolved": round3(base.resolved())},
        "random": {"accuracy": round3(random.accuracy()), "resolved": round3(random.resolved())},
        "oracle": {"accuracy": 1.0, "resolved": round3(oracle.resolved())},
        "train_seconds": round3(train_seconds),
        "rank_microseconds": round3(rank_us),
        "learning_curve": curve,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "recommender: {} generated incidents (seed {}), trained on the oldest {} ({} outcomes), scored on the newest {}",
        args.incidents,
        args.seed,
        train.len(),
        model.trained_on,
        test.len()
    );
    println!("{:<34} {:>9} {:>9}", "", "accuracy", "resolved");
    for (name, s) in [
        ("model (logistic regression)", learned),
        ("baseline (most frequent success)", base),
        ("random", random),
        ("oracle (best action)", oracle),
    ] {
        println!("{name:<34} {:>9.3} {:>9.3}", s.accuracy(), s.resolved());
    }
    println!(
        "baseline action: {}; training {:.3} s; ranking {:.1} µs per anomaly",
        ACTIONS[baseline], train_seconds, rank_us
    );
    println!("learning curve (accuracy by training incidents):");
    for point in &curve {
        println!("  {point}");
    }
    Ok(())
}

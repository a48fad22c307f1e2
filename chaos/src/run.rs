//! One chaos run: start a local cluster, run the workloads while a seeded
//! nemesis injects the plan's faults, heal, read everything once more,
//! check the histories, and report.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::history::draw;
use crate::linearizability::{check_partitioned, Verdict};
use crate::local::{ClusterOptions, LocalCluster};
use crate::model::{PerKey, Register};
use crate::nemesis::{self, Injected};
use crate::plan::{CheckedPlan, FaultSpec};
use crate::register::{self, RegisterWorkload};
use crate::series::{self, SeriesCheck, SeriesWorkload};
use crate::timeline;
use crate::ChaosError;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cluster: ClusterOptions,
    pub seed: u64,
    pub plan: CheckedPlan,
    /// Search steps the linearizability checker may take per key.
    pub max_steps: u64,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// process, network, disk or clock.
    pub class: &'static str,
    pub fault: FaultSpec,
    pub description: String,
    pub nodes: Vec<u64>,
    /// Seconds since the run started.
    pub start_s: f64,
    pub healed_s: f64,
    /// From the heal until every node was ready again.
    pub recovery_s: f64,
    /// Requests made while the fault held (refused ones included), and how
    /// many got an answer.
    pub operations: usize,
    pub answered: usize,
    /// For a terminate: the exit code (`None`: killed after the grace period).
    pub exit_code: Option<i32>,
    /// Whether the exit code was observed at all.
    pub exit_observed: bool,
}

/// Operations of every workload, for availability and the timeline.
#[derive(Debug, Clone, Copy)]
pub struct OpTimes {
    pub call: u64,
    pub ret: Option<u64>,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plan: String,
    pub seed: u64,
    pub nodes: u64,
    pub duration_s: f64,
    pub faults: Vec<FaultEvent>,
    pub operations: usize,
    pub answered: usize,
    pub unknown: usize,
    /// Share of operations that got an answer, invoked during a fault / outside one.
    pub availability_during_faults: f64,
    pub availability_outside_faults: f64,
    /// The register workload's verdict (`None`: not run).
    pub register: Option<RegisterResult>,
    /// The series workload's check (`None`: not run).
    pub series: Option<SeriesCheck>,
    /// What is wrong, one line (or drawing) each.
    pub violations: Vec<String>,
    /// Seconds since the start at which a violating operation was invoked.
    pub violation_times: Vec<f64>,
    /// The register's minimal failing history, when a key is not
    /// linearizable (also drawn in the timeline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_history: Option<FailingHistory>,
    /// Every operation's times (for the timeline).
    #[serde(skip)]
    pub ops: Vec<OpTimes>,
}

/// A minimal failing history: the operations of one key that no order
/// explains, each dropped one making the rest linearizable.
#[derive(Debug, Clone, Serialize)]
pub struct FailingHistory {
    pub key: String,
    pub ops: Vec<DrawnOp>,
}

/// One operation of a failing history, as drawn.
#[derive(Debug, Clone, Serialize)]
pub struct DrawnOp {
    pub client: u64,
    /// Seconds since the run started (`ret_s` `None`: unknown outcome).
    pub call_s: f64,
    pub ret_s: Option<f64>,
    /// What it asked and what it got.
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegisterResult {
    pub operations: usize,
    pub verdict: String,
    pub check_steps: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The text summary.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "chaos run: plan {}, seed {}, {} nodes, {:.0} s, {} faults\n\
             operations: {} ({} answered, {} unknown); availability {:.1} % during faults, {:.1} % outside\n",
            self.plan,
            self.seed,
            self.nodes,
            self.duration_s,
            self.faults.len(),
            self.operations,
            self.answered,
            self.unknown,
            100.0 * self.availability_during_faults,
            100.0 * self.availability_outside_faults,
        );
        if let Some(r) = &self.register {
            out.push_str(&format!(
                "register: {} operations, {} ({} search steps)\n",
                r.operations, r.verdict, r.check_steps
            ));
        }
        if let Some(s) = &self.series {
            out.push_str(&format!(
                "series: {} appends ({} acknowledged), {} reads ({} of ranges, {} of the newest sample); \
                 final reads hold {} of {} acknowledged and {} unknown; \
                 lost {}, stale {}, non-monotonic {}, write order {}, duplicate {}, phantom {}\n",
                s.appends, s.acknowledged, s.reads, s.range_reads, s.newest_reads, s.final_present,
                s.acknowledged, s.unknown_present, s.lost, s.stale, s.non_monotonic, s.write_order,
                s.duplicate, s.phantom
            ));
        }
        out.push_str("   start-healed   recovery  answered  fault\n");
        for f in &self.faults {
            out.push_str(&format!(
                "  {:>6.2}-{:<7.2} {:>6.2} s  {:>5.1} %   {}{}\n",
                f.start_s,
                f.healed_s,
                f.recovery_s,
                if f.operations == 0 {
                    100.0
                } else {
                    100.0 * f.answered as f64 / f.operations as f64
                },
                f.description,
                f.exit_code
                    .map_or(String::new(), |c| format!(" (exit {c})"))
            ));
        }
        if self.violations.is_empty() {
            out.push_str("no violations\n");
        }
        for v in &self.violations {
            out.push_str(&format!("VIOLATION: {v}\n"));
        }
        out
    }
}

/// What a run breaks: a cluster the nemesis injects faults into and the
/// workloads talk to. A [`LocalCluster`] of processes on this machine, or a
/// Helm-installed cluster through Chaos Mesh (crate chronicle-chaos-mesh).
pub trait Target {
    /// Node ids, as the report names them.
    fn node_ids(&self) -> Vec<u64>;
    /// HTTP base URLs the workload clients spread over (the first also takes
    /// the final reads).
    fn endpoints(&self) -> Vec<String>;
    /// Injects `spec`, choosing its nodes with `rng`.
    fn inject(&mut self, spec: &FaultSpec, rng: &mut SmallRng) -> Result<Injected, ChaosError>;
    /// Undoes `injected` and waits (at most `limit`) until every node is ready.
    fn heal(&mut self, injected: &Injected, limit: Duration) -> Result<(), ChaosError>;
    /// Undoes every fault still in place (the run is ending or failed).
    fn heal_all(&mut self, limit: Duration) -> Result<(), ChaosError>;
    /// The run is over: violations of the stop itself (a node that did not
    /// exit cleanly), if the target stops its nodes.
    fn finish(&mut self) -> Vec<String>;
}

impl Target for LocalCluster {
    fn node_ids(&self) -> Vec<u64> {
        LocalCluster::node_ids(self)
    }

    fn endpoints(&self) -> Vec<String> {
        LocalCluster::node_ids(self)
            .iter()
            .map(|&id| self.http(id))
            .collect()
    }

    fn inject(&mut self, spec: &FaultSpec, rng: &mut SmallRng) -> Result<Injected, ChaosError> {
        nemesis::inject(self, spec, rng)
    }

    fn heal(&mut self, injected: &Injected, limit: Duration) -> Result<(), ChaosError> {
        nemesis::heal(self, injected, limit)
    }

    fn heal_all(&mut self, limit: Duration) -> Result<(), ChaosError> {
        LocalCluster::heal(self, limit)
    }

    /// The nodes stop gracefully at the end; each must exit 0.
    fn finish(&mut self) -> Vec<String> {
        let mut violations = Vec::new();
        for id in LocalCluster::node_ids(self) {
            match self.terminate(id, Duration::from_secs(30)) {
                Some(0) => {}
                Some(code) => {
                    violations.push(format!("node {id} exited with {code} at the end, not 0"))
                }
                None => violations.push(format!(
                    "node {id} did not exit by itself within 30 s of SIGTERM at the end (or died by a signal)"
                )),
            }
        }
        violations
    }
}

/// Runs it on a local cluster it starts; `progress` hears what happens as it
/// happens.
pub fn run(options: &RunOptions, mut progress: impl FnMut(&str)) -> Result<Report, ChaosError> {
    progress(&format!(
        "plan {}, seed {} (replay with --seed {}); starting nats-server and {} nodes in {}",
        options.plan.plan.name,
        options.seed,
        options.seed,
        options.cluster.nodes,
        options.cluster.root.display()
    ));
    let mut cluster = LocalCluster::start(options.cluster.clone())?;
    run_on(
        &mut cluster,
        &options.plan,
        options.seed,
        options.max_steps,
        progress,
    )
}

/// Runs `plan` against `target`: the workloads under the seeded nemesis,
/// the final reads, the checks and the report.
pub fn run_on(
    target: &mut dyn Target,
    plan: &CheckedPlan,
    seed: u64,
    max_steps: u64,
    mut progress: impl FnMut(&str),
) -> Result<Report, ChaosError> {
    let nodes = target.endpoints();
    if nodes.is_empty() {
        return Err(ChaosError::Process(
            "no endpoint to run the workloads against".into(),
        ));
    }
    let epoch = Instant::now();
    let secs = |t: Instant| t.duration_since(epoch).as_secs_f64();
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let stop = Arc::new(AtomicBool::new(false));
    let register_history = Arc::new(Mutex::new(Vec::new()));
    let series_history = Arc::new(Mutex::new(Vec::new()));
    // Requests no node listened for: not operations, but not answered either.
    let refused = Arc::new(Mutex::new(Vec::new()));
    let workload = &plan.plan.workload;
    let register_workload = RegisterWorkload {
        keys: workload.keys,
        clients: workload.clients,
        ..RegisterWorkload::default()
    };
    let series_workload = SeriesWorkload {
        keys: workload.keys,
        clients: workload.clients,
        base,
        ..SeriesWorkload::default()
    };
    let mut threads = Vec::new();
    if workload.register {
        let (w, nodes, stop, history, seed, refused) = (
            register_workload.clone(),
            nodes.clone(),
            stop.clone(),
            register_history.clone(),
            seed,
            refused.clone(),
        );
        threads.push(std::thread::spawn(move || {
            register::run(&w, &nodes, seed, epoch, stop, history, refused)
        }));
    }
    if workload.series {
        let (w, nodes, stop, history, seed, refused) = (
            series_workload.clone(),
            nodes.clone(),
            stop.clone(),
            series_history.clone(),
            seed,
            refused.clone(),
        );
        threads.push(std::thread::spawn(move || {
            series::run(&w, &nodes, seed, epoch, stop, history, refused)
        }));
    }
    progress("workloads running");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let end = epoch + plan.duration;
    let mut failure = None;
    let mut round: Vec<&FaultSpec> = Vec::new();
    while Instant::now() + plan.interval < end {
        std::thread::sleep(plan.interval);
        if round.is_empty() {
            round = plan.plan.faults.iter().collect();
            round.shuffle(&mut rng);
        }
        let spec = round.pop().expect("refilled above");
        let start = Instant::now();
        let injected = match target.inject(spec, &mut rng) {
            Ok(i) => i,
            Err(e) => {
                progress(&format!(
                    "{:>7.2} s  could not inject a fault: {e}",
                    secs(start)
                ));
                failure = Some((secs(start), format!("a fault could not be injected: {e}")));
                break;
            }
        };
        progress(&format!(
            "{:>7.2} s  {} (ends in {:.0?})",
            secs(start),
            injected.description,
            plan.hold
        ));
        std::thread::sleep(plan.hold);
        let healing = Instant::now();
        let healed = target.heal(&injected, Duration::from_secs(60));
        let ready = Instant::now();
        progress(&format!(
            "{:>7.2} s  healed; every node ready {:.2} s later",
            secs(healing),
            (ready - healing).as_secs_f64()
        ));
        events.push(FaultEvent {
            class: nemesis::class(spec),
            fault: spec.clone(),
            description: injected.description,
            nodes: injected.nodes,
            start_s: secs(start),
            healed_s: secs(healing),
            recovery_s: (ready - healing).as_secs_f64(),
            operations: 0,
            answered: 0,
            exit_code: injected.exit_code,
            exit_observed: injected.exit_observed,
        });
        if let Err(e) = healed {
            progress(&format!(
                "{:>7.2} s  the cluster did not recover: {e}",
                secs(ready)
            ));
            failure = Some((
                secs(healing),
                format!("the cluster did not recover after a heal: {e}"),
            ));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    progress("stopping the workloads");
    for t in threads {
        let _ = t.join();
    }
    // A cluster that does not recover is a violation of its own, and the
    // run still reads, checks and reports what it can: the report says
    // why, and what the surviving nodes hold.
    let mut violations = Vec::new();
    let mut violation_times = Vec::new();
    if let Some((at, e)) = failure {
        violation_times.push(at);
        violations.push(e);
    }
    let heal_started = secs(Instant::now());
    if let Err(e) = target.heal_all(Duration::from_secs(60)) {
        progress(&format!("the cluster did not recover at the end: {e}"));
        violation_times.push(heal_started);
        violations.push(format!("the cluster did not recover at the end: {e}"));
    }
    if workload.register {
        if let Err(e) = register::final_reads(&register_workload, &nodes, epoch, &register_history)
        {
            violations.push(e);
        }
    }
    if workload.series {
        if let Err(e) = series::final_reads(&series_workload, &nodes, epoch, &series_history) {
            violations.push(e);
        }
    }
    let register_history = std::mem::take(&mut *register_history.lock().expect("history lock"));
    let series_history = std::mem::take(&mut *series_history.lock().expect("history lock"));

    let mut failing_history = None;
    let register = workload.register.then(|| {
        progress(&format!(
            "checking {} register operations for linearizability",
            register_history.len()
        ));
        let check = check_partitioned(
            &PerKey(Register),
            &register_history,
            |op| op.input.key.clone(),
            max_steps,
        );
        match check.verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                if let Some(first) = check.minimal.iter().map(|o| o.call).min() {
                    violation_times.push(first as f64 / 1e9);
                }
                failing_history = Some(FailingHistory {
                    key: check.key.clone().unwrap_or_default(),
                    ops: check
                        .minimal
                        .iter()
                        .map(|o| DrawnOp {
                            client: o.client,
                            call_s: o.call as f64 / 1e9,
                            ret_s: o.ret.map(|r| r as f64 / 1e9),
                            label: format!(
                                "{:?} -> {}",
                                o.input.input,
                                o.output
                                    .as_ref()
                                    .map_or("unknown".into(), |out| format!("{out:?}"))
                            ),
                        })
                        .collect(),
                });
                violations.push(format!(
                    "register key {} is not linearizable; a minimal failing history:\n{}",
                    check.key.clone().unwrap_or_default(),
                    draw(&check.minimal)
                ))
            }
            Verdict::Unknown => violations.push(format!(
                "register key {} could not be checked within {} steps",
                check.key.clone().unwrap_or_default(),
                max_steps
            )),
        }
        RegisterResult {
            operations: register_history.len(),
            verdict: match check.verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable => "not linearizable",
                Verdict::Unknown => "unknown",
            }
            .into(),
            check_steps: check.steps,
        }
    });
    let series = workload.series.then(|| {
        progress(&format!(
            "checking {} series operations",
            series_history.len()
        ));
        let check = series::check(&series_history, base);
        for (at, what) in &check.examples {
            violation_times.push(*at as f64 / 1e9);
            violations.push(what.clone());
        }
        if check.violations() > check.examples.len() {
            violations.push(format!(
                "series: {} more violations of the same kinds",
                check.violations() - check.examples.len()
            ));
        }
        check
    });
    for f in &events {
        if matches!(f.fault, FaultSpec::Terminate {}) && f.exit_observed && f.exit_code != Some(0) {
            violations.push(format!(
                "node {:?} stopped with SIGTERM at {:.2} s exited with {:?}, not 0",
                f.nodes, f.start_s, f.exit_code
            ));
        }
    }

    let ops: Vec<OpTimes> = register_history
        .iter()
        .map(|o| OpTimes {
            call: o.call,
            ret: o.ret,
        })
        .chain(series_history.iter().map(|o| OpTimes {
            call: o.call,
            ret: o.ret,
        }))
        .collect();
    // Refused requests count against availability (never answered).
    let attempts: Vec<OpTimes> = ops
        .iter()
        .copied()
        .chain(
            refused
                .lock()
                .expect("refused lock")
                .iter()
                .map(|&call| OpTimes { call, ret: None }),
        )
        .collect();
    for f in &mut events {
        let during = attempts.iter().filter(|o| {
            let s = o.call as f64 / 1e9;
            s >= f.start_s && s <= f.healed_s
        });
        let (n, answered) = during.fold((0, 0), |(n, a), o| {
            (n + 1, a + usize::from(o.ret.is_some()))
        });
        f.operations = n;
        f.answered = answered;
    }
    let in_fault = |t: u64| {
        let s = t as f64 / 1e9;
        events.iter().any(|f| s >= f.start_s && s <= f.healed_s)
    };
    let (mut during, mut during_ok, mut outside, mut outside_ok) = (0, 0, 0, 0);
    for op in &attempts {
        let answered = usize::from(op.ret.is_some());
        if in_fault(op.call) {
            during += 1;
            during_ok += answered;
        } else {
            outside += 1;
            outside_ok += answered;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    violations.extend(target.finish());
    let report = Report {
        plan: plan.plan.name.clone(),
        seed,
        nodes: target.node_ids().len() as u64,
        duration_s: epoch.elapsed().as_secs_f64(),
        faults: events,
        operations: ops.len(),
        answered: ops.iter().filter(|o| o.ret.is_some()).count(),
        unknown: ops.iter().filter(|o| o.ret.is_none()).count(),
        availability_during_faults: ratio(during_ok, during),
        availability_outside_faults: ratio(outside_ok, outside),
        register,
        series,
        violations,
        violation_times,
        failing_history,
        ops,
    };
    Ok(report)
}

/// Writes `report.json`, `summary.txt`, `timeline.svg` and `timeline.png`
/// into `dir`.
pub fn write_report(report: &Report, dir: &Path) -> Result<(), ChaosError> {
    let io = |e: std::io::Error| ChaosError::Process(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| ChaosError::Process(format!("report: {e}")))?;
    std::fs::write(dir.join("report.json"), json).map_err(io)?;
    std::fs::write(dir.join("summary.txt"), report.summary()).map_err(io)?;
    let svg = timeline::svg(report);
    std::fs::write(dir.join("timeline.svg"), &svg).map_err(io)?;
    let png = timeline::png(&svg)?;
    std::fs::write(dir.join("timeline.png"), png).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    /// A target whose node never comes back after its first fault.
    struct NeverRecovers;

    impl Target for NeverRecovers {
        fn node_ids(&self) -> Vec<u64> {
            vec![1]
        }

        fn endpoints(&self) -> Vec<String> {
            vec!["http://127.0.0.1:9".into()]
        }

        fn inject(&mut self, spec: &FaultSpec, _: &mut SmallRng) -> Result<Injected, ChaosError> {
            Ok(Injected {
                spec: spec.clone(),
                nodes: vec![1],
                description: "kill node 1".into(),
                exit_code: None,
                exit_observed: false,
            })
        }

        fn heal(&mut self, _: &Injected, _: Duration) -> Result<(), ChaosError> {
            Err(ChaosError::Process(
                "node 1 was not ready within 60 s".into(),
            ))
        }

        fn heal_all(&mut self, _: Duration) -> Result<(), ChaosError> {
            Ok(())
        }

        fn finish(&mut self) -> Vec<String> {
            Vec::new()
        }
    }

    #[test]
    fn a_cluster_that_does_not_recover_is_a_violation_and_the_run_still_reports() {
        let mut plan = Plan::parse("[[fault]]\nkind = \"kill\"\n").unwrap();
        // No workload: nothing listens at the endpoint, and this is about
        // the run, not the checks.
        plan.workload.register = false;
        plan.workload.series = false;
        let plan = CheckedPlan {
            plan,
            duration: Duration::from_millis(600),
            interval: Duration::from_millis(100),
            hold: Duration::from_millis(50),
        };
        let mut heard = Vec::new();
        let report = run_on(&mut NeverRecovers, &plan, 7, 1_000, |line| {
            heard.push(line.to_string())
        })
        .expect("a run that finds a violation still reports");
        assert!(!report.passed());
        assert_eq!(
            report.faults.len(),
            1,
            "the run stops at the first failed heal"
        );
        assert!(
            report.violations[0].contains("did not recover")
                && report.violations[0].contains("not ready within 60 s"),
            "{:?}",
            report.violations
        );
        assert_eq!(report.violation_times.len(), 1);
        assert!(
            heard.iter().any(|l| l.contains("did not recover")),
            "{heard:?}"
        );
        let dir = std::env::temp_dir().join(format!("chaos-report-{}", std::process::id()));
        write_report(&report, &dir).unwrap();
        for file in ["report.json", "summary.txt", "timeline.svg", "timeline.png"] {
            assert!(dir.join(file).exists(), "{file}");
        }
        let summary = std::fs::read_to_string(dir.join("summary.txt")).unwrap();
        assert!(
            summary.contains("VIOLATION: the cluster did not recover"),
            "{summary}"
        );
        std::fs::remove_dir_all(dir).unwrap();

        // A failing register history is drawn below the panels.
        let mut report = report;
        report.failing_history = Some(FailingHistory {
            key: "k0".into(),
            ops: vec![
                DrawnOp {
                    client: 3,
                    call_s: 1.0,
                    ret_s: Some(1.002),
                    label: "Write(4000000002) -> Written".into(),
                },
                DrawnOp {
                    client: 0,
                    call_s: 1.003,
                    ret_s: Some(1.004),
                    label: "Read -> Read(None)".into(),
                },
            ],
        });
        let svg = timeline::svg(&report);
        assert!(svg.contains("register key k0 is not linearizable"), "{svg}");
        assert!(
            svg.contains("1: Read -&gt; Read(None)") && svg.contains("client 3"),
            "{svg}"
        );
        assert!(!timeline::png(&svg).unwrap().is_empty());
    }
}

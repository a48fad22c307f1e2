//! One chaos run: start a local cluster, run the register workload while a
//! seeded nemesis injects process faults, heal, read every key once more,
//! check the history, and report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::history::draw;
use crate::linearizability::{check_partitioned, Verdict};
use crate::local::{ClusterOptions, LocalCluster};
use crate::model::{PerKey, Register};
use crate::register::{self, RegisterWorkload};
use crate::ChaosError;

/// A process fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL, then a restart when healed.
    Kill,
    /// SIGTERM (a graceful stop, which must exit 0), then a restart.
    Terminate,
    /// SIGSTOP, then SIGCONT when healed.
    Pause,
}

impl std::str::FromStr for Fault {
    type Err = ChaosError;
    fn from_str(s: &str) -> Result<Self, ChaosError> {
        match s {
            "kill" => Ok(Fault::Kill),
            "terminate" => Ok(Fault::Terminate),
            "pause" => Ok(Fault::Pause),
            other => Err(ChaosError::Plan(format!(
                "unknown fault {other:?} (kill, terminate, pause)"
            ))),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cluster: ClusterOptions,
    pub seed: u64,
    /// How long the workload runs under faults.
    pub duration: Duration,
    /// The faults the nemesis draws from (one node at a time, so a majority
    /// stays up).
    pub faults: Vec<Fault>,
    /// Time between one fault's heal and the next fault.
    pub interval: Duration,
    /// How long a fault lasts.
    pub hold: Duration,
    pub workload: RegisterWorkload,
    /// Search steps the checker may take per key.
    pub max_steps: u64,
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub fault: Fault,
    pub node: u64,
    /// Seconds since the run started.
    pub start_s: f64,
    pub healed_s: f64,
    /// For a terminate: the exit code (`None`: killed after the grace period).
    pub exit_code: Option<i32>,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub duration_s: f64,
    pub faults: Vec<FaultEvent>,
    pub operations: usize,
    pub ok: usize,
    pub unknown: usize,
    /// Operations that completed with an answer, invoked during a fault / outside one.
    pub availability_during_faults: f64,
    pub availability_outside_faults: f64,
    /// Seconds from the last heal until every node was ready again.
    pub recovery_s: f64,
    pub verdict: String,
    pub check_steps: u64,
    /// What is wrong, one line each: a non-linearizable key (with its
    /// minimal history drawn), a stop that did not exit 0.
    pub violations: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.verdict == "linearizable"
    }

    /// The text summary.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "chaos run: seed {}, {} nodes, {:.0} s, {} faults\n\
             operations: {} ({} answered, {} unknown); availability {:.1} % during faults, {:.1} % outside\n\
             recovery after the last heal: {:.2} s\n\
             linearizability: {} ({} search steps)\n",
            self.seed,
            self.nodes,
            self.duration_s,
            self.faults.len(),
            self.operations,
            self.ok,
            self.unknown,
            100.0 * self.availability_during_faults,
            100.0 * self.availability_outside_faults,
            self.recovery_s,
            self.verdict,
            self.check_steps
        );
        for f in &self.faults {
            out.push_str(&format!(
                "  {:>7.2}-{:<7.2} {:?} node {}{}\n",
                f.start_s,
                f.healed_s,
                f.fault,
                f.node,
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

/// Runs it; `progress` hears what happens as it happens.
pub fn run(options: &RunOptions, mut progress: impl FnMut(&str)) -> Result<Report, ChaosError> {
    if options.faults.is_empty() {
        return Err(ChaosError::Plan("no faults to inject".into()));
    }
    progress(&format!(
        "seed {} (replay with --seed {}); starting nats-server and {} nodes in {}",
        options.seed,
        options.seed,
        options.cluster.nodes,
        options.cluster.root.display()
    ));
    let mut cluster = LocalCluster::start(options.cluster.clone())?;
    let nodes: Vec<String> = cluster
        .node_ids()
        .iter()
        .map(|&id| cluster.http(id))
        .collect();
    let epoch = Instant::now();
    let secs = |t: Instant| t.duration_since(epoch).as_secs_f64();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let workload = {
        let (w, nodes, stop, history, seed) = (
            options.workload.clone(),
            nodes.clone(),
            stop.clone(),
            history.clone(),
            options.seed,
        );
        std::thread::spawn(move || register::run(&w, &nodes, seed, epoch, stop, history))
    };
    progress("workload running");
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let mut faults = Vec::new();
    let end = epoch + options.duration;
    let mut failure = None;
    while Instant::now() + options.interval < end {
        std::thread::sleep(options.interval);
        let fault = options.faults[rng.random_range(0..options.faults.len())];
        let node = rng.random_range(1..=options.cluster.nodes);
        let start = Instant::now();
        let exit_code = match fault {
            Fault::Kill => {
                cluster.kill(node);
                None
            }
            Fault::Terminate => cluster.terminate(node, Duration::from_secs(30)),
            Fault::Pause => {
                cluster.pause(node);
                None
            }
        };
        progress(&format!("{:>7.2} s  {fault:?} node {node}", secs(start)));
        std::thread::sleep(options.hold);
        if let Err(e) = cluster.heal(Duration::from_secs(60)) {
            failure = Some(e);
        }
        let healed = Instant::now();
        progress(&format!("{:>7.2} s  healed node {node}", secs(healed)));
        faults.push(FaultEvent {
            fault,
            node,
            start_s: secs(start),
            healed_s: secs(healed),
            exit_code,
        });
        if failure.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = workload.join();
    let healing = Instant::now();
    cluster.heal(Duration::from_secs(60))?;
    let recovery_s = healing.elapsed().as_secs_f64();
    if let Some(e) = failure {
        return Err(e);
    }
    register::final_reads(&options.workload, &nodes[0], epoch, &history);
    let history = std::mem::take(&mut *history.lock().expect("history lock"));
    progress(&format!("checking {} operations", history.len()));
    let check = check_partitioned(
        &PerKey(Register),
        &history,
        |op| op.input.key.clone(),
        options.max_steps,
    );
    let mut violations = Vec::new();
    match check.verdict {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable => violations.push(format!(
            "key {} is not linearizable; a minimal failing history:\n{}",
            check.key.clone().unwrap_or_default(),
            draw(&check.minimal)
        )),
        Verdict::Unknown => violations.push(format!(
            "key {} could not be checked within {} steps",
            check.key.clone().unwrap_or_default(),
            options.max_steps
        )),
    }
    for f in &faults {
        if f.fault == Fault::Terminate && f.exit_code != Some(0) {
            violations.push(format!(
                "node {} stopped with SIGTERM at {:.2} s exited with {:?}, not 0",
                f.node, f.start_s, f.exit_code
            ));
        }
    }
    let in_fault = |t: u64| {
        let s = t as f64 / 1e9;
        faults.iter().any(|f| s >= f.start_s && s <= f.healed_s)
    };
    let (mut during, mut during_ok, mut outside, mut outside_ok) = (0, 0, 0, 0);
    for op in &history {
        let answered = op.output.is_some();
        if in_fault(op.call) {
            during += 1;
            during_ok += usize::from(answered);
        } else {
            outside += 1;
            outside_ok += usize::from(answered);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    // The nodes stop gracefully at the end; each must exit 0.
    for id in cluster.node_ids() {
        if let Some(code) = cluster
            .terminate(id, Duration::from_secs(30))
            .filter(|&c| c != 0)
        {
            violations.push(format!("node {id} exited with {code} at the end, not 0"));
        }
    }
    Ok(Report {
        seed: options.seed,
        nodes: options.cluster.nodes,
        duration_s: epoch.elapsed().as_secs_f64(),
        faults,
        operations: history.len(),
        ok: history.iter().filter(|o| o.output.is_some()).count(),
        unknown: history.iter().filter(|o| o.output.is_none()).count(),
        availability_during_faults: ratio(during_ok, during),
        availability_outside_faults: ratio(outside_ok, outside),
        recovery_s,
        verdict: match check.verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "not linearizable",
            Verdict::Unknown => "unknown",
        }
        .into(),
        check_steps: check.steps,
        violations,
    })
}

/// Writes `report.json` and `summary.txt` into `dir`.
pub fn write_report(report: &Report, dir: &PathBuf) -> Result<(), ChaosError> {
    let io = |e: std::io::Error| ChaosError::Process(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| ChaosError::Process(format!("report: {e}")))?;
    std::fs::write(dir.join("report.json"), json).map_err(io)?;
    std::fs::write(dir.join("summary.txt"), report.summary()).map_err(io)?;
    Ok(())
}

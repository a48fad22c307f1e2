//! `chronicle chaos`: break a local cluster on purpose and check every answer it gave.

use std::path::PathBuf;

use chronicle_chaos::local::{find_nats_server, ClusterOptions};
use chronicle_chaos::plan::Plan;
use chronicle_chaos::run::{run as run_chaos, write_report, RunOptions};

#[derive(clap::Subcommand)]
pub enum ChaosCommand {
    /// Start nats-server and N node processes on loopback, run the workloads
    /// (reads, writes and compare-and-sets on the replicated state; unique
    /// points appended to series and read back) through every node while a
    /// seeded nemesis injects the plan's faults (process, network, disk,
    /// clock), heal, check the histories (linearizability; no lost,
    /// duplicated, phantom or stale point), and report. Exits non-zero on
    /// any violation. Replay a run with its --seed.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The fault plan: a TOML file, or builtin:smoke, builtin:crashes,
    /// builtin:partitions, builtin:netns (root), builtin:disk, builtin:clock
    /// (docs/chaos.md).
    #[arg(long, default_value = "builtin:smoke")]
    plan: String,
    /// Seed of the nemesis and the workloads (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Node processes (overrides the plan).
    #[arg(long)]
    nodes: Option<u64>,
    /// Shards of the cluster (overrides the plan).
    #[arg(long)]
    shards: Option<u32>,
    /// How long the workloads run under faults, `60s`, `1h` (overrides the plan).
    #[arg(long)]
    duration: Option<String>,
    /// Time between a heal and the next fault (overrides the plan).
    #[arg(long)]
    interval: Option<String>,
    /// How long each fault lasts (overrides the plan).
    #[arg(long)]
    hold: Option<String>,
    /// Client threads of each workload (overrides the plan).
    #[arg(long)]
    clients: Option<usize>,
    /// Keys and series of the workloads (overrides the plan).
    #[arg(long)]
    keys: Option<usize>,
    /// Where the nodes' data and logs go (default: a new temporary directory, removed after a passing run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write report.json, summary.txt, timeline.svg and timeline.png here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The nats-server binary (default: $NATS_SERVER, PATH, ~/.local/bin).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// TEST ONLY: run the nodes as a known-bad variant, `ack-before-commit`,
    /// `stale-reads` or `no-fsync`, to see the checkers catch it (the run
    /// must fail).
    #[arg(long, value_parser = ["ack-before-commit", "stale-reads", "no-fsync"])]
    unsafe_variant: Option<String>,
    /// libchronicle_powercut.so, for plans with power cuts (default: next to
    /// this binary, where `cargo build` puts it).
    #[arg(long)]
    powercut_lib: Option<PathBuf>,
}

pub fn run(cmd: ChaosCommand) -> Result<(), Box<dyn std::error::Error>> {
    let ChaosCommand::Run(args) = cmd;
    let mut plan = Plan::load(&args.plan)?;
    if let Some(n) = args.nodes {
        plan.nodes = n;
    }
    if let Some(n) = args.shards {
        plan.shards = n;
    }
    if let Some(d) = &args.duration {
        plan.duration = d.clone();
    }
    if let Some(d) = &args.interval {
        plan.interval = d.clone();
    }
    if let Some(d) = &args.hold {
        plan.hold = d.clone();
    }
    if let Some(n) = args.clients {
        plan.workload.clients = n;
    }
    if let Some(n) = args.keys {
        plan.workload.keys = n;
    }
    let powercut_lib = if plan.needs_powercut() {
        let exe = std::env::current_exe()?;
        let lib = args
            .powercut_lib
            .clone()
            .or_else(|| chronicle_chaos::powercut::find_library(&exe))
            .ok_or("the plan has power cuts, which need libchronicle_powercut.so: build it with `cargo build -p chronicle-powercut` (it lands next to the chronicle binary) or give --powercut-lib")?;
        Some(lib)
    } else {
        None
    };
    let faketime_lib = if plan.needs_faketime() {
        Some(chronicle_chaos::local::find_faketime().ok_or(
            "the plan has faketime faults, which need libfaketime: apt-get install faketime",
        )?)
    } else {
        None
    };
    let netns = plan.needs_netns();
    if netns {
        if let Some(why) = chronicle_chaos::netns::unavailable() {
            return Err(format!("the plan has via = \"netns\" faults, but {why}").into());
        }
    }
    let plan = plan.check()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("chronicle-chaos-")
                .tempdir()?,
        ),
    };
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("made above").path().to_path_buf());
    let options = RunOptions {
        cluster: ClusterOptions {
            chronicle: std::env::current_exe()?,
            nats_server: args.nats_server.clone().unwrap_or_else(find_nats_server),
            root,
            nodes: plan.plan.nodes,
            shards: plan.plan.shards,
            log: std::env::var("CHRONICLE_CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            extra_args: match args.unsafe_variant.as_deref() {
                None => Vec::new(),
                // The node's own switch: acknowledged without an fsync.
                Some("no-fsync") => vec!["--no-sync".into()],
                Some(v) => vec!["--unsafe-variant".into(), v.into()],
            },
            powercut_lib,
            faketime_lib,
            netns,
        },
        seed,
        plan,
        max_steps: 20_000_000,
    };
    let report = run_chaos(&options, |line| eprintln!("chaos: {line}"))?;
    print!("{}", report.summary());
    if let Some(dir) = &args.report {
        write_report(&report, dir)?;
        eprintln!("chaos: report in {}", dir.display());
    }
    if report.passed() {
        Ok(())
    } else {
        // Keep the nodes' data and logs for a look.
        if let Some(temp) = temp {
            eprintln!(
                "chaos: the nodes' data and logs are kept in {}",
                temp.keep().display()
            );
        }
        Err(format!("{} violation(s)", report.violations.len()).into())
    }
}

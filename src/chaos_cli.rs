//! `chronicle chaos`: break a local cluster on purpose and check every answer it gave.

use std::path::PathBuf;
use std::time::Duration;

use chronicle_chaos::local::{find_nats_server, ClusterOptions};
use chronicle_chaos::register::RegisterWorkload;
use chronicle_chaos::run::{run as run_chaos, write_report, Fault, RunOptions};

#[derive(clap::Subcommand)]
pub enum ChaosCommand {
    /// Start nats-server and N node processes on loopback, run the register
    /// workload on the replicated state (reads, writes, compare-and-sets
    /// through every node) while a seeded nemesis kills (SIGKILL), stops
    /// (SIGTERM) and pauses (SIGSTOP) one node at a time, heal, check that
    /// the history is linearizable and that every stop exited 0, and report.
    /// Exits non-zero on any violation. Replay a run with its --seed.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Seed of the nemesis and the workload (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Node processes (one fault at a time, so a majority stays up).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Shards of the cluster.
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// How long the workload runs under faults (`60s`, `5m`).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Faults to draw from: kill, terminate, pause (comma-separated).
    #[arg(long, default_value = "kill,terminate,pause", value_delimiter = ',')]
    faults: Vec<String>,
    /// Time between a heal and the next fault.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long each fault lasts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Workload clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Keys of the register workload.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Where the nodes' data and logs go (default: a new temporary directory, removed after a passing run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write report.json and summary.txt here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The nats-server binary (default: $NATS_SERVER, PATH, ~/.local/bin).
    #[arg(long)]
    nats_server: Option<PathBuf>,
}

pub fn run(cmd: ChaosCommand) -> Result<(), Box<dyn std::error::Error>> {
    let ChaosCommand::Run(args) = cmd;
    if args.nodes < 3 {
        return Err("--nodes must be 3 or more (one node down must leave a majority)".into());
    }
    let faults = args
        .faults
        .iter()
        .map(|f| f.trim().parse::<Fault>())
        .collect::<Result<Vec<_>, _>>()?;
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
            nodes: args.nodes,
            shards: args.shards,
            log: std::env::var("CHRONICLE_CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        },
        seed,
        duration: args.duration,
        faults,
        interval: args.interval,
        hold: args.hold,
        workload: RegisterWorkload {
            keys: args.keys.max(1),
            clients: args.clients.max(1),
            ..RegisterWorkload::default()
        },
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

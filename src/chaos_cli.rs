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
    Run(Box<RunArgs>),
    /// Delete every Chaos Mesh resource a Kubernetes run made (they carry
    /// the label chronicle.io/chaos-run=<run id>), e.g. after the harness
    /// itself was killed.
    Clean(CleanArgs),
}

#[derive(clap::Args)]
pub struct CleanArgs {
    /// The run id a Kubernetes run printed.
    #[arg(long)]
    run_id: String,
    /// The release's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// Where a Kubernetes run finds the release (with --kubernetes).
#[derive(clap::Args)]
pub struct KubeArgs {
    /// Run against a Helm-installed release through Chaos Mesh instead of
    /// local processes (docs/kubernetes.md): faults become Chaos Mesh
    /// resources on the release's pods, the workloads go through --http.
    /// The Kubernetes configuration is $KUBECONFIG's or ~/.kube/config's
    /// current context, or the pod's service account.
    #[arg(long)]
    kubernetes: bool,
    /// The release's namespace.
    #[arg(long, default_value = "default", requires = "kubernetes")]
    namespace: String,
    /// The Helm release name (pods labelled app.kubernetes.io/instance=NAME).
    #[arg(long, default_value = "chronicle", requires = "kubernetes")]
    release: String,
    /// The client Service's URL, e.g. a `kubectl port-forward` of it
    /// (repeat for several; the workloads spread over them).
    #[arg(
        long = "http",
        default_value = "http://127.0.0.1:8086",
        requires = "kubernetes"
    )]
    http: Vec<String>,
    /// Labels of the NATS pods network faults cut nodes off from
    /// (default: the chart's bundled NATS, app.kubernetes.io/name=nats,
    /// app.kubernetes.io/instance=RELEASE).
    #[arg(long, requires = "kubernetes", conflicts_with = "nats_external")]
    nats_selector: Option<String>,
    /// The NATS Service the nodes dial, which loss, delay, duplication and
    /// bandwidth faults name (default with the bundled NATS:
    /// RELEASE-nats.NAMESPACE.svc).
    #[arg(long, requires = "kubernetes", conflicts_with = "nats_external")]
    nats_service: Option<String>,
    /// NATS outside Kubernetes: its hosts or CIDRs (comma-separated).
    #[arg(long, requires = "kubernetes")]
    nats_external: Option<String>,
    /// The data volume's mount path in the pods.
    #[arg(long, default_value = "/var/lib/chronicle", requires = "kubernetes")]
    data_path: String,
    /// The Chronicle container's name in the pods.
    #[arg(long, default_value = "chronicle", requires = "kubernetes")]
    container: String,
    /// Label and name this run's resources with this id (default: from the seed).
    #[arg(long, requires = "kubernetes")]
    run_id: Option<String>,
    /// Print the Chaos Mesh resources each fault of the plan becomes (pods
    /// named as the chart names them, --nodes of them) and exit.
    #[arg(long, requires = "kubernetes")]
    dry_run: bool,
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
    #[command(flatten)]
    kube: KubeArgs,
}

pub fn run(cmd: ChaosCommand) -> Result<(), Box<dyn std::error::Error>> {
    let args = match cmd {
        ChaosCommand::Run(args) => args,
        ChaosCommand::Clean(args) => return clean(&args),
    };
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
    if args.kube.kubernetes {
        return run_on_kubernetes(&args, plan);
    }
    if let Some(why) = plan.kubernetes_only() {
        return Err(format!("{why}; a local run cannot inject it").into());
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
    let seed = seed_of(&args);
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
    let outcome = finish(&report, args.report.as_deref());
    if outcome.is_err() {
        // Keep the nodes' data and logs for a look.
        if let Some(temp) = temp {
            eprintln!(
                "chaos: the nodes' data and logs are kept in {}",
                temp.keep().display()
            );
        }
    }
    outcome
}

fn seed_of(args: &RunArgs) -> u64 {
    args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

fn labels(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("--nats-selector {pair:?}: not key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The pod names the chart gives a release's StatefulSet (Helm's fullname
/// convention), for a dry run.
fn chart_pod_name(release: &str, ordinal: u64) -> String {
    if release.contains("chronicle") {
        format!("{release}-{ordinal}")
    } else {
        format!("{release}-chronicle-{ordinal}")
    }
}

fn run_on_kubernetes(
    args: &RunArgs,
    plan: chronicle_chaos::plan::Plan,
) -> Result<(), Box<dyn std::error::Error>> {
    use chronicle_chaos_mesh::resources::{translate, NatsPeer, Scene};
    use chronicle_chaos_mesh::target::{KubeOptions, KubeTarget};
    use rand::SeedableRng;

    let kube = &args.kube;
    let plan = plan.check()?;
    let seed = seed_of(args);
    let run = kube
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:x}", seed & 0xffff_ffff_ffff));
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if run.is_empty()
        || run.len() > 20
        || !run.bytes().all(|b| alnum(b) || b == b'-')
        || !alnum(run.as_bytes()[0])
        || !alnum(run.as_bytes()[run.len() - 1])
    {
        return Err(
            "--run-id must be 1..=20 of a-z, 0-9 and -, starting and ending with a letter or digit"
                .into(),
        );
    }
    let nats = match (&kube.nats_external, &kube.nats_selector) {
        (Some(hosts), _) => {
            NatsPeer::External(hosts.split(',').map(|h| h.trim().to_string()).collect())
        }
        (None, Some(selector)) => NatsPeer::Pods(labels(selector)?),
        (None, None) => NatsPeer::Pods(vec![
            ("app.kubernetes.io/name".into(), "nats".into()),
            ("app.kubernetes.io/instance".into(), kube.release.clone()),
        ]),
    };
    let nats_service = match (&nats, &kube.nats_service) {
        (NatsPeer::External(_), _) => None,
        (_, Some(service)) => Some(service.clone()),
        (_, None) if kube.nats_selector.is_none() => {
            Some(format!("{}-nats.{}.svc", kube.release, kube.namespace))
        }
        (_, None) => None,
    };
    if kube.dry_run {
        let scene = Scene {
            namespace: kube.namespace.clone(),
            run: run.clone(),
            pods: (0..plan.plan.nodes)
                .map(|i| (i + 1, chart_pod_name(&kube.release, i)))
                .collect(),
            nats,
            data_path: kube.data_path.clone(),
            container: kube.container.clone(),
            nats_service,
        };
        chronicle_chaos_mesh::target::check_plan(&plan, &scene)?;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut objects = Vec::new();
        for (i, fault) in plan.plan.faults.iter().enumerate() {
            for o in translate(&scene, fault, i + 1, plan.hold, &mut rng)?.objects {
                objects.push(o.body);
            }
        }
        for (i, r) in plan.plan.recurring.iter().enumerate() {
            let o = chronicle_chaos_mesh::resources::schedule(
                &scene,
                &r.cron,
                &r.fault,
                plan.plan.faults.len() + i + 1,
                plan.hold,
                &mut rng,
            )?;
            objects.push(o.body);
        }
        println!("{}", serde_json::to_string_pretty(&objects)?);
        return Ok(());
    }
    // The workloads authenticate like every CLI command (--token, --ca-file).
    crate::http_client::agent(std::time::Duration::from_secs(1))?;
    chronicle_chaos::set_agent_factory(Box::new(|timeout| {
        crate::http_client::agent(timeout).expect("checked above")
    }));
    eprintln!(
        "chaos: plan {}, seed {seed} (replay with --seed {seed}), run id {run} (its resources carry chronicle.io/chaos-run={run})",
        plan.plan.name
    );
    let options = KubeOptions {
        namespace: kube.namespace.clone(),
        release: kube.release.clone(),
        endpoints: kube.http.clone(),
        nats,
        nats_service,
        data_path: kube.data_path.clone(),
        container: kube.container.clone(),
        run,
    };
    let mut target = KubeTarget::connect(options, &plan, seed, None, |line| {
        eprintln!("chaos: {line}")
    })?;
    let report = chronicle_chaos::run::run_on(&mut target, &plan, seed, 20_000_000, |line| {
        eprintln!("chaos: {line}")
    })?;
    drop(target);
    finish(&report, args.report.as_deref())
}

fn finish(
    report: &chronicle_chaos::run::Report,
    dir: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", report.summary());
    if let Some(dir) = dir {
        write_report(report, dir)?;
        eprintln!("chaos: report in {}", dir.display());
    }
    if report.passed() {
        Ok(())
    } else {
        Err(format!("{} violation(s)", report.violations.len()).into())
    }
}

fn clean(args: &CleanArgs) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deleted = runtime.block_on(async {
        let mesh =
            chronicle_chaos_mesh::client::Mesh::connect(&args.namespace, &args.run_id).await?;
        mesh.delete_run().await
    })?;
    println!("deleted {deleted} resource(s) of run {}", args.run_id);
    Ok(())
}

//! `chronicle bench cluster`: three cluster nodes started in this process
//! (each with its own bus connection when `--nats-url` is given), every shard
//! replicated on all three. Measures replicated ingest (acknowledged after
//! commit on a majority, the Raft log fsynced on each), commit latency per
//! batch, and failover: kill the node leading a shard, time until a write to
//! that shard succeeds through a surviving node; then restart it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus, NatsBus, NatsOptions};
use chronicle_cluster::{shard_of, ClusterConfig, ClusterNode};
use chronicle_storage::workload::Workload;
use chronicle_storage::{Label, Point, ShardConfig};
use clap::Args;
use serde_json::json;
use tokio::sync::Mutex;

use crate::bench::{quantile, round3};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Args, Debug)]
pub struct ClusterBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Join this NATS server (each node its own connection); default in-process bus.
    #[arg(long)]
    nats_url: Option<String>,
    /// Points to write.
    #[arg(long, default_value_t = 1_000_000)]
    points: usize,
    /// Points per write call (split by shard inside the cluster).
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// Write calls in flight at once.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Shards (Raft groups), each replicated on all three nodes.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Leader kills to time.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Failover only, as an operator meets it: three `chronicle serve`
    /// processes (needs --nats-url), the leader of shard 0 killed with SIGKILL,
    /// timed to the first write to that shard a survivor acknowledges over HTTP.
    /// Without it, nodes run in this process and a "kill" is a graceful stop
    /// whose clock starts after the stop returned.
    #[arg(long)]
    processes: bool,
}

const SECOND: i64 = 1_000_000_000;

pub(crate) fn config(id: u64, root: &std::path::Path, shards: u32) -> ClusterConfig {
    let mut c = ClusterConfig::new(id, vec![1, 2, 3], root.join(format!("node-{id}")));
    c.shards = shards;
    c.replication = 3;
    // The Raft log is the write-ahead log and is synced; the shards need not be.
    c.shard = ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    };
    c
}

pub(crate) async fn connect(
    nats: &Option<String>,
    local: &Arc<dyn Bus>,
    id: u64,
) -> Result<Arc<dyn Bus>, Error> {
    Ok(match nats {
        Some(url) => Arc::new(
            NatsBus::connect(NatsOptions {
                urls: vec![url.clone()],
                name: Some(format!("chronicle-bench-node-{id}")),
                ..Default::default()
            })
            .await?,
        ),
        None => local.clone(),
    })
}

pub(crate) async fn leader_of(
    nodes: &[Option<Arc<ClusterNode>>],
    shard: u32,
    timeout: Duration,
) -> Result<u64, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        for n in nodes.iter().flatten() {
            if let Some(l) = n.status().1[shard as usize].leader {
                if nodes.iter().flatten().any(|m| m.node_id() == l) {
                    return Ok(l);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("shard {shard} has no leader after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every replica of every shard applied what the most advanced
/// replica applied.
async fn converge(
    nodes: &[Option<Arc<ClusterNode>>],
    shards: u32,
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind = (0..shards).any(|s| {
            let applied: Vec<u64> = nodes
                .iter()
                .flatten()
                .filter_map(|n| n.applied_index(s))
                .collect();
            applied.iter().min() != applied.iter().max()
        });
        if !behind {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("replicas did not converge within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn run(args: ClusterBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.points == 0 || args.batch == 0 || args.in_flight == 0 || args.shards == 0 {
        return Err("--points, --batch, --in-flight and --shards must be positive".into());
    }
    if args.processes {
        let nats = args
            .nats_url
            .as_deref()
            .ok_or("--processes needs --nats-url: the node processes meet over NATS")?;
        return crate::bench_failover::run(nats, args.shards, args.failovers, args.json)
            .map_err(|e| e.to_string().into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args)).map_err(|e| e.to_string())?;
    Ok(())
}

async fn bench(args: ClusterBench) -> Result<(), Error> {
    // Debug aid: report when the runtime could not run a 10 ms ticker on time.
    tokio::spawn(async {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let late = last.elapsed().saturating_sub(Duration::from_millis(10));
            if late > Duration::from_millis(50) {
                tracing::debug!(late_ms = late.as_millis() as u64, "runtime tick late");
            }
            last = Instant::now();
        }
    });
    let dir = tempfile::tempdir()?;
    let local: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes: Vec<Option<Arc<ClusterNode>>> = Vec::new();
    // Each node's own connection (NATS), closed when the node is killed, as a
    // killed process's connection is.
    let mut buses: Vec<Arc<dyn Bus>> = Vec::new();
    for id in 1..=3 {
        let bus = connect(&args.nats_url, &local, id).await?;
        buses.push(bus.clone());
        nodes.push(Some(
            ClusterNode::start(config(id, dir.path(), args.shards), bus).await?,
        ));
    }
    for s in 0..args.shards {
        leader_of(&nodes, s, Duration::from_secs(30)).await?;
    }
    eprintln!("cluster up: 3 nodes, {} shards × 3 replicas", args.shards);

    // Replicated ingest. Every write's body is line protocol generated before
    // the clock starts (the generator is not what is measured); in the timed
    // loop the entry node's work starts where a `/write` request's does: the
    // body is parsed and validated, then submitted and acknowledged after its
    // commit on a majority in every shard it touches.
    let mut load = Workload::realistic(1000, 10 * SECOND, 1_767_225_600 * SECOND, 42);
    let mut bodies = Vec::new();
    let mut left = args.points;
    while left > 0 {
        let n = args.batch.min(left);
        let mut text = String::with_capacity(n * 80);
        for p in load.next_batch(n) {
            crate::bench_ingest::to_line(&p, &mut text);
        }
        bodies.push(text);
        left -= n;
    }
    let nodes = Arc::new(nodes);
    let queue = Arc::new(Mutex::new(bodies.into_iter().enumerate()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let series = load.series_count();
    let limits = ShardConfig::default().limits;
    let rss_before = crate::bench::rss_bytes();
    let cpu_before = crate::bench::cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.in_flight {
        let (queue, latencies, nodes) = (queue.clone(), latencies.clone(), nodes.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = 0usize;
            loop {
                let Some((i, body)) = queue.lock().await.next() else {
                    return Ok::<usize, String>(written);
                };
                let node = nodes[i % 3].as_ref().expect("all nodes up");
                let t = Instant::now();
                // On a blocking thread, as the ingest actor parses a body.
                let batch = tokio::task::spawn_blocking(move || {
                    chronicle_ingest::parse_line_protocol(
                        &body,
                        chronicle_ingest::Precision::Nanoseconds,
                        0,
                        &limits,
                    )
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                written += node.write_batch(batch).await.map_err(|e| e.to_string())?;
                latencies.lock().await.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = crate::bench::cpu_seconds() - cpu_before;
    let rss_growth = crate::bench::rss_bytes().saturating_sub(rss_before);
    let mut lat = latencies.lock().await.clone();
    eprintln!("replicated ingest: {written} points in {secs:.1} s");

    // Failover: kill shard 0's leader, time the first write that succeeds.
    let mut nodes = Arc::try_unwrap(nodes).map_err(|_| "nodes still shared")?;
    let probe_host = (0..)
        .map(|i| format!("probe-{i}"))
        .find(|h| {
            shard_of(
                "failover_probe",
                &[Label::new("host", h.as_str())],
                args.shards,
            ) == 0
        })
        .expect("some host hashes to shard 0");
    let mut failovers = Vec::new();
    for round in 0..args.failovers {
        // Time the failover itself, not an apply backlog: with all three
        // replicas on two cores the followers apply behind the leader under
        // load, and a new leader answers writes only after applying its log.
        // (This also lets a node restarted in the last round catch up.)
        let waited = Instant::now();
        converge(&nodes, args.shards, Duration::from_secs(120)).await?;
        if round == 0 {
            eprintln!(
                "replicas converged {:.1} s after the last acknowledged write",
                waited.elapsed().as_secs_f64()
            );
        }
        let leader = leader_of(&nodes, 0, Duration::from_secs(30)).await?;
        let victim = nodes[(leader - 1) as usize].take().expect("leader is up");
        victim.shutdown().await;
        if args.nats_url.is_some() {
            let _ = buses[(leader - 1) as usize].drain().await;
        }
        let killed = Instant::now();
        tracing::info!(node = leader, "killed the leader of shard 0");
        let survivor = nodes.iter().flatten().next().expect("two nodes left");
        let point = Point::new(
            "failover_probe",
            vec![Label::new("host", probe_host.as_str())],
            round as f64,
            round as i64 * SECOND,
        );
        loop {
            match survivor.write(std::slice::from_ref(&point)).await {
                Ok(_) => break,
                Err(e) if killed.elapsed() < Duration::from_secs(30) => {
                    tracing::debug!(error = %e, "write during failover");
                }
                Err(e) => return Err(format!("no write succeeded 30 s after the kill: {e}").into()),
            }
        }
        let took = killed.elapsed().as_secs_f64() * 1e3;
        tracing::info!(took_ms = took, "first write to shard 0 after the kill");
        eprintln!(
            "failover {}: {took:.0} ms (killed node {leader})",
            round + 1
        );
        failovers.push(took);
        // Bring the node back before the next round.
        let bus = connect(&args.nats_url, &local, leader).await?;
        buses[(leader - 1) as usize] = bus.clone();
        nodes[(leader - 1) as usize] =
            Some(ClusterNode::start(config(leader, dir.path(), args.shards), bus).await?);
    }
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }

    let result = json!({
        "transport": if args.nats_url.is_some() { "nats" } else { "local" },
        "nodes": 3,
        "shards": args.shards,
        "replicas": 3,
        "points": written,
        "batch_points": args.batch,
        "in_flight": args.in_flight,
        "replicated_points_per_sec": (written as f64 / secs).round(),
        // This process: all three replicas and the producer (nats-server apart).
        "cpu_seconds_per_million_points": round3(cpu / written.max(1) as f64 * 1e6),
        "series": series,
        "rss_growth_bytes_per_series": (rss_growth as f64 / series as f64).round(),
        "commit_latency_p50_ms": round3(quantile(&mut lat, 0.5)),
        "commit_latency_p99_ms": round3(quantile(&mut lat, 0.99)),
        "failovers": failovers.len(),
        "failover_p50_ms": round3(quantile(&mut failovers.clone(), 0.5)),
        "failover_p99_ms": round3(quantile(&mut failovers, 0.99)),
    });
    crate::bench::print_result(&result, args.json);
    Ok(())
}

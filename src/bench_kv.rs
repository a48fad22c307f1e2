//! `chronicle bench kv`: the replicated state through the API features use
//! (`StateStore`), on three cluster nodes started in this process (each with
//! its own NATS connection with `--nats-url`), every shard on all three.
//! Measures batched puts/s (transactions of `--batch` puts, `--in-flight` at
//! once, through every node: most writes are forwarded to the leader),
//! single puts/s, get latency on the leader and through a follower, and
//! watch delivery latency (put sent -> change received by a watcher on
//! another node).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::ClusterNode;
use chronicle_storage::state::StateTxn;
use clap::Args;
use serde_json::json;

use crate::bench::{quantile, round3};
use crate::bench_cluster::{config, connect, leader_of};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Args, Debug)]
pub struct KvBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Join this NATS server (each node its own connection); default in-process bus.
    #[arg(long)]
    nats_url: Option<String>,
    /// Puts in the batched phase.
    #[arg(long, default_value_t = 200_000)]
    puts: usize,
    /// Puts per transaction batch (one log entry).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Single puts, gets and watched puts to time.
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
}

const NS: &str = "bench";

pub fn run(args: KvBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.puts == 0 || args.batch == 0 || args.in_flight == 0 || args.samples == 0 {
        return Err("--puts, --batch, --in-flight and --samples must be positive".into());
    }
    if args.batch > chronicle_storage::state::MAX_TXNS_PER_ENTRY
        || args.batch * (args.value_bytes + 32) > chronicle_storage::state::MAX_STATE_ENTRY_BYTES
    {
        return Err("--batch x --value-bytes is over one entry's limit (4 MiB)".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(bench(args));
    if let Err(e) = &result {
        eprintln!("bench kv: {e}");
    }
    // Dropping the runtime waits for blocking tasks without limit.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result.map_err(|e| e.to_string())?;
    Ok(())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut v: Vec<f64>) -> (f64, f64) {
    (
        round3(quantile(&mut v, 0.5)),
        round3(quantile(&mut v, 0.99)),
    )
}

async fn bench(args: KvBench) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let local: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes: Vec<Arc<ClusterNode>> = Vec::new();
    for id in 1..=3 {
        let bus = connect(&args.nats_url, &local, id).await?;
        // One shard: the namespace's group is the only one, on all three.
        nodes.push(ClusterNode::start(config(id, dir.path(), 1), bus).await?);
    }
    let some: Vec<Option<Arc<ClusterNode>>> = nodes.iter().cloned().map(Some).collect();
    let leader = leader_of(&some, 0, Duration::from_secs(30)).await?;
    let leading = nodes[(leader - 1) as usize].clone();
    let following = nodes
        .iter()
        .find(|n| n.node_id() != leader)
        .expect("three nodes")
        .clone();
    eprintln!("cluster up: 3 nodes, the namespace's group led by node {leader}");
    let value = vec![b'v'; args.value_bytes];

    // Batched puts: transactions of `batch` puts, through every node.
    let batches = args.puts.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.in_flight {
        let (next, nodes, value) = (next.clone(), nodes.clone(), value.clone());
        let (batch, puts) = (args.batch, args.puts);
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= batches {
                    return Ok::<usize, String>(done);
                }
                let txns: Vec<StateTxn> = (b * batch..((b + 1) * batch).min(puts))
                    .map(|i| StateTxn::put(format!("k/{i:09}"), value.clone()))
                    .collect();
                let store = nodes[b % 3].state(NS).map_err(|e| e.to_string())?;
                done += store.transact(txns).await.map_err(|e| e.to_string())?.len();
            }
        }));
    }
    let mut put = 0;
    for t in tasks {
        put += t.await.map_err(|e| e.to_string())??;
    }
    let batched_secs = started.elapsed().as_secs_f64();
    eprintln!("batched puts: {put} in {batched_secs:.1} s");

    // Single puts, 64 in flight, through the leader.
    let single_n = args.samples;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (next, store, value) = (next.clone(), leading.state(NS)?, value.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < single_n {
                store
                    .put("single", value.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let single_rate = single_n as f64 / started.elapsed().as_secs_f64();

    // Gets, one at a time: on the leader, and through a follower (forwarded).
    let mut gets = HashMap::new();
    for (name, node) in [("leader", &leading), ("follower", &following)] {
        let store = node.state(NS)?;
        let mut lat = Vec::with_capacity(args.samples);
        for i in 0..args.samples {
            let key = format!("k/{:09}", (i * 7919) % args.puts);
            let t = Instant::now();
            let got = store.get(&key).await?;
            lat.push(millis(t.elapsed()));
            if got.is_none() {
                return Err(format!("{key} missing").into());
            }
        }
        gets.insert(name, summary(lat));
    }

    // Watch delivery: a watcher on a follower; puts through the leader at
    // about 500/s; latency from the put's call to the change's arrival.
    let watcher = following.state(NS)?;
    let from = watcher.get("single").await?.map_or(0, |e| e.revision);
    let mut changes = watcher.watch("w/", from, 1024);
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let writer = {
        let (store, sent, value, n) = (
            leading.state(NS)?,
            sent.clone(),
            value.clone(),
            args.samples,
        );
        tokio::spawn(async move {
            for i in 0..n {
                let key = format!("w/{i:09}");
                sent.lock().unwrap().insert(key.clone(), Instant::now());
                store
                    .put(&key, value.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<(), String>(())
        })
    };
    let mut watch_lat = Vec::with_capacity(args.samples);
    while watch_lat.len() < args.samples {
        let change = tokio::time::timeout(Duration::from_secs(30), changes.recv())
            .await
            .map_err(|_| "no change within 30 s")?
            .ok_or("the watch ended")??;
        let at = sent.lock().unwrap().get(&change.key).copied();
        if let Some(at) = at {
            watch_lat.push(millis(at.elapsed()));
        }
    }
    writer.await.map_err(|e| e.to_string())??;
    for n in nodes {
        n.shutdown().await;
    }

    let puts_per_sec = put as f64 / batched_secs;
    let (get_leader_p50, get_leader_p99) = gets["leader"];
    let (get_follower_p50, get_follower_p99) = gets["follower"];
    let (watch_p50, watch_p99) = summary(watch_lat);
    let out = json!({
        "bus": if args.nats_url.is_some() { "nats" } else { "local" },
        "replicas": 3,
        "value_bytes": args.value_bytes,
        "batch": args.batch,
        "in_flight": args.in_flight,
        "batched_puts": put,
        "batched_puts_per_sec": puts_per_sec.round(),
        "single_puts_per_sec": single_rate.round(),
        "get_leader_p50_ms": get_leader_p50,
        "get_leader_p99_ms": get_leader_p99,
        "get_follower_p50_ms": get_follower_p50,
        "get_follower_p99_ms": get_follower_p99,
        "watch_p50_ms": watch_p50,
        "watch_p99_ms": watch_p99,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "batched puts: {:.0}/s ({} puts, batches of {}, {} in flight)",
            puts_per_sec, put, args.batch, args.in_flight
        );
        println!("single puts (64 in flight): {single_rate:.0}/s");
        println!("get on the leader: p50 {get_leader_p50} ms, p99 {get_leader_p99} ms");
        println!("get through a follower: p50 {get_follower_p50} ms, p99 {get_follower_p99} ms");
        println!("watch delivery: p50 {watch_p50} ms, p99 {watch_p99} ms");
    }
    Ok(())
}

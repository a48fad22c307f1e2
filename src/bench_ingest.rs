//! `chronicle bench ingest`: end-to-end ingest through a node started in this
//! process, over NATS (`--nats-url`), the in-process bus, or HTTP (`--http`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chronicle_bus::{Bus, LocalBus, Message, NatsBus, NatsOptions};
use chronicle_storage::workload::Workload;
use chronicle_storage::Point;
use clap::Args;
use serde_json::json;
use tokio::sync::Mutex;

use crate::bench::{quantile, round3};
use crate::{Node, NodeConfig};

type Error = Box<dyn std::error::Error>;

#[derive(Args, Debug)]
pub struct IngestBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Publish over this NATS server (the node joins it too); default in-process bus.
    #[arg(long, conflicts_with = "http")]
    nats_url: Option<String>,
    /// Send batches to the node's HTTP /write instead of the bus.
    #[arg(long)]
    http: bool,
    /// Points to send.
    #[arg(long, default_value_t = 2_000_000)]
    points: usize,
    /// Series the points spread over (the realistic mix, 20 metrics a
    /// host). Memory per active series is the slope of
    /// `rss_growth_bytes` between two runs of the same points over
    /// different numbers of series (docs/benchmarks.md).
    #[arg(long, default_value_t = 1_000)]
    series: usize,
    /// The node's decoded-chunk cache, bytes (0 for memory figures that
    /// leave out the cache's fill).
    #[arg(long, default_value_t = chronicle_storage::ShardConfig::default().decoded_cache_bytes)]
    decoded_cache_bytes: usize,
    /// Points per message (line protocol lines).
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// Messages in flight at once (acks outstanding).
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Single-point publish-to-visible and request/reply samples to take.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Do not fsync each batch.
    #[arg(long)]
    no_sync: bool,
    /// Run the node without the change feed (`[cluster] write_events =
    /// false`), to see what publishing it costs.
    #[arg(long)]
    no_write_events: bool,
}

const SECOND: i64 = 1_000_000_000;

/// One point as a line protocol line (`value` field keeps the metric name).
pub(crate) fn to_line(p: &Point, out: &mut String) {
    use std::fmt::Write;
    let escape = |s: &str| {
        s.replace(',', "\\,")
            .replace('=', "\\=")
            .replace(' ', "\\ ")
    };
    out.push_str(&escape(&p.metric));
    for l in &p.labels {
        let _ = write!(out, ",{}={}", escape(&l.name), escape(&l.value));
    }
    let _ = writeln!(out, " value={:?} {}", p.value, p.timestamp);
}

/// Request/reply round trips (milliseconds) to an echo responder on `bus`.
async fn echo_round_trips(bus: Arc<dyn Bus>, samples: usize) -> Result<Vec<f64>, Error> {
    let mut echo = bus.subscribe("bench.echo", None).await?;
    let responder_bus = bus.clone();
    let responder = tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = responder_bus.publish(Message::new(reply, m.payload)).await;
            }
        }
    });
    bus.flush().await?;
    let mut round_trips = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        bus.request(Message::new("bench.echo", "ping"), Duration::from_secs(5))
            .await?;
        round_trips.push(t.elapsed().as_secs_f64() * 1e3);
    }
    responder.abort();
    Ok(round_trips)
}

/// Lines of line protocol parsed (and validated into points) per second on
/// one thread, over the bench's own payloads; the best of three passes.
fn line_protocol_parse_rate(payloads: &[(usize, Bytes)]) -> Result<f64, Error> {
    let limits = chronicle_storage::model::Limits::default();
    let lines: usize = payloads.iter().map(|(n, _)| n).sum();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for (_, text) in payloads {
            let text = std::str::from_utf8(text)?;
            let points = chronicle_ingest::parse_line_protocol(
                text,
                chronicle_ingest::Precision::Nanoseconds,
                0,
                &limits,
            )?;
            std::hint::black_box(points);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(lines as f64 / best)
}

pub fn run(args: IngestBench) -> Result<(), Error> {
    if args.points == 0 || args.batch == 0 || args.in_flight == 0 || args.series == 0 {
        return Err("--points, --batch, --in-flight and --series must be positive".into());
    }
    // Generate every payload first: the generator is not what is measured.
    let mut load = Workload::realistic(args.series, 10 * SECOND, 1_767_225_600 * SECOND, 42);
    let series = load.series_count();
    let mut payloads = Vec::new();
    let mut left = args.points;
    while left > 0 {
        let n = args.batch.min(left);
        let mut text = String::with_capacity(n * 80);
        for p in load.next_batch(n) {
            to_line(&p, &mut text);
        }
        payloads.push((n, Bytes::from(text)));
        left -= n;
    }
    let bytes: usize = payloads.iter().map(|(_, b)| b.len()).sum();
    let parse_lines_per_sec = line_protocol_parse_rate(&payloads)?;
    // The same rate where no two lines share a tag set (a `seq` tag numbers
    // them), so the parser's per-request table of tag sets never hits: the
    // bench's own data repeats each host's tags over its metrics and each
    // series five times a message, which flatters that table.
    let mut distinct = Workload::realistic(args.series, 10 * SECOND, 1_767_225_600 * SECOND, 42);
    let mut unique_payloads = Vec::new();
    let mut seq = 0u64;
    for (n, _) in payloads.iter().take(40) {
        let mut text = String::with_capacity(n * 90);
        for mut p in distinct.next_batch(*n) {
            p.labels
                .push(chronicle_storage::model::Label::new("seq", seq.to_string()));
            seq += 1;
            to_line(&p, &mut text);
        }
        unique_payloads.push((*n, Bytes::from(text)));
    }
    let parse_unique_lines_per_sec = line_protocol_parse_rate(&unique_payloads)?;
    drop(unique_payloads);
    eprintln!(
        "generated {} messages, {} points, {:.1} MB of line protocol",
        payloads.len(),
        args.points,
        bytes as f64 / 1e6
    );

    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().expect("static address"),
        sync_writes: !args.no_sync,
        decoded_cache_bytes: args.decoded_cache_bytes,
        ..NodeConfig::default()
    };
    config.cluster.write_events = !args.no_write_events;
    if let Some(url) = &args.nats_url {
        config.nats.urls = vec![url.clone()];
    }
    let system = actix::System::new();
    system.block_on(async move {
        let node = Node::start(config).await?;
        // Producers talk to the node the way other services do: a separate NATS
        // connection, the in-process bus, or HTTP.
        let client: Arc<dyn Bus> = match &args.nats_url {
            Some(url) => Arc::new(
                NatsBus::connect(NatsOptions {
                    urls: vec![url.clone()],
                    name: Some("chronicle-bench".into()),
                    ..Default::default()
                })
                .await?,
            ),
            None => node.bus.clone(),
        };
        let transport = if args.http {
            "http"
        } else if args.nats_url.is_some() {
            "nats"
        } else {
            "local"
        };
        let http_url = format!("http://{}/write", node.http_addr);

        // What the node holds per series: resident memory grown over the
        // run (the payloads were generated before the node started).
        let rss_before = crate::bench::rss_bytes();
        let cpu_before = crate::bench::cpu_seconds();
        // Held (shared, not copied) until memory is measured: freeing them
        // during the run would hide what the node grew by.
        let held: Vec<Bytes> = payloads.iter().map(|(_, b)| b.clone()).collect();
        let queue = Arc::new(Mutex::new(payloads.into_iter()));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.in_flight {
            let queue = queue.clone();
            let latencies = latencies.clone();
            let client = client.clone();
            let http_url = http_url.clone();
            let http = args.http;
            tasks.push(tokio::spawn(async move {
                let agent = ureq::Agent::new_with_defaults();
                loop {
                    let Some((n, body)) = queue.lock().await.next() else {
                        return Ok::<usize, String>(0);
                    };
                    let t = Instant::now();
                    if http {
                        let agent = agent.clone();
                        let url = http_url.clone();
                        let status = tokio::task::spawn_blocking(move || {
                            agent
                                .post(&url)
                                .send(&body[..])
                                .map(|r| r.status().as_u16())
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .map_err(|e| e.to_string())??;
                        if status != 204 {
                            return Err(format!("HTTP {status}"));
                        }
                    } else {
                        let reply = client
                            .request(
                                Message::new("chronicle.ingest.bench", body),
                                Duration::from_secs(60),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        let want = format!("{{\"written\":{n}}}");
                        if reply.payload != want.as_bytes() {
                            return Err(String::from_utf8_lossy(&reply.payload).to_string());
                        }
                    }
                    latencies.lock().await.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }));
        }
        let mut progress = Instant::now();
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
            if progress.elapsed() > Duration::from_secs(2) {
                eprintln!("ingest: waiting for the last acks");
                progress = Instant::now();
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = crate::bench::cpu_seconds() - cpu_before;
        let rss_growth = crate::bench::rss_bytes().saturating_sub(rss_before);
        drop(held);
        let mut acks = std::mem::take(&mut *latencies.lock().await);

        // Publish-to-visible: one point, fire and forget, then query until it shows.
        let mut visible = Vec::new();
        for i in 0..args.latency_samples {
            let ts = 2_000_000_000 * SECOND + i as i64;
            let line = format!("bench_visible,run=latency value={i} {ts}");
            let query = format!(
                r#"{{"metric":"bench_visible","start":{ts},"end":{}}}"#,
                ts + 1
            );
            let t = Instant::now();
            client
                .publish(Message::new("chronicle.ingest.visible", line))
                .await?;
            loop {
                let reply = client
                    .request(
                        Message::new("chronicle.query", query.clone()),
                        Duration::from_secs(10),
                    )
                    .await?;
                if reply.payload.windows(8).any(|w| w == b"\"points\"") {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    return Err::<(), Error>("a published point never became visible".into());
                }
            }
            visible.push(t.elapsed().as_secs_f64() * 1e3);
        }

        // Request/reply round trip on the node's bus.
        let mut round_trips = echo_round_trips(node.bus.clone(), args.latency_samples * 5).await?;
        let local_round_trips = if args.nats_url.is_some() {
            // Also the in-process bus, for comparison.
            let local: Arc<dyn Bus> = Arc::new(LocalBus::default());
            Some(echo_round_trips(local, args.latency_samples * 5).await?)
        } else {
            None
        };
        node.shutdown().await;
        // What the node keeps on disk for these points once stopped (the head
        // flushed into chunks): the Raft log, the shards, their snapshots.
        let disk = NodeDisk::measure(&dir.path().join("data"))?;

        let mut result = json!({
            "transport": transport,
            "points": args.points,
            "batch_points": args.batch,
            "in_flight": args.in_flight,
            "fsync_per_batch": !args.no_sync,
            "points_per_sec": (args.points as f64 / secs).round(),
            "line_protocol_parse_lines_per_sec_one_core": parse_lines_per_sec.round(),
            "line_protocol_parse_lines_per_sec_one_core_distinct_tags": parse_unique_lines_per_sec.round(),
            // This process: the node and the producer (nats-server apart).
            "cpu_seconds_per_million_points": round3(cpu / args.points as f64 * 1e6),
            "series": series,
            "decoded_cache_bytes": args.decoded_cache_bytes,
            "rss_growth_bytes": rss_growth,
            // Over the series that received a point.
            "rss_growth_bytes_per_series": (rss_growth as f64 / series.min(args.points) as f64).round(),
            "ack_latency_p50_ms": round3(quantile(&mut acks, 0.5)),
            "ack_latency_p99_ms": round3(quantile(&mut acks, 0.99)),
            "visible_latency_p50_ms": round3(quantile(&mut visible, 0.5)),
            "visible_latency_p99_ms": round3(quantile(&mut visible, 0.99)),
            "bus_round_trip_p50_ms": round3(quantile(&mut round_trips, 0.5)),
            "bus_round_trip_p99_ms": round3(quantile(&mut round_trips, 0.99)),
            "node_disk_bytes_per_point": round3(disk.total as f64 / args.points as f64),
            "raft_log_bytes_per_point": round3(disk.raft_log as f64 / args.points as f64),
            "shard_bytes_per_point": round3(disk.shards as f64 / args.points as f64),
            "other_bytes_per_point": round3((disk.total - disk.raft_log - disk.shards) as f64 / args.points as f64),
        });
        if let Some(mut v) = local_round_trips {
            result["local_bus_round_trip_p50_ms"] = json!(round3(quantile(&mut v, 0.5)));
            result["local_bus_round_trip_p99_ms"] = json!(round3(quantile(&mut v, 0.99)));
        }
        if args.json {
            println!("{result}");
        } else {
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Ok(())
    })
}

/// Bytes under a stopped node's data directory, by what holds them.
struct NodeDisk {
    total: u64,
    /// `shard-*/raft-log`: the Raft log and vote.
    raft_log: u64,
    /// `shard-*/state`: the replicas' RocksDB shards (snapshots are elsewhere).
    shards: u64,
}

impl NodeDisk {
    fn measure(data: &std::path::Path) -> std::io::Result<Self> {
        let mut out = Self {
            total: dir_bytes(data)?,
            raft_log: 0,
            shards: 0,
        };
        for entry in std::fs::read_dir(data)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard-"))
            {
                out.raft_log += dir_bytes(&path.join("raft-log"))?;
                out.shards += dir_bytes(&path.join("state"))?;
            }
        }
        Ok(out)
    }
}

/// Bytes of the files under `path` (0 when it does not exist).
fn dir_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    dir_bytes_once(path, &mut std::collections::HashSet::new())
}

/// Bytes under `path`, each file counted once however many hard links it has
/// (a snapshot links the shard's SST files, as `du` would count them).
fn dir_bytes_once(
    path: &std::path::Path,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(0);
    };
    if !meta.is_dir() {
        return Ok(if seen.insert((meta.dev(), meta.ino())) {
            meta.len()
        } else {
            0
        });
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += dir_bytes_once(&entry?.path(), seen)?;
    }
    Ok(total)
}

//! `chronicle bench ...`: generated load against the real engine.

use std::path::PathBuf;
use std::time::Instant;

use chronicle_storage::workload::Workload;
use chronicle_storage::{
    AggregateFunction, AggregateRequest, GroupBy, Matcher, Shard, ShardConfig,
};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The storage engine alone (one shard written directly with its own log, not
    /// the node's Raft write path; `bench ingest` measures that): ingest rate,
    /// bytes per point on disk, query latency, peak RSS.
    ///
    /// Data: 1,000 series at a 10 s interval with jittered millisecond timestamps,
    /// gauges as random walks at exporter precision, integer counters, constants
    /// (see storage/src/workload.rs); or, with --dataset, the samples of a real
    /// capture (scripts/record-capture). Progress goes to stderr, results to stdout.
    Storage(StorageBench),
    /// End-to-end ingest through a node started in this process: acked line
    /// protocol batches over NATS (--nats-url), the in-process bus, or HTTP (--http);
    /// then single-point publish-to-visible latency and bus request/reply round trips.
    Ingest(crate::bench_ingest::IngestBench),
    /// PromQL query latency: a TSBS-style set (single-groupby-1-1-1,
    /// single-groupby-5-8-1, cpu-max-all-1, double-groupby-1, high-cpu-1,
    /// lastpoint) over the storage bench's data set, through the HTTP API of a
    /// node started in this process. With --prometheus, the same samples are
    /// loaded into Prometheus (via promtool) and every query runs against both;
    /// answers must agree, and the latency ratio per query is reported.
    Query(crate::bench_query::QueryBench),
    /// Replication: three cluster nodes in this process (over NATS with
    /// --nats-url), every shard on all three: replicated ingest throughput,
    /// commit latency per write, and failover time after killing a leader.
    Cluster(crate::bench_cluster::ClusterBench),
    /// The replicated state through the API features use, three nodes in
    /// this process, every shard on all three: batched and single puts/s,
    /// get latency on the leader and through a follower, watch delivery
    /// latency.
    Kv(crate::bench_kv::KvBench),
    /// Collaborative sessions: edit-to-everyone latency with many participants
    /// in one session, memory per idle session (docs/collab.md).
    Collab(crate::bench_collab::CollabBench),
    /// Anomaly detection: precision, recall and F1 on a planted set, and
    /// whether the detector keeps up with ingest for many watched series
    /// (docs/anomalies.md).
    Detect(crate::bench_detect::DetectBench),
    /// Capacity forecasts: sMAPE and MASE on held-out points against
    /// statsmodels (same model family) and the seasonal-naive baseline, over
    /// generated series and a recording of a node's own usage under a
    /// cycling load (docs/capacity.md).
    Capacity(crate::bench_capacity::CapacityBench),
    /// The remediation recommender: held-out accuracy on generated incident
    /// histories against the most-frequent-successful-action baseline
    /// (docs/remediation.md).
    Recommend(crate::bench_recommend::RecommendBench),
    /// The semantic index: build time, queries a second on one core and
    /// recall@k against the exact search, side by side with an exact scan
    /// (docs/semantic.md).
    Semantic(crate::bench_semantic::SemanticBench),
}

#[derive(Args)]
pub struct StorageBench {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Points to ingest.
    #[arg(long, default_value_t = 10_000_000)]
    points: usize,
    /// Points per write batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Number of series.
    #[arg(long, default_value_t = 1_000)]
    series: usize,
    /// Do not fsync each batch (measures the engine without the disk's flush cost).
    #[arg(long)]
    no_sync: bool,
    /// zstd level for chunk bodies (1-22).
    #[arg(long, default_value_t = chronicle_storage::codec::EncodeOptions::default().zstd_level)]
    zstd_level: i32,
    /// Keep the database here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only the chunk decoder's figure (`decode_ns_per_sample`): a quick
    /// check while working on the codec.
    #[arg(long, conflicts_with = "dataset")]
    codec_only: bool,
    /// Write the samples of this capture instead of generated ones: a
    /// `promtool tsdb dump` (what scripts/record-capture writes) or exposition
    /// lines with timestamps. Reports the engine's ingest rate and bytes per
    /// point on it.
    #[arg(long)]
    dataset: Option<PathBuf>,
}

const SECOND: i64 = 1_000_000_000;
const INTERVAL: i64 = 10 * SECOND;
/// 2026-01-01T00:00:00Z, so timestamps look like today's.
const START: i64 = 1_767_225_600 * SECOND;

pub fn run(cmd: BenchCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        BenchCommand::Storage(args) => storage(args),
        BenchCommand::Ingest(args) => crate::bench_ingest::run(args),
        BenchCommand::Query(args) => crate::bench_query::run(args),
        BenchCommand::Cluster(args) => crate::bench_cluster::run(args),
        BenchCommand::Kv(args) => crate::bench_kv::run(args),
        BenchCommand::Collab(args) => crate::bench_collab::run(args),
        BenchCommand::Detect(args) => crate::bench_detect::run(args),
        BenchCommand::Capacity(args) => crate::bench_capacity::run(args),
        BenchCommand::Recommend(args) => crate::bench_recommend::run(args),
        BenchCommand::Semantic(args) => crate::bench_semantic::run(args),
    }
}

fn storage(args: StorageBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.points == 0 || args.batch == 0 || args.series == 0 {
        return Err("--points, --batch and --series must be positive".into());
    }
    let tmp = tempfile::tempdir()?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let config = ShardConfig {
        sync_writes: !args.no_sync,
        encode: chronicle_storage::codec::EncodeOptions {
            zstd_level: args.zstd_level,
        },
        ..ShardConfig::default()
    };
    if let Some(path) = &args.dataset {
        return storage_dataset(&args, path, &root, config);
    }
    if args.codec_only {
        let ns = codec_decode_ns_per_sample(args.series, config.encode)?;
        print_result(&json!({ "decode_ns_per_sample": round3(ns) }), args.json);
        return Ok(());
    }

    let shard = Shard::open(root.join("realistic"), config.clone())?;
    let mut load = Workload::realistic(args.series, INTERVAL, START, 42);
    let (written, ingest_secs) = ingest(&shard, args.points, args.batch, "realistic", |_, n| {
        load.next_batch(n)
    })?;
    shard.compact()?;
    let bytes_per_point = shard.sst_bytes()? as f64 / written as f64;

    // Queries over the last hour of data.
    let rounds = written.div_ceil(args.series) as i64;
    let end = START + rounds * INTERVAL;
    let start = end - 3600 * SECOND;
    let ids = shard.select(&[Matcher::equal("job", "node")])?;
    let mut one = one_series_scans(&shard, &ids, start, end)?;
    let mut group = Vec::new();
    let req = AggregateRequest {
        matchers: vec![Matcher::equal("job", "node")],
        start,
        end,
        window: 60 * SECOND,
        function: AggregateFunction::Mean,
        group_by: GroupBy::Labels(vec!["host".into()]),
    };
    for _ in 0..50 {
        let t = Instant::now();
        std::hint::black_box(shard.aggregate(&req)?);
        group.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(shard);

    // Cold reads: no decoded cache, every chunk decoded as it is read (what
    // queries meet once the data outgrows the cache). Whole series, then the
    // last hour of single series (which decodes each chunk only up to the
    // hour's end).
    let cold = Shard::open(
        root.join("realistic"),
        ShardConfig {
            decoded_cache_bytes: 0,
            ..config.clone()
        },
    )?;
    let started = Instant::now();
    let mut cold_samples = 0usize;
    for (id, _) in &ids {
        cold_samples += cold
            .scan(*id, i64::MIN, i64::MAX)?
            .try_fold(0usize, |n, s| s.map(|_| n + 1))?;
    }
    let cold_ns_per_sample = started.elapsed().as_nanos() as f64 / cold_samples.max(1) as f64;
    let decode_ns_per_sample = codec_decode_ns_per_sample(args.series, config.encode)?;
    let mut cold_one = one_series_scans(&cold, &ids, start, end)?;
    drop(cold);

    let noisy_points = args.points.min(2_000_000);
    let noisy = Shard::open(root.join("noisy"), config)?;
    let mut load = Workload::noisy(args.series, INTERVAL, START, 43);
    let (noisy_written, _) = ingest(&noisy, noisy_points, args.batch, "noisy", |_, n| {
        load.next_batch(n)
    })?;
    noisy.compact()?;
    let noisy_bytes = noisy.sst_bytes()? as f64 / noisy_written as f64;
    drop(noisy);

    let result = json!({
        "points": written,
        "series": args.series,
        "batch_points": args.batch,
        "fsync_per_batch": !args.no_sync,
        "engine_ingest_points_per_sec": (written as f64 / ingest_secs).round(),
        "bytes_per_point": round3(bytes_per_point),
        "noisy_bytes_per_point": round3(noisy_bytes),
        "query_one_series_1h_p50_ms": round3(quantile(&mut one, 0.5)),
        "cold_query_one_series_1h_p50_ms": round3(quantile(&mut cold_one, 0.5)),
        "cold_scan_ns_per_sample": round3(cold_ns_per_sample),
        "decode_ns_per_sample": round3(decode_ns_per_sample),
        "query_groupby_1000_series_1h_p50_ms": round3(quantile(&mut group, 0.5)),
        "query_groupby_1000_series_1h_p99_ms": round3(quantile(&mut group, 0.99)),
        "groupby_series": ids.len(),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    print_result(&result, args.json);
    Ok(())
}

/// The chunk decoder alone: nanoseconds per sample to decode three 2 h
/// chunks (720 samples) of each of the first (up to) 1,000 series of the
/// generated data, best of five passes: header, checksum and decode, no
/// RocksDB (what `cold_scan_ns_per_sample` spends on decoding).
fn codec_decode_ns_per_sample(
    series: usize,
    opts: chronicle_storage::codec::EncodeOptions,
) -> Result<f64, Box<dyn std::error::Error>> {
    use chronicle_storage::codec::{decode_chunk_into, encode_chunk};
    use chronicle_storage::model::Sample;
    const CHUNK_SAMPLES: usize = 720;
    let mut load = Workload::realistic(series, INTERVAL, START, 42);
    // Bounded memory whatever --series is: ~35 MB of samples.
    let kept = series.min(1_000);
    let mut per_series: Vec<Vec<Sample>> = vec![Vec::new(); kept];
    for _ in 0..3 * CHUNK_SAMPLES {
        for (i, p) in load.next_batch(series).into_iter().enumerate() {
            if let Some(samples) = per_series.get_mut(i % series) {
                samples.push(Sample::new(p.timestamp, p.value));
            }
        }
    }
    let chunks: Vec<Vec<u8>> = per_series
        .iter()
        .flat_map(|s| s.chunks(CHUNK_SAMPLES))
        .map(|c| encode_chunk(c, opts))
        .collect();
    let mut out = Vec::with_capacity(CHUNK_SAMPLES);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = Instant::now();
        let mut samples = 0usize;
        for chunk in &chunks {
            out.clear();
            decode_chunk_into(chunk, &mut out).map_err(|e| format!("codec: {e:?}"))?;
            samples += out.len();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / samples.max(1) as f64);
    }
    Ok(best)
}

/// Milliseconds of 200 scans of `[start, end)`, each of one series of `ids`
/// (spread over them).
fn one_series_scans(
    shard: &Shard,
    ids: &[(u64, chronicle_storage::SeriesKey)],
    start: i64,
    end: i64,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let mut ms = Vec::with_capacity(200);
    for i in 0..200 {
        let (id, _) = &ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        let n = shard
            .scan(*id, start, end)?
            .try_fold(0usize, |n, s| s.map(|_| n + 1))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(n);
    }
    Ok(ms)
}

/// `--dataset`: the capture's samples in time order, in batches, then the
/// bytes per point after compaction.
fn storage_dataset(
    args: &StorageBench,
    path: &std::path::Path,
    root: &std::path::Path,
    config: ShardConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    eprintln!("reading {}", path.display());
    let data = crate::bench_dataset::Dataset::load(path)?;
    let total = data.samples.len();
    eprintln!("{total} samples in {} series", data.series.len());
    let shard = Shard::open(root.join("dataset"), config)?;
    let (written, secs) = ingest(&shard, total, args.batch, "dataset", |from, n| {
        data.points(from, n)
    })?;
    shard.compact()?;
    let bytes = shard.sst_bytes()?;
    let (first, last) = (data.samples[0].1, data.samples[total - 1].1);
    let result = json!({
        "dataset": path.display().to_string(),
        "points": written,
        "series": data.series.len(),
        "span_seconds": (last - first) / SECOND,
        "batch_points": args.batch,
        "fsync_per_batch": !args.no_sync,
        "engine_ingest_points_per_sec": (written as f64 / secs).round(),
        "sst_bytes": bytes,
        "bytes_per_point": round3(bytes as f64 / written as f64),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    print_result(&result, args.json);
    Ok(())
}

/// A bench's result: one JSON object, or one `key value` line per field.
pub(crate) fn print_result(result: &serde_json::Value, json: bool) {
    if json {
        println!("{result}");
    } else {
        for (k, v) in result.as_object().into_iter().flatten() {
            println!("{k:<40} {v}");
        }
    }
}

/// Writes `points` in batches; only the time spent in `write_batch` is counted.
/// `next(written, n)` gives the next batch of at most `n` points.
fn ingest(
    shard: &Shard,
    points: usize,
    batch: usize,
    label: &str,
    mut next: impl FnMut(usize, usize) -> Vec<chronicle_storage::Point>,
) -> Result<(usize, f64), Box<dyn std::error::Error>> {
    let mut written = 0;
    let mut secs = 0.0;
    let mut next_report = Instant::now();
    while written < points {
        let pts = next(written, batch.min(points - written));
        if pts.is_empty() {
            break;
        }
        let t = Instant::now();
        shard.write_batch(&pts)?;
        secs += t.elapsed().as_secs_f64();
        written += pts.len();
        if next_report.elapsed().as_secs() >= 2 || written == points {
            eprintln!(
                "{label}: {written}/{points} points ({:.0} points/s)",
                written as f64 / secs
            );
            next_report = Instant::now();
        }
    }
    Ok((written, secs))
}

pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Resident memory of this process, bytes (0 where it cannot be read).
pub(crate) fn rss_bytes() -> u64 {
    chronicle_capacity::usage::memory_rss().unwrap_or(0)
}

/// CPU time this process has used, user and system, in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Peak resident set size (VmHWM) of this process, in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

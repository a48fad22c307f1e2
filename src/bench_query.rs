//! `chronicle bench query`: a TSBS-style query set in PromQL, SQL and CQL over
//! the storage bench's data set (with each language's parse+plan time), against a node started in this process and, with
//! `--prometheus`, side by side against a Prometheus server holding the same
//! samples (loaded with `promtool tsdb create-blocks-from openmetrics`).
//!
//! Both systems are asked over HTTP (`/api/v1/query_range`, `/api/v1/query`)
//! by the same client, one query at a time, alternating which goes first, and
//! every answer pair is compared: a benchmark of two systems that disagree
//! would measure nothing.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chronicle_storage::workload::Workload;
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::bench::{quantile, round3};
use crate::{Node, NodeConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Args, Debug)]
pub struct QueryBench {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Points to load (1,000 series at 10 s: 10 M points is ≈ 27.8 h of data).
    #[arg(long, default_value_t = 10_000_000)]
    points: usize,
    /// Timed runs per query (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Untimed runs per query before timing starts.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Also load the same samples into Prometheus and run every query against
    /// both. Value: the `prometheus` binary; `promtool` is looked up beside it.
    #[arg(long, value_name = "BINARY", num_args = 0..=1, default_missing_value = "prometheus")]
    prometheus: Option<PathBuf>,
    /// Keep both databases here instead of a temporary directory; a later run
    /// with the same directory and --points reuses them instead of loading again.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Chronicle's decoded-chunk cache, bytes; 0 makes every query decode the
    /// chunks it reads (the cold figure).
    #[arg(long, default_value_t = chronicle_storage::ShardConfig::default().decoded_cache_bytes)]
    decoded_cache_bytes: usize,
    /// Threads one selection decodes its chunks on (the node's
    /// `[query] decode_threads`; 1: the query's own thread alone).
    #[arg(long, default_value_t = chronicle_storage::default_shard_threads())]
    decode_threads: usize,
    /// Run only these queries (repeatable; default all).
    #[arg(long = "query", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(QUERIES))]
    only: Vec<String>,
    /// Time only the PromQL forms (and Prometheus), skipping the SQL and CQL
    /// pass: for profiling one language.
    #[arg(long)]
    promql_only: bool,
}

const SECOND: i64 = 1_000_000_000;
const INTERVAL: i64 = 10 * SECOND;
const START: i64 = 1_767_225_600 * SECOND;
const SERIES: usize = 1_000;
const HOSTS: usize = SERIES / 20;
const HOUR: i64 = 3600;

/// One query of the set, with the time range it covers (seconds), in PromQL
/// and in SQL and CQL. The SQL and CQL forms ask the same question the way
/// those languages do (windows `[t, t + w)` over every sample, not PromQL's
/// `(t - w, t]` at each step), so their answers are not compared with
/// Prometheus's; tests/tests/query_languages.rs checks that the languages agree
/// where their windows coincide.
struct Instance {
    promql: String,
    sql: String,
    cql: String,
    start: i64,
    end: i64,
    /// `None`: an instant query at `end`.
    step: Option<i64>,
}

/// The TSBS query types, mapped onto this data set's `cpu_usage_percent{mode}`
/// (six modes per host; TSBS's ten `cpu` fields become `mode` values).
const QUERIES: [&str; 9] = [
    "single-groupby-1-1-1",
    "single-groupby-5-8-1",
    "cpu-max-all-1",
    "double-groupby-1",
    "high-cpu-1",
    "lastpoint",
    "double-groupby-all",
    "high-cpu-all",
    "groupby-orderby-limit",
];

fn host(i: usize) -> String {
    format!("host-{i:03}")
}

/// `'a','b'` for an SQL IN list.
fn quoted(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A random instance of query `name` over data spanning `[first, last]` seconds;
/// as in TSBS, hosts and window starts are drawn at random for every run.
fn instance(name: &str, rng: &mut SmallRng, first: i64, last: i64) -> Instance {
    // A window of `len` seconds inside the data (the whole data if shorter).
    let mut window = |len: i64| {
        let latest = (last - len).max(first);
        let start = first + rng.random_range(0..=(latest - first)) / 60 * 60;
        (start, (start + len).min(last))
    };
    match name {
        "single-groupby-1-1-1" => {
            let (start, end) = window(HOUR);
            let h = host(rng.random_range(0..HOSTS));
            Instance {
                promql: format!(
                    r#"max by (host) (max_over_time(cpu_usage_percent{{mode="user",host="{h}"}}[1m]))"#
                ),
                sql: format!("SELECT max(value) FROM cpu_usage_percent WHERE mode = 'user' AND host = '{h}' AND time >= {} AND time < {} GROUP BY time(1m), host", start * SECOND, end * SECOND),
                cql: format!("SELECT max(value) FROM cpu_usage_percent WHERE mode = 'user' AND host = '{h}' AND time >= {} AND time < {} GROUP BY host WINDOW 1m", start * SECOND, end * SECOND),
                start,
                end,
                step: Some(60),
            }
        }
        "single-groupby-5-8-1" => {
            let (start, end) = window(HOUR);
            let first_host = rng.random_range(0..HOSTS - 8);
            let hosts: Vec<String> = (first_host..first_host + 8).map(host).collect();
            Instance {
                promql: format!(
                    r#"max by (mode) (max_over_time(cpu_usage_percent{{mode=~"user|system|iowait|idle|steal",host=~"{}"}}[1m]))"#,
                    hosts.join("|")
                ),
                sql: format!("SELECT max(value) FROM cpu_usage_percent WHERE mode IN ('user','system','iowait','idle','steal') AND host IN ({}) AND time >= {} AND time < {} GROUP BY time(1m), mode", quoted(&hosts), start * SECOND, end * SECOND),
                cql: format!("SELECT max(value) FROM cpu_usage_percent WHERE mode =~ 'user|system|iowait|idle|steal' AND host =~ '{}' AND time >= {} AND time < {} GROUP BY mode WINDOW 1m", hosts.join("|"), start * SECOND, end * SECOND),
                start,
                end,
                step: Some(60),
            }
        }
        "cpu-max-all-1" => {
            let (start, end) = window(8 * HOUR);
            let h = host(rng.random_range(0..HOSTS));
            Instance {
                promql: format!(
                    r#"max by (mode) (max_over_time(cpu_usage_percent{{host="{h}"}}[1h]))"#
                ),
                sql: format!("SELECT max(value) FROM cpu_usage_percent WHERE host = '{h}' AND time >= {} AND time < {} GROUP BY time(1h), mode", start * SECOND, end * SECOND),
                cql: format!("SELECT max(value) FROM cpu_usage_percent WHERE host = '{h}' AND time >= {} AND time < {} GROUP BY mode WINDOW 1h", start * SECOND, end * SECOND),
                start,
                end,
                step: Some(HOUR),
            }
        }
        "double-groupby-1" => {
            let (start, end) = window(12 * HOUR);
            Instance {
                promql: r#"avg by (host) (avg_over_time(cpu_usage_percent{mode="user"}[1h]))"#
                    .into(),
                sql: format!("SELECT mean(value) FROM cpu_usage_percent WHERE mode = 'user' AND time >= {} AND time < {} GROUP BY time(1h), host", start * SECOND, end * SECOND),
                cql: format!("SELECT mean(value) FROM cpu_usage_percent WHERE mode = 'user' AND time >= {} AND time < {} GROUP BY host WINDOW 1h", start * SECOND, end * SECOND),
                start,
                end,
                step: Some(HOUR),
            }
        }
        "high-cpu-1" => {
            let (start, end) = window(12 * HOUR);
            let h = host(rng.random_range(0..HOSTS));
            Instance {
                promql: format!(r#"cpu_usage_percent{{mode="user",host="{h}"}} > 60"#),
                sql: format!("SELECT time, value FROM cpu_usage_percent WHERE mode = 'user' AND host = '{h}' AND value > 60 AND time >= {} AND time < {}", start * SECOND, end * SECOND),
                cql: format!("SELECT time, value FROM cpu_usage_percent WHERE mode = 'user' AND host = '{h}' AND value > 60 AND time >= {} AND time < {}", start * SECOND, end * SECOND),
                start,
                end,
                step: Some(10),
            }
        }
        "lastpoint" => Instance {
            promql: "cpu_usage_percent".into(),
            sql: format!(
                "SELECT last(value) FROM cpu_usage_percent WHERE time > {} GROUP BY host, mode",
                (last - 300) * SECOND
            ),
            cql: format!(
                "SELECT last(value) FROM cpu_usage_percent WHERE time > {} GROUP BY host, mode",
                (last - 300) * SECOND
            ),
            // Each series' newest sample, as TSBS's lastpoint asks: the data's
            // last round is up to one interval (a series' phase) after `last`,
            // so the instant query is asked just after it.
            start: last + INTERVAL / SECOND + 1,
            end: last + INTERVAL / SECOND + 1,
            step: None,
        },
        // Every mode of every host: the whole data set, hour by hour (TSBS's
        // double-groupby-all averages all ten CPU metrics per host).
        "double-groupby-all" => {
            let (start, end) = window(12 * HOUR);
            Instance {
                promql: r#"avg by (host, mode) (avg_over_time(cpu_usage_percent[1h]))"#.into(),
                sql: format!("SELECT mean(value) FROM cpu_usage_percent WHERE time >= {} AND time < {} GROUP BY time(1h), host, mode", start * SECOND, end * SECOND),
                cql: format!("SELECT mean(value) FROM cpu_usage_percent WHERE time >= {} AND time < {} GROUP BY host, mode WINDOW 1h", start * SECOND, end * SECOND),
                start,
                end,
                step: Some(HOUR),
            }
        }
        // Every host's samples over the threshold: a filter over raw samples
        // of 50 series (TSBS's high-cpu-all), a large answer.
        "high-cpu-all" => {
            let (start, end) = window(12 * HOUR);
            Instance {
                promql: r#"cpu_usage_percent{mode="user"} > 90"#.into(),
                sql: format!("SELECT time, value FROM cpu_usage_percent WHERE mode = 'user' AND value > 90 AND time >= {} AND time < {}", start * SECOND, end * SECOND),
                cql: format!("SELECT time, value FROM cpu_usage_percent WHERE mode = 'user' AND value > 90 AND time >= {} AND time < {}", start * SECOND, end * SECOND),
                start,
                end,
                step: Some(10),
            }
        }
        // The last five minutes' maxima across every host, newest first
        // (TSBS's groupby-orderby-limit: ORDER BY minute DESC LIMIT 5 before a
        // random time). PromQL has no ORDER BY: the five steps are the limit.
        "groupby-orderby-limit" => {
            let (_, end) = window(HOUR);
            let start = end - 4 * 60;
            Instance {
                promql: r#"max(max_over_time(cpu_usage_percent{mode="user"}[1m]))"#.into(),
                sql: format!("SELECT max(value) FROM cpu_usage_percent WHERE mode = 'user' AND time < {} GROUP BY time(1m) ORDER BY time DESC LIMIT 5", end * SECOND),
                cql: format!("SELECT max(value) FROM cpu_usage_percent WHERE mode = 'user' AND time < {} WINDOW 1m ORDER BY time DESC LIMIT 5", end * SECOND),
                start,
                end,
                step: Some(60),
            }
        }
        other => unreachable!("unknown query {other}"),
    }
}

/// A Prometheus-API endpoint (Chronicle's or Prometheus's).
struct Target {
    name: &'static str,
    base: String,
    agent: ureq::Agent,
}

impl Target {
    fn new(name: &'static str, base: String) -> Self {
        // Timeouts per phase, not `timeout_global`: with a global timeout
        // ureq resolves every request's address on a new thread (to bound the
        // lookup), which put a thread spawn and a wake-up (~0.1 ms here) in
        // every timed request to either system. The address is an IP literal.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_send_request(Some(Duration::from_secs(60)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_recv_body(Some(Duration::from_secs(300)))
            .build()
            .into();
        Self { name, base, agent }
    }

    /// Runs `q`; the elapsed milliseconds and the decoded `data` field.
    fn run(&self, q: &Instance) -> Result<(f64, Value), Error> {
        let t = Instant::now();
        let request = match q.step {
            Some(step) => self
                .agent
                .get(format!("{}/api/v1/query_range", self.base))
                .query("query", &q.promql)
                .query("start", q.start.to_string())
                .query("end", q.end.to_string())
                .query("step", step.to_string()),
            None => self
                .agent
                .get(format!("{}/api/v1/query", self.base))
                .query("query", &q.promql)
                .query("time", q.end.to_string()),
        };
        let mut response = request.call()?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            return Err(format!("{}: HTTP {status} for {}: {body}", self.name, q.promql).into());
        }
        let mut v: Value = serde_json::from_str(&body)?;
        Ok((elapsed, v["data"].take()))
    }
}

impl Target {
    /// Runs a `{"sql": ...}` or `{"cql": ...}` request on `/query`; the elapsed
    /// milliseconds and the number of rows.
    fn run_select(&self, language: &str, text: &str) -> Result<(f64, usize), Error> {
        let t = Instant::now();
        let mut response = self
            .agent
            .post(format!("{}/query", self.base))
            .content_type("application/json")
            .send(json!({ language: text }).to_string())?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            return Err(format!("{}: HTTP {status} for {text}: {body}", self.name).into());
        }
        let v: Value = serde_json::from_str(&body)?;
        let rows = v["rows"]
            .as_array()
            .ok_or_else(|| format!("no rows in the answer to {text}: {body}"))?
            .len();
        Ok((elapsed, rows))
    }
}

/// Nanoseconds to parse and plan `text` once, the median of `runs` (no cache:
/// the PromQL plan cache is bypassed).
fn parse_ns(runs: usize, mut parse: impl FnMut() -> bool) -> Result<f64, Error> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        if !parse() {
            return Err("a benchmark query did not parse".into());
        }
        times.push(t.elapsed().as_secs_f64() * 1e9);
    }
    Ok(quantile(&mut times, 0.5))
}

/// Series of a query answer as `labels -> [(t, value)]`, for comparison.
fn normalise(data: &Value) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out = BTreeMap::new();
    for series in data["result"].as_array().into_iter().flatten() {
        let key = series["metric"].to_string();
        let points: Vec<&Value> = match series.get("values") {
            Some(values) => values.as_array().into_iter().flatten().collect(),
            None => vec![&series["value"]],
        };
        let points = points
            .iter()
            .map(|p| {
                let t = p[0].as_f64().unwrap_or(f64::NAN);
                let v = p[1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (t, v)
            })
            .collect();
        out.insert(key, points);
    }
    out
}

/// Why two answers differ, or `None` when they agree (values to 1e-9 relative).
fn difference(a: &Value, b: &Value) -> Option<String> {
    let (a, b) = (normalise(a), normalise(b));
    if a.len() != b.len() || a.keys().ne(b.keys()) {
        return Some(format!("{} series vs {}", a.len(), b.len()));
    }
    for (key, (pa, pb)) in a.iter().map(|(k, v)| (k, (v, &b[k]))) {
        if pa.len() != pb.len() {
            return Some(format!("{key}: {} points vs {}", pa.len(), pb.len()));
        }
        for ((ta, va), (tb, vb)) in pa.iter().zip(pb) {
            let close =
                (va - vb).abs() <= 1e-9 * va.abs().max(vb.abs()) || (va.is_nan() && vb.is_nan());
            if ta != tb || !close {
                return Some(format!("{key}: ({ta}, {va}) vs ({tb}, {vb})"));
            }
        }
    }
    None
}

/// Writes `points` of the workload as OpenMetrics text for promtool.
fn write_openmetrics(path: &Path, points: usize) -> Result<(), Error> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut load = Workload::realistic(SERIES, INTERVAL, START, 42);
    let mut left = points;
    while left > 0 {
        let batch = load.next_batch(left.min(100_000));
        left -= batch.len();
        for p in batch {
            write!(out, "{}{{", p.metric)?;
            for (i, l) in p.labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                write!(out, "{sep}{}=\"{}\"", l.name, l.value)?;
            }
            // Timestamps in seconds with millisecond precision, as OpenMetrics wants.
            let ms = p.timestamp / 1_000_000;
            writeln!(out, "}} {} {}.{:03}", p.value, ms / 1000, ms % 1000)?;
        }
    }
    writeln!(out, "# EOF")?;
    out.flush()?;
    Ok(())
}

/// A Prometheus server on a loopback port, stopped on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_prometheus(binary: &Path, dir: &Path, points: usize) -> Result<Prometheus, Error> {
    let promtool = binary.with_file_name("promtool");
    let promtool = if binary.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
        promtool
    } else {
        PathBuf::from("promtool")
    };
    let metrics = dir.join("samples.om");
    let tsdb = dir.join("prometheus");
    let marker = dir.join("prometheus-loaded");
    if std::fs::read_to_string(&marker).ok() != Some(points.to_string()) {
        if tsdb.exists() {
            std::fs::remove_dir_all(&tsdb)?;
        }
        eprintln!("prometheus: writing {points} samples as OpenMetrics");
        write_openmetrics(&metrics, points)?;
        eprintln!("prometheus: promtool tsdb create-blocks-from openmetrics (this takes a while)");
        let status = Command::new(&promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&metrics)
            .arg(&tsdb)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("{}: {e}", promtool.display()))?;
        if !status.success() {
            return Err(format!("promtool failed: {status}").into());
        }
        std::fs::remove_file(&metrics)?;
        std::fs::write(&marker, points.to_string())?;
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n")?;
    let port = free_port()?;
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        // The samples are dated 2026-01-01: keep them whatever today is.
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let server = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ureq::get(format!("{}/-/ready", server.url)).call().is_ok() {
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err("prometheus did not become ready within 120 s (see prometheus.log)".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}

pub fn run(args: QueryBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.points < SERIES || args.iterations == 0 {
        return Err(format!("--points must be at least {SERIES} and --iterations positive").into());
    }
    let tmp = tempfile::tempdir()?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let prometheus = match &args.prometheus {
        Some(binary) => Some((
            start_prometheus(binary, &root, args.points).map_err(|e| e.to_string())?,
            version(binary),
        )),
        None => None,
    };

    // A database left by an earlier run is reused only if it holds this data set.
    let marker = root.join("chronicle-loaded");
    let loaded = std::fs::read_to_string(&marker).ok() == Some(args.points.to_string());
    if !loaded && root.join("chronicle").exists() {
        std::fs::remove_dir_all(root.join("chronicle"))?;
    }
    let config = NodeConfig {
        data_dir: root.join("chronicle"),
        http_addr: "127.0.0.1:0".parse().expect("static address"),
        decoded_cache_bytes: args.decoded_cache_bytes,
        query: crate::config::QuerySettings {
            decode_threads: args.decode_threads,
            ..Default::default()
        },
        ..NodeConfig::default()
    };
    let prom = prometheus
        .as_ref()
        .map(|(p, _)| Target::new("prometheus", p.url.clone()));
    let system = actix::System::new();
    let result = system.block_on(async move {
        let node = Node::start(config).await?;
        let points = args.points;
        if !loaded {
            load(&node, points).await?;
            std::fs::write(&marker, points.to_string())?;
        }
        let only = args.only.clone();
        let chronicle = Target::new("chronicle", format!("http://{}", node.http_addr));
        let results = tokio::task::spawn_blocking(move || {
            measure(
                &chronicle,
                prom.as_ref(),
                points,
                &only,
                args.iterations,
                args.warmup,
                !args.promql_only,
            )
        })
        .await??;
        let mut results = results;
        results["decoded_cache_bytes"] = json!(args.decoded_cache_bytes);
        results["decode_threads"] = json!(args.decode_threads.max(1));
        results["decoded_cache_bytes_used"] = json!(node
            .local_shards()
            .iter()
            .map(|s| s.decoded_cache_bytes())
            .sum::<u64>());
        // What the reads cost over the whole run (warm-up included): chunks
        // found in the cache's decoded or packed tier, and chunks range-decoded.
        let reads = node.local_shards().iter().fold(
            chronicle_storage::ReadCounts::default(),
            |mut all, s| {
                let r = s.read_counts();
                all.decoded_cache_hits += r.decoded_cache_hits;
                all.packed_cache_hits += r.packed_cache_hits;
                all.decoded_cache_misses += r.decoded_cache_misses;
                all.chunks_decoded += r.chunks_decoded;
                all
            },
        );
        results["chunk_reads"] = json!({
            "cache_hits_decoded_tier": reads.decoded_cache_hits.saturating_sub(reads.packed_cache_hits),
            "cache_hits_packed_tier": reads.packed_cache_hits,
            "cache_misses": reads.decoded_cache_misses,
            "chunks_decoded": reads.chunks_decoded,
        });
        node.shutdown().await;
        Ok::<_, Error>(results)
    });
    let mut result = result.map_err(|e| e.to_string())?;
    if let Some((_, v)) = &prometheus {
        result["prometheus_version"] = json!(v);
    }
    if args.json {
        println!("{result}");
    } else {
        print_table(&result);
    }
    Ok(())
}

/// Loads the data set through the node's write path (Raft, without the
/// ingest actor's parsing: ingest is not what is measured here), then compacts
/// as the storage bench does.
async fn load(node: &crate::Node, points: usize) -> Result<(), Error> {
    let mut workload = Workload::realistic(SERIES, INTERVAL, START, 42);
    let mut left = points;
    let mut report = Instant::now();
    while left > 0 {
        let batch = workload.next_batch(left.min(20_000));
        left -= batch.len();
        node.write(batch).await?;
        if report.elapsed() > Duration::from_secs(2) || left == 0 {
            eprintln!("chronicle: loaded {}/{points} points", points - left);
            report = Instant::now();
        }
    }
    let shards = node.local_shards();
    tokio::task::spawn_blocking(move || shards.iter().try_for_each(|s| s.compact())).await??;
    Ok(())
}

/// Reads every sample the queries can touch once on each system, untimed:
/// Chronicle's decoded cache (when it has one) then holds the metric as far as
/// its tiers have room, as on a node that had served it for a while, and both
/// systems' file caches hold what they read. Without this, the first query
/// types would run against an emptier cache than the later ones. A day at a
/// time (300 series of a day stay far below the sample limit of one query);
/// the answers are compared too.
fn warm_up(
    chronicle: &Target,
    prometheus: Option<&Target>,
    first: i64,
    last: i64,
) -> Result<(), Error> {
    const DAY: i64 = 24 * HOUR;
    // Windows are `(end - DAY, end]`: the first one takes in `first`.
    let mut end = first - 1;
    loop {
        end = (end + DAY).min(last);
        let q = Instance {
            promql: format!("count_over_time(cpu_usage_percent[{DAY}s])"),
            sql: String::new(),
            cql: String::new(),
            start: end,
            end,
            step: None,
        };
        let (_, ours) = chronicle.run(&q)?;
        if let Some(p) = prometheus {
            let (_, theirs) = p.run(&q)?;
            if let Some(diff) = difference(&ours, &theirs) {
                return Err(format!("warm-up: Chronicle and Prometheus disagree: {diff}").into());
            }
        }
        if end >= last {
            return Ok(());
        }
    }
}

fn measure(
    chronicle: &Target,
    prometheus: Option<&Target>,
    points: usize,
    only: &[String],
    iterations: usize,
    warmup: usize,
    sql_and_cql: bool,
) -> Result<Value, Error> {
    let first = START / SECOND;
    let last = first + ((points / SERIES) as i64 - 1) * (INTERVAL / SECOND);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut out = serde_json::Map::new();
    warm_up(chronicle, prometheus, first, last)?;
    for name in QUERIES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        // Every system gets the same sequence of instances. PromQL runs in a
        // pass of its own, so neither Chronicle nor Prometheus is timed right
        // after a SQL scan that only Chronicle ran; SQL and CQL follow in a
        // second pass over the same instances.
        let instances: Vec<Instance> = (0..warmup + iterations)
            .map(|_| instance(name, &mut rng, first, last))
            .collect();
        let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut series = 0;
        for (i, q) in instances.iter().enumerate() {
            let targets: Vec<&Target> = match prometheus {
                // Alternate which system goes first so neither always gets warm caches.
                Some(p) if i % 2 == 1 => vec![p, chronicle],
                Some(p) => vec![chronicle, p],
                None => vec![chronicle],
            };
            let mut answers = Vec::new();
            for t in targets {
                let (ms, data) = t.run(q)?;
                let slot = usize::from(t.name != "chronicle");
                if i >= warmup {
                    times[slot].push(ms);
                }
                answers.push((slot, data));
            }
            answers.sort_by_key(|(slot, _)| *slot);
            series = answers[0].1["result"].as_array().map_or(0, Vec::len);
            if let [(_, a), (_, b)] = &answers[..] {
                if let Some(diff) = difference(a, b) {
                    return Err(format!(
                        "{name}: Chronicle and Prometheus disagree on {} [{}, {}]: {diff}",
                        q.promql, q.start, q.end
                    )
                    .into());
                }
            }
        }
        let (mut sql_times, mut cql_times) = (Vec::new(), Vec::new());
        let mut sql_rows = 0;
        let mut parse = None;
        for (i, q) in instances.iter().enumerate() {
            if !sql_and_cql {
                break;
            }
            if parse.is_none() {
                use chronicle_engine::{cql, promql, sql};
                parse = Some(json!({
                    "promql_ns": round3(parse_ns(1000, || promql::parse(&q.promql).is_ok())?),
                    "sql_ns": round3(parse_ns(1000, || sql::parse(&q.sql).is_ok())?),
                    "cql_ns": round3(parse_ns(1000, || cql::parse(&q.cql).is_ok())?),
                }));
            }
            let (sql_ms, rows) = chronicle.run_select("sql", &q.sql)?;
            let (cql_ms, cql_rows) = chronicle.run_select("cql", &q.cql)?;
            if rows != cql_rows {
                return Err(format!("{name}: SQL gave {rows} rows and CQL {cql_rows}").into());
            }
            sql_rows = rows;
            if i >= warmup {
                sql_times.push(sql_ms);
                cql_times.push(cql_ms);
            }
        }
        let [mut c, mut p] = times;
        let mut entry = json!({
            "chronicle_p50_ms": round3(quantile(&mut c, 0.5)),
            "chronicle_p99_ms": round3(quantile(&mut c, 0.99)),
            "series": series,
        });
        if sql_and_cql {
            entry["sql_p50_ms"] = json!(round3(quantile(&mut sql_times, 0.5)));
            entry["sql_p99_ms"] = json!(round3(quantile(&mut sql_times, 0.99)));
            entry["cql_p50_ms"] = json!(round3(quantile(&mut cql_times, 0.5)));
            entry["cql_p99_ms"] = json!(round3(quantile(&mut cql_times, 0.99)));
            entry["sql_rows"] = json!(sql_rows);
            entry["parse_plan"] = json!(parse);
        }
        if prometheus.is_some() {
            let (c50, p50) = (quantile(&mut c, 0.5), quantile(&mut p, 0.5));
            entry["prometheus_p50_ms"] = json!(round3(p50));
            entry["prometheus_p99_ms"] = json!(round3(quantile(&mut p, 0.99)));
            entry["ratio_p50"] = json!(round3(c50 / p50));
            entry["ratio_p99"] = json!(round3(quantile(&mut c, 0.99) / quantile(&mut p, 0.99)));
        }
        eprintln!("{name}: {entry}");
        out.insert(name.to_string(), entry);
    }
    Ok(json!({
        "points": points,
        "series": SERIES,
        "iterations": iterations,
        "answers_compared": prometheus.is_some(),
        "queries": out,
    }))
}

fn print_table(result: &Value) {
    let compared = result["answers_compared"].as_bool().unwrap_or(false);
    print!(
        "{:<22} {:>12} {:>12} {:>12} {:>12}",
        "query", "p50 ms", "p99 ms", "sql p50", "sql p99"
    );
    if compared {
        print!(" {:>12} {:>12} {:>9}", "prom p50", "prom p99", "ratio p50");
    }
    println!();
    for (name, q) in result["queries"].as_object().into_iter().flatten() {
        let cell = |k: &str| q[k].to_string();
        print!(
            "{name:<22} {:>12} {:>12} {:>12} {:>12}",
            cell("chronicle_p50_ms"),
            cell("chronicle_p99_ms"),
            cell("sql_p50_ms"),
            cell("sql_p99_ms")
        );
        if compared {
            print!(
                " {:>12} {:>12} {:>9}",
                cell("prometheus_p50_ms"),
                cell("prometheus_p99_ms"),
                cell("ratio_p50")
            );
        }
        println!();
    }
}

//! A real peer: Debian's Prometheus scrapes itself every second and
//! remote-writes what it scrapes to a node process. The same PromQL queries,
//! asked of Prometheus's API and of the node's, must answer the same.
//!
//! Needs `prometheus` on PATH (scripts/test-all installs Debian's).

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chronicle_tests::{free_port, wait_until, NodeProcess};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap()
}

/// `(labels, value)` of an instant query's vector, sorted; values rounded to
/// 1e-9 relative (both sides print Go's float format, but sums may differ in
/// the last bit).
fn instant(base: &str, query: &str, time: f64) -> Vec<(String, String)> {
    let url = format!(
        "{base}/api/v1/query?query={}&time={time:.3}",
        urlencode(query)
    );
    let body = get(&url);
    assert_eq!(body["status"], "success", "{url}: {body}");
    let mut out: Vec<(String, String)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            (r["metric"].to_string(), format!("{v:.9e}"))
        })
        .collect();
    out.sort();
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_remote_writes_to_a_node_and_both_answer_the_same() {
    let Some(prometheus) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    }) else {
        panic!("prometheus is not on PATH (scripts/test-all installs Debian's)");
    };
    let data = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(BIN, &data.path().join("node"), None, &[]);
    let port = free_port();
    let config = data.path().join("prometheus.yml");
    std::fs::File::create(&config)
        .unwrap()
        .write_all(
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: prometheus\n    \
                 static_configs: [{{targets: ['127.0.0.1:{port}']}}]\nremote_write:\n  - url: {}/api/v1/write\n    \
                 queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 2000}}\n",
                node.http
            )
            .as_bytes(),
        )
        .unwrap();
    let _prometheus = Prometheus(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "prometheus ready", || {
        ureq::get(format!("{prom}/-/ready")).call().is_ok()
    });
    // Scrape for a while; the node receives everything scraped until a few
    // seconds before `at` (remote write sends at least every second).
    let started = Instant::now();
    // Long enough that the counters asked about below are older than any
    // window: Debian's Prometheus (2.42) limits extrapolation of a counter that
    // starts inside the window differently from Prometheus since 2.51 (PR
    // 13725), which the engine follows (docs/promql.md).
    std::thread::sleep(Duration::from_secs(20));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = now - 4.0;
    wait_until(
        Duration::from_secs(30),
        "the node has the samples up to `at`",
        || instant(&node.http, "timestamp(up)", at) == instant(&prom, "timestamp(up)", at),
    );
    let queries = [
        "up",
        "{job=\"prometheus\"}",
        "timestamp(up)",
        "count({job=\"prometheus\"})",
        "prometheus_tsdb_head_series",
        "sum by (job) (scrape_samples_scraped)",
        "rate(prometheus_http_requests_total[5s])",
        "sum by (handler) (increase(prometheus_http_requests_total[8s]))",
        "max_over_time(scrape_duration_seconds[10s])",
        "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[8s])))",
        "count_over_time(up[10s])",
    ];
    // Remote write sends from several queues: a series may arrive a little
    // after another. Each query is asked again until both agree, for a
    // bounded time; a real difference never goes away and fails the test.
    let mut compared = 0;
    for q in queries {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ours = instant(&node.http, q, at);
            let theirs = instant(&prom, q, at);
            if ours == theirs {
                compared += theirs.len();
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{q} at {at}: node vs Prometheus\n  node:       {ours:?}\n  prometheus: {theirs:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!(
        "{} queries, {compared} series compared equal after {:?} of scraping",
        queries.len(),
        started.elapsed()
    );
    assert!(
        compared > 100,
        "the answers were not empty: {compared} series"
    );
    let status = node.stop();
    assert!(status.success(), "{status}");
}

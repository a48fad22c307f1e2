//! `/metrics` of a node that wrote, snapshotted and answered queries: every
//! family an operator needs is there with real values, and the whole page
//! passes `promtool check metrics` (Prometheus's own parser and naming lint).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use chronicle::{Node, NodeConfig};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn post(url: &str, body: &str) -> u16 {
    agent()
        .post(url)
        .send(body)
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn scrape(base: &str) -> String {
    agent()
        .get(format!("{base}/metrics"))
        .call()
        .expect("metrics answered")
        .body_mut()
        .read_to_string()
        .expect("metrics text")
}

/// Every sample of the page: `name{labels}` as written -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the one sample whose series starts with `name{` and holds
/// every `label` given (`shard="0"`), or the bare `name`.
fn value(all: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    all.iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| *v)
        .next()
}

#[actix::test]
async fn metrics_cover_queries_raft_rocksdb_bus_and_the_process_and_pass_promtool() {
    let promtool = Command::new("promtool").arg("--version").output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: scripts/test-all installs Debian's prometheus package"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    };
    config.cluster.shards = Some(2);
    // The node's floor: a snapshot after 1 MiB of log.
    config.cluster.snapshot_log_bytes = 1 << 20;
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);

    let checks = tokio::task::spawn_blocking(move || {
        // 320,000 points, several MiB of log per shard: each builds a snapshot.
        // Values that do not compress (the log's entries are compressed).
        let t0 = 1_700_000_000_000_000_000i64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for batch in 0..80 {
            let lines: String = (0..2_000)
                .map(|i| {
                    let n = batch * 2_000 + i;
                    format!(
                        "cpu,host=h{},region=r{} usage={},system={} {}\n",
                        n % 50,
                        n % 7,
                        random(),
                        random(),
                        t0 + i64::from(n) * 1_000_000
                    )
                })
                .collect();
            assert_eq!(post(&format!("{base}/write"), &lines), 204);
        }
        let built = |all: &BTreeMap<String, f64>| {
            ["0", "1"].iter().all(|s| {
                let shard = format!("shard=\"{s}\"");
                value(all, "chronicle_raft_snapshots_total", &[&shard, "kind=\"built\""])
                    .is_some_and(|v| v >= 1.0)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !built(&samples(&scrape(&base))) {
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot built on both shards within 30 s:\n{}",
                scrape(&base)
                    .lines()
                    .filter(|l| l.starts_with("chronicle_raft"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        // Queries in each language, and one the client got wrong.
        let query = |body: &str| post(&format!("{base}/query"), body);
        assert_eq!(query(r#"{"sql":"SELECT host, max(value) FROM cpu_usage WHERE time BETWEEN 1700000000000000000 AND 1700000100000000000 GROUP BY host"}"#), 200);
        assert_eq!(
            query(r#"{"promql":"sum by (region) (cpu_usage)","start":"2023-11-14T22:13:20Z","end":"2023-11-14T22:14:20Z","step":"10s"}"#),
            200
        );
        assert_eq!(query(r#"{"metric":"cpu_usage","start":"2023-11-14T22:13:20Z","end":"2023-11-14T22:15:20Z","limit":10}"#), 200);
        assert_eq!(query(r#"{"sql":"SELEKT nothing"}"#), 400);

        let text = scrape(&base);
        let all = samples(&text);
        let at = |name: &str, labels: &[&str]| {
            value(&all, name, labels).unwrap_or_else(|| {
                panic!("/metrics has no {name} with {labels:?}:\n{text}")
            })
        };
        // Raft, per shard.
        for s in ["0", "1"] {
            let shard = format!("shard=\"{s}\"");
            let l = &[shard.as_str()][..];
            assert_eq!(at("chronicle_raft_is_leader", l), 1.0);
            assert_eq!(at("chronicle_raft_has_leader", l), 1.0);
            assert!(at("chronicle_raft_term", l) >= 1.0);
            let applied = at("chronicle_raft_applied_index", l);
            assert!(applied >= 10.0, "shard {s} applied only {applied}");
            assert!(at("chronicle_raft_commit_index", l) >= applied);
            assert!(at("chronicle_raft_last_log_index", l) >= applied);
            assert_eq!(at("chronicle_raft_apply_lag_entries", l), 0.0);
            assert!(at("chronicle_raft_snapshot_index", l) >= 1.0);
            assert!(at("chronicle_raft_log_bytes", l) > 0.0);
            at("chronicle_raft_log_entries", l);
            assert!(at("chronicle_raft_leader_changes_total", l) >= 1.0);
            // A group of one elects itself when created, without the
            // pre-vote task standing: the counter is there, at zero.
            at("chronicle_raft_elections_total", l);
            at("chronicle_cluster_forwarded_writes_total", l);
            assert!(at("chronicle_raft_snapshot_bytes_total", &[&shard, "kind=\"built\""]) > 0.0);
            // RocksDB, per shard and column family.
            // The snapshot's checkpoint flushed the memtables into SST files.
            let sst: f64 = all
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("chronicle_rocksdb_live_sst_bytes{") && k.contains(&shard)
                })
                .map(|(_, v)| v)
                .sum();
            assert!(sst > 0.0, "shard {s} has no SST bytes");
            at("chronicle_rocksdb_live_sst_bytes", &[&shard, "cf=\"chunks\""]);
            at("chronicle_rocksdb_total_sst_bytes", &[&shard, "cf=\"postings\""]);
            at("chronicle_rocksdb_memtable_bytes", &[&shard, "cf=\"head_log\""]);
            at("chronicle_rocksdb_pending_compaction_bytes", &[&shard, "cf=\"chunks\""]);
            at("chronicle_rocksdb_block_cache_bytes", l);
            assert_eq!(at("chronicle_rocksdb_write_stopped", l), 0.0);
            at("chronicle_rocksdb_write_delayed", l);
        }
        assert!(at("chronicle_raft_snapshot_seconds_count", &["kind=\"built\""]) >= 2.0);
        // Queries by language and outcome.
        for language in ["sql", "promql", "select"] {
            let l = format!("language=\"{language}\"");
            assert!(
                at("chronicle_query_duration_seconds_count", &[&l, "outcome=\"ok\""]) >= 1.0,
                "{language}"
            );
            assert!(at("chronicle_query_result_rows_total", &[&l]) >= 1.0, "{language}");
        }
        assert_eq!(
            at(
                "chronicle_query_duration_seconds_count",
                &["language=\"sql\"", "outcome=\"bad_request\""]
            ),
            1.0
        );
        assert!(at("chronicle_query_queue_wait_seconds_count", &[]) >= 4.0);
        at("chronicle_query_running", &[]);
        at("chronicle_query_waiting", &[]);
        // The bus (the local bus: the ingest and query actors' own traffic
        // does not cross it on HTTP, the change feed does).
        assert!(at("chronicle_bus_messages_total", &["class=\"events\"", "direction=\"sent\""]) >= 1.0);
        // Capacity planning (on by default).
        at("chronicle_capacity_forecast_seconds_count", &[]);
        at(
            "chronicle_capacity_changes_total",
            &["action=\"applied\"", "by=\"auto_tune\""],
        );
        // The process.
        assert!(at("process_resident_memory_bytes", &[]) > 1e6);
        assert!(at("process_open_fds", &[]) > 10.0);
        at("process_max_fds", &[]);
        at("process_cpu_seconds_total", &[]);

        // Prometheus's own parser and lint: no error, no naming problem.
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics found problems:\n{report}"
        );
    })
    .await;
    assert!(node.shutdown().await);
    checks.unwrap();
}

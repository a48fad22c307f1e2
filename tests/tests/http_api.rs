//! The HTTP API of an in-process node: /write (line protocol, JSON, gzip,
//! precision, limits, errors), /query, /health, /metrics.

use std::io::Write;

use chronicle::{Node, NodeConfig};
use serde_json::Value;

struct Answer {
    status: u16,
    written: Option<String>,
    body: String,
}

fn post(url: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url).content_type(content_type);
    if gzip {
        request = request.header("Content-Encoding", "gzip");
    }
    let mut resp = request.send(&body[..]).expect("request sent");
    Answer {
        status: resp.status().as_u16(),
        written: resp
            .headers()
            .get("x-chronicle-points-written")
            .map(|v| v.to_str().unwrap().to_string()),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn error_code(answer: &Answer) -> String {
    let v: Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|_| panic!("error body is JSON: {}", answer.body));
    v["error"]["code"].as_str().expect("error.code").to_string()
}

#[actix::test]
async fn write_query_health_metrics_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 64 * 1024,
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);

    let checks = tokio::task::spawn_blocking(move || {
        let write = format!("{base}/write");
        // Line protocol, seconds precision; every field is a point.
        let a = post(
            &format!("{write}?precision=s"),
            "text/plain",
            false,
            b"weather,city=oslo temp=-3.5,wind=7i 1767225600\n".to_vec(),
        );
        assert_eq!(a.status, 204, "{}", a.body);
        assert_eq!(a.written.as_deref(), Some("2"));

        // Gzip; the same line twice more at other times.
        let lines = b"weather,city=oslo temp=-4 1767225660\nweather,city=oslo temp=-5 1767225720\n";
        let a = post(
            &format!("{write}?precision=s"),
            "text/plain",
            true,
            gzip(lines),
        );
        assert_eq!(a.status, 204, "{}", a.body);
        assert_eq!(a.written.as_deref(), Some("2"));

        // JSON points.
        let a = post(
            &write,
            "application/json",
            false,
            br#"{"points":[{"metric":"weather_temp","labels":{"city":"bergen"},"value":4.5,"timestamp":1767225600000000000}]}"#.to_vec(),
        );
        assert_eq!(a.status, 204, "{}", a.body);

        // A bad line: 400, the line named, nothing written (all or nothing).
        let a = post(
            &write,
            "text/plain",
            false,
            b"weather,city=rome temp=20 1767225600000000000\nweather,city=rome temp= 1\n".to_vec(),
        );
        assert_eq!(a.status, 400);
        assert_eq!(error_code(&a), "invalid_line");
        assert!(a.body.contains("line 2"), "{}", a.body);

        // Unknown precision.
        let a = post(&format!("{write}?precision=minutes"), "text/plain", false, b"x v=1".to_vec());
        assert_eq!(a.status, 400);
        assert_eq!(error_code(&a), "bad_request");

        // Over the body limit after decompression: a small gzip of a big body.
        let big = vec![b'#'; 200 * 1024];
        let compressed = gzip(&big);
        assert!(compressed.len() < 64 * 1024);
        let a = post(&write, "text/plain", true, compressed);
        assert_eq!(a.status, 413);
        assert_eq!(error_code(&a), "body_too_large");

        // Query: Oslo's three temperatures, Rome absent.
        let q = post(
            &format!("{base}/query"),
            "application/json",
            false,
            br#"{"metric":"weather_temp","start":0,"end":"now","group_by":["city"],"aggregation":{"function":"count"}}"#.to_vec(),
        );
        assert_eq!(q.status, 200, "{}", q.body);
        let v: Value = serde_json::from_str(&q.body).unwrap();
        let counts: Vec<(String, f64)> = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["labels"]["city"].as_str().unwrap().to_string(),
                    s["points"][0][1].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![("bergen".to_string(), 1.0), ("oslo".to_string(), 3.0)]
        );

        // A query the client got wrong.
        let q = post(&format!("{base}/query"), "application/json", false, br#"{"metrc":"x"}"#.to_vec());
        assert_eq!(q.status, 400);
        assert_eq!(error_code(&q), "bad_request");

        // Health and metrics.
        for path in ["/health", "/health/ready"] {
            let mut h = ureq::get(format!("{base}{path}")).call().unwrap();
            let h: Value = serde_json::from_str(&h.body_mut().read_to_string().unwrap()).unwrap();
            assert_eq!(h["status"], "ready", "{path}: {h}");
            assert_eq!(h["not_ready"], serde_json::json!([]), "{path}: {h}");
        }
        let mut h = ureq::get(format!("{base}/health/live")).call().unwrap();
        let h: Value = serde_json::from_str(&h.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(h["status"], "live");
        let mut m = ureq::get(format!("{base}/metrics")).call().unwrap();
        let text = m.body_mut().read_to_string().unwrap();
        for name in [
            "chronicle_ingest_points_total",
            "chronicle_ingest_bytes_total",
            "chronicle_actor_restarts_total",
            "chronicle_bus_request_seconds",
            "chronicle_bus_connected 1",
        ] {
            assert!(text.contains(name), "/metrics lacks {name}");
        }
    })
    .await;
    assert!(
        node.shutdown().await,
        "every replica's RocksDB closed at shutdown"
    );
    checks.unwrap();
}

/// The SQL/CQL/OTLP front doors of a node: InfluxDB 2's write path with
/// escaping and every numeric field type, OTLP JSON and protobuf, `{"sql"}` and
/// `{"cql"}` on /query, the CQL routes, EXPLAIN for all three languages.
#[actix::test]
async fn query_languages_and_ingest_protocols_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);

    let checks = tokio::task::spawn_blocking(move || {
        // InfluxDB 2.x path: escaped spaces and commas in tags, integers,
        // unsigned integers, booleans and floats; org and bucket are accepted.
        let lp = "disk,host=a\\ b,path=/var\\,log used=10i,free=5u,ok=true,ratio=0.5 1767225600\n\
                  disk,host=a\\ b,path=/var\\,log used=12i 1767225660\n";
        let a = post(
            &format!("{base}/api/v2/write?org=o&bucket=b&precision=s"),
            "text/plain",
            true,
            gzip(lp.as_bytes()),
        );
        assert_eq!(a.status, 204, "{}", a.body);
        assert_eq!(a.written.as_deref(), Some("5"));

        // OTLP JSON: a gauge with a resource; the answer is an empty JSON response.
        let otlp = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
          "scopeMetrics":[{"metrics":[{"name":"queue.depth","unit":"{items}","gauge":{"dataPoints":[
          {"timeUnixNano":"1767225600000000000","asInt":"7"}]}}]}]}]}"#;
        let a = post(&format!("{base}/v1/metrics"), "application/json", false, otlp.into());
        assert_eq!((a.status, a.body.as_str()), (200, "{}"));
        let a = post(&format!("{base}/v1/metrics"), "text/csv", false, b"x".to_vec());
        assert_eq!(a.status, 415, "{}", a.body);

        let query = |body: serde_json::Value| -> (u16, Value) {
            let a = post(&format!("{base}/query"), "application/json", false, body.to_string().into_bytes());
            (a.status, serde_json::from_str(&a.body).unwrap_or(Value::Null))
        };
        // SQL over the line protocol points (the label with an escaped space).
        let (status, v) = query(serde_json::json!({
            "sql": "SELECT host, path, sum(value) AS used FROM disk_used WHERE host = 'a b' GROUP BY host, path"
        }));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["columns"], serde_json::json!(["host", "path", "used"]));
        assert_eq!(v["rows"], serde_json::json!([["a b", "/var,log", 22.0]]));
        // CQL over the OTLP point: the Prometheus name and the job label.
        let (status, v) = query(serde_json::json!({
            "cql": "SELECT time, job, value FROM queue_depth WHERE job = 'api'"
        }));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["rows"], serde_json::json!([[1767225600000000000i64, "api", 7.0]]));
        // Booleans are 1/0, unsigned integers numbers.
        let (_, v) = query(serde_json::json!({"sql": "SELECT value FROM disk_ok"}));
        assert_eq!(v["rows"], serde_json::json!([[1.0]]));
        // A syntax error names line and column; other fields are refused beside sql.
        let (status, v) = query(serde_json::json!({"sql": "SELECT value\nFROM disk_used WHERE host = = 'x'"}));
        assert_eq!(status, 400);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("line 2, column"), "{message}");
        let (status, _) = query(serde_json::json!({"sql": "SELECT value FROM disk_used", "metric": "x"}));
        assert_eq!(status, 400);
        // EXPLAIN in all three languages.
        for body in [
            serde_json::json!({"sql": "EXPLAIN SELECT mean(value) FROM disk_used GROUP BY time(1m)"}),
            serde_json::json!({"cql": "SELECT mean(value) FROM disk_used WINDOW 1m", "explain": true}),
            serde_json::json!({"promql": "sum(rate(disk_used[5m]))", "explain": true}),
        ] {
            let (status, v) = query(body.clone());
            assert_eq!(status, 200, "{v}");
            let plan = v["explain"].as_str().unwrap_or_else(|| panic!("{body}: {v}"));
            assert!(plan.contains("disk_used"), "{plan}");
        }

        // The Go original's CQL routes.
        let cql = |path: &str, q: &str| -> (u16, Value) {
            let a = post(
                &format!("{base}/api/v1/cql{path}"),
                "application/json",
                false,
                serde_json::json!({"query": q}).to_string().into_bytes(),
            );
            (a.status, serde_json::from_str(&a.body).unwrap_or(Value::Null))
        };
        let (status, v) = cql("", "SELECT count(*) FROM disk_used GROUP BY host");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["rows"], serde_json::json!([["a b", 2.0]]));
        let (_, v) = cql("/validate", "SELECT value FROM disk_used LAST soon");
        assert_eq!(v["valid"], false);
        assert_eq!((v["error"]["line"].as_u64(), v["error"]["column"].as_u64()), (Some(1), Some(34)));
        let (_, v) = cql("/validate", "SELECT value FROM disk_used LAST 1h");
        assert_eq!(v, serde_json::json!({"valid": true}));
        let (status, v) = cql("/explain", "SELECT max(value) FROM disk_used WHERE host != 'x' WINDOW 5m");
        assert_eq!(status, 200, "{v}");
        assert!(v["explain"].as_str().unwrap().contains("Aggregate max(value)"));
    })
    .await;
    assert!(
        node.shutdown().await,
        "every replica's RocksDB closed at shutdown"
    );
    checks.unwrap();
}

/// The change feed's resumable read over HTTP, for services outside the
/// node: every committed point comes back once, in pages, as the feed's
/// events (with their points); bad parameters are 400s and the node stays up.
#[actix::test]
async fn the_feeds_committed_batches_are_read_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    tokio::task::spawn_blocking(move || {
        // Three writes of 1,000 points each, 20 series.
        for w in 0..3 {
            let lines: String = (0..1000)
                .map(|i| {
                    format!(
                        "feed,host=h{} v={i} {}\n",
                        i % 20,
                        (w * 1000 + i + 1) * 1_000_000_000i64
                    )
                })
                .collect();
            let a = post(
                &format!("{base}/write"),
                "text/plain",
                false,
                lines.into_bytes(),
            );
            assert_eq!(a.status, 204, "{}", a.body);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let get = |q: &str| {
            let mut r = agent
                .get(format!("{base}/api/v1/events/batches{q}"))
                .call()
                .unwrap();
            let status = r.status().as_u16();
            (status, r.body_mut().read_to_string().unwrap())
        };
        let (mut after, mut seen) = (0u64, std::collections::BTreeSet::new());
        for _ in 0..100 {
            let (status, body) = get(&format!("?shard=0&after={after}"));
            assert_eq!(status, 200, "{body}");
            let page: Value = serde_json::from_str(&body).unwrap();
            let events = page["events"].as_array().unwrap();
            for e in events.iter().filter(|e| e["metric"] == "feed_v") {
                let series = e["series"].as_array().unwrap();
                for p in e["points"].as_array().expect("points") {
                    let host = series[p[0].as_u64().unwrap() as usize]["host"].to_string();
                    assert!(
                        seen.insert((p[1].as_i64().unwrap(), host)),
                        "a point twice: {p}"
                    );
                }
            }
            let next = page["next"].as_u64().unwrap();
            if events.is_empty() && next == after {
                break;
            }
            after = next;
        }
        assert_eq!(seen.len(), 3000, "every written point once");
        for bad in [
            "?shard=99&after=0",
            "?shard=0",
            "?shard=x&after=0",
            "?shard=0&after=0&x=1",
        ] {
            let (status, body) = get(bad);
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(body.contains("\"error\""), "{bad}: {body}");
        }
        let mut r = agent.get(format!("{base}/health/ready")).call().unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{}",
            r.body_mut().read_to_string().unwrap()
        );
    })
    .await
    .unwrap();
    node.shutdown().await;
}

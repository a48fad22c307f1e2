//! Capacity planning on a running node: the collector's `chronicle_self_*`
//! series are ordinary series (PromQL and SQL read them), and
//! `/api/capacity/forecasts` forecasts a growing disk to run out when its
//! history says it will.

use std::time::Duration;

use chronicle_tests::{http_query, wait_until, NodeProcess};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

fn get(http: &str, path: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut r = agent.get(format!("{http}{path}")).call().unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_vec().unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn promql(http: &str, query: &str) -> Vec<Value> {
    let path = format!(
        "/api/v1/query?query={}",
        query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let (status, body) = get(http, &path);
    assert_eq!(status, 200, "{query}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn value(v: &Value) -> f64 {
    v["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn the_node_records_its_usage_and_forecasts_when_the_disk_fills() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[features.capacity]\nsample_every = \"1s\"\nstep = \"10m\"\nhistory = \"3d\"\nhorizon = \"1d\"\n",
    )
    .unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &["--config", config.to_str().unwrap()],
    );
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready", || {
        get(http, "/health/ready").0 == 200
    });

    // The samples are ordinary series.
    wait_until(Duration::from_secs(20), "the usage series", || {
        promql(http, "chronicle_self_disk_bytes").len() == 4
            && !promql(http, "chronicle_self_memory_rss_bytes").is_empty()
            && !promql(http, "chronicle_self_disk_free_bytes").is_empty()
    });
    let rss = value(&promql(http, "chronicle_self_memory_rss_bytes")[0]);
    assert!(rss > 1e6, "{rss}");
    let data = promql(http, "chronicle_self_disk_bytes{kind=\"data\"}");
    assert!(value(&data[0]) > 0.0, "{data:?}");
    assert_eq!(data[0]["metric"]["node"], "1");
    let sql = http_query(
        http,
        r#"{"sql": "SELECT max(value) FROM chronicle_self_open_files WHERE node = '1'"}"#,
    );
    assert!(sql["rows"][0][0].as_f64().is_some_and(|v| v > 0.0), "{sql}");

    // Too little history yet: said, not guessed.
    let (status, body) = get(http, "/api/capacity/forecasts?resource=disk");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["forecasts"][0]["status"], "insufficient_history",
        "{body}"
    );

    // Three days of a disk growing so that it fills the free space in
    // about twelve hours, with a daily swing, every ten minutes.
    let free = value(&promql(http, "chronicle_self_disk_free_bytes")[0]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let steps = 3 * 24 * 6;
    let per_step = free / 72.0;
    let lines: String = (0..steps)
        .map(|i| {
            // The last one a second ago: the newest step reads it.
            let t = now_ms - 1000 - (steps - 1 - i) * 600_000;
            let wave = (2.0 * std::f64::consts::PI * i as f64 / 144.0).sin() * per_step * 2.0;
            let v = 1e9 + per_step * i as f64 + wave;
            format!(
                "chronicle_self_disk_bytes,node=1,kind=history value={v} {}\n",
                t * 1_000_000
            )
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = agent
        .post(format!("{http}/write"))
        .send(lines.as_bytes())
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 204);

    let (status, body) = get(http, "/api/capacity/forecasts?resource=disk&detail=true");
    assert_eq!(status, 200, "{body}");
    let disk = &body["forecasts"][0];
    assert_eq!(disk["status"], "ok", "{disk}");
    assert!(disk["points"].as_u64().unwrap() >= 400, "{disk}");
    let model = disk["forecast"]["model"].as_str().unwrap();
    assert!(model.starts_with("ETS(A,A"), "a trend: {model}");
    let exhausted = disk["exhausted_ms"]
        .as_i64()
        .expect("it fills within a day");
    let hours = (exhausted - now_ms) as f64 / 3.6e6;
    assert!(
        (8.0..16.0).contains(&hours),
        "fills in {hours:.1} h: {disk}"
    );
    let earliest = disk["earliest_exhausted_ms"].as_i64().unwrap();
    assert!(earliest <= exhausted);
    let path = disk["forecast"]["path"].as_array().unwrap();
    assert_eq!(path.len(), 144, "a day of ten-minute steps");
    for p in path {
        let (mean, lower, upper) = (
            p[1].as_f64().unwrap(),
            p[2].as_f64().unwrap(),
            p[3].as_f64().unwrap(),
        );
        assert!(lower <= mean && mean <= upper, "{p}");
    }
    // Every resource at once.
    let (status, all) = get(http, "/api/capacity/forecasts");
    assert_eq!(status, 200, "{all}");
    let names: Vec<&str> = all["forecasts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["resource"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "memory", "series", "ingest_rate"]);

    // Bad requests: 400, and the node stays ready.
    for path in [
        "/api/capacity/forecasts?resource=cpu",
        "/api/capacity/forecasts?horizon=soon",
        "/api/capacity/forecasts?horizon=1000d",
        "/api/capacity/forecasts?horizon=0s",
        "/api/capacity/forecasts?bogus=1",
        "/api/capacity/forecasts?detail=maybe",
    ] {
        let (status, body) = get(http, path);
        assert_eq!(status, 400, "{path}: {body}");
    }
    assert_eq!(get(http, "/health/ready").0, 200);
}

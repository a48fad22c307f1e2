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

fn post(http: &str, path: &str, body: &str) -> (u16, Value) {
    send("POST", http, path, body)
}

fn put(http: &str, path: &str, body: &str) -> (u16, Value) {
    send("PUT", http, path, body)
}

fn send(method: &str, http: &str, path: &str, body: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("{http}{path}");
    let request = match method {
        "PUT" => agent.put(&url),
        _ => agent.post(&url),
    };
    // Line protocol to /write, JSON elsewhere.
    let content_type = if path == "/write" {
        "text/plain"
    } else {
        "application/json"
    };
    let mut r = request.content_type(content_type).send(body).unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_vec().unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The run-time setting `name` as `/api/config` shows it.
fn setting(http: &str, name: &str) -> Value {
    let (status, body) = get(http, "/api/config");
    assert_eq!(status, 200, "{body}");
    body["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no setting {name}: {body}"))
}

/// Writes three days of a disk growing so that it fills the node's free
/// space in about twelve hours, with a daily swing, every ten minutes.
fn write_filling_disk(http: &str) -> i64 {
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
    now_ms
}

fn start(dir: &std::path::Path, capacity: &str) -> NodeProcess {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!("[retention]\nraw = \"30d\"\n\n[features.capacity]\nsample_every = \"1s\"\nstep = \"10m\"\nhistory = \"3d\"\nhorizon = \"1d\"\n{capacity}"),
    )
    .unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.join("data"),
        None,
        &["--config", config.to_str().unwrap()],
    );
    let http = node.http.clone();
    wait_until(Duration::from_secs(30), "node ready", || {
        get(&http, "/health/ready").0 == 200
    });
    wait_until(Duration::from_secs(20), "the usage series", || {
        !promql(&http, "chronicle_self_disk_free_bytes").is_empty()
    });
    node
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
    let node = start(dir.path(), "");
    let http = node.http.as_str();

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

    let now_ms = write_filling_disk(http);

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

    // The disk fills within the horizon: a shorter raw retention, with its
    // exact change and its effect at the horizon.
    let (status, body) = get(http, "/api/capacity/recommendations");
    assert_eq!(status, 200, "{body}");
    let recommendations = body["recommendations"].as_array().unwrap();
    let retention = recommendations
        .iter()
        .find(|r| r["type"] == "retention")
        .unwrap_or_else(|| panic!("a retention recommendation: {body}"));
    assert_eq!(retention["priority"], "high", "{retention}");
    assert_eq!(retention["change"]["setting"], "retention.raw");
    assert_eq!(retention["change"]["from"], "30d");
    assert_eq!(retention["change"]["applicable"], true);
    let to = retention["change"]["to"].as_str().unwrap().to_string();
    let effect = &retention["effect"];
    assert!(
        effect["at_horizon_after"].as_f64().unwrap()
            < effect["at_horizon_before"].as_f64().unwrap(),
        "{retention}"
    );
    let id = retention["id"].as_str().unwrap();

    // Applied through the config API, recorded, and undone once.
    let (status, applied) = post(http, "/api/capacity/apply", &format!(r#"{{"id":"{id}"}}"#));
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["change"]["value"], to.as_str());
    assert_eq!(applied["change"]["previous"], Value::Null);
    let now = setting(http, "retention.raw");
    assert_eq!(
        (now["value"].as_str(), now["set"].as_bool()),
        (Some(to.as_str()), Some(true)),
        "{now}"
    );
    assert!(
        now["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("capacity {id}")),
        "{now}"
    );
    // What it was computed from changed: the same id is not applied twice.
    let (status, again) = post(http, "/api/capacity/apply", &format!(r#"{{"id":"{id}"}}"#));
    assert!([404, 409].contains(&status), "{status} {again}");
    let record = applied["record"].as_str().unwrap();
    let (status, undone) = post(
        http,
        "/api/capacity/rollback",
        &format!(r#"{{"id":"{record}"}}"#),
    );
    assert_eq!(status, 200, "{undone}");
    let now = setting(http, "retention.raw");
    assert_eq!(
        (now["value"].as_str(), now["set"].as_bool()),
        (Some("30d"), Some(false)),
        "{now}"
    );
    let (status, twice) = post(
        http,
        "/api/capacity/rollback",
        &format!(r#"{{"id":"{record}"}}"#),
    );
    assert_eq!(status, 409, "{twice}");
    let (status, list) = get(http, "/api/capacity/applied");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["applied"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["applied"][0]["auto"], false);
    assert!(list["applied"][0]["rolled_back"].is_object(), "{list}");
    let (_, history) = get(http, "/api/config/history");
    assert_eq!(
        history["changes"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );

    // The operator's CLI: a chart of the disk, the recommendations, the
    // applied changes.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("capacity")
            .args(args)
            .args(["--http", http])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let chart = cli(&[
        "forecast",
        "--resource",
        "disk",
        "--width",
        "60",
        "--height",
        "10",
    ]);
    assert!(chart.contains("runs out at"), "{chart}");
    assert!(chart.contains("model ETS(A,A"), "{chart}");
    let rows: Vec<&str> = chart
        .lines()
        .filter(|l| l.contains(" |") && !l.contains("last sample"))
        .collect();
    assert_eq!(rows.len(), 10, "{chart}");
    for mark in ['*', 'o', '='] {
        assert!(rows.iter().any(|r| r.contains(mark)), "{mark}: {chart}");
    }
    let table = cli(&["recommendations"]);
    assert!(table.contains("retention.raw: 30d -> "), "{table}");
    let json: Value = serde_json::from_str(&cli(&["applied", "--json"])).unwrap();
    assert_eq!(json["applied"][0]["record"], record);
    assert!(cli(&["applied"]).contains("rolled back"));

    // Hostile or wrong requests: 4xx, and the node stays ready.
    for (path, body, want) in [
        ("/api/capacity/apply", r#"{"id":"nope"}"#, 404),
        ("/api/capacity/apply", r#"{"id":""}"#, 400),
        ("/api/capacity/apply", "{", 400),
        ("/api/capacity/apply", r#"{"id":"x","extra":1}"#, 400),
        ("/api/capacity/rollback", r#"{"id":"applied/none"}"#, 404),
        (
            "/api/capacity/rollback",
            r#"{"id":"../config/setting/retention.raw"}"#,
            400,
        ),
    ] {
        let (status, answer) = post(http, path, body);
        assert_eq!(status, want, "{path} {body}: {answer}");
    }
    let long = format!(r#"{{"id":"{}"}}"#, "a".repeat(100_000));
    let (status, _) = post(http, "/api/capacity/apply", &long);
    assert!([400, 413].contains(&status), "{status}");
    assert_eq!(get(http, "/api/capacity/applied?limit=0").0, 400);
    assert_eq!(get(http, "/health/ready").0, 200);
}

#[test]
fn auto_tuning_shortens_retention_within_its_bounds_and_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        dir.path(),
        "auto_tune = true\ntune_every = \"10s\"\nmin_raw_retention = \"25d\"\n",
    );
    let http = node.http.as_str();
    write_filling_disk(http);
    // The next round sees the disk fill within a day: 30 d scaled down,
    // clamped at the 25 d floor (a cut small enough to be low risk).
    wait_until(Duration::from_secs(60), "auto-tuning to act", || {
        setting(http, "retention.raw")["set"] == true
    });
    let now = setting(http, "retention.raw");
    assert_eq!(now["value"], "25d", "{now}");
    assert_eq!(now["by"], "capacity:auto-tune", "{now}");
    // Two more rounds: at the floor only a node would help, which is not
    // a setting; nothing else is applied.
    std::thread::sleep(Duration::from_secs(25));
    assert_eq!(setting(http, "retention.raw")["value"], "25d");
    let (_, list) = get(http, "/api/capacity/applied");
    let applied = list["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 1, "{list}");
    assert_eq!(applied[0]["auto"], true);
    // Auto-tuning computes too: busy (503) meanwhile, never queued.
    let mut body = Value::Null;
    wait_until(Duration::from_secs(30), "recommendations", || {
        let (status, b) = get(http, "/api/capacity/recommendations");
        assert!([200, 503].contains(&status), "{status} {b}");
        body = b;
        status == 200
    });
    let kinds: Vec<&str> = body["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    // One node, one shard, three replicas asked for: every node added
    // would hold all of it, so the advice is a cluster with more shards.
    assert!(kinds.contains(&"shard_count"), "{body}");
    assert!(!kinds.contains(&"add_node"), "{body}");
}

/// Writes `samples` one-second samples to each of `series` series, ending
/// `end_s` seconds ago, `per_request` samples a series per request.
fn write_series(http: &str, series: usize, samples: usize, per_request: usize, end_s: i64) {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let first = now_s - end_s - samples as i64;
    for start in (0..samples).step_by(per_request) {
        let lines: String = (0..series)
            .flat_map(|s| {
                (start..(start + per_request).min(samples)).map(move |i| {
                    // A noisy gauge (a hash of series and time, two
                    // decimals): chunk size shows in its bytes a sample.
                    let mut h = ((i as u64) << 20 | s as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
                    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    let v = ((h ^ (h >> 31)) % 10_000) as f64 / 100.0;
                    format!(
                        "load,host=h{s} value={v} {}\n",
                        (first + i as i64) * 1_000_000_000
                    )
                })
            })
            .collect();
        let (status, body) = post(http, "/write", &lines);
        assert_eq!(status, 204, "{body}");
    }
}

/// What the last recommendations measured of the node's chunks.
fn measured(http: &str) -> Value {
    let (status, body) = get(http, "/api/capacity/recommendations");
    assert_eq!(status, 200, "{body}");
    body["measured"].clone()
}

#[test]
fn storage_settings_change_at_run_time_and_the_recommendations_measure_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "");
    let http = node.http.as_str();
    // 20 series of 3000 samples: heads pass 2048 and are cut into chunks.
    // The samples lie inside one of the shard's 2-hour chunk windows (the
    // last whole one): a window boundary among them would cut every head
    // there, whatever the time of day the test runs at.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let window_start = (now_s / 7200 - 1) * 7200;
    let end_s = now_s - (window_start + 60 + 3000);
    write_series(http, 20, 3000, 500, end_s);
    let m = measured(http);
    assert!(m["chunks"].as_u64().unwrap() >= 20, "{m}");
    assert_eq!(m["compression_level"], 9, "{m}");
    assert_eq!(m["max_chunk_samples"], 2048, "{m}");
    let levels: Vec<i64> = m["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["level"].as_i64().unwrap())
        .collect();
    assert_eq!(levels, [3, 9, 19], "{m}");
    for t in m["levels"].as_array().unwrap() {
        let b = t["bytes_per_sample"].as_f64().unwrap();
        assert!(b > 0.5 && b < 16.0, "{m}");
    }
    assert_eq!(m["sizes"].as_array().unwrap().len(), 4, "{m}");
    let heads_before = m["head_samples"].as_u64().unwrap();
    assert!(heads_before >= 20 * 500, "{m}");

    // Smaller chunks and a stronger level, through the config API.
    for (name, value) in [
        ("storage.max_chunk_samples", "128"),
        ("storage.compression_level", "19"),
    ] {
        let (status, body) = put(
            http,
            &format!("/api/config/{name}"),
            &format!(r#"{{"value": "{value}", "reason": "test"}}"#),
        );
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(setting(http, name)["value"], value);
    }
    // Heads are cut at 128 from the next sample on: each holds at most
    // 128 plus the samples of one request.
    write_series(http, 20, 1000, 100, 0);
    let m = measured(http);
    assert_eq!(m["max_chunk_samples"], 128, "{m}");
    assert_eq!(m["compression_level"], 19, "{m}");
    let heads_after = m["head_samples"].as_u64().unwrap();
    assert!(
        heads_after <= 20 * (128 + 100) && heads_after < heads_before,
        "{heads_before} -> {heads_after}: {m}"
    );
    assert_eq!(m["sizes"].as_array().unwrap().len(), 0, "{m}");
    // Nothing lost on the way: every sample reads back.
    let count = http_query(http, r#"{"sql": "SELECT count(value) FROM load"}"#);
    assert_eq!(count["rows"][0][0].as_f64(), Some(20.0 * 4000.0), "{count}");

    // Out of bounds: 400, and the settings and the node are unchanged.
    for (name, bad) in [
        ("storage.max_chunk_samples", "10"),
        ("storage.max_chunk_samples", "100000"),
        ("storage.max_chunk_samples", "lots"),
        ("storage.compression_level", "0"),
        ("storage.compression_level", "22"),
        ("storage.compression_level", "-1"),
    ] {
        let (status, body) = put(
            http,
            &format!("/api/config/{name}"),
            &format!(r#"{{"value": "{bad}"}}"#),
        );
        assert_eq!(status, 400, "{name}={bad}: {body}");
    }
    assert_eq!(setting(http, "storage.max_chunk_samples")["value"], "128");
    assert_eq!(get(http, "/health/ready").0, 200);
}

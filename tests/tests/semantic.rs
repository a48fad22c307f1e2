//! Semantic search end to end: a node with authentication over NATS
//! indexes `load_*` as series with planted motifs are written through
//! `/write`; text queries find each planted motif in their top 10; a
//! series range finds the other occurrences of its motif and never its own
//! windows; saved patterns live in the replicated state; the subject
//! answers with a reader's token and refuses without one; hostile requests
//! get a 4xx and the node stays ready; the CLI draws a PNG; a restarted
//! node rebuilds its catalog from its data. A second test splits four
//! shards over two nodes: a search from either finds what the other holds.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chronicle_bus::{Bus, Message, NatsBus, NatsOptions};
use chronicle_semantic::synth::{planted, Planted, MOTIFS};
use chronicle_tests::{wait_until, NatsServer, NodeProcess};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-semantic-tests-0123";
const WINDOW: usize = 64;
const SERIES: usize = 6;
const LEN: usize = 2048;
const MIN_MS: i64 = 60_000;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn call(http: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let url = format!("{http}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent().get(&url)
            } else {
                agent().delete(&url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call().unwrap()
        }
        _ => {
            // `/write` takes line protocol; the API, JSON.
            let kind = if path == "/write" {
                "text/plain"
            } else {
                "application/json"
            };
            let mut r = agent().post(&url).content_type(kind);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body.as_bytes()).unwrap()
        }
    };
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The data's first sample (ms): recent, so the default lookback reads it.
fn origin_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now / MIN_MS - LEN as i64 - 10) * MIN_MS
}

/// Line protocol for `SERIES` series with planted motifs, one sample a
/// minute from `origin`, under `metric`.
fn lines(data: &[Vec<f64>], metric: &str, origin: i64) -> String {
    let mut out = String::new();
    for (s, values) in data.iter().enumerate() {
        for (i, v) in values.iter().enumerate() {
            let t = (origin + i as i64 * MIN_MS) * 1_000_000;
            out.push_str(&format!("{metric},host=h{s} value={v} {t}\n"));
        }
    }
    out
}

fn windows(http: &str, token: Option<&str>) -> u64 {
    call(http, "GET", "/api/semantic/status", token, "").1["windows"]
        .as_u64()
        .unwrap_or(0)
}

fn rebuilding(http: &str, token: Option<&str>) -> bool {
    let (_, s) = call(http, "GET", "/api/semantic/status", token, "");
    s["shards"]
        .as_array()
        .is_none_or(|a| a.iter().any(|s| s["rebuilding"] == true))
}

/// Whether a match (ms range) covers at least half of a planted motif.
fn covers(m: &Value, p: &Planted, origin: i64) -> bool {
    let host = format!("h{}", p.series);
    let (start, end) = (
        origin + p.start as i64 * MIN_MS,
        origin + (p.start + WINDOW - 1) as i64 * MIN_MS,
    );
    let (ms, me) = (m["start"].as_i64().unwrap(), m["end"].as_i64().unwrap());
    m["labels"]["host"] == host.as_str()
        && ms.max(start) <= me.min(end)
        && me.min(end) - ms.max(start) >= (WINDOW as i64 / 2) * MIN_MS
}

#[test]
fn motifs_are_found_by_words_and_by_example_and_hostile_requests_are_refused() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-enough-bytes").unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[features.semantic]\nwindow = 64\nstride = 16\n[[features.semantic.watch]]\nmetric = \"load_*\"\n",
    )
    .unwrap();
    let args = [
        "--auth",
        "--bootstrap-token-file",
        boot.to_str().unwrap(),
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let data_dir = dir.path().join("data");
    let mut node = NodeProcess::start(BIN, &data_dir, Some(&nats.url()), &args);
    let http = node.http.clone();
    wait_until(Duration::from_secs(30), "node ready", || {
        call(&http, "GET", "/health/ready", None, "").0 == 200
    });
    let token =
        |name: &str, role: &str| chronicle_tests::create_token(BIN, &http, BOOTSTRAP, name, role).0;
    let (writer, reader, admin) = (
        token("app", "writer"),
        token("dash", "reader"),
        token("ops", "admin"),
    );
    let (w, r, a) = (
        Some(writer.as_str()),
        Some(reader.as_str()),
        Some(admin.as_str()),
    );

    // Six series of 2,048 samples with six motifs planted in each, and the
    // same data under a metric nobody watches.
    let origin = origin_ms();
    let (data, truth) = planted(11, SERIES, LEN, WINDOW, 6);
    let mut body = lines(&data, "load_avg", origin);
    body.push_str(&lines(&data[..1], "other_metric", origin));
    let (status, answer) = call(&http, "POST", "/write", w, &body);
    assert_eq!(status, 204, "{answer}");
    // (2048 − 64) / 16 + 1 windows a series.
    let expected = (SERIES * ((LEN - WINDOW) / 16 + 1)) as u64;
    wait_until(Duration::from_secs(60), "every window indexed", || {
        windows(&http, r) == expected
    });

    // Each motif's words find one of its planted occurrences in the top 10.
    for motif in MOTIFS {
        let (status, answer) = call(
            &http,
            "POST",
            "/api/semantic/text",
            r,
            &json!({"text": motif, "k": 10}).to_string(),
        );
        assert_eq!(status, 200, "{motif}: {answer}");
        let matches = answer["matches"].as_array().unwrap();
        assert_eq!(matches.len(), 10, "{motif}");
        assert!(
            truth
                .iter()
                .filter(|p| p.motif == motif)
                .any(|p| matches.iter().any(|m| covers(m, p, origin))),
            "{motif}: no planted occurrence in the top 10: {answer}"
        );
        assert!(matches.iter().all(|m| m["metric"] == "load_avg"));
        assert_eq!(answer["shards"]["missing"], json!([]));
    }

    // By example: a planted occurrence's own range finds the others of
    // its motif, ranked by similarity in [0, 1], never its own windows.
    let p = &truth[0];
    let (q_start, q_end) = (
        origin + p.start as i64 * MIN_MS,
        origin + (p.start + WINDOW) as i64 * MIN_MS,
    );
    let req = json!({
        "pattern": {"series": {"metric": "load_avg", "labels": {"host": format!("h{}", p.series)},
                               "start": q_start, "end": q_end}},
        "k": 5, "compare": true,
    });
    let (status, answer) = call(&http, "POST", "/api/semantic/search", r, &req.to_string());
    assert_eq!(status, 200, "{answer}");
    let matches = answer["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 5);
    let sims: Vec<f64> = matches
        .iter()
        .map(|m| m["similarity"].as_f64().unwrap())
        .collect();
    assert!(sims.windows(2).all(|s| s[0] >= s[1]), "{sims:?}");
    // Planted copies of other motifs hold the same shape too (half of
    // "spike twice" is a spike then a plateau): all match closely.
    assert!(sims.iter().all(|s| (0.9..=1.0).contains(s)), "{sims:?}");
    let own = format!("h{}", p.series);
    for m in matches {
        let trivial = m["labels"]["host"] == own.as_str()
            && m["start"].as_i64().unwrap() < q_end
            && m["end"].as_i64().unwrap() >= q_start;
        assert!(!trivial, "a trivial match: {m}");
        assert_eq!(m["comparison"]["query"].as_array().unwrap().len(), WINDOW);
        assert_eq!(m["comparison"]["match"].as_array().unwrap().len(), WINDOW);
        assert!(!m["explanation"].as_array().unwrap().is_empty());
    }
    let found: Vec<(String, i64)> = matches
        .iter()
        .map(|m| {
            (
                m["labels"]["host"].as_str().unwrap().to_string(),
                (m["start"].as_i64().unwrap() - origin) / MIN_MS,
            )
        })
        .collect();
    let same_motif = truth
        .iter()
        .filter(|o| o.motif == p.motif && o != &p)
        .filter(|o| matches.iter().any(|m| covers(m, o, origin)))
        .count();
    assert!(
        same_motif >= 2,
        "{same_motif} of the top 5 are {:?}: found {found:?}, planted {truth:?}",
        p.motif
    );

    // Filters: one host only, and a time range before the data (nothing).
    let one_host = json!({"text": "oscillation", "labels": {"host": "h2"}, "k": 5});
    let (_, answer) = call(
        &http,
        "POST",
        "/api/semantic/text",
        r,
        &one_host.to_string(),
    );
    assert!(answer["matches"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["labels"]["host"] == "h2"));
    let before = json!({"text": "spike", "end": origin - 3_600_000});
    let (status, answer) = call(&http, "POST", "/api/semantic/text", r, &before.to_string());
    assert_eq!((status, answer["matches"].clone()), (200, json!([])));

    // Saved patterns: a writer saves, a reader searches by name, only a
    // writer deletes.
    let template: Vec<f64> = (0..32)
        .map(|i| if i == 16 { 9.0 } else { (i % 3) as f64 * 0.1 })
        .collect();
    let saved = json!({"name": "one-spike", "description": "a lone spike", "values": template});
    assert_eq!(
        call(
            &http,
            "POST",
            "/api/semantic/patterns",
            r,
            &saved.to_string()
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &http,
            "POST",
            "/api/semantic/patterns",
            w,
            &saved.to_string()
        )
        .0,
        200
    );
    let (_, listed) = call(&http, "GET", "/api/semantic/patterns", r, "");
    assert_eq!(listed["patterns"][0]["name"], "one-spike");
    let by_name = json!({"pattern": {"saved": "one-spike"}, "k": 3});
    let (status, answer) = call(
        &http,
        "POST",
        "/api/semantic/search",
        r,
        &by_name.to_string(),
    );
    assert_eq!(
        (status, answer["matches"].as_array().unwrap().len()),
        (200, 3)
    );
    let missing = json!({"pattern": {"saved": "nope"}});
    assert_eq!(
        call(
            &http,
            "POST",
            "/api/semantic/search",
            r,
            &missing.to_string()
        )
        .0,
        404
    );
    assert_eq!(
        call(&http, "DELETE", "/api/semantic/patterns/one-spike", r, "").0,
        403
    );
    assert_eq!(
        call(&http, "DELETE", "/api/semantic/patterns/one-spike", w, "").0,
        204
    );
    assert_eq!(
        call(&http, "DELETE", "/api/semantic/patterns/one-spike", w, "").0,
        404
    );

    // The subject: a reader's token answers; none, or garbage, is refused.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        runtime
            .block_on(NatsBus::connect(NatsOptions {
                urls: vec![nats.url()],
                ..Default::default()
            }))
            .unwrap(),
    );
    let ask = |body: &str, token: Option<&str>| -> Value {
        let mut m = Message::new("chronicle.semantic.search", body.to_string());
        if let Some(t) = token {
            m = m.with_header("Authorization", format!("Bearer {t}"));
        }
        let reply = runtime
            .block_on(bus.request(m, Duration::from_secs(20)))
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    };
    let text = json!({"text": "spike twice", "k": 3}).to_string();
    let answer = ask(&text, r);
    assert_eq!(answer["matches"].as_array().unwrap().len(), 3, "{answer}");
    assert_eq!(ask(&text, None)["error"]["code"], 401);
    assert_eq!(ask("{not json", r)["error"]["code"], 400);
    assert_eq!(
        ask(&json!({"text": "wobble"}).to_string(), r)["error"]["code"],
        400
    );

    // Hostile or broken requests: a 4xx each, with a message.
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(300 << 10));
    let values_1e5: Vec<f64> = (0..100_000).map(|i| i as f64).collect();
    for (path, body, want) in [
        ("/api/semantic/search", "{".to_string(), 400),
        ("/api/semantic/search", json!({"text": "spike"}).to_string(), 400),
        ("/api/semantic/text", json!({"pattern": {"values": [1, 2]}}).to_string(), 400),
        ("/api/semantic/text", json!({"text": "spike wobble"}).to_string(), 400),
        ("/api/semantic/text", json!({"text": "spike", "k": 100_000}).to_string(), 400),
        ("/api/semantic/text", json!({"text": "spike", "ef_search": 1_000_000}).to_string(), 400),
        ("/api/semantic/text", json!({"text": "spike", "start": i64::MAX}).to_string(), 400),
        ("/api/semantic/text", json!({"text": "spike", "metric": "a".repeat(1000)}).to_string(), 400),
        ("/api/semantic/search", json!({"pattern": {"values": vec![5.0; 64]}}).to_string(), 400),
        ("/api/semantic/search", json!({"pattern": {"values": values_1e5}}).to_string(), 413),
        ("/api/semantic/text", big, 413),
        (
            "/api/semantic/search",
            json!({"pattern": {"series": {"metric": "load_avg", "labels": {"host": "nobody"}, "start": 0, "end": 1}}}).to_string(),
            404,
        ),
    ] {
        let (status, answer) = call(&http, "POST", path, r, &body);
        assert_eq!(status, want, "{path} {}: {answer}", &body[..body.len().min(80)]);
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (_, answer) = call(
        &http,
        "POST",
        "/api/semantic/text",
        r,
        &json!({"text": "spike wobble"}).to_string(),
    );
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("level shift"));
    assert_eq!(
        call(&http, "POST", "/api/semantic/text", None, &text).0,
        401
    );
    assert_eq!(call(&http, "POST", "/api/semantic/reindex", r, "").0, 403);

    // Reindexing (an admin's) rebuilds the same windows from the data.
    let (status, answer) = call(&http, "POST", "/api/semantic/reindex", a, "");
    assert_eq!((status, answer["rebuilding"].clone()), (202, json!([0])));
    wait_until(Duration::from_secs(60), "the rebuild", || {
        !rebuilding(&http, r) && windows(&http, r) == expected
    });

    // The CLI: a table, and a PNG of the matches over the query.
    let png = dir.path().join("spikes.png");
    let out = std::process::Command::new(BIN)
        .args([
            "search",
            "text",
            "sudden spike followed by gradual recovery",
            "-k",
            "3",
            "--http",
            &http,
            "--plot",
        ])
        .arg(&png)
        .env("CHRONICLE_TOKEN", &reader)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SIMILARITY") && stdout.contains("load_avg{host=h"),
        "{stdout}"
    );
    let image = std::fs::read(&png).unwrap();
    assert!(image.starts_with(b"\x89PNG") && image.len() > 2000);
    let values: Vec<String> = template.iter().map(|v| v.to_string()).collect();
    let out = std::process::Command::new(BIN)
        .args([
            "search",
            "similar",
            "--values",
            &values.join(","),
            "--json",
            "--http",
            &http,
        ])
        .env("CHRONICLE_TOKEN", &reader)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["matches"].as_array().unwrap().len(), 10);
    let out = std::process::Command::new(BIN)
        .args(["search", "text", "spike wobble", "--http", &http])
        .env("CHRONICLE_TOKEN", &reader)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"wobble\""));

    assert_eq!(call(&http, "GET", "/health/ready", None, "").0, 200);

    // Restarted, the node rebuilds its catalog from the data it holds.
    assert!(node.stop().success());
    node = NodeProcess::start(BIN, &data_dir, Some(&nats.url()), &args);
    let http = node.http.clone();
    wait_until(
        Duration::from_secs(60),
        "the catalog rebuilt on start",
        || {
            call(&http, "GET", "/health/ready", None, "").0 == 200
                && !rebuilding(&http, r)
                && windows(&http, r) == expected
        },
    );
    let (status, answer) = call(&http, "POST", "/api/semantic/text", r, &text);
    assert_eq!(
        (status, answer["matches"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    let status = node.stop();
    assert!(status.success(), "the node exited with {status}");
}

#[test]
fn a_search_fans_out_to_the_shards_another_node_holds() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[features.semantic]\nwindow = 64\nstride = 16\n[[features.semantic.watch]]\nmetric = \"load_avg\"\n",
    )
    .unwrap();
    let nodes: Vec<NodeProcess> = (1..=2)
        .map(|id| {
            NodeProcess::start(
                BIN,
                &dir.path().join(format!("n{id}")),
                Some(&nats.url()),
                &[
                    "--node-id",
                    &id.to_string(),
                    "--initial-nodes",
                    "1,2",
                    "--shards",
                    "4",
                    "--replication",
                    "1",
                    "--config",
                    config.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let (h1, h2) = (nodes[0].http.clone(), nodes[1].http.clone());
    wait_until(Duration::from_secs(60), "both nodes ready", || {
        [&h1, &h2]
            .iter()
            .all(|h| call(h, "GET", "/health/ready", None, "").0 == 200)
    });
    // Sixteen series, so every shard holds some.
    let origin = origin_ms();
    let (data, _) = planted(5, 16, 512, WINDOW, 2);
    let (status, answer) = call(
        &h1,
        "POST",
        "/write",
        None,
        &lines(&data, "load_avg", origin),
    );
    assert_eq!(status, 204, "{answer}");
    let expected = (16 * ((512 - WINDOW) / 16 + 1)) as u64;
    let mut seen = (0, 0);
    let indexed = std::time::Instant::now();
    while seen.0 + seen.1 != expected {
        assert!(
            indexed.elapsed() < Duration::from_secs(60),
            "windows indexed {seen:?}, {expected} expected: {} {}",
            call(&h1, "GET", "/api/semantic/status", None, "").1,
            call(&h2, "GET", "/api/semantic/status", None, "").1
        );
        std::thread::sleep(Duration::from_millis(200));
        seen = (windows(&h1, None), windows(&h2, None));
    }
    let held = |h: &str| -> BTreeSet<u64> {
        call(h, "GET", "/api/semantic/status", None, "").1["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["shard"].as_u64().unwrap())
            .collect()
    };
    let (s1, s2) = (held(&h1), held(&h2));
    assert!(
        !s1.is_empty() && !s2.is_empty() && s1.is_disjoint(&s2),
        "{s1:?} {s2:?}"
    );
    // From either node: every shard searched, results from both nodes' shards.
    for h in [&h1, &h2] {
        let req = json!({"text": "oscillation", "k": 40}).to_string();
        let (status, answer) = call(h, "POST", "/api/semantic/text", None, &req);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["shards"]["searched"],
            json!([0, 1, 2, 3]),
            "{answer}"
        );
        assert_eq!(answer["shards"]["missing"], json!([]));
        let shards: BTreeSet<u64> = answer["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["shard"].as_u64().unwrap())
            .collect();
        assert!(
            !shards.is_disjoint(&s1) && !shards.is_disjoint(&s2),
            "matches from shards {shards:?}; node 1 holds {s1:?}, node 2 {s2:?}"
        );
    }
    for n in nodes {
        let status = n.stop();
        assert!(status.success(), "a node exited with {status}");
    }
}

//! Remediation end to end on a running node: a spike is written, detected
//! and stored; a rule calls for two webhook actions; the low-risk one runs
//! at once (a local HTTP server receives it, signed), the high-risk one
//! waits for an approval; a reader cannot approve; an admin approves and
//! the second webhook is called; approving again finds nothing; the audit
//! trail shows the whole chain. Hostile requests get 4xx and the node stays
//! ready.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronicle_tests::{wait_until, NodeProcess};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-remediation-tests-01";
const SECRET: &str = "a-webhook-secret-of-enough-bytes";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn call(http: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let url = format!("{http}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "GET" => {
            let mut r = agent().get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call().unwrap()
        }
        "DELETE" => {
            let mut r = agent().delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call().unwrap()
        }
        _ => {
            let kind = if path == "/write" {
                "text/plain"
            } else {
                "application/json"
            };
            let mut r = if method == "PUT" {
                agent().put(&url)
            } else {
                agent().post(&url)
            }
            .header("Content-Type", kind);
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

/// Requests a local webhook receiver got: (signature header, body).
type Received = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

fn receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut signature) = (0, None);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("x-chronicle-signature:") {
                    signature = Some(v.trim().to_string());
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            seen.lock().unwrap().push((signature, body));
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// The node configuration of these tests: detect watches `latency_*`; a
/// rule on its spikes calls `failover` (high risk: approval) and `notify`
/// (low risk: at once), both webhooks to the local receiver on `port`.
fn config_file(
    dir: &std::path::Path,
    port: u16,
    secret: &std::path::Path,
    approval_ttl: &str,
) -> std::path::PathBuf {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[features.detect]
checkpoint_secs = 5
[[features.detect.watch]]
metric = "latency_*"

[features.remediation.safety]
approval_ttl = "{approval_ttl}"
[features.remediation.webhooks]
allowed_hosts = ["127.0.0.1:{port}"]
attempts = 2
timeout = "5s"
[features.remediation.secrets]
hook = "{secret}"
[[features.remediation.actions]]
id = "notify"
name = "tell the on-call channel"
risk = "low"
priority = 10
type = "webhook"
url = "http://127.0.0.1:{port}/notify"
secret = "hook"
[[features.remediation.actions]]
id = "failover"
name = "fail the region over"
risk = "high"
type = "webhook"
url = "http://127.0.0.1:{port}/failover"
secret = "hook"
[[features.remediation.rules]]
id = "latency-spike"
types = ["spike"]
metrics = ["latency_*"]
conditions = {{ min_severity = "medium" }}
actions = ["failover", "notify"]
cooldown = "10m"
"#,
            secret = secret.display()
        ),
    )
    .unwrap();
    config
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn latency_line(value: f64, t_ms: i64) -> String {
    format!(
        "latency_ms,env=prod,host=a value={value} {}\n",
        t_ms * 1_000_000
    )
}

const WIGGLE: [f64; 8] = [0.0, 0.4, -0.3, 0.2, -0.5, 0.1, 0.3, -0.2];

/// 110 minutes of a quiet `latency_ms` series, one sample a minute, up to
/// a spike now (line protocol): the spike is the last sample, so the
/// episode stays open until calm samples follow ([`calm_after`]).
fn quiet_then_spike() -> String {
    let now = now_ms();
    let mut lines = String::new();
    for i in 0..=110i64 {
        let value = if i == 110 {
            95.0
        } else {
            20.0 + WIGGLE[i as usize % 8]
        };
        lines.push_str(&latency_line(value, now - (110 - i) * 60_000));
    }
    lines
}

/// Calm samples from a second after now: enough to end the episode (the
/// detector closes after ten), after whatever ran before.
fn calm_after() -> String {
    let now = now_ms() + 1000;
    (0..12i64)
        .map(|i| latency_line(20.0 + WIGGLE[i as usize % 8], now + i * 100))
        .collect()
}

#[test]
fn an_incident_is_detected_acted_on_approved_and_audited() {
    let (port, received) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = config_file(dir.path(), port, &secret, "1h");
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &[
            "--auth",
            "--bootstrap-token-file",
            boot.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    let admin = BOOTSTRAP;
    let writer = chronicle_tests::create_token(BIN, http, BOOTSTRAP, "app", "writer").0;
    let reader = chronicle_tests::create_token(BIN, http, BOOTSTRAP, "dash", "reader").0;

    // The registry as configured, readable by a reader.
    // (stored in the background once the state takes writes).
    wait_until(Duration::from_secs(10), "the configured actions", || {
        let (status, actions) = call(http, "GET", "/api/remediation/actions", Some(&reader), "");
        assert_eq!(status, 200, "{actions}");
        actions["actions"].as_array().is_some_and(|a| a.len() == 2)
    });

    let (status, body) = call(http, "POST", "/write", Some(&writer), &quiet_then_spike());
    assert_eq!(status, 204, "{body}");

    // The low-risk action runs at once: signed, with the anomaly.
    wait_until(Duration::from_secs(30), "the notify webhook", || {
        !received.lock().unwrap().is_empty()
    });
    let (signature, body) = received.lock().unwrap()[0].clone();
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["action"], "notify", "{sent}");
    assert_eq!(sent["anomaly"]["metric"], "latency_ms", "{sent}");
    let anomaly_id = sent["anomaly"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        signature.as_deref(),
        Some(chronicle_remediation::webhook::sign(SECRET.as_bytes(), &body).as_str()),
        "the signature verifies with the shared secret"
    );

    // The high-risk one waits for an approval.
    let mut pending = Value::Null;
    wait_until(Duration::from_secs(10), "a pending approval", || {
        pending = call(http, "GET", "/api/remediation/pending", Some(&reader), "").1;
        pending["pending"].as_array().is_some_and(|p| p.len() == 1)
    });
    let approval = pending["pending"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(pending["pending"][0]["action"], "failover");
    assert_eq!(received.lock().unwrap().len(), 1, "not before the approval");
    let decide = json!({"id": approval}).to_string();
    let (status, _) = call(
        http,
        "POST",
        "/api/remediation/approve",
        Some(&reader),
        &decide,
    );
    assert_eq!(status, 403, "a reader cannot approve");
    let (status, _) = call(http, "POST", "/api/remediation/approve", None, &decide);
    assert_eq!(status, 401);
    let (status, answer) = call(
        http,
        "POST",
        "/api/remediation/approve",
        Some(admin),
        &decide,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"]["outcome"], "execute", "{answer}");
    wait_until(Duration::from_secs(10), "the failover webhook", || {
        received.lock().unwrap().len() == 2
    });
    let sent: Value = serde_json::from_slice(&received.lock().unwrap()[1].1).unwrap();
    assert_eq!(sent["action"], "failover", "{sent}");
    // The latency recovers: the episode ends, and both actions are
    // followed to their outcome.
    let (status, body) = call(http, "POST", "/write", Some(&writer), &calm_after());
    assert_eq!(status, 204, "{body}");
    let outcomes = format!("/api/remediation/audit?since=0&anomaly={anomaly_id}&event=outcome");
    let mut settled = Value::Null;
    wait_until(Duration::from_secs(30), "both outcomes", || {
        settled = call(http, "GET", &outcomes, Some(&reader), "").1;
        settled["records"].as_array().is_some_and(|r| r.len() == 2)
    });
    let mut recovered: Vec<(String, String)> = settled["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    recovered.sort();
    assert_eq!(
        recovered,
        vec![
            ("failover".to_string(), "recovered".to_string()),
            ("notify".to_string(), "recovered".to_string())
        ],
        "{settled}"
    );
    let (status, listed) = call(
        http,
        "GET",
        "/api/remediation/outcomes?since=0",
        Some(&reader),
        "",
    );
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["outcomes"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert_eq!(listed["outcomes"][0]["recovered"], true, "{listed}");
    // Two outcomes are too few to learn from: it says so.
    let path = format!("/api/remediation/recommendations?anomaly={anomaly_id}");
    let (status, advice) = call(http, "GET", &path, Some(&reader), "");
    assert_eq!(status, 200, "{advice}");
    assert_eq!(advice["status"], "not_enough_history", "{advice}");
    assert_eq!(
        (advice["have"].as_u64(), advice["need"].as_u64()),
        (Some(2), Some(20))
    );
    // The operator's CLI reads the same, as a table and as JSON.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .args(["--http", http])
            .env("CHRONICLE_TOKEN", &reader)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["anomalies", "list"]);
    assert!(
        table.contains("latency_ms") && table.contains("spike"),
        "{table}"
    );
    let shown = cli(&["anomalies", "show", &anomaly_id]);
    assert!(shown.contains(&anomaly_id), "{shown}");
    let trail = cli(&["remediation", "audit", "--anomaly", &anomaly_id, "--json"]);
    let trail: Value = serde_json::from_str(&trail).unwrap();
    assert_eq!(
        trail["records"].as_array().map(Vec::len),
        Some(7),
        "{trail}"
    );
    let advice = cli(&["remediation", "recommend", &anomaly_id]);
    assert!(
        advice.to_lowercase().contains("not enough history"),
        "{advice}"
    );
    let (status, again) = call(
        http,
        "POST",
        "/api/remediation/approve",
        Some(admin),
        &decide,
    );
    assert_eq!(status, 404, "decided already: {again}");

    // The audit trail holds the chain, in order.
    let path = format!("/api/remediation/audit?since=0&anomaly={anomaly_id}");
    let (status, audit) = call(http, "GET", &path, Some(&reader), "");
    let first_five = audit["records"].as_array().unwrap()[..5].to_vec();
    let audit = json!({"records": first_five});
    assert_eq!(status, 200, "{audit}");
    let chain: Vec<(String, String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap_or_default().to_string(),
                r["action"].as_str().unwrap_or_default().to_string(),
                r["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want = [
        ("evaluated", "", ""),
        ("executed", "notify", "ok"),
        ("queued", "failover", "await_approval"),
        ("approved", "failover", "execute"),
        ("executed", "failover", "ok"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(chain, want, "{audit}");
    assert_eq!(audit["records"][3]["principal"], "bootstrap", "{audit}");
    // A webhook cannot be undone: rolling its record back is refused.
    let notify = json!({"id": audit["records"][1]["id"]}).to_string();
    let (status, answer) = call(
        http,
        "POST",
        "/api/remediation/rollback",
        Some(admin),
        &notify,
    );
    assert_eq!(status, 400, "{answer}");

    // Hostile and bad requests: 4xx, and the node stays ready.
    for (method, path, token, body, want) in [
        (
            "POST",
            "/api/remediation/actions",
            Some(writer.as_str()),
            "{}",
            403,
        ),
        (
            "POST",
            "/api/remediation/actions",
            Some(admin),
            "{not json",
            400,
        ),
        (
            "POST",
            "/api/remediation/actions",
            Some(admin),
            r#"{"id":"x","name":"x","risk":"low","type":"webhook","url":"http://169.254.169.254/latest"}"#,
            403,
        ),
        (
            "POST",
            "/api/remediation/actions",
            Some(admin),
            r#"{"id":"x","name":"x","risk":"low","type":"webhook","url":"http://elsewhere.example/"}"#,
            403,
        ),
        (
            "POST",
            "/api/remediation/actions",
            Some(admin),
            r#"{"id":"../x","name":"x","risk":"low","type":"alert","subject":"ops"}"#,
            400,
        ),
        (
            "POST",
            "/api/remediation/rules",
            Some(admin),
            r#"{"id":"r","actions":[]}"#,
            400,
        ),
        (
            "POST",
            "/api/remediation/approve",
            Some(admin),
            r#"{"id":"nope"}"#,
            404,
        ),
        (
            "POST",
            "/api/remediation/reject",
            Some(admin),
            r#"{"id":"../../x"}"#,
            400,
        ),
        (
            "POST",
            "/api/remediation/rollback",
            Some(reader.as_str()),
            r#"{"id":"1-1-1"}"#,
            403,
        ),
        (
            "POST",
            "/api/remediation/rollback",
            Some(admin),
            r#"{"id":"../audit/x"}"#,
            400,
        ),
        (
            "POST",
            "/api/remediation/rollback",
            Some(admin),
            r#"{"id":"1-1-1"}"#,
            404,
        ),
        ("POST", "/api/remediation/rollback", Some(admin), "[]", 400),
        (
            "GET",
            "/api/remediation/audit?limit=0",
            Some(reader.as_str()),
            "",
            400,
        ),
        (
            "GET",
            "/api/remediation/audit?limit=100000",
            Some(reader.as_str()),
            "",
            400,
        ),
        (
            "GET",
            "/api/remediation/audit?bogus=1",
            Some(reader.as_str()),
            "",
            400,
        ),
        (
            "DELETE",
            "/api/remediation/rules/nope",
            Some(admin),
            "",
            404,
        ),
    ] {
        let (status, answer) = call(http, method, path, token, body);
        assert_eq!(status, want, "{method} {path} {body}: {answer}");
    }
    let huge = format!(r#"{{"id":"x","name":"{}"}}"#, "a".repeat(100_000));
    let (status, _) = call(http, "POST", "/api/remediation/rules", Some(admin), &huge);
    assert_eq!(status, 413);
    assert_eq!(call(http, "GET", "/health/ready", None, "").0, 200);
}

#[test]
fn three_nodes_see_the_anomaly_and_one_acts() {
    let (port, received) = receiver();
    let nats = chronicle_tests::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = config_file(dir.path(), port, &secret, "1h");
    let nodes: Vec<NodeProcess> = (1..=3u64)
        .map(|id| {
            NodeProcess::start(
                BIN,
                &dir.path().join(format!("n{id}")),
                Some(&nats.url()),
                &[
                    "--node-id",
                    &id.to_string(),
                    "--initial-nodes",
                    "1,2,3",
                    "--shards",
                    "3",
                    "--config",
                    config.to_str().unwrap(),
                ],
            )
        })
        .collect();
    for n in &nodes {
        wait_until(Duration::from_secs(30), "every node ready", || {
            call(&n.http, "GET", "/health/ready", None, "").0 == 200
        });
    }
    let (status, body) = call(&nodes[1].http, "POST", "/write", None, &quiet_then_spike());
    assert_eq!(status, 204, "{body}");
    // Every node follows the stored anomaly; the ledger lets one decide.
    wait_until(Duration::from_secs(30), "the notify webhook", || {
        !received.lock().unwrap().is_empty()
    });
    let mut pending = Value::Null;
    wait_until(Duration::from_secs(10), "one pending approval", || {
        pending = call(&nodes[2].http, "GET", "/api/remediation/pending", None, "").1;
        pending["pending"].as_array().is_some_and(|p| !p.is_empty())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(received.lock().unwrap().len(), 1, "notify ran once");
    let pending = call(&nodes[0].http, "GET", "/api/remediation/pending", None, "").1;
    assert_eq!(pending["pending"].as_array().unwrap().len(), 1, "{pending}");
    let (_, audit) = call(
        &nodes[0].http,
        "GET",
        "/api/remediation/audit?since=0&event=evaluated",
        None,
        "",
    );
    assert_eq!(audit["records"].as_array().unwrap().len(), 1, "{audit}");
    // Approved on one node while another approves the same: one runs it.
    let decide = json!({"id": pending["pending"][0]["id"]}).to_string();
    let answers: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                let decide = decide.clone();
                s.spawn(move || call(&n.http, "POST", "/api/remediation/approve", None, &decide).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        answers.iter().filter(|s| **s == 200).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|s| [200, 404, 409].contains(s)),
        "{answers:?}"
    );
    wait_until(Duration::from_secs(10), "the failover webhook", || {
        received.lock().unwrap().len() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(received.lock().unwrap().len(), 2, "failover ran once");
}

#[test]
fn an_approval_that_expires_runs_nothing() {
    let (port, received) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = config_file(dir.path(), port, &secret, "2s");
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &["--config", config.to_str().unwrap()],
    );
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    wait_until(Duration::from_secs(10), "the configured rules", || {
        call(http, "GET", "/api/remediation/rules", None, "").1["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    });
    let (status, body) = call(http, "POST", "/write", None, &quiet_then_spike());
    assert_eq!(status, 204, "{body}");
    let mut pending = Value::Null;
    wait_until(Duration::from_secs(30), "a pending approval", || {
        pending = call(http, "GET", "/api/remediation/pending", None, "").1;
        pending["pending"].as_array().is_some_and(|p| p.len() == 1)
    });
    let decide = json!({"id": pending["pending"][0]["id"]}).to_string();
    std::thread::sleep(Duration::from_millis(2500));
    let (status, answer) = call(http, "POST", "/api/remediation/approve", None, &decide);
    assert_eq!(status, 404, "expired: {answer}");
    let pending = call(http, "GET", "/api/remediation/pending", None, "").1;
    assert_eq!(pending["pending"], json!([]), "{pending}");
    std::thread::sleep(Duration::from_millis(500));
    let calls: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["action"].clone())
        .collect();
    assert_eq!(calls, vec![json!("notify")], "failover never ran");
}

/// A config action through the node's config API: the spike shortens the
/// raw retention for the whole node (old data goes), the change is in the
/// config history under the rule's name, and rolling the action back
/// restores the file's value, once.
#[test]
fn a_config_action_changes_retention_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        r#"
[retention]
check_interval_secs = 1
[features.detect]
checkpoint_secs = 5
[[features.detect.watch]]
metric = "latency_*"
[[features.remediation.actions]]
id = "keep-less"
name = "keep 30 days of raw data"
risk = "low"
type = "config"
setting = "retention.raw"
value = "30d"
[[features.remediation.rules]]
id = "disk-pressure"
types = ["spike"]
metrics = ["latency_*"]
actions = ["keep-less"]
"#,
    )
    .unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &[
            "--auth",
            "--bootstrap-token-file",
            boot.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    let admin = BOOTSTRAP;
    let reader = chronicle_tests::create_token(BIN, http, BOOTSTRAP, "dash", "reader").0;
    let (status, settings) = call(http, "GET", "/api/config", Some(&reader), "");
    assert_eq!(status, 200, "{settings}");
    assert_eq!(
        settings["settings"][0]["name"], "retention.raw",
        "{settings}"
    );
    assert_eq!(settings["settings"][0]["value"], "none", "{settings}");
    assert_eq!(settings["settings"][0]["set"], false, "{settings}");

    // Forty days old: kept while retention is the file's (none).
    let old_ns = (now_ms() - 40 * 86_400_000) * 1_000_000;
    let probe = format!("retention_probe value=1 {old_ns}\n");
    assert_eq!(call(http, "POST", "/write", Some(admin), &probe).0, 204);
    let count = || {
        let (status, r) = call(
            http,
            "GET",
            "/api/v1/query?query=count_over_time(retention_probe%5B50d%5D)",
            Some(&reader),
            "",
        );
        assert_eq!(status, 200, "{r}");
        r["data"]["result"].as_array().map_or(0, Vec::len)
    };
    wait_until(Duration::from_secs(10), "the probe readable", || {
        count() == 1
    });

    wait_until(Duration::from_secs(10), "the configured rule", || {
        call(http, "GET", "/api/remediation/rules", Some(&reader), "").1["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    });
    assert_eq!(
        call(http, "POST", "/write", Some(admin), &quiet_then_spike()).0,
        204
    );
    let mut executed = Value::Null;
    wait_until(Duration::from_secs(30), "the config action", || {
        executed = call(
            http,
            "GET",
            "/api/remediation/audit?since=0&event=executed",
            Some(&reader),
            "",
        )
        .1;
        executed["records"].as_array().is_some_and(|r| r.len() == 1)
    });
    let record = &executed["records"][0];
    assert_eq!(record["outcome"], "ok", "{executed}");
    assert_eq!(
        record["detail"]["result"]["previous"],
        Value::Null,
        "{executed}"
    );
    assert_eq!(record["detail"]["result"]["value"], "30d", "{executed}");
    let settings = call(http, "GET", "/api/config", Some(&reader), "").1;
    assert_eq!(settings["settings"][0]["value"], "30d", "{settings}");
    assert_eq!(settings["settings"][0]["by"], "remediation:disk-pressure");
    // Applied: the leader's next retention entry drops the old window.
    wait_until(Duration::from_secs(20), "the old data deleted", || {
        count() == 0
    });
    let (status, history) = call(
        http,
        "GET",
        "/api/config/history?since=0",
        Some(&reader),
        "",
    );
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["changes"][0]["value"], "30d", "{history}");

    // Rolled back: the file's value again, and only once.
    let undo = json!({"id": record["id"]}).to_string();
    let (status, answer) = call(
        http,
        "POST",
        "/api/remediation/rollback",
        Some(admin),
        &undo,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rolled_back"]["value"], Value::Null, "{answer}");
    let settings = call(http, "GET", "/api/config", Some(&reader), "").1;
    assert_eq!(settings["settings"][0]["set"], false, "{settings}");
    assert_eq!(settings["settings"][0]["value"], "none", "{settings}");
    let (status, again) = call(
        http,
        "POST",
        "/api/remediation/rollback",
        Some(admin),
        &undo,
    );
    assert_eq!(status, 409, "{again}");

    // An operator's change, then a rollback that would undo it: refused.
    let (status, set) = call(
        http,
        "PUT",
        "/api/config/retention.raw",
        Some(admin),
        r#"{"value": "400d", "reason": "audit needs a year"}"#,
    );
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["by"], "bootstrap", "{set}");
    let history = call(
        http,
        "GET",
        "/api/config/history?since=0",
        Some(&reader),
        "",
    )
    .1;
    let reasons: Vec<&str> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{history}");
    assert_eq!(reasons[2], "audit needs a year");

    // Hostile and bad requests: 4xx, and the node stays ready.
    for (method, path, token, body, want) in [
        (
            "PUT",
            "/api/config/retention.raw",
            Some(reader.as_str()),
            r#"{"value":"1d"}"#,
            403,
        ),
        (
            "PUT",
            "/api/config/retention.raw",
            None,
            r#"{"value":"1d"}"#,
            401,
        ),
        (
            "DELETE",
            "/api/config/retention.raw",
            Some(reader.as_str()),
            "",
            403,
        ),
        (
            "PUT",
            "/api/config/retention.raw",
            Some(admin),
            r#"{"value":"soon"}"#,
            400,
        ),
        (
            "PUT",
            "/api/config/retention.raw",
            Some(admin),
            r#"{"value":"1m"}"#,
            400,
        ),
        (
            "PUT",
            "/api/config/retention.raw",
            Some(admin),
            "{not json",
            400,
        ),
        (
            "PUT",
            "/api/config/retention.raw",
            Some(admin),
            r#"{"value":"1d","x":1}"#,
            400,
        ),
        (
            "PUT",
            "/api/config/no.such",
            Some(admin),
            r#"{"value":"1d"}"#,
            404,
        ),
        (
            "GET",
            "/api/config/history?limit=0",
            Some(reader.as_str()),
            "",
            400,
        ),
        (
            "GET",
            "/api/config/history?bogus=1",
            Some(reader.as_str()),
            "",
            400,
        ),
        (
            "POST",
            "/api/remediation/actions",
            Some(admin),
            r#"{"id":"x","name":"x","risk":"low","type":"config","setting":"retention.raw","value":"soon"}"#,
            400,
        ),
        (
            "POST",
            "/api/remediation/actions",
            Some(admin),
            r#"{"id":"x","name":"x","risk":"low","type":"config","setting":"no.such","value":"1"}"#,
            400,
        ),
    ] {
        let (status, answer) = call(http, method, path, token, body);
        assert_eq!(status, want, "{method} {path} {body}: {answer}");
    }
    let huge = format!(r#"{{"value":"1d","reason":"{}"}}"#, "a".repeat(600_000));
    let (status, _) = call(http, "PUT", "/api/config/retention.raw", Some(admin), &huge);
    assert!(status == 413 || status == 400, "{status}");
    let long_reason = format!(r#"{{"value":"1d","reason":"{}"}}"#, "a".repeat(1000));
    let (status, _) = call(
        http,
        "PUT",
        "/api/config/retention.raw",
        Some(admin),
        &long_reason,
    );
    assert_eq!(status, 400);
    assert_eq!(call(http, "GET", "/health/ready", None, "").0, 200);
    let settings = call(http, "GET", "/api/config", Some(&reader), "").1;
    assert_eq!(settings["settings"][0]["value"], "400d", "{settings}");
}

/// The recommender through the node: under the minimum of history it says
/// so; with outcomes stored it ranks the actions that resolved similar
/// anomalies first.
#[test]
fn the_recommender_learns_from_stored_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        r#"
[features.remediation.learning]
min_history = 10
recovery_window = "5m"
[[features.remediation.actions]]
id = "scale-up"
name = "add a replica"
risk = "low"
type = "alert"
subject = "ops.scale"
[[features.remediation.actions]]
id = "restart"
name = "restart the agent"
risk = "low"
type = "alert"
subject = "ops.restart"
"#,
    )
    .unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &["--enable-admin-api", "--config", config.to_str().unwrap()],
    );
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    let kv_put = |namespace: &str, key: &str, value: &Value| {
        let body = json!({"namespace": namespace, "key": key, "value": value.to_string()});
        let (status, answer) = call(http, "POST", "/api/v1/kv/put", None, &body.to_string());
        assert_eq!(status, 200, "{answer}");
    };
    let anomaly = |id: &str, kind: &str, metric: &str| {
        json!({"id": id, "type": kind, "metric": metric, "labels": {"service": "api"},
               "severity": "high", "score": 7.5, "start": now_ms() - 60_000,
               "source": "test"})
    };
    kv_put(
        "detect",
        "anomaly/cpu-1",
        &anomaly("cpu-1", "spike", "cpu_user"),
    );
    kv_put(
        "detect",
        "anomaly/hb-1",
        &anomaly("hb-1", "absent", "agent_heartbeat"),
    );
    let ask = |id: &str| {
        let path = format!("/api/remediation/recommendations?anomaly={id}");
        let (status, answer) = call(http, "GET", &path, None, "");
        assert_eq!(status, 200, "{answer}");
        answer
    };
    let advice = ask("cpu-1");
    assert_eq!(advice["status"], "not_enough_history", "{advice}");
    assert_eq!(advice["have"], 0, "{advice}");

    // History: CPU spikes resolved by scaling, missing heartbeats by a
    // restart; the other way round they did not resolve.
    let t0 = now_ms() - 86_400_000;
    for i in 0..24i64 {
        let (kind, metric, good, bad) = if i % 2 == 0 {
            ("spike", "cpu_system", "scale-up", "restart")
        } else {
            ("absent", "agent_heartbeat", "restart", "scale-up")
        };
        for (j, (action, recovered)) in [(good, true), (bad, false)].into_iter().enumerate() {
            let at = t0 + i * 60_000 + j as i64;
            let id = format!("{at:013}-9-{i}{j}");
            kv_put(
                "remediation",
                &format!("outcome/{id}"),
                &json!({"id": id, "anomaly": format!("a{i}"), "metric": metric, "type": kind,
                        "severity": "high", "score": 6.0, "labels": {"service": "api"},
                        "action": action, "executed_ms": at, "checked_ms": at + 1000,
                        "recovered": recovered}),
            );
        }
    }
    let advice = ask("cpu-1");
    assert_eq!(advice["status"], "ok", "{advice}");
    assert_eq!(advice["trained_on"], 48, "{advice}");
    assert_eq!(
        advice["recommendations"][0]["action"], "scale-up",
        "{advice}"
    );
    assert!(advice["recommendations"][0]["confidence"].as_f64().unwrap() > 0.6);
    let advice = ask("hb-1");
    assert_eq!(
        advice["recommendations"][0]["action"], "restart",
        "{advice}"
    );
    let (status, listed) = call(
        http,
        "GET",
        "/api/remediation/outcomes?since=0&limit=5",
        None,
        "",
    );
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["outcomes"].as_array().map(Vec::len), Some(5));
    assert_eq!(listed["more"], true);

    for (path, want) in [
        ("/api/remediation/recommendations", 400),
        ("/api/remediation/recommendations?anomaly=", 400),
        ("/api/remediation/recommendations?anomaly=nope", 404),
        ("/api/remediation/outcomes?limit=0", 400),
        ("/api/remediation/anomalies?limit=100000", 400),
    ] {
        let (status, answer) = call(http, "GET", path, None, "");
        assert_eq!(status, want, "{path}: {answer}");
    }
    assert_eq!(call(http, "GET", "/health/ready", None, "").0, 200);
}

/// Scale and restart through a node, against a local server playing the
/// Kubernetes API server: the spike scales the Deployment up and restarts
/// it; rolling the scale back restores the replica count, once; a restart
/// cannot be rolled back.
#[test]
fn scale_and_restart_act_on_kubernetes_and_the_scale_rolls_back() {
    use chronicle_remediation::fake_kube::{kubeconfig, FakeApi};
    let (fake, url) = FakeApi::start(1);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &url);
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[features.detect]
checkpoint_secs = 5
[[features.detect.watch]]
metric = "latency_*"
[features.remediation.kubernetes]
enabled = true
kubeconfig = "{}"
[[features.remediation.actions]]
id = "scale-api"
name = "two more replicas"
risk = "low"
priority = 10
type = "scale"
workload = {{ namespace = "prod", kind = "Deployment", name = "api" }}
by = 2
max = 4
[[features.remediation.actions]]
id = "restart-api"
name = "rollout restart"
risk = "low"
type = "restart"
workload = {{ namespace = "prod", kind = "Deployment", name = "api" }}
[[features.remediation.actions]]
id = "scale-missing"
name = "a workload that is not there"
risk = "low"
type = "scale"
workload = {{ namespace = "prod", kind = "StatefulSet", name = "gone" }}
to = 2
[[features.remediation.rules]]
id = "latency-spike"
types = ["spike"]
metrics = ["latency_*"]
actions = ["scale-api", "restart-api", "scale-missing"]
"#,
            kubeconfig.display()
        ),
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
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    wait_until(Duration::from_secs(10), "the configured rule", || {
        call(http, "GET", "/api/remediation/rules", None, "").1["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    });
    assert_eq!(
        call(http, "POST", "/write", None, &quiet_then_spike()).0,
        204
    );
    let mut executed = Value::Null;
    wait_until(Duration::from_secs(30), "three actions run", || {
        executed = call(
            http,
            "GET",
            "/api/remediation/audit?since=0&event=executed",
            None,
            "",
        )
        .1;
        executed["records"].as_array().is_some_and(|r| r.len() == 3)
    });
    let by_action = |id: &str| -> Value {
        executed["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["action"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id}: {executed}"))
    };
    let scaled = by_action("scale-api");
    assert_eq!(scaled["outcome"], "ok", "{scaled}");
    assert_eq!(scaled["detail"]["result"]["previous"], 3, "{scaled}");
    assert_eq!(scaled["detail"]["result"]["replicas"], 4, "{scaled}");
    let restarted = by_action("restart-api");
    assert_eq!(restarted["outcome"], "ok", "{restarted}");
    let missing = by_action("scale-missing");
    assert_eq!(missing["outcome"], "failed", "{missing}");
    assert!(
        missing["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{missing}"
    );
    {
        let object = fake.object.lock().unwrap();
        assert_eq!(object["spec"]["replicas"], 4, "{object}");
        assert!(
            object["spec"]["template"]["metadata"]["annotations"]
                ["kubectl.kubernetes.io/restartedAt"]
                .is_string(),
            "{object}"
        );
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"][0]["image"], "api:1",
            "the rest of the object is untouched"
        );
    }
    let log = fake.log.lock().unwrap().clone();
    assert!(
        log.iter().filter(|l| l.starts_with("PATCH")).count() >= 3,
        "one 409 read again and retried, then the restart: {log:?}"
    );

    let undo = json!({"id": scaled["id"]}).to_string();
    let (status, answer) = call(http, "POST", "/api/remediation/rollback", None, &undo);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rolled_back"]["replicas"], 3, "{answer}");
    assert_eq!(fake.object.lock().unwrap()["spec"]["replicas"], 3);
    let (status, again) = call(http, "POST", "/api/remediation/rollback", None, &undo);
    assert_eq!(status, 409, "{again}");
    let restart = json!({"id": restarted["id"]}).to_string();
    let (status, answer) = call(http, "POST", "/api/remediation/rollback", None, &restart);
    assert_eq!(status, 400, "{answer}");
    let failed = json!({"id": missing["id"]}).to_string();
    let (status, answer) = call(http, "POST", "/api/remediation/rollback", None, &failed);
    assert_eq!(
        status, 400,
        "an action that failed has nothing to undo: {answer}"
    );
    let rolled = call(
        http,
        "GET",
        "/api/remediation/audit?since=0&event=rolled_back",
        None,
        "",
    )
    .1;
    assert_eq!(
        rolled["records"].as_array().map(Vec::len),
        Some(1),
        "{rolled}"
    );
    assert_eq!(rolled["records"][0]["outcome"], "ok", "{rolled}");
    assert_eq!(call(http, "GET", "/health/ready", None, "").0, 200);
}

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
            let mut r = agent().post(&url).header("Content-Type", kind);
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

/// Two hours of a quiet `latency_ms` series, one sample a minute, with a
/// spike at minute 110 (line protocol).
fn quiet_then_spike() -> String {
    let start_ms = 1_767_225_600_000i64;
    let mut lines = String::new();
    for i in 0..120i64 {
        let wiggle = [0.0, 0.4, -0.3, 0.2, -0.5, 0.1, 0.3, -0.2][i as usize % 8];
        let value = if i == 110 { 95.0 } else { 20.0 + wiggle };
        let t = (start_ms + i * 60_000) * 1_000_000;
        lines.push_str(&format!("latency_ms,env=prod,host=a value={value} {t}\n"));
    }
    lines
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

//! The detect feature end to end: a node with authentication over NATS
//! watches `latency_*`; a spike written through `/write` is detected,
//! stored and published on `chronicle.anomaly.latency_ms`; another service
//! publishes its own anomaly (with a writer token; without one, or with a
//! malformed body, it is refused); `/api/anomalies` lists them and refuses
//! hostile queries, and the node stays healthy.

use std::sync::Arc;
use std::time::Duration;

use chronicle_bus::{Bus, Message, NatsBus, NatsOptions};
use chronicle_tests::{wait_until, NatsServer, NodeProcess};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-anomaly-tests-0123456";

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
        _ => {
            let mut r = agent().post(&url);
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

fn token(http: &str, name: &str, role: &str) -> String {
    chronicle_tests::create_token(BIN, http, BOOTSTRAP, name, role).0
}

#[test]
fn a_spike_is_detected_stored_and_published_and_other_services_anomalies_are_checked() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-cluster-secret-of-enough-bytes").unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[features.detect]\ncheckpoint_secs = 5\n[[features.detect.watch]]\nmetric = \"latency_*\"\nlabels = { env = \"prod\" }\n",
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
    let mut node = NodeProcess::start(BIN, &dir.path().join("data"), Some(&nats.url()), &args);
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    let writer = token(http, "app", "writer");
    let reader = token(http, "dash", "reader");

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
    let mut published = runtime
        .block_on(bus.subscribe("chronicle.anomaly.latency_ms", None))
        .unwrap();

    // Two hours of a quiet series one sample a minute, then a spike; and a
    // series of another environment that is not watched.
    let start_ms = 1_767_225_600_000i64;
    let mut lines = String::new();
    for i in 0..120i64 {
        let wiggle = [0.0, 0.4, -0.3, 0.2, -0.5, 0.1, 0.3, -0.2][i as usize % 8];
        let value = if i == 110 { 95.0 } else { 20.0 + wiggle };
        let t = (start_ms + i * 60_000) * 1_000_000;
        lines.push_str(&format!("latency_ms,env=prod,host=a value={value} {t}\n"));
        lines.push_str(&format!("latency_ms,env=dev,host=a value={value} {t}\n"));
    }
    let (status, body) = call(http, "POST", "/write", Some(&writer), &lines);
    assert_eq!(status, 204, "{body}");

    // Stored and listed (a reader may list).
    let mut listed = Value::Null;
    wait_until(Duration::from_secs(20), "the spike is listed", || {
        let (status, body) = call(http, "GET", "/api/anomalies?since=0", Some(&reader), "");
        listed = body;
        status == 200 && !listed["anomalies"].as_array().unwrap().is_empty()
    });
    let anomalies = listed["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{listed}");
    let a = &anomalies[0];
    assert_eq!(a["type"], "spike", "{a}");
    assert_eq!(a["metric"], "latency_ms");
    assert_eq!(a["labels"], json!({"env": "prod", "host": "a"}));
    assert_eq!(a["start"], start_ms + 110 * 60_000);
    assert_eq!(a["source"], "detector");
    assert!(a["evidence"]["baseline"].as_f64().unwrap() < 21.0, "{a}");
    let id = a["id"].as_str().unwrap();
    let (status, one) = call(
        http,
        "GET",
        &format!("/api/anomalies/{id}"),
        Some(&reader),
        "",
    );
    assert_eq!((status, &one["id"]), (200, &a["id"]));
    // Published on the bus as well.
    let got = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), published.next()).await })
        .expect("an anomaly published within 10 s")
        .unwrap();
    let on_bus: Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(on_bus["id"], a["id"]);

    // Another service's anomaly: with a writer token it is stored once.
    let external = json!({"id": "blackbox-1", "type": "absent", "metric": "probe_success",
                          "severity": "critical", "score": 4.0, "start": start_ms,
                          "source": "blackbox"});
    let ask = |payload: Vec<u8>, token: Option<&str>, subject: &str| -> Value {
        let mut m = Message::new(subject.to_string(), payload);
        if let Some(t) = token {
            m = m.with_header("Authorization", format!("Bearer {t}"));
        }
        let reply = runtime
            .block_on(bus.request(m, Duration::from_secs(10)))
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    };
    let body = serde_json::to_vec(&external).unwrap();
    let subject = "chronicle.anomaly.probe_success";
    assert_eq!(
        ask(body.clone(), Some(&writer), subject),
        json!({"stored": true})
    );
    assert_eq!(
        ask(body.clone(), Some(&writer), subject),
        json!({"stored": false})
    );
    // Refused: no token, a reader's token, a malformed body, the wrong subject.
    assert_eq!(ask(body.clone(), None, subject)["code"], 401);
    assert_eq!(ask(body.clone(), Some(&reader), subject)["code"], 403);
    assert_eq!(
        ask(b"{\"id\":".to_vec(), Some(&writer), subject)["code"],
        400
    );
    assert_eq!(
        ask(vec![b'x'; 100_000], Some(&writer), subject)["code"],
        400
    );
    assert_eq!(
        ask(body, Some(&writer), "chronicle.anomaly.other_metric")["code"],
        400
    );
    let (_, all) = call(
        http,
        "GET",
        "/api/anomalies?since=0&type=absent",
        Some(&reader),
        "",
    );
    assert_eq!(all["anomalies"][0]["id"], "blackbox-1", "{all}");

    // Hostile queries: 4xx, and the node keeps serving.
    for (path, token, want) in [
        ("/api/anomalies", None, 401),
        ("/api/anomalies?limit=0", Some(&reader), 400),
        ("/api/anomalies?limit=1000000", Some(&reader), 400),
        ("/api/anomalies?type=boom", Some(&reader), 400),
        ("/api/anomalies?state=maybe", Some(&reader), 400),
        ("/api/anomalies?bogus=1", Some(&reader), 400),
        ("/api/anomalies?since=yesterday", Some(&reader), 400),
        ("/api/anomalies/nope", Some(&reader), 404),
    ] {
        let (status, body) = call(http, "GET", path, token.map(|t| t.as_str()), "");
        assert_eq!(status, want, "{path}: {body}");
    }
    let long = format!("/api/anomalies/{}", "x".repeat(300));
    assert_eq!(call(http, "GET", &long, Some(&reader), "").0, 400);
    assert_eq!(call(http, "GET", "/health/ready", None, "").0, 200);
    let (status, open) = call(
        http,
        "GET",
        "/api/anomalies?since=0&state=open&metric=latency_*",
        Some(&reader),
        "",
    );
    assert_eq!(status, 200, "{open}");

    // The detectors' state is saved (every 5 s here) and survives a SIGKILL:
    // after the restart five quiet samples and a spike are enough (a
    // detector learning afresh judges nothing before 30 samples).
    wait_until(Duration::from_secs(20), "a checkpoint saved", || {
        let text = agent()
            .get(format!("{http}/metrics"))
            .header("Authorization", &format!("Bearer {reader}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("chronicle_detect_checkpoint_bytes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    });
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    node = NodeProcess::start(BIN, &dir.path().join("data"), Some(&nats.url()), &args);
    let http = node.http.as_str();
    wait_until(Duration::from_secs(30), "node ready again", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });
    let mut lines = String::new();
    for i in 120..126i64 {
        let value = if i == 125 { 3.0 } else { 20.1 };
        let t = (start_ms + i * 60_000) * 1_000_000;
        lines.push_str(&format!("latency_ms,env=prod,host=a value={value} {t}\n"));
    }
    let (status, body) = call(http, "POST", "/write", Some(&writer), &lines);
    assert_eq!(status, 204, "{body}");
    let dip_start = start_ms + 125 * 60_000;
    wait_until(Duration::from_secs(20), "the dip after the restart", || {
        let (_, body) = call(
            http,
            "GET",
            "/api/anomalies?since=0&type=dip",
            Some(&reader),
            "",
        );
        body["anomalies"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["start"] == dip_start))
    });
}

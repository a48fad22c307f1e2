//! A write retried with its idempotency key is acknowledged without being
//! applied again — over HTTP (`Idempotency-Key`) and over the bus (the same
//! header) — so a retry cannot overwrite a newer write of the same point;
//! a bad key is refused with 400 and the node stays healthy.

use std::time::Duration;

use chronicle::{Node, NodeConfig};
use chronicle_bus::Message;

const T: i64 = 1_767_225_600; // seconds

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs a line to /write (seconds precision); the status.
fn write(base: &str, line: &str, key: Option<&str>) -> u16 {
    let mut request = agent()
        .post(format!("{base}/write?precision=s"))
        .content_type("text/plain");
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send(line).expect("request sent").status().as_u16()
}

/// The value of `metric` at T, through the Prometheus API.
fn value(base: &str, metric: &str) -> String {
    let mut resp = agent()
        .get(format!("{base}/api/v1/query?query={metric}&time={T}"))
        .call()
        .expect("query sent");
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    body["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or_else(|| panic!("no value for {metric}: {body}"))
        .to_string()
}

#[actix::test]
async fn a_retried_write_with_its_key_does_not_overwrite_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);

    let b = base.clone();
    tokio::task::spawn_blocking(move || {
        // The first attempt, a newer write of the same point, then the retry.
        assert_eq!(write(&b, &format!("http v=1 {T}"), Some("order-17")), 204);
        assert_eq!(write(&b, &format!("http v=2 {T}"), None), 204);
        assert_eq!(write(&b, &format!("http v=1 {T}"), Some("order-17")), 204);
        assert_eq!(
            value(&b, "http_v"),
            "2",
            "the retry overwrote the newer write"
        );
        // Without a key the same retry overwrites (what the key prevents).
        assert_eq!(write(&b, &format!("http v=1 {T}"), None), 204);
        assert_eq!(value(&b, "http_v"), "1");
        // Another key is another write.
        assert_eq!(write(&b, &format!("http v=3 {T}"), Some("order-18")), 204);
        assert_eq!(value(&b, "http_v"), "3");

        // Hostile keys: 400, nothing written, the node still healthy.
        let long = "k".repeat(129);
        for bad in [long.as_str(), "has space", "tab\there"] {
            assert_eq!(
                write(&b, &format!("http v=9 {T}"), Some(bad)),
                400,
                "{bad:?}"
            );
        }
        assert_eq!(value(&b, "http_v"), "3");
        let ready = agent()
            .get(format!("{b}/health/ready"))
            .call()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(ready, 200);
    })
    .await
    .unwrap();

    // The bus: the same header on an ingest message.
    let bus = node.bus.clone();
    let send = |line: String, key: Option<&str>| {
        let bus = bus.clone();
        let mut message = Message::new("chronicle.ingest.lp", line);
        if let Some(k) = key {
            message = message.with_header("Idempotency-Key", k);
        }
        message = message.with_header("Precision", "s");
        async move {
            let reply = bus
                .request(message, Duration::from_secs(10))
                .await
                .expect("ingest reply");
            String::from_utf8_lossy(&reply.payload).into_owned()
        }
    };
    let first = send(format!("bus v=1 {T}"), Some("batch-1")).await;
    assert!(!first.contains("error"), "{first}");
    send(format!("bus v=2 {T}"), None).await;
    let retry = send(format!("bus v=1 {T}"), Some("batch-1")).await;
    assert!(!retry.contains("error"), "{retry}");
    let bad = send(format!("bus v=9 {T}"), Some("bad key")).await;
    assert!(bad.contains("bad_request"), "{bad}");
    let b = base.clone();
    tokio::task::spawn_blocking(move || assert_eq!(value(&b, "bus_v"), "2"))
        .await
        .unwrap();
    node.shutdown().await;
}

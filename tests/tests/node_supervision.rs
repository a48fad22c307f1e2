//! A panic inside an actor's handler restarts that actor; the node keeps serving and
//! no acknowledged write is lost. Restarts back off, too many make the node not ready,
//! and a disabled feature serves nothing.

use std::time::Duration;

use chronicle::{Node, NodeConfig};
use chronicle_bus::Message;
use chronicle_ingest::InjectPanic;
use chronicle_query::{QueryResult, RunQuery};

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    }
}

async fn write(node: &Node, batch: usize) -> Result<(), String> {
    let mut body = String::new();
    for i in 0..100 {
        body.push_str(&format!(
            "sup,batch={batch} value={i} {}\n",
            1_000_000_000 + i as i64
        ));
    }
    let reply = node
        .bus
        .request(
            Message::new("chronicle.ingest.test", body),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply.payload).to_string();
    if text == "{\"written\":100}" {
        Ok(())
    } else {
        Err(text)
    }
}

/// Retries until the write is acknowledged (a restart may refuse one attempt).
async fn write_acked(node: &Node, batch: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match write(node, batch).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("batch {batch} not acknowledged yet: {e}")
            }
            Err(e) => panic!("batch {batch} never acknowledged: {e}"),
        }
    }
}

fn restarts(actor: &str) -> u64 {
    let text = chronicle::metrics::render();
    text.lines()
        .find(|l| {
            l.starts_with(&format!(
                "chronicle_actor_restarts_total{{actor=\"{actor}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn panics_restart_actors_without_losing_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    actix::System::new().block_on(async {
        let node = Node::start(config(dir.path())).await.expect("node starts");
        for batch in 0..5 {
            write_acked(&node, batch).await;
        }
        let ingest_before = restarts("ingest");
        let query_before = restarts("query");

        node.ingest
            .as_ref()
            .unwrap()
            .send(InjectPanic)
            .await
            .expect("delivered");
        node.query
            .as_ref()
            .unwrap()
            .send(InjectPanic)
            .await
            .expect("delivered");

        // The supervisor restarts both; writes and queries keep working.
        for batch in 5..10 {
            write_acked(&node, batch).await;
        }
        assert_eq!(restarts("ingest"), ingest_before + 1);
        assert_eq!(restarts("query"), query_before + 1);

        let request =
            serde_json::from_str(r#"{"metric":"sup","start":0,"end":2000000000}"#).unwrap();
        let result: QueryResult = node
            .query
            .as_ref()
            .unwrap()
            .send(RunQuery::new(request))
            .await
            .expect("query actor answers after its restart")
            .expect("query runs");
        assert_eq!(result.series.len(), 10, "every acknowledged batch is there");
        assert!(result.series.iter().all(|s| s.points.len() == 100));
        assert!(
            node.shutdown().await,
            "every replica's RocksDB closed at shutdown"
        );
    });
}

#[test]
fn restarts_back_off_and_too_many_make_the_node_not_ready_until_they_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.features.restart_intensity = Some(2);
    c.features.restart_window_secs = Some(3);
    actix::System::new().block_on(async move {
        let node = Node::start(c).await.expect("node starts");
        let query = node.query.clone().unwrap();
        let n = node.http_addr;
        let (status, body) = tokio::task::spawn_blocking(move || readiness_at(n))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");

        // Three panics in a row: each restart waits longer than the last
        // (50, 100, 200 ms), so the third answer comes after their sum.
        let started = std::time::Instant::now();
        for _ in 0..3 {
            query.send(InjectPanic).await.expect("delivered");
        }
        query.send(chronicle_query::Ping).await.expect("answers");
        let backed_off = started.elapsed();
        assert!(
            backed_off >= Duration::from_millis(300),
            "three restarts took only {backed_off:?}"
        );

        // Over the intensity (2 within 3 s): reported, named, not ready.
        let (status, body) = tokio::task::spawn_blocking(move || readiness_at(n))
            .await
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("actor query restarted 3 times"), "{body}");

        // Once the window has passed without restarts, ready again; the
        // actor answers throughout.
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        let (status, body) = tokio::task::spawn_blocking(move || readiness_at(n))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        write_acked(&node, 0).await;
        assert!(node.shutdown().await);
    });
}

fn readiness_at(addr: std::net::SocketAddr) -> (u16, String) {
    let url = format!("http://{addr}/health/ready");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(&url).call().expect("readiness answers");
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn a_disabled_feature_serves_nothing_and_a_section_no_feature_has_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.features = toml::from_str("disabled = [\"query\", \"live\"]").unwrap();
    actix::System::new().block_on(async move {
        let node = Node::start(c).await.expect("node starts");
        assert!(node.query.is_none());
        assert_eq!(
            node.features.names(),
            [
                "ingest",
                "kv",
                "config",
                "backup",
                "collab",
                "detect",
                "remediation",
                "capacity",
                "semantic"
            ]
        );
        // Writes work; the query routes and subject are not served.
        write_acked(&node, 0).await;
        let n = node.http_addr;
        let statuses = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            (
                agent
                    .post(format!("http://{n}/query"))
                    .send(r#"{"metric":"sup"}"#)
                    .unwrap()
                    .status()
                    .as_u16(),
                agent
                    .get(format!("http://{n}/api/v1/query?query=up"))
                    .call()
                    .unwrap()
                    .status()
                    .as_u16(),
                readiness_at(n).0,
            )
        })
        .await
        .unwrap();
        assert_eq!(statuses, (404, 404, 200));
        let asked = node
            .bus
            .request(
                Message::new("chronicle.query", r#"{"metric":"sup"}"#),
                Duration::from_millis(300),
            )
            .await;
        assert!(asked.is_err(), "a disabled feature answered on the bus");
        assert!(node.shutdown().await);
    });

    // A feature that needs a disabled one: a clear error, the node stopped.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.features = toml::from_str("disabled = [\"query\"]").unwrap();
    actix::System::new().block_on(async move {
        let err = Node::start(c).await.err().expect("refused");
        assert!(err.to_string().contains("live"), "{err}");
        assert!(err.to_string().contains("query"), "{err}");
    });

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.features = toml::from_str("[colab]\nx = 1\n").unwrap();
    actix::System::new().block_on(async move {
        let err = Node::start(c).await.err().expect("refused");
        assert!(
            err.to_string().contains("no feature is named \"colab\""),
            "{err}"
        );
    });
}

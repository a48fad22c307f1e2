//! A panic inside an actor's handler restarts that actor; the node keeps serving and
//! no acknowledged write is lost.

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

        node.ingest.send(InjectPanic).await.expect("delivered");
        node.query.send(InjectPanic).await.expect("delivered");

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

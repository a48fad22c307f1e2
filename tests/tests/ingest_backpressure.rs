//! Backpressure: producers publish line protocol over NATS far faster than a
//! node process can parse and store it, without waiting for acks. What the node
//! cannot buffer is shed by NATS's slow-consumer rules (never acknowledged);
//! what it takes is acknowledged after it is durable. The node's memory stays
//! bounded, and every acknowledged message is stored in full.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_tests::{http_query, wait_until, NatsServer, NodeProcess};
use futures_util::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

/// How long the producers push.
const FLOOD_FOR: Duration = Duration::from_secs(8);
/// Lines per message (about 0.4 MB, under NATS's 1 MiB max payload): 50
/// series of one batch, 100 timestamps each; two fields per line.
const LINES: usize = 5_000;
const HOSTS: usize = 50;
const PRODUCERS: usize = 4;
/// What the node may grow by under the flood: its bounded buffers (256
/// messages from NATS, a parse queue, two batches) plus RocksDB's memtables
/// and the head's open chunks for the series it stored.
const MAX_GROWTH: u64 = 400 << 20;

fn message(batch: &str) -> String {
    let mut text = String::with_capacity(LINES * 80);
    for i in 0..LINES {
        let ts = 1_767_225_600_000_000_000_i64 + (i / HOSTS) as i64 * 10_000_000_000;
        text.push_str(&format!(
            "flood,batch={batch},host=host-{:02} usage_user={}.5,usage_system=1 {ts}\n",
            i % HOSTS,
            i % 100
        ));
    }
    text
}

fn written_points(http: &str) -> u64 {
    let body = ureq::get(format!("{http}/metrics"))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics text");
    body.lines()
        .find_map(|l| l.strip_prefix("chronicle_ingest_points_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_shed_with_bounded_memory_and_no_acknowledged_write_lost() {
    let server = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(BIN, data.path(), Some(&server.url()), &[]);
    let baseline = node.rss_bytes().expect("node RSS");

    let stop = Arc::new(AtomicBool::new(false));
    let published_points = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let client = async_nats::connect(server.url()).await.unwrap();
        // Acks come back on this producer's own subjects, one per message.
        let ack_prefix = format!("flood-acks.{producer}");
        let mut acks = client.subscribe(format!("{ack_prefix}.*")).await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ack) = acks.next().await {
                if ack.payload == format!("{{\"written\":{}}}", 2 * LINES) {
                    let batch = ack.subject.rsplit('.').next().unwrap().to_string();
                    acked.lock().unwrap().insert(batch);
                }
            }
        }));
        let (stop, published) = (stop.clone(), published_points.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch = format!("{producer}-{seq}");
                client
                    .publish_with_reply(
                        "chronicle.ingest.flood",
                        format!("{ack_prefix}.{batch}"),
                        message(&batch).into(),
                    )
                    .await
                    .unwrap();
                published.fetch_add(2 * LINES as u64, Ordering::Relaxed);
                seq += 1;
            }
            client.flush().await.unwrap();
            // Acks for messages still in the node arrive after the flood.
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(client);
        }));
    }

    // Watch the node's memory while the flood runs.
    let started = Instant::now();
    let mut peak = baseline;
    while started.elapsed() < FLOOD_FOR {
        peak = peak.max(node.rss_bytes().expect("node RSS"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written_during_flood = written_points(&node.http);
    stop.store(true, Ordering::Relaxed);
    for (i, task) in tasks.into_iter().enumerate() {
        if i % 2 == 1 {
            task.await.unwrap();
        } else {
            task.abort();
        }
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let published = published_points.load(Ordering::Relaxed);

    eprintln!(
        "published {published} points, written {written_during_flood} during the flood; \
         {} messages acknowledged; RSS {} MB -> peak {} MB",
        acked.len(),
        baseline >> 20,
        peak >> 20
    );
    assert!(
        published > 3 * written_during_flood,
        "the flood must exceed what the node stores ({published} published, \
         {written_during_flood} written) or this test proves nothing"
    );
    assert!(
        peak - baseline < MAX_GROWTH,
        "node memory grew by {} MB under the flood (bound {} MB)",
        (peak - baseline) >> 20,
        MAX_GROWTH >> 20
    );
    assert!(
        acked.len() >= 5,
        "the node must keep acknowledging under a flood (only {} acks)",
        acked.len()
    );

    // Every acknowledged message is stored in full: LINES points per field.
    let query = r#"{"metric":"flood_usage_user","start":0,"end":2000000000000000000,
        "aggregation":{"function":"count"},"group_by":["batch"]}"#;
    let mut counts = HashMap::new();
    wait_until(Duration::from_secs(20), "acknowledged points", || {
        counts.clear();
        let result = http_query(&node.http, query);
        for series in result["series"].as_array().into_iter().flatten() {
            let batch = series["labels"]["batch"].as_str().unwrap().to_string();
            let count = series["points"][0][1].as_f64().unwrap_or(0.0) as usize;
            counts.insert(batch, count);
        }
        acked.iter().all(|b| counts.get(b) == Some(&LINES))
    });
    let stopping = std::time::Instant::now();
    assert!(
        node.stop_within(Duration::from_secs(60)).success(),
        "node exits cleanly after the flood"
    );
    eprintln!("stopped {:?} after SIGTERM", stopping.elapsed());
}

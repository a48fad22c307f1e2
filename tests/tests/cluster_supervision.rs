//! The cluster's tasks are supervised (hardening issue, "committed means
//! applied"): a panic in one of a group's tasks restarts the group from
//! disk, and a node service that keeps panicking is started again with
//! backoff and makes the node not ready until it runs steady.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{ClusterConfig, ClusterNode};
use chronicle_storage::{Label, Point, ShardConfig};

fn config(id: u64, voters: Vec<u64>, dir: &std::path::Path) -> ClusterConfig {
    let mut config = ClusterConfig::new(id, voters, dir.join(format!("n{id}")));
    config.shards = 1;
    config.shard = ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    };
    config
}

fn point(i: i64) -> Point {
    Point::new(
        "supervised",
        vec![Label::new("host", "a")],
        i as f64,
        1_700_000_000_000_000_000 + i * 1_000_000_000,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_server_that_panics_restarts_its_group_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let node = ClusterNode::start(config(id, vec![1, 2, 3], dir.path()), bus.clone());
        nodes.push(node.await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    let leader = nodes[0].status().1[0].leader.expect("a leader");
    let follower = nodes.iter().find(|n| n.node_id() != leader).unwrap();
    follower.write(&[point(0)]).await.unwrap();

    // The next forwarded request kills the leader's request server.
    fail::cfg(chronicle_cluster::REQUEST_SERVER_FAILPOINT, "1*panic").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut written = 1;
    while written < 20 {
        assert!(Instant::now() < deadline, "writes did not go on");
        if follower.write(&[point(written)]).await.is_ok() {
            written += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    fail::remove(chronicle_cluster::REQUEST_SERVER_FAILPOINT);
    let restarted: usize = nodes.iter().map(|n| n.group_restarts(0)).sum();
    assert_eq!(
        restarted, 1,
        "the group whose request server panicked was restarted once"
    );
    // One restart is no reason to be unready.
    for n in &nodes {
        assert!(n.group_problems().is_empty(), "{:?}", n.group_problems());
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_keeps_panicking_is_restarted_and_the_node_is_unready_until_it_runs_steady()
{
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut config = config(1, vec![1], dir.path());
    config.retention_check = Duration::from_millis(100);
    fail::cfg(chronicle_cluster::RETENTION_FAILPOINT, "3*panic").unwrap();
    let node = ClusterNode::start(config, bus).await.unwrap();
    assert!(node.wait_for_leaders(Duration::from_secs(20)).await);

    let started = Instant::now();
    let problem = loop {
        if let Some(p) = node.group_problems().into_iter().next() {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "three panics of the retention loop never showed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        problem.contains("cluster service retention: failed 3 times"),
        "{problem}"
    );
    // Restarted once more after its backoff, it runs steady: ready again.
    while !node.group_problems().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "still unready: {:?}",
            node.group_problems()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fail::remove(chronicle_cluster::RETENTION_FAILPOINT);
    node.shutdown().await;
}

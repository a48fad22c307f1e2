//! A Raft group whose core stops (as it does on a fatal storage error) is
//! found by the node's supervisor and restarted from disk; what it had
//! committed is still there and it takes writes again. Until then readiness
//! has a reason to give.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{ClusterConfig, ClusterNode};
use chronicle_storage::{Label, Matcher, Point, ShardConfig};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;

fn point(i: i64) -> Point {
    Point::new("sup", vec![Label::new("host", "a")], i as f64, i * S)
}

/// A one-voter node with one shard, unsynced writes (the tests' speed).
fn one_voter(dir: &TempDir) -> ClusterConfig {
    let mut config = ClusterConfig::new(1, vec![1], dir.path().join("n1"));
    config.shards = 1;
    config.shard = ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_raft_group_is_restarted_from_disk() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let config = one_voter(&dir);
    let node = ClusterNode::start(config, bus).await.unwrap();
    assert!(node.wait_for_leaders(Duration::from_secs(10)).await);
    node.write(&[point(1), point(2)]).await.unwrap();

    assert!(node.inject_group_failure(0).await);
    // Writes fail while it is down; the supervisor brings it back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_problem = false;
    loop {
        saw_problem |= !node.group_problems().is_empty();
        if node.group_restarts(0) >= 1 && node.write(&[point(3)]).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group was not restarted: {:?}",
            node.group_problems()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_problem,
        "readiness had a reason while the group was down"
    );
    let stored = node
        .read_all(&[Matcher::equal("__name__", "sup")], 0, 10 * S)
        .await
        .unwrap();
    let times: Vec<i64> = stored[0].1.iter().map(|s| s.timestamp).collect();
    assert_eq!(
        times,
        vec![S, 2 * S, 3 * S],
        "committed writes survive the restart"
    );
    assert!(
        node.group_problems().is_empty(),
        "{:?}",
        node.group_problems()
    );
    node.shutdown().await;
}

/// Chaos finding (disk class): a two-second fsync fault made a node's groups
/// fail and restart several times; readiness then held the node out of
/// service for the whole five-minute window although its groups ran again.
/// A group that flapped counts as failing only until it runs steady.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_failed_repeatedly_is_ready_again_once_it_runs_steady() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let config = one_voter(&dir);
    let node = ClusterNode::start(config, bus).await.unwrap();
    assert!(node.wait_for_leaders(Duration::from_secs(10)).await);
    for round in 1..=3 {
        assert!(node.inject_group_failure(0).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        while node.group_restarts(0) < round {
            assert!(Instant::now() < deadline, "restart {round} did not happen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        !node.group_problems().is_empty(),
        "three restarts in a row are reported"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.group_problems().is_empty() {
        assert!(
            Instant::now() < deadline,
            "still not ready: {:?}",
            node.group_problems()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.shutdown().await;
}

fn term_of(node: &ClusterNode, shard: u32) -> u64 {
    node.status().1[shard as usize].term
}

/// A member whose saved vote is its own committed leadership must not take
/// that leadership back from disk: after a failed log fsync or a power cut its
/// log can lack entries it already sent to followers, and resuming would
/// reuse their log ids for new entries. It restarts as a follower and wins a
/// new term instead, after the supervisor's restart and after a process
/// restart alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_is_elected_in_a_new_term_rather_than_resuming_its_old_one() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let config = one_voter(&dir);
    let node = ClusterNode::start(config.clone(), bus.clone())
        .await
        .unwrap();
    assert!(node.wait_for_leaders(Duration::from_secs(10)).await);
    node.write(&[point(1)]).await.unwrap();
    let led = term_of(&node, 0);

    assert!(node.inject_group_failure(0).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(node.group_restarts(0) >= 1 && node.write(&[point(2)]).await.is_ok()) {
        assert!(Instant::now() < deadline, "the group was not restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_supervisor = term_of(&node, 0);
    assert!(
        after_supervisor > led,
        "the supervisor's restart resumed term {led} instead of winning a new one"
    );
    node.shutdown().await;
    drop(node);

    let node = ClusterNode::start(config, bus).await.unwrap();
    assert!(node.wait_for_leaders(Duration::from_secs(10)).await);
    node.write(&[point(3)]).await.unwrap();
    assert!(
        term_of(&node, 0) > after_supervisor,
        "a process restart resumed term {after_supervisor} instead of winning a new one"
    );
    let stored = node
        .read_all(&[Matcher::equal("__name__", "sup")], 0, 10 * S)
        .await
        .unwrap();
    assert_eq!(stored[0].1.len(), 3, "every acknowledged write survives");
    node.shutdown().await;
}

//! Three cluster nodes in one process over the in-process bus: series spread
//! over shards, writes through any node, linearizable reads from any node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::read::{ShardAnswer, ShardRead};
use chronicle_cluster::{placement, shard_of, ClusterConfig, ClusterNode};
use chronicle_storage::{Label, Matcher, Point, ShardConfig};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;

fn points(host: &str, n: i64) -> Vec<Point> {
    (0..n)
        .map(|i| Point::new("cpu", vec![Label::new("host", host)], i as f64, i * S))
        .collect()
}

#[test]
fn placement_spreads_shards_over_distinct_nodes() {
    let p = placement(&[3, 1, 2], 4, 2);
    assert_eq!(p, vec![vec![1, 2], vec![2, 3], vec![3, 1], vec![1, 2]]);
    // More replicas than nodes: every node, once.
    assert_eq!(placement(&[1, 2], 1, 3), vec![vec![1, 2]]);
    // The shard of a series ignores label order and empty labels.
    let a = shard_of("m", &[Label::new("a", "1"), Label::new("b", "2")], 16);
    let b = shard_of(
        "m",
        &[
            Label::new("b", "2"),
            Label::new("a", "1"),
            Label::new("c", ""),
        ],
        16,
    );
    assert_eq!(a, b);
    // Placement is on disk: the hash is xxh64 of the metric and 0xff-separated
    // sorted pairs, and must not change between versions.
    let key = b"m\xffa\xff1\xffb\xff2";
    assert_eq!(
        u64::from(a),
        xxhash_rust::xxh64::xxh64(key, 0) % 16,
        "placement hash changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_from_any_node() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 3;
        // Two replicas of three nodes: some writes land on a node without a
        // replica of their shard and must be forwarded.
        config.replication = 2;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    // Every shard gets a leader.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, shards) = nodes[0].status();
        let mut known = vec![None; 3];
        for n in &nodes {
            for s in n.status().1 {
                known[s.id as usize] = known[s.id as usize].or(s.leader);
            }
        }
        if known.iter().all(Option::is_some) && shards.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shards without a leader: {known:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let hosts: Vec<String> = (0..12).map(|h| format!("h{h}")).collect();
    for (i, host) in hosts.iter().enumerate() {
        let written = nodes[i % 3].write(&points(host, 10)).await.unwrap();
        assert_eq!(written, 10, "write through node {}", i % 3 + 1);
    }
    let shards_used: std::collections::BTreeSet<u32> = hosts
        .iter()
        .map(|h| shard_of("cpu", &[Label::new("host", h.as_str())], 3))
        .collect();
    assert!(shards_used.len() > 1, "the test data should span shards");

    // Linearizable: every acknowledged write is visible from every node at once.
    for n in &nodes {
        let series = n
            .read_all(&[Matcher::equal("__name__", "cpu")], 0, i64::MAX)
            .await
            .unwrap();
        assert_eq!(series.len(), 12, "node {}", n.node_id());
        assert!(series.iter().all(|(_, s)| s.len() == 10));
    }
    // The query actor's way in, from a blocking thread: one shard this node
    // leads is read on that thread, the others (led here or elsewhere) as
    // `query` reads them; the answer is the same.
    let read = ShardRead::Series {
        matchers: vec![Matcher::equal("__name__", "cpu")],
        start: 0,
        end: i64::MAX,
        max_samples: 1_000,
    };
    for n in &nodes {
        let expected = n.query(&read).await.unwrap();
        let (node, read, runtime) = (n.clone(), read.clone(), tokio::runtime::Handle::current());
        let answer = tokio::task::spawn_blocking(move || {
            runtime.block_on(node.query_on_blocking_thread(&read))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer, expected, "node {}", n.node_id());
        let ShardAnswer::Series(Some(series)) = answer else {
            panic!("node {}: {answer:?}", n.node_id());
        };
        assert_eq!(series.len(), 12);
    }
    let (members, shards) = nodes[0].status();
    assert_eq!(members, vec![1, 2, 3]);
    assert!(shards.iter().all(|s| s.replicas.len() == 2));
    for n in nodes {
        n.shutdown().await;
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moved_away_while_its_node_was_down_is_reclaimed_after_a_restart() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let config = |id: u64| {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        config
    };
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(ClusterNode::start(config(id), bus.clone()).await.unwrap());
    }
    wait_until("shard 0 has a leader", Duration::from_secs(15), || {
        nodes.iter().any(|n| n.status().1[0].leader.is_some())
    })
    .await;
    assert_eq!(nodes[0].write(&points("a", 10)).await.unwrap(), 10);

    // Node 4 takes node 3's replica, then goes down and is moved out.
    let fourth = ClusterNode::start(config(4), bus.clone()).await.unwrap();
    nodes[0].move_replica(0, 3, 4).await.unwrap();
    let replica = dir.path().join("n4").join("shard-0");
    assert!(replica.exists());
    fourth.shutdown().await;
    drop(fourth);
    nodes[0].move_replica(0, 4, 3).await.unwrap();
    assert_eq!(nodes[0].write(&points("b", 10)).await.unwrap(), 10);
    assert!(replica.exists(), "nobody could tell the stopped node");

    // Back up, its replica's log still counts it a member; the group's
    // leader does not, so the node lets go of the replica.
    let fourth = ClusterNode::start(config(4), bus.clone()).await.unwrap();
    wait_until(
        "the stale replica is deleted",
        Duration::from_secs(30),
        || !replica.exists(),
    )
    .await;
    let (_, shards) = nodes[0].status();
    let mut voters = shards[0].replicas.clone();
    voters.sort_unstable();
    assert_eq!(voters, vec![1, 2, 3]);
    // The group never noticed; the restarted node still reads through it.
    assert_eq!(nodes[1].write(&points("c", 10)).await.unwrap(), 10);
    let series = fourth
        .read_all(&[Matcher::equal("__name__", "cpu")], 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(series.len(), 3);
    fourth.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_its_group_keeps_its_replica() {
    // The other side of the rule: silence alone never deletes a replica.
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut config = ClusterConfig::new(1, vec![1, 2, 3], dir.path().join("n1"));
    config.shards = 1;
    let lonely = ClusterNode::start(config, bus.clone()).await.unwrap();
    let replica = dir.path().join("n1").join("shard-0");
    // Several checks' worth of time with no leader anywhere.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert!(
            replica.exists(),
            "a replica was deleted without a leader's word"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open: Vec<_> = lonely
        .local_shards()
        .iter()
        .map(|(_, s)| Arc::downgrade(s))
        .collect();
    lonely.shutdown().await;
    drop(lonely);
    // RocksDB must be closed before the process exits: a database still open
    // in a task at exit aborts the process ("pthread lock: Invalid argument").
    wait_until(
        "the replica's database closed",
        Duration::from_secs(10),
        || open.iter().all(|w| w.strong_count() == 0),
    )
    .await;
}

//! Three cluster nodes in one process over the in-process bus: series spread
//! over shards, writes through any node, linearizable reads from any node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
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
    let (members, shards) = nodes[0].status();
    assert_eq!(members, vec![1, 2, 3]);
    assert!(shards.iter().all(|s| s.replicas.len() == 2));
    for n in nodes {
        n.shutdown().await;
    }
}

//! A keyed write retried after its leader crashed is not applied again: the
//! key's record is replicated with the log, so a retry that reaches another
//! node (forwarded to a new leader after a failover) cannot overwrite a newer
//! write. The batch spans two shards; each keeps its own record.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{shard_of, ClusterConfig, ClusterNode, KeySpan};
use chronicle_storage::{Label, Matcher, Point, PointBatch, ShardConfig};
use tempfile::TempDir;

const T: i64 = 1_767_225_600_000_000_000;
const HOSTS: usize = 8;

fn batch(value: f64) -> PointBatch {
    PointBatch::from_points(
        (0..HOSTS)
            .map(|h| Point::new("order", vec![Label::new("host", format!("h{h}"))], value, T))
            .collect(),
    )
}

/// Writes `value` to every host's series under `key`.
async fn keyed(node: &Arc<ClusterNode>, value: f64, key: &str) -> usize {
    let keys = [KeySpan {
        key: key.into(),
        start: 0,
        len: HOSTS,
    }];
    node.submit_keyed(batch(value), &keys)
        .await
        .expect("submitted")
        .wait()
        .await
        .expect("committed")
}

/// Every host's value at T, read linearizably through `node`.
async fn values(node: &Arc<ClusterNode>) -> Vec<f64> {
    let series = node
        .read_all(&[Matcher::equal("__name__", "order")], T - 1, T + 1)
        .await
        .expect("read");
    assert_eq!(series.len(), HOSTS, "through node {}", node.node_id());
    series
        .iter()
        .map(|(_, samples)| {
            assert_eq!(
                samples.len(),
                1,
                "through node {}: {series:?}",
                node.node_id()
            );
            samples[0].value
        })
        .collect()
}

/// The leader of each shard, once every shard has one that is not `dead`.
async fn leaders(nodes: &[Arc<ClusterNode>], dead: Option<u64>) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut known = vec![None; 2];
        for n in nodes {
            for s in n.status().1 {
                if s.leader.is_some() && s.leader != dead {
                    known[s.id as usize] = s.leader;
                }
            }
        }
        if known.iter().all(Option::is_some) {
            return known.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "shards without a leader: {known:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_retried_after_its_leader_crashed_is_not_applied_again() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 2;
        config.replication = 3;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    let shards: BTreeSet<u32> = (0..HOSTS)
        .map(|h| shard_of("order", &[Label::new("host", format!("h{h}"))], 2))
        .collect();
    assert_eq!(shards.len(), 2, "the batch should span both shards");
    let led = leaders(&nodes, None).await;

    // The first attempt goes through a node that does not lead shard 0, so
    // that part is forwarded; the client then writes a newer value.
    let via = nodes
        .iter()
        .find(|n| n.node_id() != led[0])
        .unwrap()
        .clone();
    assert_eq!(keyed(&via, 1.0, "order-17").await, HOSTS);
    assert_eq!(via.write_batch(batch(2.0)).await.unwrap(), HOSTS);

    // Shard 0's leader crashes (no handover); the survivors elect another.
    let dead = led[0];
    let crashed = nodes.remove(nodes.iter().position(|n| n.node_id() == dead).unwrap());
    crashed.shutdown().await;
    drop(crashed);
    let now_led = leaders(&nodes, Some(dead)).await;
    assert_ne!(now_led[0], dead);

    // The retry, through each survivor: acknowledged, not applied.
    for n in &nodes {
        keyed(n, 1.0, "order-17").await;
        for n in &nodes {
            assert_eq!(
                values(n).await,
                vec![2.0; HOSTS],
                "a retry overwrote the newer write (read through node {})",
                n.node_id()
            );
        }
    }
    // Another key is another write, in both shards.
    assert_eq!(keyed(&nodes[0], 3.0, "order-18").await, HOSTS);
    for n in &nodes {
        assert_eq!(values(n).await, vec![3.0; HOSTS]);
    }
    // Without a key the same retry overwrites: what the key prevents.
    nodes[1].write_batch(batch(1.0)).await.unwrap();
    assert_eq!(values(&nodes[0]).await, vec![1.0; HOSTS]);
    for n in nodes {
        n.shutdown().await;
    }
}

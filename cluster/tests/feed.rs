//! The change feed across a leader failure: a consumer on a surviving node
//! sees every acknowledged write once, with no gap, while the leader of the
//! shard being written stops mid-way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::feed::FeedItem;
use chronicle_cluster::{shard_of, ClusterConfig, ClusterNode};
use chronicle_storage::{Label, Point, ShardConfig};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_sees_every_acknowledged_write_once_across_a_leader_failure() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 2;
        config.write_event_points = true;
        config.request_timeout = Duration::from_secs(3);
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    let labels = vec![Label::new("host", "a")];
    let shard = shard_of("feed_test", &labels, 2) as usize;
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        if let Some(l) = nodes.iter().find_map(|n| n.status().1[shard].leader) {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let others: Vec<Arc<ClusterNode>> = nodes
        .iter()
        .filter(|n| n.node_id() != leader)
        .cloned()
        .collect();
    let mut feed = others[1].write_feed().await.unwrap();

    // Batches of 5 points, one at a time, through a survivor; the leader of
    // their shard stops after a second.
    let writer = {
        let (node, labels) = (others[0].clone(), labels.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let stop_at = Instant::now() + Duration::from_secs(4);
            let mut batch = 0i64;
            while Instant::now() < stop_at {
                let points: Vec<Point> = (0..5)
                    .map(|i| Point::new("feed_test", labels.clone(), 1.0, (batch * 5 + i) * S))
                    .collect();
                if node.write(&points).await.is_ok() {
                    acked.extend(points.iter().map(|p| p.timestamp));
                }
                batch += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = nodes.iter().position(|n| n.node_id() == leader).unwrap();
    nodes.remove(victim).shutdown().await;
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 100,
        "only {} points acknowledged",
        acked.len()
    );

    // Every acknowledged point arrives once; nothing is reported missing.
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut last_index = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !acked.iter().all(|t| seen.contains_key(t)) {
        assert!(
            Instant::now() < deadline,
            "acknowledged points never arrived"
        );
        let item = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await
            .expect("an event within 20 s")
            .expect("the feed is open");
        match item {
            FeedItem::Write(e) if e.metric == "feed_test" => {
                assert!(e.index > last_index, "index order");
                last_index = e.index;
                for (_, t, _) in e.points.expect("points asked for") {
                    *seen.entry(t).or_default() += 1;
                }
            }
            FeedItem::Write(_) => {}
            FeedItem::Gap { .. } => panic!("a gap: {item:?}"),
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "points delivered twice: {twice:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

/// The resumable read: every committed point batch of a shard after an
/// index, in pages, from the node's own replica and from a node that holds
/// no replica of the shard (asked over the bus); nothing twice, nothing
/// left out, and an index past the end is simply "nothing newer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_batches_are_read_after_any_index_from_any_node() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=2u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2], dir.path().join(format!("n{id}")));
        // One replica per shard: each node holds one of the two shards.
        config.shards = 2;
        config.replication = 1;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    let labels = vec![Label::new("host", "a")];
    let shard = shard_of("resumed", &labels, 2);
    // 300 batches of 400 points: about 2 MB, so several pages.
    for b in 0..300i64 {
        let points: Vec<Point> = (0..400)
            .map(|i| {
                Point::new(
                    "resumed",
                    labels.clone(),
                    (b * 400 + i) as f64,
                    1_700_000_000 * S + (b * 400 + i) * S,
                )
            })
            .collect();
        nodes[0].write(&points).await.unwrap();
    }
    let holder = nodes
        .iter()
        .find(|n| n.local_shards().iter().any(|(s, _)| *s == shard))
        .expect("a node holds the shard");
    let other = nodes
        .iter()
        .find(|n| n.node_id() != holder.node_id())
        .unwrap();
    for reader in [holder, other] {
        let mut after = 0;
        let mut values = Vec::new();
        let mut pages = 0;
        loop {
            let page = reader.committed_batches(shard, after).await.unwrap();
            assert_eq!(page.compacted, None);
            if page.batches.is_empty() && page.next == after {
                break;
            }
            pages += 1;
            for batch in &page.batches {
                assert!(batch.index > after && batch.index <= page.next);
                assert_eq!(batch.shard, shard);
                for p in batch.points.view().unwrap().iter() {
                    values.push(p.value as i64);
                }
            }
            after = page.next;
        }
        assert_eq!(
            values,
            (0..120_000).collect::<Vec<_>>(),
            "node {}",
            reader.node_id()
        );
        assert!(pages >= 2, "{pages} pages");
        // Past the end: nothing newer, from where it was asked.
        let page = reader
            .committed_batches(shard, after + 1_000)
            .await
            .unwrap();
        assert!(page.batches.is_empty() && page.next == after + 1_000);
    }
    // A shard the cluster does not have is refused.
    assert!(nodes[0].committed_batches(7, 0).await.is_err());
    for n in nodes {
        n.shutdown().await;
    }
}

/// A forwarded write that reaches the leader twice (a retry after an answer
/// that never came looks the same to the leader) applies once: the feed
/// shows each point once, and the second copy wrote nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_delivered_twice_applies_once() {
    use chronicle_bus::{Fault, FaultController, FaultyBus};

    let dir = TempDir::new().unwrap();
    let local: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let faults = FaultController::new(7);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.write_event_points = true;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        let bus: Arc<dyn Bus> = Arc::new(FaultyBus::new(
            local.clone(),
            format!("n{id}"),
            faults.clone(),
        ));
        nodes.push(ClusterNode::start(config, bus).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        if let Some(l) = nodes.iter().find_map(|n| n.status().1[0].leader) {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let via = nodes
        .iter()
        .find(|n| n.node_id() != leader)
        .unwrap()
        .clone();
    let mut feed = via.write_feed().await.unwrap();
    faults
        .add_rule(&format!("chronicle.cluster.0.{leader}"), Fault::Duplicate)
        .unwrap();

    let labels = vec![Label::new("host", "a")];
    let mut expected = Vec::new();
    for batch in 0..5i64 {
        let points: Vec<Point> = (0..4)
            .map(|i| Point::new("twice", labels.clone(), 1.0, (batch * 4 + i) * S))
            .collect();
        assert_eq!(via.write(&points).await.unwrap(), 4);
        expected.extend(points.iter().map(|p| p.timestamp));
    }
    assert!(faults.injected() >= 5, "the writes were not duplicated");
    faults.clear();
    // A marker written after: once it arrives, every earlier event has.
    via.write(&[Point::new("twice_end", labels.clone(), 1.0, 0)])
        .await
        .unwrap();
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await
            .expect("an event within 20 s")
            .expect("the feed is open");
        match item {
            FeedItem::Write(e) if e.metric == "twice" => {
                for (_, t, _) in e.points.expect("points asked for") {
                    *seen.entry(t).or_default() += 1;
                }
            }
            FeedItem::Write(e) if e.metric == "twice_end" => break,
            FeedItem::Write(_) => {}
            FeedItem::Gap { .. } => panic!("a gap: {item:?}"),
        }
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), expected);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "points applied twice: {twice:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

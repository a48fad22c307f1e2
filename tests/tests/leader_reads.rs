//! A leader that cannot commit must not hold a read forever (chaos finding:
//! `cluster/tests/state.rs`'s compare-and-set test hung for minutes once
//! under load). openraft 0.9's `ensure_linearizable` waits without limit for
//! the read index to apply; a new leader whose first entry cannot commit,
//! while its heartbeats still keep the other member following, never gets
//! there. The read now fails as unavailable within a bounded time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{ClusterConfig, ClusterNode};
use chronicle_storage::ShardConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_commit_answers_a_read_within_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    nodes[0]
        .state("reads")
        .unwrap()
        .put("k", "v")
        .await
        .unwrap();
    let old = nodes[0].status().1[0].leader.expect("a leader");

    // From now on no append with entries reaches anyone; heartbeats do.
    fail::cfg(chronicle_cluster::network::APPEND_ENTRIES, "return").unwrap();
    let old_node = nodes.iter().position(|n| n.node_id() == old).unwrap();
    nodes.remove(old_node).shutdown().await;
    // A survivor takes over; its first entry cannot commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(n) = nodes
            .iter()
            .find(|n| n.status().1[0].leader == Some(n.node_id()))
        {
            break n.clone();
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let started = Instant::now();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        leader.state("reads").unwrap().get("k"),
    )
    .await;
    fail::remove(chronicle_cluster::network::APPEND_ENTRIES);
    let answer = read.expect("the read on a leader that cannot commit hung");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // Either it committed after all (the entry raced the failpoint) or it
    // says the shard is unavailable; never a hang.
    if let Err(e) = answer {
        assert!(e.to_string().contains("could not confirm a read"), "{e}");
    }
    for n in nodes {
        n.shutdown().await;
    }
}

//! The replicated state across three nodes in one process: a register
//! workload of compare-and-sets through the followers while the leader of
//! the namespace's group stops, and a watcher that must see every change
//! once, in order, across the leader change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{ClusterConfig, ClusterNode};
use chronicle_storage::state::ChangeKind;
use chronicle_storage::ShardConfig;
use tempfile::TempDir;

async fn cluster(dir: &TempDir) -> Vec<Arc<ClusterNode>> {
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 2;
        config.request_timeout = Duration::from_secs(3);
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    nodes
}

async fn leader_of(nodes: &[Arc<ClusterNode>], shard: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for n in nodes {
            if let Some(l) = n.status().1[shard as usize].leader {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "shard {shard} has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_holds_and_a_watch_sees_every_change_once_across_a_leader_failure() {
    let dir = TempDir::new().unwrap();
    let mut nodes = cluster(&dir).await;
    let shard = nodes[0].state_shard("register");
    let leader = leader_of(&nodes, shard).await;
    let survivors: Vec<Arc<ClusterNode>> = nodes
        .iter()
        .filter(|n| n.node_id() != leader)
        .cloned()
        .collect();

    let watcher = survivors[1].state("register").unwrap();
    let mut watch = watcher.watch("", 0, 16);

    // Each client reads the register and sets it from the revision it read.
    let stop_at = Instant::now() + Duration::from_secs(5);
    let clients = (0..4).map(|c| {
        let store = survivors[c % 2].state("register").unwrap();
        tokio::spawn(async move {
            let (mut won, mut unknown) = (Vec::new(), 0usize);
            let mut n = 0;
            while Instant::now() < stop_at {
                n += 1;
                let value = format!("c{c}-{n}");
                let Ok(current) = store.get("k").await else {
                    unknown += 1;
                    continue;
                };
                let from = current.map_or(0, |e| e.revision);
                match store.compare_and_set("k", from, value.clone()).await {
                    Ok(Ok(revision)) => won.push((from, revision, value)),
                    Ok(Err(_)) => {}
                    // Committed or not: unknown, and not counted as a win.
                    Err(_) => unknown += 1,
                }
            }
            (won, unknown)
        })
    });
    let clients: Vec<_> = clients.collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = nodes
        .iter()
        .position(|n| n.node_id() == leader)
        .expect("the leader is a node");
    let stopped = nodes.remove(victim);
    stopped.shutdown().await;
    drop(stopped);

    let mut wins = Vec::new();
    let mut unknown = 0;
    for c in clients {
        let (w, u) = c.await.unwrap();
        wins.extend(w);
        unknown += u;
    }
    assert!(wins.len() > 20, "only {} compare-and-sets won", wins.len());

    // No revision was won twice: each win moved the register from the
    // revision it read, so two wins from one revision mean a lost update.
    let mut from_revisions = BTreeSet::new();
    for (from, _, value) in &wins {
        assert!(
            from_revisions.insert(*from),
            "two compare-and-sets won from revision {from} (one was {value})"
        );
    }

    // The history holds every acknowledged win, as a chain: each put's value
    // is the one its client wrote from the previous put's revision.
    let store = survivors[0].state("register").unwrap();
    let mut history = Vec::new();
    let mut after = 0;
    loop {
        let c = store
            .changes("", after, 1000, Duration::ZERO)
            .await
            .unwrap();
        history.extend(c.changes);
        after = c.revision;
        if !c.more {
            break;
        }
    }
    let by_revision: BTreeMap<u64, String> = history
        .iter()
        .map(|c| (c.revision, String::from_utf8(c.value.clone()).unwrap()))
        .collect();
    for (from, revision, value) in &wins {
        assert_eq!(
            by_revision.get(revision),
            Some(value),
            "acknowledged put at revision {revision} (from {from}) missing"
        );
    }
    let final_revision = history.last().expect("changes").revision;
    let current = store.get("k").await.unwrap().unwrap();
    assert_eq!(current.revision, final_revision);

    // The watcher saw every change once, in revision order, across the
    // leader change.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.last().map(|(r, _)| *r) != Some(final_revision) {
        assert!(Instant::now() < deadline, "the watch fell behind");
        let change = tokio::time::timeout(Duration::from_secs(20), watch.recv())
            .await
            .expect("a change within 20 s")
            .expect("the watch is open")
            .expect("no watch error");
        assert_eq!(change.kind, ChangeKind::Put);
        seen.push((change.revision, String::from_utf8(change.value).unwrap()));
    }
    let expected: Vec<(u64, String)> = by_revision.into_iter().collect();
    assert_eq!(seen, expected, "the watch missed, repeated or reordered");
    eprintln!(
        "{} wins, {unknown} unknown outcomes, {} changes watched; leader {leader} stopped",
        wins.len(),
        seen.len()
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_ttl_is_deleted_by_the_leader_unless_renewed() {
    let dir = TempDir::new().unwrap();
    let nodes = cluster(&dir).await;
    let shard = nodes[0].state_shard("leases");
    leader_of(&nodes, shard).await;
    let store = nodes[1].state("leases").unwrap();
    let first = store
        .put_with_ttl("session/a", "alive", Duration::from_millis(800))
        .await
        .unwrap();
    store
        .put_with_ttl("session/b", "alive", Duration::from_millis(800))
        .await
        .unwrap();
    let a = store
        .get("session/a")
        .await
        .unwrap()
        .expect("present at first");
    assert!(a.expires > 0);
    // b is renewed before it runs out, for longer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .put_with_ttl("session/b", "still alive", Duration::from_secs(30))
        .await
        .unwrap();
    // a leaves: deleted by the leader (a change in the history) within a
    // couple of seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let changes = store
            .changes("session/a", first, 100, Duration::ZERO)
            .await
            .unwrap();
        if changes
            .changes
            .iter()
            .any(|c| c.kind == ChangeKind::Delete && c.key == "session/a")
        {
            break;
        }
        assert!(Instant::now() < deadline, "session/a was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.get("session/a").await.unwrap().is_none());
    let b = store
        .get("session/b")
        .await
        .unwrap()
        .expect("renewed: kept");
    assert_eq!(b.value, b"still alive");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_limit_replicate_and_read_through_a_follower_and_pages_stay_under_a_message()
{
    use chronicle_storage::state::{MAX_READ_BYTES, MAX_STATE_VALUE_BYTES};
    let dir = TempDir::new().unwrap();
    let nodes = cluster(&dir).await;
    let shard = nodes[0].state_shard("big");
    let leader = leader_of(&nodes, shard).await;
    let follower = nodes.iter().find(|n| n.node_id() != leader).unwrap();
    let store = follower.state("big").unwrap();
    // The in-process bus refuses messages over 1 MiB, as NATS does by default.
    let largest = vec![7u8; MAX_STATE_VALUE_BYTES];
    store.put("big/1", largest.clone()).await.unwrap();
    store.put("big/2", vec![8u8; 500 << 10]).await.unwrap();
    store.put("big/3", vec![9u8; 500 << 10]).await.unwrap();
    assert!(store
        .put("big/4", vec![0u8; MAX_STATE_VALUE_BYTES + 1])
        .await
        .is_err());
    // Just under a bus message: refused before it reaches the log, where it
    // could never be sent to a follower.
    assert!(store.put("big/4", vec![0u8; 1_000_000]).await.is_err());
    assert_eq!(store.get("big/1").await.unwrap().unwrap().value, largest);
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = store.scan("big/", after.as_deref(), 1000).await.unwrap();
        let bytes: usize = page.iter().map(|e| e.value.len()).sum();
        assert!(
            page.len() == 1 || bytes <= MAX_READ_BYTES,
            "a page of {bytes} bytes"
        );
        keys.extend(page.iter().map(|e| e.key.clone()));
        after = page.last().map(|e| e.key.clone());
        if !more {
            break;
        }
    }
    assert_eq!(keys, ["big/1", "big/2", "big/3"]);
    let changes = store
        .changes("big/", 0, 1000, Duration::ZERO)
        .await
        .unwrap();
    assert!(changes.more, "three large changes do not fit one answer");
    // Every replica applies them (no entry stuck over the message limit).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied: Vec<Option<u64>> = nodes.iter().map(|n| n.applied_index(shard)).collect();
        if applied.iter().all(|a| *a == applied[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas stuck at {applied:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Chaos finding (clock class): reads judged TTL expiry by the reading
/// node's own clock, so a node whose clock ran ahead answered "absent" for
/// a key the leader still held, and nodes disagreed. Reads now show a key
/// until the leader's replicated delete applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_key_reads_the_same_on_every_node_whatever_their_clocks_say() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        // No leader sweeps during the test: only the clock changes.
        config.lease_check = Duration::from_secs(3600);
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    leader_of(&nodes, nodes[0].state_shard("leases")).await;
    let store = nodes[0].state("leases").unwrap();
    store
        .put_with_ttl("session/a", "alive", Duration::from_secs(600))
        .await
        .unwrap();
    // This process's clock jumps an hour ahead: past the TTL.
    chronicle_cluster::clock::set_offset_ns(3_600 * 1_000_000_000);
    for node in &nodes {
        let found = node
            .state("leases")
            .unwrap()
            .get("session/a")
            .await
            .unwrap();
        assert!(
            found.is_some(),
            "node {} hid a key the leader has not deleted",
            node.node_id()
        );
    }
    chronicle_cluster::clock::set_offset_ns(0);
    for n in nodes {
        n.shutdown().await;
    }
}

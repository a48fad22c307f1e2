//! Retention as a replicated operation: the leader proposes "drop what is
//! before T" with T fixed in the entry; every replica deletes exactly the same
//! data, whether it held it in chunks or still in its head.

use std::sync::Arc;
use std::time::Duration;

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{ClusterConfig, ClusterNode};
use chronicle_storage::{AggregateFunction, DownsampleRule, Label, Matcher, Point, ShardConfig};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;
const H: i64 = 3600 * S;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_after_retention() {
    let dir = TempDir::new().unwrap();
    let nodes = three_with_retention(&dir).await;
    let now = 1_767_225_600 * S + 12 * H; // a window boundary
                                          // Ten hours of data, one point a minute, over two series.
    nodes[0].write(&ten_hours(now, 2)).await.unwrap();
    // One replica has everything in chunks, the others keep their heads.
    let leader_shard = nodes[1].local_shards();
    for (_, shard) in &leader_shard {
        shard.flush().unwrap();
    }
    let leader = agreed_leader(&nodes).await;
    let proposed = leader.propose_retention(now).await.unwrap();
    assert_eq!(proposed.len(), 1);
    let (shard, index) = proposed[0];
    assert_eq!(shard, 0);
    // Every replica applies it.
    let want_from = now - 2 * H;
    // Up to the entry's own index: the leader's applied-index metric is
    // published a moment after client_write returns, so reading it here
    // could name the entry before and let a replica be read too early.
    applied_everywhere(&nodes, index).await;
    let answers: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (_, shard) = n.local_shards().pop().unwrap();
            shard
                .query(&[Matcher::equal("__name__", "ret")], i64::MIN, i64::MAX)
                .unwrap()
        })
        .collect();
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &answers[0], "replica {} differs from replica 1", i + 1);
    }
    let kept = &answers[0];
    assert_eq!(kept.len(), 2);
    for (_, samples) in kept {
        assert!(
            samples.iter().all(|s| s.timestamp >= want_from),
            "old data left"
        );
        // Everything from the cutoff on is still there: two hours, a point a minute.
        assert_eq!(samples.len(), 120);
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_after_a_delete_and_a_replay_deletes_the_same() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let start_node = |id: u64| {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.replication = 3;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        let bus = bus.clone();
        async move { ClusterNode::start(config, bus).await }
    };
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(id).await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    let t0 = 1_767_225_600 * S;
    // Six hours, a point a minute, two series; some in chunks, some in heads.
    let points = |from: i64, to: i64, value: f64| -> Vec<Point> {
        (from..to)
            .flat_map(|m| {
                ["a", "b"]
                    .map(|h| Point::new("del", vec![Label::new("host", h)], value, t0 + m * 60 * S))
            })
            .collect()
    };
    nodes[0].write(&points(0, 360, 1.0)).await.unwrap();
    for (_, shard) in nodes[1].local_shards() {
        shard.flush().unwrap();
    }
    // Delete host=a in [1h, 3h] (inclusive), then write into the range again:
    // a replay of the delete must not delete what came after it.
    let matchers = [
        Matcher::equal("__name__", "del"),
        Matcher::equal("host", "a"),
    ];
    nodes[2]
        .delete_series(&matchers, t0 + H, t0 + 3 * H)
        .await
        .unwrap();
    nodes[0].write(&points(150, 151, 2.0)[..1]).await.unwrap();
    let read_all = |n: &Arc<ClusterNode>| {
        let (_, shard) = n.local_shards().pop().unwrap();
        shard
            .query(&[Matcher::equal("__name__", "del")], i64::MIN, i64::MAX)
            .unwrap()
    };
    let settle = |nodes: &[Arc<ClusterNode>]| {
        let index = nodes
            .iter()
            .filter_map(|n| n.applied_index(0))
            .max()
            .unwrap();
        let nodes = nodes.to_vec();
        async move {
            for n in &nodes {
                for _ in 0..500 {
                    if n.applied_index(0).unwrap() >= index {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    settle(&nodes).await;
    // Followers apply behind the leader (on a loaded machine, seconds
    // behind): they must agree once they have applied everything.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut answers: Vec<_> = nodes.iter().map(read_all).collect();
    while answers.iter().any(|a| a != &answers[0]) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answers = nodes.iter().map(read_all).collect();
    }
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &answers[0], "replica {} differs from replica 1", i + 1);
    }
    let by_host = |answer: &Vec<(chronicle_storage::SeriesKey, Vec<chronicle_storage::Sample>)>,
                   host: &str| {
        answer
            .iter()
            .find(|(k, _)| k.labels.iter().any(|l| l.value == host))
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    let a = by_host(&answers[0], "a");
    let b = by_host(&answers[0], "b");
    assert_eq!(b.len(), 360, "host b untouched");
    // 360 minutes minus [60, 180] inclusive (121 minutes), plus the rewrite at 150.
    assert_eq!(a.len(), 360 - 121 + 1);
    assert!(a
        .iter()
        .all(|s| s.timestamp < t0 + H || s.timestamp > t0 + 3 * H || s.value == 2.0));

    // Restart a replica: it replays the log after its durable point (the
    // delete included) and must end up with exactly the same data.
    let restarted = nodes.remove(1);
    restarted.shutdown().await;
    drop(restarted);
    // The old member's log store closes on its own threads: its RocksDB
    // lock may still be held for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let again = loop {
        match start_node(2).await {
            Ok(node) => break node,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("restart: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    nodes.insert(1, again);
    assert!(nodes[1].wait_for_leaders(Duration::from_secs(20)).await);
    settle(&nodes).await;
    assert_eq!(
        read_all(&nodes[1]),
        answers[0],
        "the restarted replica differs"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// Downsampling as replicated entries: the leader fixes the rule and the
/// end of each run in the entry, every replica writes the same output
/// series from its own copy of the data (in chunks on one, in heads on the
/// others), a replay after a restart writes it again exactly, and a run with
/// nothing due proposes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_after_downsampling_and_a_replay_writes_the_same() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let rules = vec![
        DownsampleRule {
            window: Duration::from_secs(300),
            function: AggregateFunction::Mean,
            retention: None,
            matchers: vec![],
        },
        DownsampleRule {
            window: Duration::from_secs(3600),
            function: AggregateFunction::Max,
            retention: None,
            matchers: vec![Matcher::equal("host", "a")],
        },
    ];
    let start_node = |id: u64| {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.replication = 3;
        config.shard = ShardConfig {
            sync_writes: false,
            downsample: rules.clone(),
            ..ShardConfig::default()
        };
        // Proposed by hand below, not by the timer.
        config.retention_check = Duration::from_secs(3600);
        config.downsample_delay = Duration::ZERO;
        let bus = bus.clone();
        async move { ClusterNode::start(config, bus).await }
    };
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(id).await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    let t0 = 1_767_225_600 * S;
    // Three hours, a point a minute, two series: value = minute.
    let points: Vec<Point> = (0..180)
        .flat_map(|m| {
            ["a", "b"]
                .map(|h| Point::new("ds", vec![Label::new("host", h)], m as f64, t0 + m * 60 * S))
        })
        .collect();
    nodes[0].write(&points).await.unwrap();
    for (_, shard) in nodes[1].local_shards() {
        shard.flush().unwrap();
    }
    let leader = agreed_leader(&nodes).await;
    // Up to two hours and a half: 30 five-minute windows, 2 complete hours.
    let now = t0 + 2 * H + 30 * 60 * S;
    let entries = leader.propose_downsampling(now, 64).await.unwrap();
    assert_eq!(entries, 2, "one entry per rule");
    assert_eq!(
        leader.propose_downsampling(now, 64).await.unwrap(),
        0,
        "nothing new is due"
    );
    let read = |n: &Arc<ClusterNode>, metric: &str| {
        let (_, shard) = n.local_shards().pop().unwrap();
        shard
            .query(&[Matcher::equal("__name__", metric)], i64::MIN, i64::MAX)
            .unwrap()
    };
    // Raft's applied index is published a moment after the apply (and
    // followers may be seconds behind on a loaded machine): the replicas
    // must agree once they have applied everything.
    let agreed = |nodes: &[Arc<ClusterNode>], index: u64| {
        let nodes = nodes.to_vec();
        async move {
            for n in &nodes {
                for _ in 0..3000 {
                    if n.applied_index(0).unwrap() >= index {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let answers = loop {
                let answers: Vec<_> = nodes
                    .iter()
                    .map(|n| (read(n, "ds:5m:mean"), read(n, "ds:1h:max")))
                    .collect();
                if answers.iter().all(|a| a == &answers[0]) || std::time::Instant::now() > deadline
                {
                    break answers;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            for (i, a) in answers.iter().enumerate() {
                assert_eq!(a, &answers[0], "replica {} differs from replica 1", i + 1);
            }
            answers
        }
    };
    let answers = agreed(&nodes, leader.applied_index(0).unwrap()).await;
    let (mean, max) = &answers[0];
    assert_eq!(mean.len(), 2, "both hosts");
    for (key, samples) in mean {
        assert_eq!(key.labels.len(), 1, "labels kept: {key:?}");
        assert_eq!(samples.len(), 30);
        // Window k holds minutes 5k..5k+4: mean 5k + 2.
        for (k, s) in samples.iter().enumerate() {
            assert_eq!(s.timestamp, t0 + k as i64 * 300 * S);
            assert_eq!(s.value, 5.0 * k as f64 + 2.0);
        }
    }
    assert_eq!(max.len(), 1, "only host a matches the second rule");
    assert_eq!(
        max[0].1.iter().map(|s| s.value).collect::<Vec<_>>(),
        vec![59.0, 119.0]
    );
    // A downsampled series is never downsampled again.
    assert!(read(&nodes[0], "ds:5m:mean:5m:mean").is_empty());

    // Restart a replica: it replays the entries after its durable point
    // and must write exactly the same series again.
    let restarted = nodes.remove(2);
    restarted.shutdown().await;
    drop(restarted);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let again = loop {
        match start_node(3).await {
            Ok(node) => break node,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("restart: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    nodes.push(again);
    assert!(nodes[2].wait_for_leaders(Duration::from_secs(20)).await);
    // The rest of the data, then a run covering it: every replica,
    // the restarted one too, goes on from the same point.
    let leader = agreed_leader(&nodes).await;
    assert_eq!(
        leader.propose_downsampling(t0 + 3 * H, 64).await.unwrap(),
        2
    );
    let answers = agreed(&nodes, leader.applied_index(0).unwrap()).await;
    assert!(answers[0].0.iter().all(|(_, s)| s.len() == 36));
    assert_eq!(answers[0].1[0].1.len(), 3);
    for n in nodes {
        n.shutdown().await;
    }
}

/// A per-metric rule deletes the old raw samples of the series it matches,
/// and only those, the same on every replica; proposed again (a new leader,
/// the next period), the same cutoff deletes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_metric_rule_deletes_only_its_series_the_same_on_every_replica() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.replication = 3;
        config.shard = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        config.metric_retention = vec![(
            vec![
                Matcher::equal("__name__", "debug"),
                Matcher::equal("env", "dev"),
            ],
            Duration::from_secs(3 * 3600),
        )];
        config.retention_check = Duration::from_secs(3600);
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    let now = 1_767_225_600 * S + 12 * H + 20 * 60 * S;
    // Ten hours, a point a minute: the rule's series, the same metric in
    // another env, and another metric.
    let series = [("debug", "dev"), ("debug", "prod"), ("other", "dev")];
    let points: Vec<Point> = (0..600)
        .flat_map(|m| {
            series.map(|(metric, env)| {
                Point::new(
                    metric,
                    vec![Label::new("env", env)],
                    m as f64,
                    now - 10 * H + m * 60 * S,
                )
            })
        })
        .collect();
    nodes[0].write(&points).await.unwrap();
    for (_, shard) in nodes[1].local_shards() {
        shard.flush().unwrap();
    }
    let leader = agreed_leader(&nodes).await;
    let proposed = leader.propose_retention(now).await.unwrap();
    assert_eq!(proposed.len(), 1, "one delete, for the one rule");
    let index = proposed[0].1;
    // The same cutoff is not proposed twice.
    assert!(leader
        .propose_retention(now + 60 * S)
        .await
        .unwrap()
        .is_empty());
    // Up to the last whole hour before now - 3 h.
    let cutoff = (now - 3 * H).div_euclid(H) * H;
    let mut answers = Vec::new();
    for n in &nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while n.applied_index(0).unwrap() < index {
            assert!(std::time::Instant::now() < deadline, "not applied");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_, shard) = n.local_shards().pop().unwrap();
        let mut all = Vec::new();
        for metric in ["debug", "other"] {
            all.extend(
                shard
                    .query(&[Matcher::equal("__name__", metric)], i64::MIN, i64::MAX)
                    .unwrap(),
            );
        }
        answers.push(all);
    }
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &answers[0], "replica {} differs from replica 1", i + 1);
    }
    assert_eq!(answers[0].len(), 3);
    for (key, samples) in &answers[0] {
        let ruled = key.metric == "debug" && key.label("env") == Some("dev");
        if ruled {
            assert!(samples.iter().all(|s| s.timestamp >= cutoff), "{key:?}");
            assert_eq!(samples.len() as i64, (now - cutoff) / (60 * S), "{key:?}");
        } else {
            assert_eq!(samples.len(), 600, "{key:?} lost samples");
        }
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Three replicas of one shard, retention two hours; proposals by hand.
async fn three_with_retention(dir: &TempDir) -> Vec<Arc<ClusterNode>> {
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = ClusterConfig::new(id, vec![1, 2, 3], dir.path().join(format!("n{id}")));
        config.shards = 1;
        config.replication = 3;
        config.shard = ShardConfig {
            sync_writes: false,
            retention: Some(Duration::from_secs(2 * 3600)),
            ..ShardConfig::default()
        };
        config.retention_check = Duration::from_secs(3600);
        nodes.push(ClusterNode::start(config, bus.clone()).await.unwrap());
    }
    for n in &nodes {
        assert!(n.wait_for_leaders(Duration::from_secs(20)).await);
    }
    nodes
}

/// Ten hours before `now`, a point a minute, for `series` hosts.
fn ten_hours(now: i64, series: usize) -> Vec<Point> {
    (0..600)
        .flat_map(|m| {
            (0..series).map(move |h| {
                Point::new(
                    "ret",
                    vec![Label::new("host", format!("h{h:03}"))],
                    m as f64,
                    now - 10 * H + m * 60 * S,
                )
            })
        })
        .collect()
}

/// The node every node names as shard 0's leader (waits up to 30 s). A node
/// that led an earlier term may still think it leads after the others moved
/// on (a re-election under load): asking it alone could name a leader whose
/// applied index is behind the write just acknowledged.
async fn agreed_leader(nodes: &[Arc<ClusterNode>]) -> Arc<ClusterNode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let named: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| {
                let (_, shards) = n.status();
                shards.iter().find(|s| s.id == 0).and_then(|s| s.leader)
            })
            .collect();
        if let Some(Some(id)) = named.first() {
            if named.iter().all(|l| *l == Some(*id)) {
                if let Some(n) = nodes.iter().find(|n| n.node_id() == *id) {
                    return n.clone();
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes name no common leader: {named:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every replica applied `index` (up to 30 s).
async fn applied_everywhere(nodes: &[Arc<ClusterNode>], index: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for n in nodes {
        while n.applied_index(0).unwrap() < index {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} did not apply index {index}",
                n.node_id()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Byte for byte: after the same entries, heads cut at the same index,
/// every replica's column families hold the same keys and values, before
/// retention and after it (which deleted most of the chunks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_the_same_bytes_after_retention() {
    let dir = TempDir::new().unwrap();
    let nodes = three_with_retention(&dir).await;
    let now = 1_767_225_600 * S + 12 * H;
    nodes[0].write(&ten_hours(now, 20)).await.unwrap();
    let leader = agreed_leader(&nodes).await;
    let digests = |nodes: &[Arc<ClusterNode>]| {
        nodes
            .iter()
            .map(|n| {
                let (_, shard) = n.local_shards().pop().unwrap();
                // Every replica cuts its heads at the same applied index.
                shard.flush().unwrap();
                shard.content_digest().unwrap()
            })
            .collect::<Vec<_>>()
    };
    applied_everywhere(&nodes, leader.applied_index(0).unwrap()).await;
    let before = digests(&nodes);
    for (i, d) in before.iter().enumerate() {
        assert_eq!(d, &before[0], "replica {} differs before retention", i + 1);
    }
    let proposed = leader.propose_retention(now).await.unwrap();
    applied_everywhere(&nodes, proposed[0].1).await;
    let after = digests(&nodes);
    for (i, d) in after.iter().enumerate() {
        assert_eq!(d, &after[0], "replica {} differs after retention", i + 1);
    }
    let chunks = |d: &[chronicle_storage::ContentDigest]| {
        d.iter()
            .find(|c| c.column_family == "chunks")
            .unwrap()
            .bytes
    };
    assert!(
        chunks(&after[0]) * 2 < chunks(&before[0]),
        "retention kept {} of {} chunk bytes",
        chunks(&after[0]),
        chunks(&before[0])
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// While retention applies, reads on a replica run without pause: each one
/// sees every series whole, either as before (ten hours) or as after (two),
/// never some of a series' samples gone or some series cut and others not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_retention_see_all_of_it_or_none() {
    let dir = TempDir::new().unwrap();
    let nodes = three_with_retention(&dir).await;
    let now = 1_767_225_600 * S + 12 * H;
    let series = 200;
    nodes[0].write(&ten_hours(now, series)).await.unwrap();
    let leader = agreed_leader(&nodes).await;
    applied_everywhere(&nodes, leader.applied_index(0).unwrap()).await;
    // One replica with its data in chunks, one with it in heads: both read.
    nodes[1].local_shards().pop().unwrap().1.flush().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (_, shard) = n.local_shards().pop().unwrap();
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                let mut seen = std::collections::BTreeMap::<usize, usize>::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(std::time::Instant::now() < deadline, "reader ran 60 s");
                    let answer = shard
                        .query(&[Matcher::equal("__name__", "ret")], i64::MIN, i64::MAX)
                        .unwrap();
                    assert_eq!(answer.len(), series, "a series vanished");
                    let first = answer[0].1.len();
                    assert!(
                        first == 600 || first == 120,
                        "a read saw {first} samples of a series"
                    );
                    for (key, samples) in &answer {
                        assert_eq!(
                            samples.len(),
                            first,
                            "one read saw {} samples of {key} and {first} of another",
                            samples.len()
                        );
                    }
                    *seen.entry(first).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    // Let the readers start before the delete.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let proposed = leader.propose_retention(now).await.unwrap();
    applied_everywhere(&nodes, proposed[0].1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (i, r) in readers.into_iter().enumerate() {
        let seen = r.await.unwrap();
        eprintln!("replica {}: reads by samples per series {seen:?}", i + 1);
        assert!(
            seen.contains_key(&600) && seen.contains_key(&120),
            "replica {} read before and after: {seen:?}",
            i + 1
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}

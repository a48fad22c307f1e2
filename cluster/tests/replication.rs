//! Three Raft members of one group in one process, talking over the bus
//! (LocalBus behind the fault injector): replication, failover, catch-up from
//! a snapshot, and a partitioned minority.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, FaultController, FaultyBus, LocalBus};
use chronicle_cluster::{
    serve, BusNetwork, LogStore, ShardCell, ShardStateMachine, SnapshotReceiver, TypeConfig,
    WriteBatch,
};
use chronicle_storage::{Label, Matcher, Point, ShardConfig};
use openraft::{Config, Raft, SnapshotPolicy};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;

struct Member {
    raft: Raft<TypeConfig>,
    shard: ShardCell,
    server: tokio::task::JoinHandle<()>,
}

fn raft_config() -> Arc<Config> {
    Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // Snapshot often, keep little log: a lagging member must catch up
            // from a snapshot.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    )
}

async fn start(id: u64, dir: &Path, bus: Arc<dyn Bus>) -> Member {
    let log = LogStore::open(dir.join(format!("n{id}/log"))).unwrap();
    let config = ShardConfig {
        sync_writes: false,
        // A snapshot covers what the shard made durable: cutting heads after
        // 8 entries keeps that close behind in a test of a few dozen entries.
        max_log_lag: 8,
        ..ShardConfig::default()
    };
    let sm = ShardStateMachine::open(dir.join(format!("n{id}/sm")), config).unwrap();
    let shard = sm.shard();
    let receiver = Arc::new(SnapshotReceiver::new(sm.layout()));
    let network = BusNetwork::new(bus.clone(), "chronicle", 0);
    let raft = Raft::new(id, raft_config(), network, log, sm)
        .await
        .unwrap();
    let server = serve(raft.clone(), receiver, bus, "chronicle", 0, id)
        .await
        .unwrap();
    Member {
        raft,
        shard,
        server,
    }
}

fn batch(from: i64, n: i64) -> WriteBatch {
    let points: Vec<Point> = (from..from + n)
        .map(|i| Point::new("m", vec![Label::new("k", "v")], i as f64, i * S))
        .collect();
    WriteBatch::encode(&points)
}

fn count(shard: &ShardCell) -> usize {
    shard
        .current()
        .query(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
        .unwrap()
        .first()
        .map_or(0, |(_, s)| s.len())
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_of(members: &[&Member], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        for m in members {
            if let Some(l) = m.raft.current_leader().await {
                if members.iter().any(|x| x.raft.metrics().borrow().id == l) {
                    return l;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three members of one group, each behind its own fault-injecting view of
/// one in-process bus, with a leader elected.
struct Group {
    dir: TempDir,
    bus: Box<dyn Fn(u64) -> Arc<dyn Bus>>,
    faults: Arc<FaultController>,
    members: Vec<Member>,
    leader: u64,
}

async fn group(seed: u64) -> Group {
    let dir = TempDir::new().unwrap();
    let local: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let faults = FaultController::new(seed);
    let shared = faults.clone();
    let bus: Box<dyn Fn(u64) -> Arc<dyn Bus>> = Box::new(move |id| {
        Arc::new(FaultyBus::new(
            local.clone(),
            format!("n{id}"),
            shared.clone(),
        ))
    });
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start(id, dir.path(), bus(id)).await);
    }
    members[0]
        .raft
        .initialize(BTreeSet::from([1u64, 2, 3]))
        .await
        .unwrap();
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all, Duration::from_secs(10)).await;
    Group {
        dir,
        bus,
        faults,
        members,
        leader,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_fails_over_and_catches_up_from_a_snapshot() {
    let Group {
        dir,
        bus,
        faults: _faults,
        mut members,
        leader,
    } = group(1).await;

    // Writes go through the leader and reach every replica.
    for i in 0..10 {
        let resp = members[(leader - 1) as usize]
            .raft
            .client_write(batch(i * 10, 10))
            .await
            .unwrap();
        assert_eq!(resp.data.written, 10);
    }
    for m in &members {
        wait_for("replication", Duration::from_secs(10), || {
            count(&m.shard) == 100
        })
        .await;
    }

    // Kill the leader: the others elect a new one within the election timeout
    // (plus a margin for this 2-core machine) and keep taking writes.
    let old = members.remove((leader - 1) as usize);
    old.server.abort();
    old.raft.shutdown().await.unwrap();
    drop(old);
    let killed = Instant::now();
    let rest: Vec<&Member> = members.iter().collect();
    let new_leader = leader_of(&rest, Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    let failover = killed.elapsed();
    let idx = members
        .iter()
        .position(|m| m.raft.metrics().borrow().id == new_leader)
        .unwrap();
    for i in 10..60 {
        members[idx]
            .raft
            .client_write(batch(i * 10, 10))
            .await
            .unwrap();
    }
    for m in &members {
        wait_for("writes after failover", Duration::from_secs(10), || {
            count(&m.shard) == 600
        })
        .await;
    }
    // 50 entries since: the survivors snapshotted and purged their logs.
    wait_for("a snapshot", Duration::from_secs(10), || {
        members[idx]
            .raft
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= 40)
    })
    .await;

    // The old leader comes back and catches up (from the snapshot: the log
    // entries it missed are gone), with nothing applied twice.
    let back = start(leader, dir.path(), bus(leader)).await;
    wait_for("catch-up", Duration::from_secs(15), || {
        count(&back.shard) == 600
    })
    .await;
    assert!(
        back.raft.metrics().borrow().snapshot.is_some(),
        "the returning member caught up without a snapshot"
    );
    eprintln!("failover: new leader {failover:?} after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_refuses_writes_and_converges_after_healing() {
    let Group {
        // Bound, not dropped: the directory must outlive the members.
        dir: _dir,
        bus: _bus,
        faults,
        members,
        leader,
    } = group(2).await;
    members[(leader - 1) as usize]
        .raft
        .client_write(batch(0, 10))
        .await
        .unwrap();
    // Committed on a majority is not yet applied everywhere: every member
    // holds the first batch before the cut (else the lonely one may not,
    // and "it kept exactly what it had" cannot be checked).
    for m in &members {
        wait_for(
            "the first batch everywhere",
            Duration::from_secs(10),
            || count(&m.shard) == 10,
        )
        .await;
    }

    // Cut one follower off from the other two.
    let lonely = (1..=3).find(|&n| n != leader).unwrap();
    let others: Vec<String> = (1..=3)
        .filter(|&n| n != lonely)
        .map(|n| format!("n{n}"))
        .collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    faults.partition(&[format!("n{lonely}").as_str()], &others);

    // The majority keeps serving.
    for i in 1..5 {
        members[(leader - 1) as usize]
            .raft
            .client_write(batch(i * 10, 10))
            .await
            .unwrap();
    }
    let majority: Vec<&Member> = members
        .iter()
        .filter(|m| m.raft.metrics().borrow().id != lonely)
        .collect();
    for m in &majority {
        wait_for("the majority's writes", Duration::from_secs(10), || {
            count(&m.shard) == 50
        })
        .await;
    }
    assert_eq!(
        count(&members[(lonely - 1) as usize].shard),
        10,
        "the partition leaked"
    );
    // The minority cannot commit: a write there is refused (it is not the
    // leader, and cannot become one without a majority).
    let refused = tokio::time::timeout(
        Duration::from_secs(3),
        members[(lonely - 1) as usize]
            .raft
            .client_write(batch(1000, 1)),
    )
    .await;
    match refused {
        Ok(Err(e)) => eprintln!("minority refused the write: {e}"),
        Ok(Ok(_)) => panic!("a partitioned minority committed a write"),
        Err(_) => eprintln!("minority write did not complete within 3 s"),
    }
    // The cut-off member must not depose the healthy leader when it returns.
    faults.heal();
    wait_for("convergence", Duration::from_secs(10), || {
        members.iter().all(|m| count(&m.shard) == 50)
    })
    .await;
    assert_eq!(
        members[0].raft.current_leader().await,
        Some(leader),
        "the healed member deposed the leader"
    );
}

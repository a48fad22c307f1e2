//! Snapshot transfer between members of one group over the (in-process) bus:
//! a member that missed purged entries catches up from a snapshot while
//! heartbeats keep flowing (no election), and a second catch-up sends only
//! the files it lacks.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, LocalBus};
use chronicle_cluster::{
    serve, BusNetwork, LogStore, ShardCell, ShardStateMachine, SnapshotReceiver, TypeConfig,
    WriteBatch,
};
use chronicle_storage::{Label, Matcher, Point, ShardConfig};
use openraft::{Config, Raft, SnapshotPolicy};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;
const SERIES: usize = 500;

struct Member {
    raft: Raft<TypeConfig>,
    shard: ShardCell,
    receiver: Arc<SnapshotReceiver>,
    server: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn stop(self) {
        self.server.abort();
        self.raft.shutdown().await.unwrap();
    }
}

fn raft_config() -> Arc<Config> {
    Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::Never,
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
        ..ShardConfig::default()
    };
    let sm = ShardStateMachine::open(dir.join(format!("n{id}/sm")), config).unwrap();
    let shard = sm.shard();
    let receiver = Arc::new(SnapshotReceiver::new(sm.layout()));
    let network = BusNetwork::new(bus.clone(), "chronicle", 0);
    let raft = Raft::new(id, raft_config(), network, log, sm)
        .await
        .unwrap();
    let server = serve(raft.clone(), receiver.clone(), bus, "chronicle", 0, id)
        .await
        .unwrap();
    Member {
        raft,
        shard,
        receiver,
        server,
    }
}

/// `n` points per series at second `second`, values from a xorshift stream
/// (incompressible: the snapshot is not flattered by the codec).
fn batch(second: i64, state: &mut u64) -> WriteBatch {
    let points: Vec<Point> = (0..SERIES)
        .map(|s| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            Point::new(
                "m",
                vec![Label::new("series", format!("s{s:04}"))],
                (*state >> 11) as f64 / (1u64 << 53) as f64,
                second * S,
            )
        })
        .collect();
    WriteBatch::encode(&points)
}

fn count(shard: &ShardCell) -> usize {
    shard
        .current()
        .query(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
        .unwrap()
        .iter()
        .map(|(_, s)| s.len())
        .sum()
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SST files of a member's live shard.
fn sst_files(dir: &Path, id: u64) -> BTreeSet<String> {
    let shards = dir.join(format!("n{id}/sm/shards"));
    std::fs::read_dir(&shards)
        .unwrap()
        .flat_map(|g| std::fs::read_dir(g.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sst"))
        .collect()
}

/// Writes `seconds` batches, makes them durable in the live members' shards,
/// snapshots them and purges the log before the snapshot. With `settle`, the
/// shards are first compacted into the bottom level and left until RocksDB's
/// own follow-up compaction (which rewrites bottom files once, to zero their
/// sequence numbers) is over: old data in a long-running node is like that,
/// and a test this small would otherwise measure that one rewrite instead of
/// the transfer.
async fn write_and_compact(
    dir: &Path,
    leader: &Member,
    live: &[&Member],
    seconds: std::ops::Range<i64>,
    settle: bool,
) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seconds.start as u64;
    for second in seconds.clone() {
        leader
            .raft
            .client_write(batch(second, &mut state))
            .await
            .unwrap();
    }
    let want = (seconds.end as usize) * SERIES;
    for m in live {
        let mut last = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while last != want {
            assert!(
                Instant::now() < deadline,
                "replication: {last} samples, want {want}"
            );
            last = count(&m.shard);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for m in live {
        // Chunks cut now, so the snapshot covers everything written.
        if settle {
            m.shard.current().compact().unwrap();
            let id = m.raft.metrics().borrow().id;
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut files, mut since) = (sst_files(dir, id), Instant::now());
            while since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
                count(&m.shard); // a read takes and releases a RocksDB snapshot
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = sst_files(dir, id);
                if now != files {
                    (files, since) = (now, Instant::now());
                }
            }
        } else {
            m.shard.current().flush().unwrap();
        }
        let before = m.raft.metrics().borrow().snapshot;
        m.raft.trigger().snapshot().await.unwrap();
        wait_for("snapshot", Duration::from_secs(30), || {
            m.raft.metrics().borrow().snapshot != before
        })
        .await;
        // And the log before it purged (the purge follows the snapshot).
        wait_for("purge", Duration::from_secs(30), || {
            let metrics = m.raft.metrics().borrow().clone();
            metrics.purged.is_some() && metrics.purged == metrics.snapshot
        })
        .await;
    }
}

/// Terms seen by any member while `f` runs (sampled every 10 ms).
async fn terms_during<F: std::future::Future>(
    members: &[&Member],
    f: F,
) -> (BTreeSet<u64>, F::Output) {
    let rafts: Vec<Raft<TypeConfig>> = members.iter().map(|m| m.raft.clone()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut terms = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for r in &rafts {
                    terms.insert(r.metrics().borrow().current_term);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            terms
        })
    };
    let out = f.await;
    stop.store(true, Ordering::Relaxed);
    (sampler.await.unwrap(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_catches_up_from_a_snapshot_and_then_receives_only_new_files() {
    let dir = TempDir::new().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start(id, dir.path(), bus.clone()).await);
    }
    members[0]
        .raft
        .initialize(BTreeSet::from([1u64, 2, 3]))
        .await
        .unwrap();
    wait_for("a leader", Duration::from_secs(10), || {
        members[0].raft.metrics().borrow().current_leader.is_some()
    })
    .await;
    let leader_id = members[0].raft.metrics().borrow().current_leader.unwrap();
    // A follower will lag: stopped now, back after the log it missed is gone.
    let lagging_id = (1..=3u64).find(|&id| id != leader_id).unwrap();
    let lagging = members.remove((lagging_id - 1) as usize);
    lagging.stop().await;
    let leader = members
        .iter()
        .position(|m| m.raft.metrics().borrow().id == leader_id)
        .unwrap();

    // Round 1: 400 seconds of 500 series (200 K samples, a 1.5 MB
    // snapshot), then a snapshot and a purge. CHRONICLE_SNAPSHOT_TEST_SECONDS
    // =4000 makes a 15 MB one whose transfer takes seconds, several election
    // timeouts (in CI it once installed twice under load: opt-in).
    let seconds: i64 = std::env::var("CHRONICLE_SNAPSHOT_TEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let live: Vec<&Member> = members.iter().collect();
    write_and_compact(dir.path(), &members[leader], &live, 0..seconds, true).await;
    let term = members[leader].raft.metrics().borrow().current_term;

    let (terms, back) = terms_during(&live, async {
        let started = Instant::now();
        let back = start(lagging_id, dir.path(), bus.clone()).await;
        wait_for("catch-up", Duration::from_secs(600), || {
            count(&back.shard) == seconds as usize * SERIES
        })
        .await;
        eprintln!("caught up from a snapshot in {:?}", started.elapsed());
        back
    })
    .await;
    let first = back.receiver.stats();
    assert_eq!(first.installed.load(Ordering::Relaxed), 1);
    let first_bytes = first.bytes_received.load(Ordering::Relaxed);
    assert!(first_bytes > 1 << 20, "a snapshot of {first_bytes} bytes");
    assert_eq!(
        terms,
        BTreeSet::from([term]),
        "an election happened while a snapshot moved"
    );
    back.stop().await;

    // Round 2: a little more data; the member lacks only the new files.
    write_and_compact(
        dir.path(),
        &members[leader],
        &live,
        seconds..seconds + 20,
        false,
    )
    .await;

    let back = start(lagging_id, dir.path(), bus.clone()).await;
    wait_for("second catch-up", Duration::from_secs(60), || {
        count(&back.shard) == (seconds as usize + 20) * SERIES
    })
    .await;
    let second = back.receiver.stats();
    let (offered, received) = (
        second.bytes_offered.load(Ordering::Relaxed),
        second.bytes_received.load(Ordering::Relaxed),
    );
    eprintln!(
        "first transfer {first_bytes} bytes; second: {received} of {offered} bytes sent, {} of {} files reused",
        second.files_reused.load(Ordering::Relaxed),
        second.files_offered.load(Ordering::Relaxed)
    );
    assert!(second.files_reused.load(Ordering::Relaxed) > 0);
    assert!(
        received * 2 < offered,
        "the second transfer sent {received} of {offered} bytes"
    );
    back.stop().await;
    for m in members {
        m.stop().await;
    }
}

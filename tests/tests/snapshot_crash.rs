//! A process building or installing a snapshot crashes at each step (a
//! failpoint that aborts it); after a restart the replica is on the old state
//! or the new one, never in between, holds no leftovers, and catches up.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use chronicle_cluster::ShardStateMachine;
use chronicle_storage::Matcher;
use chronicle_tests::snapshot_fixture::{config, entries};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

const BUILD_STEPS: [&str; 4] = [
    "snapshot-build-checkpointed",
    "snapshot-build-manifested",
    "snapshot-build-placed",
    "snapshot-build-switched",
];
const INSTALL_STEPS: [&str; 4] = [
    "snapshot-install-linked",
    "snapshot-install-placed",
    "snapshot-install-opened",
    "snapshot-install-switched",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn values(sm: &ShardStateMachine) -> Vec<f64> {
    sm.shard()
        .current()
        .query(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
        .unwrap()
        .first()
        .map(|(_, s)| s.iter().map(|x| x.value).collect())
        .unwrap_or_default()
}

fn one_to(n: u64) -> Vec<f64> {
    (1..=n).map(|i| i as f64).collect()
}

/// A group directory whose state machine applied `1..=n`, made it durable and
/// snapshotted it.
async fn group_at(dir: &Path, n: u64) {
    let mut sm = ShardStateMachine::open(dir, config()).unwrap();
    sm.apply(entries(1, n)).await.unwrap();
    sm.shard().current().flush().unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(n));
}

async fn applied(sm: &mut ShardStateMachine) -> Option<u64> {
    sm.applied_state().await.unwrap().0.map(|l| l.index)
}

/// Nothing but what `STATE` names is left: one shard generation, one snapshot,
/// no work directories.
fn assert_no_leftovers(dir: &Path, step: &str) {
    let count = |sub: &str| std::fs::read_dir(dir.join(sub)).unwrap().count();
    assert_eq!(count("shards"), 1, "{step}: shard generations");
    assert_eq!(count("snapshots"), 1, "{step}: snapshots");
    assert_eq!(count("building"), 0, "{step}: builds left behind");
    assert_eq!(count("incoming"), 0, "{step}: transfers left behind");
}

fn crash(args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_snapshot-crasher"))
        .args(args)
        .status()
        .expect("crasher runs");
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{args:?}: the process must crash at the failpoint ({status})"
    );
}

#[test]
fn a_crash_at_any_step_of_a_build_leaves_the_old_snapshot_or_the_new_one() {
    let rt = runtime();
    for step in BUILD_STEPS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("group");
        rt.block_on(group_at(&dir, 50));
        crash(&["build", step, dir.to_str().unwrap(), "51", "100"]);
        rt.block_on(async {
            let mut sm = ShardStateMachine::open(&dir, config()).unwrap();
            assert_no_leftovers(&dir, step);
            let at = applied(&mut sm).await;
            let new = step == "snapshot-build-switched";
            assert_eq!(at, Some(if new { 100 } else { 50 }), "{step}");
            // openraft replays the log after the snapshot; nothing doubles.
            sm.apply(entries(at.unwrap() + 1, 100)).await.unwrap();
            assert_eq!(values(&sm), one_to(100), "{step}");
            // And the next build succeeds.
            sm.shard().current().flush().unwrap();
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(100), "{step}");
        });
    }
}

#[test]
fn a_crash_at_any_step_of_an_install_leaves_the_old_state_or_the_new_one() {
    let rt = runtime();
    for step in INSTALL_STEPS {
        let tmp = tempfile::tempdir().unwrap();
        let (leader, follower) = (tmp.path().join("leader"), tmp.path().join("follower"));
        rt.block_on(async {
            group_at(&leader, 50).await;
            group_at(&follower, 20).await;
        });
        crash(&[
            "install",
            step,
            leader.to_str().unwrap(),
            follower.to_str().unwrap(),
        ]);
        rt.block_on(async {
            let mut sm = ShardStateMachine::open(&follower, config()).unwrap();
            assert_no_leftovers(&follower, step);
            let at = applied(&mut sm).await;
            let new = step == "snapshot-install-switched";
            assert_eq!(at, Some(if new { 50 } else { 20 }), "{step}");
            assert_eq!(values(&sm), one_to(at.unwrap()), "{step}");
            // Catching up: the install again, then the log after it.
            let mut source = ShardStateMachine::open(&leader, config()).unwrap();
            let snapshot = source.get_current_snapshot().await.unwrap().unwrap();
            sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            assert_eq!(applied(&mut sm).await, Some(50), "{step}");
            sm.apply(entries(51, 60)).await.unwrap();
            assert_eq!(values(&sm), one_to(60), "{step}");
            drop(sm);
            let sm = ShardStateMachine::open(&follower, config()).unwrap();
            assert_no_leftovers(&follower, step);
            assert_eq!(values(&sm)[..50], one_to(50)[..], "{step}");
        });
    }
}

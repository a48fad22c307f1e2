//! The shard state machine with real data: snapshots carry the shard, and a
//! restart re-applies without duplicating.

use chronicle_cluster::{ShardStateMachine, TypeConfig, WriteBatch};
use chronicle_storage::{Label, Matcher, Point, ShardConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use tempfile::TempDir;

const S: i64 = 1_000_000_000;

fn config() -> ShardConfig {
    ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    }
}

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(WriteBatch::encode(&[Point::new(
            "m",
            vec![Label::new("k", "v")],
            index as f64,
            index as i64 * S,
        )])),
    }
}

fn stored(sm: &ShardStateMachine) -> Vec<f64> {
    let shard = sm.shard().current();
    let got = shard
        .query(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
        .unwrap();
    got.first()
        .map(|(_, s)| s.iter().map(|x| x.value).collect())
        .unwrap_or_default()
}

async fn build(sm: &mut ShardStateMachine) -> openraft::SnapshotMeta<u64, openraft::EmptyNode> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
        .meta
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_covers_what_the_shard_made_durable_and_a_restart_replays_the_rest() {
    let dir = TempDir::new().unwrap();
    {
        let mut sm = ShardStateMachine::open(dir.path(), config()).unwrap();
        let applied = sm.apply((1..=3).map(entry)).await.unwrap();
        assert!(applied.iter().all(|a| a.written == 1));
        // The three points are in the series' head, not yet in a chunk: a
        // snapshot does not cut heads, so it covers none of them.
        assert_eq!(build(&mut sm).await.last_log_id, None);
        sm.shard().current().flush().unwrap();
        assert_eq!(build(&mut sm).await.last_log_id.map(|l| l.index), Some(3));
        // Not newer than the current one: the current one stands.
        let again = build(&mut sm).await;
        assert_eq!(again.last_log_id.map(|l| l.index), Some(3));
        sm.apply((4..=5).map(entry)).await.unwrap();
        assert_eq!(stored(&sm), [1.0, 2.0, 3.0, 4.0, 5.0]);
        // Dropped without a flush: 4 and 5 lived only in the shard's head.
    }
    let mut sm = ShardStateMachine::open(dir.path(), config()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(
        applied.map(|l| l.index),
        Some(3),
        "the snapshot is what is durable"
    );
    assert_eq!(stored(&sm), [1.0, 2.0, 3.0]);
    // openraft re-applies the committed entries after the snapshot (and a
    // replay that starts earlier must not apply anything twice).
    let again = sm.apply((3..=5).map(entry)).await.unwrap();
    let written: Vec<usize> = again.iter().map(|a| a.written).collect();
    assert_eq!(written, [0, 1, 1]);
    assert_eq!(stored(&sm), [1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_moves_the_shard_to_another_replica() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut leader = ShardStateMachine::open(a.path(), config()).unwrap();
    let mut follower = ShardStateMachine::open(b.path(), config()).unwrap();
    leader.apply((1..=100).map(entry)).await.unwrap();
    leader.shard().current().flush().unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(100));
    // A reader of the follower's old shard keeps it while the new one takes over.
    let old = follower.shard().current();
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    *incoming = *leader
        .get_current_snapshot()
        .await
        .unwrap()
        .unwrap()
        .snapshot;
    follower
        .install_snapshot(&snap.meta, incoming)
        .await
        .unwrap();
    assert_eq!(stored(&follower).len(), 100);
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        snap.meta.last_log_id
    );
    assert!(old
        .query(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
        .unwrap()
        .is_empty());
    // And it survives a restart as the live generation.
    drop(follower);
    let follower = ShardStateMachine::open(b.path(), config()).unwrap();
    assert_eq!(stored(&follower).len(), 100);
}

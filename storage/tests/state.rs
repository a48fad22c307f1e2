//! The key-value state in a shard: transactions, revisions, scans, the change
//! history, and a replay after a restart that must not decide twice.

use chronicle_storage::state::*;
use chronicle_storage::*;
use tempfile::TempDir;

const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;

fn cfg() -> ShardConfig {
    ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    }
}

fn batch(at: i64, txns: Vec<StateTxn>) -> StateBatch {
    StateBatch {
        namespace: "feature-a".into(),
        at,
        history: DAY,
        txns,
    }
}

fn committed(o: &TxnOutcome) -> u64 {
    match o {
        TxnOutcome::Committed { revision } => *revision,
        other => panic!("expected a commit, got {other:?}"),
    }
}

#[test]
fn compare_and_set_commits_once_per_revision_and_transactions_are_all_or_nothing() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    // Create only if absent: the first wins, the second sees its revision.
    let out = shard
        .apply_state(
            1,
            &batch(
                S,
                vec![
                    StateTxn::put("k", "a").when("k", 0),
                    StateTxn::put("k", "b").when("k", 0),
                ],
            ),
        )
        .unwrap();
    let first = committed(&out[0]);
    assert_eq!(first, revision_of(1, 0));
    assert_eq!(
        out[1],
        TxnOutcome::Failed {
            key: "k".into(),
            revision: first
        }
    );
    assert_eq!(
        shard.state_get("feature-a", "k").unwrap().unwrap().value,
        b"a"
    );
    // A transaction whose second check fails changes nothing, not even its
    // first put.
    let txn = StateTxn {
        checks: vec![
            StateCheck {
                key: "k".into(),
                revision: first,
            },
            StateCheck {
                key: "other".into(),
                revision: 7,
            },
        ],
        ops: vec![StateOp::Put {
            key: "k".into(),
            value: b"c".to_vec(),
            ttl_ms: 0,
        }],
    };
    let out = shard.apply_state(2, &batch(2 * S, vec![txn])).unwrap();
    assert_eq!(
        out[0],
        TxnOutcome::Failed {
            key: "other".into(),
            revision: 0
        }
    );
    let k = shard.state_get("feature-a", "k").unwrap().unwrap();
    assert_eq!((k.value.as_slice(), k.revision), (&b"a"[..], first));
    // The right revision wins, and the creation revision stays.
    let out = shard
        .apply_state(
            3,
            &batch(3 * S, vec![StateTxn::put("k", "d").when("k", first)]),
        )
        .unwrap();
    let k = shard.state_get("feature-a", "k").unwrap().unwrap();
    assert_eq!(k.revision, committed(&out[0]));
    assert_eq!(k.created, first);
    // Namespaces do not see each other.
    assert!(shard.state_get("feature-b", "k").unwrap().is_none());
    // A delete, conditional on a stale revision, fails; on the current one, removes.
    let out = shard
        .apply_state(
            4,
            &batch(4 * S, vec![StateTxn::delete("k").when("k", first)]),
        )
        .unwrap();
    assert!(matches!(out[0], TxnOutcome::Failed { .. }));
    let out = shard
        .apply_state(
            5,
            &batch(5 * S, vec![StateTxn::delete("k").when("k", k.revision)]),
        )
        .unwrap();
    committed(&out[0]);
    assert!(shard.state_get("feature-a", "k").unwrap().is_none());
}

#[test]
fn scans_page_by_key_and_changes_resume_without_splitting_a_transaction() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    let txns = (0..25)
        .map(|i| StateTxn::put(format!("doc/{i:02}"), format!("v{i}")))
        .collect();
    shard.apply_state(1, &batch(S, txns)).unwrap();
    shard
        .apply_state(2, &batch(2 * S, vec![StateTxn::put("other/x", "y")]))
        .unwrap();
    // One transaction of three changes.
    let three = StateTxn {
        checks: Vec::new(),
        ops: vec![
            StateOp::Put {
                key: "doc/a".into(),
                value: b"1".to_vec(),
                ttl_ms: 0,
            },
            StateOp::Put {
                key: "doc/b".into(),
                value: b"2".to_vec(),
                ttl_ms: 0,
            },
            StateOp::Delete {
                key: "doc/00".into(),
            },
        ],
    };
    shard.apply_state(3, &batch(3 * S, vec![three])).unwrap();

    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = shard
            .state_scan("feature-a", "doc/", after.as_deref(), 10)
            .unwrap();
        assert!(page.len() <= 10);
        keys.extend(page.iter().map(|e| e.key.clone()));
        after = page.last().map(|e| e.key.clone());
        if !more {
            break;
        }
    }
    let mut expected: Vec<String> = (1..25).map(|i| format!("doc/{i:02}")).collect();
    expected.extend(["doc/a".to_string(), "doc/b".to_string()]);
    assert_eq!(keys, expected);

    // Changes to doc/ in pages of 24: the page boundary falls inside the
    // three-change transaction, which comes whole in the next page.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let c = shard.state_changes("feature-a", "doc/", after, 24).unwrap();
        seen.extend(
            c.changes
                .iter()
                .map(|c| (c.revision, c.key.clone(), c.kind)),
        );
        after = c.revision;
        if !c.more {
            break;
        }
    }
    assert_eq!(seen.len(), 28, "25 puts, then 3 changes in one transaction");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "revision order");
    assert_eq!(seen[27].1, "doc/00");
    assert_eq!(seen[27].2, ChangeKind::Delete);
    // Nothing after the last: an empty answer with a revision to resume from.
    let c = shard.state_changes("feature-a", "doc/", after, 24).unwrap();
    assert!(c.changes.is_empty() && !c.more);
    assert!(c.revision >= after);
}

#[test]
fn history_is_pruned_by_the_entry_stamp_and_a_watcher_behind_it_is_told() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    shard
        .apply_state(1, &batch(S, vec![StateTxn::put("a", "1")]))
        .unwrap();
    shard
        .apply_state(2, &batch(2 * S, vec![StateTxn::put("a", "2")]))
        .unwrap();
    // A day later: both earlier changes leave the history.
    shard
        .apply_state(3, &batch(DAY + 3 * S, vec![StateTxn::put("a", "3")]))
        .unwrap();
    match shard.state_changes("feature-a", "", 0, 100) {
        Err(StorageError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, 0);
            assert_eq!(compacted, revision_of(2, 0));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let c = shard
        .state_changes("feature-a", "", revision_of(2, 0), 100)
        .unwrap();
    assert_eq!(c.changes.len(), 1);
    assert_eq!(c.changes[0].value, b"3");
}

#[test]
fn a_replay_after_a_restart_does_not_decide_a_compare_and_set_again() {
    let dir = TempDir::new().unwrap();
    let first;
    {
        let shard = Shard::open(dir.path(), cfg()).unwrap();
        // A point in the head keeps the durable index at 0: after a restart
        // the entries from 1 on are applied again.
        let p = Point::new("m", vec![Label::new("h", "a")], 1.0, S);
        assert!(shard.apply(1, &[p]).unwrap());
        let out = shard
            .apply_state(2, &batch(S, vec![StateTxn::put("k", "a").when("k", 0)]))
            .unwrap();
        first = committed(&out[0]);
        shard
            .apply_state(3, &batch(S, vec![StateTxn::delete("k").when("k", first)]))
            .unwrap();
        shard
            .apply_state(4, &batch(S, vec![StateTxn::put("k", "b").when("k", 0)]))
            .unwrap();
        assert_eq!(shard.durable_index(), 0);
    }
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(shard.last_applied(), 0);
    let p = Point::new("m", vec![Label::new("h", "a")], 1.0, S);
    assert!(shard.apply(1, &[p]).unwrap());
    // Replayed against the state as written (k = "b" at revision 4): were
    // these decided again, entry 2 would fail, entry 3 would fail, and
    // entry 4 would fail; were they applied blindly, k would change.
    for (index, txn) in [
        (2, StateTxn::put("k", "a").when("k", 0)),
        (3, StateTxn::delete("k").when("k", first)),
        (4, StateTxn::put("k", "b").when("k", 0)),
    ] {
        let out = shard.apply_state(index, &batch(S, vec![txn])).unwrap();
        assert!(
            out.is_empty(),
            "entry {index} was applied before the restart"
        );
    }
    let k = shard.state_get("feature-a", "k").unwrap().unwrap();
    assert_eq!(
        (k.value.as_slice(), k.revision),
        (&b"b"[..], revision_of(4, 0))
    );
    // And the next entry applies normally.
    let out = shard
        .apply_state(
            5,
            &batch(S, vec![StateTxn::put("k", "c").when("k", k.revision)]),
        )
        .unwrap();
    committed(&out[0]);
}

#[test]
fn writes_beyond_the_limits_are_refused_before_they_reach_a_log() {
    let big = StateTxn::put("k", vec![0u8; MAX_STATE_VALUE_BYTES + 1]);
    assert!(batch(S, vec![big]).validate().is_err());
    assert!(batch(S, vec![StateTxn::put("", "v")]).validate().is_err());
    assert!(batch(S, vec![StateTxn::put("k".repeat(1025), "v")])
        .validate()
        .is_err());
    let mut b = batch(S, vec![StateTxn::put("k", "v")]);
    b.namespace = "bad/ns".into();
    assert!(b.validate().is_err());
    assert!(batch(S, vec![]).validate().is_err());
    let many = (0..5)
        .map(|i| StateTxn::put(format!("k{i}"), vec![0u8; MAX_STATE_VALUE_BYTES]))
        .collect();
    assert!(
        batch(S, many).validate().is_err(),
        "over 4 MiB in one entry"
    );
    assert!(batch(S, vec![StateTxn::put("k", "v")]).validate().is_ok());
}

#[test]
fn a_key_with_a_ttl_is_listed_as_expired_once_its_time_passed_unless_written_again() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    let ttl = std::time::Duration::from_secs(10);
    shard
        .apply_state(
            1,
            &batch(
                S,
                vec![
                    StateTxn::put_with_ttl("a", "1", ttl),
                    StateTxn::put_with_ttl("b", "1", ttl),
                    StateTxn::put("c", "1"),
                ],
            ),
        )
        .unwrap();
    let a = shard.state_get("feature-a", "a").unwrap().unwrap();
    assert_eq!(a.expires, 11 * S);
    assert!(shard.state_expired(10 * S, 100).unwrap().is_empty());
    // b written again without a TTL: no longer leased.
    shard
        .apply_state(2, &batch(2 * S, vec![StateTxn::put("b", "2")]))
        .unwrap();
    let expired = shard.state_expired(11 * S, 100).unwrap();
    assert_eq!(
        expired,
        vec![("feature-a".to_string(), "a".to_string(), a.revision)]
    );
    // Once its time passed, a counts as absent: "create if absent" wins
    // (the lease-acquire pattern) before the leader's delete lands, and the
    // new key is created afresh.
    let out = shard
        .apply_state(
            3,
            &batch(12 * S, vec![StateTxn::put("a", "mine").when("a", 0)]),
        )
        .unwrap();
    let again = shard.state_get("feature-a", "a").unwrap().unwrap();
    assert_eq!(again.revision, committed(&out[0]));
    assert_eq!(again.created, again.revision);
    assert!(shard.state_expired(i64::MAX, 100).unwrap().is_empty());
    let too_long = StateTxn::put_with_ttl("k", "v", std::time::Duration::from_secs(400 * 86_400));
    assert!(batch(S, vec![too_long]).validate().is_err());
}

#[test]
fn a_scan_of_every_namespace_pages_across_namespaces_in_key_order() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    // "a" sorts before "a-b": the namespace's end (a 0 byte) must not let
    // one namespace's keys run into the next's.
    for (index, ns) in (1..).zip(["a-b", "a", "zz"]) {
        let txns = (0..5)
            .map(|i| StateTxn::put(format!("k{i}"), format!("{ns}/{i}")))
            .collect();
        let b = StateBatch {
            namespace: ns.into(),
            ..batch(S, txns)
        };
        shard.apply_state(index, &b).unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let (page, more) = shard
            .state_scan_all(after.as_ref().map(|(n, k)| (n.as_str(), k.as_str())), 4)
            .unwrap();
        assert!(page.len() <= 4);
        seen.extend(page.iter().map(|(ns, e)| {
            (
                ns.clone(),
                e.key.clone(),
                String::from_utf8(e.value.clone()).unwrap(),
            )
        }));
        match (more, page.last()) {
            (true, Some((ns, e))) => after = Some((ns.clone(), e.key.clone())),
            _ => break,
        }
    }
    let expected: Vec<_> = ["a", "a-b", "zz"]
        .iter()
        .flat_map(|ns| (0..5).map(move |i| (ns.to_string(), format!("k{i}"), format!("{ns}/{i}"))))
        .collect();
    assert_eq!(seen, expected);
}

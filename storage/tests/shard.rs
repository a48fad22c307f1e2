//! Behaviour of a whole shard on a real RocksDB in a temporary directory.

use std::time::Duration;

use chronicle_storage::*;
use tempfile::TempDir;

const S: i64 = 1_000_000_000;
const H: i64 = 3600 * S;

fn cfg() -> ShardConfig {
    ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    }
}

fn point(metric: &str, labels: &[(&str, &str)], t: i64, v: f64) -> Point {
    Point::new(
        metric,
        labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        v,
        t,
    )
}

fn eq(name: &str, value: &str) -> Matcher {
    Matcher::equal(name, value)
}

fn read(shard: &Shard, metric: &str, start: i64, end: i64) -> Vec<(SeriesKey, Vec<Sample>)> {
    shard.query(&[eq("__name__", metric)], start, end).unwrap()
}

fn values(samples: &[Sample]) -> Vec<(i64, f64)> {
    samples.iter().map(|s| (s.timestamp, s.value)).collect()
}

#[test]
fn writes_are_visible_at_once_and_duplicates_replace() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    shard
        .write_batch(&[
            point("cpu", &[("host", "a")], 30 * S, 3.0),
            point("cpu", &[("host", "a")], 10 * S, 1.0), // out of order
            point("cpu", &[("host", "a")], 20 * S, 2.0),
        ])
        .unwrap();
    shard
        .write_batch(&[point("cpu", &[("host", "a")], 20 * S, 20.0)])
        .unwrap();
    let got = read(&shard, "cpu", 0, 100 * S);
    assert_eq!(got.len(), 1);
    assert_eq!(
        values(&got[0].1),
        vec![(10 * S, 1.0), (20 * S, 20.0), (30 * S, 3.0)]
    );
    // The end of a scan is exclusive, the start inclusive.
    let got = read(&shard, "cpu", 20 * S, 30 * S);
    assert_eq!(values(&got[0].1), vec![(20 * S, 20.0)]);
}

#[test]
fn data_survives_reopen_in_head_and_in_chunks() {
    let dir = TempDir::new().unwrap();
    let config = ShardConfig {
        max_chunk_samples: 50,
        ..cfg()
    };
    let mut expected = Vec::new();
    {
        let shard = Shard::open(dir.path(), config.clone()).unwrap();
        // 3 hours at 10 s crosses chunk windows and the sample limit several times.
        for batch in 0..108 {
            let pts: Vec<Point> = (0..10)
                .map(|i| {
                    let t = (batch * 10 + i) * 10 * S;
                    point("temp", &[("room", "lab")], t, t as f64 / 7.0)
                })
                .collect();
            expected.extend(pts.iter().map(|p| (p.timestamp, p.value)));
            shard.write_batch(&pts).unwrap();
        }
        // Overwrite some already-chunked samples.
        shard
            .write_batch(&[point("temp", &[("room", "lab")], 100 * S, -1.0)])
            .unwrap();
        expected[10].1 = -1.0;
        assert!(shard.durable_index() > 0, "cuts advance the durable index");
    }
    let shard = Shard::open(dir.path(), config.clone()).unwrap();
    let got = read(&shard, "temp", i64::MIN, i64::MAX);
    assert_eq!(values(&got[0].1), expected);
    shard.flush().unwrap();
    assert_eq!(shard.durable_index(), shard.last_applied());
    drop(shard);
    let shard = Shard::open(dir.path(), config).unwrap();
    assert_eq!(
        values(&read(&shard, "temp", i64::MIN, i64::MAX)[0].1),
        expected
    );
}

#[test]
fn nan_stale_markers_and_signed_zero_round_trip_bit_exactly() {
    let dir = TempDir::new().unwrap();
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let payload = f64::from_bits(0x7ff8_0000_dead_beef);
    let vals = [stale, payload, -0.0, f64::INFINITY, f64::NEG_INFINITY, 0.1];
    {
        let shard = Shard::open(dir.path(), cfg()).unwrap();
        let pts: Vec<Point> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| point("m", &[], i as i64 * S, *v))
            .collect();
        shard.write_batch(&pts).unwrap();
        let got = read(&shard, "m", 0, 100 * S);
        assert!(got[0]
            .1
            .iter()
            .zip(vals)
            .all(|(s, v)| s.value.to_bits() == v.to_bits()));
        shard.flush().unwrap();
    }
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    let got = read(&shard, "m", 0, 100 * S);
    assert!(got[0]
        .1
        .iter()
        .zip(vals)
        .all(|(s, v)| s.value.to_bits() == v.to_bits()));
}

#[test]
fn invalid_points_reject_the_whole_batch_and_name_the_field() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    let err = shard
        .write_batch(&[
            point("ok", &[], 1, 1.0),
            point("bad", &[("0x", "v")], 1, 1.0),
        ])
        .unwrap_err();
    match err {
        StorageError::InvalidPoint { index, problem } => {
            assert_eq!(index, 1);
            assert_eq!(problem.field(), "labels.0x");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        shard.select(&[eq("__name__", "ok")]).unwrap().is_empty(),
        "nothing of the batch was written"
    );
    let err = shard.write_batch(&[point("", &[], 1, 1.0)]).unwrap_err();
    assert!(err.to_string().contains("metric"), "{err}");
}

#[test]
fn matchers_follow_prometheus_semantics() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    shard
        .write_batch(&[
            point("up", &[("job", "api"), ("env", "prod")], 1, 1.0),
            point("up", &[("job", "api"), ("env", "dev")], 1, 1.0),
            point("up", &[("job", "db")], 1, 1.0),
            point("down", &[("job", "api")], 1, 1.0),
        ])
        .unwrap();
    let names = |ms: &[Matcher]| -> Vec<String> {
        let mut v: Vec<String> = shard
            .select(ms)
            .unwrap()
            .into_iter()
            .map(|(_, k)| k.to_string())
            .collect();
        v.sort();
        v
    };
    let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
    assert_eq!(names(&[eq("__name__", "up"), eq("job", "api")]).len(), 2);
    assert_eq!(
        names(&[eq("__name__", "up"), m(MatchOp::NotEqual, "env", "prod")]),
        vec!["up{env=\"dev\",job=\"api\"}", "up{job=\"db\"}",]
    );
    assert_eq!(names(&[m(MatchOp::Regex, "job", "a.*")]).len(), 3);
    assert_eq!(
        names(&[m(MatchOp::Regex, "job", "a")]).len(),
        0,
        "regexes are anchored"
    );
    assert_eq!(
        names(&[eq("__name__", "up"), m(MatchOp::NotRegex, "env", "p.*")]).len(),
        2
    );
    // env="" selects series without the label.
    assert_eq!(
        names(&[eq("__name__", "up"), eq("env", "")]),
        vec!["up{job=\"db\"}"]
    );
    assert!(
        shard.select(&[m(MatchOp::NotEqual, "job", "x")]).is_err(),
        "needs one non-empty matcher"
    );
    assert!(Matcher::new(MatchOp::Regex, "job", "(").is_err());
}

#[test]
fn aggregates_push_down_with_windows_and_groups() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    let mut pts = Vec::new();
    for (host, dc, base) in [("a", "x", 0.0), ("b", "x", 100.0), ("c", "y", 1000.0)] {
        for i in 0..12 {
            pts.push(point(
                "req_total",
                &[("host", host), ("dc", dc)],
                i * 10 * S,
                base + i as f64 * 10.0,
            ));
        }
    }
    shard.write_batch(&pts).unwrap();
    let req = |f: AggregateFunction, window: i64, by: &[&str]| AggregateRequest {
        matchers: vec![eq("__name__", "req_total")],
        start: 0,
        end: 120 * S,
        window,
        function: f,
        group_by: GroupBy::Labels(by.iter().map(|s| s.to_string()).collect()),
    };
    let out = shard
        .aggregate(&req(AggregateFunction::Sum, 60 * S, &["dc"]))
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].group, vec![Label::new("dc", "x")]);
    // Window [0, 60 s): host a 0..50 step 10 = 150, host b 100..150 = 750.
    assert_eq!(
        values(&out[0].points),
        vec![(0, 900.0), (60 * S, 900.0 + 720.0)]
    );
    let rate = shard
        .aggregate(&req(AggregateFunction::Rate, 0, &["dc"]))
        .unwrap();
    assert!(
        (rate[0].points[0].value - 2.0).abs() < 1e-9,
        "two series at 1/s"
    );
    let count = shard
        .aggregate(&req(AggregateFunction::Count, 0, &[]))
        .unwrap();
    assert_eq!(count[0].group, vec![]);
    assert_eq!(count[0].points[0].value, 36.0);
    let p50 = shard
        .aggregate(&req(AggregateFunction::Percentile(50.0), 0, &["host"]))
        .unwrap();
    assert_eq!(p50[0].points[0].value, 55.0);
    let sd = shard
        .aggregate(&req(AggregateFunction::Stddev, 0, &["host"]))
        .unwrap();
    let expected = (((0..12)
        .map(|i| (i as f64 * 10.0 - 55.0).powi(2))
        .sum::<f64>())
        / 11.0)
        .sqrt();
    assert!((sd[0].points[0].value - expected).abs() < 1e-9);
    let first = shard
        .aggregate(&req(AggregateFunction::First, 0, &["host"]))
        .unwrap();
    let last = shard
        .aggregate(&req(AggregateFunction::Last, 0, &["host"]))
        .unwrap();
    assert_eq!(
        (first[1].points[0].value, last[1].points[0].value),
        (100.0, 210.0)
    );
    let by_series = shard
        .aggregate(&AggregateRequest {
            group_by: GroupBy::Series,
            ..req(AggregateFunction::Max, 0, &[])
        })
        .unwrap();
    assert_eq!(by_series.len(), 3);
    assert!(by_series[2]
        .group
        .contains(&Label::new("__name__", "req_total")));
    assert_eq!(by_series[2].points[0].value, 1110.0);
}

#[test]
fn retention_drops_whole_windows_and_empty_series() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(
        dir.path(),
        ShardConfig {
            retention: Some(Duration::from_secs(6 * 3600)),
            ..cfg()
        },
    )
    .unwrap();
    shard
        .write_batch(&[
            point("old", &[("k", "v")], H, 1.0),
            point("live", &[("k", "v")], H, 1.0),
        ])
        .unwrap();
    shard
        .write_batch(&[point("live", &[("k", "v")], 20 * H, 2.0)])
        .unwrap();
    shard.flush().unwrap();
    let report = shard.enforce_retention(24 * H).unwrap();
    assert_eq!(report.series_removed, 1);
    assert!(
        shard.select(&[eq("__name__", "old")]).unwrap().is_empty(),
        "left the postings"
    );
    assert!(shard.select(&[eq("k", "v")]).unwrap().len() == 1);
    assert_eq!(
        values(&read(&shard, "live", 0, i64::MAX)[0].1),
        vec![(20 * H, 2.0)]
    );
    drop(shard);
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(shard.series_count(), 1);
}

#[test]
fn downsampling_keeps_labels_and_names_series_by_window_and_function() {
    let dir = TempDir::new().unwrap();
    let rule = DownsampleRule {
        window: Duration::from_secs(300),
        function: AggregateFunction::Mean,
        retention: Some(Duration::from_secs(90 * 86_400)),
        matchers: vec![],
    };
    let shard = Shard::open(
        dir.path(),
        ShardConfig {
            downsample: vec![rule],
            ..cfg()
        },
    )
    .unwrap();
    let pts: Vec<Point> = (0..60)
        .map(|i| point("cpu", &[("host", "a")], i * 10 * S, i as f64))
        .collect();
    shard.write_batch(&pts).unwrap();
    let report = shard.run_downsampling(600 * S + 1).unwrap();
    assert_eq!(report.points_written, 2);
    let got = read(&shard, "cpu:5m:mean", 0, i64::MAX);
    assert_eq!(got[0].0.labels, vec![Label::new("host", "a")]);
    assert_eq!(values(&got[0].1), vec![(0, 14.5), (300 * S, 44.5)]);
    // Progress is kept: a second run over the same time writes nothing new.
    assert_eq!(
        shard.run_downsampling(600 * S + 1).unwrap().points_written,
        0
    );
}

/// A replicated downsampling entry covers at most `max_windows` windows
/// from the shard's own progress, and that progress is kept with the
/// durable frontier: replaying the entries after a restart (the Raft log
/// does that) writes exactly what the first run wrote, never skipping a
/// window whose output was lost with the head.
#[test]
fn downsampling_entries_are_bounded_and_replay_the_same() {
    let dir = TempDir::new().unwrap();
    let rule = DownsampleRule {
        window: Duration::from_secs(300),
        function: AggregateFunction::Max,
        retention: None,
        matchers: vec![eq("host", "a")],
    };
    let raw: Vec<Point> = (0..60)
        .flat_map(|m| {
            [
                point("cpu", &[("host", "a")], m * 60 * S, m as f64),
                point("cpu", &[("host", "b")], m * 60 * S, -1.0),
            ]
        })
        .collect();
    let step = DownsampleStep {
        rule: rule.clone(),
        tier: 1,
        to: 3600 * S,
        max_windows: 3,
    };
    let run = |shard: &Shard| {
        shard.apply(1, &raw).unwrap();
        let first = shard.apply_downsample(2, &step).unwrap();
        let second = shard.apply_downsample(3, &step).unwrap();
        (first.points_written, second.points_written)
    };
    let want: Vec<(i64, f64)> = (0..6)
        .map(|k| (k * 300 * S, 5.0 * k as f64 + 4.0))
        .collect();
    {
        let shard = Shard::open(dir.path(), cfg()).unwrap();
        assert_eq!(run(&shard), (3, 3), "three windows per entry, one series");
        let got = read(&shard, "cpu:5m:max", 0, i64::MAX);
        assert_eq!(got.len(), 1, "only host a");
        assert_eq!(values(&got[0].1), want);
        // What the leader would propose next: the rest of the hour.
        let due = shard
            .downsample_due(&rule, 1, 3600 * S + 1, 1_000)
            .unwrap()
            .expect("windows are due");
        assert_eq!(due.to, 3600 * S);
        assert!(shard
            .downsample_due(&rule, 1, 1800 * S, 1_000)
            .unwrap()
            .is_none());
        // Dropped with its head unflushed: nothing past the frontier is on disk.
        assert!(shard.durable_index() < 3);
    }
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(
        run(&shard),
        (3, 3),
        "the replay starts where the first run did"
    );
    let got = read(&shard, "cpu:5m:max", 0, i64::MAX);
    assert_eq!(values(&got[0].1), want);
    // Flushed, the progress is on disk: an entry at a new index goes on.
    shard.flush().unwrap();
    drop(shard);
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(shard.apply_downsample(4, &step).unwrap().points_written, 3);
    assert_eq!(read(&shard, "cpu:5m:max", 0, i64::MAX)[0].1.len(), 9);
}

/// A replay of a downsampling entry after a restart writes what the first
/// application wrote, even when chunks on disk by then hold samples of
/// later entries (here: a late sample cut into a chunk while another
/// series' head keeps the durable frontier before the entry).
#[test]
fn a_replayed_downsampling_entry_ignores_samples_written_after_it() {
    let dir = TempDir::new().unwrap();
    let rule = DownsampleRule {
        window: Duration::from_secs(300),
        function: AggregateFunction::Max,
        retention: None,
        matchers: vec![eq("host", "b")],
    };
    let step = DownsampleStep {
        rule,
        tier: 1,
        to: 600 * S,
        max_windows: 100,
    };
    let first: Vec<Point> = (0..10)
        .map(|m| point("cpu", &[("host", "b")], m * 60 * S, m as f64))
        .chain([point("cpu", &[("host", "c")], 0, 0.0)])
        .collect();
    // A late sample in the first window, and one in the next chunk
    // window, which has the first window's head cut into a chunk.
    let later = [
        point("cpu", &[("host", "b")], 30 * S, 1000.0),
        point("cpu", &[("host", "b")], 2 * H + 60 * S, 0.0),
    ];
    let run = |shard: &Shard| {
        shard.apply(1, &first).unwrap();
        shard.apply_downsample(2, &step).unwrap();
        shard.apply(3, &later).unwrap();
        values(&read(shard, "cpu:5m:max", 0, i64::MAX)[0].1)
    };
    let want = vec![(0, 4.0), (300 * S, 9.0)];
    {
        let shard = Shard::open(dir.path(), cfg()).unwrap();
        assert_eq!(run(&shard), want);
        assert_eq!(shard.durable_index(), 0, "host c's head holds the frontier");
    }
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(run(&shard), want, "the replay wrote what the first run did");
    // Once the frontier passes the entry its record goes.
    shard.flush().unwrap();
    drop(shard);
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(values(&read(&shard, "cpu:5m:max", 0, i64::MAX)[0].1), want);
}

#[test]
fn apply_is_idempotent_and_checkpoints_restore() {
    let dir = TempDir::new().unwrap();
    let batches: Vec<Vec<Point>> = (0..20)
        .map(|b| {
            (0..5)
                .map(|i| point("m", &[("i", &i.to_string())], b * 10 * S, (b * i) as f64))
                .collect()
        })
        .collect();
    let a = Shard::open(dir.path().join("a"), cfg()).unwrap();
    for (i, b) in batches.iter().enumerate() {
        assert!(a.apply(i as u64 + 1, b).unwrap());
    }
    assert!(
        !a.apply(3, &batches[2]).unwrap(),
        "replayed index is ignored"
    );
    let snap = a.checkpoint(dir.path().join("snap")).unwrap();
    assert_eq!(snap.applied_index, 20);
    let b = Shard::restore(&snap.path, dir.path().join("b"), cfg()).unwrap();
    assert_eq!(b.durable_index(), 20);
    let (ra, rb) = (read(&a, "m", 0, i64::MAX), read(&b, "m", 0, i64::MAX));
    assert_eq!(ra, rb);
    assert_eq!(ra.len(), 5);
    // The same applies on a fresh shard give the same logical state.
    let c = Shard::open(dir.path().join("c"), cfg()).unwrap();
    for (i, b) in batches.iter().enumerate() {
        c.apply(i as u64 + 1, b).unwrap();
    }
    assert_eq!(read(&c, "m", 0, i64::MAX), ra);
}

#[test]
fn query_first_reads_the_first_samples_in_key_order_and_stops() {
    let dir = TempDir::new().unwrap();
    let s = Shard::open(dir.path(), cfg()).unwrap();
    // Written in reverse key order, so id order is not key order.
    for host in ["c", "b", "a"] {
        let points: Vec<Point> = (0..10)
            .map(|i| point("m", &[("host", host)], i * S, i as f64))
            .collect();
        s.write_batch(&points).unwrap();
    }
    let (series, truncated) = s
        .query_first(&[eq("__name__", "m")], 0, i64::MAX, 13)
        .unwrap();
    assert!(truncated);
    let hosts: Vec<&str> = series
        .iter()
        .map(|(k, _)| k.label("host").unwrap())
        .collect();
    assert_eq!(hosts, ["a", "b"]);
    assert_eq!(series[0].1.len(), 10);
    assert_eq!(values(&series[1].1), vec![(0, 0.0), (S, 1.0), (2 * S, 2.0)]);
    // Exactly everything: not truncated.
    let (series, truncated) = s
        .query_first(&[eq("__name__", "m")], 0, i64::MAX, 30)
        .unwrap();
    assert!(!truncated);
    assert_eq!(series.iter().map(|(_, v)| v.len()).sum::<usize>(), 30);
    // The limited read refuses as soon as it passes the bound.
    assert!(s
        .query_limited(&[eq("__name__", "m")], 0, i64::MAX, 29)
        .unwrap()
        .is_none());
    assert!(s
        .query_limited(&[eq("__name__", "m")], 0, i64::MAX, 30)
        .unwrap()
        .is_some());
}

#[test]
fn committed_entries_apply_whatever_this_replicas_limits() {
    // This replica allows 2 labels; the leader accepted 3. A committed entry
    // is applied anyway (validated at proposal), never refused here: a
    // refusal would stop the replica's state machine for good.
    let dir = TempDir::new().unwrap();
    let strict = ShardConfig {
        limits: Limits {
            max_labels: 2,
            ..Limits::default()
        },
        ..cfg()
    };
    let s = Shard::open(dir.path(), strict).unwrap();
    let wide = point("m", &[("a", "1"), ("b", "2"), ("c", "3")], 10 * S, 1.0);
    assert!(
        s.write_batch(std::slice::from_ref(&wide)).is_err(),
        "a direct write is checked"
    );
    assert!(s.apply(1, &[wide]).unwrap());
    // What no shard can hold is left out the same way on every replica; the
    // rest of the entry applies and the index advances.
    let bad = point("bad metric name", &[], 20 * S, 2.0);
    let good = point("m", &[("a", "1"), ("b", "2"), ("c", "3")], 20 * S, 2.0);
    assert!(s.apply(2, &[bad, good]).unwrap());
    assert_eq!(s.last_applied(), 2);
    let stored = read(&s, "m", 0, i64::MAX);
    assert_eq!(values(&stored[0].1), vec![(10 * S, 1.0), (20 * S, 2.0)]);
}

#[test]
fn applied_batches_not_yet_durable_are_reapplied_after_restart() {
    let dir = TempDir::new().unwrap();
    {
        let s = Shard::open(dir.path(), cfg()).unwrap();
        s.apply(1, &[point("m", &[], 10 * S, 1.0)]).unwrap();
        s.flush().unwrap();
        s.apply(2, &[point("m", &[], 20 * S, 2.0)]).unwrap();
    }
    let s = Shard::open(dir.path(), cfg()).unwrap();
    assert_eq!(
        s.durable_index(),
        1,
        "index 2 lives only in the caller's log"
    );
    assert!(!s.apply(1, &[point("m", &[], 10 * S, 1.0)]).unwrap());
    assert!(s.apply(2, &[point("m", &[], 20 * S, 2.0)]).unwrap());
    assert_eq!(
        values(&read(&s, "m", 0, i64::MAX)[0].1),
        vec![(10 * S, 1.0), (20 * S, 2.0)]
    );
}

#[test]
fn a_corrupt_chunk_is_an_error_naming_series_and_range() {
    let dir = TempDir::new().unwrap();
    {
        let s = Shard::open(dir.path(), cfg()).unwrap();
        s.write_batch(&[
            point("m", &[("k", "v")], 10 * S, 1.0),
            point("m", &[("k", "v")], 20 * S, 2.0),
        ])
        .unwrap();
        s.flush().unwrap();
    }
    {
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &names).unwrap();
        let cf = db.cf_handle("chunks").unwrap();
        let (k, v) = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .next()
            .unwrap()
            .unwrap();
        let mut v = v.to_vec();
        let mid = v.len() / 2 + 3;
        v[mid] ^= 0x10;
        db.put_cf(cf, k, v).unwrap();
    }
    let s = Shard::open(dir.path(), cfg()).unwrap();
    let err = s.query(&[eq("k", "v")], 0, i64::MAX).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::CorruptChunk { .. }), "{text}");
    assert!(text.contains("m{k=\"v\"}"), "{text}");
    // The checksum covers the header too, so the range named is the chunk's window.
    assert!(text.contains(&format!("[0, {}]", 2 * H - 1)), "{text}");
}

#[test]
fn decoded_cache_serves_what_is_stored_after_late_writes() {
    let dir = TempDir::new().unwrap();
    let uncached = TempDir::new().unwrap();
    let cached = Shard::open(dir.path(), cfg()).unwrap();
    let plain = Shard::open(
        uncached.path(),
        ShardConfig {
            decoded_cache_bytes: 0,
            ..cfg()
        },
    )
    .unwrap();
    let writes: [Vec<Point>; 3] = [
        (0..100)
            .map(|i| point("m", &[("k", "v")], i * 10 * S, i as f64))
            .collect(),
        // Late: overwrites one sample and adds one inside the flushed window.
        vec![
            point("m", &[("k", "v")], 500 * S, -1.0),
            point("m", &[("k", "v")], 505 * S, 0.5),
        ],
        vec![point("m", &[("k", "v")], 990 * S, 99.0)],
    ];
    for batch in &writes {
        for shard in [&cached, &plain] {
            shard.write_batch(batch).unwrap();
            shard.flush().unwrap();
        }
        // Read twice: the second read is served from the cache.
        for _ in 0..2 {
            assert_eq!(
                read(&cached, "m", 0, H),
                read(&plain, "m", 0, H),
                "cached and uncached reads differ"
            );
        }
    }
    let got = read(&cached, "m", 499 * S, 506 * S);
    assert_eq!(values(&got[0].1), vec![(500 * S, -1.0), (505 * S, 0.5)]);
    cached.compact().unwrap();
    assert_eq!(read(&cached, "m", 0, H), read(&plain, "m", 0, H));
    assert!(cached.decoded_cache_bytes() > 0);
}

#[test]
fn have_data_answers_per_series_from_head_and_chunks() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    shard
        .write_batch(&[
            point("old", &[("k", "v")], 10 * S, 1.0),
            point("new", &[("k", "v")], 10 * H, 1.0),
        ])
        .unwrap();
    shard.flush().unwrap(); // "old" and "new" are now in chunks
    shard
        .write_batch(&[point("head", &[("k", "v")], 20 * H, 1.0)])
        .unwrap();
    let ids: Vec<u64> = ["old", "new", "head"]
        .iter()
        .map(|m| shard.select(&[eq("__name__", m)]).unwrap()[0].0)
        .collect();
    let ask = |start, end| shard.have_data(&ids, start, end).unwrap();
    assert_eq!(ask(0, H), [true, false, false]);
    assert_eq!(ask(9 * H, 11 * H), [false, true, false]);
    assert_eq!(ask(19 * H, 21 * H), [false, false, true]);
    assert_eq!(ask(0, 30 * H), [true, true, true]);
    assert_eq!(ask(30 * H, 40 * H), [false, false, false]);
    assert_eq!(ask(5, 5), [false, false, false]);
    // Unknown ids hold nothing.
    assert_eq!(shard.have_data(&[9999], 0, 30 * H).unwrap(), [false]);
}

#[test]
fn query_limited_stops_at_the_sample_budget() {
    let dir = TempDir::new().unwrap();
    let shard = Shard::open(dir.path(), cfg()).unwrap();
    let points: Vec<Point> = (0..10)
        .flat_map(|s| {
            let host = format!("h{s}");
            (0..10).map(move |i| point("m", &[("host", host.as_str())], i * S, 1.0))
        })
        .collect();
    shard.write_batch(&points).unwrap();
    shard.flush().unwrap();
    let m = [eq("__name__", "m")];
    let all = shard.query_limited(&m, 0, H, 100).unwrap().unwrap();
    assert_eq!(all.iter().map(|(_, s)| s.len()).sum::<usize>(), 100);
    assert!(shard.query_limited(&m, 0, H, 99).unwrap().is_none());
    assert!(shard.query_limited(&m, 0, H, 0).unwrap().is_none());
    // The budget counts what is in range only.
    assert!(shard.query_limited(&m, 0, 5 * S, 50).unwrap().is_some());
}

/// A read large enough to be decoded on several threads answers exactly what
/// one thread does, spends the same sample budget, and reports a corrupt
/// chunk the same way.
#[test]
fn a_read_decoded_on_several_threads_answers_as_one_thread_does() {
    let dir = TempDir::new().unwrap();
    let open = |threads| {
        Shard::open(
            dir.path(),
            ShardConfig {
                decode_threads: threads,
                decoded_cache_bytes: 0,
                ..cfg()
            },
        )
        .unwrap()
    };
    let total;
    {
        // Full-precision pseudo-random values: about 9 bytes a sample, so
        // 48,600 samples are well over the 8 KiB from which helpers start.
        let shard = open(1);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut value = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / 7.0
        };
        let hosts: Vec<String> = (0..300).map(|h| format!("h{h}")).collect();
        let mut round = |r: i64| -> Vec<Point> {
            hosts
                .iter()
                .map(|h| point("noise", &[("host", h)], r * 10 * S, value()))
                .collect()
        };
        for r in 0..160 {
            shard.write_batch(&round(r)).unwrap();
        }
        shard.flush().unwrap();
        // And some samples still in the heads.
        for r in 160..162 {
            shard.write_batch(&round(r)).unwrap();
        }
        total = 300 * 162;
    }
    let m = [eq("__name__", "noise")];
    let read = |shard: &Shard, max| shard.query_limited(&m, 0, i64::MAX, max).unwrap();
    let one = {
        let shard = open(1);
        let answer = read(&shard, usize::MAX).unwrap();
        assert_eq!(shard.read_counts().reads_in_parallel, 0);
        answer
    };
    assert_eq!(one.len(), 300);
    assert_eq!(one.iter().map(|(_, s)| s.len()).sum::<usize>(), total);
    let shard = open(4);
    assert_eq!(read(&shard, usize::MAX).unwrap(), one);
    assert_eq!(shard.read_counts().reads_in_parallel, 1, "helpers decoded");
    assert!(read(&shard, total).is_some());
    assert!(read(&shard, total - 1).is_none());
    assert!(read(&shard, total / 2).is_none());
    // A window inside the data: the same answer either way.
    let part = shard.query(&m, 100 * S, 1000 * S).unwrap();
    drop(shard);
    assert_eq!(open(1).query(&m, 100 * S, 1000 * S).unwrap(), part);

    // With the decoded cache on, a second read is served from it (no bytes
    // to decode, one thread) and answers the same.
    {
        let cached = Shard::open(
            dir.path(),
            ShardConfig {
                decode_threads: 4,
                ..cfg()
            },
        )
        .unwrap();
        assert_eq!(read(&cached, usize::MAX).unwrap(), one);
        assert_eq!(read(&cached, usize::MAX).unwrap(), one);
        let counts = cached.read_counts();
        assert_eq!(counts.reads_in_parallel, 1, "only the first read decoded");
        assert!(counts.decoded_cache_hits >= 300);
        assert!(read(&cached, total - 1).is_none());
    }

    // A cache whose decoded quarter holds a quarter of the chunks: a second
    // read finds the rest packed, and decodes nothing.
    {
        let cached = Shard::open(
            dir.path(),
            ShardConfig {
                decode_threads: 4,
                decoded_cache_bytes: total * 16,
                ..cfg()
            },
        )
        .unwrap();
        assert_eq!(read(&cached, usize::MAX).unwrap(), one);
        let first = cached.read_counts();
        assert_eq!(read(&cached, usize::MAX).unwrap(), one);
        let second = cached.read_counts();
        assert_eq!(
            second.chunks_decoded, first.chunks_decoded,
            "nothing decoded again"
        );
        assert!(second.packed_cache_hits > first.packed_cache_hits);
        assert_eq!(
            second.decoded_cache_misses, first.decoded_cache_misses,
            "every chunk found in some tier"
        );
    }

    // One chunk in the middle damaged: both answer the corrupt chunk.
    {
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &names).unwrap();
        let cf = db.cf_handle("chunks").unwrap();
        let chunks: Vec<_> = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|kv| kv.unwrap())
            .collect();
        let (k, v) = &chunks[chunks.len() / 2];
        let mut v = v.to_vec();
        let mid = v.len() / 2;
        v[mid] ^= 0x10;
        db.put_cf(cf, k, v).unwrap();
    }
    for threads in [1, 4] {
        let err = open(threads)
            .query_limited(&m, 0, i64::MAX, usize::MAX)
            .unwrap_err();
        assert!(matches!(err, StorageError::CorruptChunk { .. }), "{err}");
    }
}

mod idempotency {
    use chronicle_storage::{
        EncodedPoints, KeyedPart, KeyedStamp, Label, Matcher, Point, Shard, ShardConfig,
    };

    const S: i64 = 1_000_000_000;

    fn batch(value: f64) -> EncodedPoints {
        EncodedPoints::encode(&[Point::new("m", vec![Label::new("k", "v")], value, 10 * S)])
    }

    fn value(shard: &Shard) -> f64 {
        let got = shard
            .query(&[Matcher::equal("__name__", "m")], 0, i64::MAX)
            .unwrap();
        got[0].1.last().unwrap().value
    }

    fn part(key: &str) -> [KeyedPart<'_>; 1] {
        [KeyedPart {
            key,
            part: 0,
            start: 0,
            len: 1,
        }]
    }

    fn stamp(nonce: u64, at: i64) -> KeyedStamp {
        KeyedStamp {
            nonce,
            at,
            window: 60 * S,
        }
    }

    #[test]
    fn a_part_applies_once_per_key_within_the_window_and_replays_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        {
            let shard = Shard::open(dir.path(), config.clone()).unwrap();
            let first = shard
                .apply_encoded_keyed(1, &batch(1.0), &part("a"), stamp(7, 100 * S))
                .unwrap();
            assert_eq!((first.written, first.duplicates.len()), (1, 0));
            shard.apply_encoded(2, &batch(2.0)).unwrap();
            // A retry (another submission) within the window: skipped.
            let retry = shard
                .apply_encoded_keyed(3, &batch(1.0), &part("a"), stamp(8, 110 * S))
                .unwrap();
            assert_eq!((retry.written, retry.duplicates), (0, vec![0]));
            assert_eq!(value(&shard), 2.0);
            // Any later entry with the key and part, even from the same
            // submission (a re-send), is a repeat.
            let same = shard
                .apply_encoded_keyed(4, &batch(4.0), &part("a"), stamp(7, 111 * S))
                .unwrap();
            assert_eq!(same.written, 0);
            // After the window the key is new again.
            let late = shard
                .apply_encoded_keyed(5, &batch(5.0), &part("a"), stamp(9, 200 * S))
                .unwrap();
            assert_eq!(late.written, 1);
            assert_eq!(value(&shard), 5.0);
            // Dropped unflushed: entries 1..=5 are replayed from the log.
        }
        let shard = Shard::open(dir.path(), config).unwrap();
        // Records reach the disk with the durable frontier (0 here): the
        // replay starts from the records as they were before entry 1.
        let r1 = shard
            .apply_encoded_keyed(1, &batch(1.0), &part("a"), stamp(7, 100 * S))
            .unwrap();
        assert_eq!(r1.written, 1);
        shard.apply_encoded(2, &batch(2.0)).unwrap();
        let r3 = shard
            .apply_encoded_keyed(3, &batch(1.0), &part("a"), stamp(8, 110 * S))
            .unwrap();
        let r4 = shard
            .apply_encoded_keyed(4, &batch(4.0), &part("a"), stamp(7, 111 * S))
            .unwrap();
        let r5 = shard
            .apply_encoded_keyed(5, &batch(5.0), &part("a"), stamp(9, 200 * S))
            .unwrap();
        assert_eq!(
            (r3.written, r4.written, r5.written),
            (0, 0, 1),
            "the replay decides as the first run did"
        );
        assert_eq!(value(&shard), 5.0);
    }
}

mod delete {
    use chronicle_storage::{Label, Matcher, Point, Shard, ShardConfig};

    fn point(series: &str, t: i64) -> Point {
        Point::new("m", vec![Label::new("s", series)], t as f64, t)
    }

    fn times(shard: &Shard, series: &str) -> Vec<i64> {
        shard
            .query(
                &[Matcher::equal("__name__", "m"), Matcher::equal("s", series)],
                i64::MIN,
                i64::MAX,
            )
            .unwrap()
            .first()
            .map(|(_, s)| s.iter().map(|x| x.timestamp).collect())
            .unwrap_or_default()
    }

    /// Writes into the deleted range after the delete reach a chunk; a
    /// restart replays the delete (the durable index is held back by another
    /// series) and must not delete them.
    #[test]
    fn a_replayed_delete_leaves_what_was_written_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            sync_writes: false,
            max_chunk_samples: 4,
            ..ShardConfig::default()
        };
        let run = |shard: &Shard| {
            shard.apply(1, &[point("y", 0)]).unwrap();
            shard.apply(2, &[point("x", 10)]).unwrap();
            shard.apply(3, &[point("x", 20)]).unwrap();
            let report = shard
                .apply_delete(4, &[Matcher::equal("s", "x")], 0, 100, None)
                .unwrap();
            for (i, t) in [30, 40, 50, 60].into_iter().enumerate() {
                shard.apply(5 + i as u64, &[point("x", t)]).unwrap();
            }
            report
        };
        {
            let shard = Shard::open(dir.path(), config.clone()).unwrap();
            let report = run(&shard);
            assert_eq!(report.samples, 2);
            assert_eq!(times(&shard, "x"), [30, 40, 50, 60]);
            // y's head keeps the durable index at 0: everything is replayed.
            assert_eq!(shard.durable_index(), 0);
        }
        let shard = Shard::open(dir.path(), config).unwrap();
        run(&shard);
        assert_eq!(times(&shard, "x"), [30, 40, 50, 60]);
        assert_eq!(times(&shard, "y"), [0]);
    }

    #[test]
    fn a_delete_covers_chunks_and_heads_inclusively() {
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        let shard = Shard::open(dir.path(), config).unwrap();
        for t in 0..10 {
            shard.apply(t as u64 + 1, &[point("x", t * 10)]).unwrap();
        }
        shard.flush().unwrap();
        for t in 10..20 {
            shard.apply(t as u64 + 1, &[point("x", t * 10)]).unwrap();
        }
        let report = shard
            .apply_delete(21, &[Matcher::equal("s", "x")], 50, 140, None)
            .unwrap();
        assert_eq!(report.samples, 10);
        let want: Vec<i64> = (0..20)
            .map(|t| t * 10)
            .filter(|t| !(50..=140).contains(t))
            .collect();
        assert_eq!(times(&shard, "x"), want);
        // An index already applied does nothing.
        let again = shard
            .apply_delete(21, &[Matcher::equal("s", "x")], 0, 1000, None)
            .unwrap();
        assert_eq!(again.samples, 0);
        assert_eq!(times(&shard, "x"), want);
        // The same delete sent twice (one id): the second entry does nothing,
        // so what was written between the two stays.
        let stamp = chronicle_storage::KeyedStamp {
            nonce: 99,
            at: 1_000,
            window: 3_600_000_000_000,
        };
        let first = shard
            .apply_delete(22, &[Matcher::equal("s", "x")], 0, 40, Some(stamp))
            .unwrap();
        assert_eq!((first.samples, first.repeated), (5, false));
        shard.apply(23, &[point("x", 0)]).unwrap();
        let repeat = shard
            .apply_delete(24, &[Matcher::equal("s", "x")], 0, 40, Some(stamp))
            .unwrap();
        assert!(repeat.repeated);
        assert_eq!(times(&shard, "x")[0], 0, "the repeat deleted a later write");
    }
}

/// `query_last` answers what the last sample of a full read is, from memory
/// where it can: after a cut and after a restart (the newest flushed sample,
/// kept with the series state), from the head, and by reading chunks after
/// a delete of the newest sample and for ranges that end before it.
#[test]
fn instant_reads_take_the_newest_sample_from_memory_and_agree_with_a_full_read() {
    let dir = TempDir::new().unwrap();
    let config = ShardConfig {
        decoded_cache_bytes: 0,
        ..cfg()
    };
    let all = [eq("__name__", "m")];
    let abc = [
        eq("__name__", "m"),
        Matcher::new(MatchOp::Regex, "host", "a|b|c").unwrap(),
    ];
    let check = |shard: &Shard, start: i64, end: i64| {
        let last = shard.query_last(&all, start, end).unwrap();
        let full = shard.query(&all, start, end).unwrap();
        // `last` over one window (SQL's lastpoint) takes the same shortcut
        // but skips staleness markers.
        let aggregated = shard
            .aggregate(&AggregateRequest {
                matchers: all.to_vec(),
                start,
                end,
                window: 0,
                function: AggregateFunction::Last,
                group_by: GroupBy::Series,
            })
            .unwrap();
        let aggregated: Vec<(String, f64)> = aggregated
            .iter()
            .flat_map(|a| {
                let host = a.group.iter().find(|l| l.name == "host").unwrap();
                a.points.iter().map(|p| (host.value.clone(), p.value))
            })
            .collect();
        let expected: Vec<(String, f64)> = full
            .iter()
            .filter_map(|(k, samples)| {
                let last = samples
                    .iter()
                    .rev()
                    .find(|s| s.value.to_bits() != model::STALE_NAN_BITS)?;
                Some((k.labels[0].value.clone(), last.value))
            })
            .collect();
        assert_eq!(aggregated, expected, "last() in [{start}, {end})");
        assert_eq!(last.len(), full.len());
        for ((lk, ls), (fk, fs)) in last.iter().zip(&full) {
            assert_eq!(lk, fk);
            // Bit for bit: a staleness marker is a NaN.
            let bits = |s: &[Sample]| -> Vec<(i64, u64)> {
                s.iter().map(|s| (s.timestamp, s.value.to_bits())).collect()
            };
            assert_eq!(
                bits(ls),
                bits(&fs[fs.len().saturating_sub(1)..]),
                "{lk} in [{start}, {end})"
            );
        }
    };
    let mut index = 0;
    let mut apply = |shard: &Shard, points: &[Point]| {
        index += 1;
        shard.apply(index, points).unwrap();
        index
    };
    let newest = 5 * H;
    {
        let shard = Shard::open(dir.path(), config.clone()).unwrap();
        for t in (0..=newest).step_by((10 * S) as usize) {
            let pts: Vec<Point> = ["a", "b", "c"]
                .iter()
                .map(|h| point("m", &[("host", h)], t, t as f64 / S as f64))
                .collect();
            apply(&shard, &pts);
        }
        // Rewritten at its newest time: the later write is the answer.
        apply(&shard, &[point("m", &[("host", "a")], newest, -1.0)]);
        // A series whose newest sample is a staleness marker.
        let stale = f64::from_bits(model::STALE_NAN_BITS);
        apply(
            &shard,
            &[point("m", &[("host", "d")], newest - 20 * S, 4.0)],
        );
        apply(
            &shard,
            &[point("m", &[("host", "d")], newest - 10 * S, stale)],
        );
        shard.flush().unwrap();
        // One series has a newer sample in its head.
        apply(
            &shard,
            &[point("m", &[("host", "c")], newest + 10 * S, 7.0)],
        );

        let before = shard.read_counts();
        let got = shard
            .query_last(&abc, newest - 300 * S, newest + 11 * S)
            .unwrap();
        let got: Vec<(i64, f64)> = got.iter().flat_map(|(_, s)| values(s)).collect();
        assert_eq!(
            got,
            vec![(newest, -1.0), (newest, 18000.0), (newest + 10 * S, 7.0)]
        );
        let after = shard.read_counts();
        assert_eq!(after.last_from_memory - before.last_from_memory, 3);
        assert_eq!(
            after.chunks_decoded, before.chunks_decoded,
            "nothing decoded"
        );

        for (start, end) in [
            (newest - 300 * S, newest + 11 * S),
            (newest - 300 * S, newest),         // ends before the newest
            (H, 2 * H + 5 * S),                 // in the past, across a window
            (newest + 20 * S, newest + 60 * S), // after everything
            (-10 * S, 0),                       // before everything
            (0, i64::MAX),
        ] {
            check(&shard, start, end);
        }
        let before = shard.read_counts();
        check(&shard, H, 2 * H);
        assert!(shard.read_counts().last_from_chunks > before.last_from_chunks);

        // Deleting the newest sample: the one before it is the answer now.
        shard
            .apply_delete(
                apply(&shard, &[]) + 1,
                &[eq("host", "a")],
                newest,
                newest,
                None,
            )
            .unwrap();
        check(&shard, newest - 300 * S, newest + 11 * S);
        let got = shard.query_last(&[eq("host", "a")], 0, i64::MAX).unwrap();
        assert_eq!(values(&got[0].1), vec![(newest - 10 * S, 17990.0)]);
    }
    // A restart keeps the newest flushed values (with the series state), but
    // not the one the delete removed: that series reads its chunks. (The
    // head sample applied after the cut is not durable here: in a node the
    // Raft log applies it again.)
    let shard = Shard::open(dir.path(), config).unwrap();
    check(&shard, newest - 300 * S, newest + 11 * S);
    let before = shard.read_counts();
    let got = shard
        .query_last(&abc, newest - 300 * S, newest + 11 * S)
        .unwrap();
    let got: Vec<(i64, f64)> = got.iter().flat_map(|(_, s)| values(s)).collect();
    assert_eq!(
        got,
        vec![
            (newest - 10 * S, 17990.0),
            (newest, 18000.0),
            (newest, 18000.0)
        ]
    );
    let after = shard.read_counts();
    assert_eq!(
        (
            after.last_from_memory - before.last_from_memory,
            after.last_from_chunks - before.last_from_chunks
        ),
        (2, 1)
    );
}

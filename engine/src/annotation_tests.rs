//! Annotations and `limit_ratio` through the whole engine.

use proptest::prelude::*;

use crate::source::MemorySource;
use crate::value::{Labels, QueryValue, RangeSeries, Sample};
use crate::{evaluate, promql, Answer, Query, QueryLimits, Severity};

fn source(series: &[(&[(&str, &str)], f64)]) -> MemorySource {
    MemorySource {
        series: series
            .iter()
            .map(|(labels, v)| RangeSeries {
                labels: Labels::new(
                    labels
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                ),
                samples: (0..=10)
                    .map(|i| Sample {
                        t: i * 60_000,
                        v: *v,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn run(src: &MemorySource, query: &str, range: bool) -> Answer {
    let plan = promql::parse(query).unwrap();
    let q = if range {
        Query::range(plan, 0, 600_000, 60_000)
    } else {
        Query::instant(plan, 600_000)
    };
    evaluate(src, &q, &QueryLimits::default()).unwrap()
}

fn messages(a: &Answer, severity: Severity) -> Vec<&str> {
    a.annotations
        .iter()
        .filter(|x| x.severity == severity)
        .map(|x| x.message.as_str())
        .collect()
}

#[test]
fn sort_in_a_range_query_warns_at_the_call() {
    let src = source(&[(&[("__name__", "m")], 1.0)]);
    let a = run(&src, "sum(sort(m))", true);
    assert_eq!(
        messages(&a, Severity::Warning),
        ["PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:5)"]
    );
    // Instant queries keep their order: no warning.
    assert!(run(&src, "sort(m)", false).annotations.is_empty());
}

#[test]
fn positions_follow_lines_and_nesting() {
    let src = source(&[(&[("__name__", "m"), ("a", "x")], 1.0)]);
    let a = run(
        &src,
        "rate(m{a=\"x\", b=\"\"}[5m])\n  + on() quantile_over_time(2, m[5m])",
        false,
    );
    assert_eq!(
        messages(&a, Severity::Warning),
        ["PromQL warning: quantile value should be between 0 and 1, got 2 (2:29)"]
    );
    let a = run(&src, "quantile by (a) (NaN, m)", false);
    assert_eq!(
        messages(&a, Severity::Warning),
        ["PromQL warning: quantile value should be between 0 and 1, got NaN (1:18)"]
    );
}

#[test]
fn histogram_quantile_reports_bad_buckets_and_forced_monotonicity() {
    let src = source(&[
        (&[("__name__", "h_bucket"), ("le", "1")], 5.0),
        (&[("__name__", "h_bucket"), ("le", "2")], 3.0),
        (&[("__name__", "h_bucket"), ("le", "+Inf")], 6.0),
        (&[("__name__", "h_bucket"), ("le", "wide")], 1.0),
    ]);
    let a = run(&src, "histogram_quantile(0.5, h_bucket)", false);
    assert_eq!(
        messages(&a, Severity::Warning),
        ["PromQL warning: bucket label \"le\" is missing or has a malformed value of \"wide\" for metric name \"h_bucket\" (1:25)"]
    );
    assert_eq!(
        messages(&a, Severity::Info),
        ["PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name \"h_bucket\" (1:25)"]
    );
}

fn kept(src: &MemorySource, query: &str) -> Vec<String> {
    let QueryValue::Vector(v) = run(src, query, false).value else {
        panic!("not a vector")
    };
    let mut ids: Vec<String> = v
        .iter()
        .map(|(l, _)| l.get("id").unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

proptest! {
    #[test]
    fn limit_ratio_splits_series_into_complements(n in 1usize..60, r in 0.0f64..1.0) {
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let labels: Vec<[(&str, &str); 2]> = ids.iter().map(|i| [("__name__", "m"), ("id", i.as_str())]).collect();
        let series: Vec<(&[(&str, &str)], f64)> = labels.iter().map(|l| (&l[..], 1.0)).collect();
        let src = source(&series);
        let low = kept(&src, &format!("limit_ratio({r}, m)"));
        let high = kept(&src, &format!("limit_ratio(-{}, m)", 1.0 - r));
        let mut all = low.clone();
        all.extend(high.iter().cloned());
        all.sort();
        let mut want = ids.clone();
        want.sort();
        prop_assert_eq!(all, want, "r = {}: {:?} + {:?}", r, low, high);
        prop_assert_eq!(kept(&src, "limit_ratio(1, m)").len(), n);
        prop_assert!(kept(&src, "limit_ratio(0, m)").is_empty());
    }
}

#[test]
fn limit_ratio_caps_and_refuses_nan() {
    let src = source(&[(&[("__name__", "m"), ("id", "1")], 1.0)]);
    let a = run(&src, "limit_ratio(1.5, m)", false);
    assert_eq!(
        messages(&a, Severity::Warning),
        ["PromQL warning: ratio value should be between -1 and 1, got 1.5, capping to 1 (1:13)"]
    );
    let plan = promql::parse("limit_ratio(NaN, m)").unwrap();
    let err = evaluate(&src, &Query::instant(plan, 0), &QueryLimits::default()).unwrap_err();
    assert_eq!(err.to_string(), "Ratio value is NaN");
}

/// Found by fuzzing: promql-parser panics on durations that overflow; they
/// must be parse errors.
#[test]
fn out_of_range_durations_are_parse_errors() {
    for q in [
        "x[1e400]",
        "x[5m:1e400]",
        "x[1e400:5m]",
        "x offset 1e400",
        "x offset -1e400",
        "x[5999998E9999:99990m]",
        "x[99999999999999999999999]",
        "x[5m:1m] offset 1e300",
        "x[0xffffffffffffffff]",
    ] {
        let err = promql::parse(q).unwrap_err();
        // Refused before the parser sees it (the fuzzer aborts on any panic,
        // caught or not).
        assert!(
            matches!(&err, crate::EngineError::Parse(m) if m.contains("out of range")),
            "{q}: {err:?}"
        );
    }
    for q in ["x[1e6]", "x offset 1e9", "x[5m:30]", "1e400 + x"] {
        assert!(promql::parse(q).is_ok(), "{q}");
    }
}

//! Hostile time ranges and expansions: refused by counting, before anything is
//! built, and never an arithmetic overflow.

use proptest::prelude::*;

use crate::source::MemorySource;
use crate::value::{Labels, RangeSeries, Sample};
use crate::{evaluate, promql, EngineError, Query, QueryLimits};

fn source(series: usize, samples: usize) -> MemorySource {
    MemorySource {
        series: (0..series)
            .map(|i| RangeSeries {
                labels: Labels::new(vec![
                    ("__name__".into(), "m".into()),
                    ("id".into(), i.to_string()),
                ]),
                samples: (0..samples)
                    .map(|j| Sample {
                        t: j as i64 * 15_000,
                        v: j as f64,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn run(text: &str, start: i64, end: i64, step: i64, limits: &QueryLimits) -> crate::Result<()> {
    let plan = promql::parse(text)?;
    let query = if start == end {
        Query::instant(plan, start)
    } else {
        Query::range(plan, start, end, step)
    };
    evaluate(&source(3, 20), &query, limits).map(|_| ())
}

fn is_limit(r: crate::Result<()>) -> bool {
    matches!(r, Err(EngineError::Limit(_)))
}

fn limit_error(r: crate::Result<()>) {
    assert!(matches!(r, Err(EngineError::Limit(_))), "{r:?}");
}

#[test]
fn a_trillion_steps_are_refused_by_counting() {
    let limits = QueryLimits::default();
    // 0 .. 10^12 ms at 1 ms: would be 10^12 step times.
    assert!(is_limit(run("1", 0, 1_000_000_000_000, 1, &limits)));
    // The whole i64 range: end - start overflows i64.
    assert!(is_limit(run("1", i64::MIN, i64::MAX, 1, &limits)));
    assert!(
        is_limit(run("m", i64::MIN, i64::MAX, i64::MAX, &limits)) || {
            // Three steps at most; fine to answer.
            run("m", i64::MIN, i64::MAX, i64::MAX, &limits).is_ok()
        }
    );
}

#[test]
fn a_subquery_of_a_trillion_steps_is_refused_by_counting() {
    let limits = QueryLimits::default();
    assert!(is_limit(run(
        "max_over_time(m[100y:1ms])",
        1_000_000,
        1_000_000,
        1,
        &limits
    )));
    assert!(is_limit(run(
        "m[100y:1ms]",
        1_000_000,
        1_000_000,
        1,
        &limits
    )));
}

#[test]
fn extreme_times_offsets_and_ranges_do_not_overflow() {
    let limits = QueryLimits::default();
    for text in [
        "m",
        "m offset 100y",
        "m offset -100y",
        "rate(m[100y])",
        "m @ 1e15",
        "max_over_time(m[1y:1d] offset -50y)",
        "timestamp(m)",
        "time()",
        "predict_linear(m[5m], 1e15)",
    ] {
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            let _ = run(text, t, t, 1, &limits);
        }
    }
}

#[test]
fn values_built_count_against_max_samples() {
    // 3 series x 1,000 steps of `m` are 3,000 values from at most 60 samples read.
    let limits = QueryLimits {
        max_samples: 1_000,
        ..QueryLimits::default()
    };
    limit_error(run("m", 0, 999_000, 1_000, &limits));
    // A scalar per step counts too.
    assert!(is_limit(run("1 + 1", 0, 999_000, 1_000, &limits)));
    // Within the budget it answers.
    let roomy = QueryLimits {
        max_samples: 100_000,
        ..QueryLimits::default()
    };
    run("m", 0, 999_000, 1_000, &roomy).unwrap();
}

proptest! {
    #[test]
    fn random_ranges_answer_or_refuse_without_panicking(
        start in any::<i64>(),
        len in prop_oneof![any::<i64>(), 0i64..10_000_000],
        step in prop_oneof![any::<i64>(), 1i64..100_000],
        query in prop::sample::select(vec![
            "m", "rate(m[5m])", "max_over_time(m[1h:1m])", "sum(m) by (id)",
            "m offset 1d", "m @ end()", "time() - timestamp(m)", "vector(1)",
        ]),
    ) {
        let end = start.saturating_add(len);
        let limits = QueryLimits { max_samples: 200_000, ..QueryLimits::default() };
        match run(query, start, end, step, &limits) {
            Ok(()) => {}
            Err(EngineError::Limit(_) | EngineError::Invalid(_)) => {}
            Err(e) => prop_assert!(false, "{query} {start} {end} {step}: {e}"),
        }
    }
}

//! PromQL with hostile times: a query text plus a start, end and step chosen
//! by the fuzzer (the `start`/`end`/`step` a client sends to query_range, or
//! `{"promql", "start", "step"}` on /query and the bus). Evaluation must never
//! panic or overflow, must refuse a step count past the limit before building
//! anything, and must stay within max_samples.
#![no_main]

use std::time::{Duration, Instant};

use chronicle_engine::source::MemorySource;
use chronicle_engine::value::{Labels, RangeSeries, Sample};
use chronicle_engine::{evaluate, promql, step_count, EngineError, Query, QueryLimits};
use libfuzzer_sys::fuzz_target;

fn data() -> MemorySource {
    MemorySource {
        series: (0..3)
            .map(|i| RangeSeries {
                labels: Labels::new(vec![
                    ("__name__".into(), "m".into()),
                    ("id".into(), i.to_string()),
                ]),
                samples: (0..40)
                    .map(|j| Sample {
                        t: j * 15_000,
                        v: (i * j) as f64,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 24 {
        return;
    }
    let word = |i: usize| i64::from_le_bytes(input[i * 8..i * 8 + 8].try_into().unwrap());
    let (start, end, step) = (word(0), word(1), word(2));
    let Ok(text) = std::str::from_utf8(&input[24..]) else {
        return;
    };
    if text.len() > 1024 {
        return;
    }
    let Ok(plan) = promql::parse(text) else {
        return;
    };
    let limits = QueryLimits {
        max_samples: 100_000,
        max_series: 1_000,
        max_steps: 2_000,
        deadline: Some(Instant::now() + Duration::from_millis(200)),
        ..QueryLimits::default()
    };
    let query = if start == end {
        Query::instant(plan, start)
    } else {
        Query::range(plan, start, end, step)
    };
    let steps = step_count(start, end, step);
    match evaluate(&data(), &query, &limits) {
        // An answer means the step count was within the limit.
        Ok(_) => assert!(start == end || (steps >= 1 && steps <= 2_000)),
        Err(EngineError::Limit(_)) | Err(EngineError::Invalid(_)) => {}
        Err(EngineError::Timeout) | Err(EngineError::Execution(_)) => {}
        Err(e) => {
            // Nothing else may come of the times alone.
            assert!(!matches!(e, EngineError::Storage(_)), "{e}");
        }
    }
});

//! PromQL text from clients (the Prometheus API, `{"promql"}` on the bus):
//! parsing, lowering and evaluating it never panics, and evaluation stays
//! within its limits. Evaluated as an instant and as a range query over a small
//! in-memory data set (counters, gauges, classic histogram buckets, NaN,
//! staleness markers), so the whole engine is exercised, not just the parser.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chronicle_engine::source::MemorySource;
use chronicle_engine::value::{Labels, RangeSeries, Sample};
use chronicle_engine::{evaluate, promql, Query, QueryLimits};
use chronicle_storage::model::STALE_NAN_BITS;
use libfuzzer_sys::fuzz_target;

fn data() -> &'static MemorySource {
    static DATA: OnceLock<MemorySource> = OnceLock::new();
    DATA.get_or_init(|| {
        let mut series = Vec::new();
        let mut add = |labels: &[(&str, &str)], f: &dyn Fn(i64) -> f64| {
            series.push(RangeSeries {
                labels: Labels::new(
                    labels
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                ),
                samples: (0..60)
                    .map(|i| Sample {
                        t: i * 15_000,
                        v: f(i),
                    })
                    .collect(),
            });
        };
        for host in ["a", "b"] {
            add(
                &[("__name__", "http_requests_total"), ("host", host)],
                &|i| (i * 7 % 50) as f64,
            );
            add(&[("__name__", "cpu"), ("host", host)], &|i| {
                (i as f64).sin()
            });
            for le in ["0.1", "1", "+Inf"] {
                add(
                    &[("__name__", "latency_bucket"), ("host", host), ("le", le)],
                    &|i| i as f64,
                );
            }
        }
        add(&[("__name__", "odd"), ("kind", "nan")], &|i| {
            if i % 3 == 0 {
                f64::NAN
            } else {
                1.0
            }
        });
        add(&[("__name__", "odd"), ("kind", "stale")], &|i| {
            if i % 10 == 9 {
                f64::from_bits(STALE_NAN_BITS)
            } else {
                -(i as f64)
            }
        });
        MemorySource { series }
    })
}

fuzz_target!(|data_in: &[u8]| {
    let Ok(text) = std::str::from_utf8(data_in) else {
        return;
    };
    if text.len() > 4096 {
        return;
    }
    let Ok(plan) = promql::parse(text) else {
        return;
    };
    let limits = QueryLimits {
        max_samples: 1_000_000,
        max_series: 10_000,
        deadline: Some(Instant::now() + Duration::from_millis(200)),
        ..QueryLimits::default()
    };
    let _ = evaluate(data(), &Query::instant(plan.clone(), 600_000), &limits);
    let _ = evaluate(data(), &Query::range(plan, 0, 900_000, 30_000), &limits);
});

//! Aggregations against a naive reference on random data.

use proptest::prelude::*;

use crate::source::MemorySource;
use crate::value::{Labels, QueryValue, RangeSeries, Sample};
use crate::{evaluate, promql, Query, QueryLimits};

fn series(group: &str, id: usize, v: f64) -> RangeSeries {
    RangeSeries {
        labels: Labels::new(vec![
            ("__name__".into(), "m".into()),
            ("group".into(), group.into()),
            ("id".into(), id.to_string()),
        ]),
        samples: vec![Sample { t: 0, v }],
    }
}

fn by_group(source: &MemorySource, query: &str) -> Vec<(String, f64)> {
    let plan = promql::parse(query).unwrap();
    let value = evaluate(
        source,
        &Query::instant(plan, 60_000),
        &QueryLimits::default(),
    )
    .unwrap()
    .value;
    let QueryValue::Vector(v) = value else {
        panic!("{query} is not a vector")
    };
    let mut out: Vec<(String, f64)> = v
        .into_iter()
        .map(|(l, s)| (l.get("group").unwrap_or("").to_string(), s.v))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #[test]
    fn aggregations_match_a_naive_reference(
        values in proptest::collection::vec((0usize..3, -1e6f64..1e6), 1..40)
    ) {
        let groups = ["a", "b", "c"];
        let source = MemorySource {
            series: values
                .iter()
                .enumerate()
                .map(|(i, (g, v))| series(groups[*g], i, *v))
                .collect(),
        };
        for (op, reference) in [
            ("sum", (|v: &[f64]| v.iter().sum::<f64>()) as fn(&[f64]) -> f64),
            ("avg", |v| v.iter().sum::<f64>() / v.len() as f64),
            ("min", |v| v.iter().copied().fold(f64::INFINITY, f64::min)),
            ("max", |v| v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            ("count", |v| v.len() as f64),
            ("stdvar", |v| {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64
            }),
        ] {
            let got = by_group(&source, &format!("{op} by (group) (m)"));
            let mut want = Vec::new();
            for (gi, g) in groups.iter().enumerate() {
                let members: Vec<f64> = values.iter().filter(|(x, _)| *x == gi).map(|(_, v)| *v).collect();
                if !members.is_empty() {
                    want.push((g.to_string(), reference(&members)));
                }
            }
            prop_assert_eq!(got.len(), want.len(), "{}", op);
            for ((gg, gv), (wg, wv)) in got.iter().zip(&want) {
                prop_assert_eq!(gg, wg);
                // Variance of large values loses digits in any order of summation.
                let ok = close(*gv, *wv) || (op == "stdvar" && (gv - wv).abs() <= 1e-6 * wv.abs().max(1.0));
                prop_assert!(ok, "{} {}: got {}, want {}", op, gg, gv, wv);
            }
        }
    }
}

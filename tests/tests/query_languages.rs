//! SQL, CQL and PromQL agree on random data, and all three equal a naive
//! reference computed here from the generated samples.
//!
//! SQL's `GROUP BY time(w)` windows are `[s, s + w)`; PromQL's range functions
//! at time `t` cover `(t - w, t]`. With millisecond timestamps the two coincide
//! when PromQL is evaluated at `s + w - 1ms`, so
//! `SELECT sum(value) ... GROUP BY time(w), host` equals
//! `sum by (host) (sum_over_time(m[w]))` on a range query with that start and
//! step `w` (mean: `sum(sum_over_time) / sum(count_over_time)`). The same SQL
//! with a value condition that keeps every sample runs the executor's own
//! aggregation instead of the shards' partials, so both paths are checked too.

use std::collections::BTreeMap;

use std::time::Duration;

use chronicle_query::{execute, Budget, Cell, PromqlLimits, QueryRequest, QueryResult};
use chronicle_storage::{Label, Point, Shard, ShardConfig};
use proptest::prelude::*;

const MS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
enum Function {
    Sum,
    Count,
    Min,
    Max,
    Mean,
}

impl Function {
    fn sql(self) -> &'static str {
        match self {
            Function::Sum => "sum",
            Function::Count => "count",
            Function::Min => "min",
            Function::Max => "max",
            Function::Mean => "mean",
        }
    }

    fn promql(self, window_ms: i64) -> String {
        let r = format!("m[{window_ms}ms]");
        match self {
            Function::Sum => format!("sum by (host) (sum_over_time({r}))"),
            Function::Count => format!("sum by (host) (count_over_time({r}))"),
            Function::Min => format!("min by (host) (min_over_time({r}))"),
            Function::Max => format!("max by (host) (max_over_time({r}))"),
            Function::Mean => {
                format!("sum by (host) (sum_over_time({r})) / sum by (host) (count_over_time({r}))")
            }
        }
    }

    fn naive(self, values: &[f64]) -> f64 {
        match self {
            Function::Sum => values.iter().sum(),
            Function::Count => values.len() as f64,
            Function::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Function::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Function::Mean => values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

fn function() -> impl Strategy<Value = Function> {
    prop_oneof![
        Just(Function::Sum),
        Just(Function::Count),
        Just(Function::Min),
        Just(Function::Max),
        Just(Function::Mean),
    ]
}

/// Samples: (host index, series index within the host, time in ms, value).
fn samples() -> impl Strategy<Value = Vec<(u8, u8, i64, i32)>> {
    prop::collection::vec((0u8..3, 0u8..2, 0i64..120_000, -1000i32..1000), 1..120)
}

/// `(host, window start ms) -> value`.
type Answer = BTreeMap<(String, i64), f64>;

fn table_answer(result: &QueryResult) -> Answer {
    let columns = result.columns.as_ref().expect("a table");
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    let (t, h, v) = (col("time"), col("host"), columns.len() - 1);
    result
        .rows
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| {
            let Cell::Int(time) = r[t] else {
                panic!("time {:?}", r[t])
            };
            let Cell::Text(host) = &r[h] else {
                panic!("host {:?}", r[h])
            };
            let value = match r[v] {
                Cell::Number(x) => x,
                Cell::Int(x) => x as f64,
                ref other => panic!("value {other:?}"),
            };
            ((host.clone(), time / MS), value)
        })
        .collect()
}

fn close(a: &Answer, b: &Answer) -> Result<(), String> {
    if a.keys().ne(b.keys()) {
        return Err(format!("windows differ:\n{a:?}\n{b:?}"));
    }
    for (k, x) in a {
        let y = b[k];
        if (x - y).abs() > 1e-9 * x.abs().max(y.abs()).max(1.0) {
            return Err(format!("{k:?}: {x} vs {y}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn sql_cql_promql_and_reference_agree(
        data in samples(),
        f in function(),
        window_s in prop::sample::select(vec![5i64, 10, 30, 60]),
    ) {
        let window = window_s * 1000;
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), ShardConfig::default()).unwrap();
        // One sample per series and time: the last one written wins in storage,
        // so the reference keeps the last one too.
        let mut by_key: BTreeMap<(u8, u8, i64), f64> = BTreeMap::new();
        for (h, s, t, v) in &data {
            by_key.insert((*h, *s, *t), f64::from(*v) / 4.0);
        }
        let points: Vec<Point> = by_key
            .iter()
            .map(|((h, s, t), v)| {
                Point::new(
                    "m",
                    vec![Label::new("host", format!("h{h}")), Label::new("s", s.to_string())],
                    *v,
                    t * MS,
                )
            })
            .collect();
        shard.write_batch(&points).unwrap();

        let (start, end) = (0i64, 120_000i64);
        let mut groups: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
        for ((h, _, t), v) in &by_key {
            groups.entry((format!("h{h}"), t - t.rem_euclid(window))).or_default().push(*v);
        }
        let reference: Answer = groups.iter().map(|(k, vs)| (k.clone(), f.naive(vs))).collect();

        let run = |request: QueryRequest| {
            let budget = Budget::new(Duration::ZERO, Duration::from_secs(60), None);
            execute(&shard, &request, end * MS, 1_000_000, &PromqlLimits::default(), &budget)
                .unwrap_or_else(|e| panic!("{request:?}: {e}"))
        };
        let sql = format!(
            "SELECT {}(value) FROM m WHERE time >= {} AND time < {} GROUP BY time({window_s}s), host",
            f.sql(), start * MS, end * MS
        );
        let pushed = table_answer(&run(QueryRequest { sql: Some(sql.clone()), ..Default::default() }));
        let local_sql = sql.replace("WHERE", "WHERE value > -1e300 AND");
        let local = table_answer(&run(QueryRequest { sql: Some(local_sql), ..Default::default() }));
        let cql = format!(
            "SELECT {}(value) FROM m WHERE time >= {} AND time < {} GROUP BY host WINDOW {window_s}s",
            f.sql(), start * MS, end * MS
        );
        let from_cql = table_answer(&run(QueryRequest { cql: Some(cql), ..Default::default() }));

        // PromQL at the last millisecond of each window.
        let promql = run(QueryRequest {
            promql: Some(f.promql(window)),
            start: Some(chronicle_query::request::TimeSpec::Nanos((start + window - 1) * MS)),
            end: Some(chronicle_query::request::TimeSpec::Nanos((end - 1) * MS)),
            step: Some(format!("{window}ms")),
            ..Default::default()
        });
        let from_promql: Answer = promql
            .series
            .iter()
            .flat_map(|s| {
                let host = s.labels.get("host").cloned().unwrap_or_default();
                s.points.iter().map(move |p| ((host.clone(), p.0 / MS + 1 - window), p.1))
            })
            .collect();

        prop_assert!(close(&reference, &pushed).is_ok(), "SQL (shards): {}", close(&reference, &pushed).unwrap_err());
        prop_assert!(close(&reference, &local).is_ok(), "SQL (executor): {}", close(&reference, &local).unwrap_err());
        prop_assert!(close(&reference, &from_cql).is_ok(), "CQL: {}", close(&reference, &from_cql).unwrap_err());
        prop_assert!(close(&reference, &from_promql).is_ok(), "PromQL: {}", close(&reference, &from_promql).unwrap_err());
    }
}

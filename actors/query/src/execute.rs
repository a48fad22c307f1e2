use chronicle_storage::model::{Label, METRIC_LABEL};
use chronicle_storage::AggregateRequest;

use chronicle_engine::{QueryValue, Severity};
use chronicle_storage::Sample;

use crate::actor::Budget;
use crate::promql::{engine_error, run_promql, PromqlLimits, PromqlQuery};
use crate::request::{QueryRequest, QueryResult, SeriesResult};
use crate::select::run_select;
use crate::source::{DataSource, ReadLimit};
use crate::QueryError;

const NS_PER_MS: i64 = 1_000_000;

/// Runs a request against a data source. `max_points` bounds the answer's size whatever
/// the request's own `limit`.
pub fn execute(
    source: &dyn DataSource,
    request: &QueryRequest,
    now: i64,
    max_points: usize,
    promql_limits: &PromqlLimits,
    budget: &Budget,
) -> Result<QueryResult, QueryError> {
    let languages = [&request.promql, &request.sql, &request.cql]
        .iter()
        .filter(|l| l.is_some())
        .count();
    if languages > 1 {
        return Err(QueryError::BadRequest(
            "give one of \"promql\", \"sql\" and \"cql\"".into(),
        ));
    }
    if let Some(text) = &request.promql {
        if request.explain {
            let plan = chronicle_engine::promql::parse(text).map_err(engine_error)?;
            return Ok(QueryResult {
                explain: Some(chronicle_engine::explain::explain(&plan)),
                ..Default::default()
            });
        }
        return execute_promql(
            source,
            request,
            text,
            now,
            max_points,
            promql_limits,
            budget,
        );
    }
    if request.sql.is_some() || request.cql.is_some() {
        return execute_select(
            source,
            request,
            now,
            max_points,
            promql_limits.max_samples,
            budget,
        );
    }
    if request.explain {
        return Err(QueryError::BadRequest(
            "\"explain\" applies to promql, sql and cql queries".into(),
        ));
    }
    if request.step.is_some() {
        return Err(QueryError::BadRequest(
            "\"step\" applies to \"promql\" queries only".into(),
        ));
    }
    let plan = request.plan(now)?;
    let series: Vec<SeriesResult> = match &plan.aggregate {
        None => {
            // The limit goes into the read: storage stops at the first `limit`
            // points, or as soon as there are more than the node allows.
            let read_limit = match plan.limit {
                Some(n) if n <= max_points => ReadLimit::First(n),
                _ => ReadLimit::AtMost(max_points),
            };
            let read = source
                .series(&plan.matchers, plan.start, plan.end, read_limit)
                .map_err(|e| match e {
                    QueryError::TooLarge(_) => too_many_points(max_points),
                    other => other,
                })?;
            budget.check()?;
            let series = read
                .series
                .into_iter()
                .filter(|(_, samples)| !samples.is_empty())
                .map(|(key, samples)| {
                    let mut labels = vec![Label::new(METRIC_LABEL, key.metric.clone())];
                    labels.extend(key.labels);
                    SeriesResult::from_labels(&labels, &samples)
                })
                .collect();
            let mut result = limit(series, plan.limit, max_points)?;
            result.truncated |= read.truncated;
            return Ok(result);
        }
        Some((function, window, group_by)) => source
            .aggregate(&AggregateRequest {
                matchers: plan.matchers.clone(),
                start: plan.start,
                end: plan.end,
                window: *window,
                function: *function,
                group_by: group_by.clone(),
            })?
            .into_iter()
            .map(|s| SeriesResult::from_labels(&s.group, &s.points))
            .collect(),
    };
    budget.check()?;
    limit(series, plan.limit, max_points)
}

/// `{"sql": ...}` or `{"cql": ...}`: the query text carries its own time range.
fn execute_select(
    source: &dyn DataSource,
    request: &QueryRequest,
    now: i64,
    max_rows: usize,
    max_samples: usize,
    budget: &Budget,
) -> Result<QueryResult, QueryError> {
    if request.has_selection()
        || request.start.is_some()
        || request.end.is_some()
        || request.step.is_some()
        || request.limit.is_some()
    {
        return Err(QueryError::BadRequest(
            "\"sql\" and \"cql\" carry their own selection, time range and LIMIT; \
             give only the query (and \"explain\")"
                .into(),
        ));
    }
    let (plan, explain) = match (&request.sql, &request.cql) {
        (Some(text), _) => {
            let q = chronicle_engine::sql::parse(text).map_err(engine_error)?;
            (q.plan, q.explain)
        }
        (_, Some(text)) => {
            let q = chronicle_engine::cql::parse(text).map_err(engine_error)?;
            (q.plan, q.explain)
        }
        _ => unreachable!("checked by the caller"),
    };
    if explain || request.explain {
        return Ok(QueryResult {
            explain: Some(chronicle_engine::select::explain(&plan, now)),
            ..Default::default()
        });
    }
    let table = run_select(source, &plan, now, max_rows, max_samples, budget)?;
    Ok(QueryResult {
        columns: Some(table.columns),
        rows: Some(table.rows),
        ..Default::default()
    })
}

/// `{"promql": ...}`: instant at `end` (default now), or a range with `step`.
fn execute_promql(
    source: &dyn DataSource,
    request: &QueryRequest,
    text: &str,
    now: i64,
    max_points: usize,
    limits: &PromqlLimits,
    budget: &Budget,
) -> Result<QueryResult, QueryError> {
    if request.has_selection() {
        return Err(QueryError::BadRequest(
            "\"promql\" cannot be combined with metric, tags, matchers, aggregation or group_by"
                .into(),
        ));
    }
    let end = request.end.as_ref().map_or(Ok(now), |t| t.resolve(now))?;
    let (start, step) = match &request.step {
        None => {
            if request.start.is_some() {
                return Err(QueryError::BadRequest(
                    "an instant PromQL query takes \"end\" only; add \"step\" for a range".into(),
                ));
            }
            (end, 0)
        }
        Some(step) => {
            let step = humantime::parse_duration(step.trim())
                .map_err(|e| QueryError::BadRequest(format!("step {step:?}: {e}")))?;
            let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
            if step_ms <= 0 {
                return Err(QueryError::BadRequest("step must be positive".into()));
            }
            let start = match &request.start {
                Some(t) => t.resolve(now)?,
                None => end.saturating_sub(3_600_000_000_000),
            };
            (start, step_ms)
        }
    };
    let query = PromqlQuery {
        query: text.to_string(),
        start: start.div_euclid(NS_PER_MS),
        end: end.div_euclid(NS_PER_MS),
        step: step.max(1),
        timeout: std::time::Duration::ZERO,
        cancelled: None,
    };
    let to_series = |labels: &chronicle_engine::Labels, samples: &[chronicle_engine::Sample]| {
        let labels: Vec<Label> = labels.iter().map(|(n, v)| Label::new(n, v)).collect();
        let samples: Vec<Sample> = samples
            .iter()
            .map(|s| Sample {
                timestamp: s.t.saturating_mul(NS_PER_MS),
                value: s.v,
            })
            .collect();
        SeriesResult::from_labels(&labels, &samples)
    };
    let answer = run_promql(source, &query, limits, budget)?;
    let series = match answer.value {
        QueryValue::Scalar(s) => vec![to_series(&Default::default(), &[s])],
        QueryValue::Vector(v) => v.iter().map(|(l, s)| to_series(l, &[*s])).collect(),
        QueryValue::Matrix(m) => m.iter().map(|s| to_series(&s.labels, &s.samples)).collect(),
        QueryValue::String(_) => {
            return Err(QueryError::BadRequest(
                "a string result has no series; use /api/v1/query".into(),
            ))
        }
    };
    let mut result = limit(series, request.limit, max_points)?;
    for a in answer.annotations {
        match a.severity {
            Severity::Warning => result.warnings.push(a.message),
            Severity::Info => result.infos.push(a.message),
        }
    }
    Ok(result)
}

fn too_many_points(max_points: usize) -> QueryError {
    QueryError::TooLarge(format!(
        "the result would hold more than {max_points} points, this node's limit; \
         narrow the time range or the selection, aggregate, or set \"limit\""
    ))
}

fn limit(
    mut series: Vec<SeriesResult>,
    limit: Option<usize>,
    max_points: usize,
) -> Result<QueryResult, QueryError> {
    let total: usize = series.iter().map(|s| s.points.len()).sum();
    let cap = limit.unwrap_or(usize::MAX);
    if total > max_points && cap > max_points {
        return Err(too_many_points(max_points));
    }
    let mut left = cap;
    let mut truncated = false;
    series.retain_mut(|s| {
        if left == 0 {
            truncated = true;
            return false;
        }
        if s.points.len() > left {
            s.points.truncate(left);
            truncated = true;
        }
        left -= s.points.len();
        true
    });
    Ok(QueryResult {
        series,
        truncated,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `execute` with the default PromQL limits and a minute to run.
    fn run(
        source: &dyn DataSource,
        request: &QueryRequest,
        now: i64,
        max_points: usize,
    ) -> Result<QueryResult, QueryError> {
        let budget = Budget::new(
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(60),
            None,
        );
        execute(
            source,
            request,
            now,
            max_points,
            &PromqlLimits::default(),
            &budget,
        )
    }
    use crate::request::{AggregationSpec, MatcherSpec, TimeSpec};
    use chronicle_storage::{Point, Shard, ShardConfig};

    fn shard() -> (tempfile::TempDir, Shard) {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), ShardConfig::default()).unwrap();
        let mut points = Vec::new();
        for host in ["a", "b", "c"] {
            for i in 0..60i64 {
                points.push(Point::new(
                    "cpu",
                    vec![Label::new("host", host), Label::new("dc", "eu")],
                    i as f64,
                    i * 1_000_000_000,
                ));
            }
        }
        shard.write_batch(&points).unwrap();
        (dir, shard)
    }

    fn request() -> QueryRequest {
        QueryRequest {
            metric: Some("cpu".into()),
            start: Some(TimeSpec::Nanos(0)),
            end: Some(TimeSpec::Nanos(60_000_000_000)),
            ..Default::default()
        }
    }

    #[test]
    fn raw_query_with_tags_and_matchers() {
        let (_d, shard) = shard();
        let mut req = request();
        req.tags.insert("host".into(), "a".into());
        let r = run(&shard, &req, 0, 1_000_000).unwrap();
        assert_eq!(r.series.len(), 1);
        assert_eq!(r.series[0].metric.as_deref(), Some("cpu"));
        assert_eq!(r.series[0].labels["host"], "a");
        assert_eq!(r.series[0].points.len(), 60);

        let mut req = request();
        req.matchers.push(MatcherSpec {
            name: "host".into(),
            op: "!~".into(),
            value: "a|b".into(),
        });
        let r = run(&shard, &req, 0, 1_000_000).unwrap();
        assert_eq!(r.series.len(), 1);
        assert_eq!(r.series[0].labels["host"], "c");
    }

    #[test]
    fn aggregation_groups_and_windows() {
        let (_d, shard) = shard();
        let mut req = request();
        req.aggregation = Some(AggregationSpec {
            function: "max".into(),
            window: Some("30s".into()),
            percentile: None,
        });
        req.group_by = vec!["dc".into()];
        let r = run(&shard, &req, 0, 1_000_000).unwrap();
        assert_eq!(r.series.len(), 1);
        assert_eq!(r.series[0].labels["dc"], "eu");
        let values: Vec<f64> = r.series[0].points.iter().map(|p| p.1).collect();
        assert_eq!(values, [29.0, 59.0]);
    }

    #[test]
    fn limits_truncate_or_refuse() {
        let (_d, shard) = shard();
        let mut req = request();
        req.limit = Some(70);
        let r = run(&shard, &req, 0, 1_000_000).unwrap();
        assert!(r.truncated);
        assert_eq!(r.series.iter().map(|s| s.points.len()).sum::<usize>(), 70);
        let err = run(&shard, &request(), 0, 100).unwrap_err();
        assert!(matches!(err, QueryError::TooLarge(_)), "{err}");
    }

    #[test]
    fn bad_requests_say_why() {
        let (_d, shard) = shard();
        let cases = [
            r#"{}"#,
            r#"{"metric":"cpu","start":10,"end":5}"#,
            r#"{"metric":"cpu","group_by":["host"]}"#,
            r#"{"metric":"cpu","aggregation":{"function":"median"}}"#,
            r#"{"metric":"cpu","aggregation":{"function":"mean","window":"soon"}}"#,
            r#"{"metric":"cpu","matchers":[{"name":"host","op":"~","value":"a"}]}"#,
            r#"{"metric":"cpu","start":"yesterday"}"#,
        ];
        for case in cases {
            let req: QueryRequest = serde_json::from_str(case).unwrap();
            let err = run(&shard, &req, 100, 1000).unwrap_err();
            assert!(matches!(err, QueryError::BadRequest(_)), "{case}: {err}");
        }
        assert!(serde_json::from_str::<QueryRequest>(r#"{"metrc":"cpu"}"#).is_err());
    }

    #[test]
    fn relative_and_rfc3339_times() {
        let now = 1_700_000_000_000_000_000;
        assert_eq!(
            TimeSpec::Text("now-1m".into()).resolve(now).unwrap(),
            now - 60_000_000_000
        );
        assert_eq!(
            TimeSpec::Text("2023-11-14T22:13:20Z".into())
                .resolve(0)
                .unwrap(),
            now
        );
    }

    #[test]
    fn a_matcher_that_selects_everything_is_the_clients_mistake() {
        let (_dir, shard) = shard();
        let req = QueryRequest {
            metric: None,
            matchers: vec![MatcherSpec {
                name: "host".into(),
                op: "!=".into(),
                value: "a".into(),
            }],
            ..request()
        };
        let err = run(&shard, &req, 0, 1_000).unwrap_err();
        assert!(matches!(err, QueryError::BadRequest(_)), "{err:?}");
    }
}

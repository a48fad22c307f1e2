//! PromQL queries and series metadata on a shard (the Prometheus API and the
//! `{"promql": ...}` form of the JSON request).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_engine::value::{Labels, METRIC_NAME};
use chronicle_engine::{evaluate, promql, Answer, EngineError, Query, QueryLimits};
use chronicle_storage::{MatchOp, Matcher, Shard};

use crate::QueryError;

/// A PromQL evaluation: instant when `start == end`. Milliseconds.
#[derive(Debug, Clone)]
pub struct PromqlQuery {
    pub query: String,
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub timeout: Duration,
    /// Set by the caller when its client goes away.
    pub cancelled: Option<Arc<AtomicBool>>,
}

/// Engine limits every PromQL query runs under.
#[derive(Debug, Clone)]
pub struct PromqlLimits {
    pub max_samples: usize,
    pub max_series: usize,
    pub default_timeout: Duration,
}

impl Default for PromqlLimits {
    fn default() -> Self {
        Self {
            max_samples: 50_000_000,
            max_series: 500_000,
            default_timeout: Duration::from_secs(120),
        }
    }
}

pub(crate) fn engine_error(e: EngineError) -> QueryError {
    match e {
        EngineError::Parse(m) | EngineError::Invalid(m) => QueryError::BadRequest(m),
        EngineError::Execution(m) => QueryError::Execution(m),
        EngineError::Limit(m) => QueryError::TooLarge(m),
        EngineError::Timeout => QueryError::Timeout,
        EngineError::Cancelled => QueryError::Cancelled,
        EngineError::Storage(m) => QueryError::Storage(m),
    }
}

/// Parses and evaluates `q` on `shard`.
pub fn run_promql(
    shard: &Shard,
    q: &PromqlQuery,
    limits: &PromqlLimits,
) -> Result<Answer, QueryError> {
    let plan = promql::parse_cached(&q.query).map_err(engine_error)?;
    let query = if q.start == q.end {
        Query::instant(plan, q.start)
    } else {
        Query::range(plan, q.start, q.end, q.step)
    };
    let timeout = if q.timeout.is_zero() {
        limits.default_timeout
    } else {
        q.timeout.min(limits.default_timeout)
    };
    let engine_limits = QueryLimits {
        max_samples: limits.max_samples,
        max_series: limits.max_series,
        deadline: Some(Instant::now() + timeout),
        cancelled: q.cancelled.clone(),
        ..QueryLimits::default()
    };
    evaluate(shard, &query, &engine_limits).map_err(engine_error)
}

/// Series-metadata questions (Prometheus's /series, /labels, /label/<n>/values).
#[derive(Debug, Clone)]
pub enum MetaQuery {
    /// Series matching any of the selectors.
    Series(Vec<String>),
    /// Label names of the series matching the selectors (all series when none).
    LabelNames(Vec<String>),
    /// Values of one label across the matching series.
    LabelValues {
        name: String,
        selectors: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetaAnswer {
    Series(Vec<BTreeMap<String, String>>),
    Strings(Vec<String>),
}

/// Turns a selector such as `up{job="x"}` into matcher sets.
fn selector_matchers(text: &str) -> Result<Vec<Vec<Matcher>>, QueryError> {
    match promql::parse(text).map_err(engine_error)? {
        chronicle_engine::plan::Plan::Vector(sel) => Ok(sel.matcher_sets),
        _ => Err(QueryError::BadRequest(format!(
            "{text:?} is not a series selector"
        ))),
    }
}

fn keys(shard: &Shard, selectors: &[String]) -> Result<Vec<Labels>, QueryError> {
    let sets = if selectors.is_empty() {
        vec![vec![Matcher::new(MatchOp::Regex, METRIC_NAME, ".+")
            .map_err(|e| QueryError::Storage(e.to_string()))?]]
    } else {
        let mut sets = Vec::new();
        for s in selectors {
            sets.extend(selector_matchers(s)?);
        }
        sets
    };
    let mut seen = BTreeSet::new();
    for set in sets {
        for (_, key) in shard
            .select(&set)
            .map_err(|e| QueryError::Storage(e.to_string()))?
        {
            let mut pairs: Vec<(String, String)> =
                key.labels.into_iter().map(|l| (l.name, l.value)).collect();
            pairs.push((METRIC_NAME.to_string(), key.metric));
            seen.insert(Labels::new(pairs));
        }
    }
    Ok(seen.into_iter().collect())
}

pub fn run_meta(shard: &Shard, q: &MetaQuery) -> Result<MetaAnswer, QueryError> {
    Ok(match q {
        MetaQuery::Series(selectors) => {
            if selectors.is_empty() {
                return Err(QueryError::BadRequest(
                    "no match[] parameter provided".into(),
                ));
            }
            MetaAnswer::Series(
                keys(shard, selectors)?
                    .into_iter()
                    .map(|l| l.0.into_iter().collect())
                    .collect(),
            )
        }
        MetaQuery::LabelNames(selectors) => {
            let names: BTreeSet<String> = keys(shard, selectors)?
                .into_iter()
                .flat_map(|l| l.0.into_iter().map(|(n, _)| n))
                .collect();
            MetaAnswer::Strings(names.into_iter().collect())
        }
        MetaQuery::LabelValues { name, selectors } => {
            let values: BTreeSet<String> = keys(shard, selectors)?
                .into_iter()
                .filter_map(|l| l.get(name).map(str::to_string))
                .collect();
            MetaAnswer::Strings(values.into_iter().collect())
        }
    })
}

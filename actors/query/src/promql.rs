//! PromQL queries and series metadata on a shard (the Prometheus API and the
//! `{"promql": ...}` form of the JSON request).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const NS_PER_MS: i64 = 1_000_000;

use chronicle_engine::value::{Labels, METRIC_NAME};
use chronicle_engine::{evaluate, promql, Answer, EngineError, Query, QueryLimits};
use chronicle_storage::{MatchOp, Matcher};

use crate::actor::Budget;
use crate::source::DataSource;
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
        e @ EngineError::Syntax { .. } => QueryError::BadRequest(e.to_string()),
        EngineError::Execution(m) => QueryError::Execution(m),
        EngineError::Limit(m) => QueryError::TooLarge(m),
        EngineError::Timeout => QueryError::Timeout,
        EngineError::Cancelled => QueryError::Cancelled,
        EngineError::Storage(m) => QueryError::Storage(m),
    }
}

/// Parses and evaluates `q` on `shard`.
pub fn run_promql(
    source: &dyn DataSource,
    q: &PromqlQuery,
    limits: &PromqlLimits,
    budget: &Budget,
) -> Result<Answer, QueryError> {
    let plan = promql::parse_cached(&q.query).map_err(engine_error)?;
    let query = if q.start == q.end {
        Query::instant(plan, q.start)
    } else {
        Query::range(plan, q.start, q.end, q.step)
    };
    let engine_limits = QueryLimits {
        max_samples: limits.max_samples,
        max_series: limits.max_series,
        deadline: Some(budget.deadline),
        cancelled: Some(budget.cancelled.clone()),
        ..QueryLimits::default()
    };
    evaluate(source, &query, &engine_limits).map_err(engine_error)
}

/// A series-metadata question (the Prometheus API's /series and /labels).
#[derive(Debug, Clone, PartialEq)]
pub struct MetaQuery {
    pub kind: MetaKind,
    /// Series selectors (`match[]`); for label lookups, none means all series.
    pub selectors: Vec<String>,
    /// Only series with data in `[start, end]` (milliseconds; either open).
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// At most this many results (`limit`; Prometheus's semantics).
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetaKind {
    /// The series themselves.
    Series,
    /// Their label names.
    LabelNames,
    /// The values of one label.
    LabelValues(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetaAnswer {
    Series(Vec<BTreeMap<String, String>>),
    Strings(Vec<String>),
}

/// Turns a selector such as `up{job="x"}` into matcher sets.
/// The matcher sets of a series selector (`up{job="x"}`; several for an `or`).
pub fn selector_matchers(text: &str) -> Result<Vec<Vec<Matcher>>, QueryError> {
    match promql::parse(text).map_err(engine_error)? {
        chronicle_engine::plan::Plan::Vector(sel) => Ok(sel.matcher_sets),
        _ => Err(QueryError::BadRequest(format!(
            "{text:?} is not a series selector"
        ))),
    }
}

fn keys(
    source: &dyn DataSource,
    q: &MetaQuery,
    max_series: usize,
) -> Result<Vec<Labels>, QueryError> {
    let storage = |e: chronicle_storage::StorageError| QueryError::Storage(e.to_string());
    let sets = if q.selectors.is_empty() {
        vec![vec![
            Matcher::new(MatchOp::Regex, METRIC_NAME, ".+").map_err(storage)?
        ]]
    } else {
        let mut sets = Vec::new();
        for s in &q.selectors {
            sets.extend(selector_matchers(s)?);
        }
        sets
    };
    // Milliseconds, inclusive, to nanoseconds, end exclusive.
    let start = q.start.map_or(i64::MIN, |t| t.saturating_mul(NS_PER_MS));
    let end = q
        .end
        .map_or(i64::MAX, |t| t.saturating_add(1).saturating_mul(NS_PER_MS));
    let too_many = || {
        QueryError::TooLarge(format!(
            "the selectors match more than {max_series} series; narrow them or give start and end"
        ))
    };
    let mut seen = BTreeSet::new();
    for set in sets {
        let keys = source
            .series_keys(&set, start, end, max_series)?
            .ok_or_else(too_many)?;
        for key in keys {
            let mut pairs: Vec<(String, String)> =
                key.labels.into_iter().map(|l| (l.name, l.value)).collect();
            pairs.push((METRIC_NAME.to_string(), key.metric));
            seen.insert(Labels::new(pairs));
        }
        if seen.len() > max_series {
            return Err(too_many());
        }
    }
    Ok(seen.into_iter().collect())
}

pub fn run_meta(
    source: &dyn DataSource,
    q: &MetaQuery,
    limits: &PromqlLimits,
) -> Result<MetaAnswer, QueryError> {
    let cap = q.limit.unwrap_or(usize::MAX);
    Ok(match &q.kind {
        MetaKind::Series => {
            if q.selectors.is_empty() {
                return Err(QueryError::BadRequest(
                    "no match[] parameter provided".into(),
                ));
            }
            MetaAnswer::Series(
                keys(source, q, limits.max_series)?
                    .into_iter()
                    .take(cap)
                    .map(|l| l.0.into_iter().collect())
                    .collect(),
            )
        }
        MetaKind::LabelNames => {
            let names: BTreeSet<String> = keys(source, q, limits.max_series)?
                .into_iter()
                .flat_map(|l| l.0.into_iter().map(|(n, _)| n))
                .collect();
            MetaAnswer::Strings(names.into_iter().take(cap).collect())
        }
        MetaKind::LabelValues(name) => {
            let values: BTreeSet<String> = keys(source, q, limits.max_series)?
                .into_iter()
                .filter_map(|l| l.get(name).map(str::to_string))
                .collect();
            MetaAnswer::Strings(values.into_iter().take(cap).collect())
        }
    })
}

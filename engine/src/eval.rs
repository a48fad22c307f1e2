//! Evaluates a plan over a series source, step by step.
//!
//! Every node is evaluated for all steps of the query at once (like Prometheus's
//! range evaluation): an instant vector is a set of series with one optional
//! value per step; a range vector is a set of series with their samples plus the
//! window each step looks at. An instant query is a range query of one step.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::annotations::Annotation;
use crate::plan::{At, Plan, Selector, ValueKind};
use crate::source::SeriesSource;
use crate::value::{is_stale, Labels, QueryValue, RangeSeries, Sample};
use crate::{aggregate, binary, functions, EngineError, Result};

/// Five minutes: how far back an instant vector looks for a sample.
pub const DEFAULT_LOOKBACK: i64 = 5 * 60 * 1000;
/// Step of a subquery without one in an instant query.
pub const DEFAULT_SUBQUERY_STEP: i64 = 60 * 1000;

/// What to evaluate, and when (milliseconds).
#[derive(Debug, Clone)]
pub struct Query {
    pub plan: Plan,
    pub start: i64,
    pub end: i64,
    /// Distance between steps; an instant query has `start == end`.
    pub step: i64,
    pub lookback: i64,
}

impl Query {
    pub fn instant(plan: Plan, time: i64) -> Self {
        Self {
            plan,
            start: time,
            end: time,
            step: 1,
            lookback: DEFAULT_LOOKBACK,
        }
    }

    pub fn range(plan: Plan, start: i64, end: i64, step: i64) -> Self {
        Self {
            plan,
            start,
            end,
            step,
            lookback: DEFAULT_LOOKBACK,
        }
    }
}

/// Bounds on one query's work.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Samples read from storage plus values evaluation builds (series x steps
    /// of every intermediate and final result).
    pub max_samples: usize,
    /// Series in any intermediate or final result.
    pub max_series: usize,
    /// Stop when this passes.
    pub deadline: Option<Instant>,
    /// Steps of a range query.
    pub max_steps: usize,
    /// Set when the client went away: evaluation stops at the next check.
    pub cancelled: Option<Arc<AtomicBool>>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_samples: 50_000_000,
            max_series: 1_000_000,
            deadline: None,
            // Prometheus refuses (end - start) / step > 11,000: 11,001 points.
            max_steps: 11_001,
            cancelled: None,
        }
    }
}

/// One series of an instant vector: a value (or none) per step.
#[derive(Debug, Clone)]
pub(crate) struct StepSeries {
    pub labels: Labels,
    pub values: Vec<Option<f64>>,
}

/// A range vector: series with samples, and the window `(lo, hi]` of each step.
#[derive(Debug, Clone)]
pub(crate) struct Windows {
    pub series: Vec<RangeSeries>,
    pub windows: Vec<(i64, i64)>,
}

impl Windows {
    /// The samples of `series` in step `i`'s window.
    pub fn slice<'a>(&self, samples: &'a [Sample], i: usize) -> &'a [Sample] {
        let (lo, hi) = self.windows[i];
        let from = samples.partition_point(|s| s.t <= lo);
        let to = samples.partition_point(|s| s.t <= hi);
        &samples[from..to]
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Val {
    Scalar(Vec<f64>),
    String(String),
    Vector(Vec<StepSeries>),
    Matrix(Windows),
}

impl Val {
    /// Values or samples held (what `max_samples` counts).
    pub fn size(&self) -> usize {
        match self {
            Val::Scalar(v) => v.len(),
            Val::String(_) => 0,
            Val::Vector(series) => series.iter().map(|s| s.values.len()).sum(),
            Val::Matrix(w) => w.series.iter().map(|s| s.samples.len()).sum(),
        }
    }

    pub fn kind(&self) -> ValueKind {
        match self {
            Val::Scalar(_) => ValueKind::Scalar,
            Val::String(_) => ValueKind::String,
            Val::Vector(_) => ValueKind::Vector,
            Val::Matrix(_) => ValueKind::Matrix,
        }
    }
}

pub(crate) struct Evaluator<'a> {
    pub source: &'a dyn SeriesSource,
    pub limits: &'a QueryLimits,
    /// The outer query's start and end (for `@ start()` / `@ end()`).
    pub query_start: i64,
    pub query_end: i64,
    /// The outer query's step (0 for an instant query), for `step()`.
    pub query_step: i64,
    pub lookback: i64,
    pub samples_read: usize,
    /// Values and samples that evaluation itself made (step values of instant
    /// vectors, subquery samples): with `samples_read`, bounded by `max_samples`.
    pub values_built: usize,
    /// Warnings and infos so far, each once.
    pub annotations: Vec<Annotation>,
}

/// A query's answer and what it has to say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub value: QueryValue,
    pub annotations: Vec<Annotation>,
}

/// Runs `query` and shapes the answer as Prometheus does: an instant query gives
/// a scalar, string, vector or (for a range vector) a matrix; a range query a matrix.
pub fn evaluate(source: &dyn SeriesSource, query: &Query, limits: &QueryLimits) -> Result<Answer> {
    if query.step <= 0 {
        return Err(EngineError::Invalid(
            "zero or negative query resolution step widths are not accepted".into(),
        ));
    }
    if query.end < query.start {
        return Err(EngineError::Invalid(
            "end timestamp must not be before start time".into(),
        ));
    }
    // Counted before anything is built: a 1 ms step over centuries must be
    // refused, not allocated.
    if step_count(query.start, query.end, query.step) > limits.max_steps as u128 {
        return Err(EngineError::Limit(format!(
            "exceeded maximum resolution of {} points per timeseries",
            limits.max_steps
        )));
    }
    let steps = steps(query.start, query.end, query.step);
    let instant = query.start == query.end;
    let kind = query.plan.kind();
    if !instant && matches!(kind, ValueKind::Matrix | ValueKind::String) {
        return Err(EngineError::Invalid(format!(
            "invalid expression type {} for range query, must be Scalar or instant Vector",
            kind_name(kind)
        )));
    }
    let mut ev = Evaluator {
        source,
        limits,
        query_start: query.start,
        query_end: query.end,
        query_step: if instant { 0 } else { query.step },
        lookback: query.lookback,
        samples_read: 0,
        values_built: 0,
        annotations: Vec::new(),
    };
    let value = ev.eval(&query.plan, &steps)?;
    let annotations = std::mem::take(&mut ev.annotations);
    let value = match value {
        Val::String(s) => QueryValue::String(s),
        Val::Scalar(v) if instant => QueryValue::Scalar(Sample {
            t: steps[0],
            v: v[0],
        }),
        Val::Scalar(v) => QueryValue::Matrix(vec![RangeSeries {
            labels: Labels::default(),
            samples: steps.iter().zip(v).map(|(&t, v)| Sample { t, v }).collect(),
        }]),
        Val::Vector(series) => {
            let series = dedupe(series)?;
            if instant {
                QueryValue::Vector(
                    series
                        .into_iter()
                        .filter_map(|s| s.values[0].map(|v| (s.labels, Sample { t: steps[0], v })))
                        .collect(),
                )
            } else {
                QueryValue::Matrix(sorted(
                    series
                        .into_iter()
                        .filter_map(|s| {
                            let samples: Vec<Sample> = steps
                                .iter()
                                .zip(&s.values)
                                .filter_map(|(&t, v)| v.map(|v| Sample { t, v }))
                                .collect();
                            (!samples.is_empty()).then_some(RangeSeries {
                                labels: s.labels,
                                samples,
                            })
                        })
                        .collect(),
                ))
            }
        }
        Val::Matrix(w) => QueryValue::Matrix(sorted(
            w.series
                .iter()
                .filter_map(|s| {
                    let samples = w.slice(&s.samples, 0).to_vec();
                    (!samples.is_empty()).then(|| RangeSeries {
                        labels: s.labels.clone(),
                        samples,
                    })
                })
                .collect(),
        )),
    };
    Ok(Answer { value, annotations })
}

/// Matrices come out ordered by labels, as Prometheus orders them.
fn sorted(mut series: Vec<RangeSeries>) -> Vec<RangeSeries> {
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    series
}

pub(crate) fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Scalar => "scalar",
        ValueKind::String => "string",
        ValueKind::Vector => "instant vector",
        ValueKind::Matrix => "range vector",
    }
}

/// How many steps `start, start + step, ..., <= end` has, without overflow
/// whatever the inputs (zero for an empty range or a step that is not positive).
pub fn step_count(start: i64, end: i64, step: i64) -> u128 {
    if step <= 0 || end < start {
        return 0;
    }
    ((end as i128 - start as i128) / step as i128 + 1) as u128
}

/// The step times; callers check [`step_count`] against their limit first.
pub(crate) fn steps(start: i64, end: i64, step: i64) -> Vec<i64> {
    let count = step_count(start, end, step);
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
    let mut t = Some(start);
    while let Some(now) = t.filter(|&now| now <= end) {
        out.push(now);
        t = now.checked_add(step);
    }
    out
}

/// Series with the same labels are merged when they never have a value at the
/// same step; otherwise the result is ambiguous and an error (as in Prometheus).
pub(crate) fn dedupe(series: Vec<StepSeries>) -> Result<Vec<StepSeries>> {
    // Indexed by the labels' hash, so the labels are not cloned into the index;
    // equal hashes are told apart by comparing the labels.
    let mut index: HashMap<u64, usize> =
        HashMap::with_capacity_and_hasher(series.len(), Default::default());
    let mut collisions: Vec<(u64, usize)> = Vec::new();
    let mut out: Vec<StepSeries> = Vec::with_capacity(series.len());
    for s in series {
        if s.values.iter().all(Option::is_none) {
            continue;
        }
        let hash = labels_hash(&s.labels);
        let existing = index
            .get(&hash)
            .into_iter()
            .chain(
                collisions
                    .iter()
                    .filter(|(h, _)| *h == hash)
                    .map(|(_, i)| i),
            )
            .copied()
            .find(|&i| out[i].labels == s.labels);
        match existing {
            None => {
                match index.entry(hash) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        collisions.push((hash, out.len()))
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(out.len());
                    }
                }
                out.push(s);
            }
            Some(i) => {
                let target = &mut out[i];
                for (slot, v) in target.values.iter_mut().zip(s.values) {
                    if v.is_some() {
                        if slot.is_some() {
                            return Err(EngineError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *slot = v;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn labels_hash(labels: &Labels) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(labels)
}

impl Evaluator<'_> {
    /// Records `a` unless the same annotation is there already.
    pub fn annotate(&mut self, a: Annotation) {
        if !self.annotations.contains(&a) {
            self.annotations.push(a);
        }
    }

    /// Accounts for `n` values about to be built; refuses once the query would
    /// hold more than `max_samples` in all.
    pub fn charge(&mut self, n: usize) -> Result<()> {
        let held = self
            .samples_read
            .saturating_add(self.values_built)
            .saturating_add(n);
        if held > self.limits.max_samples {
            return Err(crate::source::too_many_samples(self.limits.max_samples));
        }
        self.values_built += n;
        Ok(())
    }

    pub fn check_deadline(&self) -> Result<()> {
        if self
            .limits
            .cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(EngineError::Cancelled);
        }
        match self.limits.deadline {
            Some(d) if Instant::now() > d => Err(EngineError::Timeout),
            _ => Ok(()),
        }
    }

    fn pinned(&self, at: Option<At>, t: i64) -> i64 {
        match at {
            None => t,
            Some(At::Time(x)) => x,
            Some(At::Start) => self.query_start,
            Some(At::End) => self.query_end,
        }
    }

    /// Reads every series of `selector` with samples in `[lo, hi]`.
    fn fetch(&mut self, selector: &Selector, lo: i64, hi: i64) -> Result<Vec<RangeSeries>> {
        self.fetch_from(selector, lo, hi, false)
    }

    /// [`Self::fetch`]; with `last_only`, each series' newest sample only.
    fn fetch_from(
        &mut self,
        selector: &Selector,
        lo: i64,
        hi: i64,
        last_only: bool,
    ) -> Result<Vec<RangeSeries>> {
        let mut merged: Vec<RangeSeries> = Vec::new();
        // Only alternative matcher sets (`or`ed) can select a series twice.
        let alternatives = selector.matcher_sets.len() > 1;
        let mut seen: HashMap<Labels, usize> = HashMap::default();
        for set in &selector.matcher_sets {
            self.check_deadline()?;
            let budget = self
                .limits
                .max_samples
                .saturating_sub(self.samples_read.saturating_add(self.values_built));
            let selected = if last_only {
                self.source.select_last(set, lo, hi, budget)
            } else {
                self.source.select(set, lo, hi, budget)
            };
            let selected = selected.map_err(|e| match e {
                // Name the query's limit, not what was left of it.
                EngineError::Limit(_) => crate::source::too_many_samples(self.limits.max_samples),
                other => other,
            })?;
            for s in selected {
                self.samples_read += s.samples.len();
                if !alternatives {
                    merged.push(s);
                } else if !seen.contains_key(&s.labels) {
                    seen.insert(s.labels.clone(), merged.len());
                    merged.push(s);
                }
            }
        }
        if merged.len() > self.limits.max_series {
            return Err(EngineError::Limit(format!(
                "query selects {} series, over the limit of {}",
                merged.len(),
                self.limits.max_series
            )));
        }
        Ok(merged)
    }

    /// Instant vector selection: the latest sample in `(t - lookback, t]` per step.
    /// With `timestamps`, the value is the sample's time in seconds (`timestamp()`).
    pub fn select_vector(
        &mut self,
        selector: &Selector,
        steps: &[i64],
        timestamps: bool,
    ) -> Result<Vec<StepSeries>> {
        let times: Vec<i64> = steps
            .iter()
            .map(|&t| self.pinned(selector.at, t).saturating_sub(selector.offset))
            .collect();
        let lo = times
            .iter()
            .copied()
            .min()
            .unwrap_or(0)
            .saturating_sub(self.lookback);
        let hi = times.iter().copied().max().unwrap_or(0);
        // At one time (an instant query, or `@`), each series' newest sample
        // in the lookback is all that is read: the source may know it
        // without decoding the range.
        let one_time = times.iter().all(|&t| t == hi);
        let series = self.fetch_from(selector, lo.saturating_add(1), hi, one_time)?;
        // A few samples can become series x steps values: count them first.
        self.charge(series.len().saturating_mul(times.len()))?;
        let lookback = self.lookback;
        Ok(series
            .into_iter()
            .map(|s| {
                let values = times
                    .iter()
                    .map(|&t| {
                        let end = s.samples.partition_point(|x| x.t <= t);
                        let last = end.checked_sub(1).map(|i| s.samples[i])?;
                        if last.t <= t.saturating_sub(lookback) || is_stale(last.v) {
                            return None;
                        }
                        Some(if timestamps {
                            last.t as f64 / 1000.0
                        } else {
                            last.v
                        })
                    })
                    .collect();
                StepSeries {
                    labels: s.labels,
                    values,
                }
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect())
    }

    fn select_matrix(&mut self, selector: &Selector, range: i64, steps: &[i64]) -> Result<Windows> {
        let windows: Vec<(i64, i64)> = steps
            .iter()
            .map(|&t| {
                let hi = self.pinned(selector.at, t).saturating_sub(selector.offset);
                (hi.saturating_sub(range), hi)
            })
            .collect();
        let lo = windows.iter().map(|w| w.0).min().unwrap_or(0);
        let hi = windows.iter().map(|w| w.1).max().unwrap_or(0);
        let mut series = self.fetch(selector, lo.saturating_add(1), hi)?;
        for s in &mut series {
            // Staleness markers end a series; they are never part of a window.
            s.samples.retain(|x| !is_stale(x.v));
        }
        Ok(Windows { series, windows })
    }

    #[allow(clippy::too_many_arguments)]
    fn subquery(
        &mut self,
        expr: &Plan,
        range: i64,
        step: Option<i64>,
        offset: i64,
        at: Option<At>,
        steps: &[i64],
        outer_step: i64,
    ) -> Result<Windows> {
        let step = step.unwrap_or(outer_step);
        if step <= 0 {
            return Err(EngineError::Invalid(
                "subquery step must be positive".into(),
            ));
        }
        let windows: Vec<(i64, i64)> = steps
            .iter()
            .map(|&t| {
                let hi = self.pinned(at, t).saturating_sub(offset);
                (hi.saturating_sub(range), hi)
            })
            .collect();
        let lo = windows.iter().map(|w| w.0).min().unwrap_or(0);
        let hi = windows.iter().map(|w| w.1).max().unwrap_or(0);
        // Inner steps sit on multiples of the step, as in Prometheus; counted
        // before any is built.
        let first = lo
            .div_euclid(step)
            .checked_add(1)
            .and_then(|n| n.checked_mul(step));
        let count = first.map_or(0, |first| step_count(first, hi, step));
        if count > 10 * self.limits.max_steps as u128 {
            return Err(EngineError::Limit(format!(
                "subquery resolution too fine for its range: {count} steps, over the limit of {}",
                10 * self.limits.max_steps
            )));
        }
        let inner_steps = match first {
            Some(first) if first <= hi => steps_of(first, hi, step),
            _ => Vec::new(),
        };
        let saved = (self.query_start, self.query_end);
        let value = if inner_steps.is_empty() {
            Val::Vector(Vec::new())
        } else {
            self.eval(expr, &inner_steps)?
        };
        self.query_start = saved.0;
        self.query_end = saved.1;
        let series = match value {
            Val::Vector(series) => series
                .into_iter()
                .map(|s| RangeSeries {
                    labels: s.labels,
                    samples: inner_steps
                        .iter()
                        .zip(s.values)
                        .filter_map(|(&t, v)| v.map(|v| Sample { t, v }))
                        .collect(),
                })
                .collect(),
            Val::Scalar(values) => vec![RangeSeries {
                labels: Labels::default(),
                samples: inner_steps
                    .iter()
                    .zip(values)
                    .map(|(&t, v)| Sample { t, v })
                    .collect(),
            }],
            other => {
                return Err(EngineError::Invalid(format!(
                    "subquery is only allowed on instant vector, got {} instead",
                    kind_name(other.kind())
                )))
            }
        };
        Ok(Windows { series, windows })
    }

    pub fn eval(&mut self, plan: &Plan, steps: &[i64]) -> Result<Val> {
        self.check_deadline()?;
        if let Plan::Number(_) = plan {
            self.charge(steps.len())?;
        }
        let value = self.eval_node(plan, steps)?;
        // Selections were counted as they were read and expanded; everything
        // else is counted by what it made.
        if !matches!(
            plan,
            Plan::Vector(_) | Plan::Matrix { .. } | Plan::Number(_)
        ) {
            self.charge(value.size())?;
        }
        Ok(value)
    }

    fn eval_node(&mut self, plan: &Plan, steps: &[i64]) -> Result<Val> {
        // A subquery without a step uses the default evaluation interval, in
        // range queries too (as Prometheus does), not the query's step.
        let outer_step = DEFAULT_SUBQUERY_STEP;
        Ok(match plan {
            Plan::Number(n) => Val::Scalar(vec![*n; steps.len()]),
            Plan::String(s) => Val::String(s.clone()),
            Plan::Vector(sel) => Val::Vector(self.select_vector(sel, steps, false)?),
            Plan::Matrix { selector, range } => Val::Matrix(self.select_matrix(selector, *range, steps)?),
            Plan::Subquery {
                expr,
                range,
                step,
                offset,
                at,
            } => Val::Matrix(self.subquery(expr, *range, *step, *offset, *at, steps, outer_step)?),
            Plan::Negate(inner) => match self.eval(inner, steps)? {
                Val::Scalar(v) => Val::Scalar(v.into_iter().map(|x| -x).collect()),
                Val::Vector(series) => Val::Vector(
                    series
                        .into_iter()
                        .map(|s| StepSeries {
                            labels: s.labels.without_name(),
                            values: s.values.into_iter().map(|v| v.map(|x| -x)).collect(),
                        })
                        .collect(),
                ),
                other => {
                    return Err(EngineError::Invalid(format!(
                        "unary expression only allowed on expressions of type scalar or instant vector, got {}",
                        kind_name(other.kind())
                    )))
                }
            },
            Plan::Call {
                function,
                args,
                pos,
                arg_pos,
            } => functions::call(self, function, args, (*pos, arg_pos), steps)?,
            Plan::Aggregate {
                op,
                expr,
                param,
                grouping,
                param_pos,
            } => {
                let param = match param {
                    Some(p) => Some(self.eval(p, steps)?),
                    None => None,
                };
                let input = match self.eval(expr, steps)? {
                    Val::Vector(v) => v,
                    other => {
                        return Err(EngineError::Invalid(format!(
                            "expected type instant vector in aggregation expression, got {}",
                            kind_name(other.kind())
                        )))
                    }
                };
                Val::Vector(aggregate::aggregate(
                    *op,
                    input,
                    param,
                    grouping,
                    steps.len(),
                    *param_pos,
                    &mut self.annotations,
                )?)
            }
            Plan::Binary {
                op,
                lhs,
                rhs,
                matching,
                return_bool,
            } => {
                let l = self.eval(lhs, steps)?;
                let r = self.eval(rhs, steps)?;
                binary::binary(*op, l, r, matching.as_ref(), *return_bool)?
            }
        })
    }
}

fn steps_of(start: i64, end: i64, step: i64) -> Vec<i64> {
    steps(start, end, step)
}

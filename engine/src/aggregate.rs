//! Aggregation operators over instant vectors, per step and group.

use rustc_hash::FxHashMap as HashMap;

use crate::annotations::{go_float, Annotation, Pos};
use crate::eval::{StepSeries, Val};
use crate::plan::{AggregateOp, Grouping};
use crate::value::{Labels, METRIC_NAME};
use crate::{EngineError, Result};

fn group_labels(labels: &Labels, grouping: &Grouping) -> Labels {
    match grouping {
        Grouping::By(names) => labels.keep(names, true),
        Grouping::Without(names) => {
            let mut dropped = names.clone();
            dropped.push(METRIC_NAME.to_string());
            labels.keep(&dropped, false)
        }
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`-like formatting for label values.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust prints the shortest exact decimal without an exponent, as Go's 'f', -1.
        format!("{v}")
    }
}

/// Kahan-compensated running sum, as Prometheus's `sum` and `avg` use.
#[derive(Default, Clone, Copy)]
pub(crate) struct KahanSum {
    sum: f64,
    c: f64,
}

impl KahanSum {
    pub fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if t.is_infinite() {
            self.c = 0.0;
        } else if self.sum.abs() >= v.abs() {
            self.c += (self.sum - t) + v;
        } else {
            self.c += (v - t) + self.sum;
        }
        self.sum = t;
    }

    pub fn value(&self) -> f64 {
        if self.sum.is_infinite() {
            self.sum
        } else {
            self.sum + self.c
        }
    }
}

#[derive(Clone)]
struct Acc {
    count: usize,
    sum: KahanSum,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
    // Incremental mean for avg when the plain sum overflows.
    inc_mean: f64,
    overflowed: bool,
}

impl Acc {
    fn new() -> Self {
        Self {
            count: 0,
            sum: KahanSum::default(),
            min: f64::NAN,
            max: f64::NAN,
            mean: 0.0,
            m2: 0.0,
            inc_mean: 0.0,
            overflowed: false,
        }
    }

    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum.add(v);
        if self.min.is_nan() || v < self.min {
            self.min = v;
        }
        if self.max.is_nan() || v > self.max {
            self.max = v;
        }
        // Welford.
        let delta = v - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (v - self.mean);
        if !self.overflowed && self.sum.value().is_infinite() && v.is_finite() {
            self.overflowed = true;
        }
        if self.count == 1 {
            self.inc_mean = v;
        } else if self.inc_mean.is_infinite() {
            if v.is_infinite() && v.signum() != self.inc_mean.signum() {
                self.inc_mean = f64::NAN;
            }
        } else {
            self.inc_mean += v / self.count as f64 - self.inc_mean / self.count as f64;
        }
    }

    fn result(&self, op: AggregateOp) -> f64 {
        match op {
            AggregateOp::Sum => self.sum.value(),
            AggregateOp::Avg => {
                if self.overflowed {
                    self.inc_mean
                } else {
                    self.sum.value() / self.count as f64
                }
            }
            AggregateOp::Min => self.min,
            AggregateOp::Max => self.max,
            AggregateOp::Count => self.count as f64,
            AggregateOp::Group => 1.0,
            AggregateOp::Stdvar => self.m2 / self.count as f64,
            AggregateOp::Stddev => (self.m2 / self.count as f64).sqrt(),
            _ => f64::NAN,
        }
    }
}

fn scalar_param(param: &Option<Val>, name: &str) -> Result<Vec<f64>> {
    match param {
        Some(Val::Scalar(v)) => Ok(v.clone()),
        _ => Err(EngineError::Invalid(format!(
            "expected scalar parameter for {name}"
        ))),
    }
}

pub(crate) fn aggregate(
    op: AggregateOp,
    input: Vec<StepSeries>,
    param: Option<Val>,
    grouping: &Grouping,
    steps: usize,
    param_pos: Option<Pos>,
    annotations: &mut Vec<Annotation>,
) -> Result<Vec<StepSeries>> {
    let mut annotate = |a: Annotation| {
        if !annotations.contains(&a) {
            annotations.push(a);
        }
    };
    match op {
        AggregateOp::Topk | AggregateOp::Bottomk | AggregateOp::LimitK => {
            let k = scalar_param(&param, "topk/bottomk/limitk")?;
            return select_k(op, input, &k, grouping, steps);
        }
        AggregateOp::Quantile => {
            let q = scalar_param(&param, "quantile")?;
            for &q in &q {
                if q.is_nan() || !(0.0..=1.0).contains(&q) {
                    annotate(Annotation::warning(
                        format!(
                            "quantile value should be between 0 and 1, got {}",
                            go_float(q)
                        ),
                        param_pos,
                    ));
                }
            }
            return quantile_over_groups(input, &q, grouping, steps);
        }
        AggregateOp::CountValues => {
            let label = match &param {
                Some(Val::String(s)) => s.clone(),
                _ => {
                    return Err(EngineError::Invalid(
                        "count_values needs a string parameter".into(),
                    ))
                }
            };
            if !is_valid_label_name(&label) {
                return Err(EngineError::Execution(format!(
                    "invalid label name {label:?}"
                )));
            }
            return count_values(input, &label, grouping, steps);
        }
        AggregateOp::LimitRatio => {
            let r = scalar_param(&param, "limit_ratio")?;
            return limit_ratio(input, &r, steps, |p, capped| {
                annotate(Annotation::warning(
                    format!(
                        "ratio value should be between -1 and 1, got {}, capping to {}",
                        go_float(p),
                        go_float(capped)
                    ),
                    param_pos,
                ))
            });
        }
        _ => {}
    }
    let mut groups: HashMap<Labels, usize> = HashMap::default();
    let mut out_labels: Vec<Labels> = Vec::new();
    let mut accs: Vec<Vec<Option<Acc>>> = Vec::new();
    for s in &input {
        let key = group_labels(&s.labels, grouping);
        let g = *groups.entry(key.clone()).or_insert_with(|| {
            out_labels.push(key);
            accs.push(vec![None; steps]);
            out_labels.len() - 1
        });
        for (i, v) in s.values.iter().enumerate() {
            if let Some(v) = v {
                accs[g][i].get_or_insert_with(Acc::new).add(*v);
            }
        }
    }
    Ok(out_labels
        .into_iter()
        .zip(accs)
        .map(|(labels, accs)| StepSeries {
            labels,
            values: accs.into_iter().map(|a| a.map(|a| a.result(op))).collect(),
        })
        .collect())
}

/// `limit_ratio(r, v)`: a deterministic sample of about `r` of the series.
/// Each series sits at a fixed point of [0, 1) given by the hash of its labels
/// (xxHash64 of `name\xffvalue\xff...`, as Prometheus hashes label sets, so
/// the same series are chosen here as there); a positive `r` keeps the points
/// below `r`, a negative one those at or above `1 + r`, so `limit_ratio(r, v)`
/// and `limit_ratio(-(1 - r), v)` split `v` into complements.
fn limit_ratio(
    mut input: Vec<StepSeries>,
    r: &[f64],
    steps: usize,
    mut capped: impl FnMut(f64, f64),
) -> Result<Vec<StepSeries>> {
    let offsets: Vec<f64> = input.iter().map(|s| ratio_offset(&s.labels)).collect();
    for (step, &p) in r.iter().enumerate().take(steps) {
        if p.is_nan() {
            return Err(EngineError::Execution("Ratio value is NaN".into()));
        }
        let ratio = if p < -1.0 {
            capped(p, -1.0);
            -1.0
        } else if p > 1.0 {
            capped(p, 1.0);
            1.0
        } else {
            p
        };
        for (s, &offset) in input.iter_mut().zip(&offsets) {
            let keep = (ratio > 0.0 && offset < ratio) || (ratio < 0.0 && offset >= 1.0 + ratio);
            if !keep {
                s.values[step] = None;
            }
        }
    }
    input.retain(|s| s.values.iter().any(Option::is_some));
    Ok(input)
}

/// Where a series sits in [0, 1] for `limit_ratio`.
fn ratio_offset(labels: &Labels) -> f64 {
    let mut bytes = Vec::with_capacity(128);
    for (name, value) in labels.iter() {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&bytes, 0) as f64 / u64::MAX as f64
}

pub(crate) fn is_valid_label_name(s: &str) -> bool {
    !s.is_empty()
}

fn select_k(
    op: AggregateOp,
    input: Vec<StepSeries>,
    k: &[f64],
    grouping: &Grouping,
    steps: usize,
) -> Result<Vec<StepSeries>> {
    let keys: Vec<Labels> = input
        .iter()
        .map(|s| group_labels(&s.labels, grouping))
        .collect();
    let mut keep = vec![vec![false; steps]; input.len()];
    for step in 0..steps {
        let kf = k[step];
        if kf.is_nan() {
            return Err(EngineError::Execution("Parameter value is NaN".into()));
        }
        if kf >= 1.0 && kf > i64::MAX as f64 {
            return Err(EngineError::Execution(format!(
                "Scalar value {kf} overflows int64"
            )));
        }
        let want = if kf < 1.0 { 0 } else { kf as usize };
        if want == 0 {
            continue;
        }
        let mut by_group: HashMap<&Labels, Vec<usize>> = HashMap::default();
        for (i, s) in input.iter().enumerate() {
            if s.values[step].is_some() {
                by_group.entry(&keys[i]).or_default().push(i);
            }
        }
        for (_, mut members) in by_group {
            match op {
                AggregateOp::LimitK => {
                    members.sort_by(|a, b| input[*a].labels.cmp(&input[*b].labels))
                }
                _ => members.sort_by(|a, b| {
                    let (x, y) = (
                        input[*a].values[step].unwrap(),
                        input[*b].values[step].unwrap(),
                    );
                    let ord = compare_for_k(x, y, op == AggregateOp::Topk);
                    ord.then_with(|| input[*a].labels.cmp(&input[*b].labels))
                }),
            }
            for i in members.into_iter().take(want) {
                keep[i][step] = true;
            }
        }
    }
    let mut out: Vec<(StepSeries, f64)> = input
        .into_iter()
        .zip(keep)
        .map(|(s, keep)| {
            let first = s.values.first().copied().flatten().unwrap_or(f64::NAN);
            (
                StepSeries {
                    labels: s.labels,
                    values: s
                        .values
                        .into_iter()
                        .zip(keep)
                        .map(|(v, k)| if k { v } else { None })
                        .collect(),
                },
                first,
            )
        })
        .collect();
    if steps == 1 && op != AggregateOp::LimitK {
        // An instant topk lists the largest first (bottomk the smallest).
        out.sort_by(|a, b| compare_for_k(a.1, b.1, op == AggregateOp::Topk));
    }
    Ok(out.into_iter().map(|(s, _)| s).collect())
}

/// Orders so the wanted values come first; NaN always last.
fn compare_for_k(x: f64, y: f64, largest: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ if largest => y.partial_cmp(&x).unwrap_or(Ordering::Equal),
        _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Prometheus's quantile: linear interpolation between closest ranks.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // NaN counts as the smallest value, as in Prometheus.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn quantile_over_groups(
    input: Vec<StepSeries>,
    q: &[f64],
    grouping: &Grouping,
    steps: usize,
) -> Result<Vec<StepSeries>> {
    let mut groups: HashMap<Labels, usize> = HashMap::default();
    let mut out_labels = Vec::new();
    let mut values: Vec<Vec<Vec<f64>>> = Vec::new();
    for s in &input {
        let key = group_labels(&s.labels, grouping);
        let g = *groups.entry(key.clone()).or_insert_with(|| {
            out_labels.push(key);
            values.push(vec![Vec::new(); steps]);
            out_labels.len() - 1
        });
        for (i, v) in s.values.iter().enumerate() {
            if let Some(v) = v {
                values[g][i].push(*v);
            }
        }
    }
    Ok(out_labels
        .into_iter()
        .zip(values)
        .map(|(labels, per_step)| StepSeries {
            labels,
            values: per_step
                .into_iter()
                .enumerate()
                .map(|(i, mut vs)| (!vs.is_empty()).then(|| quantile(q[i], &mut vs)))
                .collect(),
        })
        .collect())
}

fn count_values(
    input: Vec<StepSeries>,
    label: &str,
    grouping: &Grouping,
    steps: usize,
) -> Result<Vec<StepSeries>> {
    let mut groups: HashMap<Labels, Vec<Option<f64>>> = HashMap::default();
    let mut order: Vec<Labels> = Vec::new();
    for s in &input {
        let base = group_labels(&s.labels, grouping);
        for (i, v) in s.values.iter().enumerate() {
            if let Some(v) = v {
                let mut key = base.clone();
                key.set(label, &format_value(*v));
                let counts = groups.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    vec![None; steps]
                });
                *counts[i].get_or_insert(0.0) += 1.0;
            }
        }
    }
    Ok(order
        .into_iter()
        .map(|labels| {
            let values = groups.remove(&labels).unwrap_or_default();
            StepSeries { labels, values }
        })
        .collect())
}

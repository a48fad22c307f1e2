//! Binary operators: arithmetic, comparisons (filtering or `bool`), and set
//! operators, with Prometheus's vector matching.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::eval::{kind_name, StepSeries, Val};
use crate::plan::{BinaryOp, Cardinality, VectorMatching};
use crate::value::{Labels, METRIC_NAME};
use crate::{EngineError, Result};

/// `op(l, r)`; for comparisons, `Some(l)` when true and `None` when false.
fn apply(op: BinaryOp, l: f64, r: f64) -> Option<f64> {
    Some(match op {
        BinaryOp::Add => l + r,
        BinaryOp::Sub => l - r,
        BinaryOp::Mul => l * r,
        BinaryOp::Div => l / r,
        BinaryOp::Mod => l % r,
        BinaryOp::Pow => l.powf(r),
        BinaryOp::Atan2 => l.atan2(r),
        BinaryOp::Eq => return (l == r).then_some(l),
        BinaryOp::Ne => return (l != r).then_some(l),
        BinaryOp::Gt => return (l > r).then_some(l),
        BinaryOp::Lt => return (l < r).then_some(l),
        BinaryOp::Ge => return (l >= r).then_some(l),
        BinaryOp::Le => return (l <= r).then_some(l),
        BinaryOp::And | BinaryOp::Or | BinaryOp::Unless => return None,
    })
}

/// The element's value after `op`, or None when a comparison filters it out.
fn element(op: BinaryOp, l: f64, r: f64, return_bool: bool, keep_value: f64) -> Option<f64> {
    let result = apply(op, l, r);
    if op.is_comparison() {
        if return_bool {
            Some(if result.is_some() { 1.0 } else { 0.0 })
        } else {
            result.map(|_| keep_value)
        }
    } else {
        result
    }
}

fn drops_name(op: BinaryOp, return_bool: bool) -> bool {
    !op.is_comparison() || return_bool
}

pub(crate) fn binary(
    op: BinaryOp,
    lhs: Val,
    rhs: Val,
    matching: Option<&VectorMatching>,
    return_bool: bool,
) -> Result<Val> {
    match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            if op.is_set() {
                return Err(EngineError::Invalid(format!(
                    "set operator {op:?} not allowed in binary scalar expression"
                )));
            }
            Ok(Val::Scalar(
                l.into_iter()
                    .zip(r)
                    .map(|(l, r)| element(op, l, r, true, l).unwrap_or(f64::NAN))
                    .collect(),
            ))
        }
        (Val::Vector(v), Val::Scalar(s)) => vector_scalar(op, v, &s, false, return_bool),
        (Val::Scalar(s), Val::Vector(v)) => vector_scalar(op, v, &s, true, return_bool),
        (Val::Vector(l), Val::Vector(r)) => {
            let default = VectorMatching {
                on: false,
                labels: Vec::new(),
                cardinality: if op.is_set() {
                    Cardinality::ManyToMany
                } else {
                    Cardinality::OneToOne
                },
            };
            let matching = matching.unwrap_or(&default);
            if op.is_set() {
                Ok(Val::Vector(set_op(op, l, r, matching)))
            } else {
                vector_vector(op, l, r, matching, return_bool).map(Val::Vector)
            }
        }
        (l, r) => Err(EngineError::Invalid(format!(
            "binary expression must contain only scalar and instant vector types, got {} and {}",
            kind_name(l.kind()),
            kind_name(r.kind())
        ))),
    }
}

fn vector_scalar(
    op: BinaryOp,
    vector: Vec<StepSeries>,
    scalar: &[f64],
    scalar_on_left: bool,
    return_bool: bool,
) -> Result<Val> {
    if op.is_set() {
        return Err(EngineError::Invalid(
            "set operators are only allowed between instant vectors".into(),
        ));
    }
    let drop = drops_name(op, return_bool);
    Ok(Val::Vector(
        vector
            .into_iter()
            .map(|s| StepSeries {
                labels: if drop {
                    s.labels.without_name()
                } else {
                    s.labels
                },
                values: s
                    .values
                    .into_iter()
                    .zip(scalar)
                    .map(|(v, &sc)| {
                        let v = v?;
                        let (l, r) = if scalar_on_left { (sc, v) } else { (v, sc) };
                        // A filtering comparison keeps the vector's value either way.
                        element(op, l, r, return_bool, v)
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// The labels two elements are matched on.
fn signature(labels: &Labels, m: &VectorMatching) -> Labels {
    if m.on {
        labels.keep(&m.labels, true)
    } else {
        let mut dropped = m.labels.clone();
        dropped.push(METRIC_NAME.to_string());
        labels.keep(&dropped, false)
    }
}

fn set_op(
    op: BinaryOp,
    l: Vec<StepSeries>,
    r: Vec<StepSeries>,
    m: &VectorMatching,
) -> Vec<StepSeries> {
    let steps = l.first().or(r.first()).map_or(0, |s| s.values.len());
    let lsig: Vec<Labels> = l.iter().map(|s| signature(&s.labels, m)).collect();
    let rsig: Vec<Labels> = r.iter().map(|s| signature(&s.labels, m)).collect();
    let present = |series: &[StepSeries], sigs: &[Labels], step: usize| -> HashSet<Labels> {
        series
            .iter()
            .zip(sigs)
            .filter(|(s, _)| s.values[step].is_some())
            .map(|(_, sig)| sig.clone())
            .collect()
    };
    let mut left = l;
    let mut right = r;
    for step in 0..steps {
        let in_right = present(&right, &rsig, step);
        match op {
            BinaryOp::And => {
                for (s, sig) in left.iter_mut().zip(&lsig) {
                    if !in_right.contains(sig) {
                        s.values[step] = None;
                    }
                }
            }
            BinaryOp::Unless => {
                for (s, sig) in left.iter_mut().zip(&lsig) {
                    if in_right.contains(sig) {
                        s.values[step] = None;
                    }
                }
            }
            BinaryOp::Or => {
                let in_left = present(&left, &lsig, step);
                for (s, sig) in right.iter_mut().zip(&rsig) {
                    if in_left.contains(sig) {
                        s.values[step] = None;
                    }
                }
            }
            _ => unreachable!("set_op is only called for set operators"),
        }
    }
    if op == BinaryOp::Or {
        left.extend(right);
    }
    left
}

fn vector_vector(
    op: BinaryOp,
    l: Vec<StepSeries>,
    r: Vec<StepSeries>,
    m: &VectorMatching,
    return_bool: bool,
) -> Result<Vec<StepSeries>> {
    let steps = l.first().or(r.first()).map_or(0, |s| s.values.len());
    // The "many" side is iterated; the "one" side is looked up by signature.
    let (many, one, swapped, include) = match &m.cardinality {
        Cardinality::OneToMany(include) => (r, l, true, include.clone()),
        Cardinality::ManyToOne(include) => (l, r, false, include.clone()),
        Cardinality::OneToOne => (l, r, false, Vec::new()),
        Cardinality::ManyToMany => {
            return Err(EngineError::Invalid(
                "many-to-many matching is only allowed for set operators".into(),
            ))
        }
    };
    let many_sig: Vec<Labels> = many.iter().map(|s| signature(&s.labels, m)).collect();
    let one_sig: Vec<Labels> = one.iter().map(|s| signature(&s.labels, m)).collect();
    let drop = drops_name(op, return_bool);
    let mut out: Vec<StepSeries> = Vec::new();
    let mut out_index: HashMap<Labels, usize> = HashMap::default();
    let mut result_labels_cache: HashMap<(usize, usize), Labels> = HashMap::default();
    for step in 0..steps {
        let mut one_by_sig: HashMap<&Labels, usize> = HashMap::default();
        for (j, s) in one.iter().enumerate() {
            if s.values[step].is_none() {
                continue;
            }
            if let Some(other) = one_by_sig.insert(&one_sig[j], j) {
                let side = if swapped { "left" } else { "right" };
                let mut pair = [one[other].labels.braced(), s.labels.braced()];
                pair.sort();
                return Err(EngineError::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    one_sig[j].braced(),
                    pair[0],
                    pair[1]
                )));
            }
        }
        let mut matched_one: HashSet<usize> = HashSet::default();
        for (i, s) in many.iter().enumerate() {
            let Some(mv) = s.values[step] else { continue };
            let Some(&j) = one_by_sig.get(&many_sig[i]) else {
                continue;
            };
            if m.cardinality == Cardinality::OneToOne && !matched_one.insert(j) {
                return Err(EngineError::Execution(format!(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right) for {}",
                    one[j].labels
                )));
            }
            let ov = one[j].values[step].expect("indexed only when present");
            let (lv, rv) = if swapped { (ov, mv) } else { (mv, ov) };
            let Some(value) = element(op, lv, rv, return_bool, lv) else {
                continue;
            };
            let labels = result_labels_cache
                .entry((i, j))
                .or_insert_with(|| result_labels(&s.labels, &one[j].labels, m, &include, drop))
                .clone();
            let k = *out_index.entry(labels.clone()).or_insert_with(|| {
                out.push(StepSeries {
                    labels,
                    values: vec![None; steps],
                });
                out.len() - 1
            });
            if out[k].values[step].is_some() {
                return Err(EngineError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            out[k].values[step] = Some(value);
        }
    }
    Ok(out)
}

fn result_labels(
    many: &Labels,
    one: &Labels,
    m: &VectorMatching,
    include: &[String],
    drop_name: bool,
) -> Labels {
    let mut labels = if drop_name {
        many.without_name()
    } else {
        many.clone()
    };
    if m.cardinality == Cardinality::OneToOne {
        labels = if m.on {
            labels.keep(&m.labels, true)
        } else {
            labels.keep(&m.labels, false)
        };
    }
    for name in include {
        match one.get(name) {
            Some(v) => labels.set(name, v),
            None => labels.remove(name),
        }
    }
    labels
}

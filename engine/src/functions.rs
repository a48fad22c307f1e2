//! The PromQL function library over instant and range vectors.

use crate::aggregate::{quantile, KahanSum};
use crate::annotations::{go_float, Annotation, Pos};
use crate::eval::{kind_name, Evaluator, StepSeries, Val, Windows};
use crate::plan::{Plan, ValueKind};
use crate::value::{Labels, Sample, METRIC_NAME};
use crate::{EngineError, Result};

/// What a call returns, for planning (`kind`) before evaluation.
pub(crate) fn return_kind(name: &str, _args: &[Plan]) -> ValueKind {
    match name {
        "time" | "scalar" | "pi" | "step" | "range" | "start" | "end" | "min_of" | "max_of" => {
            ValueKind::Scalar
        }
        _ => ValueKind::Vector,
    }
}

fn bad_arg(name: &str, what: &str) -> EngineError {
    EngineError::Invalid(format!("function {name}: {what}"))
}

fn vector_arg(name: &str, v: Val) -> Result<Vec<StepSeries>> {
    match v {
        Val::Vector(s) => Ok(s),
        other => Err(bad_arg(
            name,
            &format!(
                "expected instant vector argument, got {}",
                kind_name(other.kind())
            ),
        )),
    }
}

fn matrix_arg(name: &str, v: Val) -> Result<Windows> {
    match v {
        Val::Matrix(w) => Ok(w),
        other => Err(bad_arg(
            name,
            &format!(
                "expected range vector argument, got {}",
                kind_name(other.kind())
            ),
        )),
    }
}

fn scalar_arg(name: &str, v: Val) -> Result<Vec<f64>> {
    match v {
        Val::Scalar(s) => Ok(s),
        other => Err(bad_arg(
            name,
            &format!("expected scalar argument, got {}", kind_name(other.kind())),
        )),
    }
}

fn string_arg(name: &str, v: Val) -> Result<String> {
    match v {
        Val::String(s) => Ok(s),
        other => Err(bad_arg(
            name,
            &format!("expected string argument, got {}", kind_name(other.kind())),
        )),
    }
}

/// Applies `f` to every value, dropping the metric name.
fn map_values(series: Vec<StepSeries>, f: impl Fn(f64, usize) -> Option<f64>) -> Vec<StepSeries> {
    series
        .into_iter()
        .map(|s| StepSeries {
            labels: s.labels.without_name(),
            values: s
                .values
                .into_iter()
                .enumerate()
                .map(|(i, v)| v.and_then(|v| f(v, i)))
                .collect(),
        })
        .collect()
}

/// Applies `f` to every step's window of every series of a range vector.
fn over_windows(
    w: &Windows,
    keep_name: bool,
    f: impl Fn(&[Sample], (i64, i64)) -> Option<f64>,
) -> Vec<StepSeries> {
    w.series
        .iter()
        .map(|s| StepSeries {
            labels: if keep_name {
                s.labels.clone()
            } else {
                s.labels.without_name()
            },
            values: (0..w.windows.len())
                .map(|i| {
                    let window = w.slice(&s.samples, i);
                    if window.is_empty() {
                        None
                    } else {
                        f(window, w.windows[i])
                    }
                })
                .collect(),
        })
        .collect()
}

fn simple_math(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        "acos" => f64::acos,
        "acosh" => f64::acosh,
        "asin" => f64::asin,
        "asinh" => f64::asinh,
        "atan" => f64::atan,
        "atanh" => f64::atanh,
        "cos" => f64::cos,
        "cosh" => f64::cosh,
        "sin" => f64::sin,
        "sinh" => f64::sinh,
        "tan" => f64::tan,
        "tanh" => f64::tanh,
        "deg" => f64::to_degrees,
        "rad" => f64::to_radians,
        _ => return None,
    })
}

/// Where a call and its arguments start in the query text, for annotations.
pub(crate) type Site<'a> = (Option<Pos>, &'a [Pos]);

pub(crate) fn call(
    ev: &mut Evaluator,
    name: &str,
    args: &[Plan],
    site: Site<'_>,
    steps: &[i64],
) -> Result<Val> {
    let (call_pos, arg_pos) = site;
    let arg_at = |i: usize| arg_pos.get(i).copied();
    // Functions that look at their argument's plan, not only its value.
    match name {
        "timestamp" => {
            if let [Plan::Vector(sel)] = args {
                let series = ev.select_vector(sel, steps, true)?;
                return Ok(Val::Vector(map_values(series, |v, _| Some(v))));
            }
            let series = vector_arg(name, ev.eval(&args[0], steps)?)?;
            return Ok(Val::Vector(map_values(series, |_, i| {
                Some(steps[i] as f64 / 1000.0)
            })));
        }
        "absent" | "absent_over_time" => {
            let labels = absent_labels(args.first());
            let present: Vec<bool> = match ev.eval(&args[0], steps)? {
                Val::Vector(series) => (0..steps.len())
                    .map(|i| series.iter().any(|s| s.values[i].is_some()))
                    .collect(),
                Val::Matrix(w) => (0..steps.len())
                    .map(|i| w.series.iter().any(|s| !w.slice(&s.samples, i).is_empty()))
                    .collect(),
                other => {
                    return Err(bad_arg(
                        name,
                        &format!("unexpected argument {}", kind_name(other.kind())),
                    ))
                }
            };
            return Ok(Val::Vector(vec![StepSeries {
                labels,
                values: present
                    .into_iter()
                    .map(|p| if p { None } else { Some(1.0) })
                    .collect(),
            }]));
        }
        _ => {}
    }
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(ev.eval(a, steps)?);
    }
    let mut values = values.into_iter();
    let mut next = || {
        values
            .next()
            .ok_or_else(|| bad_arg(name, "missing argument"))
    };

    if let Some(f) = simple_math(name) {
        let series = vector_arg(name, next()?)?;
        return Ok(Val::Vector(map_values(series, move |v, _| Some(f(v)))));
    }
    let time_seconds: Vec<f64> = steps.iter().map(|&t| t as f64 / 1000.0).collect();
    Ok(match name {
        "time" => Val::Scalar(time_seconds),
        "step" => Val::Scalar(vec![ev.query_step as f64 / 1000.0; steps.len()]),
        "range" => Val::Scalar(vec![
            (ev.query_end - ev.query_start) as f64 / 1000.0;
            steps.len()
        ]),
        "start" => Val::Scalar(vec![ev.query_start as f64 / 1000.0; steps.len()]),
        "end" => Val::Scalar(vec![ev.query_end as f64 / 1000.0; steps.len()]),
        "min_of" | "max_of" => {
            let (a, b) = (scalar_arg(name, next()?)?, scalar_arg(name, next()?)?);
            let min = name == "min_of";
            Val::Scalar(
                a.into_iter()
                    .zip(b)
                    .map(|(a, b)| {
                        if a.is_nan() || b.is_nan() {
                            f64::NAN
                        } else if min {
                            a.min(b)
                        } else {
                            a.max(b)
                        }
                    })
                    .collect(),
            )
        }
        "ts_of_min_over_time"
        | "ts_of_max_over_time"
        | "ts_of_last_over_time"
        | "ts_of_first_over_time" => {
            let w = matrix_arg(name, next()?)?;
            let which = name.to_string();
            Val::Vector(over_windows(&w, false, move |s, _| {
                let pick = match which.as_str() {
                    "ts_of_last_over_time" => s[s.len() - 1],
                    "ts_of_first_over_time" => s[0],
                    "ts_of_min_over_time" => {
                        *s.iter()
                            .reduce(|a, b| if b.v < a.v || a.v.is_nan() { b } else { a })?
                    }
                    _ => *s
                        .iter()
                        .reduce(|a, b| if b.v > a.v || a.v.is_nan() { b } else { a })?,
                };
                Some(pick.t as f64 / 1000.0)
            }))
        }
        "pi" => Val::Scalar(vec![std::f64::consts::PI; steps.len()]),
        "vector" => {
            let s = scalar_arg(name, next()?)?;
            Val::Vector(vec![StepSeries {
                labels: Labels::default(),
                values: s.into_iter().map(Some).collect(),
            }])
        }
        "scalar" => {
            let series = vector_arg(name, next()?)?;
            Val::Scalar(
                (0..steps.len())
                    .map(|i| {
                        let mut present = series.iter().filter_map(|s| s.values[i]);
                        match (present.next(), present.next()) {
                            (Some(v), None) => v,
                            _ => f64::NAN,
                        }
                    })
                    .collect(),
            )
        }
        "round" => {
            let series = vector_arg(name, next()?)?;
            let to = match next() {
                Ok(v) => scalar_arg(name, v)?,
                Err(_) => vec![1.0; steps.len()],
            };
            Val::Vector(map_values(series, move |v, i| {
                let inverse = 1.0 / to[i];
                Some((v * inverse + 0.5).floor() / inverse)
            }))
        }
        "clamp" => {
            let series = vector_arg(name, next()?)?;
            let (lo, hi) = (scalar_arg(name, next()?)?, scalar_arg(name, next()?)?);
            Val::Vector(map_values(series, move |v, i| {
                (lo[i] <= hi[i]).then(|| v.max(lo[i]).min(hi[i]))
            }))
        }
        "clamp_min" => {
            let series = vector_arg(name, next()?)?;
            let lo = scalar_arg(name, next()?)?;
            Val::Vector(map_values(series, move |v, i| Some(v.max(lo[i]))))
        }
        "clamp_max" => {
            let series = vector_arg(name, next()?)?;
            let hi = scalar_arg(name, next()?)?;
            Val::Vector(map_values(series, move |v, i| Some(v.min(hi[i]))))
        }
        "sort" | "sort_desc" => {
            let mut series = vector_arg(name, next()?)?;
            sort_in_range_warning(ev, call_pos);
            let desc = name == "sort_desc";
            series.sort_by(|a, b| {
                let (x, y) = (
                    a.values[0].unwrap_or(f64::NAN),
                    b.values[0].unwrap_or(f64::NAN),
                );
                go_compare(if desc { y } else { x }, if desc { x } else { y })
            });
            Val::Vector(series)
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut series = vector_arg(name, next()?)?;
            sort_in_range_warning(ev, call_pos);
            let mut names = Vec::new();
            for v in values_rest(next) {
                names.push(string_arg(name, v)?);
            }
            let desc = name == "sort_by_label_desc";
            series.sort_by(|a, b| {
                let mut ord = std::cmp::Ordering::Equal;
                for n in &names {
                    ord = ord.then_with(|| {
                        natural_cmp(a.labels.get(n).unwrap_or(""), b.labels.get(n).unwrap_or(""))
                    });
                }
                let ord = ord.then_with(|| a.labels.cmp(&b.labels));
                if desc {
                    ord.reverse()
                } else {
                    ord
                }
            });
            Val::Vector(series)
        }
        "label_replace" => {
            let series = vector_arg(name, next()?)?;
            let dst = string_arg(name, next()?)?;
            let replacement = string_arg(name, next()?)?;
            let src = string_arg(name, next()?)?;
            let pattern = string_arg(name, next()?)?;
            let re = regex::Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| {
                EngineError::Execution(format!(
                    "invalid regular expression in label_replace(): {e}"
                ))
            })?;
            if !valid_label_name(&dst) {
                return Err(EngineError::Execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let out = series
                .into_iter()
                .map(|mut s| {
                    let value = s.labels.get(&src).unwrap_or("").to_string();
                    if let Some(caps) = re.captures(&value) {
                        let mut result = String::new();
                        caps.expand(&replacement, &mut result);
                        s.labels.set(&dst, &result);
                    }
                    s
                })
                .collect();
            Val::Vector(crate::eval::dedupe(out)?)
        }
        "label_join" => {
            let series = vector_arg(name, next()?)?;
            let dst = string_arg(name, next()?)?;
            let sep = string_arg(name, next()?)?;
            let mut srcs = Vec::new();
            for v in values_rest(next) {
                srcs.push(string_arg(name, v)?);
            }
            if !valid_label_name(&dst) {
                return Err(EngineError::Execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let out = series
                .into_iter()
                .map(|mut s| {
                    let joined = srcs
                        .iter()
                        .map(|n| s.labels.get(n).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    s.labels.set(&dst, &joined);
                    s
                })
                .collect();
            Val::Vector(crate::eval::dedupe(out)?)
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let series = match next() {
                Ok(v) => vector_arg(name, v)?,
                Err(_) => vec![StepSeries {
                    labels: Labels::default(),
                    values: time_seconds.iter().map(|&t| Some(t)).collect(),
                }],
            };
            let part = name.to_string();
            Val::Vector(map_values(series, move |v, _| date_part(&part, v)))
        }
        "histogram_quantile" => {
            let q = scalar_arg(name, next()?)?;
            let series = vector_arg(name, next()?)?;
            for &q in &q {
                invalid_quantile_warning(ev, q, arg_at(0));
            }
            let (out, notes) = histogram_quantile(&q, series, steps.len());
            note_buckets(ev, notes, arg_at(1));
            Val::Vector(out)
        }
        "histogram_quantiles" => {
            // histogram_quantiles(buckets, "label", q1, q2, ...): one series
            // per group and quantile, the quantile in `label`.
            let series = vector_arg(name, next()?)?;
            let label = string_arg(name, next()?)?;
            if !valid_label_name(&label) {
                return Err(EngineError::Execution(format!(
                    "invalid quantile label name in histogram_quantiles(): {label}"
                )));
            }
            let mut out = Vec::new();
            // The quantiles are arguments 2, 3, ...
            for (index, q) in (2..).zip(values.by_ref()) {
                let q = scalar_arg(name, q)?;
                for &q in &q {
                    invalid_quantile_warning(ev, q, arg_at(index));
                }
                let (groups, notes) = histogram_quantile(&q, series.clone(), steps.len());
                note_buckets(ev, notes, arg_at(0));
                let q_text = q.first().map(|q| quantile_label(*q)).unwrap_or_default();
                out.extend(groups.into_iter().map(|mut g| {
                    g.labels.set(&label, &q_text);
                    g
                }));
            }
            Val::Vector(out)
        }
        "histogram_fraction" => {
            // Classic buckets (`le`); a native histogram is not stored here.
            let lower = scalar_arg(name, next()?)?;
            let upper = scalar_arg(name, next()?)?;
            let series = vector_arg(name, next()?)?;
            let (out, notes) = per_bucket_group(series, steps.len(), |step, buckets| {
                bucket_fraction(lower[step], upper[step], buckets)
            });
            note_buckets(ev, notes, arg_at(2));
            Val::Vector(out)
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            // Native histograms only; float series give nothing.
            Val::Vector(Vec::new())
        }
        "rate" | "increase" | "delta" => {
            let w = matrix_arg(name, next()?)?;
            let (counter, rate) = (name != "delta", name == "rate");
            Val::Vector(over_windows(&w, false, move |s, window| {
                extrapolated_rate(s, window, counter, rate)
            }))
        }
        "irate" | "idelta" => {
            let w = matrix_arg(name, next()?)?;
            let rate = name == "irate";
            Val::Vector(over_windows(&w, false, move |s, _| instant_delta(s, rate)))
        }
        "deriv" => {
            let w = matrix_arg(name, next()?)?;
            Val::Vector(over_windows(&w, false, |s, _| {
                (s.len() >= 2).then(|| linear_regression(s, s[0].t).0)
            }))
        }
        "predict_linear" => {
            let w = matrix_arg(name, next()?)?;
            let by = scalar_arg(name, next()?)?;
            let mut out = Vec::new();
            for s in &w.series {
                let values = (0..w.windows.len())
                    .map(|i| {
                        let window = w.slice(&s.samples, i);
                        (window.len() >= 2).then(|| {
                            let (slope, intercept) = linear_regression(window, steps[i]);
                            slope * by[i] + intercept
                        })
                    })
                    .collect();
                out.push(StepSeries {
                    labels: s.labels.without_name(),
                    values,
                });
            }
            Val::Vector(out)
        }
        "resets" => {
            let w = matrix_arg(name, next()?)?;
            Val::Vector(over_windows(&w, false, |s, _| {
                Some(s.windows(2).filter(|p| p[1].v < p[0].v).count() as f64)
            }))
        }
        "changes" => {
            let w = matrix_arg(name, next()?)?;
            Val::Vector(over_windows(&w, false, |s, _| {
                Some(
                    s.windows(2)
                        .filter(|p| !(p[1].v == p[0].v || (p[1].v.is_nan() && p[0].v.is_nan())))
                        .count() as f64,
                )
            }))
        }
        "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "stddev_over_time" | "stdvar_over_time" | "last_over_time"
        | "first_over_time" | "present_over_time" | "mad_over_time" => {
            let w = matrix_arg(name, next()?)?;
            let keep_name = matches!(name, "last_over_time" | "first_over_time");
            let which = name.to_string();
            Val::Vector(over_windows(&w, keep_name, move |s, _| {
                over_time(&which, s)
            }))
        }
        "quantile_over_time" => {
            let q = scalar_arg(name, next()?)?;
            let w = matrix_arg(name, next()?)?;
            // Warned about only where a value is computed, as Prometheus does.
            let mut computed = vec![false; q.len()];
            let mut out = Vec::new();
            for s in &w.series {
                let values = (0..w.windows.len())
                    .map(|i| {
                        let window = w.slice(&s.samples, i);
                        (!window.is_empty()).then(|| {
                            computed[i] = true;
                            let mut vs: Vec<f64> = window.iter().map(|x| x.v).collect();
                            quantile(q[i], &mut vs)
                        })
                    })
                    .collect();
                out.push(StepSeries {
                    labels: s.labels.without_name(),
                    values,
                });
            }
            for (i, &q) in q.iter().enumerate() {
                if computed[i] {
                    invalid_quantile_warning(ev, q, arg_at(0));
                }
            }
            Val::Vector(out)
        }
        "holt_winters" | "double_exponential_smoothing" => {
            let w = matrix_arg(name, next()?)?;
            let sf = scalar_arg(name, next()?)?;
            let tf = scalar_arg(name, next()?)?;
            for i in 0..steps.len() {
                if !(sf[i] > 0.0 && sf[i] < 1.0) {
                    return Err(EngineError::Execution(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
                        sf[i]
                    )));
                }
                if !(tf[i] > 0.0 && tf[i] < 1.0) {
                    return Err(EngineError::Execution(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {}",
                        tf[i]
                    )));
                }
            }
            let mut out = Vec::new();
            for s in &w.series {
                let values = (0..w.windows.len())
                    .map(|i| double_exponential_smoothing(w.slice(&s.samples, i), sf[i], tf[i]))
                    .collect();
                out.push(StepSeries {
                    labels: s.labels.without_name(),
                    values,
                });
            }
            Val::Vector(out)
        }
        other => {
            return Err(EngineError::Invalid(format!(
                "function {other} is not supported"
            )))
        }
    })
}

/// The remaining arguments of a variadic call.
fn values_rest(mut next: impl FnMut() -> Result<Val>) -> Vec<Val> {
    let mut out = Vec::new();
    while let Ok(v) = next() {
        out.push(v);
    }
    out
}

/// Go's `cmp.Compare` for floats: NaN sorts before everything.
fn go_compare(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compares runs of digits by value, the rest by bytes.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let xe = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ye = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let xn = std::str::from_utf8(&x[..xe])
                    .unwrap_or("0")
                    .trim_start_matches('0');
                let yn = std::str::from_utf8(&y[..ye])
                    .unwrap_or("0")
                    .trim_start_matches('0');
                let ord = xn.len().cmp(&yn.len()).then_with(|| xn.cmp(yn));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                x = &x[xe..];
                y = &y[ye..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `absent()` answers with the equality matchers of its selector as labels.
fn absent_labels(arg: Option<&Plan>) -> Labels {
    let selector = match arg {
        Some(Plan::Vector(s)) => s,
        Some(Plan::Matrix { selector, .. }) => selector,
        _ => return Labels::default(),
    };
    let Some(set) = selector.matcher_sets.first() else {
        return Labels::default();
    };
    let mut pairs = Vec::new();
    let mut seen = rustc_hash::FxHashSet::default();
    let mut repeated = rustc_hash::FxHashSet::default();
    for m in set {
        if m.name == METRIC_NAME {
            continue;
        }
        if !seen.insert(m.name.clone()) {
            repeated.insert(m.name.clone());
        }
        if m.op == chronicle_storage::MatchOp::Equal {
            pairs.push((m.name.clone(), m.value.clone()));
        }
    }
    // A label constrained twice has no single value to report.
    pairs.retain(|(n, _)| !repeated.contains(n));
    Labels::new(pairs)
}

/// Prometheus's extrapolated rate/increase/delta over one window.
fn extrapolated_rate(s: &[Sample], (lo, hi): (i64, i64), counter: bool, rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let first = s[0];
    let last = s[s.len() - 1];
    let mut result = last.v - first.v;
    if counter {
        let mut prev = first.v;
        for p in &s[1..] {
            if p.v < prev {
                result += prev;
            }
            prev = p.v;
        }
    }
    let mut to_start = (first.t - lo) as f64 / 1000.0;
    let mut to_end = (hi - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let average = sampled / (s.len() - 1) as f64;
    let threshold = average * 1.1;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if counter && result > 0.0 && first.v >= 0.0 {
        let to_zero = sampled * (first.v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if rate {
        factor /= (hi - lo) as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_delta(s: &[Sample], rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (prev, last) = (s[s.len() - 2], s[s.len() - 1]);
    let mut result = if rate && last.v < prev.v {
        last.v
    } else {
        last.v - prev.v
    };
    if rate {
        let dt = (last.t - prev.t) as f64 / 1000.0;
        if dt == 0.0 {
            return None;
        }
        result /= dt;
    }
    Some(result)
}

/// Least squares slope (per second) and the intercept at `intercept_time`.
fn linear_regression(s: &[Sample], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut sum_y, mut sum_xy, mut sum_x2) = (
        0.0,
        KahanSum::default(),
        KahanSum::default(),
        KahanSum::default(),
        KahanSum::default(),
    );
    let mut const_y = true;
    let first_y = s[0].v;
    for p in s {
        if p.v != first_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_time) as f64 / 1000.0;
        sum_x.add(x);
        sum_y.add(p.v);
        sum_xy.add(x * p.v);
        sum_x2.add(x * x);
    }
    if const_y {
        return (0.0, first_y);
    }
    let (sx, sy, sxy, sx2) = (sum_x.value(), sum_y.value(), sum_xy.value(), sum_x2.value());
    let cov_xy = sxy - sx * sy / n;
    let var_x = sx2 - sx * sx / n;
    let slope = cov_xy / var_x;
    let intercept = sy / n - slope * sx / n;
    (slope, intercept)
}

fn over_time(which: &str, s: &[Sample]) -> Option<f64> {
    Some(match which {
        "count_over_time" => s.len() as f64,
        "present_over_time" => 1.0,
        "last_over_time" => s[s.len() - 1].v,
        "first_over_time" => s[0].v,
        "sum_over_time" => {
            let mut k = KahanSum::default();
            s.iter().for_each(|p| k.add(p.v));
            k.value()
        }
        "avg_over_time" => {
            let mut k = KahanSum::default();
            s.iter().for_each(|p| k.add(p.v));
            let sum = k.value();
            if sum.is_finite() || s.iter().any(|p| !p.v.is_finite()) {
                sum / s.len() as f64
            } else {
                // The plain sum overflowed: an incremental mean stays finite.
                let mut mean = 0.0;
                for (i, p) in s.iter().enumerate() {
                    mean += p.v / (i + 1) as f64 - mean / (i + 1) as f64;
                }
                mean
            }
        }
        "min_over_time" => s
            .iter()
            .fold(f64::NAN, |m, p| if m.is_nan() || p.v < m { p.v } else { m }),
        "max_over_time" => s
            .iter()
            .fold(f64::NAN, |m, p| if m.is_nan() || p.v > m { p.v } else { m }),
        "stddev_over_time" | "stdvar_over_time" => {
            let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
            for p in s {
                count += 1.0;
                let delta = p.v - mean;
                mean += delta / count;
                m2 += delta * (p.v - mean);
            }
            let var = m2 / count;
            if which == "stddev_over_time" {
                var.sqrt()
            } else {
                var
            }
        }
        "mad_over_time" => {
            // A NaN makes the deviation NaN rather than being sorted away.
            if s.iter().any(|p| p.v.is_nan()) {
                return Some(f64::NAN);
            }
            let mut vs: Vec<f64> = s.iter().map(|p| p.v).collect();
            let median = quantile(0.5, &mut vs);
            let mut dev: Vec<f64> = s.iter().map(|p| (p.v - median).abs()).collect();
            quantile(0.5, &mut dev)
        }
        _ => return None,
    })
}

fn double_exponential_smoothing(s: &[Sample], sf: f64, tf: f64) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, s[0].v);
    let mut b = s[1].v - s[0].v;
    for (i, p) in s.iter().enumerate().skip(1) {
        let x = sf * p.v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

fn date_part(part: &str, seconds: f64) -> Option<f64> {
    if !seconds.is_finite() {
        return Some(f64::NAN);
    }
    let secs = seconds.floor() as i64;
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Some(match part {
        "minute" => ((of_day / 60) % 60) as f64,
        "hour" => (of_day / 3600) as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_month" => d as f64,
        "day_of_year" => {
            let mut n = d;
            for month in 1..m {
                n += days_in_month(y, month);
            }
            n as f64
        }
        "days_in_month" => days_in_month(y, m) as f64,
        "month" => m as f64,
        "year" => y as f64,
        _ => return None,
    })
}

/// Warns that a range query's sort is undone (results are ordered by labels).
fn sort_in_range_warning(ev: &mut Evaluator, pos: Option<Pos>) {
    if ev.query_step != 0 {
        ev.annotate(Annotation::warning(
            "sort is ineffective for range queries since results are always ordered by labels",
            pos,
        ));
    }
}

pub(crate) fn invalid_quantile_warning(ev: &mut Evaluator, q: f64, pos: Option<Pos>) {
    if q.is_nan() || !(0.0..=1.0).contains(&q) {
        ev.annotate(Annotation::warning(
            format!(
                "quantile value should be between 0 and 1, got {}",
                go_float(q)
            ),
            pos,
        ));
    }
}

/// Something `histogram_quantile` had to say about its buckets.
enum BucketNote {
    BadLe { metric: String, le: String },
    ForcedMonotonic { metric: String },
}

/// `histogram_quantile` over classic buckets (`le` labels), per step and group.
fn histogram_quantile(
    q: &[f64],
    series: Vec<StepSeries>,
    steps: usize,
) -> (Vec<StepSeries>, Vec<BucketNote>) {
    per_bucket_group(series, steps, |step, buckets| {
        bucket_quantile(q[step], buckets)
    })
}

/// Reports what the bucket functions had to say.
fn note_buckets(ev: &mut Evaluator, notes: Vec<BucketNote>, at: Option<Pos>) {
    for note in notes {
        let annotation = match note {
            BucketNote::BadLe { metric, le } => Annotation::warning(
                format!(
                    "bucket label \"le\" is missing or has a malformed value of {le:?} for metric name {metric:?}"
                ),
                at,
            ),
            BucketNote::ForcedMonotonic { metric } => Annotation::info(
                format!(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {metric:?}"
                ),
                at,
            ),
        };
        ev.annotate(annotation);
    }
}

/// Groups classic bucket series (by their labels without `le`; the metric
/// name keeps two histograms apart, and is dropped from the result, so two
/// with otherwise equal labels collide as in Prometheus) and computes `f` over
/// each group's (upper bound, cumulative count) pairs per step.
fn per_bucket_group(
    series: Vec<StepSeries>,
    steps: usize,
    f: impl Fn(usize, &mut [(f64, f64)]) -> (f64, bool),
) -> (Vec<StepSeries>, Vec<BucketNote>) {
    use rustc_hash::FxHashMap as HashMap;
    let mut notes = Vec::new();
    let mut groups: HashMap<Labels, Vec<(f64, usize)>> = HashMap::default();
    let mut order = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let le_text = s.labels.get("le");
        let Some(le) = le_text.and_then(parse_go_float) else {
            notes.push(BucketNote::BadLe {
                metric: s.labels.get(METRIC_NAME).unwrap_or("").to_string(),
                le: le_text.unwrap_or("").to_string(),
            });
            continue;
        };
        let key = s.labels.keep(&["le".to_string()], false);
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push((le, i));
    }
    let out = order
        .into_iter()
        .map(|labels| {
            let members = &groups[&labels];
            let mut forced = false;
            let values = (0..steps)
                .map(|step| {
                    let mut buckets: Vec<(f64, f64)> = members
                        .iter()
                        .filter_map(|&(le, i)| series[i].values[step].map(|c| (le, c)))
                        .collect();
                    (!buckets.is_empty()).then(|| {
                        let (v, fixed) = f(step, &mut buckets);
                        forced |= fixed;
                        v
                    })
                })
                .collect();
            let labels = labels.without_name();
            if forced {
                let first = members[0].1;
                notes.push(BucketNote::ForcedMonotonic {
                    metric: series[first]
                        .labels
                        .get(METRIC_NAME)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            StepSeries { labels, values }
        })
        .collect();
    (out, notes)
}

/// The fraction of a classic histogram's observations in `[lower, upper]`,
/// interpolating linearly inside a bucket. A bucket with an infinite side
/// cannot be interpolated: it counts in full when the range reaches that
/// infinity, else not at all. The first bucket starts at 0 when its bound is
/// positive, at -Inf otherwise.
fn bucket_fraction(lower: f64, upper: f64, buckets: &mut [(f64, f64)]) -> (f64, bool) {
    if lower.is_nan() || upper.is_nan() {
        return (f64::NAN, false);
    }
    let Some((merged, forced)) = monotonic_buckets(buckets) else {
        return (f64::NAN, false);
    };
    let total = merged[merged.len() - 1].1;
    if total == 0.0 {
        return (f64::NAN, forced);
    }
    if lower >= upper {
        return (0.0, forced);
    }
    let mut inside = 0.0;
    let (mut below, mut prev_count) = (
        if merged[0].0 > 0.0 {
            0.0
        } else {
            f64::NEG_INFINITY
        },
        0.0,
    );
    for &(le, cum) in &merged {
        let count = cum - prev_count;
        let (from, to) = (lower.max(below), upper.min(le));
        if to > from {
            if below.is_infinite() || le.is_infinite() {
                let reaches = (below.is_infinite() && lower == f64::NEG_INFINITY)
                    || (le.is_infinite() && upper == f64::INFINITY);
                if reaches {
                    inside += count;
                }
            } else {
                inside += count * (to - from) / (le - below);
            }
        }
        below = le;
        prev_count = cum;
    }
    (inside / total, forced)
}

/// A quantile as Prometheus writes it into a label: OpenMetrics' canonical
/// float, so whole numbers keep a `.0` (`0.0`, `1.0`, `0.25`).
fn quantile_label(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if f == f.trunc() && f.abs() < 1e15 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Prometheus's `BucketQuantile` over (upper bound, cumulative count) pairs;
/// also whether decreasing counts had to be raised to make them monotonic.
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    let Some((merged, forced)) = monotonic_buckets(buckets) else {
        return (f64::NAN, false);
    };
    (bucket_rank(q, &merged), forced)
}

/// The buckets sorted by bound with equal bounds merged and counts made
/// monotonic (Prometheus's rules for both bucket functions), and whether a
/// real decrease had to be raised; `None` without a `+Inf` bucket.
fn monotonic_buckets(buckets: &mut [(f64, f64)]) -> Option<(Vec<(f64, f64)>, bool)> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return None;
    }
    // Merge buckets with the same bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(le, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    // Counts must not decrease. Differences within floating-point noise (a
    // relative 1e-12) are smoothed either way; real decreases are raised and
    // reported.
    let mut forced = false;
    let mut prev = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        let cur = b.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            b.1 = prev;
            continue;
        }
        if cur < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    Some((merged, forced))
}

/// Prometheus's `almost.Equal`: relative difference below `epsilon`, NaN
/// equal to NaN, values near zero compared on the scale of the smallest normal.
pub fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if (a.is_nan() && b.is_nan()) || a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// The quantile's value from monotonic merged buckets, interpolating linearly.
fn bucket_rank(q: f64, merged: &[(f64, f64)]) -> f64 {
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 || observations.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1]
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(merged.len() - 1);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

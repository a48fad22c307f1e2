//! A runner for Prometheus's PromQL test scripts (`load`, `clear`, `eval
//! instant`, `eval range`, `expect` lines), against Chronicle's engine over a
//! real storage shard. Native histogram cases are skipped and counted: those
//! whose expected results hold `{{...}}`, and those whose selectors select a
//! series that was loaded with native histogram samples.

use chronicle_engine::plan::{Plan, Selector};
use chronicle_engine::value::{Labels, QueryValue, Sample};
use chronicle_engine::{evaluate, promql, Annotation, EngineError, Query, QueryLimits, Severity};
use chronicle_storage::model::STALE_NAN_BITS;
use chronicle_storage::{Label, Point, Shard, ShardConfig};

/// Outcome counts of one script.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// `line: query: why` for each failure.
    pub failures: Vec<String>,
}

/// Prometheus durations: `1h30m`, `10s53ms`, `5m`, `0`, `1d`, `1w`, `1y`.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total += n * factor;
    }
    Some(if negative { -total } else { total })
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// One expanded value of a series description.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Point_ {
    Value(f64),
    Missing,
    Stale,
}

/// `1+2x3`, `_x4`, `stale`, `5`; None for what this runner cannot read.
fn expand(token: &str) -> Option<Vec<Point_>> {
    if token == "_" {
        return Some(vec![Point_::Missing]);
    }
    if token == "stale" {
        return Some(vec![Point_::Stale]);
    }
    if let Some(n) = token.strip_prefix("_x") {
        return Some(vec![Point_::Missing; n.parse().ok()?]);
    }
    if let Some(v) = parse_number(token) {
        return Some(vec![Point_::Value(v)]);
    }
    let (base, times) = token.rsplit_once('x')?;
    let times: usize = times.parse().ok()?;
    // `a+b`, `a-b` or `a` (repeat a).
    let split = base
        .char_indices()
        .skip(1)
        .find(|&(i, c)| (c == '+' || c == '-') && !base[..i].ends_with(['e', 'E']))
        .map(|(i, _)| i);
    let (start, step) = match split {
        Some(i) => {
            let start = parse_number(&base[..i])?;
            let step = parse_number(&base[i + 1..])?;
            (start, if &base[i..=i] == "-" { -step } else { step })
        }
        None => (parse_number(base)?, 0.0),
    };
    Some(
        (0..=times)
            .map(|k| Point_::Value(start + step * k as f64))
            .collect(),
    )
}

/// A series description: labels and expanded points. None for histograms.
fn parse_series(line: &str) -> Result<Option<(Labels, Vec<Point_>)>, String> {
    let line = line.trim();
    let (labels, rest) = parse_labels(line)?;
    if rest.contains("{{") {
        return Ok(None);
    }
    let mut points = Vec::new();
    for token in rest.split_whitespace() {
        points.extend(expand(token).ok_or_else(|| format!("cannot read value {token:?}"))?);
    }
    Ok(Some((labels, points)))
}

/// `name{a="b", c='d'}` → labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let name_len = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    let mut pairs = Vec::new();
    if name_len > 0 {
        pairs.push(("__name__".to_string(), s[..name_len].to_string()));
    }
    let mut rest = &s[name_len..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            while chars
                .peek()
                .is_some_and(|(_, c)| c.is_whitespace() || *c == ',')
            {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = *i + 1;
                    break;
                }
                None => return Err("unterminated labels".into()),
                _ => {}
            }
            // A name, possibly quoted.
            let mut name = String::new();
            if chars.peek().is_some_and(|(_, c)| *c == '"') {
                chars.next();
                for (_, c) in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    name.push(c);
                }
            } else {
                while let Some((_, c)) = chars.peek() {
                    if c.is_alphanumeric() || *c == '_' || *c == '.' {
                        name.push(*c);
                        chars.next();
                    } else {
                        break;
                    }
                }
            }
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('=') {
                // A bare quoted name is the metric name (`{"metric"}`).
                if !name.is_empty() {
                    pairs.push(("__name__".into(), name));
                    continue;
                }
                return Err(format!("expected = after label {name:?}"));
            }
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
                chars.next();
            }
            let quote = match chars.next() {
                Some((_, q @ ('"' | '\'' | '`'))) => q,
                _ => return Err("expected a quoted label value".into()),
            };
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                if escaped {
                    value.push(match c {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                    escaped = false;
                } else if c == '\\' && quote != '`' {
                    escaped = true;
                } else if c == quote {
                    break;
                } else {
                    value.push(c);
                }
            }
            pairs.push((name, value));
        }
        rest = &inner[end..];
    }
    Ok((Labels::new(pairs), rest))
}

enum Expect {
    Fail(Option<Matcher>),
    NoInfo,
    NoWarn,
    Ordered,
    Info(Option<Matcher>),
    Warn(Option<Matcher>),
    String(String),
    RangeVector { start: i64, end: i64, step: i64 },
}

enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

struct Eval {
    line: usize,
    query: String,
    start: i64,
    end: i64,
    step: i64,
    range: bool,
    expects: Vec<Expect>,
    /// Expected series (or a scalar as unnamed single value).
    results: Vec<(Labels, Vec<Point_>)>,
    scalar: Option<f64>,
    skip: bool,
}

/// Runs one script and counts its evals, the samples of each `load` left in
/// the shard's head as written.
pub fn run_script(text: &str) -> Tally {
    run_script_stored(text, false)
}

/// [`run_script`]; with `flushed`, each `load` is cut into chunks before the
/// evals that follow (reads then decode chunks, and instant selectors take
/// the newest flushed sample the shard keeps).
pub fn run_script_stored(text: &str, flushed: bool) -> Tally {
    let mut tally = Tally::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut dir = tempfile::tempdir().expect("temp dir");
    let mut shard = open_shard(dir.path());
    // Series that had native histogram samples in the current load: a case
    // that selects one reads native histograms and is skipped.
    let mut histogram_series: Vec<Labels> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let line_no = i + 1;
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The block that follows a command: up to a blank line or the next command.
        let mut block = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() && !is_command(lines[i]) {
            if !lines[i].trim().starts_with('#') {
                block.push(lines[i].trim());
            }
            i += 1;
        }
        if line == "clear" {
            drop(shard);
            dir = tempfile::tempdir().expect("temp dir");
            shard = open_shard(dir.path());
            histogram_series.clear();
            continue;
        }
        if let Some(rest) = line.strip_prefix("load") {
            // `load <interval>` or `load_with_nhcb <interval>`: the float
            // buckets are loaded; the native-histogram copy (the `_bucket`
            // series' base name, without `le`) is not made, and a query that
            // selects it is skipped like one selecting `{{...}}` samples.
            let nhcb = rest.starts_with("_with_nhcb");
            let Some(interval) = rest.split_whitespace().last().and_then(parse_duration_ms) else {
                tally
                    .failures
                    .push(format!("{line_no}: cannot read {line:?}"));
                continue;
            };
            let mut points = Vec::new();
            for def in &block {
                match parse_series(def) {
                    Ok(Some((labels, values))) => {
                        if nhcb {
                            if let Some(native) = nhcb_copy(&labels) {
                                histogram_series.push(native);
                            }
                        }
                        for (k, p) in values.iter().enumerate() {
                            let v = match p {
                                Point_::Value(v) => *v,
                                Point_::Stale => f64::from_bits(STALE_NAN_BITS),
                                Point_::Missing => continue,
                            };
                            points.push(to_point(&labels, k as i64 * interval, v));
                        }
                    }
                    Ok(None) => {
                        if let Ok((labels, _)) = parse_labels(def) {
                            histogram_series.push(labels);
                        }
                    }
                    Err(e) => tally.failures.push(format!("{line_no}: load: {e}")),
                }
            }
            if let Err(e) = shard.write_batch(&points) {
                tally.failures.push(format!("{line_no}: load: {e}"));
            }
            if flushed {
                if let Err(e) = shard.flush() {
                    tally.failures.push(format!("{line_no}: flush: {e}"));
                }
            }
            continue;
        }
        if line.starts_with("eval") {
            match parse_eval(line, line_no, &block) {
                Err(e) => {
                    tally.failed += 1;
                    tally
                        .failures
                        .push(format!("{line_no}: {line}: cannot read: {e}"));
                }
                Ok(mut eval) => {
                    if promql::parse(&eval.query)
                        .is_ok_and(|plan| selects_any(&plan, &histogram_series))
                    {
                        eval.skip = true;
                    }
                    if eval.skip {
                        tally.skipped += 1;
                        continue;
                    }
                    match run_eval(&shard, &eval) {
                        Ok(()) => tally.passed += 1,
                        Err(why) => {
                            tally.failed += 1;
                            tally
                                .failures
                                .push(format!("{}: {}: {why}", eval.line, eval.query));
                        }
                    }
                }
            }
            continue;
        }
        tally
            .failures
            .push(format!("{line_no}: unknown command {line:?}"));
    }
    tally
}

fn is_command(line: &str) -> bool {
    ["load", "clear", "eval"]
        .iter()
        .any(|c| line.starts_with(c))
}

fn open_shard(path: &std::path::Path) -> Shard {
    Shard::open(
        path,
        ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        },
    )
    .expect("open shard")
}

fn to_point(labels: &Labels, t_ms: i64, v: f64) -> Point {
    let metric = labels.get("__name__").unwrap_or("").to_string();
    let others = labels
        .iter()
        .filter(|(n, _)| *n != "__name__")
        .map(|(n, v)| Label::new(n, v))
        .collect();
    Point::new(metric, others, v, t_ms * 1_000_000)
}

fn parse_eval(line: &str, line_no: usize, block: &[&str]) -> Result<Eval, String> {
    let (command, rest) = line.split_once(' ').ok_or("empty eval")?;
    let mut expects = Vec::new();
    match command {
        "eval" => {}
        "eval_fail" => expects.push(Expect::Fail(None)),
        "eval_ordered" => expects.push(Expect::Ordered),
        "eval_warn" => expects.push(Expect::Warn(None)),
        "eval_info" => expects.push(Expect::Info(None)),
        other => return Err(format!("unknown command {other}")),
    }
    let words: Vec<&str> = rest.splitn(3, ' ').collect();
    let (start, end, step, range, query) = match words.as_slice() {
        ["instant", "at", tail] => {
            let (time, query) = tail.split_once(' ').ok_or("no query")?;
            let t = parse_duration_ms(time).ok_or(format!("bad time {time}"))?;
            (t, t, 1, false, query.to_string())
        }
        ["range", "from", tail] => {
            let parts: Vec<&str> = tail.splitn(6, ' ').collect();
            if parts.len() < 6 || parts[1] != "to" || parts[3] != "step" {
                return Err("bad range eval".into());
            }
            let start = parse_duration_ms(parts[0]).ok_or("bad start")?;
            let end = parse_duration_ms(parts[2]).ok_or("bad end")?;
            let step = parse_duration_ms(parts[4]).ok_or("bad step")?;
            (start, end, step, true, parts[5].to_string())
        }
        _ => return Err("expected `instant at` or `range from`".into()),
    };
    let mut results = Vec::new();
    let mut scalar = None;
    let mut skip = false;
    for def in block {
        if let Some(e) = def.strip_prefix("expect ") {
            expects.push(parse_expect(e)?);
            continue;
        }
        if def.contains("{{") {
            skip = true;
            continue;
        }
        if let Some(v) = parse_number(def) {
            scalar = Some(v);
            continue;
        }
        match parse_series(def)? {
            Some(s) => results.push(s),
            None => skip = true,
        }
    }
    Ok(Eval {
        line: line_no,
        query,
        start,
        end,
        step,
        range,
        expects,
        results,
        scalar,
        skip,
    })
}

fn parse_expect(e: &str) -> Result<Expect, String> {
    let (kind, rest) = e.split_once(' ').unwrap_or((e, ""));
    let matcher = |rest: &str| -> Result<Option<Matcher>, String> {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(None);
        }
        if let Some(m) = rest.strip_prefix("msg:") {
            return Ok(Some(Matcher::Exact(unquote(m.trim()))));
        }
        if let Some(r) = rest.strip_prefix("regex:") {
            let re = regex::Regex::new(&unquote(r.trim())).map_err(|e| e.to_string())?;
            return Ok(Some(Matcher::Regex(re)));
        }
        Err(format!("unknown expectation {rest:?}"))
    };
    Ok(match kind {
        "fail" => Expect::Fail(matcher(rest)?),
        "ordered" => Expect::Ordered,
        "info" => Expect::Info(matcher(rest)?),
        "warn" => Expect::Warn(matcher(rest)?),
        "no_info" => Expect::NoInfo,
        "no_warn" => Expect::NoWarn,
        "string" => Expect::String(unquote(rest.trim())),
        "range" => {
            // `range vector from <a> to <b> step <c>`
            let w: Vec<&str> = rest.split_whitespace().collect();
            if w.len() != 7 || w[0] != "vector" || w[1] != "from" || w[3] != "to" || w[5] != "step"
            {
                return Err(format!("bad range vector expectation {rest:?}"));
            }
            Expect::RangeVector {
                start: parse_duration_ms(w[2]).ok_or("bad start")?,
                end: parse_duration_ms(w[4]).ok_or("bad end")?,
                step: parse_duration_ms(w[6]).ok_or("bad step")?,
            }
        }
        other => return Err(format!("unknown expectation {other:?}")),
    })
}

impl Matcher {
    fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Exact(want) => want == text,
            Matcher::Regex(re) => re.is_match(text),
        }
    }
}

/// The `expect info|warn|no_info|no_warn` rules of FORMAT.md: every expect line
/// matches at least one annotation of its kind; when a kind has expect lines,
/// every annotation of that kind matches one of them; `no_*` wants none.
fn check_annotations(eval: &Eval, annotations: &[Annotation]) -> Result<(), String> {
    for severity in [Severity::Warning, Severity::Info] {
        let got: Vec<&str> = annotations
            .iter()
            .filter(|a| a.severity == severity)
            .map(|a| a.message.as_str())
            .collect();
        let (word, forbidden) = match severity {
            Severity::Warning => (
                "warn",
                eval.expects.iter().any(|e| matches!(e, Expect::NoWarn)),
            ),
            Severity::Info => (
                "info",
                eval.expects.iter().any(|e| matches!(e, Expect::NoInfo)),
            ),
        };
        if forbidden && !got.is_empty() {
            return Err(format!("expected no {word} annotation, got {got:?}"));
        }
        let lines: Vec<Option<&Matcher>> = eval
            .expects
            .iter()
            .filter_map(|e| match (e, severity) {
                (Expect::Warn(m), Severity::Warning) | (Expect::Info(m), Severity::Info) => {
                    Some(m.as_ref())
                }
                _ => None,
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        let fits = |m: Option<&Matcher>, text: &str| m.is_none_or(|m| m.matches(text));
        for m in &lines {
            if !got.iter().any(|text| fits(*m, text)) {
                return Err(format!("expected a {word} annotation, got {got:?}"));
            }
        }
        if let Some(extra) = got
            .iter()
            .find(|text| !lines.iter().any(|m| fits(*m, text)))
        {
            return Err(format!("unexpected {word} annotation {extra:?}"));
        }
    }
    Ok(())
}

/// Whether `plan` selects any of `series` (label sets with `__name__`).
/// The labels of the native histogram `load_with_nhcb` makes of a classic
/// bucket series: the metric without `_bucket`, the labels without `le`.
fn nhcb_copy(labels: &Labels) -> Option<Labels> {
    let base = labels.get("__name__")?.strip_suffix("_bucket")?.to_string();
    Some(Labels::new(
        labels
            .iter()
            .filter(|(n, _)| *n != "le" && *n != "__name__")
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .chain([("__name__".to_string(), base)])
            .collect(),
    ))
}

fn selects_any(plan: &Plan, series: &[Labels]) -> bool {
    let matches = |sel: &Selector| {
        series.iter().any(|labels| {
            sel.matcher_sets.iter().any(|set| {
                set.iter()
                    .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
            })
        })
    };
    match plan {
        Plan::Vector(sel) | Plan::Matrix { selector: sel, .. } => matches(sel),
        Plan::Subquery { expr, .. } | Plan::Negate(expr) => selects_any(expr, series),
        Plan::Call { args, .. } => args.iter().any(|a| selects_any(a, series)),
        Plan::Aggregate { expr, param, .. } => {
            selects_any(expr, series) || param.as_ref().is_some_and(|p| selects_any(p, series))
        }
        Plan::Binary { lhs, rhs, .. } => selects_any(lhs, series) || selects_any(rhs, series),
        Plan::Number(_) | Plan::String(_) => false,
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && (s.starts_with('"') && s.ends_with('"') || s.starts_with('`') && s.ends_with('`'))
    {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// Prometheus's tolerance for float comparisons in these scripts.
fn almost_equal(a: f64, b: f64) -> bool {
    chronicle_engine::almost_equal(a, b, 1e-6)
}

fn run_eval(shard: &Shard, eval: &Eval) -> Result<(), String> {
    let expect_fail = eval.expects.iter().find_map(|e| match e {
        Expect::Fail(m) => Some(m),
        _ => None,
    });
    let result = promql::parse(&eval.query).and_then(|plan| {
        let query = if eval.range {
            Query::range(plan, eval.start, eval.end, eval.step)
        } else {
            Query::instant(plan, eval.start)
        };
        evaluate(shard, &query, &QueryLimits::default())
    });
    if let Some(matcher) = expect_fail {
        return match result {
            Ok(_) => Err("expected an error, got a result".into()),
            Err(e) => {
                let msg = match &e {
                    EngineError::Parse(m) | EngineError::Invalid(m) | EngineError::Execution(m) => {
                        m.clone()
                    }
                    other => other.to_string(),
                };
                match matcher {
                    None => Ok(()),
                    Some(Matcher::Exact(want)) if *want == msg => Ok(()),
                    Some(Matcher::Regex(re)) if re.is_match(&msg) => Ok(()),
                    Some(_) => Err(format!("error {msg:?} is not the expected one")),
                }
            }
        };
    }
    let answer = result.map_err(|e| format!("unexpected error: {e}"))?;
    check_annotations(eval, &answer.annotations)?;
    let value = answer.value;
    let ordered = eval.expects.iter().any(|e| matches!(e, Expect::Ordered));
    if let Some(want) = eval.expects.iter().find_map(|e| match e {
        Expect::String(s) => Some(s),
        _ => None,
    }) {
        return match value {
            QueryValue::String(s) if s == *want => Ok(()),
            other => Err(format!("expected string {want:?}, got {other:?}")),
        };
    }
    let range_vector = eval.expects.iter().find_map(|e| match e {
        Expect::RangeVector { start, end, step } => Some((*start, *end, *step)),
        _ => None,
    });
    match value {
        QueryValue::Scalar(s) => match eval.scalar {
            Some(want) if almost_equal(want, s.v) => Ok(()),
            Some(want) => Err(format!("expected scalar {want}, got {}", s.v)),
            None => Err(format!("expected a vector, got scalar {}", s.v)),
        },
        QueryValue::String(s) => Err(format!("unexpected string {s:?}")),
        QueryValue::Vector(got) => {
            if eval.range {
                return Err("a range query returned a vector".into());
            }
            let want: Vec<(Labels, f64)> = eval
                .results
                .iter()
                .filter_map(|(l, p)| match p.first() {
                    Some(Point_::Value(v)) => Some((l.clone(), *v)),
                    _ => None,
                })
                .collect();
            if let Some(v) = eval.scalar {
                return Err(format!(
                    "expected scalar {v}, got a vector of {}",
                    got.len()
                ));
            }
            compare_vectors(&want, &got, ordered)
        }
        QueryValue::Matrix(got) => {
            let (start, step) = match range_vector {
                Some((s, _, st)) => (s, st),
                None => (eval.start, eval.step),
            };
            let want: Vec<(Labels, Vec<Sample>)> = eval
                .results
                .iter()
                .map(|(l, points)| {
                    let samples = points
                        .iter()
                        .enumerate()
                        .filter_map(|(k, p)| match p {
                            Point_::Value(v) => Some(Sample {
                                t: start + k as i64 * step,
                                v: *v,
                            }),
                            _ => None,
                        })
                        .collect();
                    (l.clone(), samples)
                })
                .filter(|(_, s): &(Labels, Vec<Sample>)| !s.is_empty())
                .collect();
            compare_matrices(&want, &got)
        }
    }
}

fn compare_vectors(
    want: &[(Labels, f64)],
    got: &[(Labels, Sample)],
    ordered: bool,
) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            want.len(),
            got.len(),
            got.iter()
                .map(|(l, s)| format!("{l} {}", s.v))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (i, (labels, v)) in want.iter().enumerate() {
        let found = if ordered {
            (got[i].0 == *labels).then_some(&got[i].1)
        } else {
            got.iter().find(|(l, _)| l == labels).map(|(_, s)| s)
        };
        match found {
            None if ordered => {
                return Err(format!(
                    "expected {labels} at position {i}, got {}",
                    got[i].0
                ))
            }
            None => return Err(format!("missing series {labels}")),
            Some(s) if !almost_equal(*v, s.v) => {
                return Err(format!("{labels}: expected {v}, got {}", s.v))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn compare_matrices(
    want: &[(Labels, Vec<Sample>)],
    got: &[chronicle_engine::RangeSeries],
) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            want.len(),
            got.len(),
            got.iter()
                .map(|s| s.labels.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (labels, samples) in want {
        let Some(series) = got.iter().find(|s| s.labels == *labels) else {
            return Err(format!("missing series {labels}"));
        };
        if series.samples.len() != samples.len() {
            return Err(format!(
                "{labels}: expected {} samples, got {}: {:?}",
                samples.len(),
                series.samples.len(),
                series.samples
            ));
        }
        for (w, g) in samples.iter().zip(&series.samples) {
            if w.t != g.t || !almost_equal(w.v, g.v) {
                return Err(format!("{labels}: expected {w:?}, got {g:?}"));
            }
        }
    }
    Ok(())
}

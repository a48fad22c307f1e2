//! `bench storage --dataset FILE`: samples from a real capture instead of the
//! generator the codec was tuned on.
//!
//! Reads `promtool tsdb dump` output (`{__name__="m", a="b"} value timestamp_ms`,
//! what scripts/record-capture writes) and the text exposition / OpenMetrics
//! form with timestamps (`m{a="b"} value timestamp`); `#` lines are skipped.
//! An integer timestamp below 10^11 is seconds, a larger one milliseconds
//! (Prometheus); one with a fraction or exponent is seconds (OpenMetrics).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use chronicle_storage::{Label, Point};

/// The capture: each series once, and every sample as (series, ns, value) in
/// time order (as a scraper would write them).
pub struct Dataset {
    pub series: Vec<(String, Vec<Label>)>,
    pub samples: Vec<(u32, i64, f64)>,
}

impl Dataset {
    pub fn load(path: &Path) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut series = Vec::new();
        let mut samples = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}: line {}: {e}", path.display(), n + 1))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, metric, labels, value, t) =
                parse_line(line).map_err(|e| format!("{}: line {}: {e}", path.display(), n + 1))?;
            let id = match index.get(&key) {
                Some(id) => *id,
                None => {
                    let id = u32::try_from(series.len()).map_err(|_| "too many series")?;
                    index.insert(key, id);
                    series.push((metric, labels));
                    id
                }
            };
            samples.push((id, t, value));
        }
        if samples.is_empty() {
            return Err(format!("{}: no samples", path.display()));
        }
        // Stable: a series' samples stay in their order within one timestamp.
        samples.sort_by_key(|s| s.1);
        Ok(Self { series, samples })
    }

    /// The samples from `from`, `n` at most, as points.
    pub fn points(&self, from: usize, n: usize) -> Vec<Point> {
        self.samples[from..(from + n).min(self.samples.len())]
            .iter()
            .map(|&(id, t, v)| {
                let (metric, labels) = &self.series[id as usize];
                Point::new(metric.clone(), labels.clone(), v, t)
            })
            .collect()
    }
}

/// One sample line: its series key (the label text as written), metric,
/// labels (sorted, without `__name__`), value and time in nanoseconds.
type Parsed = (String, String, Vec<Label>, f64, i64);

fn parse_line(line: &str) -> Result<Parsed, String> {
    let (name, rest) = match line.find('{') {
        Some(0) => (None, line),
        Some(i) => (Some(&line[..i]), &line[i..]),
        None => {
            let i = line.find(' ').ok_or("no value")?;
            (Some(&line[..i]), &line[i..])
        }
    };
    let (mut labels, rest) = if rest.starts_with('{') {
        parse_labels(rest)?
    } else {
        (Vec::new(), rest)
    };
    let key = line[..line.len() - rest.len()].to_string();
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    let t = parse_time(
        fields
            .next()
            .ok_or("no timestamp (a capture needs one per sample)")?,
    )?;
    let metric = match name {
        Some(n) => n.trim().to_string(),
        None => {
            let at = labels
                .iter()
                .position(|l| l.name == "__name__")
                .ok_or("no __name__ label")?;
            labels.remove(at).value
        }
    };
    labels.retain(|l| l.name != "__name__");
    labels.sort();
    Ok((key, metric, labels, value, t))
}

/// `{a="b", c="d"}` and what follows it.
fn parse_labels(text: &str) -> Result<(Vec<Label>, &str), String> {
    let mut labels = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 1;
    loop {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b',') {
            i += 1;
        }
        if i >= bytes.len() {
            return Err("unterminated label set".into());
        }
        if bytes[i] == b'}' {
            return Ok((labels, &text[i + 1..]));
        }
        let eq = text[i..].find('=').ok_or("a label without =")? + i;
        let name = text[i..eq].trim().to_string();
        if bytes.get(eq + 1) != Some(&b'"') {
            return Err(format!("label {name}: value not quoted"));
        }
        let mut value = String::new();
        let mut j = eq + 2;
        loop {
            match bytes.get(j) {
                None => return Err(format!("label {name}: unterminated value")),
                Some(b'"') => break,
                Some(b'\\') => {
                    match bytes.get(j + 1) {
                        Some(b'n') => value.push('\n'),
                        Some(b'"') => value.push('"'),
                        Some(b'\\') => value.push('\\'),
                        _ => return Err(format!("label {name}: bad escape")),
                    }
                    j += 2;
                }
                Some(_) => {
                    let c = text[j..].chars().next().ok_or("bad UTF-8")?;
                    value.push(c);
                    j += c.len_utf8();
                }
            }
        }
        labels.push(Label::new(name, value));
        i = j + 1;
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse()
            .map_err(|_| format!("value {text:?} is not a number")),
    }
}

fn parse_time(text: &str) -> Result<i64, String> {
    let out_of_range = || format!("timestamp {text:?} is out of range");
    // Integers exactly (f64 would round nanoseconds of today's times).
    if let Ok(t) = text.parse::<i64>() {
        let unit = if t.abs() < 100_000_000_000 {
            1_000_000_000
        } else {
            1_000_000
        };
        return t.checked_mul(unit).ok_or_else(out_of_range);
    }
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("timestamp {text:?} is not a number"))?;
    let ns = seconds * 1e9;
    if !ns.is_finite() || ns.abs() >= i64::MAX as f64 {
        return Err(out_of_range());
    }
    Ok(ns.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_promtool_dumps_and_exposition_lines() {
        let (key, metric, labels, v, t) = parse_line(
            r#"{__name__="up", instance="127.0.0.1:9090", job="a \"b\""} 1 1733370000123"#,
        )
        .unwrap();
        assert_eq!(metric, "up");
        assert_eq!(
            labels,
            vec![
                Label::new("instance", "127.0.0.1:9090"),
                Label::new("job", "a \"b\"")
            ]
        );
        assert_eq!((v, t), (1.0, 1_733_370_000_123_000_000));
        assert!(key.starts_with('{') && key.ends_with('}'));
        let (_, metric, labels, v, t) =
            parse_line(r#"node_load1{host="x"} 0.5 1733370000.5"#).unwrap();
        assert_eq!((metric.as_str(), labels.len(), v), ("node_load1", 1, 0.5));
        assert_eq!(t, 1_733_370_000_500_000_000);
        let (_, metric, labels, v, _) = parse_line("bare NaN 1733370000000").unwrap();
        assert_eq!((metric.as_str(), labels.len()), ("bare", 0));
        assert!(v.is_nan());
        for bad in [
            "{a=\"b\"} 1 2",
            "m{a=b} 1 2",
            "m 1",
            "m{a=\"b\" 1 2",
            "m x 2",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}

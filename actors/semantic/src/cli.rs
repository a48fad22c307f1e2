//! `chronicle search similar|text`: the operator's client of a node's
//! `/api/semantic/search` and `/api/semantic/text`. Prints the matches as a
//! table (or the node's JSON with `--json`) and, with `--plot out.svg` or
//! `out.png`, draws each match over the query.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::api::{Pattern, SearchAnswer, SearchRequest, SeriesRange};
use clap::{Args, Subcommand};
use serde_json::Value;

use chronicle_platform::client::{call, print_json, print_table, time_text, Call, Error, Target};

#[derive(Subcommand)]
pub enum SearchCommand {
    /// Windows shaped like a pattern: a time range of a stored series
    /// (--metric, --label, --from, --to; its own windows there are left
    /// out), values given (--values), or a saved pattern (--saved).
    Similar {
        #[command(flatten)]
        at: Target,
        #[command(flatten)]
        pattern: PatternArgs,
        #[command(flatten)]
        options: SearchArgs,
    },
    /// Windows shaped like shape words, e.g. "sudden spike followed by
    /// gradual recovery" (the words: spike, dip, sudden, gradual, increase,
    /// decrease, plateau, oscillation, level shift, recovery, followed by,
    /// then, twice).
    Text {
        #[command(flatten)]
        at: Target,
        /// The description, quoted.
        text: String,
        #[command(flatten)]
        options: SearchArgs,
    },
}

#[derive(Args)]
pub struct PatternArgs {
    /// The series whose time range is the pattern: its metric...
    #[arg(long)]
    metric: Option<String>,
    /// ...and each of its labels, `name=value` (repeat).
    #[arg(long = "label", value_parser = label_pair)]
    labels: Vec<(String, String)>,
    /// The range, as RFC 3339 (`2026-12-06T10:00:00Z`) or ms since the epoch.
    #[arg(long, value_parser = time_ms)]
    from: Option<i64>,
    /// The range's end (excluded), as --from.
    #[arg(long, value_parser = time_ms)]
    to: Option<i64>,
    /// An ad hoc pattern: 8 to 4096 values, comma-separated.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    values: Option<Vec<f64>>,
    /// A pattern saved on the node (`/api/semantic/patterns`).
    #[arg(long)]
    saved: Option<String>,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Results wanted (1 to 100).
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Only series whose metric matches this glob (`cpu_*`).
    #[arg(long = "in-metric")]
    in_metric: Option<String>,
    /// Only series with this label, `name=value` (repeat).
    #[arg(long = "in-label", value_parser = label_pair)]
    in_labels: Vec<(String, String)>,
    /// Only windows overlapping this range (RFC 3339 or ms).
    #[arg(long, value_parser = time_ms)]
    since: Option<i64>,
    /// The range's end (excluded), as --since.
    #[arg(long, value_parser = time_ms)]
    until: Option<i64>,
    /// Candidates kept while searching each graph (recall against speed).
    #[arg(long)]
    ef_search: Option<usize>,
    /// Draw each match over the query: an `.svg` or a `.png` file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn label_pair(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: a label is name=value"))?;
    Ok((k.to_string(), v.to_string()))
}

fn time_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: RFC 3339 or ms since the epoch ({e})"))?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

fn request(options: &SearchArgs) -> SearchRequest {
    SearchRequest {
        k: Some(options.k),
        metric: options.in_metric.clone(),
        labels: options.in_labels.iter().cloned().collect(),
        start: options.since,
        end: options.until,
        ef_search: options.ef_search,
        compare: options.plot.is_some(),
        ..SearchRequest::default()
    }
}

pub fn run(cmd: SearchCommand) -> Result<(), Error> {
    let (at, req, options, path, title) = match cmd {
        SearchCommand::Similar {
            at,
            pattern,
            options,
        } => {
            let mut req = request(&options);
            req.pattern = Some(pattern_of(pattern)?);
            let title = "similar windows".to_string();
            (at, req, options, "/api/semantic/search", title)
        }
        SearchCommand::Text { at, text, options } => {
            let mut req = request(&options);
            let title = format!("\"{text}\"");
            req.text = Some(text);
            (at, req, options, "/api/semantic/text", title)
        }
    };
    let body = serde_json::to_value(&req)?;
    let v = call(&at, Call::Post(&body), path)?;
    if let Some(plot) = &options.plot {
        let answer: SearchAnswer = serde_json::from_value(v.clone())?;
        write_plot(&answer, &title, plot)?;
        eprintln!("plot: {}", plot.display());
    }
    if at.json {
        return print_json(&v);
    }
    print_matches(&v);
    Ok(())
}

fn pattern_of(p: PatternArgs) -> Result<Pattern, Error> {
    let series = match (p.metric, p.from, p.to) {
        (Some(metric), Some(start), Some(end)) => Some(SeriesRange {
            metric,
            labels: p.labels.into_iter().collect::<BTreeMap<_, _>>(),
            start,
            end,
        }),
        (None, None, None) => None,
        _ => return Err("a series pattern needs --metric, --from and --to".into()),
    };
    let pattern = Pattern {
        values: p.values,
        series,
        saved: p.saved,
    };
    pattern.check()?;
    Ok(pattern)
}

fn write_plot(answer: &SearchAnswer, title: &str, path: &std::path::Path) -> Result<(), Error> {
    let svg = crate::plot::svg(answer, title);
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let bytes = if png {
        chronicle_platform::client::svg_to_png(&svg)?
    } else {
        svg.into_bytes()
    };
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

fn print_matches(v: &Value) {
    let rows: Vec<Vec<String>> = v["matches"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let labels: Vec<String> = m["labels"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            let agrees: Vec<&str> = m["agrees"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            vec![
                (i + 1).to_string(),
                format!("{:.3}", m["similarity"].as_f64().unwrap_or_default()),
                format!(
                    "{}{{{}}}",
                    m["metric"].as_str().unwrap_or_default(),
                    labels.join(",")
                ),
                time_text(&m["start"]),
                time_text(&m["end"]),
                agrees.join(" "),
            ]
        })
        .collect();
    print_table(
        &["#", "SIMILARITY", "SERIES", "FROM", "TO", "AGREES"],
        &rows,
        "no matches",
    );
    let shards = &v["shards"];
    for (key, what) in [
        ("missing", "did not answer"),
        ("rebuilding", "are still rebuilding their index"),
    ] {
        if let Some(list) = shards[key].as_array().filter(|l| !l.is_empty()) {
            eprintln!("shards {list:?} {what}: results may be incomplete");
        }
    }
}

//! `chronicle capacity ...`: the operator's client of a node's
//! `/api/capacity/*`. Forecasts print as terminal charts of history,
//! forecast and interval; `--json` prints the node's answer as it came.

use clap::Subcommand;
use serde_json::{json, Value};

use chronicle_platform::client::{
    call, print_json, print_table, time_text, with_query, Call, Error, Target,
};

#[derive(Subcommand)]
pub enum CapacityCommand {
    /// Forecast each resource (disk, memory, series, ingest_rate): a chart
    /// of its history, the forecast and its 95 % interval, the limit, and
    /// when the resource runs out.
    Forecast {
        #[command(flatten)]
        at: Target,
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
        /// How far ahead (`7d`, `12h`); default: the node's `horizon`.
        #[arg(long)]
        horizon: Option<String>,
        /// Chart width and height in characters.
        #[arg(long, default_value_t = 72, value_parser = clap::value_parser!(u16).range(20..=400))]
        width: u16,
        #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u16).range(5..=100))]
        height: u16,
    },
    /// What to change before a resource runs out: type, priority, risk, the
    /// exact change and its expected effect at the horizon.
    Recommendations {
        #[command(flatten)]
        at: Target,
    },
    /// Make a recommendation's change through the node's config API (needs
    /// an admin token when the node has --auth); prints the record to roll
    /// it back with.
    Apply {
        #[command(flatten)]
        at: Target,
        /// The recommendation's id (from `recommendations`).
        id: String,
    },
    /// Undo an applied change (once, and only while the setting still holds
    /// what was applied).
    Rollback {
        #[command(flatten)]
        at: Target,
        /// The record `apply` printed (or from `applied`).
        record: String,
    },
    /// The changes applied, newest first, by operators and auto-tuning.
    Applied {
        #[command(flatten)]
        at: Target,
    },
}

/// `1.5 GiB`, `12.0 K`: short enough for an axis.
fn amount(v: f64, unit: &str) -> String {
    if unit == "bytes" {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut x = v;
        let mut i = 0;
        while x.abs() >= 1024.0 && i + 1 < units.len() {
            x /= 1024.0;
            i += 1;
        }
        format!("{x:.1} {}", units[i])
    } else {
        let units = ["", " K", " M", " G", " T"];
        let mut x = v;
        let mut i = 0;
        while x.abs() >= 1000.0 && i + 1 < units.len() {
            x /= 1000.0;
            i += 1;
        }
        format!("{x:.1}{}", units[i])
    }
}

/// Points of a chart: `(ms, value)`.
struct Chart<'a> {
    unit: &'a str,
    history: Vec<(i64, f64)>,
    /// `(ms, mean, lower, upper)`.
    path: Vec<(i64, f64, f64, f64)>,
    limit: Option<f64>,
}

/// History `*`, forecast `o`, its interval `:`, the limit `=`; the y axis
/// labelled at the top, middle and bottom, the x axis at the start, the
/// last sample (`|`) and the horizon.
fn render(chart: &Chart<'_>, width: usize, height: usize) -> String {
    let times = chart
        .history
        .iter()
        .map(|p| p.0)
        .chain(chart.path.iter().map(|p| p.0));
    let (Some(t0), Some(t1)) = (times.clone().min(), times.max()) else {
        return "(no data)\n".into();
    };
    let values = chart
        .history
        .iter()
        .map(|p| p.1)
        .chain(chart.path.iter().flat_map(|p| [p.1, p.2, p.3]))
        .chain(chart.limit)
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return "(no data)\n".into();
    }
    if hi - lo < f64::EPSILON * hi.abs().max(1.0) {
        (lo, hi) = (lo - 1.0, hi + 1.0);
    }
    let span = (t1 - t0).max(1) as f64;
    let col = |t: i64| (((t - t0) as f64 / span) * (width - 1) as f64).round() as usize;
    let row = |v: f64| {
        let r = ((v - lo) / (hi - lo) * (height - 1) as f64).round();
        (height - 1).saturating_sub(r.clamp(0.0, (height - 1) as f64) as usize)
    };
    let mut grid = vec![vec![' '; width]; height];
    if let Some(limit) = chart.limit {
        grid[row(limit)].fill('=');
    }
    for &(t, _, lower, upper) in &chart.path {
        let c = col(t);
        for line in grid.iter_mut().take(row(lower) + 1).skip(row(upper)) {
            if line[c] == ' ' {
                line[c] = ':';
            }
        }
    }
    for &(t, mean, _, _) in &chart.path {
        grid[row(mean)][col(t)] = 'o';
    }
    for &(t, v) in &chart.history {
        grid[row(v)][col(t)] = '*';
    }
    let labels = [
        (0, amount(hi, chart.unit)),
        ((height - 1) / 2, amount((hi + lo) / 2.0, chart.unit)),
        (height - 1, amount(lo, chart.unit)),
    ];
    let pad = labels.iter().map(|l| l.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (r, line) in grid.iter().enumerate() {
        let label = labels
            .iter()
            .find(|l| l.0 == r)
            .map_or(String::new(), |l| l.1.clone());
        let line: String = line.iter().collect();
        out.push_str(&format!("{label:>pad$} |{}\n", line.trim_end()));
    }
    let mut axis = vec!['-'; width];
    let now = chart.history.last().map(|p| col(p.0));
    if let Some(c) = now {
        axis[c] = '|';
    }
    out.push_str(&format!(
        "{:>pad$} +{}\n",
        "",
        axis.iter().collect::<String>()
    ));
    let (start, end) = (time_text(&json!(t0)), time_text(&json!(t1)));
    let gap = (width + 1).saturating_sub(start.len() + end.len()).max(1);
    out.push_str(&format!("{:>pad$}  {start}{}{end}\n", "", " ".repeat(gap)));
    out
}

fn pairs(v: &Value) -> Vec<(i64, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_i64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn path(v: &Value) -> Vec<(i64, f64, f64, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some((
                        p[0].as_i64()?,
                        p[1].as_f64()?,
                        p[2].as_f64()?,
                        p[3].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn print_forecast(f: &Value, width: usize, height: usize) {
    let unit = f["unit"].as_str().unwrap_or("");
    let name = f["resource"].as_str().unwrap_or("?");
    if f["status"] != "ok" {
        let why = match f["status"].as_str() {
            Some("insufficient_history") => format!(
                "not enough history yet ({} of {} points)",
                f["points"], f["need"]
            ),
            _ => format!("no forecast: {}", f["forecast"]["error"]),
        };
        println!("{name}: {why}\n");
        return;
    }
    let body = &f["forecast"];
    let h = &body["at_horizon"];
    let num = |v: &Value| v.as_f64().map_or("-".into(), |x| amount(x, unit));
    println!(
        "{name} ({unit}): now {}, at {} {} [{} .. {}] (95 %), limit {}",
        num(&f["current"]),
        time_text(&body["horizon_ms"]),
        num(&h["mean"]),
        num(&h["lower"]),
        num(&h["upper"]),
        num(&f["limit"]),
    );
    println!(
        "  model {}, AICc {:.1}, one-step RMSE {}",
        body["model"].as_str().unwrap_or("?"),
        body["aicc"].as_f64().unwrap_or(f64::NAN),
        num(&body["rmse"])
    );
    match (
        f["exhausted_ms"].as_i64(),
        f["earliest_exhausted_ms"].as_i64(),
    ) {
        (Some(_), _) => println!(
            "  runs out at {} (upper edge: {})",
            time_text(&f["exhausted_ms"]),
            time_text(&f["earliest_exhausted_ms"])
        ),
        (None, Some(_)) => println!(
            "  expected to last the horizon; the interval's upper edge reaches the limit at {}",
            time_text(&f["earliest_exhausted_ms"])
        ),
        (None, None) if f["limit"].is_number() => println!("  lasts past the horizon"),
        _ => {}
    }
    let chart = Chart {
        unit,
        history: pairs(&body["history"]),
        path: path(&body["path"]),
        limit: f["limit"].as_f64(),
    };
    print!("{}", render(&chart, width, height));
    println!("  * history  o forecast  : 95 % interval  = limit  | last sample\n");
}

pub fn run(cmd: CapacityCommand) -> Result<(), Error> {
    match cmd {
        CapacityCommand::Forecast {
            at,
            resource,
            horizon,
            width,
            height,
        } => {
            let path = with_query(
                "/api/capacity/forecasts",
                &[
                    ("resource", resource),
                    ("horizon", horizon),
                    ("detail", Some("true".into())),
                ],
            )?;
            let answer = call(&at, Call::Get, &path)?;
            if at.json {
                return print_json(&answer);
            }
            for f in answer["forecasts"].as_array().into_iter().flatten() {
                print_forecast(f, usize::from(width), usize::from(height));
            }
        }
        CapacityCommand::Recommendations { at } => {
            let answer = call(&at, Call::Get, "/api/capacity/recommendations")?;
            if at.json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["recommendations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let c = &r["change"];
                    let e = &r["effect"];
                    let unit = if e["resource"] == "disk" || e["resource"] == "memory" {
                        "bytes"
                    } else {
                        ""
                    };
                    let num = |v: &Value| v.as_f64().map_or("-".into(), |x| amount(x, unit));
                    vec![
                        r["id"].as_str().unwrap_or("-").into(),
                        r["type"].as_str().unwrap_or("-").into(),
                        r["priority"].as_str().unwrap_or("-").into(),
                        r["risk"].as_str().unwrap_or("-").into(),
                        match (c["setting"].as_str(), c["from"].as_str(), c["to"].as_str()) {
                            (Some(s), Some(f), Some(t)) => format!("{s}: {f} -> {t}"),
                            // Not a run-time setting: the operator's change,
                            // spelled out below the table.
                            (None, Some(f), Some(t)) => format!("by hand: {f} -> {t}"),
                            _ => "by hand".into(),
                        },
                        format!(
                            "{} {} -> {}",
                            e["resource"].as_str().unwrap_or("?"),
                            num(&e["at_horizon_before"]),
                            num(&e["at_horizon_after"])
                        ),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "TYPE",
                    "PRIORITY",
                    "RISK",
                    "CHANGE",
                    "EFFECT AT HORIZON",
                ],
                &rows,
                "no recommendations: disk and memory last past the horizon, or have too little history to forecast yet (`chronicle capacity forecast` shows each one's status)",
            );
            for r in answer["recommendations"].as_array().into_iter().flatten() {
                println!(
                    "\n{}: {}",
                    r["id"].as_str().unwrap_or("-"),
                    r["description"].as_str().unwrap_or("")
                );
                println!("  how: {}", r["change"]["how"].as_str().unwrap_or("-"));
            }
            let m = &answer["measured"];
            if let (Some(chunks), Some(level), Some(size)) = (
                m["chunks"].as_u64(),
                m["compression_level"].as_i64(),
                m["max_chunk_samples"].as_u64(),
            ) {
                let trials: Vec<String> = m["levels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        format!(
                            "level {} {:.3}",
                            t["level"],
                            t["bytes_per_sample"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .chain(m["sizes"].as_array().into_iter().flatten().map(|t| {
                        format!(
                            "{} samples {:.3}",
                            t["max_chunk_samples"],
                            t["bytes_per_sample"].as_f64().unwrap_or(0.0)
                        )
                    }))
                    .collect();
                println!(
                    "\nmeasured on this node's newest {chunks} chunks (level {level}, {size} samples a chunk), bytes a sample: {}",
                    trials.join(", ")
                );
            }
        }
        CapacityCommand::Apply { at, id } => {
            let answer = call(&at, Call::Post(&json!({"id": id})), "/api/capacity/apply")?;
            if at.json {
                return print_json(&answer);
            }
            let c = &answer["change"];
            println!(
                "{} set to {} (was {}); roll back with: chronicle capacity rollback {}",
                c["name"].as_str().unwrap_or("?"),
                c["value"].as_str().unwrap_or("the file's value"),
                c["previous"].as_str().unwrap_or("the file's value"),
                answer["record"].as_str().unwrap_or("?")
            );
        }
        CapacityCommand::Rollback { at, record } => {
            let answer = call(
                &at,
                Call::Post(&json!({"id": record})),
                "/api/capacity/rollback",
            )?;
            if at.json {
                return print_json(&answer);
            }
            let c = &answer["rolled_back"];
            println!(
                "{} back to {}",
                c["name"].as_str().unwrap_or("?"),
                c["value"].as_str().unwrap_or("the file's value")
            );
        }
        CapacityCommand::Applied { at } => {
            let answer = call(&at, Call::Get, "/api/capacity/applied")?;
            if at.json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["applied"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let c = &a["change"];
                    vec![
                        a["record"].as_str().unwrap_or("-").into(),
                        time_text(&a["at_ms"]),
                        a["by"].as_str().unwrap_or("-").into(),
                        format!(
                            "{}: {} -> {}",
                            c["name"].as_str().unwrap_or("?"),
                            c["previous"].as_str().unwrap_or("(file)"),
                            c["value"].as_str().unwrap_or("(file)")
                        ),
                        if a["rolled_back"].is_object() {
                            "rolled back".into()
                        } else {
                            "in effect".into()
                        },
                    ]
                })
                .collect();
            print_table(
                &["RECORD", "AT", "BY", "CHANGE", "STATE"],
                &rows,
                "nothing applied",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_history_forecast_interval_and_limit_where_they_are() {
        let chart = Chart {
            unit: "bytes",
            history: (0..10).map(|i| (i * 1000, i as f64 * 10.0)).collect(),
            path: (10..20)
                .map(|i| {
                    (
                        i * 1000,
                        i as f64 * 10.0,
                        i as f64 * 10.0 - 20.0,
                        i as f64 * 10.0 + 20.0,
                    )
                })
                .collect(),
            limit: Some(150.0),
        };
        let text = render(&chart, 40, 12);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 14, "{text}");
        let grid: Vec<&str> = lines[..12]
            .iter()
            .map(|l| l.split_once('|').unwrap().1)
            .collect();
        // History starts bottom left; the forecast ends top right, inside
        // its interval; the limit is a full row.
        assert!(
            grid[11].starts_with('*') || grid[10].starts_with('*'),
            "{text}"
        );
        assert!(
            grid.iter()
                .any(|l| l.chars().filter(|c| *c == '=').count() >= 30),
            "{text}"
        );
        let last_o = grid
            .iter()
            .position(|l| l.trim_end().ends_with('o'))
            .unwrap();
        assert!(last_o <= 2, "{text}");
        assert!(text.contains(':'), "{text}");
        assert!(lines[0].starts_with("210.0 B"), "{text}");
        assert!(lines[12].contains('|'), "the last sample is marked: {text}");
    }

    #[test]
    fn amounts_are_short() {
        assert_eq!(amount(3.0 * 1024.0 * 1024.0 * 1024.0, "bytes"), "3.0 GiB");
        assert_eq!(amount(12_345.0, "points/s"), "12.3 K");
    }
}

//! `chronicle anomalies list|show`: the operator's client of a node's
//! `/api/anomalies` (a reader token when the node has --auth). Tables by
//! default; `--json` prints the node's answer as it came.

use std::time::Duration;

use chronicle_platform::client::{
    call, items, key_values, note_more, print_json, print_table, segment, series, since_param,
    text, time_text, with_query, Call, Error, Target,
};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum AnomaliesCommand {
    /// List the anomalies that started within --since, oldest first.
    List {
        #[command(flatten)]
        at: Target,
        /// Anomalies that started this long ago or later (e.g. `30m`, `7d`).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Only metrics matching this glob (e.g. `cpu_*`).
        #[arg(long)]
        metric: Option<String>,
        /// Only this type of anomaly.
        #[arg(long = "type", value_parser = ["spike", "dip", "level_shift", "trend", "absent"])]
        kind: Option<String>,
        /// Only anomalies still open (their episode has not ended).
        #[arg(long)]
        open: bool,
        /// Most anomalies to list (the node's default: 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Every field of one anomaly, its evidence (baseline, observed value,
    /// spread, window) included.
    Show {
        #[command(flatten)]
        at: Target,
        id: String,
    },
}

/// One anomaly, every field: the usual ones first, then any others.
pub fn anomaly_text(a: &Value) -> String {
    const ORDER: [&str; 10] = [
        "id", "type", "metric", "labels", "severity", "score", "start", "end", "source", "evidence",
    ];
    let Some(fields) = a.as_object() else {
        return format!("{}\n", text(a));
    };
    let mut keys: Vec<&str> = ORDER.to_vec();
    keys.extend(
        fields
            .keys()
            .map(String::as_str)
            .filter(|k| !ORDER.contains(k)),
    );
    let mut out = String::new();
    for key in keys {
        let v = &a[key];
        match key {
            "start" | "end" if v.is_i64() => {
                out.push_str(&format!("{key}: {} ({v})\n", time_text(v)));
            }
            // No end: the episode is still going on.
            "end" if v.is_null() => out.push_str("end: open\n"),
            _ if v.is_null() => {}
            _ => key_values(&mut out, 0, key, v),
        }
    }
    out
}

pub fn anomaly_row(a: &Value) -> Vec<String> {
    vec![
        text(&a["id"]),
        text(&a["type"]),
        text(&a["severity"]),
        a["score"]
            .as_f64()
            .map_or_else(|| "-".into(), |s| format!("{s:.2}")),
        series(&a["metric"], &a["labels"]),
        time_text(&a["start"]),
        if a["end"].is_null() {
            "open".into()
        } else {
            time_text(&a["end"])
        },
    ]
}

pub fn run(cmd: AnomaliesCommand) -> Result<(), Error> {
    match cmd {
        AnomaliesCommand::List {
            at,
            since,
            metric,
            kind,
            open,
            limit,
        } => {
            let path = with_query(
                "/api/anomalies",
                &[
                    ("since", since_param(since)),
                    ("metric", metric),
                    ("type", kind),
                    ("state", open.then(|| "open".to_string())),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            )?;
            let v = call(&at, Call::Get, &path)?;
            if at.json {
                return print_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "anomalies").iter().map(anomaly_row).collect();
            print_table(
                &["ID", "TYPE", "SEVERITY", "SCORE", "SERIES", "START", "END"],
                &rows,
                "no anomalies",
            );
            note_more(&v);
        }
        AnomaliesCommand::Show { at, id } => {
            let v = call(&at, Call::Get, &format!("/api/anomalies/{}", segment(&id)))?;
            if at.json {
                return print_json(&v);
            }
            print!("{}", anomaly_text(&v));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anomalies_show_every_field() {
        let a = json!({"id": "1-ab", "type": "spike", "metric": "cpu", "labels": {"host": "a"},
                       "severity": "high", "score": 7.5, "start": 0,
                       "evidence": {"baseline": 1.0, "observed": 9.0}, "source": "detector",
                       "extra": "kept"});
        let shown = anomaly_text(&a);
        for line in [
            "id: 1-ab",
            "labels:\n  host: a",
            "start: 1970-01-01T00:00:00Z (0)",
            "end: open",
            "evidence:\n  baseline: 1.0\n  observed: 9.0",
            "extra: kept",
        ] {
            assert!(shown.contains(line), "{line:?} in\n{shown}");
        }
    }
}

//! `chronicle remediation ...` and `chronicle anomalies ...`: operator
//! clients of a node's `/api/remediation/*` and `/api/anomalies` (reading
//! needs a reader token when the node has --auth, changing an admin one).
//! Tables by default; `--json` prints the node's answer as it came.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

#[derive(Subcommand)]
pub enum RemediationCommand {
    /// List the actions remediation may take: id, type, risk (which decides
    /// whether it needs an approval), priority and the type's parameters.
    Actions {
        #[command(flatten)]
        at: Target,
    },
    /// Create or replace an action from a JSON file (`-`: standard input),
    /// e.g. {"id": "scale-api", "name": "Scale the API", "risk": "medium",
    /// "type": "scale", "workload": {...}, "by": 1}. Prints its id and
    /// revision.
    AddAction {
        #[command(flatten)]
        at: Target,
        /// The action's JSON, or `-` for standard input.
        file: PathBuf,
    },
    /// Delete an action by id; rules naming it no longer run it.
    RmAction {
        #[command(flatten)]
        at: Target,
        id: String,
    },
    /// List the rules: which anomalies (types, metric globs, labels) make
    /// which actions run.
    Rules {
        #[command(flatten)]
        at: Target,
    },
    /// Create or replace a rule from a JSON file (`-`: standard input), e.g.
    /// {"id": "api-latency", "types": ["spike"], "metrics": ["http_*"],
    /// "actions": ["scale-api"], "cooldown": "10m"}. Prints its id and
    /// revision.
    AddRule {
        #[command(flatten)]
        at: Target,
        /// The rule's JSON, or `-` for standard input.
        file: PathBuf,
    },
    /// Delete a rule by id.
    RmRule {
        #[command(flatten)]
        at: Target,
        id: String,
    },
    /// List the actions waiting for an approval (their risk is above what
    /// runs unattended), with the anomaly behind each and when the request
    /// expires.
    Pending {
        #[command(flatten)]
        at: Target,
    },
    /// Approve a pending action by its approval id (from `pending`): it runs
    /// now unless a rate limit or circuit breaker holds it; prints the
    /// outcome.
    Approve {
        #[command(flatten)]
        at: Target,
        id: String,
    },
    /// Reject a pending action by its approval id: it does not run, and the
    /// audit trail records who said no.
    Reject {
        #[command(flatten)]
        at: Target,
        id: String,
    },
    /// Undo an executed scale or config action, by the id of its audit
    /// record (from `audit --event executed`): the workload goes back to
    /// the replica count it had, or the setting to its previous value
    /// (refused if someone changed it since). Once per record; other
    /// action types cannot be undone.
    Rollback {
        #[command(flatten)]
        at: Target,
        #[arg(value_name = "AUDIT_ID")]
        id: String,
    },
    /// The audit trail, oldest first: every evaluation, execution, queued
    /// approval, approval, rejection, rollback and outcome, and who did it.
    Audit {
        #[command(flatten)]
        at: Target,
        /// Records from this long ago on (e.g. `30m`, `1h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Only this rule's records.
        #[arg(long)]
        rule: Option<String>,
        /// Only this action's records.
        #[arg(long)]
        action: Option<String>,
        /// Only this event: evaluated, executed, queued, approved, rejected,
        /// rolled_back or outcome.
        #[arg(long)]
        event: Option<String>,
        /// Only this outcome (e.g. ok, failed, execute, await_approval,
        /// dry_run, held, rejected, recovered, not_recovered).
        #[arg(long)]
        outcome: Option<String>,
        /// Only the records about this anomaly id.
        #[arg(long)]
        anomaly: Option<String>,
        /// Most records to list (the node's default: 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The actions that helped with similar anomalies before, most
    /// confident first (learned from the recorded outcomes).
    Recommend {
        #[command(flatten)]
        at: Target,
        #[arg(value_name = "ANOMALY_ID")]
        anomaly: String,
    },
    /// Executed actions and whether their anomaly's series recovered
    /// afterwards (what `recommend` learns from).
    Outcomes {
        #[command(flatten)]
        at: Target,
        /// Outcomes of actions run from this long ago on (e.g. `1h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// Most outcomes to list.
        #[arg(long)]
        limit: Option<u32>,
    },
}

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

#[derive(Debug, Args)]
pub struct Target {
    /// Node HTTP URL (any member).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
    /// Print the node's JSON answer (pretty) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) enum Call<'a> {
    Get,
    Post(&'a Value),
    Delete,
}

/// The node's JSON answer (`Null` when it has none, as for a 204), or its
/// error as `<METHOD> <path>: HTTP <status>: <message>`.
pub(crate) fn call(at: &Target, how: Call<'_>, path: &str) -> Result<Value, Error> {
    let url = format!("{}{path}", at.http.trim_end_matches('/'));
    // Approving runs the action before answering (a webhook, a scale).
    let agent = crate::http_client::agent(Duration::from_secs(60))?;
    let (method, response) = match how {
        Call::Get => ("GET", agent.get(&url).call()),
        Call::Post(body) => (
            "POST",
            agent
                .post(&url)
                .content_type("application/json")
                .send(serde_json::to_vec(body)?),
        ),
        Call::Delete => ("DELETE", agent.delete(&url).call()),
    };
    let mut response = response.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
    if !(200..300).contains(&status) {
        return Err(refusal(&what, status, &bytes).into());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{what}: HTTP {status}: the answer is not JSON ({e})").into())
}

/// The error line for a non-2xx answer: the node's message when the body
/// is its JSON error, else the body's text (a proxy's page, say).
fn refusal(what: &str, status: u16, body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = value["error"]["message"]
        .as_str()
        .or_else(|| value["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let said = String::from_utf8_lossy(body).trim().to_string();
            if said.is_empty() {
                "no reason given".to_string()
            } else {
                fit(&said, 200)
            }
        });
    format!("{what}: HTTP {status}: {message}")
}

/// Bytes a path segment keeps as they are (RFC 3986's unreserved ones), so
/// an id with `/` or `?` cannot reach another route.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub(crate) fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `path?k=v&...` with the given parameters form-encoded (the node refuses
/// unknown ones, so absent ones are left out rather than sent empty).
pub(crate) fn with_query(path: &str, params: &[(&str, Option<String>)]) -> Result<String, Error> {
    let given: Vec<(&str, &str)> = params
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if given.is_empty() {
        return Ok(path.to_string());
    }
    Ok(format!("{path}?{}", serde_urlencoded::to_string(&given)?))
}

/// Milliseconds since the epoch `ago` before `now` (never before the epoch).
fn since_ms(now: SystemTime, ago: Duration) -> i64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(now.saturating_sub(ago.as_millis())).unwrap_or(i64::MAX)
}

fn since_param(ago: Duration) -> Option<String> {
    Some(since_ms(SystemTime::now(), ago).to_string())
}

/// A JSON object from a file or standard input, checked here so a typo is
/// reported with the file's name rather than as the node's 400.
fn read_json(file: &Path) -> Result<Value, Error> {
    let (name, bytes) = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        ("standard input".to_string(), bytes)
    } else {
        let name = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|e| format!("{name}: {e}"))?;
        (name, bytes)
    };
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("{name}: a JSON object is expected").into());
    }
    Ok(value)
}

pub(crate) fn print_json(v: &Value) -> Result<(), Error> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The list under `key` (or a bare list); an answer of another shape lists
/// nothing, with a word on stderr (`--json` shows it whole).
fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    match v
        .get(key)
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
    {
        Some(list) => list.as_slice(),
        None => {
            eprintln!("note: the node's answer has no {key:?} list; --json shows it");
            &[]
        }
    }
}

/// Lists are capped by --limit (or the node's default); say so rather than
/// let a partial list pass for the whole.
fn note_more(v: &Value) {
    if v["more"].as_bool() == Some(true) {
        eprintln!("(more match than shown: raise --limit or narrow --since and the filters)");
    }
}

/// Longest cell in a table; longer ones end in `…` (`--json` has them whole).
const MAX_CELL: usize = 48;

/// `cell` on one line, at most `max` characters.
fn fit(cell: &str, max: usize) -> String {
    // A newline or tab inside a cell would break the alignment.
    let flat: String = cell
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Aligned columns two spaces apart, the header first; no trailing spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut lines: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    lines.extend(
        rows.iter()
            .map(|r| r.iter().map(|c| fit(c, MAX_CELL)).collect()),
    );
    let mut widths = vec![0usize; headers.len()];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut row = String::new();
        for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                row.push_str("  ");
            }
            row.push_str(c);
            row.extend(std::iter::repeat_n(' ', w - c.chars().count()));
        }
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>], none: &str) {
    if rows.is_empty() {
        eprintln!("{none}");
    } else {
        print!("{}", table(headers, rows));
    }
}

/// A JSON value as a cell: strings bare, lists comma-joined, nothing as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
pub(crate) fn time_text(v: &Value) -> String {
    match v.as_i64() {
        // humantime cannot write years past 9999 (its Display fails).
        Some(ms) if (0..253_402_300_800_000).contains(&ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64))
                .to_string()
        }
        Some(ms) => ms.to_string(),
        None => "-".into(),
    }
}

/// `metric{k="v",...}`, the series as PromQL would name it.
fn series(metric: &Value, labels: &Value) -> String {
    let mut s = metric.as_str().unwrap_or("?").to_string();
    if let Some(labels) = labels.as_object().filter(|l| !l.is_empty()) {
        let pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}=\"{s}\""),
                None => format!("{k}=\"{v}\""),
            })
            .collect();
        s.push('{');
        s.push_str(&pairs.join(","));
        s.push('}');
    }
    s
}

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// An action's type-specific parameters as `k=v` pairs.
fn action_params(a: &Value) -> String {
    const COMMON: [&str; 6] = ["id", "name", "priority", "risk", "enabled", "type"];
    let Some(fields) = a.as_object() else {
        return "-".into();
    };
    let pairs: Vec<String> = fields
        .iter()
        .filter(|(k, v)| !COMMON.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| {
            // A workload reads better as kind/namespace/name than as JSON.
            let value = match (
                v["kind"].as_str(),
                v["namespace"].as_str(),
                v["name"].as_str(),
            ) {
                (Some(kind), Some(ns), Some(name)) => format!("{kind}/{ns}/{name}"),
                _ => text(v),
            };
            format!("{k}={value}")
        })
        .collect();
    if pairs.is_empty() {
        "-".into()
    } else {
        pairs.join(" ")
    }
}

/// An approval's outcome in words: the node sends `{"outcome": "held",
/// ...}` (or a bare string after a rejection).
fn outcome_text(v: &Value) -> String {
    let (name, rest): (&str, Vec<String>) = match v {
        Value::String(s) => (s.as_str(), Vec::new()),
        Value::Object(o) => (
            o.get("outcome").and_then(Value::as_str).unwrap_or("?"),
            o.iter()
                .filter(|(k, _)| k.as_str() != "outcome")
                .map(|(k, v)| {
                    if k.ends_with("_ms") {
                        format!("{k}={}", time_text(v))
                    } else {
                        format!("{k}={}", text(v))
                    }
                })
                .collect(),
        ),
        other => return text(other),
    };
    let said = match name {
        "execute" => "running it now".to_string(),
        "dry_run" => "dry run: it would have run".to_string(),
        "held" => "held, not run".to_string(),
        "await_approval" => "still waiting for an approval".to_string(),
        other => other.to_string(),
    };
    if rest.is_empty() {
        said
    } else {
        format!("{said} ({})", rest.join(", "))
    }
}

/// `key: value` lines, objects indented under their key.
fn key_values(out: &mut String, indent: usize, key: &str, v: &Value) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(fields) if !fields.is_empty() => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (k, child) in fields {
                key_values(out, indent + 1, k, child);
            }
        }
        Value::Array(list) if list.iter().any(|i| i.is_object() || i.is_array()) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (i, child) in list.iter().enumerate() {
                key_values(out, indent + 1, &format!("[{i}]"), child);
            }
        }
        _ => out.push_str(&format!("{pad}{key}: {}\n", text(v))),
    }
}

/// One anomaly, every field: the usual ones first, then any others.
fn anomaly_text(a: &Value) -> String {
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

fn anomaly_row(a: &Value) -> Vec<String> {
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

/// What `recommend` prints: a table of actions by confidence, or why there
/// is none.
fn recommendation_text(v: &Value) -> String {
    let anomaly = text(&v["anomaly"]);
    match v["status"].as_str() {
        Some("not_enough_history") => match v["reason"].as_str() {
            Some(reason) => format!(
                "Not enough history to recommend an action for anomaly {anomaly}: {reason}.\n"
            ),
            None => format!(
                "Not enough history to recommend an action for anomaly {anomaly}: \
                 {} outcomes of executed actions recorded, {} needed.\n",
                text(&v["have"]),
                text(&v["need"])
            ),
        },
        Some("ok") | None => {
            let rows: Vec<Vec<String>> = items(v, "recommendations")
                .iter()
                .map(|r| {
                    vec![
                        text(&r["action"]),
                        r["confidence"]
                            .as_f64()
                            .map_or_else(|| "-".into(), |c| format!("{:.0}%", c * 100.0)),
                    ]
                })
                .collect();
            if rows.is_empty() {
                return format!(
                    "No action has a record of helping with anomalies like {anomaly} yet.\n"
                );
            }
            let mut out = table(&["ACTION", "CONFIDENCE"], &rows);
            if !v["trained_on"].is_null() {
                out.push_str(&format!(
                    "(learned from {} outcomes)\n",
                    text(&v["trained_on"])
                ));
            }
            out
        }
        Some(other) => format!(
            "The node answered status {other:?} for anomaly {anomaly}; --json shows its whole answer.\n"
        ),
    }
}

/// `add-action` and `add-rule`: `kind` is `action` or `rule`.
fn put(at: &Target, kind: &str, file: &Path) -> Result<(), Error> {
    let body = read_json(file)?;
    let v = call(at, Call::Post(&body), &format!("/api/remediation/{kind}s"))?;
    if at.json {
        return print_json(&v);
    }
    println!(
        "stored {kind} {} (revision {})",
        text(&v["id"]),
        text(&v["revision"])
    );
    Ok(())
}

/// `rm-action` and `rm-rule`.
fn remove(at: &Target, kind: &str, id: &str) -> Result<(), Error> {
    let v = call(
        at,
        Call::Delete,
        &format!("/api/remediation/{kind}s/{}", segment(id)),
    )?;
    if at.json {
        // A 204 has no body: answer something a script can read.
        let answer = if v.is_null() {
            json!({ "id": id, "deleted": true })
        } else {
            v
        };
        return print_json(&answer);
    }
    println!("deleted {kind} {id}");
    Ok(())
}

/// `approve`, `reject` and `rollback`: a POST of `{"id": ...}`.
fn decide(at: &Target, verb: &str, id: &str) -> Result<Value, Error> {
    call(
        at,
        Call::Post(&json!({ "id": id })),
        &format!("/api/remediation/{verb}"),
    )
}

pub fn run(cmd: RemediationCommand) -> Result<(), Error> {
    use RemediationCommand as C;
    match cmd {
        C::Actions { at } => {
            let v = call(&at, Call::Get, "/api/remediation/actions")?;
            if at.json {
                return print_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "actions")
                .iter()
                .map(|a| {
                    vec![
                        text(&a["id"]),
                        text(&a["name"]),
                        text(&a["type"]),
                        text(&a["risk"]),
                        text(&a["priority"]),
                        yes_no(&a["enabled"]),
                        action_params(a),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "NAME", "TYPE", "RISK", "PRIORITY", "ENABLED", "PARAMS",
                ],
                &rows,
                "no actions",
            );
        }
        C::AddAction { at, file } => put(&at, "action", &file)?,
        C::RmAction { at, id } => remove(&at, "action", &id)?,
        C::Rules { at } => {
            let v = call(&at, Call::Get, "/api/remediation/rules")?;
            if at.json {
                return print_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "rules")
                .iter()
                .map(|r| {
                    // An empty (or absent) list of globs or types matches all.
                    let all = |v: &Value, word: &str| match text(v).as_str() {
                        "-" => word.to_string(),
                        t => t.to_string(),
                    };
                    vec![
                        text(&r["id"]),
                        // Absent: the node's default, enabled.
                        if r["enabled"].is_null() {
                            "yes".into()
                        } else {
                            yes_no(&r["enabled"])
                        },
                        all(&r["metrics"], "*"),
                        all(&r["types"], "all"),
                        text(&r["actions"]),
                        text(&r["cooldown"]),
                    ]
                })
                .collect();
            print_table(
                &["ID", "ENABLED", "METRICS", "TYPES", "ACTIONS", "COOLDOWN"],
                &rows,
                "no rules",
            );
        }
        C::AddRule { at, file } => put(&at, "rule", &file)?,
        C::RmRule { at, id } => remove(&at, "rule", &id)?,
        C::Pending { at } => {
            let v = call(&at, Call::Get, "/api/remediation/pending")?;
            if at.json {
                return print_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "pending")
                .iter()
                .map(|p| {
                    let a = &p["anomaly"];
                    vec![
                        text(&p["id"]),
                        text(&p["action"]),
                        text(&p["rule"]),
                        text(&a["id"]),
                        series(&a["metric"], &a["labels"]),
                        text(&a["severity"]),
                        time_text(&p["created_ms"]),
                        time_text(&p["expires_ms"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "ACTION", "RULE", "ANOMALY", "SERIES", "SEVERITY", "CREATED", "EXPIRES",
                ],
                &rows,
                "no pending approvals",
            );
        }
        C::Approve { at, id } => {
            let v = decide(&at, "approve", &id)?;
            if at.json {
                return print_json(&v);
            }
            println!("approved {id}: {}", outcome_text(&v["outcome"]));
        }
        C::Reject { at, id } => {
            let v = decide(&at, "reject", &id)?;
            if at.json {
                return print_json(&v);
            }
            println!("rejected {id}");
        }
        C::Rollback { at, id } => {
            let v = decide(&at, "rollback", &id)?;
            if at.json {
                return print_json(&v);
            }
            let mut out = String::new();
            key_values(&mut out, 0, &format!("rolled back {id}"), &v["rolled_back"]);
            print!("{out}");
        }
        C::Audit {
            at,
            since,
            rule,
            action,
            event,
            outcome,
            anomaly,
            limit,
        } => {
            let path = with_query(
                "/api/remediation/audit",
                &[
                    ("since", since_param(since)),
                    ("rule", rule),
                    ("action", action),
                    ("event", event),
                    ("outcome", outcome),
                    ("anomaly", anomaly),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            )?;
            let v = call(&at, Call::Get, &path)?;
            if at.json {
                return print_json(&v);
            }
            let rows: Vec<Vec<String>> = items(&v, "records")
                .iter()
                .map(|r| {
                    vec![
                        time_text(&r["at_ms"]),
                        text(&r["id"]),
                        text(&r["event"]),
                        text(&r["outcome"]),
                        text(&r["rule"]),
                        text(&r["action"]),
                        text(&r["anomaly"]),
                        text(&r["metric"]),
                        text(&r["principal"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "AT",
                    "ID",
                    "EVENT",
                    "OUTCOME",
                    "RULE",
                    "ACTION",
                    "ANOMALY",
                    "METRIC",
                    "PRINCIPAL",
                ],
                &rows,
                "no audit records",
            );
            note_more(&v);
        }
        C::Recommend { at, anomaly } => {
            let path = with_query(
                "/api/remediation/recommendations",
                &[("anomaly", Some(anomaly))],
            )?;
            let v = call(&at, Call::Get, &path)?;
            if at.json {
                return print_json(&v);
            }
            print!("{}", recommendation_text(&v));
        }
        C::Outcomes { at, since, limit } => {
            let path = with_query(
                "/api/remediation/outcomes",
                &[
                    ("since", since_param(since)),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            )?;
            let v = call(&at, Call::Get, &path)?;
            if at.json {
                return print_json(&v);
            }
            let listed = items(&v, "outcomes");
            let rows: Vec<Vec<String>> = listed
                .iter()
                .map(|o| {
                    vec![
                        time_text(&o["executed_ms"]),
                        text(&o["action"]),
                        // Ended before the action ran: says nothing of it.
                        if o["ended_before"].as_bool() == Some(true) {
                            "ended before".into()
                        } else {
                            yes_no(&o["recovered"])
                        },
                        text(&o["type"]),
                        series(&o["metric"], &o["labels"]),
                        text(&o["anomaly"]),
                        time_text(&o["checked_ms"]),
                    ]
                })
                .collect();
            print_table(
                &[
                    "EXECUTED",
                    "ACTION",
                    "RECOVERED",
                    "TYPE",
                    "SERIES",
                    "ANOMALY",
                    "CHECKED",
                ],
                &rows,
                "no outcomes",
            );
            if !listed.is_empty() {
                let recovered = listed
                    .iter()
                    .filter(|o| o["recovered"].as_bool() == Some(true))
                    .count();
                println!("{recovered} of {} recovered", listed.len());
            }
            note_more(&v);
        }
    }
    Ok(())
}

pub fn run_anomalies(cmd: AnomaliesCommand) -> Result<(), Error> {
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

    #[test]
    fn tables_align_columns_and_cut_long_cells() {
        let rows = vec![
            vec!["a".to_string(), "x".to_string(), "last".to_string()],
            vec!["longer".to_string(), "y\tz".to_string(), "-".to_string()],
        ];
        assert_eq!(
            table(&["ID", "COL", "END"], &rows),
            "ID      COL  END\n\
             a       x    last\n\
             longer  y z  -\n"
        );
        let long = "m".repeat(60);
        let cut = table(&["M"], &[vec![long]]);
        let cell = cut.lines().nth(1).unwrap();
        assert_eq!(cell.chars().count(), MAX_CELL);
        assert!(cell.ends_with('…'), "{cell}");
        assert_eq!(fit("short", MAX_CELL), "short");
    }

    #[test]
    fn ids_and_query_parameters_are_encoded() {
        assert_eq!(
            segment("1700000000000-00ab_c.d~e"),
            "1700000000000-00ab_c.d~e"
        );
        assert_eq!(segment("a/b?c d%"), "a%2Fb%3Fc%20d%25");
        assert_eq!(
            with_query(
                "/api/anomalies",
                &[
                    ("since", Some("5".into())),
                    ("metric", Some("cpu_*{host=\"a&b\"}".into())),
                    ("type", None),
                    ("state", Some("open".into())),
                ],
            )
            .unwrap(),
            "/api/anomalies?since=5&metric=cpu_*%7Bhost%3D%22a%26b%22%7D&state=open"
        );
        assert_eq!(with_query("/p", &[("x", None)]).unwrap(), "/p");
    }

    #[test]
    fn since_counts_back_from_now() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        assert_eq!(
            since_ms(now, humantime::parse_duration("1h").unwrap()),
            1_700_000_000_000 - 3_600_000
        );
        assert_eq!(since_ms(now, Duration::ZERO), 1_700_000_000_000);
        assert_eq!(since_ms(now, Duration::from_secs(u64::MAX)), 0);
    }

    #[test]
    fn cells_and_times_read_well() {
        assert_eq!(time_text(&json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            time_text(&json!(1_700_000_000_123i64)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(time_text(&Value::Null), "-");
        assert_eq!(text(&json!(["cpu_*", "mem"])), "cpu_*,mem");
        assert_eq!(
            series(&json!("cpu"), &json!({"dc": "x", "host": "a"})),
            "cpu{dc=\"x\",host=\"a\"}"
        );
        assert_eq!(
            refusal(
                "GET /api/anomalies/x",
                404,
                br#"{"error":{"code":"not_found","message":"no anomaly x"}}"#
            ),
            "GET /api/anomalies/x: HTTP 404: no anomaly x"
        );
    }

    #[test]
    fn recommendations_explain_missing_history() {
        let thin = json!({"anomaly": "a1", "status": "not_enough_history",
                          "have": 3, "need": 20, "recommendations": []});
        let said = recommendation_text(&thin);
        assert!(said.starts_with("Not enough history"), "{said}");
        assert!(
            said.contains("a1") && said.contains('3') && said.contains("20"),
            "{said}"
        );
        let ok = json!({"anomaly": "a1", "status": "ok", "trained_on": 40,
                        "recommendations": [{"action": "scale-api", "confidence": 0.874}]});
        assert_eq!(
            recommendation_text(&ok),
            "ACTION     CONFIDENCE\nscale-api  87%\n(learned from 40 outcomes)\n"
        );
    }

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

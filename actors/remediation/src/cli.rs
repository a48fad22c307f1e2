//! `chronicle remediation ...`: the operator's client of a node's
//! `/api/remediation/*` (reading needs a reader token when the node has
//! --auth, changing an admin one). Tables by default; `--json` prints the
//! node's answer as it came.

use std::path::PathBuf;
use std::time::Duration;

use chronicle_platform::client::{
    call, items, key_values, note_more, print_json, print_table, read_json, segment, series,
    since_param, table, text, time_text, with_query, yes_no, Call, Error, Target,
};
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

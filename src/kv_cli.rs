//! `chronicle kv ...`: the replicated state for operators, over a node's
//! HTTP API (`POST /api/v1/kv/<op>`, an admin API: the node needs
//! `--enable-admin-api`).

use std::io::Read;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print a key's value (and its revision on stderr).
    Get {
        #[command(flatten)]
        at: Target,
        key: String,
    },
    /// Set a key; prints the new revision. The value is the argument, or
    /// standard input with `-`.
    Put {
        #[command(flatten)]
        at: Target,
        key: String,
        value: String,
        /// Only if the key is at this revision (0: only if it does not exist).
        #[arg(long)]
        revision: Option<u64>,
        /// Expire the key this long after the write (e.g. `30s`, `10m`);
        /// writing it again renews or ends the lease.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Delete a key; prints the revision of the deletion.
    Del {
        #[command(flatten)]
        at: Target,
        key: String,
        /// Only if the key is at this revision.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// List keys under a prefix with their revisions (every page).
    Ls {
        #[command(flatten)]
        at: Target,
        #[arg(default_value = "")]
        prefix: String,
        /// Also print the values.
        #[arg(long)]
        values: bool,
    },
    /// Print every change under a prefix as JSON lines, from a revision on,
    /// until interrupted.
    Watch {
        #[command(flatten)]
        at: Target,
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this revision (0: the whole history kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// The namespace (a feature's name).
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Node HTTP URL (any member).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
}

fn post(at: &Target, op: &str, body: Value, timeout: Duration) -> Result<(u16, Value), Error> {
    let url = format!("{}/api/v1/kv/{op}", at.http.trim_end_matches('/'));
    let agent = crate::http_client::agent(timeout)?;
    let mut response = agent
        .post(&url)
        .content_type("application/json")
        .send(serde_json::to_vec(&body)?)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes), "code": status }));
    Ok((status, value))
}

/// The answer, or the node's error as this command's.
fn expect(at: &Target, op: &str, body: Value) -> Result<Value, Error> {
    let (status, value) = post(at, op, body, Duration::from_secs(60))?;
    if status == 200 {
        return Ok(value);
    }
    let why = value["error"].as_str().unwrap_or("no reason given");
    let current = match value.get("current") {
        Some(c) => format!(" (current revision {c})"),
        None => String::new(),
    };
    Err(format!("{op}: HTTP {status}: {why}{current}").into())
}

fn value_text(v: &Value) -> String {
    match (v["value"].as_str(), v["value_base64"].as_str()) {
        (Some(s), _) => s.to_string(),
        (None, Some(b)) => format!("base64:{b}"),
        _ => String::new(),
    }
}

pub fn run(command: KvCommand) -> Result<(), Error> {
    match command {
        KvCommand::Get { at, key } => {
            let v = expect(&at, "get", json!({ "namespace": at.namespace, "key": key }))?;
            eprintln!("revision {} (created {})", v["revision"], v["created"]);
            println!("{}", value_text(&v));
        }
        KvCommand::Put {
            at,
            key,
            value,
            revision,
            ttl,
        } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes)?;
                bytes
            } else {
                value.into_bytes()
            };
            let mut body = json!({ "namespace": at.namespace, "key": key });
            let (field, value) = chronicle_kv::value_json(&value);
            body[field] = value;
            if let Some(r) = revision {
                body["revision"] = json!(r);
            }
            if let Some(ttl) = ttl {
                body["ttl_ms"] = json!(ttl.as_millis().max(1) as u64);
            }
            let v = expect(&at, "put", body)?;
            println!("{}", v["revision"]);
        }
        KvCommand::Del { at, key, revision } => {
            let mut body = json!({ "namespace": at.namespace, "key": key });
            if let Some(r) = revision {
                body["revision"] = json!(r);
            }
            let v = expect(&at, "del", body)?;
            println!("{}", v["revision"]);
        }
        KvCommand::Ls { at, prefix, values } => {
            let mut after: Option<String> = None;
            loop {
                let mut body =
                    json!({ "namespace": at.namespace, "prefix": prefix, "limit": 1000 });
                if let Some(a) = &after {
                    body["after"] = json!(a);
                }
                let v = expect(&at, "ls", body)?;
                let entries = v["entries"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    let key = e["key"].as_str().unwrap_or_default();
                    if values {
                        println!("{key}\t{}\t{}", e["revision"], value_text(e));
                    } else {
                        println!("{key}\t{}", e["revision"]);
                    }
                }
                after = entries
                    .last()
                    .and_then(|e| e["key"].as_str())
                    .map(str::to_string);
                if v["more"] != json!(true) || after.is_none() {
                    break;
                }
            }
        }
        KvCommand::Watch { at, prefix, after } => {
            let mut after = after;
            loop {
                let body = json!({
                    "namespace": at.namespace, "prefix": prefix, "after": after,
                    "wait_ms": 10_000,
                });
                match post(&at, "watch", body, Duration::from_secs(40)) {
                    Ok((200, v)) => {
                        for c in v["changes"].as_array().into_iter().flatten() {
                            println!("{c}");
                            after = c["revision"].as_u64().unwrap_or(after);
                        }
                        after = after.max(v["revision"].as_u64().unwrap_or(after));
                    }
                    Ok((status, v)) if status < 500 => {
                        let why = v["error"].as_str().unwrap_or("no reason given");
                        return Err(format!("watch: HTTP {status}: {why}").into());
                    }
                    // A node restarting or a leader changing: ask again.
                    Ok((status, v)) => {
                        eprintln!("watch: HTTP {status}: {}; retrying", v["error"]);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => {
                        eprintln!("watch: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        }
    }
    Ok(())
}

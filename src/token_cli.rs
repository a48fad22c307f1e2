//! `chronicle token create|list|revoke`: API tokens through a node's
//! `/api/v1/auth/tokens` (needs an admin token: `--token` or
//! `CHRONICLE_TOKEN`, e.g. the bootstrap token).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints it once (only its hash is kept).
    Create {
        /// What the token is for (shown in lists).
        #[arg(long)]
        name: String,
        /// reader (queries), writer (writes and queries) or admin (all).
        #[arg(long, default_value = "reader")]
        role: String,
        /// Limit the token to these features (ingest, query, kv, cluster,
        /// auth, metrics; repeat or comma-separate).
        #[arg(long = "feature", value_delimiter = ',')]
        features: Vec<String>,
        /// Limit writes to metrics starting with these prefixes (such a
        /// token cannot query).
        #[arg(long = "metric-prefix", value_delimiter = ',')]
        metric_prefixes: Vec<String>,
        /// Lifetime (`30d`, `12h`); default: until revoked.
        #[arg(long)]
        ttl: Option<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Node,
    },
    /// List tokens (ids, names, roles; never secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Node,
    },
    /// Revoke a token by id; every node refuses it within a second.
    Revoke {
        id: String,
        #[command(flatten)]
        at: Node,
    },
}

#[derive(Debug, Args)]
pub struct Node {
    /// The node's HTTP address.
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
}

fn call(method: &str, url: &str, body: Option<Value>) -> Result<Value, Error> {
    let agent = crate::http_client::agent(Duration::from_secs(30))?;
    let response = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .content_type("application/json")
            .send(serde_json::to_vec(&b)?),
        ("DELETE", _) => agent.delete(url).call(),
        _ => agent.get(url).call(),
    };
    let mut response = response.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let bytes = response.body_mut().read_to_vec()?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(format!("{url}: HTTP {status}: {message}").into());
    }
    Ok(value)
}

fn url(at: &Node, path: &str) -> String {
    format!("{}/api/v1/auth/tokens{path}", at.http.trim_end_matches('/'))
}

pub fn run(command: TokenCommand) -> Result<(), Error> {
    match command {
        TokenCommand::Create {
            name,
            role,
            features,
            metric_prefixes,
            ttl,
            json: as_json,
            at,
        } => {
            let mut body = json!({
                "name": name,
                "role": role,
                "scopes": { "features": features, "metric_prefixes": metric_prefixes },
            });
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let made = call("POST", &url(&at, ""), Some(body))?;
            if as_json {
                println!("{made}");
            } else {
                eprintln!(
                    "created token {} ({}, role {}); it is shown only now:",
                    made["id"].as_str().unwrap_or("?"),
                    made["name"].as_str().unwrap_or("?"),
                    made["role"].as_str().unwrap_or("?")
                );
                println!("{}", made["token"].as_str().unwrap_or(""));
            }
        }
        TokenCommand::List { json: as_json, at } => {
            let listed = call("GET", &url(&at, ""), None)?;
            if as_json {
                println!("{listed}");
                return Ok(());
            }
            println!("{:<18} {:<8} {:<24} SCOPES", "ID", "ROLE", "NAME");
            for t in listed["tokens"].as_array().into_iter().flatten() {
                println!(
                    "{:<18} {:<8} {:<24} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["role"].as_str().unwrap_or(""),
                    t["name"].as_str().unwrap_or(""),
                    if t["scopes"].is_null() {
                        "-".to_string()
                    } else {
                        t["scopes"].to_string()
                    }
                );
            }
        }
        TokenCommand::Revoke { id, at } => {
            call("DELETE", &url(&at, &format!("/{id}")), None)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

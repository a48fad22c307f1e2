//! `chronicle cluster ...`: the operator's view of the cluster, over a node's
//! HTTP API, and the JSON that API answers with.

use std::time::Duration;

use chronicle_cluster::ClusterStatus;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Members, shards, each shard's leader node id and its followers' lag
    /// (entries behind the leader), as one node gathers them.
    Status(StatusArgs),
    /// Move replicas onto a node started with `serve --join` until every node
    /// holds within one replica of the others.
    AddNode(NodeArgs),
    /// Move every replica off a node; it can then be stopped.
    RemoveNode(NodeArgs),
    /// Make a replica the leader of its shard.
    TransferLeader(TransferArgs),
    /// Make nodes 1..=N the members: move every replica off members with a
    /// higher id (remove-node), then add each of 1..=N that holds none,
    /// waiting for it to come up (add-node). Safe to run again; the Helm
    /// chart's hooks run it on every install and upgrade.
    Scale(ScaleArgs),
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The member count wanted: nodes 1..=N hold the replicas.
    #[arg(long)]
    pub members: u64,
    /// Node HTTP URL (any member that stays).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
    /// How long to wait for a node to add to come up (`30s`, `10m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Only move replicas off members above N (before their pods go); add nobody.
    #[arg(long)]
    pub shrink_only: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node id.
    pub id: u64,
    /// Node HTTP URL (any member).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    #[arg(long)]
    pub shard: u32,
    /// The node to lead it (one of its replicas).
    #[arg(long)]
    pub to: u64,
    /// Node HTTP URL (any member).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Node HTTP URL (any member answers for the whole cluster).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: ClusterCommand) -> Result<(), Error> {
    match command {
        ClusterCommand::Status(args) => status(args),
        ClusterCommand::AddNode(args) => {
            let reply = post(
                &args.http,
                &format!("/api/v1/cluster/add-node?id={}", args.id),
            )?;
            print_moves(&reply, &format!("node {} added", args.id));
            Ok(())
        }
        ClusterCommand::RemoveNode(args) => {
            let reply = post(
                &args.http,
                &format!("/api/v1/cluster/remove-node?id={}", args.id),
            )?;
            print_moves(
                &reply,
                &format!("node {} holds no replica now; it can be stopped", args.id),
            );
            Ok(())
        }
        ClusterCommand::Scale(args) => scale(args),
        ClusterCommand::TransferLeader(args) => {
            post(
                &args.http,
                &format!(
                    "/api/v1/cluster/transfer-leader?shard={}&to={}",
                    args.shard, args.to
                ),
            )?;
            println!("node {} leads shard {}", args.to, args.shard);
            Ok(())
        }
    }
}

/// The node ids holding replicas, as `GET /api/v1/cluster/status` lists them.
fn members(http: &str) -> Result<Vec<u64>, Error> {
    let url = format!("{}/api/v1/cluster/status", http.trim_end_matches('/'));
    let agent = agent(Duration::from_secs(30))?;
    let value = call(&url, || agent.get(&url).call())?;
    Ok(value["members"]
        .as_array()
        .ok_or_else(|| format!("{url}: no members in the answer"))?
        .iter()
        .filter_map(|m| m["node_id"].as_u64())
        .collect())
}

/// What `scale` does to reach `wanted` members from `current`: nodes to
/// empty (highest first), then nodes to add (lowest first).
fn scale_steps(current: &[u64], wanted: u64) -> (Vec<u64>, Vec<u64>) {
    let mut remove: Vec<u64> = current.iter().copied().filter(|&id| id > wanted).collect();
    remove.sort_unstable_by(|a, b| b.cmp(a));
    let add = (1..=wanted).filter(|id| !current.contains(id)).collect();
    (remove, add)
}

fn scale(args: ScaleArgs) -> Result<(), Error> {
    if args.members == 0 || args.members > 1000 {
        return Err("--members must be 1..=1000".into());
    }
    let current = members(&args.http)?;
    let (remove, add) = scale_steps(&current, args.members);
    eprintln!(
        "members now {current:?}; wanted 1..={}: emptying {remove:?}{}",
        args.members,
        if args.shrink_only {
            String::new()
        } else {
            format!(", adding {add:?}")
        }
    );
    for id in remove {
        let reply = post(&args.http, &format!("/api/v1/cluster/remove-node?id={id}"))?;
        print_moves(
            &reply,
            &format!("node {id} holds no replica now; it can be stopped"),
        );
    }
    if args.shrink_only {
        return Ok(());
    }
    for id in add {
        // A new pod takes a while to start and join; until it has, the
        // cluster refuses to move replicas to it.
        let deadline = std::time::Instant::now() + args.wait;
        loop {
            match post(&args.http, &format!("/api/v1/cluster/add-node?id={id}")) {
                Ok(reply) => {
                    print_moves(&reply, &format!("node {id} added"));
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("node {id} not added yet ({e}); trying again in 5 s");
                    std::thread::sleep(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(
                        format!("node {id} was not added within {:?}: {e}", args.wait).into(),
                    )
                }
            }
        }
    }
    println!("members: 1..={}", args.members);
    Ok(())
}

fn agent(timeout: Duration) -> Result<ureq::Agent, Error> {
    Ok(crate::http_client::agent(timeout)?)
}

/// Sends `request` to `url`; the JSON answer (null for an empty body), or
/// the node's error.
fn call(
    url: &str,
    request: impl FnOnce() -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, Error> {
    let mut response = request().map_err(|e| format!("{url}: {e}"))?;
    let body = response.body_mut().read_to_vec()?;
    if !response.status().is_success() {
        return Err(format!(
            "{url}: HTTP {}: {}",
            response.status(),
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?)
}

/// POSTs to a node. Moving shards can take as long as copying them, so there
/// is no short timeout.
fn post(http: &str, path: &str) -> Result<Value, Error> {
    let url = format!("{}{path}", http.trim_end_matches('/'));
    eprintln!("asking {url} (moving replicas waits for them to catch up)...");
    let agent = agent(Duration::from_secs(3600))?;
    call(&url, || agent.post(&url).send_empty())
}

fn print_moves(reply: &Value, done: &str) {
    for m in reply["moves"].as_array().into_iter().flatten() {
        println!(
            "moved shard {} from node {} to node {}",
            m["shard"], m["from"], m["to"]
        );
    }
    println!("{done}");
}

/// `GET /api/v1/cluster/status`: `{"node_id", "members": [{"node_id"}],
/// "shards": [{"id", "leader", "replicas", "term", "last_log_index", "lag"}]}`;
/// `leader` is null while a shard has none (or none of its members answered).
pub fn status_json(status: &ClusterStatus) -> Value {
    json!({
        "node_id": status.node_id,
        "members": status.members.iter().map(|id| json!({"node_id": id})).collect::<Vec<_>>(),
        "shards": status.shards.iter().map(|s| json!({
            "id": s.id,
            "leader": s.leader,
            "replicas": s.replicas,
            "term": s.term,
            "last_log_index": s.last_log_index,
            "lag": s.lag.iter().map(|(node, behind)| (node.to_string(), json!(behind))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

fn status(args: StatusArgs) -> Result<(), Error> {
    let url = format!("{}/api/v1/cluster/status", args.http.trim_end_matches('/'));
    let agent = agent(Duration::from_secs(30))?;
    let value = call(&url, || agent.get(&url).call())?;
    if args.json {
        println!("{value}");
        return Ok(());
    }
    print!("{}", status_table(&value));
    Ok(())
}

fn status_table(value: &Value) -> String {
    let ids = |v: &Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_u64().map_or("?".into(), |n| n.to_string()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let members: Vec<String> = value["members"]
        .as_array()
        .map(|m| m.iter().map(|x| x["node_id"].to_string()).collect())
        .unwrap_or_default();
    let mut out = format!(
        "members: {}   (answered by node {})\n",
        members.join(", "),
        value["node_id"]
    );
    out.push_str(&format!(
        "{:<6} {:<7} {:<12} {:<6} {:<10} {}\n",
        "shard", "leader", "replicas", "term", "last index", "lag (node:entries)"
    ));
    for s in value["shards"].as_array().into_iter().flatten() {
        let leader = s["leader"]
            .as_u64()
            .map_or("none".to_string(), |l| l.to_string());
        let lag = s["lag"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(n, v)| format!("{n}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<6} {:<7} {:<12} {:<6} {:<10} {}\n",
            s["id"],
            leader,
            ids(&s["replicas"]),
            s["term"],
            s["last_log_index"],
            if lag.is_empty() { "-".into() } else { lag }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_cluster::ShardStatus;

    #[test]
    fn scale_empties_the_highest_first_and_adds_the_missing_lowest_first() {
        assert_eq!(scale_steps(&[1, 2, 3], 5), (vec![], vec![4, 5]));
        assert_eq!(scale_steps(&[1, 2, 3, 4, 5], 3), (vec![5, 4], vec![]));
        assert_eq!(scale_steps(&[1, 3, 4], 3), (vec![4], vec![2]));
        assert_eq!(scale_steps(&[1, 2, 3], 3), (vec![], vec![]));
    }

    #[test]
    fn status_has_the_documented_shape_and_prints_as_a_table() {
        let status = ClusterStatus {
            node_id: 2,
            members: vec![1, 2, 3],
            shards: vec![
                ShardStatus {
                    id: 0,
                    leader: Some(3),
                    replicas: vec![1, 2, 3],
                    lag: [(1, 0), (2, 4)].into(),
                    term: 2,
                    last_log_index: 40,
                },
                ShardStatus {
                    id: 1,
                    leader: None,
                    replicas: vec![2, 3, 1],
                    lag: Default::default(),
                    term: 0,
                    last_log_index: 0,
                },
            ],
        };
        let v = status_json(&status);
        assert_eq!(v["members"][1]["node_id"], 2);
        assert_eq!(v["shards"][0]["leader"], 3);
        assert_eq!(v["shards"][0]["replicas"], json!([1, 2, 3]));
        assert_eq!(v["shards"][0]["lag"]["2"], 4);
        assert!(v["shards"][1]["leader"].is_null());
        let table = status_table(&v);
        assert!(table.contains("members: 1, 2, 3"), "{table}");
        assert!(table.contains("1:0 2:4"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("1 ") && l.contains("none")),
            "{table}"
        );
    }
}

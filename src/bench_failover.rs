//! `chronicle bench cluster --processes`: failover as an operator meets it.
//! Three `chronicle serve` processes over a NATS server; the leader of shard 0
//! is killed with SIGKILL (no shutdown, no handover) under a steady write
//! load, and the clock runs from the kill to the first write to shard 0 that
//! a surviving node acknowledges over HTTP. The killed node is restarted and
//! caught up before the next round.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chronicle_cluster::shard_of;
use chronicle_storage::Label;
use serde_json::{json, Value};

use crate::bench::{quantile, round3};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One node process; killed when dropped.
pub(crate) struct NodeProc {
    child: Child,
    pub(crate) http: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// `chronicle serve` as node `id` of three, data under `root`.
pub(crate) fn start_node(
    id: u64,
    root: &Path,
    nats: &str,
    shards: u32,
    port: u16,
) -> Result<NodeProc, Error> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args([
            "serve",
            "--node-id",
            &id.to_string(),
            "--initial-nodes",
            "1,2,3",
        ])
        .args(["--shards", &shards.to_string(), "--nats-url", nats])
        .arg("--data-dir")
        .arg(root.join(format!("node-{id}")))
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("CHRONICLE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(NodeProc {
        child,
        http: format!("http://127.0.0.1:{port}"),
    })
}

fn ready(http: &str) -> bool {
    agent()
        .get(format!("{http}/health/ready"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

pub(crate) fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether every one of `shards` shards has a leader, as `http` sees it.
pub(crate) fn all_led(http: &str, shards: usize) -> bool {
    let Ok(mut resp) = agent().get(format!("{http}/api/v1/cluster/status")).call() else {
        return false;
    };
    let Ok(body) = resp.body_mut().read_to_vec() else {
        return false;
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (0..shards).all(|i| v["shards"][i]["leader"].as_u64().is_some())
}

fn leader_of_shard0(http: &str) -> Option<u64> {
    let mut resp = agent()
        .get(format!("{http}/api/v1/cluster/status"))
        .call()
        .ok()?;
    let v: Value = serde_json::from_slice(&resp.body_mut().read_to_vec().ok()?).ok()?;
    v["shards"][0]["leader"].as_u64()
}

fn write(http: &str, body: &str) -> bool {
    agent()
        .post(format!("{http}/write"))
        .send(body)
        .is_ok_and(|r| r.status() == 204)
}

pub fn run(nats: &str, shards: u32, rounds: usize, json_out: bool) -> Result<(), Error> {
    if rounds == 0 {
        return Err("--failovers must be at least 1".into());
    }
    let dir = tempfile::tempdir()?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let mut nodes: Vec<Option<NodeProc>> = Vec::new();
    for id in 1..=3u64 {
        nodes.push(Some(start_node(
            id,
            dir.path(),
            nats,
            shards,
            ports[id as usize - 1],
        )?));
    }
    for n in nodes.iter().flatten() {
        wait("every node ready", Duration::from_secs(60), || {
            ready(&n.http)
        })?;
    }
    let probe_host = (0..)
        .map(|i| format!("probe-{i}"))
        .find(|h| shard_of("failover_probe", &[Label::new("host", h.as_str())], shards) == 0)
        .expect("some host hashes to shard 0");
    let mut took_ms = Vec::new();
    for round in 0..rounds {
        let any = nodes.iter().flatten().next().expect("nodes").http.clone();
        let mut leader = None;
        wait("a leader of shard 0", Duration::from_secs(30), || {
            leader = leader_of_shard0(&any);
            leader.is_some()
        })?;
        let leader = leader.expect("waited for it");
        // A steady load before the kill: the cluster is serving, not idle.
        let survivor = nodes
            .iter()
            .flatten()
            .find(|n| n.http != nodes[leader as usize - 1].as_ref().map_or("", |l| &l.http))
            .expect("a survivor")
            .http
            .clone();
        for i in 0..20 {
            let line = format!(
                "failover_load,host=h{i} value={i} {}\n",
                (round * 100 + i) as i64 * 1_000_000_000
            );
            write(&survivor, &line);
        }
        let victim = nodes[leader as usize - 1].take().expect("leader is up");
        let mut victim = victim;
        let killed = Instant::now();
        victim.child.kill()?; // SIGKILL
        victim.child.wait()?;
        let line = format!(
            "failover_probe,host={probe_host} value={round} {}\n",
            (round as i64 + 1) * 1_000_000_000
        );
        wait(
            "a write to shard 0 after the kill",
            Duration::from_secs(60),
            || write(&survivor, &line),
        )?;
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        eprintln!("failover {}: {ms:.0} ms (SIGKILL node {leader})", round + 1);
        took_ms.push(ms);
        drop(victim);
        let restarted = start_node(leader, dir.path(), nats, shards, ports[leader as usize - 1])?;
        wait(
            "the killed node ready again",
            Duration::from_secs(60),
            || ready(&restarted.http),
        )?;
        nodes[leader as usize - 1] = Some(restarted);
    }
    let result = json!({
        "mode": "processes, SIGKILL",
        "nodes": 3,
        "shards": shards,
        "failovers": took_ms.len(),
        "failover_p50_ms": round3(quantile(&mut took_ms.clone(), 0.5)),
        "failover_p99_ms": round3(quantile(&mut took_ms.clone(), 0.99)),
        "failover_max_ms": round3(took_ms.iter().copied().fold(0.0, f64::max)),
    });
    crate::bench::print_result(&result, json_out);
    Ok(())
}

//! A three-node cluster of real `chronicle serve` processes over a real
//! nats-server on loopback: writes through any node and reads from any node;
//! `kill -9` of a shard leader under write load (a new leader, no acknowledged
//! write lost, the killed node catches up after a restart); a node partitioned
//! with the bus fault wrapper (the majority serves, the minority refuses
//! writes, and after healing it converges without deposing the leaders).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_tests::{http_query, same_bytes, wait_until, write_noise, NatsServer, NodeProcess};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const SHARDS: usize = 3;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// POSTs line protocol to `/write`: the status and the body.
fn write(http: &str, lines: &str) -> (u16, String) {
    match agent().post(format!("{http}/write")).send(lines) {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

fn post(http: &str, path: &str) -> u16 {
    agent()
        .post(format!("{http}{path}"))
        .send_empty()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn status(http: &str) -> Option<Value> {
    let mut r = agent()
        .get(format!("{http}/api/v1/cluster/status"))
        .call()
        .ok()?;
    serde_json::from_slice(&r.body_mut().read_to_vec().ok()?).ok()
}

fn leader(status: &Value, shard: usize) -> Option<u64> {
    status["shards"][shard]["leader"].as_u64()
}

fn all_led(http: &str) -> bool {
    status(http).is_some_and(|s| (0..SHARDS).all(|i| leader(&s, i).is_some()))
}

/// The (host, timestamp) pairs of `metric` a node returns.
fn stored(http: &str, metric: &str) -> BTreeSet<(String, i64)> {
    let answer = http_query(
        http,
        &format!(r#"{{"metric":"{metric}","start":0,"end":100000000000}}"#),
    );
    let mut out = BTreeSet::new();
    for series in answer["series"].as_array().unwrap_or(&Vec::new()) {
        let host = series["labels"]["host"].as_str().unwrap_or("").to_string();
        for p in series["points"].as_array().unwrap() {
            out.insert((host.clone(), p[0].as_i64().unwrap()));
        }
    }
    out
}

/// `/health/ready`'s status and body.
fn ready(http: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(format!("{http}/health/ready"))
        .call()
        .expect("readiness answers");
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

struct Cluster {
    server: NatsServer,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<NodeProcess>>,
    extra: Vec<&'static str>,
}

impl Cluster {
    fn start(extra: &[&'static str]) -> Self {
        let mut cluster = Self {
            server: NatsServer::start(),
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            nodes: vec![None, None, None],
            extra: extra.to_vec(),
        };
        cluster.start_node(1);
        // Alone, node 1 is live but not ready: its shards have no leader.
        let (code, body) = ready(&cluster.http(1));
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no known leader"), "{body}");
        for id in 2..=3 {
            cluster.start_node(id);
        }
        let http = cluster.http(1);
        wait_until(Duration::from_secs(30), "every shard has a leader", || {
            all_led(&http)
        });
        for id in 1..=3 {
            let http = cluster.http(id);
            wait_until(Duration::from_secs(10), "every node ready", || {
                ready(&http).0 == 200
            });
        }
        cluster
    }

    fn start_node(&mut self, id: u64) {
        let id_text = id.to_string();
        let shards = SHARDS.to_string();
        let mut args = vec![
            "--node-id",
            &id_text,
            "--initial-nodes",
            "1,2,3",
            "--shards",
            &shards,
        ];
        args.extend(self.extra.iter().copied());
        let dir: &Path = self.dirs[id as usize - 1].path();
        self.nodes[id as usize - 1] = Some(NodeProcess::start(
            BIN,
            dir,
            Some(&self.server.url()),
            &args,
        ));
    }

    fn http(&self, id: u64) -> String {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node running")
            .http
            .clone()
    }

    /// SIGTERMs every running node at once; each must exit 0 (a stop under
    /// way must never abort the process).
    fn stop_all_cleanly(mut self) {
        let nodes: Vec<NodeProcess> = self.nodes.iter_mut().filter_map(Option::take).collect();
        for node in &nodes {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(node.child.id() as i32, libc::SIGTERM);
            }
        }
        for node in nodes {
            let status = node.stop_within(Duration::from_secs(40));
            assert!(status.success(), "a node exited with {status}");
        }
    }

    fn kill(&mut self, id: u64) {
        let mut node = self.nodes[id as usize - 1].take().expect("node running");
        node.child.kill().expect("SIGKILL");
        node.child.wait().expect("reaped");
    }
}

/// Lines for `hosts` series of `metric` at `ts`, all with `value`.
fn lines(metric: &str, hosts: usize, ts: i64, value: i64) -> String {
    (0..hosts)
        .map(|h| format!("{metric},host=h{h} value={value} {ts}\n"))
        .collect()
}

#[test]
fn three_processes_write_anywhere_read_anywhere_and_survive_a_leader_kill() {
    let mut cluster = Cluster::start(&[]);

    // Write through every node, read from every node (linearizable reads).
    let mut expected = BTreeSet::new();
    for id in 1..=3u64 {
        for ts in 0..5 {
            let t = (id as i64) * 1_000 + ts;
            let (code, body) = write(&cluster.http(id), &lines("cpu", 12, t, 1));
            assert_eq!(code, 204, "write via node {id}: {body}");
            expected.extend((0..12).map(|h| (format!("h{h}"), t)));
        }
    }
    for id in 1..=3 {
        assert_eq!(
            stored(&cluster.http(id), "cpu"),
            expected,
            "read via node {id}"
        );
    }

    // The operator's view, from the CLI.
    let out = Command::new(BIN)
        .args(["cluster", "status", "--json", "--http", &cluster.http(2)])
        .output()
        .expect("chronicle cluster status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    let members: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(members, [1, 2, 3]);
    for shard in view["shards"].as_array().unwrap() {
        let replicas: Vec<u64> = serde_json::from_value(shard["replicas"].clone()).unwrap();
        assert_eq!(replicas.len(), 3);
        assert!(
            replicas.contains(&shard["leader"].as_u64().unwrap()),
            "{shard}"
        );
    }

    // Under write load, kill -9 the leader of shard 0.
    let victim = leader(&status(&cluster.http(1)).unwrap(), 0).unwrap();
    let via = if victim == 1 { 2 } else { 1 };
    let via_http = cluster.http(via);
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, failed, stop, http) = (
            acked.clone(),
            failed.clone(),
            stop.clone(),
            via_http.clone(),
        );
        std::thread::spawn(move || {
            let mut ts = 100_000;
            // Bounded: the test stops it, and it gives up after two minutes.
            let limit = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                ts += 1;
                match write(&http, &lines("load", 24, ts, ts)) {
                    (204, _) => acked.lock().unwrap().push(ts),
                    _ => *failed.lock().unwrap() += 1,
                }
            }
        })
    };
    wait_until(Duration::from_secs(30), "writes before the kill", || {
        acked.lock().unwrap().len() >= 20
    });
    let killed_at = Instant::now();
    let acked_before = acked.lock().unwrap().len();
    cluster.kill(victim);
    wait_until(Duration::from_secs(20), "a new leader of shard 0", || {
        status(&via_http).is_some_and(|s| leader(&s, 0).is_some_and(|l| l != victim))
    });
    let elected = killed_at.elapsed();
    wait_until(Duration::from_secs(30), "writes after the kill", || {
        acked.lock().unwrap().len() >= acked_before + 20
    });
    let resumed = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!(
        "leader {victim} killed: new leader seen after {elected:?}, 20 more writes acknowledged after {resumed:?}; {} failed attempts",
        failed.lock().unwrap()
    );

    // Every acknowledged write is there, read through a survivor.
    let load = stored(&via_http, "load");
    for ts in acked.lock().unwrap().iter() {
        for h in 0..24 {
            assert!(
                load.contains(&(format!("h{h}"), *ts)),
                "acknowledged point h{h}@{ts} lost"
            );
        }
    }

    // The killed node restarts and catches up: every leader reports it level.
    cluster.start_node(victim);
    let back = cluster.http(victim);
    wait_until(
        Duration::from_secs(60),
        "the restarted node caught up",
        || {
            status(&back).is_some_and(|s| {
                (0..SHARDS).all(|i| {
                    leader(&s, i).is_some()
                        && (leader(&s, i) == Some(victim)
                            || s["shards"][i]["lag"][victim.to_string()].as_u64() == Some(0))
                })
            })
        },
    );
    assert_eq!(
        stored(&back, "load"),
        load,
        "read through the restarted node"
    );
    assert_eq!(stored(&back, "cpu"), expected);
    cluster.stop_all_cleanly();
}

#[test]
fn a_partitioned_node_refuses_writes_and_converges_after_healing() {
    let cluster = Cluster::start(&["--allow-fault-injection"]);
    let lonely = 3u64;
    assert_eq!(
        post(&cluster.http(lonely), "/debug/faults/partition?from=1,2"),
        204
    );
    assert_eq!(
        post(&cluster.http(1), "/debug/faults/partition?from=3"),
        204
    );
    assert_eq!(
        post(&cluster.http(2), "/debug/faults/partition?from=3"),
        204
    );

    // The majority keeps serving (once it has re-elected what node 3 led).
    let majority = cluster.http(1);
    let mut expected = BTreeSet::new();
    let started = Instant::now();
    for ts in 0..10 {
        loop {
            let (code, body) = write(&majority, &lines("part", 12, ts, 1));
            if code == 204 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the majority refused writes: {code} {body}"
            );
        }
        expected.extend((0..12).map(|h| (format!("h{h}"), ts)));
    }
    // Every shard the cut-off node led elects another leader.
    let mut leaders = Vec::new();
    wait_until(
        Duration::from_secs(15),
        "leaders on the majority side",
        || {
            leaders = status(&majority)
                .map(|s| (0..SHARDS).filter_map(|i| leader(&s, i)).collect())
                .unwrap_or_default();
            leaders.len() == SHARDS && !leaders.contains(&lonely)
        },
    );

    // The minority refuses, with a clear error, and does not hang.
    let asked = Instant::now();
    let (code, body) = write(&cluster.http(lonely), &lines("part", 12, 999, 9));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not_committed"), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(40));

    for id in 1..=3 {
        assert_eq!(post(&cluster.http(id), "/debug/faults/heal"), 204);
    }
    let lonely_http = cluster.http(lonely);
    wait_until(Duration::from_secs(60), "the healed node caught up", || {
        status(&majority).is_some_and(|s| {
            (0..SHARDS).all(|i| s["shards"][i]["lag"][lonely.to_string()].as_u64() == Some(0))
        })
    });
    assert_eq!(
        stored(&lonely_http, "part"),
        expected,
        "the refused write must not appear"
    );
    // The cut-off node asked for pre-votes and got none: its term did not
    // grow, so healing deposed nobody.
    let after: Vec<u64> = {
        let s = status(&majority).unwrap();
        (0..SHARDS).map(|i| leader(&s, i).unwrap()).collect()
    };
    assert_eq!(after, leaders, "healing deposed a leader");
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run the CLI");
    assert!(
        out.status.success(),
        "chronicle {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `chronicle cluster transfer-leader`, asked of the node at `http`.
fn transfer_leader(http: &str, shard: usize, to: u64) {
    cli(&[
        "cluster",
        "transfer-leader",
        "--shard",
        &shard.to_string(),
        "--to",
        &to.to_string(),
        "--http",
        http,
    ]);
}

fn replicas_on(status: &Value, node: u64) -> usize {
    status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_u64() == Some(node))
        })
        .count()
}

#[test]
fn a_fourth_node_takes_replicas_leads_one_and_a_node_leaves() {
    let mut cluster = Cluster::start(&[]);
    let mut expected = BTreeSet::new();
    for ts in 0..10 {
        let (code, body) = write(&cluster.http(1), &lines("moved", 12, ts, 1));
        assert_eq!(code, 204, "{body}");
        expected.extend((0..12).map(|h| (format!("h{h}"), ts)));
    }

    // Node 4 starts outside the initial members, then is added: replicas
    // move onto it (9 replicas over 4 nodes: it takes 2).
    let dir4 = tempfile::tempdir().unwrap();
    let node4 = NodeProcess::start(
        BIN,
        dir4.path(),
        Some(&cluster.server.url()),
        &["--node-id", "4", "--join"],
    );
    let out = cli(&["cluster", "add-node", "4", "--http", &cluster.http(1)]);
    assert!(out.contains("moved shard"), "{out}");
    let view = status(&cluster.http(2)).unwrap();
    assert_eq!(replicas_on(&view, 4), 2, "{view}");
    for s in view["shards"].as_array().unwrap() {
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3, "{view}");
    }
    wait_until(Duration::from_secs(30), "leaders after the moves", || {
        all_led(&node4.http)
    });
    assert_eq!(
        stored(&node4.http, "moved"),
        expected,
        "read through node 4"
    );

    // Node 4 takes the lead of one of its shards.
    let view = status(&node4.http).unwrap();
    let shard = (0..SHARDS)
        .find(|&i| {
            view["shards"][i]["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_u64() == Some(4))
                && leader(&view, i) != Some(4)
        })
        .expect("a shard on node 4 led elsewhere");
    transfer_leader(&cluster.http(3), shard, 4);
    assert_eq!(leader(&status(&cluster.http(1)).unwrap(), shard), Some(4));

    // Node 1 leaves: its replicas move first, and it deletes them.
    let out = cli(&["cluster", "remove-node", "1", "--http", &cluster.http(2)]);
    assert!(out.contains("can be stopped"), "{out}");
    let view = status(&cluster.http(2)).unwrap();
    assert_eq!(replicas_on(&view, 1), 0, "{view}");
    let members: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(members, [2, 3, 4]);
    let dir1 = cluster.dirs[0].path().to_path_buf();
    wait_until(
        Duration::from_secs(30),
        "node 1 deleted its replicas",
        || {
            std::fs::read_dir(&dir1)
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("shard-"))
        },
    );
    cluster.kill(1);

    // The remaining three serve writes and reads.
    for ts in 100..105 {
        let (code, body) = write(&cluster.http(3), &lines("moved", 12, ts, 2));
        assert_eq!(code, 204, "{body}");
        expected.extend((0..12).map(|h| (format!("h{h}"), ts)));
    }
    assert_eq!(stored(&node4.http, "moved"), expected);
    assert_eq!(stored(&cluster.http(2), "moved"), expected);
}

#[test]
fn sigterm_on_a_leader_under_write_load_hands_over_and_loses_nothing() {
    let mut cluster = Cluster::start(&[]);
    let victim = leader(&status(&cluster.http(1)).unwrap(), 0).unwrap();
    let survivors: Vec<String> = (1..=3u64)
        .filter(|&id| id != victim)
        .map(|id| cluster.http(id))
        .collect();
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let failed = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, slowest, failed, stop, targets) = (
            acked.clone(),
            slowest.clone(),
            failed.clone(),
            stop.clone(),
            survivors.clone(),
        );
        std::thread::spawn(move || {
            let mut ts = 200_000;
            // Bounded: the test stops it, and it gives up after two minutes.
            let limit = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                ts += 1;
                let started = Instant::now();
                let via = &targets[ts as usize % targets.len()];
                match write(via, &lines("handover", 24, ts, ts)) {
                    (204, _) => {
                        acked.lock().unwrap().push(ts);
                        let took = started.elapsed();
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(took);
                    }
                    _ => *failed.lock().unwrap() += 1,
                }
            }
        })
    };
    wait_until(Duration::from_secs(30), "writes before the stop", || {
        acked.lock().unwrap().len() >= 20
    });
    *slowest.lock().unwrap() = Duration::ZERO;
    let stopped_at = Instant::now();
    let node = cluster.nodes[victim as usize - 1].take().unwrap();
    let exit = node.stop_within(Duration::from_secs(60));
    let took = stopped_at.elapsed();
    let acked_at_stop = acked.lock().unwrap().len();
    wait_until(Duration::from_secs(30), "writes after the stop", || {
        acked.lock().unwrap().len() >= acked_at_stop + 20
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let slowest = *slowest.lock().unwrap();
    eprintln!(
        "leader {victim} stopped with SIGTERM in {took:?} ({exit}); slowest acknowledged write \
         meanwhile {slowest:?}; {} failed attempts",
        failed.lock().unwrap()
    );
    assert!(exit.success(), "a SIGTERM stop exits 0, got {exit}");
    assert_eq!(
        *failed.lock().unwrap(),
        0,
        "no write failed during the handover"
    );
    // The cluster's election timeout is at most 400 ms; a write that waited
    // for an election would take longer than this.
    assert!(
        slowest < Duration::from_millis(400),
        "a write waited {slowest:?}: longer than one election timeout"
    );
    let after = status(&survivors[0]).unwrap();
    for shard in 0..SHARDS {
        let l = leader(&after, shard).expect("every shard led");
        assert_ne!(l, victim, "shard {shard} still led by the stopped node");
    }
    let stored = stored(&survivors[0], "handover");
    for ts in acked.lock().unwrap().iter() {
        for h in 0..24 {
            assert!(
                stored.contains(&(format!("h{h}"), *ts)),
                "acknowledged point h{h}@{ts} lost"
            );
        }
    }
}

/// Every shard's (leader, term), as node `http` sees it.
fn leadership(http: &str) -> Option<Vec<(Option<u64>, u64)>> {
    let s = status(http)?;
    Some(
        (0..SHARDS)
            .map(|i| (leader(&s, i), s["shards"][i]["term"].as_u64().unwrap_or(0)))
            .collect(),
    )
}

#[test]
fn a_client_flood_over_nats_changes_no_leader() {
    let cluster = Cluster::start(&[]);
    // Settled: the same leaders and terms seen twice, a second apart.
    let mut before = leadership(&cluster.http(1)).unwrap();
    wait_until(Duration::from_secs(20), "leadership settled", || {
        std::thread::sleep(Duration::from_secs(1));
        let now = leadership(&cluster.http(1)).unwrap();
        let settled = now == before;
        before = now;
        settled
    });
    // About 0.4 MB per message, published without waiting for acks: far more
    // than the nodes take, so NATS sheds it as slow-consumer traffic.
    let message: String = (0..5_000)
        .map(|i| {
            format!(
                "flood,host=h{:02} v={i} {}\n",
                i % 50,
                1_767_225_600_000_000_000_i64 + i as i64 * 1_000_000_000
            )
        })
        .collect();
    let url = cluster.server.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood_for = Duration::from_secs(6);
    let published = runtime.block_on(async {
        let mut producers = Vec::new();
        for _ in 0..3 {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let body = bytes::Bytes::from(message.clone());
            producers.push(tokio::spawn(async move {
                let until = tokio::time::Instant::now() + flood_for;
                let mut sent = 0u64;
                while tokio::time::Instant::now() < until {
                    let reply = client.new_inbox();
                    if client
                        .publish_with_reply("chronicle.ingest.flood", reply, body.clone())
                        .await
                        .is_ok()
                    {
                        sent += 1;
                    }
                    if sent.is_multiple_of(16) {
                        tokio::task::yield_now().await;
                    }
                }
                let _ = client.flush().await;
                sent
            }));
        }
        // Leadership, sampled through the flood from every node.
        let flood_started = Instant::now();
        let mut changes = Vec::new();
        let until = tokio::time::Instant::now() + flood_for;
        while tokio::time::Instant::now() < until {
            for id in 1..=3 {
                let http = cluster.http(id);
                let seen = tokio::task::spawn_blocking(move || leadership(&http))
                    .await
                    .unwrap();
                if let Some(seen) = seen {
                    if seen
                        .iter()
                        .zip(&before)
                        .any(|(now, was)| now != was && now.0.is_some())
                    {
                        changes.push((id, flood_started.elapsed(), seen));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut published = 0;
        for p in producers {
            published += p.await.unwrap();
        }
        assert!(
            changes.is_empty(),
            "leadership changed under the flood: {changes:?} (before {before:?})"
        );
        published
    });
    let after = leadership(&cluster.http(1)).unwrap();
    eprintln!("{published} messages of 0.4 MB published in {flood_for:?}; leadership before {before:?}, after {after:?}");
    assert_eq!(after, before, "no election during or after the flood");
    assert!(
        published > 100,
        "the flood was a flood: {published} messages"
    );
}

/// One request over NATS to `chronicle.kv.<op>`: the JSON reply, or `None`
/// when no answer came (a killed node's request, an election).
async fn kv_request(client: &async_nats::Client, op: &str, body: Value) -> Option<Value> {
    let subject = format!("chronicle.kv.{op}");
    let payload = serde_json::to_vec(&body).unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject, payload.into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

#[test]
fn state_compare_and_set_over_nats_survives_a_kill_9_of_the_leader_and_a_watch_sees_each_change_once(
) {
    let mut cluster = Cluster::start(&["--enable-admin-api"]);
    let shard = chronicle_cluster::state::shard_of_namespace("register", SHARDS as u32) as usize;
    let victim = leader(&status(&cluster.http(1)).unwrap(), shard).expect("a leader");
    let survivor = (1..=3).find(|&n| n != victim).unwrap();
    let survivor_http = cluster.http(survivor);

    // The operator's watch, through a node that stays up: JSON lines.
    let mut watch = Command::new(BIN)
        .args(["kv", "watch", "-n", "register", "--http", &survivor_http])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let watched = Arc::new(Mutex::new(Vec::<Value>::new()));
    let reader = {
        let out = watch.stdout.take().unwrap();
        let watched = watched.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                watched
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        })
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = cluster.server.url();
    let stop_at = Instant::now() + Duration::from_secs(6);
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let url = url.clone();
            runtime.spawn(async move {
                let client = async_nats::connect(url).await.unwrap();
                let (mut wins, mut unknown, mut n) = (Vec::new(), 0, 0);
                while Instant::now() < stop_at {
                    n += 1;
                    let get = json!({"namespace": "register", "key": "k"});
                    let Some(current) = kv_request(&client, "get", get).await else {
                        unknown += 1;
                        continue;
                    };
                    let from = match current["code"].as_u64() {
                        Some(404) => 0,
                        Some(_) => {
                            unknown += 1;
                            continue;
                        }
                        None => current["revision"].as_u64().unwrap(),
                    };
                    let value = format!("c{c}-{n}");
                    let put = json!({"namespace": "register", "key": "k", "value": value, "revision": from});
                    match kv_request(&client, "put", put).await {
                        Some(r) if r["code"].is_null() => {
                            wins.push((from, r["revision"].as_u64().unwrap(), value))
                        }
                        Some(r) if r["code"] == 409 => {}
                        _ => unknown += 1,
                    }
                }
                (wins, unknown)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill(victim);
    let mut wins = Vec::new();
    let mut unknown = 0;
    for c in clients {
        let (w, u) = runtime.block_on(c).unwrap();
        wins.extend(w);
        unknown += u;
    }
    assert!(wins.len() > 20, "only {} compare-and-sets won", wins.len());
    let mut from_revisions = BTreeSet::new();
    for (from, _, value) in &wins {
        assert!(
            from_revisions.insert(*from),
            "two compare-and-sets won from revision {from} (one wrote {value})"
        );
    }

    // The history, read over HTTP from the survivor.
    let mut history: Vec<(u64, String)> = Vec::new();
    let mut after = 0;
    loop {
        let mut resp = agent()
            .post(&format!("{survivor_http}/api/v1/kv/watch"))
            .send(json!({"namespace": "register", "after": after}).to_string())
            .unwrap();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        for c in v["changes"].as_array().unwrap() {
            history.push((
                c["revision"].as_u64().unwrap(),
                c["value"].as_str().unwrap().to_string(),
            ));
        }
        after = v["revision"].as_u64().unwrap();
        if v["more"] != json!(true) {
            break;
        }
    }
    for (from, revision, value) in &wins {
        assert!(
            history.contains(&(*revision, value.clone())),
            "acknowledged put at revision {revision} (from {from}) lost"
        );
    }
    let last = history.last().unwrap().0;
    wait_until(Duration::from_secs(30), "the CLI watch caught up", || {
        watched
            .lock()
            .unwrap()
            .last()
            .and_then(|c| c["revision"].as_u64())
            == Some(last)
    });
    watch.kill().unwrap();
    watch.wait().unwrap();
    reader.join().unwrap();
    let seen: Vec<(u64, String)> = watched
        .lock()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["revision"].as_u64().unwrap(),
                c["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen, history,
        "the watch missed, repeated or reordered a change"
    );
    eprintln!(
        "{} wins, {unknown} unknown outcomes, {} changes; node {victim} killed",
        wins.len(),
        history.len()
    );

    // Hostile requests get 4xx, and the node keeps serving.
    let client = runtime.block_on(async_nats::connect(url)).unwrap();
    let huge = "x".repeat(chronicle_storage::state::MAX_STATE_VALUE_BYTES + 1);
    for (op, body, code) in [
        ("get", json!("not an object"), 400),
        ("nope", json!({}), 404),
        (
            "put",
            json!({"namespace": "bad/ns", "key": "k", "value": "v"}),
            400,
        ),
        (
            "put",
            json!({"namespace": "register", "key": "", "value": "v"}),
            400,
        ),
        ("put", json!({"namespace": "register", "key": "k"}), 400),
        (
            "ls",
            json!({"namespace": "register", "limit": 1_000_000}),
            400,
        ),
        (
            "watch",
            json!({"namespace": "register", "wait_ms": 1_000_000_000u64}),
            400,
        ),
        (
            "get",
            json!({"namespace": "register", "key": "k", "extra": 1}),
            400,
        ),
    ] {
        let r = runtime
            .block_on(kv_request(&client, op, body))
            .expect("an answer");
        assert_eq!(r["code"], code, "{op}: {r}");
    }
    // A value over the limit (too large for a NATS message too: over HTTP).
    let resp = agent()
        .post(&format!("{survivor_http}/api/v1/kv/put"))
        .send(json!({"namespace": "register", "key": "k", "value": huge}).to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let big_body = vec![b' '; 7 << 20];
    let resp = agent()
        .post(&format!("{survivor_http}/api/v1/kv/put"))
        .send(&big_body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(ready(&survivor_http).0, 200, "the node stays ready");
    let r = runtime
        .block_on(kv_request(
            &client,
            "put",
            json!({"namespace": "register", "key": "after", "value": "ok"}),
        ))
        .unwrap();
    assert!(r["revision"].as_u64().is_some(), "{r}");
}

/// What the Helm chart's hooks run (docs/kubernetes.md): `chronicle cluster
/// scale --members N` adds a joined node that is still starting (it waits
/// for it), a second run changes nothing, and `--shrink-only` to fewer
/// members empties the highest node without adding anyone.
#[test]
fn cluster_scale_adds_a_joining_node_once_it_is_up_and_empties_it_again() {
    let cluster = Cluster::start(&[]);
    let (code, body) = write(&cluster.http(1), &lines("scaled", 6, 1, 1));
    assert_eq!(code, 204, "{body}");
    // Scale to 4 before node 4 exists: the command waits for it.
    let scale = Command::new(BIN)
        .args([
            "cluster",
            "scale",
            "--members",
            "4",
            "--wait",
            "60s",
            "--http",
            &cluster.http(1),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let scale = std::thread::spawn(move || scale.wait_with_output().unwrap());
    std::thread::sleep(Duration::from_secs(2));
    let dir4 = tempfile::tempdir().unwrap();
    let node4 = NodeProcess::start(
        BIN,
        dir4.path(),
        Some(&cluster.server.url()),
        &["--node-id", "4", "--join"],
    );
    let out = scale.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = status(&cluster.http(2)).unwrap();
    assert_eq!(replicas_on(&view, 4), 2, "{view}");
    // Again: nothing to do.
    let out = cli(&[
        "cluster",
        "scale",
        "--members",
        "4",
        "--http",
        &cluster.http(1),
    ]);
    assert!(!out.contains("moved shard"), "{out}");
    // Shrinking to 3 empties node 4 and adds nobody.
    let out = cli(&[
        "cluster",
        "scale",
        "--members",
        "3",
        "--shrink-only",
        "--http",
        &cluster.http(1),
    ]);
    assert!(out.contains("node 4 holds no replica now"), "{out}");
    let view = status(&cluster.http(1)).unwrap();
    assert_eq!(replicas_on(&view, 4), 0, "{view}");
    for s in view["shards"].as_array().unwrap() {
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3, "{view}");
    }
    drop(node4);
}

#[test]
fn a_backup_of_three_nodes_takes_each_shard_from_its_leader_and_restores_into_one_node() {
    let cluster = Cluster::start(&["--enable-admin-api"]);
    for ts in 0..50 {
        let (code, body) = write(&cluster.http(1 + ts as u64 % 3), &lines("cpu", 12, ts, ts));
        assert_eq!(code, 204, "{body}");
    }
    let expected = stored(&cluster.http(1), "cpu");
    assert_eq!(expected.len(), 12 * 50);
    let dir = tempfile::tempdir().unwrap();

    // Node 1 alone leads only some shards: the take is refused, names the
    // way out, and leaves no half backup behind.
    let s = status(&cluster.http(1)).unwrap();
    if (0..SHARDS).any(|i| leader(&s, i) != Some(1)) {
        let partial = dir.path().join("partial");
        let out = Command::new(BIN)
            .args(["backup", "take", "--http", &cluster.http(1), "--out"])
            .arg(&partial)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(why.contains("not led by any node given"), "{why}");
        assert!(!partial.exists());
    }

    let backup = dir.path().join("backup");
    let nodes = format!(
        "{},{},{}",
        cluster.http(1),
        cluster.http(2),
        cluster.http(3)
    );
    let out = Command::new(BIN)
        .args(["backup", "take", "--http", &nodes, "--out"])
        .arg(&backup)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("backup of {SHARDS} shards")),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Into one fresh node with one shard: the same points.
    let target_dir = tempfile::tempdir().unwrap();
    let target = NodeProcess::start(BIN, target_dir.path(), None, &["--enable-admin-api"]);
    let out = Command::new(BIN)
        .args(["backup", "restore", "--http", &target.http, "--from"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored(&target.http, "cpu"), expected);
}

/// The change feed over real processes and a real nats-server: a consumer
/// through the Rust API (`WriteFeed`, on its own NATS connection) sees every
/// acknowledged write, with its points, once, across a `kill -9` of a shard
/// leader (the new leader publishes again what it applied lately; repeats
/// are dropped), and nothing that was not written.
#[test]
fn the_write_feed_delivers_every_acknowledged_write_once_across_a_kill_9_of_a_leader() {
    use chronicle_bus::{Bus, NatsBus, NatsOptions};
    use chronicle_cluster::feed::{FeedItem, WriteFeed};

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[cluster]\nwrite_event_points = true\n").unwrap();
    let path: &'static str = Box::leak(config.path().display().to_string().into_boxed_str());
    let mut cluster = Cluster::start(&["--config", path]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bus = runtime
        .block_on(NatsBus::connect(NatsOptions {
            urls: vec![cluster.server.url()],
            ..Default::default()
        }))
        .unwrap();
    let mut feed = runtime
        .block_on(WriteFeed::subscribe(&bus as &dyn Bus, "chronicle"))
        .unwrap();
    let items = Arc::new(Mutex::new(Vec::<FeedItem>::new()));
    let consumer = {
        let items = items.clone();
        runtime.spawn(async move {
            while let Some(item) = feed.next().await {
                items.lock().unwrap().push(item);
            }
        })
    };

    let victim = leader(&status(&cluster.http(1)).unwrap(), 0).unwrap();
    let via_http = cluster.http(if victim == 1 { 2 } else { 1 });
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, http) = (acked.clone(), stop.clone(), via_http.clone());
        std::thread::spawn(move || {
            let mut ts = 1_000;
            let limit = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                ts += 1;
                if write(&http, &lines("fed", 8, ts, ts)).0 == 204 {
                    acked.lock().unwrap().push(ts);
                }
            }
            ts
        })
    };
    wait_until(Duration::from_secs(30), "writes before the kill", || {
        acked.lock().unwrap().len() >= 20
    });
    let before = acked.lock().unwrap().len();
    cluster.kill(victim);
    wait_until(Duration::from_secs(30), "writes after the kill", || {
        acked.lock().unwrap().len() >= before + 20
    });
    stop.store(true, Ordering::Relaxed);
    let last_ts = writer.join().unwrap();
    let acked: BTreeSet<i64> = acked.lock().unwrap().iter().copied().collect();

    // Every acknowledged point arrives (bounded wait), once.
    let seen = |items: &[FeedItem]| {
        let mut points = Vec::new();
        for item in items {
            if let FeedItem::Write(e) = item {
                if e.metric != "fed" {
                    continue;
                }
                for &(pos, ts, value) in e.points.as_deref().unwrap_or_default() {
                    let host = e.series[pos]["host"].clone();
                    points.push((host, ts, value));
                }
            }
        }
        points
    };
    let complete = |points: &[(String, i64, f64)]| {
        let have: BTreeSet<(String, i64)> =
            points.iter().map(|(h, t, _)| (h.clone(), *t)).collect();
        acked
            .iter()
            .all(|&ts| (0..8).all(|h| have.contains(&(format!("h{h}"), ts))))
    };
    wait_until(
        Duration::from_secs(30),
        "the feed delivered every acknowledged write",
        || complete(&seen(&items.lock().unwrap())),
    );
    std::thread::sleep(Duration::from_secs(1));
    consumer.abort();
    let items = items.lock().unwrap().clone();
    let gaps: Vec<&FeedItem> = items
        .iter()
        .filter(|i| matches!(i, FeedItem::Gap { .. }))
        .collect();
    assert!(gaps.is_empty(), "the feed reported gaps: {gaps:?}");
    let mut events = BTreeSet::new();
    for item in &items {
        if let FeedItem::Write(e) = item {
            assert!(
                events.insert((e.shard, e.index, e.part)),
                "event ({}, {}, {}) delivered twice",
                e.shard,
                e.index,
                e.part
            );
        }
    }
    let points = seen(&items);
    let mut once = BTreeSet::new();
    for (host, ts, value) in &points {
        // Nothing that was not written: each line wrote its timestamp as value.
        assert!(
            (1_001..=last_ts).contains(ts) && *value == *ts as f64 && host.starts_with('h'),
            "{host}@{ts}={value} was never written"
        );
        assert!(
            once.insert((host.clone(), *ts)),
            "{host}@{ts} delivered twice"
        );
    }
    eprintln!(
        "feed: {} events, {} points for {} acknowledged writes of 8 points; leader {victim} killed",
        events.len(),
        points.len(),
        acked.len()
    );
    cluster.stop_all_cleanly();
}

/// `chronicle_raft_snapshots_total{kind="installed",shard=S}` on a node.
fn snapshots_installed(http: &str, shard: usize) -> u64 {
    let Ok(mut r) = agent().get(format!("{http}/metrics")).call() else {
        return 0;
    };
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let shard = format!("shard=\"{shard}\"");
    text.lines()
        .filter(|l| l.starts_with("chronicle_raft_snapshots_total{"))
        .filter(|l| l.contains("kind=\"installed\"") && l.contains(&shard))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn a_200_mib_blob_round_trips_over_nats_through_a_node_that_caught_up_from_a_snapshot() {
    const SIZE: usize = 200 << 20;
    // Snapshots (and log purges) every 16 MiB: a node away while 200 MiB
    // are written can only catch up from a snapshot.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[cluster]\nsnapshot_log_bytes = 16777216\n").unwrap();
    let path: &'static str = Box::leak(config.path().display().to_string().into_boxed_str());
    let mut cluster = Cluster::start(&["--config", path, "--no-sync", "--enable-admin-api"]);
    let shard = chronicle_cluster::state::shard_of_namespace("models", SHARDS as u32) as usize;
    let first = leader(&status(&cluster.http(1)).unwrap(), shard).expect("a leader");
    let away = (1..=3).find(|&n| n != first).unwrap();
    cluster.kill(away);

    let files = tempfile::tempdir().unwrap();
    let (input, output) = (files.path().join("in.bin"), files.path().join("out.bin"));
    write_noise(&input, SIZE, 0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let put = cli(&[
        "kv",
        "put-blob",
        "-n",
        "models",
        "weights",
        input.to_str().unwrap(),
        "--http",
        &cluster.http(first),
    ]);
    eprintln!("200 MiB put over NATS in {:?}: {put}", started.elapsed());
    assert!(put.contains(&format!("{SIZE} bytes")), "{put}");

    // Back, far behind the purged log: it installs a snapshot.
    cluster.start_node(away);
    let http = cluster.http(away);
    wait_until(
        Duration::from_secs(240),
        "the returning node installs a snapshot",
        || snapshots_installed(&http, shard) > 0,
    );
    transfer_leader(&cluster.http(first), shard, away);
    assert_eq!(leader(&status(&http).unwrap(), shard), Some(away));

    // Read through the node that now leads.
    let started = Instant::now();
    cli(&[
        "kv",
        "get-blob",
        "-n",
        "models",
        "weights",
        output.to_str().unwrap(),
        "--http",
        &http,
    ]);
    eprintln!("200 MiB read back in {:?}", started.elapsed());
    assert_eq!(std::fs::metadata(&output).unwrap().len(), SIZE as u64);
    assert!(same_bytes(&input, &output), "the blob came back different");
    cluster.stop_all_cleanly();
}

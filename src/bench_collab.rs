//! `chronicle bench collab`: collaborative sessions on a node started in
//! this process, through its HTTP routes and WebSockets on loopback, with
//! participants speaking y-protocols as y-websocket does (a yrs document
//! each).
//!
//! * Edit latency: one participant of `--participants` types `--edits`
//!   edits, one every `--interval-ms`; the time from sending an edit until
//!   every other participant has applied it (the slowest of them), p50/p99.
//!   That includes the node making the edit durable before relaying it.
//! * Cross-node propagation (with `--nats-url`): three `chronicle serve`
//!   processes over that NATS server; the typist on the first node, the
//!   other participants spread over the other two, so every edit crosses
//!   the bus (durable first, then relayed); the same figure, p50/p99.
//! * Idle sessions: `--sessions` sessions opened, each with one connected,
//!   silent participant; the process's RSS growth per session (the node's
//!   session actor, document and connection, plus this process's client
//!   socket: an upper bound for the node alone).

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_collab::wire::{decode_frame, encode, ClientMessage, FrameLimits};
use clap::Args;
use serde_json::json;
use tungstenite::{Message, WebSocket};
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Text, Transact};

use crate::bench::{quantile, round3};
use crate::{Node, NodeConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Args, Debug)]
pub struct CollabBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Participants in the edited session (one types, the others receive).
    #[arg(long, default_value_t = 50)]
    participants: usize,
    /// Edits the typing participant sends.
    #[arg(long, default_value_t = 300)]
    edits: usize,
    /// Pause between edits, milliseconds.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Idle sessions opened for the memory figure.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Do not fsync the state's writes (a measurement of the rest).
    #[arg(long)]
    no_sync: bool,
    /// A NATS server for the cross-node figure (three node processes meet
    /// there); without it that figure is skipped.
    #[arg(long)]
    nats_url: Option<String>,
}

type Socket = WebSocket<TcpStream>;

fn connect(addr: &str, session: &str) -> Result<Socket, Error> {
    let url = format!("ws://{addr}/api/collab/ws/{session}?participant=bench");
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    // Small client buffers (tungstenite reads into 128 KiB by default): the
    // idle-session figure is meant to be the node's.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (socket, _) = tungstenite::client::client_with_config(url, tcp, Some(config))
        .map_err(|e| e.to_string())?;
    Ok(socket)
}

fn create(http: &str, name: &str) -> Result<String, Error> {
    let mut r = ureq::post(format!("{http}/api/collab/sessions/create"))
        .content_type("application/json")
        .send(json!({"name": name, "participant": "bench"}).to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&r.body_mut().read_to_vec()?)?;
    Ok(v["id"].as_str().ok_or("no id")?.to_string())
}

/// The number of the last `|n|` marker in the text (0: none).
fn last_marker(text: &str) -> usize {
    text.trim_end_matches('|')
        .rsplit('|')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn run(args: CollabBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.participants < 2 || args.edits == 0 {
        return Err("--participants must be at least 2 and --edits at least 1".into());
    }
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().expect("static address"),
        sync_writes: !args.no_sync,
        ..NodeConfig::default()
    };
    let mut section = toml::Table::new();
    section.insert(
        "max_sessions".into(),
        toml::Value::Integer(args.sessions as i64 + 16),
    );
    config
        .features
        .sections
        .insert("collab".into(), toml::Value::Table(section));
    let system = actix::System::new();
    let report = system.block_on(async move {
        let node = Node::start(config).await.map_err(|e| e.to_string())?;
        let addr = node.http_addr.to_string();
        let measured = tokio::task::spawn_blocking(move || measure(&addr, &args))
            .await
            .map_err(|e| e.to_string())?;
        node.shutdown().await;
        measured.map_err(|e| e.to_string())
    })?;
    if report.0 {
        println!("{}", report.1);
    } else {
        let v = &report.1;
        println!(
            "{} participants, {} edits: edit to everyone p50 {} ms, p99 {} ms, max {} ms",
            v["participants"],
            v["edits"],
            v["edit_to_all_p50_ms"],
            v["edit_to_all_p99_ms"],
            v["edit_to_all_max_ms"]
        );
        println!(
            "{} idle sessions opened in {} s; RSS per idle session {} KiB",
            v["sessions"], v["sessions_open_seconds"], v["rss_per_idle_session_kib"]
        );
        match &v["cross_node"] {
            serde_json::Value::Null => {
                println!("cross-node propagation: not measured (give --nats-url)")
            }
            c => println!(
                "across three nodes: edit to everyone p50 {} ms, p99 {} ms, max {} ms",
                c["edit_to_all_p50_ms"], c["edit_to_all_p99_ms"], c["edit_to_all_max_ms"]
            ),
        }
    }
    Ok(())
}

/// Edit-to-everyone latencies (ms) of the edits that reached everyone,
/// and how many did not within 30 s: the typist on `typist`, the other
/// participants spread over `receivers` (host:port each).
fn edit_latency(
    typist_addr: &str,
    receivers_at: &[String],
    id: &str,
    args: &CollabBench,
) -> Result<(Vec<f64>, usize), Error> {
    eprintln!("{} participants joining session {id}", args.participants);

    // The receivers: each applies what arrives and notes when each edit
    // number first shows up in its text.
    let stop = Arc::new(AtomicBool::new(false));
    let arrivals: Arc<Mutex<Vec<Vec<Option<Instant>>>>> = Arc::new(Mutex::new(Vec::new()));
    let mut receivers = Vec::new();
    for r in 0..args.participants - 1 {
        let mut socket = connect(&receivers_at[r % receivers_at.len()], id)?;
        socket
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(100)))?;
        arrivals
            .lock()
            .expect("no panics")
            .push(vec![None; args.edits + 1]);
        let (stop, arrivals) = (stop.clone(), arrivals.clone());
        receivers.push(std::thread::spawn(move || {
            let doc = yrs::Doc::new();
            let text = doc.get_or_insert_text("query");
            let mut seen = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let frame = match socket.read() {
                    Ok(Message::Binary(b)) => b,
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => return,
                };
                let Ok(messages) = decode_frame(&frame, &FrameLimits::default()) else {
                    continue;
                };
                for m in messages {
                    match m {
                        ClientMessage::SyncStep1(sv) => {
                            let diff = doc.transact().encode_state_as_update_v1(&sv);
                            let _ = socket.send(Message::Binary(encode::sync_step2(&diff).into()));
                        }
                        ClientMessage::SyncStep2(u) | ClientMessage::Update(u) => {
                            if let Ok(u) = yrs::Update::decode_v1(&u) {
                                let _ = doc.transact_mut().apply_update(u);
                            }
                            let now = Instant::now();
                            let n = last_marker(&text.get_string(&doc.transact()));
                            if n > seen {
                                let mut a = arrivals.lock().expect("no panics");
                                for k in seen + 1..=n.min(a[r].len() - 1) {
                                    a[r][k] = Some(now);
                                }
                                seen = n;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }));
    }
    // The typist.
    let mut typist = connect(typist_addr, id)?;
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("query");
    std::thread::sleep(Duration::from_millis(500));
    let mut sent = Vec::with_capacity(args.edits + 1);
    sent.push(Instant::now());
    for k in 1..=args.edits {
        let update = {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, &format!("|{k}|"));
            txn.encode_update_v1()
        };
        sent.push(Instant::now());
        typist.send(Message::Binary(encode::update(&update).into()))?;
        // Drain what the node sends this participant (its sync step 1).
        typist.get_mut().set_nonblocking(true)?;
        while let Ok(_m) = typist.read() {}
        typist.get_mut().set_nonblocking(false)?;
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
    // Everyone has the last edit, or 30 s passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = arrivals
            .lock()
            .expect("no panics")
            .iter()
            .all(|a| a[args.edits].is_some());
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    let arrivals = arrivals.lock().expect("no panics");
    let mut latencies = Vec::new();
    let mut missing = 0usize;
    for k in 1..=args.edits {
        let slowest = arrivals.iter().map(|a| a[k]).collect::<Option<Vec<_>>>();
        match slowest {
            Some(times) => {
                let last = times.into_iter().max().expect("receivers");
                latencies.push(last.saturating_duration_since(sent[k]).as_secs_f64() * 1e3);
            }
            None => missing += 1,
        }
    }
    drop(typist);
    if latencies.is_empty() {
        return Err("no edit reached every participant".into());
    }
    Ok((latencies, missing))
}

/// Three node processes over `nats`; the typist on the first, everyone
/// else on the other two.
fn cross_node(nats: &str, args: &CollabBench) -> Result<serde_json::Value, Error> {
    use crate::bench_failover::{all_led, free_port, start_node, wait};
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(id, dir.path(), nats, 3, free_port()?)?);
    }
    eprintln!("cross-node: three node processes starting over {nats}");
    wait("every shard led", Duration::from_secs(60), || {
        all_led(&nodes[0].http, 3)
    })?;
    let id = create(&nodes[0].http, "bench across nodes")?;
    let addr = |i: usize| nodes[i].http.trim_start_matches("http://").to_string();
    let (mut latencies, missing) = edit_latency(&addr(0), &[addr(1), addr(2)], &id, args)?;
    drop(nodes);
    Ok(json!({
        "nodes": 3,
        "edits_not_everywhere_in_30s": missing,
        "edit_to_all_p50_ms": round3(quantile(&mut latencies, 0.5)),
        "edit_to_all_p99_ms": round3(quantile(&mut latencies, 0.99)),
        "edit_to_all_max_ms": round3(quantile(&mut latencies, 1.0)),
    }))
}

fn measure(addr: &str, args: &CollabBench) -> Result<(bool, serde_json::Value), Error> {
    let http = format!("http://{addr}");
    let id = create(&http, "bench")?;
    let (mut latencies, missing) = edit_latency(addr, &[addr.to_string()], &id, args)?;

    // Idle sessions.
    eprintln!("opening {} idle sessions", args.sessions);
    std::thread::sleep(Duration::from_millis(500));
    let before = crate::bench::rss_bytes();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let id = create(&http, &format!("idle {i}"))?;
        idle.push(connect(addr, &id)?);
    }
    let open_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = crate::bench::rss_bytes();
    let per_session = after.saturating_sub(before) / args.sessions.max(1) as u64;
    drop(idle);

    let cross = match &args.nats_url {
        Some(nats) => cross_node(nats, args)?,
        None => serde_json::Value::Null,
    };
    Ok((
        args.json,
        json!({
            "participants": args.participants,
            "edits": args.edits,
            "interval_ms": args.interval_ms,
            "edits_not_everywhere_in_30s": missing,
            "edit_to_all_p50_ms": round3(quantile(&mut latencies, 0.5)),
            "edit_to_all_p99_ms": round3(quantile(&mut latencies, 0.99)),
            "edit_to_all_max_ms": round3(quantile(&mut latencies, 1.0)),
            "sync_writes": !args.no_sync,
            "sessions": args.sessions,
            "sessions_open_seconds": round3(open_seconds),
            "rss_per_idle_session_kib": round3(per_session as f64 / 1024.0),
            "cross_node": cross,
        }),
    ))
}

//! Traces across two nodes: a write sent to one node for a shard the other
//! leads is exported (OTLP/HTTP, protobuf) by both nodes to a local
//! receiver, and its spans form one trace: HTTP -> ingest -> the forward on
//! the first node, the forwarded request -> shard apply on the second.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronicle_storage::Label;
use chronicle_tests::{wait_until, NatsServer, NodeProcess};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

/// An OTLP/HTTP receiver: every POST body it gets, answered 200.
fn receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let got = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let got = got.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                // Requests on one connection, one after another.
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if first {
                            assert!(line.starts_with("POST /v1/traces "), "{line}");
                            first = false;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    got.lock().unwrap().push(body);
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (url, bodies)
}

#[derive(Debug, Clone)]
struct Span {
    node: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

fn spans(bodies: &[Vec<u8>]) -> Vec<Span> {
    let mut out = Vec::new();
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf");
        for rs in request.resource_spans {
            let node = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.instance.id")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        node: node.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
    }
    out
}

fn get(http: &str, path: &str) -> Value {
    let mut r = ureq::get(format!("{http}{path}")).call().unwrap();
    serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap()
}

#[test]
fn one_write_forwarded_between_two_nodes_is_one_trace() {
    // Exported every 200 ms rather than every 5 s.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    let (otlp, bodies) = receiver();
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeProcess> = (1..=2)
        .map(|id| {
            NodeProcess::start(
                BIN,
                &dir.path().join(format!("n{id}")),
                Some(&nats.url()),
                &[
                    "--node-id",
                    &id.to_string(),
                    "--initial-nodes",
                    "1,2",
                    "--shards",
                    "4",
                    "--replication",
                    "2",
                    "--otlp-endpoint",
                    &otlp,
                ],
            )
        })
        .collect();
    let http1 = nodes[0].http.clone();
    wait_until(Duration::from_secs(30), "every shard led", || {
        let s = get(&http1, "/api/v1/cluster/status");
        s["shards"]
            .as_array()
            .is_some_and(|a| a.len() == 4 && a.iter().all(|s| s["leader"].is_u64()))
    });
    // A shard node 2 leads, and a series in it.
    let status = get(&http1, "/api/v1/cluster/status");
    let led_by_2: BTreeSet<u32> = status["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["leader"] == 2)
        .map(|s| s["id"].as_u64().unwrap() as u32)
        .collect();
    assert!(!led_by_2.is_empty(), "node 2 leads no shard: {status}");
    let host = (0..1000)
        .map(|h| format!("h{h}"))
        .find(|h| {
            let shard = chronicle_cluster::shard_of("traced", &[Label::new("host", h.as_str())], 4);
            led_by_2.contains(&shard)
        })
        .unwrap();

    // The client's own trace context is the root of the write's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let status = ureq::post(format!("{http1}/write"))
        .header("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send(format!("traced,host={host} value=1 1700000000000000000\n"))
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 204);

    let want: BTreeSet<(&str, &str)> = [
        ("1", "http_write"),
        ("1", "ingest_batch"),
        ("1", "write_batch"),
        ("1", "cluster_forward"),
        ("2", "cluster_serve"),
        ("2", "shard_apply"),
    ]
    .into();
    let trace = hex_bytes(trace_id);
    let mut ours: Vec<Span>;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all = spans(&bodies.lock().unwrap());
        ours = all.iter().filter(|s| s.trace == trace).cloned().collect();
        let have: BTreeSet<(String, String)> = ours
            .iter()
            .map(|s| (instance(&s.node), s.name.clone()))
            .collect();
        if want
            .iter()
            .all(|(n, s)| have.contains(&(n.to_string(), s.to_string())))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the write's trace lacks spans after 20 s: it has {have:?}; all spans: {:?}",
            all.iter()
                .map(|s| (
                    instance(&s.node),
                    s.name.as_str(),
                    hex(&s.trace),
                    hex(&s.id),
                    hex(&s.parent)
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One tree: every span's parent is in the trace, but the top one's,
    // which is the client's.
    let ids: BTreeSet<&Vec<u8>> = ours.iter().map(|s| &s.id).collect();
    let by_name: BTreeMap<&str, &Span> = ours.iter().map(|s| (s.name.as_str(), s)).collect();
    for s in &ours {
        if s.name == "http_write" {
            assert_eq!(s.parent, hex_bytes("00f067aa0ba902b7"), "{s:?}");
        } else {
            assert!(
                ids.contains(&s.parent),
                "{s:?}'s parent is not in the trace: {ours:#?}"
            );
        }
    }
    // The hop between the nodes: node 2's request span is a child of node 1's forward.
    assert_eq!(
        by_name["cluster_serve"].parent,
        by_name["cluster_forward"].id
    );

    // A query joins its client's trace too.
    let query_trace = "0af7651916cd43dd8448eb211c80319c";
    let status = ureq::post(format!("{http1}/query"))
        .header(
            "traceparent",
            &format!("00-{query_trace}-b7ad6b7169203331-01"),
        )
        .content_type("application/json")
        .send(r#"{"sql":"SELECT count(*) FROM traced WHERE time >= 0"}"#)
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
    // A malformed context is ignored: the write succeeds in a trace of its own.
    for bad in ["garbage", "00-zz-zz-01", &"f".repeat(10_000)] {
        let status = ureq::post(format!("{http1}/write"))
            .header("traceparent", bad)
            .send("traced,host=bad value=1 1700000000000000000\n")
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 204, "{bad}");
    }
    let query_trace = hex_bytes(query_trace);
    wait_until(Duration::from_secs(20), "the query's spans", || {
        let names: BTreeSet<String> = spans(&bodies.lock().unwrap())
            .into_iter()
            .filter(|s| s.trace == query_trace)
            .map(|s| s.name)
            .collect();
        names.contains("http_query") && names.contains("query")
    });
    assert_eq!(
        ureq::get(format!("{http1}/health/ready"))
            .call()
            .unwrap()
            .status(),
        200
    );
    drop(nodes);
}

fn instance(debug_value: &str) -> String {
    // `Some(StringValue("1"))`
    debug_value
        .split('"')
        .nth(1)
        .unwrap_or(debug_value)
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

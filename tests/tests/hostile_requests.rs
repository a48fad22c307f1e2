//! A node process under hostile requests: each is refused with a 4xx within a
//! second, over HTTP and over the bus, while the node's peak resident memory
//! stays under a stated bound and it keeps serving.
//!
//! Every request here asks for something that, built naively, is terabytes:
//! 10^12 PromQL steps, a subquery of 3 * 10^12 inner steps, times of 1e300
//! seconds, a line whose tags repeat under thousands of fields. A remote-write
//! body whose one large label set sits under many samples is written (the
//! label set is kept once), within the same memory bound.

use std::io::Write as _;
use std::time::{Duration, Instant};

use chronicle_ingest::remote_write::{
    encode_remote_write, ProtoLabel, ProtoSample, TimeSeries, WriteRequest,
};
use chronicle_tests::{NatsServer, NodeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

/// The node's peak resident set may not pass this, whatever it was asked.
const PEAK_RSS_BOUND: u64 = 256 << 20;

struct Answer {
    status: u16,
    body: String,
    took: Duration,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn get(url: &str) -> Answer {
    let started = Instant::now();
    let mut resp = agent().get(url).call().expect("request sent");
    Answer {
        status: resp.status().as_u16(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
        took: started.elapsed(),
    }
}

fn post(url: &str, content_type: &str, body: &[u8]) -> Answer {
    let started = Instant::now();
    let mut resp = agent()
        .post(url)
        .content_type(content_type)
        .send(body)
        .expect("request sent");
    Answer {
        status: resp.status().as_u16(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// A 4xx, within a second, with a JSON body.
fn refused(what: &str, a: &Answer) {
    assert!(
        (400..500).contains(&a.status),
        "{what}: status {} ({})",
        a.status,
        a.body
    );
    assert!(a.took < Duration::from_secs(1), "{what}: took {:?}", a.took);
    let json: serde_json::Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", a.body));
    assert!(json.get("error").is_some(), "{what}: {json}");
    eprintln!("{what}: {} in {:?}: {}", a.status, a.took, a.body);
}

fn peak_rss(node: &NodeProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn hostile_requests_get_4xx_fast_and_the_node_stays_small() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("node.toml");
    std::fs::File::create(&config)
        .unwrap()
        .write_all(b"[query]\nmax_points = 1000\n")
        .unwrap();
    let node = NodeProcess::start(
        BIN,
        &data.path().join("data"),
        Some(&nats.url()),
        &["--config", config.to_str().unwrap()],
    );
    let http = node.http.clone();

    // 5,000 points in 50 series: more than max_points.
    let lines: String = (0..5_000)
        .map(|i| {
            format!(
                "load,s=s{:02} value={i} {}\n",
                i % 50,
                1_000_000_000 + i as i64 * 1_000_000_000
            )
        })
        .collect();
    let a = post(&format!("{http}/write"), "text/plain", lines.as_bytes());
    assert_eq!(a.status, 204, "{}", a.body);

    // PromQL: 10^12 steps (start 0 ns to now at 1 ms), on /query.
    refused(
        "/query promql 1ms steps",
        &post(
            &format!("{http}/query"),
            "application/json",
            br#"{"promql":"1","start":0,"step":"1ms"}"#,
        ),
    );
    // A subquery of 100 years at 1 ms.
    refused(
        "/api/v1/query subquery x[100y:1ms]",
        &get(&format!(
            "{http}/api/v1/query?query=x%5B100y%3A1ms%5D&time=1000"
        )),
    );
    refused(
        "/api/v1/query_range subquery",
        &get(&format!(
            "{http}/api/v1/query_range?query=max_over_time(load%5B100y%3A1ms%5D)&start=0&end=60&step=15"
        )),
    );
    // Times that overflow i64 milliseconds.
    refused(
        "/api/v1/query_range 1e300",
        &get(&format!(
            "{http}/api/v1/query_range?query=1&start=-1e300&end=1e300&step=1"
        )),
    );
    // The same range at a huge step is a few steps: answered, no overflow.
    let a = get(&format!(
        "{http}/api/v1/query_range?query=load&start=-1e300&end=1e300&step=1e15"
    ));
    assert_eq!(a.status, 200, "{}", a.body);

    // The JSON selection: "limit": 1 is read as one point, not all of them.
    let a = post(
        &format!("{http}/query"),
        "application/json",
        br#"{"metric":"load","start":0,"limit":1}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let json: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(json["series"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(
        json["series"][0]["points"].as_array().unwrap().len(),
        1,
        "{json}"
    );
    assert_eq!(json["truncated"], true, "{json}");
    // The first point in label order: s=s00's first sample.
    assert_eq!(json["series"][0]["labels"]["s"], "s00", "{json}");
    // Without a limit, more than max_points is refused (while reading).
    refused(
        "/query selection over max_points",
        &post(
            &format!("{http}/query"),
            "application/json",
            br#"{"metric":"load","start":0}"#,
        ),
    );

    // Remote write: one 120 KiB label set over 50,000 samples (120 GB if
    // every sample got its own copy, 6 GB for 50,000). The series is kept
    // once, so it is written, within the memory bound below.
    let label_set = |name: &str| {
        let mut labels = vec![ProtoLabel {
            name: "__name__".into(),
            value: name.into(),
        }];
        for i in 0..60 {
            labels.push(ProtoLabel {
                name: format!("l{i:02}"),
                value: "v".repeat(2_000),
            });
        }
        labels
    };
    let shared = TimeSeries {
        labels: label_set("amplified"),
        samples: (0..50_000)
            .map(|i| ProtoSample {
                value: i as f64,
                timestamp: 1_000 + i,
            })
            .collect(),
        histograms: Vec::new(),
    };
    let a = post(
        &format!("{http}/api/v1/write"),
        "application/x-protobuf",
        &encode_remote_write(&WriteRequest {
            timeseries: vec![shared],
        }),
    );
    assert_eq!(
        a.status, 204,
        "a large label set over many samples: {}",
        a.body
    );
    // Past a million samples (empty ones: 2 MB of body) it is refused by
    // count before any is built.
    let many = TimeSeries {
        labels: label_set("amplified"),
        samples: vec![ProtoSample::default(); 1_000_001],
        histograms: Vec::new(),
    };
    let a = post(
        &format!("{http}/api/v1/write"),
        "application/x-protobuf",
        &encode_remote_write(&WriteRequest {
            timeseries: vec![many],
        }),
    );
    refused("/api/v1/write a million and one samples", &a);
    assert!(a.body.contains("request_too_large"), "{}", a.body);
    // 2,000 series with that label set each would keep 240 MB of labels: a
    // body of a few hundred KB that decompresses past the body limit.
    let wide = WriteRequest {
        timeseries: (0..2_000)
            .map(|i| TimeSeries {
                labels: label_set(&format!("wide{i}")),
                samples: vec![ProtoSample::default()],
                histograms: Vec::new(),
            })
            .collect(),
    };
    let a = post(
        &format!("{http}/api/v1/write"),
        "application/x-protobuf",
        &encode_remote_write(&wide),
    );
    refused("/api/v1/write many series with large label sets", &a);

    // Line protocol: 60 tags of 2 KB repeated under 3,000 fields.
    let tags: String = (0..60)
        .map(|i| format!(",t{i:02}={}", "v".repeat(2_000)))
        .collect();
    let fields: Vec<String> = (0..3_000).map(|i| format!("f{i}=1")).collect();
    let line = format!("wide{tags} {} 1000000000\n", fields.join(","));
    refused(
        "/write fields x tags",
        &post(&format!("{http}/write"), "text/plain", line.as_bytes()),
    );

    // OTLP: a histogram point of 10,000 buckets whose 60 attributes of 2 KB
    // every bucket series would copy (1.2 GB of labels from a 210 KB body).
    let attributes: String = (0..60)
        .map(|i| {
            format!(
                r#"{{"key":"a{i:02}","value":{{"stringValue":"{}"}}}}"#,
                "v".repeat(2_000)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let bounds: Vec<String> = (1..10_000).map(|b| b.to_string()).collect();
    let counts: Vec<&str> = vec!["\"1\""; 10_000];
    let otlp = format!(
        r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"amp","histogram":{{"aggregationTemporality":2,"dataPoints":[{{"timeUnixNano":"1700000000000000000","count":"10000","sum":1.0,"bucketCounts":[{}],"explicitBounds":[{}],"attributes":[{}]}}]}}}}]}}]}}]}}"#,
        counts.join(","),
        bounds.join(","),
        attributes
    );
    let a = post(
        &format!("{http}/v1/metrics"),
        "application/json",
        otlp.as_bytes(),
    );
    refused("/v1/metrics histogram buckets x attributes", &a);
    assert!(
        a.body.contains("request_too_large"),
        "the bound refused it: {}",
        a.body
    );

    // Over the bus: the same PromQL request, answered with an error at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        for body in [
            r#"{"promql":"1","start":0,"step":"1ms"}"#,
            r#"{"promql":"count_over_time(load[100y:1ms])"}"#,
            r#"{"promql":"1","start":"now","step":"1ms","timeout":"forever"}"#,
        ] {
            let started = Instant::now();
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                client.request("chronicle.query", body.to_string().into()),
            )
            .await
            .expect("reply in time")
            .expect("request");
            let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert!(json.get("error").is_some(), "{body}: {json}");
            assert!(started.elapsed() < Duration::from_secs(1), "{body}");
            eprintln!("bus {body}: {json} in {:?}", started.elapsed());
        }
        // A bad timeout header is refused too.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Chronicle-Timeout", "soon");
        let reply = client
            .request_with_headers("chronicle.query", headers, r#"{"promql":"1"}"#.into())
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(json["error"]["code"], "bad_request", "{json}");
    });

    // Still healthy, still answering, and small.
    let a = get(&format!("{http}/api/v1/query?query=count(load)&time=5000"));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("\"50\""), "{}", a.body);
    let peak = peak_rss(&node);
    eprintln!(
        "peak RSS {} MiB (bound {} MiB)",
        peak >> 20,
        PEAK_RSS_BOUND >> 20
    );
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB", peak >> 20);
    let status = node.stop();
    assert!(status.success(), "node exited with {status}");
}

/// The fault-injection routes: 404 on a node without fault injection, 4xx
/// for every bad parameter on one with it, and the node stays ready.
#[test]
fn bad_fault_injection_requests_get_4xx_and_the_node_stays_ready() {
    let data = tempfile::tempdir().unwrap();
    let plain = NodeProcess::start(BIN, &data.path().join("plain"), None, &[]);
    for path in [
        "/debug/faults/rule?subject=%3E&drop=0.5",
        "/debug/faults/clock?offset_ms=1",
    ] {
        let a = post(&format!("{}{path}", plain.http), "text/plain", b"");
        assert_eq!(a.status, 404, "{path} without fault injection: {}", a.body);
    }
    drop(plain);
    let node = NodeProcess::start(
        BIN,
        &data.path().join("faulty"),
        None,
        &["--allow-fault-injection"],
    );
    for path in [
        "/debug/faults/rule?subject=%3E",
        "/debug/faults/rule?subject=%3E&drop=2",
        "/debug/faults/rule?subject=%3E&delay_ms=999999",
        "/debug/faults/rule?subject=a..b&drop=0.1",
        "/debug/faults/rule?subject=%3E&drop=0.1&duplicate=true",
        "/debug/faults/disk?point=nowhere&fault=eio",
        "/debug/faults/disk?point=storage::write&fault=meteor",
        "/debug/faults/disk?point=storage::write&fault=slow&ms=0",
        "/debug/faults/clock?offset_ms=999999999999999",
        "/debug/faults/clock?offset_ms=soon",
        "/debug/faults/partition?from=x",
    ] {
        refused(
            path,
            &post(&format!("{}{path}", node.http), "text/plain", b""),
        );
    }
    let ready = get(&format!("{}/health/ready", node.http));
    assert_eq!(ready.status, 200, "{}", ready.body);
}

//! The Prometheus HTTP API of an in-process node: instant and range queries
//! (GET and POST form), series, labels, label values, metadata, buildinfo,
//! Prometheus's error format, `{"promql": ...}` on /query, and an over-limit
//! query answered with an error while a small one beside it succeeds; OTLP
//! resources as the series Prometheus users expect (`job`, `instance`,
//! `target_info`).

use chronicle::config::{IngestSettings, QuerySettings};
use chronicle::{Node, NodeConfig};
use serde_json::Value;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(url: &str) -> (u16, Value) {
    let mut resp = agent().get(url).call().expect("GET");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON from {url}: {body}")),
    )
}

fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body = serde_urlencoded::to_string(form).unwrap();
    let mut resp = agent()
        .post(url)
        .content_type("application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .expect("POST");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

fn enc(s: &str) -> String {
    serde_urlencoded::to_string([("q", s)]).unwrap()[2..].to_string()
}

#[actix::test]
async fn prometheus_api_answers_like_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        query: QuerySettings {
            max_samples: 5_000,
            ..QuerySettings::default()
        },
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);

    let checks = tokio::task::spawn_blocking(move || {
        // Two counters over 10 minutes, one sample every 15 s (seconds precision).
        let mut lines = String::new();
        for i in 0..=40 {
            let t = 1_767_225_600 + i * 15;
            lines.push_str(&format!(
                "http_requests_total,job=api,instance=a value={} {t}\n",
                i * 30
            ));
            lines.push_str(&format!(
                "http_requests_total,job=api,instance=b value={} {t}\n",
                i * 60
            ));
        }
        // A wide metric for the limit test: 200 series × 40 samples.
        for s in 0..200 {
            for i in 0..40 {
                let t = 1_767_225_600 + i * 15;
                lines.push_str(&format!("wide,n={s} value={i} {t}\n"));
            }
        }
        let resp = agent()
            .post(format!("{base}/write?precision=s"))
            .send(lines.as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);

        let at = 1_767_225_600 + 600;
        // Instant query: per-second rate of each counter, summed.
        let (status, v) = get(&format!(
            "{base}/api/v1/query?query={}&time={at}",
            enc("sum by (job) (rate(http_requests_total[5m]))")
        ));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "success");
        assert_eq!(v["data"]["resultType"], "vector");
        let sample = &v["data"]["result"][0];
        assert_eq!(sample["metric"]["job"], "api");
        assert_eq!(sample["value"][0].as_f64(), Some(at as f64));
        let rate: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
        assert!((rate - 6.0).abs() < 1e-9, "2 + 4 per second, got {rate}");

        // Range query over POST form.
        let (status, v) = post_form(
            &format!("{base}/api/v1/query_range"),
            &[
                ("query", "http_requests_total{instance=\"a\"} / 30"),
                ("start", &(at - 60).to_string()),
                ("end", &at.to_string()),
                ("step", "30s"),
            ],
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["resultType"], "matrix");
        let values = v["data"]["result"][0]["values"].as_array().unwrap();
        let got: Vec<&str> = values.iter().map(|p| p[1].as_str().unwrap()).collect();
        assert_eq!(got, ["36", "38", "40"]);
        assert!(v.get("warnings").is_none(), "no warnings expected: {v}");

        // Annotations travel as Prometheus's `warnings` / `infos` lists.
        let (status, v) = get(&format!(
            "{base}/api/v1/query_range?query={}&start={}&end={at}&step=30",
            enc("sort(http_requests_total)"),
            at - 60
        ));
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["warnings"],
            serde_json::json!(["PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:1)"])
        );
        assert!(v.get("infos").is_none(), "{v}");

        // Scalars and strings.
        let (_, v) = get(&format!(
            "{base}/api/v1/query?query={}&time=100",
            enc("1 + 2")
        ));
        assert_eq!(v["data"]["resultType"], "scalar");
        assert_eq!(v["data"]["result"][1], "3");

        // Metadata endpoints.
        let (_, v) = get(&format!(
            "{base}/api/v1/series?match[]={}",
            enc("http_requests_total")
        ));
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        let (_, v) = get(&format!("{base}/api/v1/labels"));
        let names: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(names, ["__name__", "instance", "job", "n"]);
        let (_, v) = get(&format!("{base}/api/v1/label/instance/values"));
        assert_eq!(v["data"], serde_json::json!(["a", "b"]));

        // Time-bounded lookups and `limit`, as Grafana's label browser asks:
        // everything was written on 2026-01-01, so a range in 2025 finds nothing.
        let day = 1_767_225_600;
        let (_, v) = get(&format!(
            "{base}/api/v1/label/__name__/values?start={}&end={}",
            day - 3600,
            day + 3600
        ));
        assert_eq!(v["data"], serde_json::json!(["http_requests_total", "wide"]));
        let (_, v) = get(&format!(
            "{base}/api/v1/label/__name__/values?start={}&end={}",
            day - 86_400 * 30,
            day - 86_400 * 29
        ));
        assert_eq!(v["data"], serde_json::json!([]), "nothing was written then");
        let (_, v) = get(&format!(
            "{base}/api/v1/series?match[]={}&start={}&end={}&limit=3",
            enc("wide"),
            day,
            day + 600
        ));
        assert_eq!(v["data"].as_array().unwrap().len(), 3, "{v}");
        let (status, v) = post_form(
            &format!("{base}/api/v1/labels"),
            &[("match[]", "http_requests_total"), ("start", "2026-01-01T00:00:00Z")],
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"], serde_json::json!(["__name__", "instance", "job"]));
        let (status, v) = get(&format!("{base}/api/v1/labels?limit=-1"));
        assert_eq!((status, v["errorType"].as_str()), (400, Some("bad_data")));

        // What Grafana's data source asks besides queries: its health check,
        // exemplars, rules and alerts (Chronicle has none: empty, not 404).
        let (status, v) = get(&format!(
            "{base}/api/v1/query?query={}&time={at}",
            enc("1+1")
        ));
        assert_eq!((status, v["data"]["result"][1].as_str()), (200, Some("2")));
        let (status, v) = get(&format!(
            "{base}/api/v1/query_exemplars?query=wide&start={day}&end={at}"
        ));
        assert_eq!((status, v["data"].clone()), (200, serde_json::json!([])));
        let (_, v) = get(&format!("{base}/api/v1/rules"));
        assert_eq!(v["data"]["groups"], serde_json::json!([]));
        let (_, v) = get(&format!("{base}/api/v1/alerts"));
        assert_eq!(v["data"]["alerts"], serde_json::json!([]));
        let (status, v) = get(&format!("{base}/api/v1/metadata"));
        assert_eq!((status, v["status"].as_str()), (200, Some("success")));
        let (status, _) = get(&format!("{base}/api/v1/status/buildinfo"));
        assert_eq!(status, 200);

        // Prometheus's error format.
        let (status, v) = get(&format!("{base}/api/v1/query?query={}", enc("sum(")));
        assert_eq!(status, 400);
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "bad_data");
        let (status, v) = get(&format!(
            "{base}/api/v1/query_range?query=up&start=10&end=0&step=1"
        ));
        assert_eq!((status, v["errorType"].as_str()), (400, Some("bad_data")));

        // The JSON front door takes PromQL too.
        let mut resp = agent()
            .post(format!("{base}/query"))
            .content_type("application/json")
            .send(
                format!(
                    r#"{{"promql":"max(http_requests_total)","end":{}}}"#,
                    at as i128 * 1_000_000_000
                )
                .as_bytes(),
            )
            .unwrap();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["series"][0]["points"][0][1].as_f64(), Some(2400.0), "{v}");

        // Remote write keeps the name and labels exactly; PromQL sees them.
        use chronicle_ingest::remote_write::{
            encode_remote_write, ProtoLabel, ProtoSample, TimeSeries, WriteRequest,
        };
        let label = |n: &str, v: &str| ProtoLabel {
            name: n.into(),
            value: v.into(),
        };
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    label("__name__", "node_load1"),
                    label("instance", "host:9100"),
                    label("job", "node"),
                ],
                samples: vec![ProtoSample {
                    value: 0.75,
                    timestamp: at * 1000,
                }],
                histograms: Vec::new(),
            }],
        };
        let resp = agent()
            .post(format!("{base}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .content_type("application/x-protobuf")
            .send(&encode_remote_write(&request)[..])
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
        let (_, v) = get(&format!(
            "{base}/api/v1/query?query={}&time={at}",
            enc("node_load1")
        ));
        let r = &v["data"]["result"][0];
        assert_eq!(
            r["metric"],
            serde_json::json!({"__name__": "node_load1", "instance": "host:9100", "job": "node"})
        );
        assert_eq!(r["value"][1], "0.75");
        let resp = agent()
            .post(format!("{base}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .send(&b"definitely not snappy"[..])
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);

        // An over-limit query fails cleanly while a small one beside it succeeds.
        let big_base = base.clone();
        let big = std::thread::spawn(move || {
            get(&format!(
                "{big_base}/api/v1/query?query={}&time={at}",
                enc("sum(count_over_time(wide[10m]))")
            ))
        });
        let (status, small) = get(&format!(
            "{base}/api/v1/query?query={}&time={at}",
            enc("count(http_requests_total)")
        ));
        assert_eq!(status, 200);
        assert_eq!(small["data"]["result"][0]["value"][1], "2");
        let (status, v) = big.join().unwrap();
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["errorType"], "execution");
        assert!(
            v["error"].as_str().unwrap().contains("too many samples"),
            "{v}"
        );
    })
    .await;
    node.shutdown().await;
    checks.unwrap();
}

/// OTLP resources as the Collector's Prometheus exporters write them: `job`
/// and `instance` on every series, the other attributes on `target_info`,
/// and the configured ones promoted onto every series.
#[actix::test]
async fn otlp_resources_become_job_instance_and_target_info() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ingest: IngestSettings {
            otlp_promote_resource_attributes: vec!["deployment.environment".into()],
            ..IngestSettings::default()
        },
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);

    let checks = tokio::task::spawn_blocking(move || {
        let body = r#"{"resourceMetrics":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"api"}},
            {"key":"service.namespace","value":{"stringValue":"shop"}},
            {"key":"service.instance.id","value":{"stringValue":"pod-1"}},
            {"key":"deployment.environment","value":{"stringValue":"prod"}},
            {"key":"host.name","value":{"stringValue":"h1"}}]},
          "scopeMetrics":[{"metrics":[{"name":"queue.depth","gauge":{"dataPoints":[
            {"timeUnixNano":"1767225600000000000","asInt":"7"}]}}]}]}]}"#;
        let mut resp = agent()
            .post(format!("{base}/v1/metrics"))
            .content_type("application/json")
            .send(body.as_bytes())
            .expect("POST");
        let status = resp.status().as_u16();
        assert_eq!(status, 200, "{}", resp.body_mut().read_to_string().unwrap());

        let series = |selector: &str| {
            let (status, v) = get(&format!("{base}/api/v1/series?match[]={}", enc(selector)));
            assert_eq!(status, 200, "{v}");
            v["data"].clone()
        };
        assert_eq!(
            series("queue_depth"),
            serde_json::json!([{"__name__": "queue_depth", "deployment_environment": "prod",
                "instance": "pod-1", "job": "shop/api"}])
        );
        assert_eq!(
            series("target_info"),
            serde_json::json!([{"__name__": "target_info", "deployment_environment": "prod",
                "host_name": "h1", "instance": "pod-1", "job": "shop/api"}])
        );
        // The join that gives a series its resource's other attributes.
        let (status, v) = get(&format!(
            "{base}/api/v1/query?query={}&time=1767225600",
            enc("queue_depth * on (job, instance) group_left (host_name) target_info")
        ));
        assert_eq!(status, 200, "{v}");
        let result = &v["data"]["result"][0];
        assert_eq!(result["metric"]["host_name"], "h1", "{v}");
        assert_eq!(result["value"][1], "7", "{v}");
    })
    .await;
    node.shutdown().await;
    checks.unwrap();
}

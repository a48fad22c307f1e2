//! Prometheus's admin API: POST /api/v1/admin/tsdb/delete_series deletes the
//! matching samples in a time range through every shard's log; it is refused
//! (403) unless the node enables it, and bad requests are 400s that leave the
//! node healthy.

use chronicle::{Node, NodeConfig};

const T: i64 = 1_767_225_600; // seconds

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs to delete_series with these query parameters (encoded here).
fn delete(base: &str, params: &[(&str, String)]) -> (u16, String) {
    let mut request = agent().post(format!("{base}/api/v1/admin/tsdb/delete_series"));
    for (k, v) in params {
        request = request.query(*k, v);
    }
    let mut resp = request.send("").expect("request sent");
    (
        resp.status().as_u16(),
        resp.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn count(base: &str, selector: &str) -> String {
    let mut resp = agent()
        .get(format!("{base}/api/v1/query"))
        .query("query", format!("count_over_time({selector}[1d])"))
        .query("time", (T + 3600).to_string())
        .call()
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    body["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap_or("0")
        .to_string()
}

async fn node(admin: bool) -> (tempfile::TempDir, Node, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        enable_admin_api: admin,
        ..NodeConfig::default()
    };
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    (dir, node, base)
}

#[actix::test]
async fn delete_series_is_refused_unless_enabled() {
    let (_dir, node, base) = node(false).await;
    let b = base.clone();
    let (status, body) =
        tokio::task::spawn_blocking(move || delete(&b, &[("match[]", "up".into())]))
            .await
            .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin APIs disabled"), "{body}");
    node.shutdown().await;
}

#[actix::test]
async fn delete_series_deletes_the_range_of_the_matching_series_only() {
    let (_dir, node, base) = node(true).await;
    let b = base.clone();
    tokio::task::spawn_blocking(move || {
        // An hour of a point a minute for two hosts.
        let lines: String = (0..60)
            .flat_map(|m| ["a", "b"].map(|h| format!("cpu,host={h} load={m} {}\n", T + m * 60)))
            .collect();
        let status = agent()
            .post(format!("{b}/write?precision=s"))
            .send(lines)
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 204);
        assert_eq!(count(&b, "cpu_load{host=\"a\"}"), "60");

        // Minutes 10 to 19 of host a (inclusive), as Prometheus does.
        let (status, body) = delete(
            &b,
            &[
                ("match[]", "cpu_load{host=\"a\"}".into()),
                ("start", (T + 600).to_string()),
                ("end", (T + 1140).to_string()),
            ],
        );
        assert_eq!(status, 204, "{body}");
        assert_eq!(count(&b, "cpu_load{host=\"a\"}"), "50");
        assert_eq!(count(&b, "cpu_load{host=\"b\"}"), "60");

        // Hostile and bad requests: 400, nothing deleted.
        let many: Vec<(&str, String)> = (0..65).map(|i| ("match[]", format!("m{i}"))).collect();
        let bad: Vec<Vec<(&str, String)>> = vec![
            vec![],
            vec![("match[]", "cpu_load{".into())],
            vec![("match[]", "{host=~\".*\"}".into())],
            vec![("match[]", "rate(cpu_load[5m])".into())],
            vec![
                ("match[]", "cpu_load".into()),
                ("start", "10".into()),
                ("end", "5".into()),
            ],
            vec![
                ("match[]", "cpu_load".into()),
                ("start", "yesterday".into()),
            ],
            many,
        ];
        for params in &bad {
            let (status, body) = delete(&b, params);
            assert_eq!(status, 400, "{params:?}: {body}");
        }
        assert_eq!(count(&b, "cpu_load{host=\"a\"}"), "50");
        assert_eq!(count(&b, "cpu_load{host=\"b\"}"), "60");

        // All of host b's time.
        let (status, body) = delete(&b, &[("match[]", "cpu_load{host=\"b\"}".into())]);
        assert_eq!(status, 204, "{body}");
        assert_eq!(count(&b, "cpu_load{host=\"b\"}"), "0");
        assert_eq!(count(&b, "cpu_load{host=\"a\"}"), "50");
        let ready = agent().get(format!("{b}/health/ready")).call().unwrap();
        assert_eq!(ready.status().as_u16(), 200);
    })
    .await
    .unwrap();
    node.shutdown().await;
}

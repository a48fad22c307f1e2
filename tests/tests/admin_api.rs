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

#[actix::test]
async fn the_state_api_is_refused_unless_enabled_and_served_on_the_embedded_node_when_it_is() {
    let (_dir, off, base) = node(false).await;
    let b = base.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut resp = agent()
            .post(&format!("{b}/api/v1/kv/get"))
            .send(r#"{"namespace":"n","key":"k"}"#)
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    // Nor is it on the bus.
    let asked = off
        .bus
        .request(
            chronicle_bus::Message::new("chronicle.kv.get", r#"{"namespace":"n","key":"k"}"#),
            std::time::Duration::from_millis(500),
        )
        .await;
    assert!(
        asked.is_err(),
        "kv answered on the bus without the admin API"
    );
    off.shutdown().await;

    // Enabled, on the embedded one-voter default: the same write path.
    let (_dir, node, base) = node(true).await;
    let out = tokio::task::spawn_blocking(move || {
        let post = |op: &str, body: &str| {
            let mut resp = agent()
                .post(&format!("{base}/api/v1/kv/{op}"))
                .send(body.to_string())
                .unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value =
                serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
            (status, v)
        };
        let (s, put) = post(
            "put",
            r#"{"namespace":"n","key":"k","value":"v1","revision":0}"#,
        );
        assert_eq!(s, 200, "{put}");
        let (s, again) = post(
            "put",
            r#"{"namespace":"n","key":"k","value":"v2","revision":0}"#,
        );
        assert_eq!(s, 409, "{again}");
        assert_eq!(again["current"], put["revision"]);
        let (s, got) = post("get", r#"{"namespace":"n","key":"k"}"#);
        assert_eq!((s, got["value"].as_str()), (200, Some("v1")));
        let (s, _) = post("del", r#"{"namespace":"n","key":"k"}"#);
        assert_eq!(s, 200);
        post("get", r#"{"namespace":"n","key":"k"}"#).0
    })
    .await
    .unwrap();
    assert_eq!(out, 404);
    node.shutdown().await;
}

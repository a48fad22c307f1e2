//! End to end over a real nats-server: a node process joins NATS; a plain NATS
//! client (standing in for a service in any language) writes line protocol and JSON
//! and queries over subjects; HTTP and the CLI read the same data; SIGTERM stops the
//! node cleanly and the data is there after a restart.

use std::process::Command;
use std::time::Duration;

use chronicle_tests::{http_query, wait_until, NatsServer, NodeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

fn points_in(result: &serde_json::Value) -> usize {
    result["series"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["points"].as_array().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn nats_clients_write_and_query_a_node_process() {
    let server = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(BIN, data.path(), Some(&server.url()), &[]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let ask = |subject: &'static str, body: String| {
            let client = client.clone();
            async move {
                let reply = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request(subject, body.into()),
                )
                .await
                .expect("reply in time")
                .expect("request");
                String::from_utf8(reply.payload.to_vec()).unwrap()
            }
        };

        // Line protocol, acknowledged.
        let lines: String = (0..50)
            .map(|i| format!("room,building=hq,floor=2 temp={}.5,humidity={i}i {}\n", 20 + i % 3, 1_000 + i))
            .collect();
        let ack = ask("chronicle.ingest.room", lines).await;
        assert_eq!(ack, r#"{"written":100}"#);

        // A bad line names itself; nothing of that message is stored.
        let err = ask(
            "chronicle.ingest.room",
            "room temp=1 5000\nroom temp=oops 5001\n".into(),
        )
        .await;
        assert!(err.contains("line 2") && err.contains("invalid_line"), "{err}");

        // JSON, fire and forget (no reply subject).
        client
            .publish(
                "chronicle.ingest.json",
                r#"{"points":[{"metric":"door_open","tags":{"door":"front"},"value":1,"timestamp":7000}]}"#.into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();

        // Query over the subject.
        let reply = ask(
            "chronicle.query",
            r#"{"metric":"room_temp","tags":{"floor":"2"},"start":0,"end":10000}"#.into(),
        )
        .await;
        let result: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(points_in(&result), 50, "{reply}");
        assert_eq!(result["series"][0]["labels"]["building"], "hq");

        // SQL over the same subject: a table.
        let reply = ask(
            "chronicle.query",
            r#"{"sql":"SELECT floor, count(*) AS n FROM room_temp WHERE time >= 0 AND time < 10000 GROUP BY floor ORDER BY floor"}"#.into(),
        )
        .await;
        let result: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(result["columns"], serde_json::json!(["floor", "n"]), "{reply}");
        assert_eq!(result["rows"], serde_json::json!([["2", 50.0]]), "{reply}");
    });

    // The JSON point becomes visible; HTTP reads what NATS wrote.
    wait_until(Duration::from_secs(10), "the JSON point", || {
        points_in(&http_query(
            &node.http,
            r#"{"metric":"door_open","start":0,"end":10000}"#,
        )) == 1
    });
    let agg = http_query(
        &node.http,
        r#"{"metric":"room_humidity","start":0,"end":10000,"aggregation":{"function":"max"},"group_by":["floor"]}"#,
    );
    assert_eq!(agg["series"][0]["points"][0][1], 49.0, "{agg}");
    assert_eq!(
        points_in(&http_query(
            &node.http,
            r#"{"metric":"room_temp","start":5000,"end":6000}"#
        )),
        0
    );

    // The CLI over NATS.
    let out = Command::new(BIN)
        .args([
            "query",
            "--nats-url",
            &server.url(),
            "--metric",
            "room_temp",
            "--start",
            "0",
            "--end",
            "10000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(points_in(&cli), 50);

    // --sql and --cql print tables; --explain prints the plan.
    for args in [
        vec![
            "--sql",
            "SELECT count(value) AS n FROM room_temp WHERE floor = '2' AND time < 10000",
        ],
        vec![
            "--cql",
            "SELECT count(value) AS n FROM room_temp WHERE floor = '2' AND time < 10000",
        ],
    ] {
        let out = Command::new(BIN)
            .args(["query", "--nats-url", &server.url()])
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().collect::<Vec<_>>(), ["N", "50"], "{args:?}");
    }
    let out = Command::new(BIN)
        .args(["query", "--http", &node.http, "--explain", "--sql"])
        .arg("SELECT max(value) FROM room_temp GROUP BY time(1m), floor")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Scan room_temp series matching"));

    // The CLI writing a file over HTTP.
    let file = data.path().join("input.lp");
    std::fs::write(
        &file,
        "cli_metric,src=file value=3 9000\ncli_metric,src=file value=4 9001\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["write", "--http", &node.http])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrote 2 points"));

    // SIGTERM: clean exit; the data survives a restart (embedded bus this time).
    let status = node.stop();
    assert!(status.success(), "node exited with {status:?}");
    let node = NodeProcess::start(BIN, data.path(), None, &[]);
    assert_eq!(
        points_in(&http_query(
            &node.http,
            r#"{"metric":"room_temp","start":0,"end":10000}"#
        )),
        50
    );
    assert_eq!(
        points_in(&http_query(
            &node.http,
            r#"{"metric":"cli_metric","start":0,"end":10000}"#
        )),
        2
    );
    let status = node.stop();
    assert!(status.success(), "node exited with {status:?}");
}

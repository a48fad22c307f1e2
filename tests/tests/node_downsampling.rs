//! A node configured with `[[retention.downsample]]` rules writes the
//! downsampled series on its own, and they answer PromQL like any other.

use std::time::Duration;

use chronicle::config::{DownsampleSettings, RetentionSettings};
use chronicle::{Node, NodeConfig};
use chronicle_bus::Message;
use chronicle_query::{QueryResult, RunQuery};

#[test]
fn a_node_runs_its_downsampling_rules_and_serves_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        retention: RetentionSettings {
            check_interval_secs: 1,
            downsample_delay: "0s".into(),
            downsample: vec![DownsampleSettings {
                window: "1m".into(),
                function: "max".into(),
                retention: None,
                selector: Some(r#"{__name__="ds_node"}"#.into()),
            }],
            ..RetentionSettings::default()
        },
        ..NodeConfig::default()
    };
    actix::System::new().block_on(async move {
        let node = Node::start(config).await.expect("node starts");
        // Ten minutes of data ending a minute ago, a point every 10 s.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let end = now / 60 * 60 - 60;
        let start = end - 600;
        let mut body = String::new();
        for t in (start..end).step_by(10) {
            body.push_str(&format!(
                "ds_node,host=a value={} {}\n",
                t - start,
                t * 1_000_000_000
            ));
            body.push_str(&format!("other,host=a value=1 {}\n", t * 1_000_000_000));
        }
        let reply = node
            .bus
            .request(
                Message::new("chronicle.ingest.test", body),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&reply.payload), "{\"written\":120}");

        let query = node.query.clone().unwrap();
        let read = |metric: &'static str| {
            let query = query.clone();
            async move {
                let request = serde_json::from_value(serde_json::json!({
                    "metric": metric,
                    "start": 0,
                    "end": i64::MAX,
                }))
                .unwrap();
                let result: QueryResult =
                    query.send(RunQuery::new(request)).await.unwrap().unwrap();
                result
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let series = loop {
            let r = read("ds_node:1m:max").await;
            if r.series.first().is_some_and(|s| s.points.len() == 10) {
                break r.series;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rule never covered the ten minutes: {:?}",
                r.series
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(series.len(), 1);
        // The maximum of each minute: its last sample (value = seconds since start).
        let values: Vec<f64> = series[0].points.iter().map(|p| p.1).collect();
        assert_eq!(
            values,
            (0..10).map(|m| (m * 60 + 50) as f64).collect::<Vec<_>>()
        );
        assert!(
            read("other:1m:max").await.series.is_empty(),
            "the selector limits the rule"
        );
        assert!(node.shutdown().await);
    });
}

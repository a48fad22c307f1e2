//! Backups end to end against node processes: `chronicle backup take` from
//! one node, `verify`, `restore` into a fresh node, and every point, key
//! and blob comes back (tokens do not); a corrupted backup is refused before anything
//! is written; the backup routes refuse hostile requests with a 4xx and leave
//! the node ready.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chronicle_tests::NodeProcess;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-backup-tests-0123456789";

fn cli(token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CHRONICLE_TOKEN", token)
        .env_remove("CHRONICLE_HTTP")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn request(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let agent = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match method {
        "POST" => {
            let mut r = agent.post(url).content_type("application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(serde_json::to_vec(body.unwrap_or(&json!({}))).unwrap())
        }
        "DELETE" => {
            let mut r = agent.delete(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    }
    .unwrap();
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn start(dir: &Path, name: &str) -> NodeProcess {
    let boot = dir.join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    NodeProcess::start(
        BIN,
        &dir.join(name),
        None,
        &["--auth", "--bootstrap-token-file", boot.to_str().unwrap()],
    )
}

/// Every series of the test's metrics as a node answers them, sorted.
fn everything(http: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for metric in ["cpu_usage", "odd_labels", "stale"] {
        let (status, answer) = request(
            "POST",
            &format!("{http}/query"),
            Some(BOOTSTRAP),
            Some(&json!({"metric": metric, "start": 0, "end": 4_000_000_000_000_000_000i64})),
        );
        assert_eq!(status, 200, "{answer}");
        all.extend(answer["series"].as_array().cloned().unwrap_or_default());
    }
    all.sort_by_key(|s| s.to_string());
    all
}

#[test]
fn a_backup_restores_every_point_key_and_blob_into_a_fresh_node_but_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let source = start(dir.path(), "source");
    let http = source.http.clone();

    // Points: three series over 5 hours (chunks across 2 h windows plus the
    // head), labels that need escaping, and non-finite values.
    let base = 1_700_000_000_000_000_000i64;
    let mut lines = String::new();
    for host in 0..3 {
        for i in 0..3000i64 {
            lines.push_str(&format!(
                "cpu_usage,host=h{host} value={} {}\n",
                (i * 7 % 101) as f64 / 3.0,
                base + i * 6_000_000_000
            ));
        }
    }
    let (status, body) = {
        let mut r = agent()
            .post(format!("{http}/write"))
            .header("Authorization", &format!("Bearer {BOOTSTRAP}"))
            .send(lines.as_bytes())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(status, 204, "{body}");
    let odd = json!({"points": [
        {"metric": "odd_labels", "labels": {"path": "a b,c=d\"e", "emoji": "ç😀 ünï"}, "value": 1.5, "timestamp": base},
        {"metric": "stale", "labels": {"k": "v"}, "value": "NaN", "timestamp": base},
        {"metric": "stale", "labels": {"k": "v"}, "value": "+Inf", "timestamp": base + 1},
        {"metric": "stale", "labels": {"k": "v"}, "value": "-Inf", "timestamp": base + 2},
    ]});
    let write = agent()
        .post(format!("{http}/write"))
        .header("Authorization", &format!("Bearer {BOOTSTRAP}"))
        .content_type("application/json")
        .send(serde_json::to_vec(&odd).unwrap())
        .unwrap();
    assert_eq!(write.status().as_u16(), 204);

    // State: text, binary, a key with a TTL, a blob, and a token.
    let kv = |body: Value| {
        let (status, answer) = request(
            "POST",
            &format!("{http}/api/v1/kv/put"),
            Some(BOOTSTRAP),
            Some(&body),
        );
        assert_eq!(status, 200, "{answer}");
    };
    kv(json!({"namespace": "dashboards", "key": "home", "value": "{\"panels\":3}"}));
    kv(json!({"namespace": "models", "key": "raw", "value_base64": "AAEC/w=="}));
    kv(json!({"namespace": "sessions", "key": "live", "value": "x", "ttl_ms": 3_600_000}));
    let blob: Vec<u8> = (0..(2 << 20) + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let blob_file = dir.path().join("weights.bin");
    std::fs::write(&blob_file, &blob).unwrap();
    ok(cli(
        BOOTSTRAP,
        &[
            "kv",
            "put-blob",
            "--http",
            &http,
            "-n",
            "models",
            "weights",
            blob_file.to_str().unwrap(),
        ],
    ));
    let reader = ok(cli(
        BOOTSTRAP,
        &[
            "token", "create", "--http", &http, "--name", "grafana", "--role", "reader",
        ],
    ))
    .trim()
    .to_string();

    // Take, then verify.
    let backup = dir.path().join("backup");
    let taken = ok(cli(
        BOOTSTRAP,
        &[
            "backup",
            "take",
            "--http",
            &http,
            "--out",
            backup.to_str().unwrap(),
        ],
    ));
    assert!(taken.contains("backup of 1 shards"), "{taken}");
    let verified = ok(cli(
        BOOTSTRAP,
        &["backup", "verify", backup.to_str().unwrap()],
    ));
    assert!(
        verified.contains("1 shards, ") && verified.ends_with("all match\n"),
        "{verified}"
    );
    // The node's copy was deleted after the download.
    let (status, listed) = request(
        "GET",
        &format!("{http}/api/v1/admin/backups"),
        Some(BOOTSTRAP),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(listed["backups"], json!([]), "{listed}");

    // A corrupted copy is refused before anything is written.
    let target_dir = tempfile::tempdir().unwrap();
    let target = start(target_dir.path(), "target");
    let broken = dir.path().join("broken");
    copy_dir(&backup, &broken);
    let victim = std::fs::read_dir(broken.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .expect("shard 0 has an SST file");
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let refused = cli(
        BOOTSTRAP,
        &[
            "backup",
            "restore",
            "--from",
            broken.to_str().unwrap(),
            "--http",
            &target.http,
        ],
    );
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{why}"
    );
    assert!(
        everything(&target.http).is_empty(),
        "a refused restore wrote points"
    );

    // Restore into the fresh node: the same series, points, keys and blob.
    let restored = ok(cli(
        BOOTSTRAP,
        &[
            "backup",
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--http",
            &target.http,
        ],
    ));
    assert!(
        restored.contains("restored 9004 points of 5 series"),
        "{restored}"
    );
    let (before, after) = (everything(&http), everything(&target.http));
    assert_eq!(before.len(), 5);
    assert_eq!(before, after, "the restored node answers differently");

    let get = |ns: &str, key: &str| {
        request(
            "POST",
            &format!("{}/api/v1/kv/get", target.http),
            Some(BOOTSTRAP),
            Some(&json!({"namespace": ns, "key": key})),
        )
    };
    assert_eq!(get("dashboards", "home").1["value"], "{\"panels\":3}");
    assert_eq!(get("models", "raw").1["value_base64"], "AAEC/w==");
    assert_eq!(get("sessions", "live").1["value"], "x");
    let back = dir.path().join("back.bin");
    ok(cli(
        BOOTSTRAP,
        &[
            "kv",
            "get-blob",
            "--http",
            &target.http,
            "-n",
            "models",
            "weights",
            back.to_str().unwrap(),
        ],
    ));
    assert!(
        std::fs::read(&back).unwrap() == blob,
        "the blob came back different"
    );
    // Tokens stay with the cluster that issued them: the source's reader
    // token is not valid on the target, and the restore said so.
    assert!(restored.contains("not restored: "), "{restored}");
    let (status, _) = request(
        "POST",
        &format!("{}/query", target.http),
        Some(&reader),
        Some(&json!({"metric": "stale", "start": 0})),
    );
    assert_eq!(status, 401);
}

#[test]
fn the_backup_routes_refuse_hostile_requests_and_the_node_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), "data");
    let http = node.http.as_str();
    let reader = ok(cli(
        BOOTSTRAP,
        &[
            "token", "create", "--http", http, "--name", "r", "--role", "reader",
        ],
    ))
    .trim()
    .to_string();
    let backups = format!("{http}/api/v1/admin/backups");
    assert_eq!(request("POST", &backups, None, None).0, 401);
    assert_eq!(request("POST", &backups, Some(&reader), None).0, 403);
    assert_eq!(request("GET", &backups, Some(&reader), None).0, 403);
    assert_eq!(
        request(
            "GET",
            &format!("{backups}/b1-n1/0/CURRENT"),
            Some(&reader),
            None
        )
        .0,
        403
    );

    let (status, taken) = request("POST", &backups, Some(BOOTSTRAP), None);
    assert_eq!(status, 200, "{taken}");
    let name = taken["name"].as_str().unwrap().to_string();
    // The embedded node is one voter leading its one shard.
    assert_eq!(taken["shards_total"], 1, "{taken}");
    assert_eq!(taken["shards"].as_array().unwrap().len(), 1, "{taken}");
    let file = taken["shards"][0]["files"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // The file downloads; paths that leave the backup do not.
    assert_eq!(
        request(
            "GET",
            &format!("{backups}/{name}/0/{file}"),
            Some(BOOTSTRAP),
            None
        )
        .0,
        200
    );
    for bad in [
        format!("{backups}/{name}/0/..%2F..%2Fboot"),
        format!("{backups}/{name}/0/.."),
        format!("{backups}/..%2F..%2F/0/CURRENT"),
        format!("{backups}/{name}/-1/{file}"),
        format!("{backups}/{name}/shard-0/{file}"),
        format!("{backups}/%2Fetc/0/passwd"),
    ] {
        let status = request("GET", &bad, Some(BOOTSTRAP), None).0;
        assert!(status == 400 || status == 404, "{bad}: {status}");
    }
    assert_eq!(
        request(
            "GET",
            &format!("{backups}/{name}/0/nothing.sst"),
            Some(BOOTSTRAP),
            None
        )
        .0,
        404
    );
    assert_eq!(
        request(
            "GET",
            &format!("{backups}/b9-n9/0/{file}"),
            Some(BOOTSTRAP),
            None
        )
        .0,
        404
    );
    assert_eq!(
        request("DELETE", &format!("{backups}/b9-n9"), Some(BOOTSTRAP), None).0,
        404
    );
    assert_eq!(
        request(
            "DELETE",
            &format!("{backups}/..%2Fdata"),
            Some(BOOTSTRAP),
            None
        )
        .0,
        400
    );

    // At most four kept: the fifth is refused until one is deleted.
    for _ in 0..3 {
        assert_eq!(request("POST", &backups, Some(BOOTSTRAP), None).0, 200);
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, full) = request("POST", &backups, Some(BOOTSTRAP), None);
    assert_eq!(status, 409, "{full}");
    assert_eq!(
        request(
            "DELETE",
            &format!("{backups}/{name}"),
            Some(BOOTSTRAP),
            None
        )
        .0,
        200
    );
    assert_eq!(request("POST", &backups, Some(BOOTSTRAP), None).0, 200);

    // A take into a directory that has files is refused, and so is a restore
    // from a directory that is not a backup.
    let used = dir.path().join("used");
    std::fs::create_dir_all(&used).unwrap();
    std::fs::write(used.join("keep.txt"), "mine").unwrap();
    let refused = cli(
        BOOTSTRAP,
        &[
            "backup",
            "take",
            "--http",
            http,
            "--out",
            used.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert_eq!(
        std::fs::read_to_string(used.join("keep.txt")).unwrap(),
        "mine"
    );
    let refused = cli(
        BOOTSTRAP,
        &[
            "backup",
            "restore",
            "--from",
            used.to_str().unwrap(),
            "--http",
            http,
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("backup.json"));

    let (status, _) = request("GET", &format!("{http}/health/ready"), None, None);
    assert_eq!(status, 200);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

//! Blobs for operators against a node process: `chronicle kv put-blob` and
//! `get-blob` round-trip a file (checked by size and SHA-256), `del-blob`
//! removes it; the blob routes refuse missing, bad and underprivileged
//! requests with a 4xx and leave the node ready.

use std::process::Command;
use std::time::Duration;

use chronicle_tests::{same_bytes, write_noise, NodeProcess};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-blob-tests-0123456789";

fn cli(http: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--http", http])
        .env("CHRONICLE_TOKEN", token)
        .output()
        .unwrap()
}

fn status(http: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{http}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match method {
        "PUT" => {
            let mut r = agent.put(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send(body)
        }
        "DELETE" => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
    };
    response.unwrap().status().as_u16()
}

#[test]
fn a_file_round_trips_as_a_blob_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &["--auth", "--bootstrap-token-file", boot.to_str().unwrap()],
    );
    let http = node.http.as_str();
    // 5 MiB + 3 bytes of noise: ten full chunks and a short one.
    let input = dir.path().join("model.bin");
    write_noise(&input, (5 << 20) + 3, 0x9e37_79b9_7f4a_7c15);

    let put = cli(
        http,
        BOOTSTRAP,
        &[
            "kv",
            "put-blob",
            "-n",
            "models",
            "weights",
            input.to_str().unwrap(),
        ],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert!(String::from_utf8_lossy(&put.stdout).contains("5242883 bytes in 11 chunks"));
    let output = dir.path().join("back.bin");
    let get = cli(
        http,
        BOOTSTRAP,
        &[
            "kv",
            "get-blob",
            "-n",
            "models",
            "weights",
            output.to_str().unwrap(),
        ],
    );
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(same_bytes(&input, &output), "the blob came back different");

    // Refusals: no token, a reader, a bad namespace, missing, not a blob.
    let reader = cli(
        http,
        BOOTSTRAP,
        &["token", "create", "--name", "r", "--role", "reader"],
    );
    let reader = String::from_utf8(reader.stdout).unwrap().trim().to_string();
    let path = "/api/v1/kv/blob?namespace=models&key=weights";
    assert_eq!(status(http, "GET", path, None, b""), 401);
    assert_eq!(status(http, "GET", path, Some(&reader), b""), 403);
    assert_eq!(status(http, "PUT", path, Some(&reader), b"x"), 403);
    assert_eq!(
        status(
            http,
            "GET",
            "/api/v1/kv/blob?namespace=a%20b&key=k",
            Some(BOOTSTRAP),
            b""
        ),
        400
    );
    assert_eq!(
        status(
            http,
            "GET",
            "/api/v1/kv/blob?namespace=models",
            Some(BOOTSTRAP),
            b""
        ),
        400
    );
    assert_eq!(
        status(
            http,
            "GET",
            "/api/v1/kv/blob?namespace=models&key=nope",
            Some(BOOTSTRAP),
            b""
        ),
        404
    );
    assert_eq!(
        status(
            http,
            "PUT",
            "/api/v1/kv/blob?namespace=models&key=.blob/x",
            Some(BOOTSTRAP),
            b"x"
        ),
        400
    );
    let plain = cli(
        http,
        BOOTSTRAP,
        &["kv", "put", "-n", "models", "plain", "v"],
    );
    assert!(plain.status.success());
    assert_eq!(
        status(
            http,
            "GET",
            "/api/v1/kv/blob?namespace=models&key=plain",
            Some(BOOTSTRAP),
            b""
        ),
        409
    );

    let del = cli(
        http,
        BOOTSTRAP,
        &["kv", "del-blob", "-n", "models", "weights"],
    );
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert_eq!(status(http, "GET", path, Some(BOOTSTRAP), b""), 404);
    assert_eq!(status(http, "DELETE", path, Some(BOOTSTRAP), b""), 404);
    assert_eq!(status(http, "GET", "/health/ready", None, b""), 200);
    assert!(node.stop().success());
}

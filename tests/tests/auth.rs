//! Authentication and authorization against real node processes: each role
//! against each route class (allowed / 401 / 403), Bearer and Basic, metric
//! scopes, hostile credentials; tokens made and revoked with the CLI, the
//! revocation counted on every node of a NATS cluster within a second; a
//! forged Raft RPC dropped and counted; a nats-server permissions config
//! that keeps a client user off the cluster's subjects while ingest and
//! query work; settings that would expose a node refused at start.

use std::process::Command;
use std::time::{Duration, Instant};

use chronicle_tests::{wait_until, NatsServer, NodeProcess};
use futures_util::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-auth-tests-0123456789";
const SECRET: &str = "cluster-secret-for-the-auth-tests-abcdefgh";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// `(status, body)` of `method path` with an optional Authorization value.
fn call(http: &str, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let url = format!("{http}{path}");
    let a = agent();
    let mut response = match method {
        "GET" => {
            let mut r = a.get(&url);
            if let Some(v) = auth {
                r = r.header("Authorization", v);
            }
            r.call()
        }
        _ => {
            let mut r = a.post(&url);
            if let Some(v) = auth {
                r = r.header("Authorization", v);
            }
            r.send(body)
        }
    }
    .expect("request sent");
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `chronicle token ...` as the bootstrap admin; stdout.
fn token_cli(http: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("token")
        .args(args)
        .args(["--http", http])
        .env("CHRONICLE_TOKEN", BOOTSTRAP)
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "chronicle token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn create(http: &str, name: &str, role: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["create", "--name", name, "--role", role, "--json"];
    args.extend_from_slice(extra);
    let made: serde_json::Value = serde_json::from_str(&token_cli(http, &args)).unwrap();
    (
        made["token"].as_str().unwrap().to_string(),
        made["id"].as_str().unwrap().to_string(),
    )
}

fn secret_files(dir: &std::path::Path) -> (String, String) {
    let bootstrap = dir.join("bootstrap");
    let secret = dir.join("secret");
    std::fs::write(&bootstrap, format!("{BOOTSTRAP}\n")).unwrap();
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    (
        bootstrap.display().to_string(),
        secret.display().to_string(),
    )
}

fn metric(http: &str, auth: &str, name: &str) -> f64 {
    let (status, text) = call(http, "GET", "/metrics", Some(auth), "");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn each_role_against_each_route_class() {
    let dir = tempfile::tempdir().unwrap();
    let (bootstrap, _) = secret_files(dir.path());
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &["--auth", "--bootstrap-token-file", &bootstrap],
    );
    let http = node.http.as_str();
    wait_until(Duration::from_secs(20), "ready", || {
        call(http, "GET", "/health/ready", None, "").0 == 200
    });

    let (reader, reader_id) = create(http, "grafana", "reader", &[]);
    let (writer, _) = create(http, "prometheus", "writer", &[]);
    let (admin, _) = create(http, "operator", "admin", &[]);
    let (scoped, _) = create(http, "app", "writer", &["--metric-prefix", "app_"]);
    let (ingest_only, _) = create(http, "collector", "writer", &["--feature", "ingest"]);

    let write =
        |auth: Option<&str>| call(http, "POST", "/write", auth, "cpu,host=a load=1 1000\n").0;
    let read =
        |auth: Option<&str>| call(http, "GET", "/api/v1/query?query=cpu_load&time=1", auth, "").0;
    let json_read = |auth: Option<&str>| {
        call(
            http,
            "POST",
            "/query",
            auth,
            r#"{"metric":"cpu_load","start":0,"end":10}"#,
        )
        .0
    };
    let admin_route = |auth: Option<&str>| call(http, "GET", "/api/v1/auth/tokens", auth, "").0;
    let kv = |auth: Option<&str>| {
        call(
            http,
            "POST",
            "/api/v1/kv/get",
            auth,
            r#"{"namespace":"n","key":"k"}"#,
        )
        .0
    };
    let basic = |token: &str| {
        use std::io::Write;
        // base64 by hand: the test crate has no encoder and the alphabet is short.
        let input = format!("prometheus:{token}");
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(table[((n >> (18 - 6 * i)) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        let mut s = Vec::new();
        write!(s, "Basic {}", String::from_utf8(out).unwrap()).unwrap();
        String::from_utf8(s).unwrap()
    };

    // No credential: 401 everywhere but the probes.
    assert_eq!(call(http, "GET", "/health/live", None, "").0, 200);
    for status in [
        write(None),
        read(None),
        json_read(None),
        admin_route(None),
        kv(None),
    ] {
        assert_eq!(status, 401);
    }
    let (status, body) = call(http, "GET", "/metrics", None, "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");

    let (r, w, a) = (bearer(&reader), bearer(&writer), bearer(&admin));
    // reader: reads only.
    assert_eq!(write(Some(&r)), 403);
    assert_eq!(read(Some(&r)), 200);
    assert_eq!(json_read(Some(&r)), 200);
    assert_eq!(admin_route(Some(&r)), 403);
    assert_eq!(kv(Some(&r)), 403);
    // writer: writes and reads.
    assert_eq!(write(Some(&w)), 204);
    assert_eq!(read(Some(&w)), 200);
    assert_eq!(admin_route(Some(&w)), 403);
    assert_eq!(kv(Some(&w)), 403);
    // admin: everything.
    assert_eq!(write(Some(&a)), 204);
    assert_eq!(read(Some(&a)), 200);
    assert_eq!(admin_route(Some(&a)), 200);
    // Let through: the key is absent.
    assert_eq!(kv(Some(&a)), 404);
    // Basic with the token as password (Prometheus remote write, Grafana).
    assert_eq!(write(Some(&basic(&writer))), 204);
    assert_eq!(read(Some(&basic(&reader))), 200);
    assert_eq!(write(Some(&basic(&reader))), 403);
    // A metric-scoped writer writes its metrics only, all or nothing, and
    // cannot read.
    let s = bearer(&scoped);
    assert_eq!(
        call(
            http,
            "POST",
            "/write",
            Some(&s),
            "app_requests value=1 1000\n"
        )
        .0,
        204
    );
    let (status, body) = call(
        http,
        "POST",
        "/write",
        Some(&s),
        "app_requests value=2 2000\ncpu,host=z load=9 2000\n",
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(read(Some(&s)), 403);
    // A feature-scoped writer: ingest yes, query no.
    let f = bearer(&ingest_only);
    assert_eq!(write(Some(&f)), 204);
    assert_eq!(read(Some(&f)), 403);
    // Nothing of the refused request was written.
    let (_, body) = call(
        http,
        "GET",
        "/api/v1/query?query=count_over_time(cpu_load%7Bhost%3D%22z%22%7D%5B1h%5D)&time=3",
        Some(&a),
        "",
    );
    assert!(body.contains(r#""result":[]"#), "{body}");

    // Scopes cannot be widened: an admin limited to `auth` makes only
    // `auth`-scoped tokens; nobody reaches the token records through kv.
    let (auth_admin, _) = create(http, "auth-admin", "admin", &["--feature", "auth"]);
    let aa = bearer(&auth_admin);
    let wide = r#"{"name":"wide","role":"admin"}"#;
    assert_eq!(
        call(http, "POST", "/api/v1/auth/tokens", Some(&aa), wide).0,
        403
    );
    let narrow = r#"{"name":"narrow","role":"reader","scopes":{"features":["auth"]}}"#;
    assert_eq!(
        call(http, "POST", "/api/v1/auth/tokens", Some(&aa), narrow).0,
        201
    );
    let forge = r#"{"namespace":"auth","key":"token/0000000000000000","value":"{}"}"#;
    assert_eq!(call(http, "POST", "/api/v1/kv/put", Some(&a), forge).0, 403);
    assert_eq!(
        call(
            http,
            "POST",
            "/api/v1/kv/ls",
            Some(&a),
            r#"{"namespace":"auth"}"#
        )
        .0,
        403
    );

    // Percent-encoded paths are classified as the router decodes them.
    for path in [
        "/api/v1/%61uth/tokens",
        "/api/v1/%6Bv/get",
        "/api/v1/%63luster/remove-node?id=9",
        "/%77rite",
    ] {
        let (status, body) = call(http, "POST", path, Some(&r), "{}");
        assert_eq!(status, 403, "{path}: {body}");
    }

    // Hostile and malformed credentials: 401, never a 5xx.
    let long = format!("Bearer {}", "x".repeat(5000));
    let forged_id = format!("Bearer chr_{}_{}", &reader[4..20], "A".repeat(43));
    for bad in [
        "Bearer",
        "Bearer nope",
        "Basic !!!!",
        "Basic Zm9v",
        "Digest abc",
        long.as_str(),
        forged_id.as_str(),
        "Bearer chr_zzzzzzzzzzzzzzzz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let status = read(Some(bad));
        assert!(status == 401, "{bad:.40}: {status}");
    }

    // Listed without secrets; revoked on the spot.
    let listed = token_cli(http, &["list", "--json"]);
    assert!(listed.contains(&reader_id), "{listed}");
    assert!(
        !listed.contains(&reader[21..]),
        "a secret in the list: {listed}"
    );
    assert!(!listed.contains("sha256"), "a hash in the list: {listed}");
    token_cli(http, &["revoke", &reader_id]);
    assert_eq!(read(Some(&r)), 401);

    assert!(metric(http, &a, "chronicle_auth_refused_total{status=\"401\"}") >= 10.0);
    assert!(metric(http, &a, "chronicle_auth_refused_total{status=\"403\"}") >= 8.0);
    assert_eq!(call(http, "GET", "/health/ready", None, "").0, 200);
    assert!(node.stop().success());
}

#[test]
fn settings_that_would_expose_a_node_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("serve")
            .args(["--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env_remove("CHRONICLE_CLUSTER_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Every interface without authentication (checked before binding).
    let err = run(&["--http-addr", "0.0.0.0:1"]);
    assert!(
        err.contains("refusing to serve 0.0.0.0:1 without authentication"),
        "{err}"
    );
    // A NATS user without a password is an error, not silently nobody.
    let err = run(&[
        "--nats-url",
        "nats://127.0.0.1:1",
        "--nats-user",
        "chronicle",
    ]);
    assert!(err.contains("user is set without a password"), "{err}");
    // Authentication over NATS needs the cluster secret.
    let err = run(&["--nats-url", "nats://127.0.0.1:1", "--auth"]);
    assert!(err.contains("needs a cluster secret"), "{err}");
    // Two kinds of NATS credential at once: which one counts would be the
    // server's guess.
    let seed = dir.path().join("seed");
    std::fs::write(
        &seed,
        "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4",
    )
    .unwrap();
    let err = run(&[
        "--nats-url",
        "nats://127.0.0.1:1",
        "--nats-token",
        "t",
        "--nats-nkey-file",
        seed.to_str().unwrap(),
    ]);
    assert!(
        err.contains("give one credential, not token and nkey seed"),
        "{err}"
    );
}

/// Starts `chronicle serve` against `url` with `args`; the node must refuse
/// to start (within 30 s) and say why on stderr.
fn refused_by_nats(url: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--http-addr",
            &format!("127.0.0.1:{}", chronicle_tests::free_port()),
        ])
        .args(["--nats-url", url])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "{args:?} started");
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?}: the node neither connected nor gave up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node is ready, stores a written point and answers a query with it.
fn serves_writes_and_queries(node: &NodeProcess, metric: &str) {
    wait_until(Duration::from_secs(20), "ready", || {
        call(&node.http, "GET", "/health/ready", None, "").0 == 200
    });
    let (code, body) = call(
        &node.http,
        "POST",
        "/write",
        None,
        &format!("{metric} value=1 1000000000\n"),
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = call(
        &node.http,
        "POST",
        "/query",
        None,
        &format!(r#"{{"metric":"{metric}","start":0}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"points\":[[1000000000,1.0]]"), "{body}");
}

/// A self-signed leaf certificate for 127.0.0.1 and its key, made by
/// `openssl` in `dir` (a leaf, not a CA: webpki refuses a CA certificate as
/// a server's).
fn loopback_certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian package openssl) makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// Besides a user and password (above), the node authenticates to NATS with
/// a token or an nkey, from flags: ready, serving writes and queries, and a
/// clean stop; a wrong credential keeps it from starting, saying so.
#[test]
fn the_node_authenticates_to_nats_with_a_token_or_an_nkey() {
    // A token.
    let server = NatsServer::start_with_config("authorization { token: \"s3cret-token\" }\n");
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        Some(&server.url()),
        &["--nats-token", "s3cret-token"],
    );
    serves_writes_and_queries(&node, "creds");
    let status = node.stop();
    assert!(status.success(), "{status}");
    let err = refused_by_nats(&server.url(), &["--nats-token", "wrong"]);
    assert!(err.to_lowercase().contains("authoriz"), "{err}");

    // An nkey: the server knows only the public key.
    let pair = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
        pair.public_key()
    ));
    let seed = dir.path().join("nkey.seed");
    std::fs::write(&seed, format!("{}\n", pair.seed().unwrap())).unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data2"),
        Some(&server.url()),
        &["--nats-nkey-file", seed.to_str().unwrap()],
    );
    serves_writes_and_queries(&node, "creds");
    let status = node.stop();
    assert!(status.success(), "{status}");
    let other = dir.path().join("other.seed");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let err = refused_by_nats(
        &server.url(),
        &["--nats-nkey-file", other.to_str().unwrap()],
    );
    assert!(err.to_lowercase().contains("authoriz"), "{err}");
}

#[test]
fn a_revocation_counts_on_every_node_within_a_second_and_forged_raft_rpcs_are_dropped() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (bootstrap, secret) = secret_files(dir.path());
    let nodes: Vec<NodeProcess> = (1..=3)
        .map(|id| {
            NodeProcess::start(
                BIN,
                &dir.path().join(format!("n{id}")),
                Some(&server.url()),
                &[
                    "--node-id",
                    &id.to_string(),
                    "--initial-nodes",
                    "1,2,3",
                    "--auth",
                    "--bootstrap-token-file",
                    &bootstrap,
                    "--cluster-secret-file",
                    &secret,
                ],
            )
        })
        .collect();
    for n in &nodes {
        wait_until(Duration::from_secs(60), "cluster ready", || {
            call(&n.http, "GET", "/health/ready", None, "").0 == 200
        });
    }
    let admin = bearer(BOOTSTRAP);
    let (token, id) = create(&nodes[0].http, "dashboards", "reader", &[]);
    let t = bearer(&token);
    let query = "/api/v1/query?query=up&time=1";
    for n in &nodes {
        wait_until(Duration::from_secs(5), "token known everywhere", || {
            call(&n.http, "GET", query, Some(&t), "").0 == 200
        });
    }
    // Revoked through node 2; nodes 1 and 3 refuse it within a second.
    let revoked_at = Instant::now();
    token_cli(&nodes[1].http, &["revoke", &id]);
    for n in [&nodes[0], &nodes[2]] {
        while call(&n.http, "GET", query, Some(&t), "").0 != 401 {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "{} still accepts a token revoked {:?} ago",
                n.http,
                revoked_at.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!(
        "revocation counted on every node after {:?}",
        revoked_at.elapsed()
    );

    // A client on the bus, without the cluster secret, asks for a vote on
    // every node's Raft subject of group 0: no member answers or acts on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        // The state over the bus needs an admin token in the headers.
        let ask_kv = |auth: Option<String>| {
            let client = client.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                if let Some(v) = auth {
                    headers.insert("Authorization", v.as_str());
                }
                let reply = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request_with_headers(
                        "chronicle.kv.get",
                        headers,
                        r#"{"namespace":"n","key":"k"}"#.into(),
                    ),
                )
                .await
                .expect("kv reply in time")
                .expect("kv request");
                let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                v["code"].as_u64().unwrap_or(200)
            }
        };
        assert_eq!(ask_kv(None).await, 401);
        assert_eq!(ask_kv(Some(bearer(&token))).await, 401, "a revoked token");
        assert_eq!(
            ask_kv(Some(bearer(BOOTSTRAP))).await,
            404,
            "let through: no such key"
        );
        for node in 1..=3 {
            let forged = client.request(
                format!("chronicle.raft.0.{node}"),
                bytes::Bytes::from_static(b"\x00\x01forged vote request"),
            );
            let answer = tokio::time::timeout(Duration::from_millis(500), forged).await;
            assert!(
                !matches!(answer, Ok(Ok(_))),
                "node {node} answered a forged Raft RPC"
            );
        }
    });
    let dropped: f64 = nodes
        .iter()
        .map(|n| {
            metric(
                &n.http,
                &admin,
                "chronicle_bus_unauthenticated_dropped_total",
            )
        })
        .sum();
    assert!(dropped >= 3.0, "forged messages counted: {dropped}");
    // The cluster is unharmed: a write through one node is read on another.
    let (w, _) = create(&nodes[2].http, "writer", "writer", &[]);
    let w = bearer(&w);
    // A new token is usable on the node that made it at once, on the others
    // once their watch brings it (the same path as a revocation).
    wait_until(
        Duration::from_secs(1),
        "the new token on every node",
        || {
            nodes.iter().all(|n| {
                call(
                    &n.http,
                    "GET",
                    "/api/v1/query?query=up&time=1",
                    Some(&w),
                    "",
                )
                .0 == 200
            })
        },
    );
    assert_eq!(
        call(
            &nodes[0].http,
            "POST",
            "/write",
            Some(&w),
            "after_forgery value=1 1000\n"
        )
        .0,
        204
    );
    let (status, body) = call(
        &nodes[1].http,
        "GET",
        "/api/v1/query?query=after_forgery&time=1",
        Some(&w),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("after_forgery"), "{body}");
    for n in nodes {
        assert!(n.stop().success());
    }
}

/// TLS to NATS: a nats-server that requires TLS with a certificate of its
/// own; the node trusts it through `--nats-ca` and serves writes and
/// queries, and without the CA it refuses to start, saying why.
#[test]
fn the_node_connects_to_nats_over_tls_with_the_ca_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = loopback_certificate(dir.path(), "nats");
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        cert.display(),
        key.display()
    ));
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        Some(&server.url()),
        &["--nats-ca", cert.to_str().unwrap()],
    );
    serves_writes_and_queries(&node, "tls");
    let status = node.stop();
    assert!(status.success(), "{status}");
    // Without the CA the server's certificate is not trusted.
    let err = refused_by_nats(&server.url(), &["--nats-tls"]);
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
}

#[test]
fn https_serves_the_configured_certificate_and_the_cli_trusts_it_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (bootstrap, _) = secret_files(dir.path());
    let (cert, key) = loopback_certificate(dir.path(), "cert");
    let port = chronicle_tests::free_port();
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--auth", "--bootstrap-token-file", &bootstrap])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("CHRONICLE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed when the test ends, passed or not.
    let _node = chronicle_tests::KillOnDrop(child);
    let https = format!("https://127.0.0.1:{port}");
    let pem = std::fs::read(&cert).unwrap();
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
                .build(),
        )
        .build()
        .into();
    wait_until(Duration::from_secs(20), "HTTPS health", || {
        tls.get(format!("{https}/health/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    // Plain HTTP on the TLS port gets no answer.
    assert!(agent()
        .get(format!("http://127.0.0.1:{port}/health/live"))
        .call()
        .map_or(true, |r| r.status() != 200));
    // The CLI over HTTPS, trusting the node's certificate.
    let cli = |ca: bool, args: &[&str]| {
        let mut c = Command::new(BIN);
        if ca {
            c.arg("--ca-file").arg(&cert);
        }
        c.args(args)
            .args(["--http", &https])
            .env("CHRONICLE_TOKEN", BOOTSTRAP)
            .output()
            .unwrap()
    };
    let out = cli(
        true,
        &["token", "create", "--name", "tls", "--role", "reader"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let mut answer = tls
        .get(format!("{https}/api/v1/query?query=up&time=1"))
        .header("Authorization", format!("Bearer {}", token.trim()))
        .call()
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "{:?}",
        answer.body_mut().read_to_string()
    );
    // Without the CA, the CLI refuses the unknown certificate.
    let out = cli(false, &["token", "list"]);
    assert!(!out.status.success());
}

/// The nats-server configuration of docs/operations.md ("Separating cluster
/// traffic from clients"), with test passwords.
const NATS_PERMISSIONS: &str = r#"
authorization {
  users = [
    { user: chronicle, password: node-password }
    { user: app, password: app-password,
      permissions: {
        publish: { allow: ["chronicle.ingest.>", "chronicle.query", "_INBOX.>"] }
        subscribe: { allow: ["_INBOX.>", "chronicle.events.>"] }
      }
    }
  ]
}
"#;

#[test]
fn a_client_user_cannot_publish_on_cluster_subjects_while_ingest_and_query_work() {
    let server = NatsServer::start_with_config(NATS_PERMISSIONS);
    let dir = tempfile::tempdir().unwrap();
    let node = {
        // The password from the environment, not the command line.
        std::env::set_var("CHRONICLE_NATS_PASSWORD", "node-password");
        let n = NodeProcess::start(
            BIN,
            &dir.path().join("data"),
            Some(&server.url()),
            &["--nats-user", "chronicle"],
        );
        std::env::remove_var("CHRONICLE_NATS_PASSWORD");
        n
    };
    wait_until(Duration::from_secs(20), "ready", || {
        call(&node.http, "GET", "/health/ready", None, "").0 == 200
    });
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let with = |user: &'static str, password: &'static str| {
            let url = url.clone();
            async move {
                async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
                    .connect(url)
                    .await
                    .unwrap()
            }
        };
        let app = with("app", "app-password").await;
        let node_user = with("chronicle", "node-password").await;
        // Ingest and query work for the client user.
        let ack = tokio::time::timeout(
            Duration::from_secs(10),
            app.request("chronicle.ingest.room", "room temp=21 1000\n".into()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&ack.payload[..], br#"{"written":1}"#);
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            app.request(
                "chronicle.query",
                r#"{"metric":"room_temp","start":0,"end":2000}"#.into(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            String::from_utf8_lossy(&answer.payload).contains("room_temp"),
            "{:?}",
            answer.payload
        );
        // What the client publishes on a Raft subject never reaches a
        // subscriber there; the same publish by the node's user does.
        let mut raft = node_user.subscribe("chronicle.raft.>").await.unwrap();
        node_user.flush().await.unwrap();
        app.publish("chronicle.raft.0.1", "forged".into())
            .await
            .unwrap();
        app.flush().await.ok();
        let leaked = tokio::time::timeout(Duration::from_millis(500), raft.next()).await;
        assert!(leaked.is_err(), "the client's Raft message was delivered");
        node_user
            .publish("chronicle.raft.0.1", "allowed".into())
            .await
            .unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(5), raft.next())
            .await
            .expect("the node user's message arrives")
            .unwrap();
        assert_eq!(&delivered.payload[..], b"allowed");
        // Nor may the client ask a node's cluster subjects anything.
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            app.request("chronicle.cluster.info", "".into()),
        )
        .await;
        assert!(
            !matches!(asked, Ok(Ok(_))),
            "the client reached cluster.info"
        );
    });
    assert!(node.stop().success());
}

/// A `.creds` file (a user JWT signed by its account, and the user's nkey
/// seed, as `nsc` writes them) against a nats-server in operator mode (its
/// operator's and account's JWTs preloaded): the node connects and serves;
/// a user signed by an account the operator never issued is refused.
#[test]
fn the_node_authenticates_to_nats_with_a_creds_file() {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let serial = std::cell::Cell::new(0u32);
    // A JWT as nats-io/jwt encodes v2 claims, signed by `issuer`.
    let jwt = |issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value| {
        serial.set(serial.get() + 1);
        let claims = serde_json::json!({
            "jti": format!("CHRONICLETEST{:039}", serial.get()),
            "iat": now,
            "iss": issuer.public_key(),
            "name": subject,
            "sub": subject,
            "nats": nats,
        });
        let signing_input = format!(
            "{}.{}",
            b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
            b64(claims.to_string().as_bytes())
        );
        let signature = issuer.sign(signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64(&signature))
    };
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}},
                           "type": "account", "version": 2}),
    );
    let creds = |signer: &nkeys::KeyPair, path: &std::path::Path| {
        let user = nkeys::KeyPair::new_user();
        let user_jwt = jwt(
            signer,
            &user.public_key(),
            serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                               "type": "user", "version": 2}),
        );
        std::fs::write(
            path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().unwrap()
            ),
        )
        .unwrap();
    };
    // JetStream (the test server runs it) needs a system account in
    // operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let conf = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {acc}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
        sys = system.public_key(),
        acc = account.public_key(),
    );
    let server = NatsServer::start_with_config(&conf);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("node.creds");
    creds(&account, &good);
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        Some(&server.url()),
        &["--nats-creds", good.to_str().unwrap()],
    );
    serves_writes_and_queries(&node, "jwt");
    let status = node.stop();
    assert!(status.success(), "{status}");
    // Signed by an account the operator never issued.
    let stranger = dir.path().join("stranger.creds");
    creds(&nkeys::KeyPair::new_account(), &stranger);
    let err = refused_by_nats(&server.url(), &["--nats-creds", stranger.to_str().unwrap()]);
    assert!(err.to_lowercase().contains("authoriz"), "{err}");
}

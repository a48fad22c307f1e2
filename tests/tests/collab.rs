//! Collaborative sessions against node processes, with real clients:
//! unmodified npm yjs + y-websocket (tests/collab-js/coedit.mjs, run by
//! Node.js) co-edit and converge with every keystroke kept and each other's
//! awareness seen; a viewer's edits are refused and it is told; the text
//! survives a restart of the node; a JSON-protocol client sees the state;
//! hostile requests and frames get a 4xx or that client's disconnection and
//! leave the node and the other participants unharmed.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chronicle_tests::NodeProcess;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-collab-tests-0123456789";

type Socket = WebSocket<TcpStream>;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("collab-js")
}

/// Node.js with the test's npm packages, or why not.
fn node_ready() -> Result<(), String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is not installed (scripts/test-all installs it)".into());
    }
    if !js_dir().join("node_modules/y-websocket").exists() {
        return Err(format!(
            "{}: run `npm ci` there (scripts/test-all does)",
            js_dir().display()
        ));
    }
    Ok(())
}

fn start(dir: &std::path::Path) -> NodeProcess {
    let boot = dir.join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    NodeProcess::start(
        BIN,
        &dir.join("data"),
        None,
        &["--auth", "--bootstrap-token-file", boot.to_str().unwrap()],
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn post(http: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut r = agent()
        .post(format!("{http}{path}"))
        .content_type("application/json");
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut response = r.send(serde_json::to_vec(body).unwrap()).unwrap();
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn get(http: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = agent().get(format!("{http}{path}"));
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut response = r.call().unwrap();
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn token(http: &str, name: &str, role: &str) -> (String, String) {
    chronicle_tests::create_token(BIN, http, BOOTSTRAP, name, role)
}

fn coedit(plan: &Value) -> Value {
    let out = Command::new("node")
        .arg(js_dir().join("coedit.mjs"))
        .arg(plan.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "coedit.mjs said: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn sorted(s: &str) -> Vec<char> {
    let mut v: Vec<char> = s.chars().collect();
    v.sort_unstable();
    v
}

/// A JSON-protocol participant.
fn open(http: &str, path_and_query: &str, token: Option<&str>) -> Result<Socket, u16> {
    let url = format!("{}{path_and_query}", http.replacen("http://", "ws://", 1));
    let mut request = url.as_str().into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let tcp = TcpStream::connect(http.trim_start_matches("http://")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client(request, tcp) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// The next JSON message of `kind` (skipping others); `None` on close or timeout.
fn next_of(socket: &mut Socket, kind: &str) -> Option<Value> {
    loop {
        match socket.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return Some(v);
                }
            }
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn yjs_clients_co_edit_a_viewer_is_refused_and_the_text_survives_a_restart() {
    if let Err(why) = node_ready() {
        panic!("this test needs Node.js and tests/collab-js's packages: {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let http = node.http.clone();
    let (ada, _) = token(&http, "ada", "writer");
    let (bob, _) = token(&http, "bob", "writer");
    let (carol, carol_id) = token(&http, "carol", "writer");

    let (status, created) = post(
        &http,
        "/api/collab/sessions/create",
        Some(&ada),
        &json!({"name": "incident 42"}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // The owner makes carol a viewer.
    let (status, set) = post(
        &http,
        "/api/collab/sessions/join",
        Some(&ada),
        &json!({"session": id, "member": carol_id, "role": "viewer"}),
    );
    assert_eq!(status, 200, "{set}");
    let (status, joined) = post(
        &http,
        "/api/collab/sessions/join",
        Some(&carol),
        &json!({"session": id}),
    );
    assert_eq!(
        (status, joined["role"].as_str()),
        (200, Some("viewer")),
        "{joined}"
    );

    let ws = format!("{}/api/collab/ws", http.replacen("http://", "ws://", 1));
    let (a_text, b_text) = (
        "sum by (job) (rate(http_requests_total[5m]))",
        "histogram_quantile(0.99, x)",
    );
    let result = coedit(&json!({
        "clients": [
            {"url": ws, "session": id, "token": ada, "name": "ada", "type": a_text, "seed": 11},
            {"url": ws, "session": id, "token": bob, "name": "bob", "type": b_text, "seed": 23},
            {"url": ws, "session": id, "token": carol, "name": "carol", "type": "DROP", "seed": 5,
             "expect_denied": true},
        ],
        "timeout_ms": 20000,
    }));
    assert_eq!(result["converged"], true, "{result}");
    let texts: Vec<String> = result["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    // Both writers' keystrokes, every one, and none of the viewer's.
    assert_eq!(texts[0], texts[1]);
    assert_eq!(sorted(&texts[0]), sorted(&format!("{a_text}{b_text}")));
    assert!(
        result["denied"][2]
            .as_str()
            .unwrap_or("")
            .contains("viewer"),
        "{result}"
    );
    assert_eq!(result["denied"][0], Value::Null);
    // Awareness: each client saw the three names.
    for seen in result["awareness"].as_array().unwrap() {
        assert_eq!(seen, &json!(["ada", "bob", "carol"]), "{result}");
    }

    // A JSON client sees the same text.
    let path = format!("/api/collab/ws?session={id}");
    let mut json_client = open(&http, &path, Some(&bob)).unwrap();
    let state = next_of(&mut json_client, "state_update").expect("a state update");
    assert_eq!(state["state"]["query_text"], texts[0].as_str());
    drop(json_client);

    // Restart: the text was durable.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &[
            "--auth",
            "--bootstrap-token-file",
            dir.path().join("boot").to_str().unwrap(),
        ],
    );
    let mut json_client = open(&node.http, &path, Some(&bob)).unwrap();
    let state =
        next_of(&mut json_client, "state_update").expect("a state update after the restart");
    assert_eq!(state["state"]["query_text"], texts[0].as_str());
    // And a JSON edit reaches it as a minimal CRDT edit.
    json_client
        .send(Message::Text(
            json!({"type": "operation", "operation": {"type": "update_query",
                   "data": {"query": "up", "language": "promql"}}})
            .to_string()
            .into(),
        ))
        .unwrap();
    let mut last = Value::Null;
    for _ in 0..10 {
        match next_of(&mut json_client, "state_update") {
            Some(s) if s["state"]["query_text"] == "up" => {
                last = s;
                break;
            }
            Some(s) => last = s,
            None => break,
        }
    }
    assert_eq!(last["state"]["query_text"], "up", "{last}");

    // Carol's token is revoked: her open connection ends with it.
    let mut carols = open(&node.http, &path, Some(&carol)).unwrap();
    next_of(&mut carols, "state_update").expect("carol is connected");
    let revoked = agent()
        .delete(format!("{}/api/v1/auth/tokens/{carol_id}", node.http))
        .header("Authorization", &format!("Bearer {BOOTSTRAP}"))
        .call()
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let closed = loop {
        match carols.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| f.reason.to_string()),
            Ok(_) => continue,
            Err(e) => panic!("the connection did not close after the revocation: {e}"),
        }
    };
    assert!(
        closed.as_deref().unwrap_or("").contains("revoked"),
        "{closed:?}"
    );
    // Bob's connection is unharmed.
    json_client
        .send(Message::Text(json!({"type": "state"}).to_string().into()))
        .unwrap();
    assert!(next_of(&mut json_client, "state_update").is_some());
}

#[test]
fn hostile_requests_and_frames_are_refused_and_others_are_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let http = node.http.as_str();
    let (writer, _) = token(http, "w", "writer");
    let (reader, _) = token(http, "r", "reader");

    // Routes: no token, a reader creating, bad bodies, bad and unknown ids.
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/create",
            None,
            &json!({"name": "x"})
        )
        .0,
        401
    );
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/create",
            Some(&reader),
            &json!({"name": "x"})
        )
        .0,
        403
    );
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/create",
            Some(&writer),
            &json!({"name": ""})
        )
        .0,
        400
    );
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/create",
            Some(&writer),
            &json!({"nam": "x"})
        )
        .0,
        400
    );
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/create",
            Some(&writer),
            &json!({"name": "x", "default_role": "owner"})
        )
        .0,
        400
    );
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/join",
            Some(&writer),
            &json!({"session": "../x"})
        )
        .0,
        400
    );
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/join",
            Some(&writer),
            &json!({"session": "0123456789abcdef"})
        )
        .0,
        404
    );
    let big = "x".repeat(70 << 10);
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/create",
            Some(&writer),
            &json!({"name": big})
        )
        .0,
        413
    );
    assert_eq!(get(http, "/api/collab/sessions", None).0, 401);
    assert_eq!(get(http, "/api/collab/sessions", Some(&reader)).0, 200);

    let (_, created) = post(
        http,
        "/api/collab/sessions/create",
        Some(&writer),
        &json!({"name": "t"}),
    );
    let id = created["id"].as_str().unwrap().to_string();
    // A reader is a viewer; the owner's role cannot be set by others.
    assert_eq!(
        post(
            http,
            "/api/collab/sessions/join",
            Some(&reader),
            &json!({"session": id, "member": "w", "role": "viewer"})
        )
        .0,
        403
    );
    // WebSockets: no token, a bad id, an unknown session, a bad protocol.
    assert_eq!(
        open(http, &format!("/api/collab/ws/{id}"), None).err(),
        Some(401)
    );
    assert_eq!(
        open(http, "/api/collab/ws/nothex", Some(&writer)).err(),
        Some(400)
    );
    assert_eq!(
        open(http, "/api/collab/ws/0123456789abcdef", Some(&writer)).err(),
        Some(404)
    );
    assert_eq!(
        open(
            http,
            &format!("/api/collab/ws?session={id}&protocol=xml"),
            Some(&writer)
        )
        .err(),
        Some(400)
    );
    // The token in the query string works for WebSocket upgrades.
    let path = format!("/api/collab/ws?session={id}&access_token={writer}");
    let mut good = open(http, &path, None).expect("a token in the query string");
    assert!(next_of(&mut good, "state_update").is_some());

    // A Yjs participant that sends garbage is disconnected; a state vector
    // claiming four billion entries does not allocate them.
    for garbage in [
        vec![0u8, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0u8, 2, 8, 0, 1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![7u8, 7, 7],
        vec![0xffu8; 12],
    ] {
        let mut bad = open(http, &format!("/api/collab/ws/{id}"), Some(&writer)).unwrap();
        bad.send(Message::Binary(garbage.into())).unwrap();
        let closed = (0..20).any(|_| matches!(bad.read(), Ok(Message::Close(_)) | Err(_)));
        assert!(closed, "a malformed frame did not close the connection");
    }
    // A JSON participant's bad messages get errors, not a crash.
    good.send(Message::Text("{not json".into())).unwrap();
    let e = next_of(&mut good, "error").expect("an error message");
    assert_eq!(e["error"]["code"], "bad_request");
    // A text frame on the binary protocol closes only that connection.
    let mut wrong = open(http, &format!("/api/collab/ws/{id}"), Some(&writer)).unwrap();
    wrong.send(Message::Text("hello".into())).unwrap();
    assert!((0..20).any(|_| matches!(wrong.read(), Ok(Message::Close(_)) | Err(_))));
    // A flood: thousands of messages at once; the client is cut off.
    let mut flood = open(http, &format!("/api/collab/ws?session={id}"), Some(&writer)).unwrap();
    let mut cut = false;
    for _ in 0..5000 {
        if flood
            .send(Message::Text(r#"{"type":"state"}"#.into()))
            .is_err()
        {
            cut = true;
            break;
        }
    }
    cut = cut || (0..6000).any(|_| matches!(flood.read(), Ok(Message::Close(_)) | Err(_)));
    assert!(cut, "a flood was not cut off");
    // The well-behaved participant still works, and so does the node.
    good.send(Message::Text(
        json!({"type": "operation", "operation": {"type": "update_query", "data": {"query": "up"}}})
            .to_string()
            .into(),
    ))
    .unwrap();
    let ok = (0..10).any(|_| {
        next_of(&mut good, "state_update").is_some_and(|s| s["state"]["query_text"] == "up")
    });
    assert!(ok, "the well-behaved participant stopped getting updates");
    assert_eq!(get(http, "/health/ready", None).0, 200);
}

/// Whether every shard of a three-node cluster has a leader, as node `http` sees it.
fn all_led(http: &str, shards: usize) -> bool {
    let (status, s) = get(http, "/api/v1/cluster/status", None);
    status == 200 && (0..shards).all(|i| s["shards"][i]["leader"].as_u64().is_some())
}

/// Three node processes on one NATS server, every shard led; their HTTP
/// addresses. The directories must outlive the nodes.
fn three_nodes(
    nats: &chronicle_tests::NatsServer,
    dirs: &[tempfile::TempDir],
) -> (Vec<Option<NodeProcess>>, Vec<String>) {
    let nodes: Vec<Option<NodeProcess>> = (1..=3u64)
        .map(|id| {
            Some(NodeProcess::start(
                BIN,
                dirs[id as usize - 1].path(),
                Some(&nats.url()),
                &[
                    "--node-id",
                    &id.to_string(),
                    "--initial-nodes",
                    "1,2,3",
                    "--shards",
                    "3",
                    "--allow-fault-injection",
                ],
            ))
        })
        .collect();
    let http: Vec<String> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().http.clone())
        .collect();
    chronicle_tests::wait_until(Duration::from_secs(30), "every shard led", || {
        all_led(&http[0], 3)
    });
    (nodes, http)
}

#[test]
fn participants_on_two_nodes_share_a_session_and_edits_survive_the_loss_of_one() {
    if let Err(why) = node_ready() {
        panic!("this test needs Node.js and tests/collab-js's packages: {why}");
    }
    let nats = chronicle_tests::NatsServer::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, http) = three_nodes(&nats, &dirs);
    let (status, created) = post(
        &http[0],
        "/api/collab/sessions/create",
        None,
        &json!({"name": "across nodes", "participant": "ada"}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // Node 1's relays of edits are all lost (its awareness still goes
    // out): node 2 gets Ada's edits only by asking for what it lacks.
    let (status, rule) = post(
        &http[0],
        &format!("/debug/faults/rule?subject=chronicle.collab.{id}&drop=1"),
        None,
        &json!({}),
    );
    assert_eq!(status, 204, "{rule}");

    // Ada on node 1, Bob on node 2, typing at once.
    let ws = |i: usize| format!("{}/api/collab/ws", http[i].replacen("http://", "ws://", 1));
    let (a_text, b_text) = ("rate(errors_total[1m])", "max by (pod)");
    let result = coedit(&json!({
        "clients": [
            {"url": ws(0), "session": id, "name": "ada", "type": a_text, "seed": 4},
            {"url": ws(1), "session": id, "name": "bob", "type": b_text, "seed": 9},
        ],
        "timeout_ms": 30000,
    }));
    assert_eq!(result["converged"], true, "{result}");
    let text = result["texts"][0].as_str().unwrap().to_string();
    assert_eq!(sorted(&text), sorted(&format!("{a_text}{b_text}")));
    // Each saw the other's presence across nodes.
    assert_eq!(result["awareness"][0], json!(["ada", "bob"]), "{result}");
    assert_eq!(result["awareness"][1], json!(["ada", "bob"]), "{result}");
    // Node 2 caught up by state vector; node 1 had Bob's edits relayed.
    let synced = |i: usize, via: &str| {
        let text = agent()
            .get(format!("{}/metrics", http[i]))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let line = format!("chronicle_collab_remote_updates_total{{via=\"{via}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(synced(1, "sync") >= 1.0, "node 2 never caught up by sync");
    assert!(synced(0, "relay") >= 1.0, "node 1 never applied a relay");

    // Node 1 is lost. Node 3, which never had a participant, opens the
    // session from the replicated state: every edit anyone saw is there.
    let mut first = nodes[0].take().unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let path = format!("/api/collab/ws?session={id}&participant=carol");
    let mut state = Value::Null;
    chronicle_tests::wait_until(
        Duration::from_secs(30),
        "node 3 serves the session",
        || match open(&http[2], &path, None) {
            Ok(mut s) => {
                state = next_of(&mut s, "state_update").unwrap_or(Value::Null);
                !state.is_null()
            }
            Err(_) => false,
        },
    );
    assert_eq!(state["state"]["query_text"], text.as_str(), "{state}");
    drop(nodes);
}

/// A metric's value in a node's `/metrics` (0 when absent).
fn metric(http: &str, line_prefix: &str) -> f64 {
    let text = agent()
        .get(format!("{http}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[test]
fn an_idle_session_closes_for_good_and_opens_again_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[features.collab]\nidle_stop_secs = 1\n").unwrap();
    let node = NodeProcess::start(
        BIN,
        &dir.path().join("data"),
        None,
        &["--config", config.to_str().unwrap()],
    );
    let http = node.http.as_str();
    let (status, created) = post(
        http,
        "/api/collab/sessions/create",
        None,
        &json!({"name": "idle", "participant": "ada"}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/collab/ws?session={id}&participant=ada");
    let mut client = open(http, &path, None).unwrap();
    next_of(&mut client, "state_update").unwrap();
    client
        .send(Message::Text(
            json!({"type": "operation", "operation": {"type": "update_query",
                   "data": {"query": "rate(x[1m])"}}})
            .to_string()
            .into(),
        ))
        .unwrap();
    while next_of(&mut client, "state_update").unwrap()["state"]["query_text"] != "rate(x[1m])" {}
    drop(client);
    // Closed once idle: not restarted by its supervisor, not counted as a
    // crash, and the node stays ready.
    chronicle_tests::wait_until(Duration::from_secs(15), "the idle session closes", || {
        metric(http, "chronicle_collab_sessions ") == 0.0
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        metric(http, "chronicle_collab_sessions "),
        0.0,
        "it came back"
    );
    assert_eq!(
        metric(
            http,
            "chronicle_actor_restarts_total{actor=\"collab_session\"} "
        ),
        0.0
    );
    assert_eq!(get(http, "/health/ready", None).0, 200);
    // The next participant opens it again, with its text.
    let mut client = open(http, &path, None).unwrap();
    let state = next_of(&mut client, "state_update").unwrap();
    assert_eq!(state["state"]["query_text"], "rate(x[1m])", "{state}");
    assert_eq!(metric(http, "chronicle_collab_sessions "), 1.0);
}

#[test]
fn a_participant_that_equivocates_across_nodes_cannot_split_the_copies() {
    if let Err(why) = node_ready() {
        panic!("this test needs Node.js and tests/collab-js's packages: {why}");
    }
    let nats = chronicle_tests::NatsServer::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (nodes, http) = three_nodes(&nats, &dirs);
    let (status, created) = post(
        &http[0],
        "/api/collab/sessions/create",
        None,
        &json!({"name": "equivocation", "participant": "ada"}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let ws = |i: usize| format!("{}/api/collab/ws", http[i].replacen("http://", "ws://", 1));
    let versions = ["sum(rate(a[5m]))", "max(b) by (pod)"];
    let plan = json!({
        "urls": [ws(0), ws(1), ws(2)],
        "session": id,
        "name": "ada",
        "intruder": "mallory",
        "versions": versions,
        "client": 4242,
        "timeout_ms": 20000,
    });
    let out = Command::new("node")
        .arg(js_dir().join("equivocate.mjs"))
        .arg(plan.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| {
            panic!(
                "equivocate.mjs said: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let texts: Vec<&str> = result["texts"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    // One content per (client, clock): every node shows the same text, one
    // of the two versions, and nothing another principal wrote under
    // Ada's client id.
    assert!(
        texts.iter().all(|t| *t == texts[0]),
        "copies differ: {result}"
    );
    assert!(versions.contains(&texts[0]), "{result}");
    assert!(!texts[0].contains("INTRUDER"), "{result}");
    // And a node that reads the session from the state agrees.
    let path = format!("/api/collab/ws?session={id}&participant=carol");
    let mut socket = open(&http[2], &path, None).unwrap();
    let state = next_of(&mut socket, "state_update").unwrap();
    assert_eq!(state["state"]["query_text"], texts[0], "{state}");
    drop(nodes);
}

#[test]
fn a_session_streams_live_results_and_a_bad_query_is_only_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(BIN, &dir.path().join("data"), None, &[]);
    let http = node.http.as_str();
    let (_, created) = post(
        http,
        "/api/collab/sessions/create",
        None,
        &json!({"name": "live", "participant": "ada"}),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let mut client = open(
        http,
        &format!("/api/collab/ws?session={id}&participant=ada"),
        None,
    )
    .unwrap();
    let edit = |client: &mut Socket, query: &str| {
        client
            .send(Message::Text(
                json!({"type": "operation", "operation": {"type": "update_query",
                       "data": {"query": query, "language": "promql"}}})
                .to_string()
                .into(),
            ))
            .unwrap();
    };
    let write = |line: &str| {
        let r = agent()
            .post(format!("{http}/write"))
            .send(line.as_bytes())
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    };
    write("collab_demo,room=kitchen value=21.5");
    edit(&mut client, "collab_demo");
    // The result of the query as typed, then a new one after a write.
    let value_of = |m: &Value| m["result"]["series"][0]["points"][0][1].as_f64();
    let first = next_of(&mut client, "result").expect("a live result");
    assert_eq!(first["query"], "collab_demo", "{first}");
    assert_eq!(value_of(&first), Some(21.5), "{first}");
    std::thread::sleep(Duration::from_millis(50));
    write("collab_demo,room=kitchen value=23");
    let mut updated = Value::Null;
    for _ in 0..5 {
        match next_of(&mut client, "result") {
            Some(m) if value_of(&m) == Some(23.0) => {
                updated = m;
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert_eq!(
        value_of(&updated),
        Some(23.0),
        "no result after the write: {updated}"
    );
    // A query that does not parse: an error message with where, and the
    // session goes on.
    edit(&mut client, "sum(collab_demo");
    let e = next_of(&mut client, "result_error").expect("an error for a bad query");
    assert_eq!(e["query"], "sum(collab_demo", "{e}");
    assert!(
        !e["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{e}"
    );
    edit(&mut client, "collab_demo * 2");
    let fixed = next_of(&mut client, "result").expect("results again after a fix");
    assert_eq!(value_of(&fixed), Some(46.0), "{fixed}");
}

//! Live queries over WebSocket against a node process: the result, then an
//! update when a write reaches a metric the query reads (and none for other
//! metrics); the CLI's `query --follow`; authentication, bad parameters,
//! oversized client messages and the session limit answered without harm.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use chronicle_tests::{wait_until, NodeProcess};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const BOOTSTRAP: &str = "bootstrap-token-for-the-live-tests-0123456789";

type Socket = WebSocket<TcpStream>;

fn ws_url(http: &str, query: &str) -> String {
    format!(
        "{}/api/v1/live?{query}",
        http.replacen("http://", "ws://", 1)
    )
}

/// A node process with `--auth` (the bootstrap token) and `config` as its
/// configuration file, on NATS at `nats` when given (with a cluster secret,
/// which --auth over NATS needs).
fn start_node(dir: &std::path::Path, config: &str, nats: Option<&str>) -> NodeProcess {
    let boot = dir.join("boot");
    std::fs::write(&boot, BOOTSTRAP).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, config).unwrap();
    let secret = dir.join("cluster.secret");
    std::fs::write(
        &secret,
        "live-tests-cluster-secret-0123456789abcdef0123456789",
    )
    .unwrap();
    let mut args = vec![
        "--auth",
        "--bootstrap-token-file",
        boot.to_str().unwrap(),
        "--config",
        file.to_str().unwrap(),
    ];
    if nats.is_some() {
        args.extend(["--cluster-secret-file", secret.to_str().unwrap()]);
    }
    NodeProcess::start(BIN, &dir.join("data"), nats, &args)
}

/// Opens a live session; the handshake's HTTP status when refused.
fn open(http: &str, query: &str, token: Option<&str>) -> Result<Socket, u16> {
    let url = ws_url(http, query);
    let mut request = url.as_str().into_client_request().unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    let address = http.trim_start_matches("http://");
    let tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client(request, tcp) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// The next text message as JSON; `None` when none came within the socket's
/// read timeout.
fn next_json(socket: &mut Socket) -> Option<serde_json::Value> {
    loop {
        match socket.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn write(http: &str, body: &str) {
    let status = ureq::post(format!("{http}/write"))
        .header("Authorization", format!("Bearer {BOOTSTRAP}"))
        .send(body)
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

/// The node's metrics text.
fn metrics(http: &str) -> String {
    ureq::get(format!("{http}/metrics"))
        .header("Authorization", format!("Bearer {BOOTSTRAP}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of the sample `series` (name and labels as printed), 0 when absent.
fn metric(http: &str, series: &str) -> u64 {
    metrics(http)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn open_sessions(http: &str) -> u64 {
    metric(http, "chronicle_live_sessions")
}

fn values(message: &serde_json::Value) -> Vec<f64> {
    message["result"]["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p[1].as_f64())
        .collect()
}

#[test]
fn a_live_query_sends_its_result_then_an_update_per_relevant_write() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        dir.path(),
        "[features.live]\nmax_sessions = 3\ndebounce_ms = 100\n",
        None,
    );
    let http = node.http.as_str();
    let query = "query=live_temp&lang=promql";

    let mut socket = open(http, query, Some(BOOTSTRAP)).expect("upgraded");
    let first = next_json(&mut socket).expect("the first result");
    assert_eq!(first["type"], "result", "{first}");
    assert!(values(&first).is_empty(), "{first}");

    write(http, "live,room=a temp=21.5\n");
    let update = next_json(&mut socket).expect("an update after the write");
    assert_eq!(update["type"], "update", "{update}");
    assert_eq!(values(&update), [21.5], "{update}");

    // A write to a metric the query does not read: nothing.
    socket
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    write(http, "elsewhere value=1\n");
    assert!(
        next_json(&mut socket).is_none(),
        "an update for another metric"
    );
    // Several writes in a burst: coalesced, and the last value is there.
    socket
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for v in [22.0, 23.0, 24.0] {
        write(http, &format!("live,room=a temp={v}\n"));
    }
    let mut last = next_json(&mut socket).expect("an update after the burst");
    while values(&last) != [24.0] {
        last = next_json(&mut socket).expect("the burst's last value");
    }

    // The CLI follows the same way.
    let mut follow = Command::new(BIN)
        .args([
            "query",
            "--follow",
            "--json",
            "--promql",
            "live_temp",
            "--http",
            http,
        ])
        .env("CHRONICLE_TOKEN", BOOTSTRAP)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(values(&first), [24.0], "{first}");
    write(http, "live,room=a temp=25\n");
    let next: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(next["type"], "update");
    assert_eq!(values(&next), [25.0], "{next}");
    let _ = follow.kill();
    let _ = follow.wait();

    // Refusals before the upgrade: no token, bad parameters, not a WebSocket.
    assert_eq!(open(http, query, None).err(), Some(401));
    for bad in [
        "lang=promql",
        "query=up&lang=graphql",
        "query=up&debounce=1ms",
        "query=up&start=now-1h",
        "query=up&frob=1",
    ] {
        assert_eq!(open(http, bad, Some(BOOTSTRAP)).err(), Some(400), "{bad}");
    }
    // A browser page from elsewhere (an Origin not allowed) is refused.
    let mut cross = ws_url(http, query).into_client_request().unwrap();
    cross
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    cross.headers_mut().insert(
        "Authorization",
        format!("Bearer {BOOTSTRAP}").parse().unwrap(),
    );
    let tcp = TcpStream::connect(http.trim_start_matches("http://")).unwrap();
    match tungstenite::client(cross, tcp) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            assert_eq!(r.status().as_u16(), 403)
        }
        other => panic!("a foreign Origin was let in: {:?}", other.map(|_| ())),
    }
    let plain = ureq::get(format!("{http}/api/v1/live?query=up"))
        .header("Authorization", format!("Bearer {BOOTSTRAP}"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(plain.status(), 400);

    // A client message over 64 KiB ends its session, nothing else.
    let mut big = open(http, query, Some(BOOTSTRAP)).unwrap();
    next_json(&mut big).unwrap();
    let _ = big.send(Message::Text("x".repeat(100 << 10).into()));
    let ended = (0..5).any(|_| match big.read() {
        Ok(Message::Close(_)) | Err(_) => true,
        Ok(_) => false,
    });
    assert!(ended, "an oversized message did not end the session");

    // The session limit (3): once only the first is open, two more fit and
    // the next is 503.
    wait_until(Duration::from_secs(10), "one session left open", || {
        open_sessions(http) == 1
    });
    let _b = open(http, query, Some(BOOTSTRAP)).unwrap();
    let _c = open(http, query, Some(BOOTSTRAP)).unwrap();
    assert_eq!(open(http, query, Some(BOOTSTRAP)).err(), Some(503));

    let ready = ureq::get(format!("{http}/health/ready")).call().unwrap();
    assert_eq!(ready.status(), 200);
    drop(socket);
    assert!(node.stop().success());
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_the_node_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        dir.path(),
        "[features.live]\nsend_timeout_ms = 300\ndebounce_ms = 50\n",
        None,
    );
    let http = node.http.as_str();
    // 5,000 series: each result is about half a megabyte.
    let batch = |v: usize| -> String {
        (0..5000)
            .map(|h| format!("slow,host=h{h} load={v}\n"))
            .collect()
    };
    write(http, &batch(0));
    let mut socket = open(http, "query=slow_load", Some(BOOTSTRAP)).expect("upgraded");
    assert_eq!(next_json(&mut socket).unwrap()["type"], "result");
    // The client reads nothing more; every write makes a new result.
    let dropped = || {
        metric(
            http,
            "chronicle_live_sessions_dropped_total{reason=\"slow\"}",
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut v = 1;
    while dropped() == 0 {
        if std::time::Instant::now() >= deadline {
            let text = metrics(http);
            let live: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("chronicle_live"))
                .collect();
            panic!("the slow client was never dropped: {live:?}");
        }
        write(http, &batch(v));
        v += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its close frame waits at most the send timeout too; then it is gone.
    wait_until(Duration::from_secs(10), "the slow session closed", || {
        open_sessions(http) == 0
    });
    let ready = ureq::get(format!("{http}/health/ready")).call().unwrap();
    assert_eq!(ready.status(), 200);
    drop(socket);
    assert!(node.stop().success());
}

/// A client that answers nothing, not even the node's pings, is dropped as
/// silent after three ping intervals; the node stays healthy.
#[test]
fn a_silent_client_is_dropped_after_three_unanswered_pings() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        dir.path(),
        "[features.live]\nping_interval_ms = 200\n",
        None,
    );
    let http = node.http.as_str();
    let silent = || {
        metric(
            http,
            "chronicle_live_sessions_dropped_total{reason=\"silent\"}",
        )
    };
    // A client that reads (and so answers pings) stays.
    let mut talking = open(http, "query=quiet_temp", Some(BOOTSTRAP)).expect("upgraded");
    assert_eq!(next_json(&mut talking).unwrap()["type"], "result");
    // One that never reads after its first result sends no pong.
    let mut mute = open(http, "query=quiet_temp", Some(BOOTSTRAP)).expect("upgraded");
    assert_eq!(next_json(&mut mute).unwrap()["type"], "result");
    talking
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while silent() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent client was kept"
        );
        // Reading answers the node's pings.
        let _ = next_json(&mut talking);
    }
    assert_eq!(silent(), 1, "only the silent client was dropped");
    wait_until(Duration::from_secs(10), "one session left", || {
        open_sessions(http) == 1
    });
    let ready = ureq::get(format!("{http}/health/ready"))
        .call()
        .unwrap()
        .status();
    assert_eq!(ready, 200);
    drop(mute);
    drop(talking);
    assert!(node.stop().success());
}

/// A live SQL query through a node connected to a real nats-server: its
/// result, then an update after a write that reaches the table it reads.
#[test]
fn a_live_sql_query_on_a_node_over_nats_updates_after_a_write() {
    let nats = chronicle_tests::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        dir.path(),
        "[features.live]\ndebounce_ms = 50\n",
        Some(&nats.url()),
    );
    let http = node.http.as_str();
    write(http, "room,room=a temp=20\n");
    let query = "query=SELECT%20max(value)%20FROM%20room_temp%20WHERE%20time%20%3E%20now()%20-%201h&lang=sql";
    let mut socket = open(http, query, Some(BOOTSTRAP)).expect("upgraded");
    let first = next_json(&mut socket).expect("the first result");
    assert_eq!(first["type"], "result", "{first}");
    assert!(first.to_string().contains("20"), "{first}");
    write(http, "room,room=a temp=31.5\n");
    let mut update = next_json(&mut socket).expect("an update after the write");
    while !update.to_string().contains("31.5") {
        update = next_json(&mut socket).expect("the write's value");
    }
    assert_eq!(update["type"], "update", "{update}");
    drop(socket);
    assert!(node.stop().success());
}

//! The Chaos Mesh client against a local HTTP server that plays the
//! Kubernetes API server's documented responses (no API server runs here):
//! create 201, get, watch events, delete 200 then gone, 404, 409
//! AlreadyExists and 422 Invalid with a Status body; and `chronicle chaos run
//! --kubernetes` interrupted with Ctrl-C deletes what it created.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_chaos_mesh::client::Mesh;
use chronicle_chaos_mesh::resources::{translate, Kind, NatsPeer, Scene, RUN_LABEL};
use chronicle_chaos_mesh::MeshError;
use rand::SeedableRng;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");
const NS: &str = "chaos-test";
const PLURALS: [&str; 6] = [
    "podchaos",
    "networkchaos",
    "iochaos",
    "timechaos",
    "stresschaos",
    "schedules",
];

#[derive(Default)]
struct State {
    /// (plural, name) -> object.
    objects: BTreeMap<(String, String), Value>,
    /// Deleted, still held by a finalizer until read once more.
    finalizing: BTreeMap<(String, String), Value>,
    /// "METHOD path?query", in order.
    log: Vec<String>,
    version: u64,
    /// Chaos Mesh's CRDs are installed.
    crds: bool,
    /// Chaos Mesh's controller reports faults injected.
    injects: bool,
    /// A kind whose creation the server refuses as invalid.
    invalid_kind: Option<String>,
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<State>>,
    url: String,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn pod(ordinal: u64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("db-chronicle-{ordinal}"), "namespace": NS,
                     "labels": {"app.kubernetes.io/name": "chronicle", "app.kubernetes.io/instance": "db"}},
        "spec": {"containers": [{"name": "chronicle", "image": "chronicle"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

impl FakeApi {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeApi {
            state: Arc::new(Mutex::new(State {
                crds: true,
                injects: true,
                ..State::default()
            })),
            url,
        };
        let serving = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let fake = serving.clone();
                std::thread::spawn(move || fake.connection(stream));
            }
        });
        fake
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn connection(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header == "\r\n" || header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let (code, answer) = self.route(&method, &target, &body);
            let text = match &answer {
                Value::String(lines) => lines.clone(),
                v => v.to_string(),
            };
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                text.len()
            );
            if writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(text.as_bytes()))
                .is_err()
            {
                return;
            }
        }
    }

    fn route(&self, method: &str, target: &str, body: &[u8]) -> (u16, Value) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let mut st = self.state.lock().unwrap();
        st.log.push(format!(
            "{method} {path}{}",
            if query.is_empty() {
                String::new()
            } else {
                format!("?{}", decode(query))
            }
        ));
        if path == "/health/ready" {
            return (200, json!({"status": "ready"}));
        }
        if path == format!("/api/v1/namespaces/{NS}/pods") {
            // Only the chart's two labels select the release's pods.
            let selector = params.get("labelSelector").cloned().unwrap_or_default();
            let items =
                if selector == "app.kubernetes.io/name=chronicle,app.kubernetes.io/instance=db" {
                    vec![pod(0), pod(1), pod(2)]
                } else {
                    Vec::new()
                };
            return (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
            );
        }
        let prefix = format!("/apis/chaos-mesh.org/v1alpha1/namespaces/{NS}/");
        let Some(rest) = path.strip_prefix(&prefix) else {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let (plural, name) = match rest.split_once('/') {
            Some((p, n)) => (p.to_string(), Some(n.to_string())),
            None => (rest.to_string(), None),
        };
        if !st.crds || !PLURALS.contains(&plural.as_str()) {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        match (method, name) {
            ("POST", None) => {
                let mut object: Value = serde_json::from_slice(body).unwrap();
                let name = object["metadata"]["name"].as_str().unwrap().to_string();
                if object["metadata"]["labels"]["fake/invalid"].is_string()
                    || st.invalid_kind.as_deref() == object["kind"].as_str()
                {
                    return status(
                        422,
                        "Invalid",
                        &format!(
                            "{} \"{name}\" is invalid: spec.mode: Unsupported value: \"most\"",
                            object["kind"].as_str().unwrap()
                        ),
                    );
                }
                let key = (plural.clone(), name.clone());
                if st.objects.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{plural}.chaos-mesh.org \"{name}\" already exists"),
                    );
                }
                st.version += 1;
                object["metadata"]["resourceVersion"] = json!(st.version.to_string());
                object["metadata"]["uid"] = json!(format!("uid-{}", st.version));
                st.objects.insert(key, object.clone());
                (201, object)
            }
            ("GET", Some(name)) => {
                let key = (plural, name.clone());
                if let Some(o) = st.objects.get(&key) {
                    return (200, o.clone());
                }
                // A finalizer holds a deleted object for one more read.
                if let Some(o) = st.finalizing.remove(&key) {
                    return (200, o);
                }
                status(404, "NotFound", &format!("\"{name}\" not found"))
            }
            ("GET", None) if params.get("watch").map(String::as_str) == Some("true") => {
                let name = params["fieldSelector"]
                    .trim_start_matches("metadata.name=")
                    .to_string();
                let Some(object) = st.objects.get(&(plural, name)).cloned() else {
                    return (200, Value::String(String::new()));
                };
                if !st.injects {
                    // The watch times out with nothing to report.
                    return (
                        200,
                        Value::String(format!("{}\n", json!({"type": "ADDED", "object": object}))),
                    );
                }
                let mut injected = object.clone();
                injected["status"] = json!({"conditions": [
                    {"type": "Selected", "status": "True"},
                    {"type": "AllInjected", "status": "True"}]});
                let lines = format!(
                    "{}\n{}\n",
                    json!({"type": "ADDED", "object": object}),
                    json!({"type": "MODIFIED", "object": injected})
                );
                (200, Value::String(lines))
            }
            ("GET", None) => {
                let selector = params.get("labelSelector").cloned().unwrap_or_default();
                let (k, v) = selector.split_once('=').unwrap_or(("", ""));
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((p, _), o)| {
                        *p == plural && (k.is_empty() || o["metadata"]["labels"][k] == v)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "List", "metadata": {}, "items": items}),
                )
            }
            ("DELETE", Some(name)) => {
                let key = (plural, name.clone());
                match st.objects.remove(&key) {
                    Some(mut o) => {
                        o["metadata"]["deletionTimestamp"] = json!("2026-12-05T00:00:00Z");
                        st.finalizing.insert(key, o.clone());
                        (200, o)
                    }
                    None => status(404, "NotFound", &format!("\"{name}\" not found")),
                }
            }
            _ => status(405, "MethodNotAllowed", "not here"),
        }
    }

    /// A kubeconfig pointing at this server.
    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: u\n  user:\n    token: fake-token\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n    namespace: {NS}\ncurrent-context: c\n",
                self.url
            ),
        )
        .unwrap();
        path
    }
}

fn scene(run: &str) -> Scene {
    Scene {
        namespace: NS.into(),
        run: run.into(),
        pods: (0..3)
            .map(|i| (i + 1, format!("db-chronicle-{i}")))
            .collect(),
        nats: NatsPeer::Pods(vec![("app.kubernetes.io/name".into(), "nats".into())]),
        data_path: "/var/lib/chronicle".into(),
        container: "chronicle".into(),
        nats_service: Some("db-nats.chaos-test.svc".into()),
    }
}

fn connect(fake: &FakeApi, dir: &tempfile::TempDir, run: &str) -> (tokio::runtime::Runtime, Mesh) {
    std::env::set_var("KUBECONFIG", fake.kubeconfig(dir.path()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mesh = rt.block_on(Mesh::connect(NS, run)).unwrap();
    (rt, mesh)
}

fn kill_fault(run: &str, serial: usize) -> chronicle_chaos_mesh::resources::ChaosObject {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(serial as u64);
    translate(
        &scene(run),
        &chronicle_chaos::plan::FaultSpec::Kill {},
        serial,
        Duration::from_secs(5),
        &mut rng,
    )
    .unwrap()
    .objects
    .remove(0)
}

#[test]
fn a_fault_is_created_watched_until_injected_and_deleted_under_its_explicit_plural() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let (rt, mesh) = connect(&fake, &dir, "r1");
    let object = kill_fault("r1", 1);
    assert_eq!(object.kind, Kind::PodChaos);
    rt.block_on(mesh.create(&object)).unwrap();
    rt.block_on(mesh.wait_injected(&object, Duration::from_secs(10)))
        .unwrap();
    rt.block_on(mesh.delete(&object, Duration::from_secs(10)))
        .unwrap();
    let log = fake.log();
    let base = format!("/apis/chaos-mesh.org/v1alpha1/namespaces/{NS}/podchaos");
    let name = &object.name;
    let expected = [
        format!("POST {base}"),
        format!("GET {base}/{name}"),
        format!("GET {base}?"),
        format!("DELETE {base}/{name}"),
        format!("GET {base}/{name}"),
    ];
    let mut at = 0;
    for want in &expected {
        let found = log[at..].iter().position(|l| l.starts_with(want.as_str()));
        let Some(i) = found else {
            panic!("no {want:?} after request {at} in {log:#?}")
        };
        at += i + 1;
    }
    assert!(
        log.iter()
            .any(|l| l.contains("watch=true") && l.contains(&format!("metadata.name={name}"))),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("podchaoses")),
        "kube's guessed plural was used: {log:#?}"
    );
    // Gone after the finalizer let go: a read says 404.
    assert_eq!(fake.route("GET", &format!("{base}/{name}"), b"").0, 404);
}

#[test]
fn refusals_come_back_as_errors_that_say_what_to_do() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let (rt, mesh) = connect(&fake, &dir, "r2");
    let object = kill_fault("r2", 1);
    rt.block_on(mesh.create(&object)).unwrap();
    // 409: a leftover of an earlier run with this id.
    let again = rt.block_on(mesh.create(&object)).unwrap_err();
    let text = again.to_string();
    assert!(matches!(again, MeshError::Refused { .. }), "{again:?}");
    assert!(
        text.contains("already exists") && text.contains("chronicle chaos clean"),
        "{text}"
    );
    // 422: the server's validation message reaches the operator.
    let mut invalid = kill_fault("r2", 2);
    invalid.body["metadata"]["labels"]["fake/invalid"] = json!("yes");
    let text = rt.block_on(mesh.create(&invalid)).unwrap_err().to_string();
    assert!(
        text.contains("422") && text.contains("Unsupported value"),
        "{text}"
    );
    // Deleting what is gone is fine.
    rt.block_on(mesh.delete(&kill_fault("r2", 3), Duration::from_secs(5)))
        .unwrap();
    // 404 on the kind itself: Chaos Mesh is not installed.
    fake.state.lock().unwrap().crds = false;
    let text = rt
        .block_on(mesh.create(&kill_fault("r2", 4)))
        .unwrap_err()
        .to_string();
    assert!(text.contains("Chaos Mesh installed"), "{text}");
}

#[test]
fn cleaning_a_run_deletes_its_resources_of_every_kind_and_nothing_else() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let (rt, mesh) = connect(&fake, &dir, "mine");
    // On the same runtime: a kube client dies with the runtime it was made on.
    let other = rt.block_on(Mesh::connect(NS, "theirs")).unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let faults = [
        chronicle_chaos::plan::FaultSpec::Kill {},
        chronicle_chaos::plan::FaultSpec::Delay {
            ms: 10,
            via: Default::default(),
        },
        chronicle_chaos::plan::FaultSpec::Clock {
            offset: "1m".into(),
        },
    ];
    for (i, f) in faults.iter().enumerate() {
        for o in translate(&scene("mine"), f, i, Duration::from_secs(5), &mut rng)
            .unwrap()
            .objects
        {
            rt.block_on(mesh.create(&o)).unwrap();
        }
    }
    let theirs = kill_fault("theirs", 1);
    rt.block_on(other.create(&theirs)).unwrap();
    assert_eq!(rt.block_on(mesh.delete_run()).unwrap(), 3);
    let left: Vec<Value> = fake
        .state
        .lock()
        .unwrap()
        .objects
        .values()
        .cloned()
        .collect();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["metadata"]["labels"][RUN_LABEL], "theirs");
    assert!(fake
        .log()
        .iter()
        .any(|l| l.contains(&format!("labelSelector={RUN_LABEL}=mine"))));
}

#[test]
fn ctrl_c_during_a_kubernetes_run_deletes_what_it_created() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fake.kubeconfig(dir.path());
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"k\"\nduration = \"5m\"\ninterval = \"1s\"\nhold = \"5m\"\n[[fault]]\nkind = \"delay\"\nms = 100\n[[recurring]]\ncron = \"@every 1m\"\nfault = { kind = \"kill\" }\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "chaos",
            "run",
            "--kubernetes",
            "--namespace",
            NS,
            "--release",
            "db",
            "--run-id",
            "ctrlc",
            "--seed",
            "5",
        ])
        .arg("--plan")
        .arg(&plan)
        .args(["--http", &fake.url])
        .env("KUBECONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the nemesis's fault to be in place (the Schedule comes first).
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.state.lock().unwrap().objects.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no fault created: {:#?}",
            fake.log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended: {:#?}",
            fake.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let created: Vec<String> = fake
        .state
        .lock()
        .unwrap()
        .objects
        .keys()
        .map(|(_, n)| n.clone())
        .collect();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "still running after Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(
        fake.state.lock().unwrap().objects.is_empty(),
        "left behind: {:#?}\n{err}",
        fake.state.lock().unwrap().objects
    );
    let log = fake.log();
    for name in &created {
        assert!(
            log.iter()
                .any(|l| l.starts_with("DELETE") && l.ends_with(name.as_str())),
            "{name} not deleted: {log:#?}"
        );
    }
    assert!(
        err.contains("deleting every resource of run ctrlc"),
        "{err}"
    );
}

#[test]
fn a_fault_chaos_mesh_never_reports_injected_is_an_error_not_a_wait_forever() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let (rt, mesh) = connect(&fake, &dir, "r4");
    fake.state.lock().unwrap().injects = false;
    let object = kill_fault("r4", 1);
    rt.block_on(mesh.create(&object)).unwrap();
    let started = Instant::now();
    let e = rt
        .block_on(mesh.wait_injected(&object, Duration::from_secs(3)))
        .unwrap_err();
    assert!(matches!(e, MeshError::Timeout(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The release's pods are found by the chart's labels, and only those.
    let pods = rt.block_on(mesh.chronicle_pods("db")).unwrap();
    assert_eq!(
        pods.iter().map(|p| p.node).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(rt
        .block_on(mesh.chronicle_pods("other"))
        .unwrap()
        .is_empty());
}

/// A run that fails (the API server refuses its fault) still deletes what
/// it made (the recurring fault's Schedule), and says why it failed.
#[test]
fn a_kubernetes_run_that_fails_deletes_what_it_created() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fake.kubeconfig(dir.path());
    fake.state.lock().unwrap().invalid_kind = Some("NetworkChaos".into());
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"k\"\nduration = \"5m\"\ninterval = \"1s\"\nhold = \"5m\"\n[[fault]]\nkind = \"delay\"\nms = 100\n[[recurring]]\ncron = \"@every 1m\"\nfault = { kind = \"kill\" }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "chaos",
            "run",
            "--kubernetes",
            "--namespace",
            NS,
            "--release",
            "db",
            "--run-id",
            "fails",
            "--seed",
            "5",
        ])
        .arg("--plan")
        .arg(&plan)
        .args(["--http", &fake.url])
        .env("KUBECONFIG", &config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("422") && err.contains("Unsupported value"),
        "{err}"
    );
    let log = fake.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST") && l.ends_with("/schedules")),
        "{log:#?}"
    );
    assert!(
        fake.state.lock().unwrap().objects.is_empty(),
        "left behind after a failed run: {log:#?}"
    );
}

#[test]
fn a_plan_chaos_mesh_cannot_express_is_refused_before_anything_is_created() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fake.kubeconfig(dir.path());
    let out = Command::new(BIN)
        .args([
            "chaos",
            "run",
            "--kubernetes",
            "--namespace",
            NS,
            "--release",
            "db",
            "--plan",
            "builtin:smoke",
        ])
        .args(["--http", &fake.url])
        .env("KUBECONFIG", &config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot run on Kubernetes") && err.contains("power cut"),
        "{err}"
    );
    assert!(
        !fake.log().iter().any(|l| l.starts_with("POST")),
        "{:#?}",
        fake.log()
    );
}

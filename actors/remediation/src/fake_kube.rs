//! A local server that plays the Kubernetes API server's answers for one
//! Deployment, for the scale and restart tests here and in `tests/`
//! (feature `fake-kube`). Test support, not used by the node.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// A local server playing the API server's documented answers for one
/// Deployment `api` in namespace `prod`: GET returns it, a merge PATCH
/// applies (409 Conflict when its resourceVersion is stale, or for the
/// first `conflicts` patches), anything else 404 with a Status body.
#[derive(Clone)]
pub struct FakeApi {
    pub object: Arc<Mutex<Value>>,
    conflicts: Arc<Mutex<usize>>,
    pub log: Arc<Mutex<Vec<String>>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeApi {
    pub fn start(conflicts: usize) -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeApi {
            object: Arc::new(Mutex::new(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "api", "namespace": "prod", "resourceVersion": "7"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}},
                         "template": {"metadata": {"labels": {"app": "api"}},
                                      "spec": {"containers": [{"name": "api", "image": "api:1"}]}}}
            }))),
            conflicts: Arc::new(Mutex::new(conflicts)),
            log: Arc::default(),
        };
        let serving = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let fake = serving.clone();
                std::thread::spawn(move || fake.connection(stream));
            }
        });
        (fake, url)
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
            let method = parts.next().unwrap_or("").to_string();
            let path = parts
                .next()
                .unwrap_or("")
                .split('?')
                .next()
                .unwrap_or("")
                .to_string();
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
            let (code, answer) = self.route(&method, &path, &body);
            let text = answer.to_string();
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

    fn route(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        self.log.lock().unwrap().push(format!("{method} {path}"));
        if path != "/apis/apps/v1/namespaces/prod/deployments/api" {
            return status(404, "NotFound", "deployments.apps not found");
        }
        let mut object = self.object.lock().unwrap();
        match method {
            "GET" => (200, object.clone()),
            "PATCH" => {
                let patch: Value = serde_json::from_slice(body).unwrap();
                let mut conflicts = self.conflicts.lock().unwrap();
                let stale = patch["metadata"]["resourceVersion"]
                    .as_str()
                    .is_some_and(|v| v != object["metadata"]["resourceVersion"]);
                if *conflicts > 0 || stale {
                    *conflicts = conflicts.saturating_sub(1);
                    // Someone else changed it meanwhile.
                    let v: u64 = object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    object["metadata"]["resourceVersion"] = json!((v + 1).to_string());
                    return status(409, "Conflict", "the object has been modified");
                }
                merge(&mut object, &patch);
                let v: u64 = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                object["metadata"]["resourceVersion"] = json!((v + 1).to_string());
                (200, object.clone())
            }
            _ => status(405, "MethodNotAllowed", "no"),
        }
    }
}

pub fn kubeconfig(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    path
}

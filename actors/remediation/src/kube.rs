//! Scale and restart actions through the Kubernetes API (the kube crate),
//! on a Deployment or a StatefulSet, each recording what it changed so it
//! can be rolled back.
//!
//! * scale: reads the workload, computes the new replica count (`to`, or
//!   `by` added, kept within `[min, max]`) and merge-patches `spec.replicas`
//!   with the `resourceVersion` it read, so a concurrent change is a 409
//!   (read again and retried, a few times) rather than overwritten;
//! * restart: a rollout restart, as `kubectl rollout restart` does it: the
//!   pod template's `kubectl.kubernetes.io/restartedAt` annotation set to
//!   now (the previous value is recorded).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{Workload, WorkloadKind};
use crate::RemediationError;

/// The annotation a rollout restart sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The field manager named in patches.
const MANAGER: &str = "chronicle-remediation";
/// Tries of a scale that meets concurrent changes (409).
const CONFLICT_TRIES: usize = 4;

/// What a scale changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaled {
    pub previous: i32,
    pub replicas: i32,
}

/// What a restart changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarted {
    /// The annotation before (none: never restarted this way).
    pub previous: Option<String>,
    pub restarted_at: String,
}

/// The Kubernetes API as the actions use it.
#[derive(Clone)]
pub struct Kube {
    client: Client,
}

fn kube_error(what: &str, w: &Workload, e: kube::Error) -> RemediationError {
    match e {
        kube::Error::Api(status) => RemediationError::Action(format!(
            "{what} {:?} {}/{}: {} ({})",
            w.kind, w.namespace, w.name, status.message, status.code
        )),
        other => RemediationError::Action(format!(
            "{what} {:?} {}/{}: {other}",
            w.kind, w.namespace, w.name
        )),
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The replica count a scale sets: `to`, or `current + by`, within
/// `[min, max]` (defaults 0 and 1000).
pub fn target_replicas(
    current: i32,
    by: Option<i32>,
    to: Option<i32>,
    min: Option<i32>,
    max: Option<i32>,
) -> i32 {
    let want = to.unwrap_or_else(|| current.saturating_add(by.unwrap_or(0)));
    want.clamp(min.unwrap_or(0), max.unwrap_or(1000).max(min.unwrap_or(0)))
}

impl Kube {
    /// The usual configuration: `kubeconfig` if given, else $KUBECONFIG or
    /// ~/.kube/config, else the pod's service account.
    pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<Self, RemediationError> {
        let client = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    RemediationError::Action(format!("kubeconfig {}: {e}", path.display()))
                })?;
                let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| {
                        RemediationError::Action(format!("kubeconfig {}: {e}", path.display()))
                    })?;
                Client::try_from(config)
                    .map_err(|e| RemediationError::Action(format!("Kubernetes client: {e}")))?
            }
            None => Client::try_default().await.map_err(|e| {
                RemediationError::Action(format!("no Kubernetes configuration: {e}"))
            })?,
        };
        Ok(Self { client })
    }

    /// The workload's object as JSON (its replicas, resourceVersion and
    /// template annotations are what the actions read).
    async fn get(&self, w: &Workload) -> Result<Value, RemediationError> {
        let value = match w.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &w.namespace);
                serde_json::to_value(
                    api.get(&w.name)
                        .await
                        .map_err(|e| kube_error("reading", w, e))?,
                )
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &w.namespace);
                serde_json::to_value(
                    api.get(&w.name)
                        .await
                        .map_err(|e| kube_error("reading", w, e))?,
                )
            }
        };
        value.map_err(|e| RemediationError::Action(format!("the workload's JSON: {e}")))
    }

    async fn patch(&self, w: &Workload, body: Value) -> Result<(), kube::Error> {
        let params = PatchParams::apply(MANAGER);
        let params = PatchParams {
            field_manager: params.field_manager,
            ..PatchParams::default()
        };
        match w.kind {
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), &w.namespace);
                api.patch(&w.name, &params, &Patch::Merge(&body))
                    .await
                    .map(|_| ())
            }
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &w.namespace);
                api.patch(&w.name, &params, &Patch::Merge(&body))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Sets the replica count to what `target` makes of the current one.
    pub async fn scale(
        &self,
        w: &Workload,
        target: impl Fn(i32) -> i32,
    ) -> Result<Scaled, RemediationError> {
        let mut last = None;
        for _ in 0..CONFLICT_TRIES {
            let object = self.get(w).await?;
            // Kubernetes defaults an unset replicas to 1.
            let previous = object["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
            let replicas = target(previous);
            let version = object["metadata"]["resourceVersion"].clone();
            let body = json!({"metadata": {"resourceVersion": version},
                              "spec": {"replicas": replicas}});
            match self.patch(w, body).await {
                Ok(()) => return Ok(Scaled { previous, replicas }),
                Err(e) if conflict(&e) => last = Some(e),
                Err(e) => return Err(kube_error("scaling", w, e)),
            }
        }
        Err(kube_error(
            "scaling (changed concurrently every time)",
            w,
            last.expect("a conflict"),
        ))
    }

    /// A rollout restart.
    pub async fn restart(
        &self,
        w: &Workload,
        now_rfc3339: &str,
    ) -> Result<Restarted, RemediationError> {
        let object = self.get(w).await?;
        let previous = object["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
            .as_str()
            .map(str::to_string);
        let body = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now_rfc3339}}}}});
        self.patch(w, body)
            .await
            .map_err(|e| kube_error("restarting", w, e))?;
        Ok(Restarted {
            previous,
            restarted_at: now_rfc3339.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A local server playing the API server's documented answers for one
    /// Deployment `api` in namespace `prod`: GET returns it, a merge PATCH
    /// applies (409 Conflict when its resourceVersion is stale, or for the
    /// first `conflicts` patches), anything else 404 with a Status body.
    #[derive(Clone)]
    struct FakeApi {
        object: Arc<Mutex<Value>>,
        conflicts: Arc<Mutex<usize>>,
        log: Arc<Mutex<Vec<String>>>,
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
        fn start(conflicts: usize) -> (Self, String) {
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

    fn kubeconfig(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
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

    fn api(kind: WorkloadKind, name: &str) -> Workload {
        Workload {
            namespace: "prod".into(),
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn targets_stay_within_bounds() {
        assert_eq!(target_replicas(3, Some(2), None, None, None), 5);
        assert_eq!(target_replicas(3, Some(-5), None, Some(1), None), 1);
        assert_eq!(target_replicas(3, None, Some(50), None, Some(10)), 10);
        assert_eq!(target_replicas(i32::MAX, Some(1), None, None, None), 1000);
    }

    #[tokio::test]
    async fn scale_patches_replicas_retries_conflicts_and_restart_sets_the_annotation() {
        let (fake, url) = FakeApi::start(1);
        let dir = tempfile::tempdir().unwrap();
        let kube = Kube::connect(Some(&kubeconfig(dir.path(), &url)))
            .await
            .unwrap();
        let w = api(WorkloadKind::Deployment, "api");
        let scaled = kube
            .scale(&w, |c| target_replicas(c, Some(2), None, None, Some(4)))
            .await
            .unwrap();
        assert_eq!(
            scaled,
            Scaled {
                previous: 3,
                replicas: 4
            }
        );
        assert_eq!(fake.object.lock().unwrap()["spec"]["replicas"], 4);
        let log = fake.log.lock().unwrap().clone();
        assert_eq!(
            log.iter().filter(|l| l.starts_with("PATCH")).count(),
            2,
            "one 409, then read again and patched: {log:?}"
        );
        // Rolling back is scaling to what it was.
        let back = kube.scale(&w, |_| scaled.previous).await.unwrap();
        assert_eq!(
            back,
            Scaled {
                previous: 4,
                replicas: 3
            }
        );

        let restarted = kube.restart(&w, "2026-12-06T10:00:00Z").await.unwrap();
        assert_eq!(restarted.previous, None);
        assert_eq!(
            fake.object.lock().unwrap()["spec"]["template"]["metadata"]["annotations"]
                [RESTARTED_AT],
            "2026-12-06T10:00:00Z"
        );
        let again = kube.restart(&w, "2026-12-06T11:00:00Z").await.unwrap();
        assert_eq!(again.previous.as_deref(), Some("2026-12-06T10:00:00Z"));
        // The rest of the object is untouched (a merge patch).
        assert_eq!(
            fake.object.lock().unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
            "api:1"
        );
    }

    #[tokio::test]
    async fn a_missing_workload_and_endless_conflicts_are_errors() {
        let (_fake, url) = FakeApi::start(100);
        let dir = tempfile::tempdir().unwrap();
        let kube = Kube::connect(Some(&kubeconfig(dir.path(), &url)))
            .await
            .unwrap();
        let missing = kube
            .scale(&api(WorkloadKind::StatefulSet, "api"), |c| c + 1)
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("not found"), "{missing}");
        let busy = kube
            .scale(&api(WorkloadKind::Deployment, "api"), |c| c + 1)
            .await
            .unwrap_err();
        assert!(busy.to_string().contains("concurrently"), "{busy}");
    }
}

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
    use super::*;
    use crate::fake_kube::{kubeconfig, FakeApi};

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

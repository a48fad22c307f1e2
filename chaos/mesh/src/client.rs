//! Chaos Mesh resources through the Kubernetes API (the kube crate): create
//! one, watch it until Chaos Mesh reports the fault injected, delete it and
//! wait until it is gone (Chaos Mesh undoes the fault on deletion), and
//! delete everything a run made, found by its label.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use tracing::{info, warn};

use crate::resources::{ChaosObject, Kind, GROUP, RUN_LABEL, VERSION};
use crate::MeshError;

/// One run's view of the API server: its namespace and its run id.
#[derive(Clone)]
pub struct Mesh {
    client: Client,
    namespace: String,
    run: String,
}

/// A pod of the release, as the harness needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    pub name: String,
    /// Pod ordinal + 1 (the node id the chart gives it).
    pub node: u64,
    pub ready: bool,
    /// Being deleted (a replacement comes later): not to be counted.
    pub terminating: bool,
}

/// Whether Chaos Mesh reports the fault in place (`AllInjected`), from
/// the object's status conditions.
pub fn injected(object: &Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "AllInjected" && c["status"] == "True")
}

fn refused(what: &str, e: kube::Error) -> MeshError {
    match e {
        kube::Error::Api(status) => {
            let message = match (status.code, status.reason.as_str()) {
                (404, _) => format!(
                    "{} (is Chaos Mesh installed, and the namespace right?)",
                    status.message
                ),
                (409, _) | (_, "AlreadyExists") => format!(
                    "{} (an earlier run with this id left it: `chronicle chaos clean`)",
                    status.message
                ),
                _ => format!(
                    "HTTP {}: {} ({})",
                    status.code, status.message, status.reason
                ),
            };
            MeshError::Refused {
                what: what.to_string(),
                message,
            }
        }
        other => MeshError::Kube(format!("{what}: {other}")),
    }
}

impl Mesh {
    /// Connects with the usual configuration: $KUBECONFIG or ~/.kube/config
    /// (its current context), else the pod's service account.
    pub async fn connect(namespace: &str, run: &str) -> Result<Self, MeshError> {
        let client = Client::try_default()
            .await
            .map_err(|e| MeshError::Kube(format!("no Kubernetes configuration: {e}")))?;
        Ok(Self::with_client(client, namespace, run))
    }

    pub fn with_client(client: Client, namespace: &str, run: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            run: run.to_string(),
        }
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, kind.kind());
        let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    /// Creates `object`.
    pub async fn create(&self, object: &ChaosObject) -> Result<(), MeshError> {
        let what = format!("{} {}", object.kind.kind(), object.name);
        let data: DynamicObject = serde_json::from_value(object.body.clone())
            .map_err(|e| MeshError::Kube(format!("{what}: {e}")))?;
        self.api(object.kind)
            .create(&PostParams::default(), &data)
            .await
            .map_err(|e| refused(&format!("creating {what}"), e))?;
        info!(kind = object.kind.kind(), name = %object.name, "created");
        Ok(())
    }

    /// Watches `object` until Chaos Mesh reports it injected, for at most
    /// `limit`.
    pub async fn wait_injected(
        &self,
        object: &ChaosObject,
        limit: Duration,
    ) -> Result<(), MeshError> {
        let what = format!("{} {}", object.kind.kind(), object.name);
        let api = self.api(object.kind);
        let work = async {
            let current = api
                .get(&object.name)
                .await
                .map_err(|e| refused(&format!("reading {what}"), e))?;
            if injected(&serde_json::to_value(&current).unwrap_or_default()) {
                return Ok(());
            }
            let version = current
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            let params = WatchParams::default()
                .fields(&format!("metadata.name={}", object.name))
                .timeout(limit.as_secs().clamp(1, 290) as u32);
            let mut events = api
                .watch(&params, &version)
                .await
                .map_err(|e| refused(&format!("watching {what}"), e))?
                .boxed();
            while let Some(event) = events
                .try_next()
                .await
                .map_err(|e| refused(&format!("watching {what}"), e))?
            {
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        if injected(&serde_json::to_value(&o).unwrap_or_default()) {
                            return Ok(());
                        }
                    }
                    WatchEvent::Deleted(_) => {
                        return Err(MeshError::Kube(format!(
                            "{what} was deleted before it was injected"
                        )))
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(status) => {
                        return Err(refused(
                            &format!("watching {what}"),
                            kube::Error::Api(status),
                        ))
                    }
                }
            }
            Err(MeshError::Timeout(format!(
                "{what}: the watch ended before Chaos Mesh reported it injected"
            )))
        };
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(MeshError::Timeout(format!(
                "{what}: Chaos Mesh did not report it injected within {limit:?} (is its controller running?)"
            )))
        })
    }

    /// Deletes `object` (gone already is fine) and waits, at most `limit`,
    /// until the API server no longer has it: Chaos Mesh's finalizer undoes
    /// the fault first.
    pub async fn delete(&self, object: &ChaosObject, limit: Duration) -> Result<(), MeshError> {
        let what = format!("{} {}", object.kind.kind(), object.name);
        let api = self.api(object.kind);
        match api.delete(&object.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(refused(&format!("deleting {what}"), e)),
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match api.get_opt(&object.name).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {}
                Err(e) => return Err(refused(&format!("reading {what}"), e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MeshError::Timeout(format!(
                    "{what} still exists {limit:?} after its deletion (a finalizer that cannot finish?)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes every resource of this run, of every kind; how many it asked
    /// to delete. Errors are reported and the rest still deleted.
    pub async fn delete_run(&self) -> Result<usize, MeshError> {
        let selector = format!("{RUN_LABEL}={}", self.run);
        let mut deleted = 0;
        let mut first_error = None;
        for kind in Kind::ALL {
            let api = self.api(kind);
            let listed = match api.list(&ListParams::default().labels(&selector)).await {
                Ok(l) => l,
                // The CRD is not installed: nothing of this kind to delete.
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    warn!(kind = kind.kind(), error = %e, "listing this run's resources failed");
                    first_error.get_or_insert(refused(&format!("listing {}", kind.plural()), e));
                    continue;
                }
            };
            for item in listed.items {
                let Some(name) = item.metadata.name else {
                    continue;
                };
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        warn!(kind = kind.kind(), name, error = %e, "deleting failed");
                        first_error.get_or_insert(refused(&format!("deleting {name}"), e));
                    }
                }
            }
        }
        match first_error {
            None => Ok(deleted),
            Some(e) => Err(e),
        }
    }

    /// The release's Chronicle pods (labels `app.kubernetes.io/name=chronicle`
    /// and `app.kubernetes.io/instance=<release>`), by node id.
    pub async fn chronicle_pods(&self, release: &str) -> Result<Vec<PodState>, MeshError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector =
            format!("app.kubernetes.io/name=chronicle,app.kubernetes.io/instance={release}");
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| refused(&format!("listing pods {selector}"), e))?;
        let mut out: Vec<PodState> = list
            .items
            .into_iter()
            .filter_map(|pod| {
                let terminating = pod.metadata.deletion_timestamp.is_some();
                let name = pod.metadata.name?;
                let ordinal: u64 = name.rsplit('-').next()?.parse().ok()?;
                let ready = pod
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                Some(PodState {
                    name,
                    node: ordinal + 1,
                    ready,
                    terminating,
                })
            })
            .collect();
        out.sort_by_key(|p| p.node);
        Ok(out)
    }
}

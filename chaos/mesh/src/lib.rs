//! Chronicle's chaos harness on Kubernetes. A fault plan's faults become
//! Chaos Mesh resources ([`resources`]) on the pods of a Helm-installed
//! release; [`client`] creates, watches and deletes them through the kube
//! crate; [`target`] is the run's [`chronicle_chaos::run::Target`], so the
//! same workloads, checkers and report as a local run judge the cluster.

pub mod client;
pub mod resources;
pub mod target;

/// Why a Kubernetes chaos run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("plan: {0}")]
    Plan(String),
    #[error("Kubernetes: {0}")]
    Kube(String),
    #[error("the API server refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("{0}")]
    Timeout(String),
}

impl From<MeshError> for chronicle_chaos::ChaosError {
    fn from(e: MeshError) -> Self {
        match e {
            MeshError::Plan(p) => chronicle_chaos::ChaosError::Plan(p),
            other => chronicle_chaos::ChaosError::Process(other.to_string()),
        }
    }
}

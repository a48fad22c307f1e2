//! Chronicle's chaos harness. This crate holds what judges a run: the
//! history of every operation a workload invoked and saw complete
//! ([`history`]), models of the objects it exercised ([`model`]), and the
//! linearizability checker ([`linearizability`]), with readers for the
//! Jepsen and Porcupine histories the checker is validated on
//! ([`porcupine`]); a cluster of local processes with process faults
//! ([`local`]), the register workload on the replicated state
//! ([`register`]) and one seeded run of both ([`run`]), which
//! `chronicle chaos run` drives.

pub mod history;
pub mod linearizability;
pub mod local;
pub mod model;
pub mod nemesis;
pub mod netns;
pub mod plan;
pub mod porcupine;
pub mod powercut;
pub mod register;
pub mod run;
pub mod series;
pub mod timeline;

pub use history::{History, Operation};
pub use linearizability::{check, check_partitioned, Check, Verdict};
pub use model::Model;

/// Whether a request failed before it reached a node (nothing listened):
/// a definite "it did not happen", unlike a timeout or a reset.
pub(crate) fn refused(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// Makes an HTTP agent for a request timeout.
pub type AgentFactory = Box<dyn Fn(std::time::Duration) -> ureq::Agent + Send + Sync>;

static AGENTS: std::sync::OnceLock<AgentFactory> = std::sync::OnceLock::new();

/// Makes the workloads' requests through agents from `factory` (one that
/// sends a token and trusts a CA: a Helm-installed cluster runs with
/// `--auth`). The first call wins. The factory's agents must answer every
/// status, as [`http_agent`]'s do.
pub fn set_agent_factory(factory: AgentFactory) {
    let _ = AGENTS.set(factory);
}

/// An HTTP client that answers every status (4xx and 5xx are answers the
/// workloads judge, not errors) and gives up after `timeout`.
pub(crate) fn http_agent(timeout: std::time::Duration) -> ureq::Agent {
    if let Some(factory) = AGENTS.get() {
        return factory(timeout);
    }
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// How long a workload client waits after a request failed, so a node that
/// is down does not turn into thousands of failed operations a second.
pub(crate) const BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Why a history could not be read or checked.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("line {line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("history: {0}")]
    History(String),
    #[error("{0}")]
    Process(String),
    #[error("plan: {0}")]
    Plan(String),
}

//! Autonomous remediation for Chronicle (spec section 2, the
//! AutoRemediationEngine): rules decide which actions an anomaly calls for,
//! and the engine runs them with real effects, within safety limits, with
//! every step recorded (see docs/remediation.md).
//!
//! * [`model`]: actions, rules and the safety settings, parsed with bounds;
//! * [`policy`]: the decisions (rules, priorities, cooldowns, hourly
//!   limits, approvals, circuit breakers, dry-run) over a cluster-wide
//!   ledger;
//! * [`webhook`]: signed HTTP deliveries with retries and an allow-list;
//! * `learn`: outcomes of executed actions and the recommender trained on
//!   them (with the `service` feature, as are `kube` and `service`).

#[cfg(feature = "service")]
pub mod cli;
#[cfg(any(test, feature = "fake-kube"))]
pub mod fake_kube;
#[cfg(feature = "service")]
pub mod kube;
#[cfg(feature = "service")]
pub mod learn;
pub mod model;
pub mod policy;
#[cfg(feature = "service")]
pub mod service;
pub mod webhook;

#[cfg(feature = "service")]
pub use service::RemediationFeature;

/// Why a remediation request or action failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RemediationError {
    /// Bad input (an action, a rule, a request): 400.
    #[error("{0}")]
    Invalid(String),
    /// Not allowed by the settings (a host off the allow-list): 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An action could not be carried out.
    #[error("action failed: {0}")]
    Action(String),
}

//! Capacity planning for Chronicle (spec section 6): forecasts of the
//! node's own usage that say when a resource runs out (docs/capacity.md).
//!
//! * [`forecast`]: Holt-Winters exponential smoothing (additive or damped
//!   trend, additive or multiplicative seasonality of a detected period),
//!   fitted by Nelder-Mead, chosen by AICc, with simulated prediction
//!   intervals; sMAPE and MASE to score it.
//! * [`usage`]: what the node uses (disk by kind, free disk, memory, open
//!   files), sampled from the system.
//! * [`recommend`]: what to change before a resource runs out (retention,
//!   compression, chunk size, memory budget, a node, the shard count), with
//!   the change and its expected effect.
//! * `profile` (feature `service`): what the node's own chunks measure
//!   under other compression levels and chunk sizes.
//! * `service` (feature `service`): the collector that writes the samples
//!   as `chronicle_self_*` series, `/api/capacity/*`, and auto-tuning.

#[cfg(feature = "service")]
pub mod cli;
pub mod forecast;
#[cfg(feature = "service")]
pub mod profile;
pub mod recommend;
#[cfg(feature = "service")]
pub mod service;
pub mod usage;

#[cfg(feature = "service")]
pub use service::CapacityFeature;

/// Why a forecast could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CapacityError {
    /// Bad input (too short, gaps, a bad period): 400.
    #[error("{0}")]
    Invalid(String),
    /// The optimiser found nothing admissible.
    #[error("fit: {0}")]
    Fit(String),
    /// No such recommendation or applied change: 404.
    #[error("{0}")]
    NotFound(String),
    /// The change cannot be made now (changed meanwhile, already rolled
    /// back, not a run-time setting): 409.
    #[error("{0}")]
    Conflict(String),
    /// The replicated state, the config API or the query path is away: 503.
    #[error("{0}")]
    Unavailable(String),
    /// A forecast is being computed: 503 busy.
    #[error("a forecast is being computed; try again in a few seconds")]
    Busy,
}

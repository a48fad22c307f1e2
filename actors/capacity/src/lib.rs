//! Capacity planning for Chronicle (spec section 6): forecasts of the
//! node's own usage that say when a resource runs out (docs/capacity.md).
//!
//! * [`forecast`]: Holt-Winters exponential smoothing (additive or damped
//!   trend, additive or multiplicative seasonality of a detected period),
//!   fitted by Nelder-Mead, chosen by AICc, with simulated prediction
//!   intervals; sMAPE and MASE to score it.
//! * [`usage`]: what the node uses (disk by kind, free disk, memory, open
//!   files), sampled from the system.
//! * `service` (feature `service`): the collector that writes the samples
//!   as `chronicle_self_*` series and `/api/capacity/forecasts`.

pub mod forecast;
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
}

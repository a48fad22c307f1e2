//! Capacity planning for Chronicle (spec section 6): forecasts of the
//! node's own usage that say when a resource runs out.
//!
//! * [`forecast`]: Holt-Winters exponential smoothing (additive or damped
//!   trend, additive or multiplicative seasonality of a detected period),
//!   fitted by Nelder-Mead, chosen by AICc, with simulated prediction
//!   intervals; sMAPE and MASE to score it.

pub mod forecast;

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

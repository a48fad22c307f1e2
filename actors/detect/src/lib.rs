//! Anomaly detection for Chronicle, per series and online: what the
//! detector actor runs on every sample the change feed brings (see
//! docs/anomalies.md).
//!
//! * [`season`]: the seasonal baseline (period found by autocorrelation);
//! * [`detector`]: spikes, dips, level shifts, trends and absences, one
//!   open episode per series;
//! * [`anomaly`]: the anomaly as published, stored and accepted from
//!   outside (parsed with bounds);
//! * [`watch`]: which series are watched (metric globs, label matchers);
//! * [`planted`]: a labelled set with planted anomalies and the scoring
//!   (precision, recall, F1, delay) that measures the detector.

pub mod anomaly;
pub mod checkpoint;
pub mod detector;
pub mod planted;
pub mod season;
pub mod watch;

#[cfg(feature = "service")]
pub mod cli;
#[cfg(feature = "service")]
mod metrics;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub use service::DetectFeature;

pub use detector::{DetectorConfig, Episode, Event, Evidence, Kind, SeriesDetector, Severity};

//! Semantic time-series search (spec section 4, phase-2 item 15): windows
//! of series embedded as shape fingerprints, an HNSW index per partition
//! with filters checked during traversal, and a grammar of shape words
//! turned into template series (docs/semantic.md).
//!
//! * [`embed`]: z-normalised windows projected on the DCT-II basis (their
//!   distance lower-bounds the exact z-normalised Euclidean distance).
//! * [`index`]: usearch HNSW graphs with a selectivity planner (filtered
//!   traversal, or an exact scan when the filter is selective).
//! * [`text`]: "sudden spike followed by gradual recovery" → a template.
//! * [`explain`]: which features of two windows agree.
//! * [`synth`]: seeded series with planted motifs (tests and the bench).

pub mod api;
pub mod catalog;
#[cfg(feature = "service")]
pub mod cli;
pub mod embed;
pub mod explain;
pub mod index;
pub mod plot;
#[cfg(feature = "service")]
pub mod service;
pub mod synth;
pub mod text;

#[cfg(feature = "service")]
pub use service::SemanticFeature;

/// Why a search or an index operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SemanticError {
    /// Bad input: 400.
    #[error("{0}")]
    Invalid(String),
    /// The vector index refused an operation (memory): 500.
    #[error("vector index: {0}")]
    Index(String),
}

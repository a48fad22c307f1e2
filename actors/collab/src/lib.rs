//! Collaborative querying (docs/collab.md): sessions whose query text,
//! language and annotations are a Yjs document, edited together over
//! WebSocket by y-websocket clients (the Yjs sync and awareness protocol)
//! and by simple clients (the spec's JSON protocol), kept in the replicated
//! state and shared between nodes over the bus.
//!
//! * [`wire`]: y-protocols frames, checked before yrs decodes them.
//! * [`doc`]: the document (plain Rust).
//! * [`store`]: sessions in the replicated state.
//! * [`session`]: a session as a supervised actor.
//! * [`service`]: the feature, its hub (the sessions open on this node) and
//!   its routes.
//!
//! Without the default feature `service`, only [`wire`] and [`doc`] are
//! built (no actix, no RocksDB): what the fuzz target needs.

pub mod doc;
pub mod wire;

#[cfg(feature = "service")]
mod metrics;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod session;
#[cfg(feature = "service")]
pub mod store;

#[cfg(feature = "service")]
pub use service::{CollabConfig, CollabFeature, Hub};

//! Chronicle's message bus.
//!
//! Every actor talks through a [`Bus`]: publish with headers, subscribe with NATS
//! wildcards (optionally in a queue group), request/reply with a timeout, flush, and
//! drain on shutdown. [`NatsBus`] runs over a NATS cluster; [`LocalBus`] gives the same
//! semantics inside one process and is the embedded default. [`FaultyBus`] wraps either
//! to drop, delay, duplicate or partition traffic for chaos tests. Node-to-node
//! payloads are rkyv [`envelope`]s; external subjects speak JSON and line protocol.

pub mod envelope;
mod error;
mod fault;
mod local;
mod message;
mod nats;
mod signed;
pub mod subject;
pub mod trace;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{BusError, Result};
pub use fault::{Fault, FaultController, FaultyBus, RuleId};
pub use local::{LocalBus, LocalBusOptions};
pub use message::{DrainHandle, Headers, Message, Subscription};
pub use nats::{ConnectionState, NatsBus, NatsOptions};
pub use signed::{SignedBus, MAC_HEADER, MIN_SECRET_BYTES};

/// The operations every bus offers, with the same semantics on every implementation
/// (the conformance suite in `tests/` holds them to it).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `message` to its subject (no wildcards). `message.reply`, when set,
    /// is where a responder should answer.
    async fn publish(&self, message: Message) -> Result<()>;

    /// Subscribes to `subject` (wildcards `*` for one token, `>` for the rest). In a
    /// queue group, each message goes to one member of the group.
    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription>;

    /// Publishes `message` with a fresh reply inbox and waits for the first answer.
    /// [`BusError::NoResponders`] when nobody is subscribed, [`BusError::Timeout`]
    /// when nobody answered in time.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Message>;

    /// Returns when everything sent so far (publishes and subscriptions) has
    /// been processed by the transport: on NATS, by the server.
    async fn flush(&self) -> Result<()>;

    /// Stops new subscriptions and publishes, lets subscribers finish what they
    /// already received, then closes.
    async fn drain(&self) -> Result<()>;

    /// A unique subject for replies.
    fn new_inbox(&self) -> String;

    /// Whether the transport is connected now (readiness probes). An
    /// in-process bus always is.
    fn is_connected(&self) -> bool {
        true
    }
}

/// Shorthands over any [`Bus`].
#[async_trait]
pub trait BusExt: Bus {
    /// Publishes a payload without headers or reply subject.
    async fn publish_bytes(&self, subject: &str, payload: Bytes) -> Result<()> {
        self.publish(Message::new(subject, payload)).await
    }

    /// Answers `request` on its reply subject; an error when it has none.
    async fn respond(&self, request: &Message, payload: Bytes) -> Result<()> {
        let reply = request
            .reply
            .as_deref()
            .ok_or_else(|| BusError::NoReplySubject(request.subject.clone()))?;
        self.publish(Message::new(reply, payload)).await
    }
}

impl<B: Bus + ?Sized> BusExt for B {}

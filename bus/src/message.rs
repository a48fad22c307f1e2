use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Message headers: ordered name/value pairs; a name may repeat (as in NATS).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value, keeping earlier ones under the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every value under `name` with `value`.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
    }

    /// The first value under `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// One message, published or received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub reply: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            reply: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }
}

/// A stream of the messages delivered to one subscription. Dropping it
/// unsubscribes (what it had buffered is lost); draining it
/// ([`Subscription::drain_handle`]) stops deliveries and ends the stream after
/// what it already holds.
pub struct Subscription {
    subject: String,
    inner: Pin<Box<dyn Stream<Item = Message> + Send>>,
    drain: DrainHandle,
}

/// Drains one subscription from outside its stream (the stream itself is
/// usually owned by an actor): no new message is delivered to it, the ones it
/// already holds still are, then it ends. The bus stays usable for publishing
/// (replies and acknowledgements of what was drained).
#[derive(Clone, Debug, Default)]
pub struct DrainHandle(Arc<tokio::sync::Notify>);

impl DrainHandle {
    pub fn drain(&self) {
        // A stored permit: the stream sees it even when not waiting right now.
        self.0.notify_one();
    }

    /// Completes once [`Self::drain`] was called.
    pub(crate) async fn requested(&self) {
        self.0.notified().await
    }
}

impl Subscription {
    pub(crate) fn new(
        subject: impl Into<String>,
        inner: impl Stream<Item = Message> + Send + 'static,
        drain: DrainHandle,
    ) -> Self {
        Self {
            subject: subject.into(),
            inner: Box::pin(inner),
            drain,
        }
    }

    /// The handle that drains this subscription.
    pub fn drain_handle(&self) -> DrainHandle {
        self.drain.clone()
    }

    /// The subject (pattern) subscribed to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next message; `None` once the subscription is closed (drained or the bus
    /// shut down).
    pub async fn next(&mut self) -> Option<Message> {
        futures_util::StreamExt::next(&mut self.inner).await
    }

    /// Calls `seen` with each message as it is delivered (metrics).
    pub fn inspect(self, seen: impl Fn(&Message) + Send + 'static) -> Subscription {
        self.map_stream(|inner| futures_util::StreamExt::inspect(inner, seen))
    }

    /// Wraps the stream (used by the fault injector to filter deliveries).
    pub(crate) fn map_stream<S, F>(self, f: F) -> Subscription
    where
        F: FnOnce(Pin<Box<dyn Stream<Item = Message> + Send>>) -> S,
        S: Stream<Item = Message> + Send + 'static,
    {
        Subscription {
            subject: self.subject,
            inner: Box::pin(f(self.inner)),
            drain: self.drain,
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

//! Trace context on bus messages. When the node exports traces it installs
//! hooks that write the current span's W3C `traceparent` (and `tracestate`)
//! into an outgoing message's headers, and make a handler's span a child of
//! the context an incoming message carries, so one request's spans form one
//! trace across nodes. Without hooks both calls do nothing. The context is a
//! hint for tracing only: nothing trusts it (the cluster MAC does not cover
//! headers).

use std::sync::OnceLock;

use crate::message::Headers;

/// What the node's tracing provides.
pub struct TraceHooks {
    /// Writes the current span's context into `headers`.
    pub inject: fn(&mut Headers),
    /// Makes `span` a child of the context in `headers`, if any.
    pub adopt: fn(&Headers, &tracing::Span),
}

static HOOKS: OnceLock<TraceHooks> = OnceLock::new();

/// Installs the hooks (once per process; later calls are ignored).
pub fn install(hooks: TraceHooks) {
    let _ = HOOKS.set(hooks);
}

/// Writes the current span's context into an outgoing message's headers.
pub fn inject(headers: &mut Headers) {
    if let Some(h) = HOOKS.get() {
        (h.inject)(headers);
    }
}

/// Makes `span` (a handler's) a child of the context `headers` carry.
pub fn adopt(headers: &Headers, span: &tracing::Span) {
    if let Some(h) = HOOKS.get() {
        (h.adopt)(headers, span);
    }
}

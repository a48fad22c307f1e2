//! What every Chronicle actor shares.
//!
//! actix's `Supervisor` restarts an actor that *stops*; a panic inside a handler
//! would instead unwind through the arbiter's task and take the actor (and its
//! supervisor) with it. [`guarded`] runs a handler body under `catch_unwind` and
//! turns a panic into a stop, so the supervisor restarts the actor with fresh state
//! (`Supervised::restarting`), and the node keeps serving.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::LazyLock;

use actix::{Actor, ActorContext};
use prometheus::{IntCounterVec, Opts};
use serde::Serialize;
use tracing::error;

/// `chronicle_actor_restarts_total{actor}`: supervised restarts after a panic or a
/// fatal error.
pub static ACTOR_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        Opts::new(
            "chronicle_actor_restarts_total",
            "Supervised actor restarts after a panic in a handler",
        ),
        &["actor"],
    )
    .expect("static metric definition");
    register(Box::new(counter.clone()));
    counter
});

/// Registers a collector with the process registry that `/metrics` exports.
/// Registering the same metric twice is a programming error and is logged.
pub fn register(collector: Box<dyn prometheus::core::Collector>) {
    if let Err(e) = prometheus::default_registry().register(collector) {
        error!(error = %e, "metric registration failed");
    }
}

/// Runs `body`; on panic logs it, counts a restart of `actor_name` and stops the
/// actor so its supervisor restarts it. Returns `None` after a panic.
pub fn guarded<A, R>(
    actor_name: &'static str,
    act: &mut A,
    ctx: &mut A::Context,
    body: impl FnOnce(&mut A, &mut A::Context) -> R,
) -> Option<R>
where
    A: Actor,
    A::Context: ActorContext,
{
    match catch_unwind(AssertUnwindSafe(|| body(act, ctx))) {
        Ok(r) => Some(r),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            error!(actor = actor_name, panic = %what, "actor panicked; restarting it");
            ACTOR_RESTARTS.with_label_values(&[actor_name]).inc();
            ctx.stop();
            None
        }
    }
}

/// Makes `actor`'s restart count visible (as 0) before its first restart.
pub fn announce(actor_name: &str) {
    ACTOR_RESTARTS.with_label_values(&[actor_name]).inc_by(0);
}

/// The error body every Chronicle interface uses: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: String,
}

/// Serializes an error body.
pub fn error_json(code: &str, message: impl Into<String>) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code,
            message: message.into(),
        },
    })
    .expect("an error body always serializes")
}

/// Makes an actor panic inside a handler: supervision tests and chaos runs use it to
/// prove that a panic restarts the actor and the node keeps serving.
#[derive(actix::Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct InjectPanic;

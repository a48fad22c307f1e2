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

/// Lowers the calling thread's scheduling priority (nice 10), once per thread.
///
/// Client work (parsing writes, running queries) calls this on the threads it
/// runs on, so that on a busy machine the cluster's threads (Raft heartbeats,
/// appends, applies) are scheduled first: a flood of client traffic slows
/// clients down instead of starving heartbeats into needless elections.
/// Lowering a priority needs no privilege. Linux applies it to the one thread.
pub fn yield_to_cluster_work() {
    use std::cell::Cell;
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if lowered.replace(true) {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: gettid has no preconditions; setpriority on our own
            // thread id only changes this thread's nice value.
            let rc = unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, CLIENT_WORK_NICE)
            };
            if rc != 0 {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "could not lower this thread's priority"
                );
            }
        }
    })
}

/// The nice value of threads doing client work (0 is the default, 19 the lowest).
pub const CLIENT_WORK_NICE: libc::c_int = 10;

//! What every Chronicle actor shares.
//!
//! actix's `Supervisor` restarts an actor that *stops*; a panic inside a handler
//! would instead unwind through the arbiter's task and take the actor (and its
//! supervisor) with it. [`guarded`] runs a handler body under `catch_unwind` and
//! turns a panic into a stop, so the supervisor restarts the actor with fresh state
//! (`Supervised::restarting`), and the node keeps serving.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext};
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
    let names: Vec<String> = collector.desc().iter().map(|d| d.fq_name.clone()).collect();
    if let Err(e) = prometheus::default_registry().register(collector) {
        error!(error = %e, metrics = ?names, "metric registration failed");
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
            let what = panic_message(panic.as_ref());
            error!(actor = actor_name, panic = %what, "actor panicked; restarting it");
            ACTOR_RESTARTS.with_label_values(&[actor_name]).inc();
            ctx.stop();
            None
        }
    }
}

/// How a supervised actor restarts: after a pause that doubles with each
/// restart within `window` (from `initial_backoff` up to `max_backoff`),
/// so a handler that panics on every message cannot spin a core; more than
/// `intensity` restarts within `window` and the node reports the actor not
/// ready (it keeps restarting, at the longest pause, in case it recovers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub intensity: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(10),
            intensity: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// One actor's recent restarts, shared between the actor (which records
/// them) and the node's readiness (which asks whether it is failing).
#[derive(Clone)]
pub struct Restarts {
    actor: &'static str,
    policy: RestartPolicy,
    times: Arc<Mutex<VecDeque<Instant>>>,
}

/// Every `Restarts` made, for readiness.
static TRACKED: Mutex<Vec<Restarts>> = Mutex::new(Vec::new());

impl Restarts {
    pub fn new(actor: &'static str, policy: RestartPolicy) -> Self {
        Self {
            actor,
            policy,
            times: Arc::default(),
        }
    }

    /// Makes this the tracker readiness asks about for its actor (the one
    /// restarts are recorded in).
    fn track(&self) {
        let mut tracked = TRACKED.lock().unwrap_or_else(|e| e.into_inner());
        if !tracked.iter().any(|t| Arc::ptr_eq(&t.times, &self.times)) {
            tracked.retain(|t| t.actor != self.actor);
            tracked.push(self.clone());
        }
    }

    fn recent(&self, now: Instant) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            times.pop_front();
        }
        times
    }

    /// Records a restart now; the pause before the actor takes messages again.
    pub fn record(&self) -> Duration {
        self.track();
        let now = Instant::now();
        let mut times = self.recent(now);
        times.push_back(now);
        let doublings = (times.len() as u32).saturating_sub(1).min(20);
        let pause = self
            .policy
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.policy.max_backoff);
        if times.len() as u32 > self.policy.intensity {
            error!(
                actor = self.actor,
                restarts = times.len(),
                window = ?self.policy.window,
                "actor restarting too often; reported not ready"
            );
        }
        pause
    }

    /// Why the actor counts as failing: more restarts in the window than
    /// the policy allows.
    pub fn failing(&self) -> Option<String> {
        let n = self.recent(Instant::now()).len() as u32;
        (n > self.policy.intensity).then(|| {
            format!(
                "actor {} restarted {n} times within {:?} (limit {})",
                self.actor, self.policy.window, self.policy.intensity
            )
        })
    }

    /// For `Supervised::restarting`: records the restart and holds the
    /// actor's mailbox for the pause (its address stays valid; messages
    /// wait).
    pub fn pause<A>(&self, ctx: &mut actix::Context<A>)
    where
        A: Actor<Context = actix::Context<A>>,
    {
        let pause = self.record();
        ctx.wait(actix::fut::wrap_future(actix::clock::sleep(pause)));
    }
}

/// Every tracked actor that is failing, described.
pub fn failing_actors() -> Vec<String> {
    TRACKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Restarts::failing)
        .collect()
}

/// Runs a future an actor spawned, turning a panic in it into a logged,
/// counted `None` (`chronicle_actor_task_panics_total{actor}`) instead of an
/// unwinding arbiter thread.
pub async fn guard_future<F: std::future::Future>(
    actor: &'static str,
    fut: F,
) -> Option<F::Output> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Some(v),
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            error!(actor, panic = %what, "a task of the actor panicked");
            TASK_PANICS.with_label_values(&[actor]).inc();
            None
        }
    }
}

/// `chronicle_actor_task_panics_total{actor}`: futures spawned by an
/// actor's handlers that panicked (the actor itself keeps running).
pub static TASK_PANICS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        Opts::new(
            "chronicle_actor_task_panics_total",
            "Futures spawned by actor handlers that panicked",
        ),
        &["actor"],
    )
    .expect("static metric definition");
    register(Box::new(counter.clone()));
    counter
});

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Makes `actor`'s restart and task panic counts visible (as 0) before
/// the first.
pub fn announce(actor_name: &str) {
    ACTOR_RESTARTS.with_label_values(&[actor_name]).inc_by(0);
    TASK_PANICS.with_label_values(&[actor_name]).inc_by(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_within_the_window_and_too_many_are_failing() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(35),
            intensity: 2,
            window: Duration::from_millis(300),
        };
        let r = Restarts::new("test-actor", policy);
        assert_eq!(r.record(), Duration::from_millis(10));
        assert_eq!(r.record(), Duration::from_millis(20));
        assert!(r.failing().is_none());
        assert_eq!(r.record(), Duration::from_millis(35), "capped");
        let why = r.failing().expect("over the intensity");
        assert!(why.contains("test-actor restarted 3 times"), "{why}");
        assert!(failing_actors().iter().any(|w| w.contains("test-actor")));
        // A calm window later: no longer failing, and the pause starts over.
        std::thread::sleep(Duration::from_millis(350));
        assert!(r.failing().is_none());
        assert_eq!(r.record(), Duration::from_millis(10));
    }
}

//! Watches this node's Raft groups and cluster tasks: a group whose Raft core
//! stopped with a fatal error (a storage failure while applying or logging, a
//! panic in the core), or one of whose tasks (its Raft RPC server, request
//! servers, membership watchers, feed publisher, lease expiry, snapshot
//! trigger) panicked, would otherwise stay dead while the node looks
//! healthy. The supervisor restarts the group from disk (its log and state
//! machine, and so every task) with backoff, and reports a group that keeps
//! failing so readiness can say so. The node's own services (the node
//! subjects' servers, the retention loop) are restarted with backoff where
//! they ran ([`service`]) and reported the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::node::ClusterNode;

/// How often the groups are looked at.
const PERIOD: Duration = Duration::from_millis(250);
/// First wait before a restart; doubles per failure, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Restarts within `WINDOW` from which a group counts as failing.
const FAILING_AFTER: usize = 3;
const WINDOW: Duration = Duration::from_secs(300);
/// A group that restarted `FAILING_AFTER` times counts as failing until it
/// ran this long without another failure.
const STEADY_AFTER: Duration = Duration::from_secs(10);

/// What the supervisor knows of one shard's group.
#[derive(Debug, Default)]
pub(crate) struct GroupHealth {
    /// When it was restarted, within the window.
    restarts: Vec<Instant>,
    /// Why it last stopped.
    last_failure: Option<String>,
    /// Stopped and not running again yet (the restart failed or waits).
    down_since: Option<Instant>,
    next_attempt: Option<Instant>,
    failures_in_a_row: u32,
}

/// Per-shard health, shared between the supervisor and readiness.
#[derive(Debug, Default)]
pub(crate) struct Supervision {
    groups: parking_lot::Mutex<BTreeMap<u32, GroupHealth>>,
    /// Groups one of whose tasks panicked, with why: the supervisor's next
    /// look restarts them.
    task_failures: parking_lot::Mutex<BTreeMap<u32, String>>,
    /// The node's services that panicked: when, within the window, and why.
    services: parking_lot::Mutex<BTreeMap<&'static str, (Vec<Instant>, String)>>,
}

impl Supervision {
    /// Shards that are down, or restarted `FAILING_AFTER` times within the
    /// window and not yet steady since the last, with what happened.
    pub(crate) fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (shard, h) in self.groups.lock().iter_mut() {
            h.restarts.retain(|t| now.duration_since(*t) < WINDOW);
            let why = h.last_failure.as_deref().unwrap_or("unknown");
            if let Some(since) = h.down_since {
                out.push(format!(
                    "shard {shard}: raft group down for {:.0?} ({why}); restarting",
                    now.duration_since(since)
                ));
            } else if h.restarts.len() >= FAILING_AFTER
                && h.restarts
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < STEADY_AFTER)
            {
                out.push(format!(
                    "shard {shard}: raft group restarted {} times in {:?} (last: {why})",
                    h.restarts.len(),
                    WINDOW
                ));
            }
        }
        let mut services = self.services.lock();
        for (name, (failures, why)) in services.iter_mut() {
            failures.retain(|t| now.duration_since(*t) < WINDOW);
            if failures.len() >= FAILING_AFTER
                && failures
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < STEADY_AFTER)
            {
                out.push(format!(
                    "cluster service {name}: failed {} times in {WINDOW:?} (last: {why})",
                    failures.len()
                ));
            }
        }
        out
    }

    /// Restarts of `shard`'s group within the window.
    pub(crate) fn restarts(&self, shard: u32) -> usize {
        self.groups
            .lock()
            .get(&shard)
            .map_or(0, |h| h.restarts.len())
    }
}

/// Runs until the node is dropped or shut down (the task is aborted then).
pub(crate) fn spawn(node: Weak<ClusterNode>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PERIOD).await;
            let Some(node) = node.upgrade() else { return };
            check(&node).await;
        }
    })
}

/// Aborts a task when dropped: a watcher that is aborted (its group
/// stopping) takes the task it watches with it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a panic said, as far as it says anything.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

/// Watches one of `shard`'s group tasks: a panic marks the group failed, and
/// the supervisor restarts it (and so the task). A task that returns ends by
/// design (its group is stopping, or this node left the group). Aborting the
/// returned handle aborts the task.
pub(crate) fn group_task(
    node: Weak<ClusterNode>,
    shard: u32,
    name: &'static str,
    task: tokio::task::JoinHandle<()>,
) -> tokio::task::JoinHandle<()> {
    let guard = AbortOnDrop(task.abort_handle());
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(e) = task.await {
            if e.is_panic() {
                let why = format!("its {name} panicked: {}", panic_message(e));
                error!(shard, task = name, reason = %why, "cluster task failed");
                if let Some(node) = node.upgrade() {
                    node.supervision.task_failures.lock().insert(shard, why);
                }
            }
        }
    })
}

/// Runs one of the node's services, started by `start`, and starts it again
/// with backoff whenever it panics; repeated failures show in readiness. A
/// service that returns ends by design (the node is going away). Aborting
/// the returned handle aborts the service.
pub(crate) fn service(
    node: Weak<ClusterNode>,
    name: &'static str,
    start: impl Fn() -> tokio::task::JoinHandle<()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut in_a_row = 0u32;
        loop {
            let task = start();
            let guard = AbortOnDrop(task.abort_handle());
            let started = Instant::now();
            let outcome = task.await;
            drop(guard);
            let e = match outcome {
                Ok(()) => return,
                Err(e) if !e.is_panic() => return,
                Err(e) => e,
            };
            let why = panic_message(e);
            let Some(strong) = node.upgrade() else { return };
            strong
                .supervision
                .services
                .lock()
                .entry(name)
                .and_modify(|(failures, last)| {
                    failures.push(Instant::now());
                    last.clone_from(&why);
                })
                .or_insert_with(|| (vec![Instant::now()], why.clone()));
            drop(strong);
            in_a_row = if started.elapsed() > STEADY_AFTER {
                1
            } else {
                in_a_row.saturating_add(1)
            };
            let wait = FIRST_BACKOFF
                .saturating_mul(1 << in_a_row.min(16))
                .min(MAX_BACKOFF);
            error!(service = name, reason = %why, retry_in = ?wait, "cluster service failed; restarting it");
            tokio::time::sleep(wait).await;
        }
    })
}

async fn check(node: &Arc<ClusterNode>) {
    let task_failures = std::mem::take(&mut *node.supervision.task_failures.lock());
    let failed: Vec<(u32, String)> = node
        .groups
        .read()
        .iter()
        .filter_map(|(shard, g)| {
            let m = g.raft.metrics().borrow().clone();
            m.running_state
                .err()
                .map(|fatal| fatal.to_string())
                .or_else(|| task_failures.get(shard).cloned())
                .map(|why| (*shard, why))
        })
        .collect();
    for (shard, why) in failed {
        error!(shard, reason = %why, "raft group stopped; restarting it from disk");
        {
            let mut groups = node.supervision.groups.lock();
            let h = groups.entry(shard).or_default();
            h.last_failure = Some(why);
            h.down_since.get_or_insert_with(Instant::now);
        }
        // Out of the map (so nothing routes to it), then stopped.
        let _changing = node.replica_changes.lock().await;
        let stopped = node.groups.write().remove(&shard);
        drop(_changing);
        if let Some(group) = stopped {
            group.stop().await;
        }
    }
    // Groups down: restart when their backoff has passed.
    let due: Vec<u32> = {
        let now = Instant::now();
        node.supervision
            .groups
            .lock()
            .iter()
            .filter(|(_, h)| h.down_since.is_some() && h.next_attempt.is_none_or(|t| now >= t))
            .map(|(s, _)| *s)
            .collect()
    };
    for shard in due {
        let outcome = node.host(shard, None).await;
        let mut groups = node.supervision.groups.lock();
        let h = groups.entry(shard).or_default();
        match outcome {
            Ok(()) => {
                h.restarts.push(Instant::now());
                h.down_since = None;
                h.next_attempt = None;
                h.failures_in_a_row = 0;
                info!(shard, restarts = h.restarts.len(), "raft group restarted");
            }
            Err(e) => {
                h.failures_in_a_row = h.failures_in_a_row.saturating_add(1);
                let wait = FIRST_BACKOFF
                    .saturating_mul(1 << h.failures_in_a_row.min(16))
                    .min(MAX_BACKOFF);
                h.next_attempt = Some(Instant::now() + wait);
                h.last_failure = Some(format!("restart failed: {e}"));
                warn!(shard, error = %e, retry_in = ?wait, "raft group did not restart");
            }
        }
    }
}

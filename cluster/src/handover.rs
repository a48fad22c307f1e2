//! Leadership handover without an election timeout. openraft 0.9 has no
//! transfer: the heir stands for election and needs a majority. The old
//! leader votes for it only if the heir's log is as long as its own, and a
//! leader that keeps proposing is always a few entries ahead. So, for the
//! handover, the leader holds new proposals at its [`WriteGate`] (bounded
//! time) and stops heartbeats; once the heir has every entry, the heir stands,
//! the old leader grants its vote (its own vote is older than the lease) and
//! the held writes go on to the new leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::Raft;

use crate::types::TypeConfig;

/// Where a leader's new proposals wait while it hands leadership over.
#[derive(Default)]
pub(crate) struct WriteGate {
    /// Milliseconds since [`clock_start`] until which proposals wait; 0: open.
    until: AtomicU64,
    opened: tokio::sync::Notify,
}

fn clock_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

fn now_ms() -> u64 {
    clock_start().elapsed().as_millis() as u64
}

impl WriteGate {
    /// Holds proposals for at most `hold` (opened sooner by [`Self::open`]).
    pub(crate) fn close_for(&self, hold: Duration) {
        let until = now_ms() + hold.as_millis() as u64;
        self.until.store(until.max(1), Ordering::SeqCst);
    }

    pub(crate) fn open(&self) {
        self.until.store(0, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        let until = self.until.load(Ordering::SeqCst);
        until != 0 && now_ms() < until
    }

    /// Returns once the gate is open (or its hold ran out).
    pub(crate) async fn pass(&self) {
        loop {
            let until = self.until.load(Ordering::SeqCst);
            let now = now_ms();
            if until == 0 || now >= until {
                return;
            }
            let opened = self.opened.notified();
            tokio::pin!(opened);
            // Registered before the second look, so an `open` in between is seen.
            opened.as_mut().enable();
            if !self.is_closed() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(until - now), opened).await;
        }
    }
}

/// Closes `gate` and pauses `raft`'s heartbeats for at most `hold`; both
/// resume as soon as this member no longer leads (the held proposals then
/// fail over to the new leader) or the hold runs out.
pub(crate) fn hold_for_transfer(
    raft: &Raft<TypeConfig>,
    gate: std::sync::Arc<WriteGate>,
    hold: Duration,
) {
    gate.close_for(hold);
    raft.runtime_config().heartbeat(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        let me = raft.metrics().borrow().id;
        let mut metrics = raft.metrics();
        let _ = tokio::time::timeout(
            hold,
            metrics.wait_for(|m| m.current_leader != Some(me) || m.running_state.is_err()),
        )
        .await;
        gate.open();
        raft.runtime_config().heartbeat(true);
    });
}

/// Set on a node that is stopping: it hands its leaderships over and must not
/// win them back, so it no longer stands for election.
#[derive(Default)]
pub(crate) struct Retiring(AtomicBool);

impl Retiring {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_gate_holds_until_opened_or_the_hold_runs_out() {
        let gate = std::sync::Arc::new(WriteGate::default());
        gate.pass().await;
        gate.close_for(Duration::from_secs(30));
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a closed gate holds");
        gate.open();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("opening releases the waiter")
            .unwrap();
        gate.close_for(Duration::from_millis(30));
        tokio::time::timeout(Duration::from_secs(5), gate.pass())
            .await
            .expect("a hold runs out by itself");
    }
}

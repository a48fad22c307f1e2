//! This node's wall clock, with an offset chaos runs can inject: a node whose
//! clock is skewed or jumps must still answer correctly. Everything in the
//! cluster that stamps or compares wall time (proposal stamps, TTL leases,
//! retention and downsampling) reads it here. Raft's timers use the
//! monotonic clock and are not affected.

use std::sync::atomic::{AtomicI64, Ordering};

static OFFSET_NS: AtomicI64 = AtomicI64::new(0);

/// Nanoseconds since the Unix epoch, plus the injected offset.
pub fn now_ns() -> i64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    real.saturating_add(OFFSET_NS.load(Ordering::Relaxed))
}

/// Skews this process's cluster clock by `offset_ns` from the real one
/// (0 heals it). Process-wide: one node per process in a chaos run.
pub fn set_offset_ns(offset_ns: i64) {
    OFFSET_NS.store(offset_ns, Ordering::Relaxed);
}

/// The injected offset.
pub fn offset_ns() -> i64 {
    OFFSET_NS.load(Ordering::Relaxed)
}

//! Which span a batch's apply is traced under: the span that proposed it on
//! this node (the leader), so a write's trace reaches the shard apply. Keyed
//! by a hash of the batch's encoded points (the entry may come back from the
//! log's disk, so no address survives); followers, which proposed nothing,
//! find nothing and trace no apply, and nothing is hashed while nothing
//! waits.

use std::collections::HashMap;
use std::sync::LazyLock;

use chronicle_storage::EncodedPoints;

/// Proposals remembered at most (a leader change can leave some behind
/// until their proposer gives up; past this, new ones are not traced).
const MAX_PROPOSALS: usize = 4096;

static PROPOSALS: LazyLock<parking_lot::Mutex<HashMap<usize, tracing::Span>>> =
    LazyLock::new(Default::default);

fn key(points: &EncodedPoints) -> usize {
    xxhash_rust::xxh3::xxh3_64(points.as_bytes()) as usize
}

/// Forgets its proposal when dropped (the write answered or given up).
pub(crate) struct Proposed(Option<usize>);

impl Drop for Proposed {
    fn drop(&mut self) {
        if let Some(k) = self.0 {
            PROPOSALS.lock().remove(&k);
        }
    }
}

/// Remembers the current span as the parent of `points`' apply.
pub(crate) fn proposing(points: &EncodedPoints) -> Proposed {
    let span = tracing::Span::current();
    if span.is_disabled() || points.is_empty() {
        return Proposed(None);
    }
    let mut proposals = PROPOSALS.lock();
    if proposals.len() >= MAX_PROPOSALS {
        return Proposed(None);
    }
    let k = key(points);
    proposals.insert(k, span);
    Proposed(Some(k))
}

/// The apply span of `points` (entered), when this node proposed them.
pub(crate) fn applying(
    points: &EncodedPoints,
    shard: u32,
    index: u64,
) -> Option<tracing::span::EnteredSpan> {
    if points.is_empty() || PROPOSALS.lock().is_empty() {
        return None;
    }
    let parent = PROPOSALS.lock().get(&key(points)).cloned()?;
    Some(
        tracing::info_span!(parent: &parent, "shard_apply", shard, index, points = points.len())
            .entered(),
    )
}

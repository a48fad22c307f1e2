//! The Raft type configuration shared by every group.

use chronicle_storage::{EncodedPoints, Point};

/// What one Raft entry carries: a batch of points for the shard, applied all
/// or nothing. Encoded once, where the write enters the cluster; the same
/// bytes (shared, not copied) go to the log, to followers and to the state
/// machine, which reads them in place.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriteBatch {
    pub points: EncodedPoints,
    /// A retention entry instead of points: per tier, drop the chunk windows
    /// that end before the cutoff (nanoseconds). The leader fixes the cutoffs
    /// when it proposes, so every replica deletes exactly the same data
    /// whatever its own clock or settings.
    pub retain: Vec<(u8, i64)>,
    /// The points are (a part of) one write with an idempotency key.
    pub keyed: Option<Box<KeyedWrite>>,
    /// A delete entry instead of points.
    pub delete: Option<Box<DeleteRange>>,
    /// A state entry (feature key-value data) instead of points.
    pub state: Option<Box<chronicle_storage::state::StateBatch>>,
    /// A downsampling entry instead of points: the rule, its tier and the
    /// end of the run, fixed by the leader.
    pub downsample: Option<Box<chronicle_storage::DownsampleStep>>,
}

/// Delete the samples of matching series in `[start, end]` (ns, inclusive).
#[derive(Debug, Clone)]
pub struct DeleteRange {
    pub matchers: Vec<chronicle_storage::Matcher>,
    pub start: i64,
    pub end: i64,
    /// Unique per delete request: a re-sent request is applied once.
    pub id: u64,
    /// Fixed by the leader when it proposes (ns since the epoch).
    pub at: i64,
}

/// How long a delete's id is remembered (ns): an hour.
pub const DELETE_ONCE_WINDOW: i64 = 3_600 * 1_000_000_000;

impl PartialEq for DeleteRange {
    fn eq(&self, other: &Self) -> bool {
        let key = |d: &Self| (crate::read::wire_matchers(&d.matchers), d.start, d.end);
        key(self) == key(other)
    }
}

/// Which keyed write an entry's points belong to. A write's points in one
/// shard are split into parts of at most one entry each, numbered from 0, the
/// same way every time the same write is sent; a part already applied under
/// the same key by another submission within the window is not applied again
/// (storage's `Shard::apply_encoded_keyed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedWrite {
    pub key: String,
    pub part: u32,
    /// Unique per submission: a client's retry is a new one.
    pub nonce: u64,
    /// Fixed by the leader when it proposes (ns since the epoch).
    pub at: i64,
    /// How long the key is remembered (ns).
    pub window: i64,
}

/// The points `start..start + len` of a write, sent with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpan {
    pub key: String,
    pub start: usize,
    pub len: usize,
}

impl WriteBatch {
    pub fn new(points: EncodedPoints) -> Self {
        Self {
            points,
            retain: Vec::new(),
            keyed: None,
            delete: None,
            state: None,
            downsample: None,
        }
    }

    /// A retention entry.
    pub fn retain(cutoffs: Vec<(u8, i64)>) -> Self {
        Self {
            points: EncodedPoints::default(),
            retain: cutoffs,
            keyed: None,
            delete: None,
            state: None,
            downsample: None,
        }
    }

    /// A delete entry.
    pub fn delete(range: DeleteRange) -> Self {
        Self {
            points: EncodedPoints::default(),
            retain: Vec::new(),
            keyed: None,
            delete: Some(Box::new(range)),
            state: None,
            downsample: None,
        }
    }

    /// A state entry.
    pub fn state(batch: chronicle_storage::state::StateBatch) -> Self {
        Self {
            points: EncodedPoints::default(),
            retain: Vec::new(),
            keyed: None,
            delete: None,
            state: Some(Box::new(batch)),
            downsample: None,
        }
    }

    /// A downsampling entry.
    pub fn downsample(step: chronicle_storage::DownsampleStep) -> Self {
        Self {
            points: EncodedPoints::default(),
            retain: Vec::new(),
            keyed: None,
            delete: None,
            state: None,
            downsample: Some(Box::new(step)),
        }
    }

    pub fn encode(points: &[Point]) -> Self {
        Self::new(EncodedPoints::encode(points))
    }
}

/// What applying an entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// Points written (0 for a batch the shard already held, or a non-data entry).
    pub written: usize,
    /// What each transaction of a state entry did (on the replica that
    /// applied it first; empty for a replay).
    pub state: Vec<chronicle_storage::state::TxnOutcome>,
}

openraft::declare_raft_types!(
    /// Chronicle's Raft groups: node ids are numbers, nodes need no address
    /// (they are reached over the bus by id), a snapshot is a directory of
    /// files the bus transfer moves (network.rs).
    pub TypeConfig:
        D = WriteBatch,
        R = Applied,
        NodeId = u64,
        Node = openraft::EmptyNode,
        SnapshotData = crate::snapshot::SnapshotFiles,
);

//! The Raft type configuration shared by every group.

use chronicle_storage::{EncodedPoints, Point};

/// What one Raft entry carries: a batch of points for the shard, applied all
/// or nothing. Encoded once, where the write enters the cluster; the same
/// bytes (shared, not copied) go to the log, to followers and to the state
/// machine, which reads them in place.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriteBatch {
    pub points: EncodedPoints,
}

impl WriteBatch {
    pub fn new(points: EncodedPoints) -> Self {
        Self { points }
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
}

openraft::declare_raft_types!(
    /// Chronicle's Raft groups: node ids are numbers, nodes need no address
    /// (they are reached over the bus by id), snapshots are files.
    pub TypeConfig:
        D = WriteBatch,
        R = Applied,
        NodeId = u64,
        Node = openraft::EmptyNode,
        SnapshotData = tokio::fs::File,
);

//! The Raft type configuration shared by every group.

use std::sync::Arc;

use chronicle_storage::Point;

/// What one Raft entry carries: a batch of points for the shard, applied all
/// or nothing. Shared, not copied, between the client's request, the log's
/// memory and the state machine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriteBatch {
    pub points: Arc<Vec<Point>>,
}

impl WriteBatch {
    pub fn new(points: Vec<Point>) -> Self {
        Self {
            points: Arc::new(points),
        }
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

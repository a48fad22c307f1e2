//! Chronicle's replication: each storage shard is a Raft group (openraft).
//!
//! * [`TypeConfig`]: what the groups replicate — batches of points.
//! * [`LogStore`]: the Raft log and vote in RocksDB. The log is the shard's
//!   write-ahead log: the state machine applies batches to the shard without
//!   logging them again, and after a restart openraft re-applies what the
//!   shard had not yet made durable (the shard ignores indexes it already has).
//! * [`ShardStateMachine`]: the state machine is a storage shard; a snapshot is
//!   a RocksDB checkpoint of it (hard links, no copy) with a manifest of its
//!   files; a follower receives only the files it lacks ([`snapshot`],
//!   [`network`]) and installing one opens the checkpoint as the new shard.
//! * [`wire`]: rkyv encodings of entries (in the log and on the bus).

pub mod blob;
pub mod clock;
mod election;
mod error;
pub mod feed;
mod handover;
mod log_store;
mod membership;
mod metrics;
pub mod network;
mod node;
pub mod read;
pub mod snapshot;
mod snapshot_transfer;
pub mod state;
mod state_machine;
mod supervise;
mod trace;
mod types;
pub mod wire;

pub use error::ClusterError;
pub use log_store::{LogProbe, LogStore, RAFT_LOG_WRITE};
pub use network::{raft_subject, serve, serve_tracked, BusNetwork, LeaderContact};
pub use node::{
    placement, shard_of, BackupCheckpoint, ClusterConfig, ClusterNode, ClusterStatus, PendingWrite,
    ShardStatus, REQUEST_SERVER_FAILPOINT, RETENTION_FAILPOINT,
};
pub use read::{ShardAnswer, ShardRead};
pub use snapshot::{Manifest, SnapshotFiles};
pub use snapshot_transfer::SnapshotReceiver;
pub use state_machine::{ShardCell, ShardStateMachine};
pub use types::{Applied, DeleteRange, KeySpan, KeyedWrite, TypeConfig, WriteBatch};

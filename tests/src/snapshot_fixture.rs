//! Entries and settings shared by the snapshot crash test and its crasher.

use chronicle_cluster::{TypeConfig, WriteBatch};
use chronicle_storage::{Label, Point, ShardConfig};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const S: i64 = 1_000_000_000;

pub fn config() -> ShardConfig {
    ShardConfig {
        sync_writes: false,
        ..ShardConfig::default()
    }
}

/// Log entries `from..=to`, each one point of series `m{k="v"}` with value
/// and second equal to its index.
pub fn entries(from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
    (from..=to)
        .map(|index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(WriteBatch::encode(&[Point::new(
                "m",
                vec![Label::new("k", "v")],
                index as f64,
                index as i64 * S,
            )])),
        })
        .collect()
}

//! openraft's own storage test suite against the RocksDB log store and the
//! shard state machine, each on a fresh temporary directory.

use chronicle_cluster::{LogStore, ShardStateMachine, TypeConfig};
use chronicle_storage::ShardConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, ShardStateMachine), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let log = LogStore::open(dir.path().join("raft-log")).expect("log store");
        let config = ShardConfig {
            sync_writes: false,
            ..ShardConfig::default()
        };
        let sm = ShardStateMachine::open(dir.path().join("state"), config).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite: {e}");
    }
}

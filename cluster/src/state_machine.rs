//! The state machine of a group: a storage shard.
//!
//! Layout under the group's directory:
//! * `shards/<n>/` — shard generations; `CURRENT` names the live one. Installing
//!   a snapshot opens it as a new generation, so readers still holding the old
//!   shard keep a consistent view while the new one takes over.
//! * `snapshot.tar`, `snapshot.meta` — the last snapshot (a tar of a RocksDB
//!   checkpoint) and what it covers.
//!
//! Applying does not write the batch to disk again: the shard keeps it in its
//! head until it cuts chunks, and the Raft log is the write-ahead log. After a
//! restart the state machine reports the last snapshot as applied and openraft
//! re-applies the committed entries after it; the shard skips the indexes it
//! already made durable, so nothing is applied twice.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chronicle_storage::{Shard, ShardConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EmptyNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};
use parking_lot::RwLock;

use crate::types::{Applied, TypeConfig};
use crate::wire::WireSnapshotMeta;
use crate::ClusterError;

/// The live shard of a group, swapped when a snapshot is installed. Readers
/// take the current one and keep it as long as they need.
#[derive(Clone)]
pub struct ShardCell(Arc<RwLock<Arc<Shard>>>);

impl ShardCell {
    pub fn current(&self) -> Arc<Shard> {
        self.0.read().clone()
    }

    fn replace(&self, shard: Arc<Shard>) {
        *self.0.write() = shard;
    }
}

/// Makes `tar` (complete on disk) the group's current snapshot: the file
/// first, then the meta that names what it covers (written and renamed, so a
/// crash leaves the old pair or the new one).
fn commit_snapshot(
    dir: &Path,
    tar: &Path,
    meta: &SnapshotMeta<u64, EmptyNode>,
) -> Result<(), ClusterError> {
    let target = dir.join("snapshot.tar");
    std::fs::rename(tar, &target).map_err(io(&target))?;
    let bytes =
        chronicle_bus::envelope::encode(&WireSnapshotMeta::from_meta(meta)).map_err(|e| {
            ClusterError::Corrupt {
                what: "snapshot meta",
                why: e.to_string(),
            }
        })?;
    let tmp = dir.join("snapshot.meta.tmp");
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join("snapshot.meta")).map_err(io(&tmp))
}

pub struct ShardStateMachine {
    dir: PathBuf,
    config: ShardConfig,
    shard: ShardCell,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, EmptyNode>,
    /// Shard generation number of the live shard.
    generation: u64,
    snapshots_built: u64,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<u64> {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn snapshot_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<u64> {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        std::io::Error::other(e.to_string()),
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Snapshot {
        path: path.display().to_string(),
        source,
    }
}

impl ShardStateMachine {
    /// Opens (or creates) the group's state under `dir`.
    pub fn open(dir: impl AsRef<Path>, config: ShardConfig) -> Result<Self, ClusterError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(dir.join("shards")).map_err(io(&dir))?;
        let current = dir.join("CURRENT");
        let generation = match std::fs::read_to_string(&current) {
            Ok(text) => text.trim().parse().map_err(|e| ClusterError::Corrupt {
                what: "CURRENT",
                why: format!("{e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&current, "0").map_err(io(&current))?;
                0
            }
            Err(e) => return Err(io(&current)(e)),
        };
        let shard = Shard::open(
            dir.join("shards").join(generation.to_string()),
            config.clone(),
        )?;
        let mut sm = Self {
            dir,
            config,
            shard: ShardCell(Arc::new(RwLock::new(Arc::new(shard)))),
            last_applied: None,
            membership: StoredMembership::default(),
            generation,
            snapshots_built: 0,
        };
        if let Some(meta) = sm.stored_meta()? {
            let meta = meta.to_meta();
            sm.last_applied = meta.last_log_id;
            sm.membership = meta.last_membership;
        }
        Ok(sm)
    }

    /// The live shard, for readers.
    pub fn shard(&self) -> ShardCell {
        self.shard.clone()
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("snapshot.meta")
    }

    fn tar_path(&self) -> PathBuf {
        self.dir.join("snapshot.tar")
    }

    fn stored_meta(&self) -> Result<Option<WireSnapshotMeta>, ClusterError> {
        let path = self.meta_path();
        match std::fs::read(&path) {
            Ok(bytes) => chronicle_bus::envelope::decode(&bytes)
                .map(Some)
                .map_err(|e| ClusterError::Corrupt {
                    what: "snapshot meta",
                    why: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn open_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, ClusterError> {
        let Some(meta) = self.stored_meta()? else {
            return Ok(None);
        };
        let path = self.tar_path();
        let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        Ok(Some(Snapshot {
            meta: meta.to_meta(),
            snapshot: Box::new(file),
        }))
    }

    /// Checkpoints the shard and packs the checkpoint into a tar file.
    fn pack(shard: &Shard, dir: &Path, name: &str) -> Result<PathBuf, ClusterError> {
        let checkpoint = dir.join(format!("{name}.checkpoint"));
        if checkpoint.exists() {
            std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
        }
        shard.checkpoint(&checkpoint)?;
        let tar_path = dir.join(format!("{name}.tar"));
        let file = std::fs::File::create(&tar_path).map_err(io(&tar_path))?;
        let mut builder = tar::Builder::new(file);
        builder
            .append_dir_all(".", &checkpoint)
            .map_err(io(&checkpoint))?;
        let file = builder.into_inner().map_err(io(&tar_path))?;
        file.sync_all().map_err(io(&tar_path))?;
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
        Ok(tar_path)
    }

    fn install(
        &mut self,
        meta: &SnapshotMeta<u64, EmptyNode>,
        data: std::fs::File,
    ) -> Result<(), ClusterError> {
        let mut data = data;
        let incoming = self.dir.join("incoming.tar");
        data.seek(SeekFrom::Start(0)).map_err(io(&incoming))?;
        // Keep a copy as our own current snapshot, then unpack it.
        {
            let mut copy = std::fs::File::create(&incoming).map_err(io(&incoming))?;
            std::io::copy(&mut data, &mut copy).map_err(io(&incoming))?;
            copy.sync_all().map_err(io(&incoming))?;
        }
        let checkpoint = self.dir.join("incoming.checkpoint");
        if checkpoint.exists() {
            std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
        }
        let file = std::fs::File::open(&incoming).map_err(io(&incoming))?;
        tar::Archive::new(file)
            .unpack(&checkpoint)
            .map_err(io(&checkpoint))?;
        let next = self.generation + 1;
        let shard_dir = self.dir.join("shards").join(next.to_string());
        let shard = Shard::restore(&checkpoint, &shard_dir, self.config.clone())?;
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
        // The new generation is live from here on, also after a restart.
        let current = self.dir.join("CURRENT");
        let tmp = self.dir.join("CURRENT.tmp");
        std::fs::write(&tmp, next.to_string()).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &current).map_err(io(&current))?;
        commit_snapshot(&self.dir, &incoming, meta)?;
        self.shard.replace(Arc::new(shard));
        let old = self.dir.join("shards").join(self.generation.to_string());
        self.generation = next;
        // Readers may still hold the old shard; its open files outlive the unlink.
        let _ = std::fs::remove_dir_all(old);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// Builds snapshots of the shard as it is when the build starts.
pub struct ShardSnapshotBuilder {
    dir: PathBuf,
    shard: Arc<Shard>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, EmptyNode>,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        // The checkpoint may hold entries applied after `last_applied` (applying
        // goes on meanwhile); installing it and replaying those entries is
        // harmless, since the shard skips indexes it already holds.
        let tar = ShardStateMachine::pack(
            &self.shard,
            &self.dir,
            &format!("build-{}", self.snapshot_id),
        )
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        commit_snapshot(&self.dir, &tar, &meta).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let path = self.dir.join("snapshot.tar");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, EmptyNode>), StorageError<u64>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applying writes RocksDB and can take milliseconds per batch: it runs
        // on the blocking pool, so Raft's timers and heartbeats on the async
        // workers never wait behind it (a stalled heartbeat means an election).
        let shard = self.shard.current();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let applied = tokio::task::spawn_blocking(move || {
            entries
                .into_iter()
                .map(|entry| {
                    let (written, membership) = match entry.payload {
                        EntryPayload::Normal(batch) if !batch.retain.is_empty() => {
                            shard.apply_retention(entry.log_id.index, &batch.retain)?;
                            (0, None)
                        }
                        EntryPayload::Normal(batch) => {
                            let fresh = shard.apply_encoded(entry.log_id.index, &batch.points)?;
                            (if fresh { batch.points.len() } else { 0 }, None)
                        }
                        EntryPayload::Membership(m) => (0, Some(m)),
                        EntryPayload::Blank => (0, None),
                    };
                    Ok((entry.log_id, written, membership))
                })
                .collect::<Result<Vec<_>, chronicle_storage::StorageError>>()
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mut out = Vec::with_capacity(applied.len());
        for (log_id, written, membership) in applied {
            if let Some(m) = membership {
                self.membership = StoredMembership::new(Some(log_id), m);
            }
            self.last_applied = Some(log_id);
            out.push(Applied { written });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let snapshot_id = match self.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, self.snapshots_built
            ),
            None => format!("0-0-{}", self.snapshots_built),
        };
        ShardSnapshotBuilder {
            dir: self.dir.clone(),
            shard: self.shard.current(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            snapshot_id,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let path = self.dir.join("receiving.tar");
        let file = tokio::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, EmptyNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let file = snapshot.into_std().await;
        self.install(meta, file)
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        self.open_snapshot()
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))
    }
}

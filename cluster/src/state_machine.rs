//! The state machine of a group: a storage shard.
//!
//! Its files (live shard generations, snapshots, work in progress) are laid
//! out and switched by [`crate::snapshot::Layout`]. A snapshot is a RocksDB
//! checkpoint taken without cutting heads: it covers the log up to the
//! shard's durable frontier, so chunks are cut when they are full, never
//! because a snapshot was due.
//!
//! Applying does not write the batch to disk again: the shard keeps it in its
//! head until it cuts chunks, and the Raft log is the write-ahead log. After a
//! restart the state machine reports the last snapshot as applied and openraft
//! re-applies the committed entries after it; the shard skips the indexes it
//! already made durable, so nothing is applied twice.

use std::path::Path;
use std::sync::Arc;

use chronicle_storage::{Shard, ShardConfig};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EmptyNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};
use parking_lot::RwLock;

use crate::snapshot::{Built, Layout, Manifest, SnapshotFiles};
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

/// What a snapshot at an index must say: the log id at that index and the
/// membership in force there. Kept from the current snapshot on (two short
/// lists: they grow only when the leader or the membership changes).
#[derive(Debug, Clone, Default)]
struct History {
    /// The first log id of each leader's run of entries, ascending.
    leaders: Vec<LogId<u64>>,
    /// Memberships by the log id that set them, ascending.
    memberships: Vec<StoredMembership<u64, EmptyNode>>,
}

impl History {
    fn from_snapshot(meta: &SnapshotMeta<u64, EmptyNode>) -> Self {
        Self {
            leaders: meta.last_log_id.into_iter().collect(),
            memberships: vec![meta.last_membership.clone()],
        }
    }

    fn applied(&mut self, log_id: LogId<u64>) {
        if self.leaders.last().map(|l| l.leader_id) != Some(log_id.leader_id) {
            self.leaders.push(log_id);
        }
    }

    /// The log id at `index`, if `index` is at or after the first one known.
    fn log_id_at(&self, index: u64) -> Option<LogId<u64>> {
        let run = self.leaders.iter().rev().find(|l| l.index <= index)?;
        Some(LogId::new(run.leader_id, index))
    }

    fn membership_at(&self, index: u64) -> StoredMembership<u64, EmptyNode> {
        self.memberships
            .iter()
            .rev()
            .find(|m| m.log_id().is_none_or(|l| l.index <= index))
            .cloned()
            .unwrap_or_default()
    }

    /// Forgets what no snapshot at or after `index` needs.
    fn forget_before(&mut self, index: u64) {
        let keep_from = |ids: &[Option<u64>]| {
            ids.iter()
                .rposition(|i| i.is_none_or(|i| i <= index))
                .unwrap_or(0)
        };
        let leaders: Vec<Option<u64>> = self.leaders.iter().map(|l| Some(l.index)).collect();
        self.leaders.drain(..keep_from(&leaders));
        let memberships: Vec<Option<u64>> = self
            .memberships
            .iter()
            .map(|m| m.log_id().map(|l| l.index))
            .collect();
        self.memberships.drain(..keep_from(&memberships));
    }
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

fn to_snapshot(files: SnapshotFiles) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: files.manifest.meta.to_meta(),
        snapshot: Box::new(files),
    }
}

pub struct ShardStateMachine {
    layout: Arc<Layout>,
    config: ShardConfig,
    shard: ShardCell,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, EmptyNode>,
    history: History,
    /// Point batches applied, for the change feed (crate::feed).
    feed: tokio::sync::broadcast::Sender<Arc<crate::feed::Applied>>,
    /// Which shard this is (for the feed's events).
    shard_id: u32,
    /// The last point batch applied since the process started.
    last_points: Option<u64>,
}

impl ShardStateMachine {
    /// Opens (or creates) the group's state under `dir`.
    pub fn open(dir: impl AsRef<Path>, config: ShardConfig) -> Result<Self, ClusterError> {
        let layout = Arc::new(Layout::open(dir.as_ref())?);
        let shard = Shard::open(layout.shard_dir(layout.generation()), config.clone())?;
        let mut sm = Self {
            layout,
            config,
            shard: ShardCell(Arc::new(RwLock::new(Arc::new(shard)))),
            last_applied: None,
            membership: StoredMembership::default(),
            history: History::default(),
            feed: tokio::sync::broadcast::channel(crate::feed::LOCAL_CAPACITY).0,
            shard_id: 0,
            last_points: None,
        };
        if let Some(current) = sm.layout.current()? {
            let meta = current.manifest.meta.to_meta();
            sm.last_applied = meta.last_log_id;
            sm.membership = meta.last_membership.clone();
            sm.history = History::from_snapshot(&meta);
        }
        Ok(sm)
    }

    /// The channel the point batches this replica applies go to, naming
    /// them as shard `shard`'s.
    pub fn feed(
        &mut self,
        shard: u32,
    ) -> tokio::sync::broadcast::Sender<Arc<crate::feed::Applied>> {
        self.shard_id = shard;
        self.feed.clone()
    }

    /// The live shard, for readers.
    pub fn shard(&self) -> ShardCell {
        self.shard.clone()
    }

    /// The group's files, for the snapshot receiver.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.clone()
    }
}

/// Builds a snapshot of the shard as it is when the build starts.
pub struct ShardSnapshotBuilder {
    layout: Arc<Layout>,
    shard: Arc<Shard>,
    generation: u64,
    last_applied: Option<LogId<u64>>,
    history: History,
    /// The shard's id, for metrics.
    shard_id: u32,
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (layout, shard, generation) =
            (self.layout.clone(), self.shard.clone(), self.generation);
        let (applied, history) = (self.last_applied, self.history.clone());
        // Checkpointing and checksumming are file work: on the blocking pool,
        // so heartbeats on the async workers never wait behind a large shard.
        let (started, shard_id) = (std::time::Instant::now(), self.shard_id);
        let built = tokio::task::spawn_blocking(move || {
            let current = layout.current()?;
            let current_index = current
                .as_ref()
                .and_then(|c| c.manifest.meta.last_log_id)
                .map(|l| l.index);
            let applied_index = applied.map(|l| l.index);
            let built = layout.build(&shard, generation, applied_index, |covered| {
                // Before the first entry this member knows of: nothing
                // (the history starts at the current snapshot, if any).
                let last_log_id = covered.and_then(|i| history.log_id_at(i));
                let newer = match (last_log_id, current_index) {
                    (_, None) => true,
                    (Some(l), Some(c)) => l.index > c,
                    (None, Some(_)) => false,
                };
                newer.then(|| SnapshotMeta {
                    last_log_id,
                    last_membership: covered
                        .map(|i| history.membership_at(i))
                        .unwrap_or_default(),
                    snapshot_id: match last_log_id {
                        Some(l) => {
                            format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index)
                        }
                        None => "0-0-0".into(),
                    },
                })
            })?;
            match built {
                Built::Current(files) => {
                    crate::metrics::snapshot_done(
                        shard_id,
                        "built",
                        files.manifest.total_bytes(),
                        started.elapsed().as_secs_f64(),
                    );
                    Ok(files)
                }
                Built::Superseded => layout.current()?.ok_or_else(|| ClusterError::Corrupt {
                    what: "snapshot",
                    why: "a build was superseded but no snapshot is current".into(),
                }),
            }
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        .map_err(|e: ClusterError| snapshot_err(ErrorVerb::Write, e))?;
        Ok(to_snapshot(built))
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
        let shard_id = self.shard_id;
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let applied = tokio::task::spawn_blocking(move || {
            entries
                .into_iter()
                .map(|entry| {
                    let mut fed = None;
                    let _traced = match &entry.payload {
                        EntryPayload::Normal(batch) => {
                            crate::trace::applying(&batch.points, shard_id, entry.log_id.index)
                        }
                        _ => None,
                    };
                    let (written, membership, state) = match entry.payload {
                        EntryPayload::Normal(batch) if !batch.retain.is_empty() => {
                            shard.apply_retention(entry.log_id.index, &batch.retain)?;
                            (0, None, Vec::new())
                        }
                        EntryPayload::Normal(batch) if batch.downsample.is_some() => {
                            let d = batch.downsample.as_deref().expect("checked");
                            shard.apply_downsample(entry.log_id.index, d)?;
                            (0, None, Vec::new())
                        }
                        EntryPayload::Normal(batch) if batch.state.is_some() => {
                            let s = batch.state.as_deref().expect("checked");
                            let outcomes = shard.apply_state(entry.log_id.index, s)?;
                            (0, None, outcomes)
                        }
                        EntryPayload::Normal(batch) if batch.delete.is_some() => {
                            let d = batch.delete.as_deref().expect("checked");
                            let once = chronicle_storage::KeyedStamp {
                                nonce: d.id,
                                at: d.at,
                                window: crate::types::DELETE_ONCE_WINDOW,
                            };
                            shard.apply_delete(
                                entry.log_id.index,
                                &d.matchers,
                                d.start,
                                d.end,
                                Some(once),
                            )?;
                            (0, None, Vec::new())
                        }
                        EntryPayload::Normal(batch) if batch.keyed.is_some() => {
                            let k = batch.keyed.as_deref().expect("checked");
                            let part = chronicle_storage::KeyedPart {
                                key: &k.key,
                                part: k.part,
                                start: 0,
                                len: batch.points.len() as u32,
                            };
                            let stamp = chronicle_storage::KeyedStamp {
                                nonce: k.nonce,
                                at: k.at,
                                window: k.window,
                            };
                            let r = shard.apply_encoded_keyed(
                                entry.log_id.index,
                                &batch.points,
                                &[part],
                                stamp,
                            )?;
                            if r.written > 0 {
                                fed = Some(batch.points.clone());
                            }
                            // The writer's answer: every point of the part
                            // is stored, now or by the copy applied before
                            // under its key (the feed carries only new ones).
                            let acknowledged = if r.fresh { batch.points.len() } else { 0 };
                            (acknowledged, None, Vec::new())
                        }
                        EntryPayload::Normal(batch) => {
                            let fresh = shard.apply_encoded(entry.log_id.index, &batch.points)?;
                            if fresh && !batch.points.is_empty() {
                                fed = Some(batch.points.clone());
                            }
                            (if fresh { batch.points.len() } else { 0 }, None, Vec::new())
                        }
                        EntryPayload::Membership(m) => (0, Some(m), Vec::new()),
                        EntryPayload::Blank => (0, None, Vec::new()),
                    };
                    Ok((entry.log_id, written, membership, state, fed))
                })
                .collect::<Result<Vec<_>, chronicle_storage::StorageError>>()
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mut out = Vec::with_capacity(applied.len());
        for (log_id, written, membership, state, fed) in applied {
            if let Some(points) = fed {
                if self.feed.receiver_count() > 0 {
                    let _ = self.feed.send(Arc::new(crate::feed::Applied {
                        shard: self.shard_id,
                        index: log_id.index,
                        prev: self.last_points,
                        points,
                    }));
                }
                self.last_points = Some(log_id.index);
            }
            self.history.applied(log_id);
            if let Some(m) = membership {
                self.membership = StoredMembership::new(Some(log_id), m);
                self.history.memberships.push(self.membership.clone());
            }
            self.last_applied = Some(log_id);
            out.push(Applied { written, state });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        if let Ok(Some(current)) = self.layout.current() {
            if let Some(l) = current.manifest.meta.last_log_id {
                self.history.forget_before(l.index);
            }
        }
        ShardSnapshotBuilder {
            shard_id: self.shard_id,
            layout: self.layout.clone(),
            shard: self.shard.current(),
            generation: self.layout.generation(),
            last_applied: self.last_applied,
            history: self.history.clone(),
        }
    }

    /// Snapshots arrive through the bus transfer (network.rs), which hands
    /// over a finished directory; this empty one is only a placeholder.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFiles>, StorageError<u64>> {
        Ok(Box::new(SnapshotFiles {
            dir: self
                .layout
                .incoming_root()
                .join(self.layout.unique("empty")),
            manifest: Manifest {
                meta: WireSnapshotMeta::from_meta(&SnapshotMeta::default()),
                files: Vec::new(),
            },
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, EmptyNode>,
        snapshot: Box<SnapshotFiles>,
    ) -> Result<(), StorageError<u64>> {
        let (layout, config) = (self.layout.clone(), self.config.clone());
        let mut files = *snapshot;
        files.manifest.meta = WireSnapshotMeta::from_meta(meta);
        let (started, bytes) = (std::time::Instant::now(), files.manifest.total_bytes());
        let (shard, _generation) =
            tokio::task::spawn_blocking(move || layout.install(files, config))
                .await
                .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
                .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        self.shard.replace(Arc::new(shard));
        crate::metrics::snapshot_done(
            self.shard_id,
            "installed",
            bytes,
            started.elapsed().as_secs_f64(),
        );
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.history = History::from_snapshot(meta);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let layout = self.layout.clone();
        let current = tokio::task::spawn_blocking(move || layout.current())
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(current.map(to_snapshot))
    }
}

//! The Raft log and vote of one group, in RocksDB.
//!
//! Column family `log`: index (u64 big-endian) → entry (rkyv envelope).
//! Column family `meta`: `vote`, `committed`, `purged` (rkyv envelopes).
//! Every write is synced before openraft is told it is done: the log is the
//! shard's write-ahead log.
//!
//! Writes go through one writer thread per group, in order: appends return at
//! once and openraft hears they are flushed when the thread has synced them
//! (writes queued meanwhile share one fsync: group commit), so neither the
//! fsync nor RocksDB blocks the async workers that run heartbeats. Entries
//! appended recently are kept in memory, as openraft gave them: replication and
//! apply read them without decoding, and before they reach the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chronicle_bus::envelope::Encodable;
use parking_lot::Mutex;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageError, Vote};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use crate::types::TypeConfig;
use crate::wire::{decode_entry, encode_entry, WireLogId, WireVote};
use crate::ClusterError;

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// Points in the recent entries kept in memory once they are on disk (a
/// contiguous suffix of the log; ten full entries). Entries not
/// yet written stay regardless.
const CACHED_POINTS: usize = 20_000;

/// Writes the writer thread makes in one go (the last one synced).
const GROUP_COMMIT: usize = 64;

/// A group's log store; clones share the database, the writer and the cache
/// (openraft's log readers).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    writer: Arc<Writer>,
    /// Appended entries by index: those not yet on disk, and the newest written.
    recent: Arc<Mutex<Recent>>,
    /// Every entry up to this index is on disk (0: none known).
    written: Arc<AtomicU64>,
    /// Bytes appended since open, starting from an estimate of what the log
    /// held then (the snapshot trigger counts from it).
    appended: Arc<AtomicU64>,
    /// The committed index openraft last saved or read (for metrics).
    committed: Arc<AtomicU64>,
}

/// Reads a log's size and committed index from outside openraft (metrics).
#[derive(Clone)]
pub struct LogProbe {
    db: Arc<DB>,
    committed: Arc<AtomicU64>,
}

impl LogProbe {
    /// Bytes the log holds in RocksDB: SST files and memtables.
    pub fn bytes(&self) -> u64 {
        let Some(cf) = self.db.cf_handle(CF_LOG) else {
            return 0;
        };
        [
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
        ]
        .iter()
        .filter_map(|p| self.db.property_int_value_cf(cf, *p).ok().flatten())
        .sum()
    }

    /// The last index openraft saved as committed (0 before the first).
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

/// Entries in memory, and how many points they hold.
#[derive(Default)]
struct Recent {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    points: usize,
}

fn points_of(e: &Entry<TypeConfig>) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(batch) => batch.points.len(),
        _ => 0,
    }
}

impl Recent {
    fn insert(&mut self, e: Entry<TypeConfig>) {
        self.points += points_of(&e);
        if let Some(old) = self.entries.insert(e.log_id.index, e) {
            self.points -= points_of(&old);
        }
    }

    /// Keeps entries before `index` (drops it and everything after).
    fn truncate(&mut self, index: u64) {
        for e in self.entries.split_off(&index).values() {
            self.points -= points_of(e);
        }
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        for e in std::mem::replace(&mut self.entries, kept).values() {
            self.points -= points_of(e);
        }
    }

    /// Forgets the oldest entries that are on disk while over the budget.
    fn trim(&mut self, written: u64) {
        while self.points > CACHED_POINTS {
            match self.entries.first_key_value() {
                Some((&i, _)) if i <= written => {
                    if let Some((_, e)) = self.entries.pop_first() {
                        self.points -= points_of(&e);
                    }
                }
                _ => break,
            }
        }
    }
}

/// The writer thread's queue and handle. Dropping the last one closes the
/// queue and joins the thread, so the database (whose last handle the thread
/// holds) is closed when the store is: a RocksDB still closing when the
/// process exits aborts it ("pthread lock: Invalid argument").
struct Writer {
    queue: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            // A thread cannot join itself (a flush callback could drop a store).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// The failpoint on every Raft log write (`failpoints` feature).
pub const RAFT_LOG_WRITE: &str = "raft::log::write";

/// Who hears that a queued write is durable.
enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Reply(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Nobody waits, and the write needs no sync of its own: it is durable
    /// with the next synced write behind it (the committed index).
    Nobody,
}

struct Job {
    batch: WriteBatch,
    /// The last log index this write puts on disk, if it appends.
    upto: Option<u64>,
    done: Done,
}

/// The writer thread: takes queued writes in order, writes them, syncs the
/// last of each group, then tells everyone waiting.
fn write_loop(
    db: Arc<DB>,
    sync: bool,
    jobs: std::sync::mpsc::Receiver<Job>,
    written: Arc<AtomicU64>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Sync the group's last write if any write in it asks to be durable;
        // a synced write makes every earlier write in the WAL durable too.
        let last = group.len() - 1;
        let durable = group.iter().any(|j| !matches!(j.done, Done::Nobody));
        let started = std::time::Instant::now();
        // A chaos run's disk fault: the group fails as a full or broken disk
        // would fail it, and nobody hears it is durable.
        let mut result = match chronicle_storage::faults::check(RAFT_LOG_WRITE) {
            Ok(()) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        for (i, job) in group.iter_mut().enumerate() {
            if result.is_err() {
                break;
            }
            let mut options = WriteOptions::default();
            options.set_sync(sync && durable && i == last);
            if let Err(e) = db.write_opt(std::mem::take(&mut job.batch), &options) {
                result = Err(e.to_string());
                break;
            }
        }
        if started.elapsed() > std::time::Duration::from_millis(50) {
            tracing::debug!(writes = group.len(), took = ?started.elapsed(), "slow raft log write");
        }
        if result.is_ok() {
            if let Some(upto) = group.iter().filter_map(|j| j.upto).max() {
                written.fetch_max(upto, Ordering::Release);
            }
        }
        for job in group {
            match job.done {
                Done::Flushed(callback) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                Done::Reply(reply) => {
                    let _ = reply.send(result.clone());
                }
                Done::Nobody => {
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, "raft log: saving the committed index failed");
                    }
                }
            }
        }
    }
}

/// The entries with indexes in `[start, end)` on disk, in order.
fn read_entries(db: &DB, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, std::io::Error> {
    let cf = db
        .cf_handle(CF_LOG)
        .expect("column families are created at open");
    let from = start.to_be_bytes();
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
        let (key, value) = item.map_err(std::io::Error::other)?;
        let index = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| std::io::Error::other("log key is not a u64"))?,
        );
        if index >= end {
            break;
        }
        out.push(decode_entry(&value).map_err(std::io::Error::other)?);
    }
    Ok(out)
}

fn io_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<u64> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// The log column family's options.
fn log_cf_options() -> Options {
    let mut log_opts = Options::default();
    log_opts.set_write_buffer_size(8 << 20);
    log_opts
}

/// How long an open waits for an earlier instance in this process to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the log's database, waiting (up to [`LOCK_WAIT`]) while an earlier
/// instance in this process still holds its lock: a group restarted by its
/// supervisor, or a node started again in the same process, can open the
/// log while the old instance's last handle (in a task being cancelled, or
/// its writer thread finishing) is being dropped. Any other error, or a lock
/// held by another process, is returned at once.
fn open_waiting_for_lock(opts: &Options, path: &Path) -> Result<DB, rocksdb::Error> {
    let started = std::time::Instant::now();
    loop {
        let cfs = [
            ColumnFamilyDescriptor::new(CF_LOG, log_cf_options()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        match DB::open_cf_descriptors(opts, path, cfs) {
            Err(e)
                if e.to_string().contains("lock hold by current process")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log; every write is synced.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClusterError> {
        Self::open_with(path, true)
    }

    /// `sync: false` leaves writes in the OS cache (`--no-sync`: faster, and
    /// the last entries may be lost on power loss, so a replica may forget
    /// entries it acknowledged).
    pub fn open_with(path: impl AsRef<Path>, sync: bool) -> Result<Self, ClusterError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The log is a queue: written once, read soon, purged from the front.
        // Small memtables reach SST files (which a purge can drop whole)
        // sooner, and bound the RocksDB WAL the log keeps beside them.
        opts.set_max_total_wal_size(32 << 20);
        let db = Arc::new(open_waiting_for_lock(&opts, path.as_ref())?);
        let (tx, rx) = std::sync::mpsc::channel();
        let written = Arc::new(AtomicU64::new(0));
        let (thread_db, thread_written) = (db.clone(), written.clone());
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(thread_db, sync, rx, thread_written))
            .map_err(|e| ClusterError::Config(format!("log writer thread: {e}")))?;
        let held = {
            let cf = db
                .cf_handle(CF_LOG)
                .expect("column families are created at open");
            [
                "rocksdb.estimate-live-data-size",
                "rocksdb.cur-size-all-mem-tables",
            ]
            .iter()
            .filter_map(|p| db.property_int_value_cf(cf, *p).ok().flatten())
            .sum::<u64>()
        };
        Ok(Self {
            db,
            writer: Arc::new(Writer {
                queue: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            }),
            recent: Arc::default(),
            written,
            appended: Arc::new(AtomicU64::new(held)),
            committed: Arc::default(),
        })
    }

    /// A handle that reads the log's size and committed index.
    pub fn probe(&self) -> LogProbe {
        LogProbe {
            db: self.db.clone(),
            committed: self.committed.clone(),
        }
    }

    /// The running count of bytes appended (see the field).
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    fn queue(&self, job: Job) -> Result<(), std::io::Error> {
        match self.writer.queue.lock().as_ref() {
            Some(queue) => queue
                .send(job)
                .map_err(|_| std::io::Error::other("the log writer thread has stopped")),
            None => Err(std::io::Error::other("the log writer thread has stopped")),
        }
    }

    /// Queues `batch` behind every earlier write and waits until it is durable.
    async fn write_and_wait(&self, batch: WriteBatch) -> Result<(), std::io::Error> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.queue(Job {
            batch,
            upto: None,
            done: Done::Reply(reply),
        })?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the log writer thread has stopped")),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn meta<T>(&self, key: &[u8]) -> Result<Option<T>, ClusterError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            > + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        match self.db.get_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(bytes) => chronicle_bus::envelope::decode::<T>(&bytes)
                .map(Some)
                .map_err(|e| ClusterError::Corrupt {
                    what: "raft meta",
                    why: e.to_string(),
                }),
        }
    }

    /// Rewrites a saved vote that is `node`'s own committed leadership as a
    /// plain vote for itself in the same term, so the member starts as a
    /// follower and must win an election. openraft 0.9 otherwise resumes such
    /// a member as leader of that term without asking anyone, and after a
    /// power cut or a failed log fsync its log can lack entries it already
    /// sent: as leader it would give those indexes to new entries under the
    /// same log ids and the replicas would diverge. The term and whom it voted
    /// for stay, so it cannot vote twice in that term.
    pub(crate) async fn demote_own_leadership(&self, node: u64) -> Result<bool, ClusterError> {
        match self.meta::<WireVote>(KEY_VOTE)? {
            Some(vote) if vote.committed && vote.node == node => {
                let plain = WireVote {
                    committed: false,
                    ..vote
                };
                self.put_meta(KEY_VOTE, &plain)
                    .await
                    .map_err(|e| ClusterError::Raft(format!("saving the demoted vote: {e}")))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put_meta<T: Encodable>(&self, key: &[u8], value: &T) -> Result<(), std::io::Error> {
        self.write_and_wait(self.meta_batch(key, Some(value))?)
            .await
    }

    /// A write of `value` under `key` in the meta column family, or of its
    /// removal.
    fn meta_batch<T: Encodable>(
        &self,
        key: &[u8],
        value: Option<&T>,
    ) -> Result<WriteBatch, std::io::Error> {
        let mut batch = WriteBatch::default();
        match value {
            Some(value) => {
                let bytes =
                    chronicle_bus::envelope::encode(value).map_err(std::io::Error::other)?;
                batch.put_cf(self.cf(CF_META), key, &bytes);
            }
            None => batch.delete_cf(self.cf(CF_META), key),
        }
        Ok(batch)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, ClusterError> {
        if let Some((_, e)) = self.recent.lock().entries.last_key_value() {
            return Ok(Some(e.log_id));
        }
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item?;
                Ok(Some(decode_entry(&value)?.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // The newest entries come from memory; older ones from disk.
        let cached: Vec<Entry<TypeConfig>> = {
            let recent = self.recent.lock();
            recent
                .entries
                .range(start..)
                .take_while(|(i, _)| range.contains(*i))
                .map(|(_, e)| e.clone())
                .collect()
        };
        let disk_end = cached.first().map_or(u64::MAX, |e| e.log_id.index);
        let mut out = Vec::new();
        if start < disk_end {
            // Reading and decoding older batches (megabytes of points when a new
            // leader catches a follower up) is blocking work: on the async
            // workers it stalled every group's heartbeats and elections for
            // hundreds of milliseconds, so it runs on the blocking pool.
            let db = self.db.clone();
            let end = match range.end_bound() {
                Bound::Included(&i) => i.saturating_add(1),
                Bound::Excluded(&i) => i,
                Bound::Unbounded => u64::MAX,
            }
            .min(disk_end);
            out = tokio::task::spawn_blocking(move || read_entries(&db, start, end))
                .await
                .map_err(read_err)?
                .map_err(read_err)?;
        }
        out.extend(cached);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id = self
            .meta::<WireLogId>(KEY_PURGED)
            .map_err(read_err)?
            .map(LogId::from);
        let last_log_id = self
            .last_entry_id()
            .map_err(read_err)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.put_meta(KEY_VOTE, &WireVote::from(vote))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self
            .meta::<WireVote>(KEY_VOTE)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?
            .map(Vote::from))
    }

    /// Queued behind the log's writes but neither synced nor awaited: openraft
    /// holds its core until this returns, and a synced write here cost every
    /// commit a disk round trip in which no entry could be appended. The
    /// committed index is optional state to openraft: a replica that reads
    /// back an older one after a power cut re-applies from there and learns
    /// the rest from its leader's next commit, and reads wait for a read index
    /// either way. Every synced write behind it makes it durable too.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        let batch = self
            .meta_batch(
                KEY_COMMITTED,
                committed.map(|id| WireLogId::from(&id)).as_ref(),
            )
            .map_err(write_err)?;
        self.queue(Job {
            batch,
            upto: None,
            done: Done::Nobody,
        })
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let committed = self
            .meta::<WireLogId>(KEY_COMMITTED)
            .map_err(read_err)?
            .map(LogId::from);
        self.committed
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut upto = None;
        let mut appended = Vec::new();
        let mut bytes_total = 0u64;
        for e in entries {
            let bytes = encode_entry(&e).map_err(write_err)?;
            bytes_total += bytes.len() as u64;
            batch.put_cf(self.cf(CF_LOG), e.log_id.index.to_be_bytes(), bytes);
            upto = Some(e.log_id.index);
            appended.push(e);
        }
        self.appended.fetch_add(bytes_total, Ordering::Relaxed);
        {
            let mut recent = self.recent.lock();
            for e in appended {
                recent.insert(e);
            }
            recent.trim(self.written.load(Ordering::Acquire));
        }
        // Returns now; openraft hears of the flush from the writer thread.
        self.queue(Job {
            batch,
            upto,
            done: Done::Flushed(callback),
        })
        .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // Remove `log_id.index` and everything after it (conflicting entries).
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            log_id.index.to_be_bytes(),
            u64::MAX.to_be_bytes(),
        );
        batch.delete_cf(self.cf(CF_LOG), u64::MAX.to_be_bytes());
        self.recent.lock().truncate(log_id.index);
        self.write_and_wait(batch).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // Record the purge point first (in the same write): the log state must
        // never claim entries that are gone.
        let mut batch = WriteBatch::default();
        let marker =
            chronicle_bus::envelope::encode(&WireLogId::from(&log_id)).map_err(write_err)?;
        batch.put_cf(self.cf(CF_META), KEY_PURGED, &marker);
        batch.delete_range_cf(
            self.cf(CF_LOG),
            0u64.to_be_bytes(),
            log_id.index.saturating_add(1).to_be_bytes(),
        );
        self.recent.lock().purge(log_id.index);
        self.write_and_wait(batch).await.map_err(write_err)?;
        // A range delete frees no space until a compaction reaches it; files
        // wholly inside the purged range are dropped now (after the delete
        // is durable, so a crash cannot bring their entries back).
        let db = self.db.clone();
        // RocksDB's range here includes its end: the last purged index.
        let end = log_id.index.to_be_bytes();
        tokio::task::spawn_blocking(move || {
            let cf = db
                .cf_handle(CF_LOG)
                .expect("column families are created at open");
            if let Err(e) = db.delete_file_in_range_cf(cf, 0u64.to_be_bytes(), end) {
                tracing::debug!(error = %e, "purged log files not dropped; compaction will");
            }
        })
        .await
        .map_err(write_err)
    }
}

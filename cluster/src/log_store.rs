//! The Raft log and vote of one group, in RocksDB.
//!
//! Column family `log`: index (u64 big-endian) → entry (rkyv envelope).
//! Column family `meta`: `vote`, `committed`, `purged` (rkyv envelopes).
//! Every write is synced before openraft is told it is done: the log is the
//! shard's write-ahead log.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

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

/// A group's log store; clones share the database (openraft's log readers).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    sync: bool,
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
        let cfs = [CF_LOG, CF_META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self {
            db: Arc::new(db),
            sync,
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn synced(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo)
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

    fn put_meta<T>(&self, key: &[u8], value: &T) -> Result<(), ClusterError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        let bytes = chronicle_bus::envelope::encode(value).map_err(|e| ClusterError::Corrupt {
            what: "raft meta",
            why: e.to_string(),
        })?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), key, &bytes);
        Ok(self.synced(batch)?)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<u64>>, ClusterError> {
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
        let mut out = Vec::new();
        let from = start.to_be_bytes();
        let it = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in it {
            let (key, value) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::io::Error::other("log key is not a u64")))?,
            );
            if !range.contains(&index) {
                break;
            }
            out.push(decode_entry(&value).map_err(read_err)?);
        }
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
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self
            .meta::<WireVote>(KEY_VOTE)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))?
            .map(Vote::from))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        match committed {
            Some(id) => self
                .put_meta(KEY_COMMITTED, &WireLogId::from(&id))
                .map_err(write_err),
            None => {
                let mut batch = WriteBatch::default();
                batch.delete_cf(self.cf(CF_META), KEY_COMMITTED);
                self.synced(batch).map_err(write_err)
            }
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self
            .meta::<WireLogId>(KEY_COMMITTED)
            .map_err(read_err)?
            .map(LogId::from))
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
        for e in entries {
            let bytes = encode_entry(&e).map_err(write_err)?;
            batch.put_cf(self.cf(CF_LOG), e.log_id.index.to_be_bytes(), bytes);
        }
        let result = self.synced(batch);
        let io = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        result.map_err(write_err)
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
        self.synced(batch).map_err(write_err)
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
        self.synced(batch).map_err(write_err)
    }
}

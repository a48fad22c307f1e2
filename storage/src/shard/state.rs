//! The key-value state in a shard's `state` column family (docs/state.md).
//!
//! Keys: `v` ns 0 key -> revision(8) created(8) expires(8) value (the
//! current value; expires 0: no TTL);
//! `c` ns 0 revision(8) op(2) -> kind(1) at(8) key length(4) key value (the
//! change history watchers read); `k` ns -> the newest revision pruned from
//! the history; `a` -> the last log index whose state changes are written;
//! `x` expiry(8) ns 0 key -> revision(8): keys with a TTL, soonest first.
//!
//! State changes reach RocksDB when they are applied, with the `a` marker in
//! the same write, not with the durable frontier as chunks do: a replay after
//! a restart skips what the marker covers, so a compare-and-set is never
//! decided a second time against a later state.

use std::collections::HashMap;

use rocksdb::{ReadOptions, WriteBatch};
use tracing::{info_span, warn};

use super::Shard;
use crate::keys::{u64_from, CF_STATE};
use crate::state::{
    revision_of, ChangeKind, StateBatch, StateChange, StateChanges, StateEntry, StateOp,
    TxnOutcome, MAX_READ_BYTES,
};
use crate::{Result, StorageError};

const APPLIED: &[u8] = b"a";
/// Changes pruned per entry at most (the rest go with later entries).
const PRUNE_PER_ENTRY: usize = 4096;
/// History records a change read looks at per call at most.
const SCAN_PER_READ: usize = 100_000;

fn ns_prefix(tag: u8, ns: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 2);
    k.push(tag);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k
}

fn value_key(ns: &str, key: &str) -> Vec<u8> {
    let mut k = ns_prefix(b'v', ns);
    k.extend_from_slice(key.as_bytes());
    k
}

fn change_key(ns: &str, revision: u64, op: u16) -> Vec<u8> {
    let mut k = ns_prefix(b'c', ns);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(&op.to_be_bytes());
    k
}

fn expiry_key(expires: i64, ns: &str, key: &str) -> Vec<u8> {
    let mut k = vec![b'x'];
    k.extend_from_slice(&crate::keys::time_bytes(expires));
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn compacted_key(ns: &str) -> Vec<u8> {
    let mut k = vec![b'k'];
    k.extend_from_slice(ns.as_bytes());
    k
}

fn corrupt(what: &'static str) -> StorageError {
    StorageError::CorruptRecord {
        what,
        reason: "too short".into(),
    }
}

#[derive(Clone)]
struct Record {
    revision: u64,
    created: u64,
    /// ns since the epoch; 0: never.
    expires: i64,
    value: Vec<u8>,
}

impl Record {
    fn decode(b: &[u8]) -> Result<Self> {
        let revision = b
            .get(..8)
            .and_then(u64_from)
            .ok_or(corrupt("state value"))?;
        let created = b
            .get(8..16)
            .and_then(u64_from)
            .ok_or(corrupt("state value"))?;
        let expires = b
            .get(16..24)
            .and_then(u64_from)
            .ok_or(corrupt("state value"))? as i64;
        Ok(Self {
            revision,
            created,
            expires,
            value: b[24..].to_vec(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.value.len());
        v.extend_from_slice(&self.revision.to_be_bytes());
        v.extend_from_slice(&self.created.to_be_bytes());
        v.extend_from_slice(&(self.expires as u64).to_be_bytes());
        v.extend_from_slice(&self.value);
        v
    }
}

fn encode_change(kind: ChangeKind, at: i64, key: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(13 + key.len() + value.len());
    v.push(match kind {
        ChangeKind::Put => 1,
        ChangeKind::Delete => 2,
    });
    v.extend_from_slice(&at.to_be_bytes());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_change(revision: u64, v: &[u8]) -> Result<StateChange> {
    let kind = match v.first() {
        Some(1) => ChangeKind::Put,
        Some(2) => ChangeKind::Delete,
        _ => return Err(corrupt("state change")),
    };
    let at = v
        .get(1..9)
        .and_then(u64_from)
        .ok_or(corrupt("state change"))? as i64;
    let len = v
        .get(9..13)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(corrupt("state change"))?;
    let key = v.get(13..13 + len).ok_or(corrupt("state change"))?;
    Ok(StateChange {
        revision,
        kind,
        key: String::from_utf8_lossy(key).into_owned(),
        value: v[13 + len..].to_vec(),
        at,
    })
}

/// What any state entry must be for its keys and revisions to be well formed.
fn structural(batch: &StateBatch) -> Result<()> {
    crate::state::validate_namespace(&batch.namespace)?;
    if batch.txns.len() > crate::state::MAX_TXNS_PER_ENTRY {
        return Err(StorageError::InvalidRequest(format!(
            "{} transactions in one entry",
            batch.txns.len()
        )));
    }
    Ok(())
}

impl Shard {
    /// Applies the state transactions of the log entry at `index`: each all
    /// or nothing, in order, the `n`-th at revision `index << 16 | n`.
    /// Returns what each did (nothing for an entry applied before).
    pub fn apply_state(&self, index: u64, batch: &StateBatch) -> Result<Vec<TxnOutcome>> {
        let _span = info_span!("apply_state", index, txns = batch.txns.len()).entered();
        let _writer = self.writer.lock();
        let mut st = self.state.write();
        if index <= st.last_seq {
            return Ok(Vec::new());
        }
        let mut wb = WriteBatch::default();
        let outcomes = if index <= self.state_applied()? {
            // Written before a restart that replays from the durable index.
            Vec::new()
        } else if let Err(e) = structural(batch) {
            // Size limits were checked when proposed and may change between
            // versions: applying checks only what the key layout and the
            // revision numbering need, the same on every replica.
            warn!(index, error = %e, "state entry skipped");
            let why = TxnOutcome::Failed {
                key: String::new(),
                revision: 0,
            };
            wb.put_cf(self.cf(CF_STATE), APPLIED, index.to_be_bytes());
            vec![why; batch.txns.len()]
        } else {
            let outcomes = self.write_state(index, batch, &mut wb)?;
            self.prune_history(batch, &mut wb)?;
            wb.put_cf(self.cf(CF_STATE), APPLIED, index.to_be_bytes());
            outcomes
        };
        st.last_seq = index;
        self.advance_durable(&mut st, &mut wb);
        self.write_unsynced(wb)?;
        Ok(outcomes)
    }

    fn state_applied(&self) -> Result<u64> {
        Ok(self
            .db
            .get_cf(self.cf(CF_STATE), APPLIED)?
            .as_deref()
            .and_then(u64_from)
            .unwrap_or(0))
    }

    fn write_state(
        &self,
        index: u64,
        batch: &StateBatch,
        wb: &mut WriteBatch,
    ) -> Result<Vec<TxnOutcome>> {
        let cf = self.cf(CF_STATE);
        let ns = batch.namespace.as_str();
        // This entry's changes so far, over what RocksDB holds.
        let mut written: HashMap<Vec<u8>, Option<Record>> = HashMap::new();
        let stored =
            |written: &HashMap<Vec<u8>, Option<Record>>, key: &[u8]| -> Result<Option<Record>> {
                match written.get(key) {
                    Some(r) => Ok(r.clone()),
                    None => self
                        .db
                        .get_pinned_cf(cf, key)?
                        .map(|v| Record::decode(&v))
                        .transpose(),
                }
            };
        // A key whose TTL ran out by the entry's stamp is absent to checks
        // and to a new put (decided by the stamp: the same on every replica).
        let at = batch.at;
        let live = |r: &Record| r.expires == 0 || r.expires > at;
        let current = |written: &HashMap<Vec<u8>, Option<Record>>,
                       key: &[u8]|
         -> Result<Option<Record>> { Ok(stored(written, key)?.filter(live)) };
        let mut outcomes = Vec::with_capacity(batch.txns.len());
        for (position, txn) in batch.txns.iter().enumerate() {
            let revision = revision_of(index, position);
            let mut failed = None;
            for check in &txn.checks {
                let at = current(&written, &value_key(ns, &check.key))?.map_or(0, |r| r.revision);
                if at != check.revision {
                    failed = Some(TxnOutcome::Failed {
                        key: check.key.clone(),
                        revision: at,
                    });
                    break;
                }
            }
            if let Some(failed) = failed {
                outcomes.push(failed);
                continue;
            }
            for (op_no, op) in txn.ops.iter().enumerate() {
                let key = value_key(ns, op.key());
                // As stored (an expired key still has its expiry entry and is
                // deleted for real), and as live.
                let before = stored(&written, &key)?;
                let live_before = before.clone().filter(live);
                let change = change_key(ns, revision, op_no as u16);
                if let Some(old) = before.as_ref().filter(|r| r.expires != 0) {
                    wb.delete_cf(cf, expiry_key(old.expires, ns, op.key()));
                }
                match op {
                    StateOp::Put {
                        key: name,
                        value,
                        ttl_ms,
                    } => {
                        let expires = match *ttl_ms {
                            0 => 0,
                            ms => batch
                                .at
                                .saturating_add((ms as i64).saturating_mul(1_000_000)),
                        };
                        if expires != 0 {
                            wb.put_cf(cf, expiry_key(expires, ns, name), revision.to_be_bytes());
                        }
                        let record = Record {
                            revision,
                            created: live_before.map_or(revision, |r| r.created),
                            expires,
                            value: value.clone(),
                        };
                        wb.put_cf(
                            cf,
                            change,
                            encode_change(ChangeKind::Put, batch.at, name, value),
                        );
                        written.insert(key, Some(record));
                    }
                    StateOp::Delete { key: name } => {
                        if before.is_some() {
                            wb.put_cf(
                                cf,
                                change,
                                encode_change(ChangeKind::Delete, batch.at, name, &[]),
                            );
                            written.insert(key, None);
                        }
                    }
                }
            }
            outcomes.push(TxnOutcome::Committed { revision });
        }
        for (key, record) in written {
            match record {
                Some(r) => wb.put_cf(cf, key, r.encode()),
                None => wb.delete_cf(cf, key),
            }
        }
        Ok(outcomes)
    }

    /// Drops the namespace's changes older than the history window (as of
    /// the entry's stamp, so every replica drops the same ones).
    fn prune_history(&self, batch: &StateBatch, wb: &mut WriteBatch) -> Result<()> {
        let cf = self.cf(CF_STATE);
        let cutoff = batch.at.saturating_sub(batch.history);
        let prefix = ns_prefix(b'c', &batch.namespace);
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek(&prefix);
        let mut last: Option<(Vec<u8>, u64)> = None;
        let mut n = 0;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(&prefix) || n >= PRUNE_PER_ENTRY {
                break;
            }
            let at = value.get(1..9).and_then(u64_from).map(|a| a as i64);
            if at.is_none_or(|at| at >= cutoff) {
                break;
            }
            let revision = key
                .get(prefix.len()..prefix.len() + 8)
                .and_then(u64_from)
                .ok_or(corrupt("state change key"))?;
            last = Some((key.to_vec(), revision));
            n += 1;
            it.next();
        }
        it.status()?;
        if let Some((mut end, revision)) = last {
            end.push(0);
            wb.delete_range_cf(cf, &prefix, &end);
            wb.put_cf(cf, compacted_key(&batch.namespace), revision.to_be_bytes());
        }
        Ok(())
    }

    /// The current value of `key` in namespace `ns`.
    pub fn state_get(&self, ns: &str, key: &str) -> Result<Option<StateEntry>> {
        crate::faults::check(crate::faults::READ).map_err(|source| StorageError::Io {
            path: self.path.clone(),
            source,
        })?;
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_STATE), value_key(ns, key))?
        else {
            return Ok(None);
        };
        let r = Record::decode(&v)?;
        Ok(Some(StateEntry {
            key: key.to_string(),
            value: r.value,
            revision: r.revision,
            created: r.created,
            expires: r.expires,
        }))
    }

    /// Up to `limit` entries whose keys start with `prefix`, in key order,
    /// after the key `after` when given; and whether more follow.
    /// A revision covering every state change applied so far: a scan begun
    /// after reading it reflects at least those, and a watch from it misses
    /// nothing that came after.
    pub fn state_revision(&self) -> u64 {
        revision_of(self.state.read().last_seq, 0xFFFF)
    }

    pub fn state_scan(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StateEntry>, bool)> {
        let start = ns_prefix(b'v', ns).len();
        let bound = value_key(ns, prefix);
        let mut it = self.db.raw_iterator_cf(self.cf(CF_STATE));
        match after {
            Some(a) => {
                let mut from = value_key(ns, a);
                from.push(0);
                it.seek(from.max(bound.clone()));
            }
            None => it.seek(&bound),
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(&bound) {
                break;
            }
            let size = key.len() + value.len() + 64;
            if out.len() == limit || (!out.is_empty() && bytes + size > MAX_READ_BYTES) {
                return Ok((out, true));
            }
            bytes += size;
            let r = Record::decode(value)?;
            out.push(StateEntry {
                key: String::from_utf8_lossy(&key[start..]).into_owned(),
                value: r.value,
                revision: r.revision,
                created: r.created,
                expires: r.expires,
            });
            it.next();
        }
        it.status()?;
        Ok((out, false))
    }

    /// Up to `limit` current entries of every namespace, in (namespace, key)
    /// order, after `after` when given; and whether more follow. For exports
    /// (backups) that do not know the namespaces in advance.
    pub fn state_scan_all(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<(Vec<(String, StateEntry)>, bool)> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_STATE));
        match after {
            Some((ns, key)) => {
                let mut from = value_key(ns, key);
                from.push(0);
                it.seek(from);
            }
            None => it.seek(b"v"),
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key.first() != Some(&b'v') {
                break;
            }
            let size = key.len() + value.len() + 64;
            if out.len() == limit || (!out.is_empty() && bytes + size > MAX_READ_BYTES) {
                return Ok((out, true));
            }
            bytes += size;
            let split = key[1..]
                .iter()
                .position(|&b| b == 0)
                .ok_or(corrupt("state key"))?;
            let ns = String::from_utf8_lossy(&key[1..1 + split]).into_owned();
            let r = Record::decode(value)?;
            out.push((
                ns,
                StateEntry {
                    key: String::from_utf8_lossy(&key[2 + split..]).into_owned(),
                    value: r.value,
                    revision: r.revision,
                    created: r.created,
                    expires: r.expires,
                },
            ));
            it.next();
        }
        it.status()?;
        Ok((out, false))
    }

    /// Up to `limit` keys (namespace, key, revision) whose TTL ran out at
    /// `now` (ns), soonest first: what the leader deletes, each only if still
    /// at that revision.
    pub fn state_expired(&self, now: i64, limit: usize) -> Result<Vec<(String, String, u64)>> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_STATE));
        it.seek(b"x");
        let mut out = Vec::new();
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key.first() != Some(&b'x') || out.len() >= limit {
                break;
            }
            let at = key
                .get(1..9)
                .map(crate::keys::time_from_bytes)
                .ok_or(corrupt("state expiry key"))?;
            if at > now {
                break;
            }
            let rest = &key[9..];
            let split = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(corrupt("state expiry key"))?;
            let revision = u64_from(value).ok_or(corrupt("state expiry"))?;
            out.push((
                String::from_utf8_lossy(&rest[..split]).into_owned(),
                String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
                revision,
            ));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Up to `limit` changes after revision `after` to keys starting with
    /// `prefix`, in revision order. Fails with [`StorageError::Compacted`]
    /// when some of them were already pruned from the history.
    pub fn state_changes(
        &self,
        ns: &str,
        prefix: &str,
        after: u64,
        limit: usize,
    ) -> Result<StateChanges> {
        let cf = self.cf(CF_STATE);
        // Read before the scan: a change applied meanwhile has a later revision.
        let applied = revision_of(self.state.read().last_seq, 0xFFFF);
        // The pruning mark and the history from one snapshot: a prune in
        // between would otherwise skip changes without a word.
        let snapshot = self.db.snapshot();
        let compacted = snapshot
            .get_cf(cf, compacted_key(ns))?
            .as_deref()
            .and_then(u64_from)
            .unwrap_or(0);
        if after < compacted {
            return Err(StorageError::Compacted {
                requested: after,
                compacted,
            });
        }
        let base = ns_prefix(b'c', ns);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(base.clone());
        ro.set_snapshot(&snapshot);
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        it.seek(change_key(ns, after.saturating_add(1), 0));
        let mut out = StateChanges {
            revision: applied.max(after),
            ..Default::default()
        };
        // A transaction's changes share a revision and a reader resumes after
        // it: they are gathered, then taken whole or left for the next page.
        let mut group: Vec<StateChange> = Vec::new();
        let (mut group_rev, mut group_bytes) = (None, 0usize);
        let (mut scanned, mut bytes) = (0usize, 0usize);
        let mut taken: Option<u64> = None;
        loop {
            let next = match (it.key(), it.value()) {
                (Some(key), Some(value)) if key.starts_with(&base) => {
                    let revision = key
                        .get(base.len()..base.len() + 8)
                        .and_then(u64_from)
                        .ok_or(corrupt("state change key"))?;
                    Some((revision, value))
                }
                _ => None,
            };
            if group_rev.is_some() && next.map(|(r, _)| r) != group_rev {
                let full = out.changes.len() + group.len() > limit
                    || bytes + group_bytes > MAX_READ_BYTES
                    || scanned > SCAN_PER_READ;
                if full && taken.is_some() {
                    out.more = true;
                    break;
                }
                bytes += group_bytes;
                out.changes.append(&mut group);
                taken = group_rev;
                group_bytes = 0;
            }
            let Some((revision, value)) = next else { break };
            scanned += 1;
            let change = decode_change(revision, value)?;
            if change.key.starts_with(prefix) {
                group_bytes += change.key.len() + change.value.len() + 64;
                group.push(change);
            }
            group_rev = Some(revision);
            it.next();
        }
        it.status()?;
        if let Some(taken) = taken {
            out.revision = if out.more {
                taken
            } else {
                out.revision.max(taken)
            };
        }
        Ok(out)
    }
}

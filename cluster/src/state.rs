//! Replicated key-value state for features (docs/state.md, ADR 0005): each
//! namespace lives in one shard group, chosen by its name's hash, and its
//! writes are entries in that group's log beside the points. So the state
//! has the points' write path (one voter or many), snapshots and catch-up,
//! its revisions are the group's log order (a namespace's history is one
//! ordered sequence, watchable without gaps), and reads go through the
//! leader after a read index.

use std::sync::Arc;
use std::time::Duration;

use chronicle_storage::state::{
    ChangeKind, StateBatch, StateChange, StateChanges, StateCheck, StateEntry, StateOp, StateTxn,
    TxnOutcome,
};
use chronicle_storage::StorageError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::node::{ClusterNode, WireClusterReply, WireClusterRequest};
use crate::types::WriteBatch;
use crate::ClusterError;

pub use chronicle_storage::state::{MAX_CHANGES_LIMIT, MAX_SCAN_LIMIT, MAX_WATCH_WAIT};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireStateOp {
    /// Key, value, TTL in ms (0: none).
    Put(String, Vec<u8>, u64),
    Delete(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireTxn {
    pub checks: Vec<(String, u64)>,
    pub ops: Vec<WireStateOp>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireStateBatch {
    pub namespace: String,
    pub at: i64,
    pub history: i64,
    pub txns: Vec<WireTxn>,
}

impl From<&StateBatch> for WireStateBatch {
    fn from(b: &StateBatch) -> Self {
        Self {
            namespace: b.namespace.clone(),
            at: b.at,
            history: b.history,
            txns: b
                .txns
                .iter()
                .map(|t| WireTxn {
                    checks: t
                        .checks
                        .iter()
                        .map(|c| (c.key.clone(), c.revision))
                        .collect(),
                    ops: t
                        .ops
                        .iter()
                        .map(|o| match o {
                            StateOp::Put { key, value, ttl_ms } => {
                                WireStateOp::Put(key.clone(), value.clone(), *ttl_ms)
                            }
                            StateOp::Delete { key } => WireStateOp::Delete(key.clone()),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<WireStateBatch> for StateBatch {
    fn from(w: WireStateBatch) -> Self {
        Self {
            namespace: w.namespace,
            at: w.at,
            history: w.history,
            txns: w
                .txns
                .into_iter()
                .map(|t| StateTxn {
                    checks: t
                        .checks
                        .into_iter()
                        .map(|(key, revision)| StateCheck { key, revision })
                        .collect(),
                    ops: t
                        .ops
                        .into_iter()
                        .map(|o| match o {
                            WireStateOp::Put(key, value, ttl_ms) => {
                                StateOp::Put { key, value, ttl_ms }
                            }
                            WireStateOp::Delete(key) => StateOp::Delete { key },
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireOutcome {
    Committed(u64),
    Failed(String, u64),
}

impl From<&TxnOutcome> for WireOutcome {
    fn from(o: &TxnOutcome) -> Self {
        match o {
            TxnOutcome::Committed { revision } => WireOutcome::Committed(*revision),
            TxnOutcome::Failed { key, revision } => WireOutcome::Failed(key.clone(), *revision),
        }
    }
}

impl From<WireOutcome> for TxnOutcome {
    fn from(w: WireOutcome) -> Self {
        match w {
            WireOutcome::Committed(revision) => TxnOutcome::Committed { revision },
            WireOutcome::Failed(key, revision) => TxnOutcome::Failed { key, revision },
        }
    }
}

/// A state read, for the namespace's leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireStateRead {
    Get {
        namespace: String,
        key: String,
    },
    Scan {
        namespace: String,
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
    /// Changes after a revision; waits up to `wait_ms` for one when there
    /// is none yet.
    Changes {
        namespace: String,
        prefix: String,
        after: u64,
        limit: u32,
        wait_ms: u64,
    },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireStateEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
    pub created: u64,
    pub expires: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireStateChange {
    pub revision: u64,
    pub delete: bool,
    pub key: String,
    pub value: Vec<u8>,
    pub at: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireStateAnswer {
    Entry(Option<WireStateEntry>),
    /// The entries, whether more follow, and a revision the page reflects
    /// at least (a watch from it misses nothing).
    Entries(Vec<WireStateEntry>, bool, u64),
    Changes {
        changes: Vec<WireStateChange>,
        more: bool,
        revision: u64,
    },
    /// Changes after `requested` were pruned up to `compacted`.
    Compacted {
        requested: u64,
        compacted: u64,
    },
}

/// The shard group of `shards` holding namespace `ns` (xxh3 of the name;
/// on disk, so it must not change between versions).
pub fn shard_of_namespace(ns: &str, shards: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(ns.as_bytes()) % u64::from(shards.max(1))) as u32
}

fn wire_entry(e: StateEntry) -> WireStateEntry {
    WireStateEntry {
        key: e.key,
        value: e.value,
        revision: e.revision,
        created: e.created,
        expires: e.expires,
    }
}

fn entry(w: WireStateEntry) -> StateEntry {
    StateEntry {
        key: w.key,
        value: w.value,
        revision: w.revision,
        created: w.created,
        expires: w.expires,
    }
}

impl WireStateRead {
    fn validate(&self) -> Result<(), ClusterError> {
        use chronicle_storage::state::{validate_key, validate_namespace};
        match self {
            WireStateRead::Get { namespace, key } => {
                validate_namespace(namespace)?;
                validate_key(key)?;
            }
            WireStateRead::Scan {
                namespace,
                prefix,
                after,
                limit,
            } => {
                validate_namespace(namespace)?;
                bounded_prefix(prefix)?;
                if let Some(a) = after {
                    validate_key(a)?;
                }
                if *limit == 0 || *limit as usize > MAX_SCAN_LIMIT {
                    return Err(invalid(format!(
                        "a scan limit is 1 to {MAX_SCAN_LIMIT}, not {limit}"
                    )));
                }
            }
            WireStateRead::Changes {
                namespace,
                prefix,
                limit,
                wait_ms,
                ..
            } => {
                validate_namespace(namespace)?;
                bounded_prefix(prefix)?;
                if *limit == 0 || *limit as usize > MAX_CHANGES_LIMIT {
                    return Err(invalid(format!(
                        "a change limit is 1 to {MAX_CHANGES_LIMIT}, not {limit}"
                    )));
                }
                if *wait_ms > MAX_WATCH_WAIT.as_millis() as u64 {
                    return Err(invalid(format!(
                        "a watch waits at most {MAX_WATCH_WAIT:?}, not {wait_ms} ms"
                    )));
                }
            }
        }
        Ok(())
    }

    fn namespace(&self) -> &str {
        match self {
            WireStateRead::Get { namespace, .. }
            | WireStateRead::Scan { namespace, .. }
            | WireStateRead::Changes { namespace, .. } => namespace,
        }
    }

    fn wait(&self) -> Duration {
        match self {
            WireStateRead::Changes { wait_ms, .. } => Duration::from_millis(*wait_ms),
            _ => Duration::ZERO,
        }
    }
}

fn bounded_prefix(prefix: &str) -> Result<(), ClusterError> {
    if prefix.len() > chronicle_storage::state::MAX_STATE_KEY_BYTES {
        return Err(invalid("a prefix longer than the longest key"));
    }
    Ok(())
}

fn invalid(why: impl Into<String>) -> ClusterError {
    ClusterError::Storage(StorageError::InvalidRequest(why.into()))
}

/// Answers `read` from the local replica, which the caller made sure is the
/// leader's and has applied everything committed when the read began. A
/// change read with nothing to return waits (up to its `wait`) for the
/// replica to apply more.
pub(crate) async fn answer_read(
    raft: &openraft::Raft<crate::types::TypeConfig>,
    shard: &crate::state_machine::ShardCell,
    read: WireStateRead,
) -> Result<WireStateAnswer, ClusterError> {
    read.validate()?;
    let deadline = tokio::time::Instant::now() + read.wait();
    let mut read = read;
    loop {
        let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let current = shard.current();
        let read2 = read.clone();
        let answer = tokio::task::spawn_blocking(move || read_local(&current, read2))
            .await
            .map_err(|e| ClusterError::Raft(format!("state read panicked: {e}")))??;
        let resume = match &answer {
            WireStateAnswer::Changes {
                changes,
                more: false,
                revision,
            } if changes.is_empty() => Some(*revision),
            _ => None,
        };
        let Some(resume) = resume else {
            return Ok(answer);
        };
        if tokio::time::Instant::now() >= deadline {
            return Ok(answer);
        }
        // Nothing up to `resume`: look only at what is applied after it.
        if let WireStateRead::Changes { after, .. } = &mut read {
            *after = (*after).max(resume);
        }
        let mut metrics = raft.metrics();
        // `wait_for` returns a borrow of the metrics (a read lock): it must
        // be gone before the metrics are borrowed again. Held, a second
        // read waits behind openraft's next metrics write, which waits for
        // the first read: a deadlock (seen as `bench kv` and a state test
        // hanging with no CPU; a thread dump showed both locks).
        let closed = matches!(
            tokio::time::timeout_at(
                deadline,
                metrics.wait_for(|m| m.last_applied.map_or(0, |l| l.index) > applied),
            )
            .await,
            Ok(Err(_))
        );
        if closed || raft.metrics().borrow().running_state.is_err() {
            return Ok(answer);
        }
    }
}

fn read_local(
    shard: &chronicle_storage::Shard,
    read: WireStateRead,
) -> Result<WireStateAnswer, ClusterError> {
    Ok(match read {
        WireStateRead::Get { namespace, key } => {
            // A key whose TTL ran out stays until the leader's delete
            // applies: judging expiry by this node's own clock would let
            // nodes with skewed clocks disagree on whether it exists.
            let found = shard.state_get(&namespace, &key)?;
            WireStateAnswer::Entry(found.map(wire_entry))
        }
        WireStateRead::Scan {
            namespace,
            prefix,
            after,
            limit,
        } => {
            // Read first: the scan reflects at least this revision.
            let revision = shard.state_revision();
            let (entries, more) =
                shard.state_scan(&namespace, &prefix, after.as_deref(), limit as usize)?;
            WireStateAnswer::Entries(
                entries.into_iter().map(wire_entry).collect(),
                more,
                revision,
            )
        }
        WireStateRead::Changes {
            namespace,
            prefix,
            after,
            limit,
            ..
        } => match shard.state_changes(&namespace, &prefix, after, limit as usize) {
            Ok(c) => WireStateAnswer::Changes {
                changes: c
                    .changes
                    .into_iter()
                    .map(|c| WireStateChange {
                        revision: c.revision,
                        delete: c.kind == ChangeKind::Delete,
                        key: c.key,
                        value: c.value,
                        at: c.at,
                    })
                    .collect(),
                more: c.more,
                revision: c.revision,
            },
            Err(StorageError::Compacted {
                requested,
                compacted,
            }) => WireStateAnswer::Compacted {
                requested,
                compacted,
            },
            Err(e) => return Err(e.into()),
        },
    })
}

impl ClusterNode {
    /// The shard group holding namespace `ns`.
    pub fn state_shard(&self, ns: &str) -> u32 {
        shard_of_namespace(ns, self.config.shards)
    }

    /// A handle on namespace `ns` of the replicated state.
    pub fn state(self: &Arc<Self>, ns: impl Into<String>) -> Result<StateStore, ClusterError> {
        let ns = ns.into();
        chronicle_storage::state::validate_namespace(&ns)?;
        Ok(StateStore {
            node: self.clone(),
            ns,
        })
    }

    /// Applies `txns` to namespace `ns`, each all or nothing, in one log
    /// entry; returns what each did once the entry is committed and applied.
    pub async fn state_write(
        &self,
        ns: &str,
        txns: Vec<StateTxn>,
    ) -> Result<Vec<TxnOutcome>, ClusterError> {
        let history = i64::try_from(self.config.state_history.as_nanos()).unwrap_or(i64::MAX);
        let mut batch = StateBatch {
            namespace: ns.to_string(),
            at: 0,
            history,
            txns,
        };
        batch.validate()?;
        let shard = self.state_shard(ns);
        let expected = batch.txns.len();
        if let Some(group) = self.group(shard) {
            group.gate.pass().await;
            if group.raft.metrics().borrow().current_leader == Some(self.config.node_id) {
                batch.at = crate::node::now_ns();
                let write = group.raft.client_write(WriteBatch::state(batch.clone()));
                match tokio::time::timeout(self.config.request_timeout, write).await {
                    Ok(Ok(r)) if r.data.state.len() == expected => return Ok(r.data.state),
                    Ok(Ok(_)) => {
                        return Err(ClusterError::Raft(
                            "state entry applied without outcomes".into(),
                        ))
                    }
                    Ok(Err(e)) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => {}
                    Ok(Err(e)) => return Err(ClusterError::Raft(e.to_string())),
                    Err(_) => {
                        return Err(ClusterError::Unavailable(format!(
                            "shard {shard}: not committed within {:?}; this node leads it but cannot reach a majority",
                            self.config.request_timeout
                        )))
                    }
                }
            }
        }
        let request = WireClusterRequest::StateWrite(Box::new(WireStateBatch::from(&batch)));
        // One attempt may take the whole request: an attempt cut short while
        // the leader still commits it would be proposed a second time.
        let reply = self
            .ask_leader(
                shard,
                &request,
                self.config.request_timeout,
                self.config.request_timeout,
            )
            .await?;
        match reply {
            WireClusterReply::StateWritten(outcomes) if outcomes.len() == expected => {
                Ok(outcomes.into_iter().map(TxnOutcome::from).collect())
            }
            other => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Answers `read` linearizably from the namespace's leader.
    async fn state_read(&self, read: WireStateRead) -> Result<WireStateAnswer, ClusterError> {
        read.validate()?;
        let shard = self.state_shard(read.namespace());
        if let Some(group) = self.group(shard) {
            if self.config.unsafe_stale_reads {
                return compacted_as_error(answer_read(&group.raft, &group.shard, read).await?);
            }
            if group.raft.metrics().borrow().current_leader == Some(self.config.node_id) {
                match crate::node::read_index(&group.raft, Some(shard)).await? {
                    crate::node::ReadIndex::Ready => {
                        return compacted_as_error(
                            answer_read(&group.raft, &group.shard, read).await?,
                        )
                    }
                    crate::node::ReadIndex::NotLeader => {}
                }
            }
        }
        let wait = read.wait();
        let request = WireClusterRequest::StateRead(Box::new(read));
        let reply = self
            .ask_leader(
                shard,
                &request,
                crate::node::ATTEMPT_TIMEOUT + wait,
                self.config.read_timeout + wait,
            )
            .await?;
        match reply {
            WireClusterReply::StateAnswer(answer) => compacted_as_error(*answer),
            other => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
        }
    }
}

fn compacted_as_error(answer: WireStateAnswer) -> Result<WireStateAnswer, ClusterError> {
    match answer {
        WireStateAnswer::Compacted {
            requested,
            compacted,
        } => Err(ClusterError::Storage(StorageError::Compacted {
            requested,
            compacted,
        })),
        answer => Ok(answer),
    }
}

/// One page of a scan.
#[derive(Debug, Clone)]
pub struct ScanPage {
    pub entries: Vec<StateEntry>,
    /// More entries follow the last one.
    pub more: bool,
    /// A revision the page reflects at least.
    pub revision: u64,
}

/// One namespace of the replicated state: what a feature keeps its data in.
/// Every call goes through the namespace's leader (writes committed by a
/// majority, reads after a read index), from any node.
#[derive(Clone)]
pub struct StateStore {
    node: Arc<ClusterNode>,
    ns: String,
}

impl StateStore {
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The key's current value, revision and creation revision.
    pub async fn get(&self, key: &str) -> Result<Option<StateEntry>, ClusterError> {
        let read = WireStateRead::Get {
            namespace: self.ns.clone(),
            key: key.to_string(),
        };
        match self.node.state_read(read).await? {
            WireStateAnswer::Entry(e) => Ok(e.map(entry)),
            other => Err(ClusterError::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sets `key` to expire `ttl` after this write (a lease of one key:
    /// writing the key again renews it, or ends it without a TTL).
    pub async fn put_with_ttl(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<u64, ClusterError> {
        self.one(StateTxn::put_with_ttl(key, value, ttl)).await
    }

    /// Sets `key`; returns the new revision.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<u64, ClusterError> {
        self.one(StateTxn::put(key, value)).await
    }

    /// Sets `key` only if it is at `revision` (0: only if absent). Returns
    /// `Ok(Ok(new revision))`, or `Ok(Err(current revision))` when it was not.
    pub async fn compare_and_set(
        &self,
        key: &str,
        revision: u64,
        value: impl Into<Vec<u8>>,
    ) -> Result<Result<u64, u64>, ClusterError> {
        self.conditional(StateTxn::put(key, value).when(key, revision))
            .await
    }

    /// Removes `key`; returns the revision of the removal (made even when
    /// the key did not exist, then changing nothing).
    pub async fn delete(&self, key: &str) -> Result<u64, ClusterError> {
        self.one(StateTxn::delete(key)).await
    }

    /// Removes `key` only if it is at `revision`.
    pub async fn compare_and_delete(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<Result<u64, u64>, ClusterError> {
        self.conditional(StateTxn::delete(key).when(key, revision))
            .await
    }

    /// Applies each transaction all or nothing, in order, in one entry.
    pub async fn transact(&self, txns: Vec<StateTxn>) -> Result<Vec<TxnOutcome>, ClusterError> {
        self.node.state_write(&self.ns, txns).await
    }

    async fn one(&self, txn: StateTxn) -> Result<u64, ClusterError> {
        match self.conditional(txn).await? {
            Ok(revision) => Ok(revision),
            Err(_) => Err(ClusterError::Raft("an unconditional change failed".into())),
        }
    }

    async fn conditional(&self, txn: StateTxn) -> Result<Result<u64, u64>, ClusterError> {
        let outcome = self.transact(vec![txn]).await?.pop();
        match outcome {
            Some(TxnOutcome::Committed { revision }) => Ok(Ok(revision)),
            Some(TxnOutcome::Failed { revision, .. }) => Ok(Err(revision)),
            None => Err(ClusterError::Raft("no outcome".into())),
        }
    }

    /// Up to `limit` (at most [`MAX_SCAN_LIMIT`]) entries under `prefix` in
    /// key order, after the key `after` (the last of the previous page);
    /// and whether more follow.
    pub async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StateEntry>, bool), ClusterError> {
        let page = self.scan_page(prefix, after, limit).await?;
        Ok((page.entries, page.more))
    }

    /// As [`Self::scan`], with the revision the page reflects: load a
    /// prefix page by page, then watch from the first page's revision to
    /// follow it without missing a change (changes the pages already
    /// reflect come again; applying them in order converges).
    pub async fn scan_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, ClusterError> {
        let read = WireStateRead::Scan {
            namespace: self.ns.clone(),
            prefix: prefix.to_string(),
            after: after.map(str::to_string),
            limit: limit.min(u32::MAX as usize) as u32,
        };
        match self.node.state_read(read).await? {
            WireStateAnswer::Entries(entries, more, revision) => Ok(ScanPage {
                entries: entries.into_iter().map(entry).collect(),
                more,
                revision,
            }),
            other => Err(ClusterError::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// The changes under `prefix` after revision `after`, waiting up to
    /// `wait` (at most [`MAX_WATCH_WAIT`]) for one if there is none yet.
    /// `revision` in the answer is where the next call resumes when nothing
    /// (more) was returned. Fails with `StorageError::Compacted` when changes
    /// after `after` left the history.
    pub async fn changes(
        &self,
        prefix: &str,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<StateChanges, ClusterError> {
        let read = WireStateRead::Changes {
            namespace: self.ns.clone(),
            prefix: prefix.to_string(),
            after,
            limit: limit.min(u32::MAX as usize) as u32,
            wait_ms: wait.as_millis().min(u64::MAX as u128) as u64,
        };
        match self.node.state_read(read).await? {
            WireStateAnswer::Changes {
                changes,
                more,
                revision,
            } => Ok(StateChanges {
                changes: changes
                    .into_iter()
                    .map(|c| StateChange {
                        revision: c.revision,
                        kind: if c.delete {
                            ChangeKind::Delete
                        } else {
                            ChangeKind::Put
                        },
                        key: c.key,
                        value: c.value,
                        at: c.at,
                    })
                    .collect(),
                more,
                revision,
            }),
            other => Err(ClusterError::Raft(format!("unexpected answer {other:?}"))),
        }
    }

    /// Every change under `prefix` after revision `after`, in revision order,
    /// each once, into a channel of `capacity` (a slow consumer holds the
    /// watch back, it loses nothing). Survives leader changes and lost
    /// replies by asking again from the last revision delivered. Ends with
    /// an error when the history no longer reaches back to `after`, or when
    /// the receiver is dropped.
    pub fn watch(
        &self,
        prefix: &str,
        after: u64,
        capacity: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<StateChange, ClusterError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let (store, prefix) = (self.clone(), prefix.to_string());
        tokio::spawn(async move {
            let mut after = after;
            loop {
                let wait = Duration::from_secs(10);
                let poll = tokio::select! {
                    polled = store.changes(&prefix, after, 1_000, wait) => polled,
                    _ = tx.closed() => return,
                };
                match poll {
                    Ok(c) => {
                        for change in c.changes {
                            after = change.revision;
                            if tx.send(Ok(change)).await.is_err() {
                                return;
                            }
                        }
                        after = after.max(c.revision);
                    }
                    Err(
                        e @ ClusterError::Storage(
                            StorageError::Compacted { .. } | StorageError::InvalidRequest(_),
                        ),
                    ) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        if tx.is_closed() {
                            return;
                        }
                        tracing::debug!(error = %e, "state watch poll failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        rx
    }
}

/// While this node leads `shard`'s group, deletes the keys whose TTL ran out
/// (checked every second; each delete only if the key is still at the
/// revision that set the TTL, so a key written again is kept).
pub(crate) fn expire_leases(
    node: std::sync::Weak<ClusterNode>,
    shard: u32,
    raft: openraft::Raft<crate::types::TypeConfig>,
    cell: crate::state_machine::ShardCell,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = raft.metrics().borrow().id;
        loop {
            let Some(period) = node.upgrade().map(|n| n.config.lease_check) else {
                return;
            };
            tokio::time::sleep(period).await;
            if raft.metrics().borrow().current_leader != Some(me) {
                continue;
            }
            let Some(node) = node.upgrade() else { return };
            let current = cell.current();
            let now = crate::node::now_ns();
            let expired =
                tokio::task::spawn_blocking(move || current.state_expired(now, 1_000)).await;
            let expired = match expired {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => {
                    tracing::warn!(shard, error = %e, "listing expired state keys failed");
                    continue;
                }
                Err(_) => continue,
            };
            let mut by_namespace: std::collections::BTreeMap<String, Vec<StateTxn>> =
                Default::default();
            // An expired key counts as absent: "only if absent" deletes it
            // unless it was written again since (then it is live).
            for (ns, key, _) in expired {
                by_namespace
                    .entry(ns)
                    .or_default()
                    .push(StateTxn::delete(key.clone()).when(key, 0));
            }
            for (ns, txns) in by_namespace {
                // Small batches: each is well under an entry's limit.
                for batch in txns.chunks(64) {
                    if let Err(e) = node.state_write(&ns, batch.to_vec()).await {
                        tracing::warn!(shard, namespace = %ns, error = %e, "expiring state keys failed; retrying in a second");
                    }
                }
            }
        }
    })
}

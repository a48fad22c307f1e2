//! Sessions in the replicated state (namespace `collab`).
//!
//! * `session/<id>`: the session's description (JSON [`SessionInfo`]).
//! * `doc/<id>/snapshot`: the document as one v1 update, compacted.
//! * `doc/<id>/log/<ns>-<node>-<n>`: updates since, one key each (or a
//!   batch merged into one). Keys are unique per node, so nodes hosting the
//!   same session append without coordinating; updates commute, so their
//!   order does not matter.
//! * `claim/<id>/<client>`: which principal owns a Yjs client id in the
//!   session and which node may store its blocks now (JSON `{node,
//!   principal}`). A log entry is appended only while the node still holds
//!   the claims of every client whose blocks it carries, and a node that
//!   takes a claim over reads the log before it takes a block of that
//!   client: so each (client, clock) is stored with one content, even when
//!   a participant sends two nodes different blocks under the same ids.
//!
//! A session is its snapshot plus its log. Compaction folds the log into a
//! new snapshot and deletes the folded keys in one transaction, checked
//! against the snapshot's revision so two nodes compacting at once cannot
//! both win (keys appended meanwhile are not deleted: they stay in the log).

use std::sync::atomic::{AtomicU64, Ordering};

use chronicle_cluster::state::StateStore;
use chronicle_cluster::ClusterError;
use chronicle_storage::state::{StateTxn, TxnOutcome};
use serde::{Deserialize, Serialize};

use crate::doc::SessionDoc;

/// Roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }

    pub fn can_edit(self) -> bool {
        self >= Role::Editor
    }
}

/// What a session is and who may do what in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub name: String,
    /// The principal (token name) that created it.
    pub owner: String,
    pub created_ms: i64,
    /// Members and their roles (the owner is one); others who join get the
    /// session's default role.
    pub members: std::collections::BTreeMap<String, Role>,
    /// The role of a principal who joins without being a member.
    pub default_role: Role,
}

impl SessionInfo {
    pub fn role_of(&self, principal: &str) -> Role {
        self.members
            .get(principal)
            .copied()
            .unwrap_or(self.default_role)
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state: {0}")]
    State(#[from] ClusterError),
    #[error("stored {what} of session {id} is corrupt: {why}")]
    Corrupt {
        what: &'static str,
        id: String,
        why: String,
    },
    #[error("the session changed meanwhile; try again")]
    Conflict,
}

/// Log keys read per page when loading.
const PAGE: usize = 256;

/// A session id: 16 hex digits, made by the server.
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

pub struct Store {
    state: StateStore,
    node: u64,
    next: AtomicU64,
    /// State calls run on the cluster's runtime (as every state client's do).
    runtime: tokio::runtime::Handle,
}

fn log_prefix(id: &str) -> String {
    format!("doc/{id}/log/")
}

fn snapshot_key(id: &str) -> String {
    format!("doc/{id}/snapshot")
}

fn info_key(id: &str) -> String {
    format!("session/{id}")
}

fn claim_key(id: &str, client: u64) -> String {
    format!("claim/{id}/{client:020}")
}

/// Who may add blocks under a Yjs client id in a session: one principal
/// (`None`: a node's own edits for JSON participants), through one node at
/// a time. Stored under `claim/<id>/<client>` for the session's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ClaimRecord {
    node: u64,
    principal: Option<String>,
}

/// What [`Store::claim`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// This node holds the client id at `revision`. `load_first`: another
    /// node held it before, and what it stored must be read before a block
    /// of this client is taken here.
    Held { revision: u64, load_first: bool },
    /// The client id is another principal's (`None`: a node's own).
    Foreign(Option<String>),
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A loaded document and what it was loaded from.
pub struct Loaded {
    pub doc: SessionDoc,
    /// Log keys folded into `doc`, and the bytes they hold.
    pub log_keys: Vec<String>,
    pub log_bytes: usize,
    /// The snapshot's revision (0: none yet).
    pub snapshot_revision: u64,
}

impl Store {
    pub fn new(state: StateStore, node: u64, runtime: tokio::runtime::Handle) -> Self {
        Self {
            state,
            node,
            next: AtomicU64::new(0),
            runtime,
        }
    }

    /// Runs a state call on the cluster's runtime.
    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(
            StateStore,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ClusterError>> + Send>,
        >,
    ) -> Result<T, StoreError> {
        let fut = call(self.state.clone());
        match self.runtime.spawn(fut).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(StoreError::State(ClusterError::Unavailable(format!(
                "state task failed: {e}"
            )))),
        }
    }

    pub async fn create(&self, info: &SessionInfo) -> Result<(), StoreError> {
        let value = serde_json::to_vec(info).expect("session info serializes");
        let key = info_key(&info.id);
        match self
            .run(move |s| Box::pin(async move { s.compare_and_set(&key, 0, value).await }))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::Conflict),
        }
    }

    pub async fn info(&self, id: &str) -> Result<Option<(SessionInfo, u64)>, StoreError> {
        let key = info_key(id);
        let Some(e) = self
            .run(move |s| Box::pin(async move { s.get(&key).await }))
            .await?
        else {
            return Ok(None);
        };
        let info = serde_json::from_slice(&e.value).map_err(|e| StoreError::Corrupt {
            what: "description",
            id: id.to_string(),
            why: e.to_string(),
        })?;
        Ok(Some((info, e.revision)))
    }

    /// Replaces the description if it is still at `revision`.
    pub async fn update_info(&self, info: &SessionInfo, revision: u64) -> Result<(), StoreError> {
        let value = serde_json::to_vec(info).expect("session info serializes");
        let key = info_key(&info.id);
        match self
            .run(move |s| Box::pin(async move { s.compare_and_set(&key, revision, value).await }))
            .await?
        {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::Conflict),
        }
    }

    /// Every session's description, up to `limit`.
    pub async fn list(&self, limit: usize) -> Result<Vec<SessionInfo>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (from, n) = (after.clone(), PAGE.min(limit - out.len()));
            let (entries, more) = self
                .run(move |s| Box::pin(async move { s.scan("session/", from.as_deref(), n).await }))
                .await?;
            for e in &entries {
                if let Ok(info) = serde_json::from_slice::<SessionInfo>(&e.value) {
                    out.push(info);
                }
            }
            match (more, entries.last()) {
                (true, Some(last)) if out.len() < limit => after = Some(last.key.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Appends an update to the session's log; durable (committed by a
    /// majority of the shard's replicas) when this returns.
    pub async fn append(&self, id: &str, update: Vec<u8>) -> Result<String, StoreError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}{:020}-{}-{n}", log_prefix(id), now_ns(), self.node);
        let k = key.clone();
        self.run(move |s| Box::pin(async move { s.put(&k, update).await }))
            .await?;
        Ok(key)
    }

    /// Appends an update carrying blocks of `claims`' client ids, only if
    /// this node still holds each at the revision given: a node that lost
    /// a client id to another (the participant reconnected there) cannot
    /// store a block the new holder did not see. [`StoreError::Conflict`]
    /// when one moved.
    pub async fn append_claimed(
        &self,
        id: &str,
        update: Vec<u8>,
        claims: &[(u64, u64)],
    ) -> Result<String, StoreError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}{:020}-{}-{n}", log_prefix(id), now_ns(), self.node);
        let mut txn = StateTxn::put(key.clone(), update);
        for &(client, revision) in claims {
            txn = txn.when(claim_key(id, client), revision);
        }
        match self
            .run(move |s| Box::pin(async move { s.transact(vec![txn]).await }))
            .await?
            .pop()
        {
            Some(TxnOutcome::Committed { .. }) => Ok(key),
            _ => Err(StoreError::Conflict),
        }
    }

    /// Takes Yjs client id `client` of session `id` for `principal` on this
    /// node: the first to use a client id owns it for the session's life;
    /// the same principal moves it between nodes (a reconnect elsewhere).
    pub async fn claim(
        &self,
        id: &str,
        client: u64,
        principal: Option<&str>,
    ) -> Result<Claimed, StoreError> {
        let key = claim_key(id, client);
        let mine = ClaimRecord {
            node: self.node,
            principal: principal.map(str::to_string),
        };
        let value = serde_json::to_vec(&mine).expect("a claim serializes");
        // Compare-and-set races with other nodes claiming at once; a few
        // rounds settle it (each round reads what won).
        for _ in 0..8 {
            let k = key.clone();
            let current = self
                .run(move |s| Box::pin(async move { s.get(&k).await }))
                .await?;
            let (revision, load_first) = match current {
                None => (0, false),
                Some(e) => {
                    let held: ClaimRecord =
                        serde_json::from_slice(&e.value).map_err(|err| StoreError::Corrupt {
                            what: "client claim",
                            id: id.to_string(),
                            why: err.to_string(),
                        })?;
                    if held.principal != mine.principal {
                        return Ok(Claimed::Foreign(held.principal));
                    }
                    if held.node == self.node {
                        return Ok(Claimed::Held {
                            revision: e.revision,
                            load_first: false,
                        });
                    }
                    (e.revision, true)
                }
            };
            let (k, v) = (key.clone(), value.clone());
            let outcome = self
                .run(move |s| Box::pin(async move { s.compare_and_set(&k, revision, v).await }))
                .await?;
            if let Ok(revision) = outcome {
                return Ok(Claimed::Held {
                    revision,
                    load_first,
                });
            }
        }
        Err(StoreError::Conflict)
    }

    /// The snapshot and every log entry, applied to a fresh document.
    pub async fn load(&self, id: &str) -> Result<Loaded, StoreError> {
        let corrupt = |what, why: String| StoreError::Corrupt {
            what,
            id: id.to_string(),
            why,
        };
        let key = snapshot_key(id);
        let (doc, snapshot_revision) = match self
            .run(move |s| Box::pin(async move { s.get(&key).await }))
            .await?
        {
            Some(e) => (
                SessionDoc::from_state(&e.value).map_err(|e| corrupt("snapshot", e.to_string()))?,
                e.revision,
            ),
            None => (SessionDoc::new(), 0),
        };
        let mut loaded = Loaded {
            doc,
            log_keys: Vec::new(),
            log_bytes: 0,
            snapshot_revision,
        };
        let prefix = log_prefix(id);
        let mut after: Option<String> = None;
        loop {
            let (p, from) = (prefix.clone(), after.clone());
            let (entries, more) = self
                .run(move |s| Box::pin(async move { s.scan(&p, from.as_deref(), PAGE).await }))
                .await?;
            for e in &entries {
                loaded
                    .doc
                    .apply(&e.value)
                    .map_err(|err| corrupt("log entry", format!("{}: {err}", e.key)))?;
                loaded.log_bytes += e.value.len();
                loaded.log_keys.push(e.key.clone());
            }
            match (more, entries.last()) {
                (true, Some(last)) => after = Some(last.key.clone()),
                _ => return Ok(loaded),
            }
        }
    }

    /// Folds the log into a new snapshot: `state` (the document with at
    /// least the entries of `log_keys` applied) replaces the snapshot at
    /// `snapshot_revision` and those keys go, all at once. Returns the new
    /// snapshot's revision.
    pub async fn compact(
        &self,
        id: &str,
        state: Vec<u8>,
        snapshot_revision: u64,
        log_keys: &[String],
    ) -> Result<u64, StoreError> {
        // One entry holds at most so much: fold a long log in rounds.
        let keys = &log_keys[..log_keys.len().min(4096)];
        let mut txn =
            StateTxn::put(snapshot_key(id), state).when(snapshot_key(id), snapshot_revision);
        for k in keys {
            txn.ops
                .push(chronicle_storage::state::StateOp::Delete { key: k.clone() });
        }
        match self
            .run(move |s| Box::pin(async move { s.transact(vec![txn]).await }))
            .await?
            .pop()
        {
            Some(TxnOutcome::Committed { revision }) => Ok(revision),
            _ => Err(StoreError::Conflict),
        }
    }

    /// Removes a session: its description, snapshot, log and client claims.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        for prefix in [format!("doc/{id}/"), format!("claim/{id}/")] {
            self.delete_prefix(&prefix).await?;
        }
        let key = info_key(id);
        self.run(move |s| Box::pin(async move { s.delete(&key).await }))
            .await?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let prefix = prefix.to_string();
        loop {
            let p = prefix.clone();
            let (entries, more) = self
                .run(move |s| Box::pin(async move { s.scan(&p, None, PAGE).await }))
                .await?;
            if entries.is_empty() {
                break;
            }
            let txn = StateTxn {
                checks: Vec::new(),
                ops: entries
                    .iter()
                    .map(|e| chronicle_storage::state::StateOp::Delete { key: e.key.clone() })
                    .collect(),
            };
            self.run(move |s| Box::pin(async move { s.transact(vec![txn]).await }))
                .await?;
            if !more {
                break;
            }
        }
        Ok(())
    }
}

/// Merges v1 updates into one (a batch appended as one log entry); `None`
/// when yrs cannot (the batch is then appended update by update).
pub fn merge(updates: &[Vec<u8>]) -> Option<Vec<u8>> {
    match updates {
        [one] => Some(one.clone()),
        _ => {
            let parts: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
            yrs::merge_updates_v1(&parts).ok()
        }
    }
}

//! The replicated key-value state features keep (documents, registries,
//! audit logs, models, keys, definitions): what a state entry says, and the
//! checks every replica applies the same way. The shard stores it
//! (`Shard::apply_state`, in its `state` column family), the cluster
//! replicates it in the same log as points (docs/state.md).

use crate::{Result, StorageError};

/// Longest key, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 1024;
/// Largest value, in bytes (larger blobs are chunked over several keys). A
/// state entry travels as one bus message (a Raft append, a forwarded write
/// or read), and NATS refuses messages over 1 MiB by default.
pub const MAX_STATE_VALUE_BYTES: usize = 896 << 10;
/// Longest namespace: ASCII letters, digits, `_`, `-` and `.`.
pub const MAX_NAMESPACE_BYTES: usize = 64;
/// Transactions in one entry: a revision is `index << 16 | position`.
pub const MAX_TXNS_PER_ENTRY: usize = 1 << 16;
/// Bytes one entry may carry, keys, values and their encoding overhead
/// counted: one Raft entry sent in one bus message of at most 960 KiB.
pub const MAX_STATE_ENTRY_BYTES: usize = 900 << 10;
/// Bytes of keys and values one read answer carries at most (a page ends
/// early rather than exceed it; one entry or one transaction's changes
/// always fit).
pub const MAX_READ_BYTES: usize = 768 << 10;
/// Longest TTL: a year.
pub const MAX_TTL_MS: u64 = 365 * 86_400 * 1_000;
/// Most entries one scan returns.
pub const MAX_SCAN_LIMIT: usize = 1_000;
/// Most changes one watch poll returns.
pub const MAX_CHANGES_LIMIT: usize = 10_000;
/// Longest a watch poll waits for a change.
pub const MAX_WATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One change a transaction makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    /// With `ttl_ms` > 0 the key expires that long after the write was
    /// proposed (a lease of one key; writing it again renews or ends it).
    Put {
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    },
    Delete {
        key: String,
    },
}

impl StateOp {
    pub fn key(&self) -> &str {
        match self {
            StateOp::Put { key, .. } | StateOp::Delete { key } => key,
        }
    }
}

/// A condition: `key` is at `revision` (0: the key does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCheck {
    pub key: String,
    pub revision: u64,
}

/// Checks and changes applied all or nothing: the changes only if every
/// check holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateTxn {
    pub checks: Vec<StateCheck>,
    pub ops: Vec<StateOp>,
}

impl StateTxn {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            checks: Vec::new(),
            ops: vec![StateOp::Put {
                key: key.into(),
                value: value.into(),
                ttl_ms: 0,
            }],
        }
    }

    /// A put that expires `ttl` after it is proposed.
    pub fn put_with_ttl(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            checks: Vec::new(),
            ops: vec![StateOp::Put {
                key: key.into(),
                value: value.into(),
                // Rounded up: a TTL under a millisecond is not "none".
                ttl_ms: u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
            }],
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Self {
            checks: Vec::new(),
            ops: vec![StateOp::Delete { key: key.into() }],
        }
    }

    /// Only if `key` is at `revision` (0: absent).
    pub fn when(mut self, key: impl Into<String>, revision: u64) -> Self {
        self.checks.push(StateCheck {
            key: key.into(),
            revision,
        });
        self
    }

    /// What the transaction adds to an entry, encoding overhead included
    /// (an upper bound of its rkyv form: headers per transaction, op and check).
    fn bytes(&self) -> usize {
        let checks: usize = self.checks.iter().map(|c| c.key.len() + 24).sum();
        let ops: usize = self
            .ops
            .iter()
            .map(|o| match o {
                StateOp::Put { key, value, .. } => key.len() + value.len() + 48,
                StateOp::Delete { key } => key.len() + 48,
            })
            .sum();
        checks + ops + 32
    }
}

/// What one log entry of state carries: transactions in one namespace, each
/// applied on its own. The leader fixes `at` and `history` when it proposes,
/// so every replica keeps the same history whatever its clock or settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateBatch {
    pub namespace: String,
    /// When the leader proposed it (ns since the epoch).
    pub at: i64,
    /// How long changes stay readable by watchers (ns).
    pub history: i64,
    pub txns: Vec<StateTxn>,
}

impl StateBatch {
    /// Checks what any replica must be able to apply: the namespace, key and
    /// value sizes, the number of transactions and the entry's size. Done
    /// where a write enters the cluster; applying never fails on them.
    pub fn validate(&self) -> Result<()> {
        validate_namespace(&self.namespace)?;
        if self.txns.is_empty() {
            return Err(invalid("a state write needs at least one transaction"));
        }
        if self.txns.len() > MAX_TXNS_PER_ENTRY {
            return Err(invalid(format!(
                "{} transactions in one write; at most {MAX_TXNS_PER_ENTRY}",
                self.txns.len()
            )));
        }
        if self.history <= 0 {
            return Err(invalid("the history window must be positive"));
        }
        let mut bytes = 0usize;
        for txn in &self.txns {
            if txn.ops.is_empty() && txn.checks.is_empty() {
                return Err(invalid("an empty transaction"));
            }
            for key in txn.checks.iter().map(|c| c.key.as_str()) {
                validate_key(key)?;
            }
            for op in &txn.ops {
                validate_key(op.key())?;
                if let StateOp::Put { value, ttl_ms, .. } = op {
                    if *ttl_ms > MAX_TTL_MS {
                        return Err(invalid(format!(
                            "a TTL of {ttl_ms} ms; at most {MAX_TTL_MS} (a year)"
                        )));
                    }
                    if value.len() > MAX_STATE_VALUE_BYTES {
                        return Err(invalid(format!(
                            "a value of {} bytes; at most {MAX_STATE_VALUE_BYTES} (chunk larger blobs)",
                            value.len()
                        )));
                    }
                }
            }
            bytes = bytes.saturating_add(txn.bytes());
        }
        if bytes > MAX_STATE_ENTRY_BYTES {
            return Err(invalid(format!(
                "{bytes} bytes of keys and values in one write; at most {MAX_STATE_ENTRY_BYTES}"
            )));
        }
        Ok(())
    }
}

fn invalid(why: impl Into<String>) -> StorageError {
    StorageError::InvalidRequest(why.into())
}

pub fn validate_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= MAX_NAMESPACE_BYTES
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "namespace {ns:?}: 1 to {MAX_NAMESPACE_BYTES} ASCII letters, digits, '_', '-' or '.'"
        )))
    }
}

pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_STATE_KEY_BYTES {
        return Err(invalid(format!(
            "a key is 1 to {MAX_STATE_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied; its changes are at this revision.
    Committed { revision: u64 },
    /// A check failed: `key` is at `revision` (0: absent); nothing changed.
    Failed { key: String, revision: u64 },
}

/// A key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that last changed it.
    pub revision: u64,
    /// The revision that created it (since it last did not exist).
    pub created: u64,
    /// When it expires (ns since the epoch); 0: never.
    pub expires: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub revision: u64,
    pub kind: ChangeKind,
    pub key: String,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// When the leader proposed it (ns since the epoch).
    pub at: i64,
}

/// Changes after a revision, and how far the shard has applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateChanges {
    pub changes: Vec<StateChange>,
    /// More changes follow the last one returned (the limit cut them).
    pub more: bool,
    /// A revision covering everything applied so far: resume after it when
    /// nothing (more) matched.
    pub revision: u64,
}

/// The revision a transaction at `position` of the entry at `index` gets.
pub fn revision_of(index: u64, position: usize) -> u64 {
    (index << 16) | position as u64
}

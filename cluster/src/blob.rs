//! Blobs in the replicated state: values larger than one entry (Wasm
//! modules, model weights, proving keys), written and read as a stream of
//! chunks under one key, with a SHA-256 over the whole.
//!
//! Layout in a namespace: the blob's key holds its manifest (JSON: size,
//! chunk size and count, SHA-256, a generation id); the chunks are ordinary
//! keys `.blob/<key>/<generation>/<n>` of at most [`BLOB_CHUNK_BYTES`]
//! each, one Raft entry apiece, so a blob replicates, snapshots and catches
//! up exactly like every other key. A writer puts every chunk of a new
//! generation first and then switches the manifest in one compare-and-set
//! on the revision it started from; readers follow the manifest they read,
//! so they see the old blob or the new one, never a mix. The old
//! generation's chunks are deleted after the switch (a reader still on it
//! fails with [`BlobError::Replaced`] and reads again). A writer that dies
//! midway leaves chunks no manifest names: `put_blob` of the same key
//! deletes them before it writes.
//!
//! Memory: one chunk at a time on each side.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::state::StateStore;
use crate::ClusterError;
use chronicle_storage::state::{StateTxn, TxnOutcome};

/// Bytes per chunk (under the state's value limit with room to spare, and
/// under one read page).
pub const BLOB_CHUNK_BYTES: usize = 512 << 10;

/// Largest blob, bytes.
pub const MAX_BLOB_BYTES: u64 = 1 << 30;

/// Longest blob key (its chunk keys add about 40 bytes).
pub const MAX_BLOB_KEY_BYTES: usize = 900;

/// Where chunks live.
const CHUNK_PREFIX: &str = ".blob/";

/// Deletes per transaction when chunks are removed.
const DELETES_PER_TXN: usize = 512;

/// What a blob's key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobManifest {
    /// Always 1: marks the value as a blob manifest.
    pub chronicle_blob: u32,
    pub size: u64,
    pub chunk_bytes: u32,
    pub chunks: u32,
    /// Lowercase hex SHA-256 of the whole blob.
    pub sha256: String,
    /// Names this write's chunks.
    pub generation: String,
}

/// Why a blob could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob key: {0}")]
    Key(String),
    #[error("the blob is over the limit of {MAX_BLOB_BYTES} bytes")]
    TooLarge,
    #[error("reading the blob's source: {0}")]
    Source(#[from] std::io::Error),
    #[error(
        "another writer changed {key} first (now at revision {revision}); nothing was replaced"
    )]
    Conflict { key: String, revision: u64 },
    #[error("{0} is not a blob")]
    NotABlob(String),
    #[error("the blob was replaced while being read; read it again")]
    Replaced,
    #[error("the blob is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Where a key's chunks live: a fixed-length hash of the key, so no key's
/// chunk directory is a prefix of another's (`a` and `a/b`).
fn chunk_dir(key: &str) -> String {
    format!(
        "{CHUNK_PREFIX}{}/",
        &hex(&Sha256::digest(key.as_bytes()))[..32]
    )
}

fn chunk_key(key: &str, generation: &str, n: u32) -> String {
    format!("{}{generation}/{n:08}", chunk_dir(key))
}

fn generation_prefix(key: &str, generation: &str) -> String {
    format!("{}{generation}/", chunk_dir(key))
}

/// A generation no manifest names is deleted only once it is this old: a
/// younger one may be another writer's, still uploading.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// When a generation was started (its id begins with the time in ns).
fn generation_started(generation: &str) -> Option<u64> {
    generation
        .get(..16)
        .and_then(|t| u64::from_str_radix(t, 16).ok())
}

fn new_generation() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut random = [0u8; 4];
    // A clock and a random suffix: two writers never share a generation.
    let _ = getrandom::fill(&mut random);
    format!("{:016x}{}", nanos as u64, hex(&random))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reads up to a full chunk (short only at the end).
async fn fill(source: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let mut limited = source.take(BLOB_CHUNK_BYTES as u64);
    while buf.len() < BLOB_CHUNK_BYTES {
        if limited.read_buf(buf).await? == 0 {
            break;
        }
    }
    Ok(())
}

impl StateStore {
    /// The blob's manifest and the revision of its key; `None` when absent.
    pub async fn blob_info(&self, key: &str) -> Result<Option<(BlobManifest, u64)>, BlobError> {
        let Some(entry) = self.get(key).await? else {
            return Ok(None);
        };
        let manifest: BlobManifest = serde_json::from_slice(&entry.value)
            .ok()
            .filter(|m: &BlobManifest| m.chronicle_blob == 1)
            .ok_or_else(|| BlobError::NotABlob(key.to_string()))?;
        Ok(Some((manifest, entry.revision)))
    }

    /// Writes `source` as the blob at `key`, replacing what is there, and
    /// returns its manifest. Streamed: one chunk in memory. Nothing is
    /// replaced unless every chunk committed and `key` was not changed by
    /// another writer meanwhile ([`BlobError::Conflict`]).
    pub async fn put_blob(
        &self,
        key: &str,
        mut source: impl AsyncRead + Unpin,
    ) -> Result<BlobManifest, BlobError> {
        if key.is_empty() || key.len() > MAX_BLOB_KEY_BYTES || key.starts_with(CHUNK_PREFIX) {
            return Err(BlobError::Key(format!(
                "1 to {MAX_BLOB_KEY_BYTES} bytes, not under {CHUNK_PREFIX:?}"
            )));
        }
        let (before, from) = match self.get(key).await? {
            None => (None, 0),
            Some(e) => (
                serde_json::from_slice::<BlobManifest>(&e.value).ok(),
                e.revision,
            ),
        };
        // Chunks an interrupted writer left behind.
        self.delete_orphans(key, before.as_ref().map(|m| m.generation.as_str()))
            .await?;
        let generation = new_generation();
        let mut hasher = Sha256::new();
        let (mut size, mut chunks) = (0u64, 0u32);
        let mut buf = Vec::with_capacity(BLOB_CHUNK_BYTES);
        loop {
            fill(&mut source, &mut buf).await?;
            if buf.is_empty() {
                break;
            }
            size += buf.len() as u64;
            if size > MAX_BLOB_BYTES {
                self.delete_prefix(&generation_prefix(key, &generation))
                    .await?;
                return Err(BlobError::TooLarge);
            }
            hasher.update(&buf);
            self.put(&chunk_key(key, &generation, chunks), buf.as_slice())
                .await?;
            chunks += 1;
        }
        let manifest = BlobManifest {
            chronicle_blob: 1,
            size,
            chunk_bytes: BLOB_CHUNK_BYTES as u32,
            chunks,
            sha256: hex(&hasher.finalize()),
            generation: generation.clone(),
        };
        let value = serde_json::to_vec(&manifest).map_err(|e| BlobError::Corrupt(e.to_string()))?;
        match self
            .transact(vec![StateTxn::put(key, value).when(key, from)])
            .await?
            .pop()
        {
            Some(TxnOutcome::Committed { .. }) => {}
            Some(TxnOutcome::Failed { revision, .. }) => {
                self.delete_prefix(&generation_prefix(key, &generation))
                    .await?;
                return Err(BlobError::Conflict {
                    key: key.to_string(),
                    revision,
                });
            }
            None => return Err(BlobError::Corrupt("no outcome for the manifest".into())),
        }
        if let Some(old) = before {
            if let Err(e) = self.delete_generation(key, &old).await {
                tracing::warn!(key, error = %e, "old blob chunks not deleted; the next write of the key does");
            }
        }
        Ok(manifest)
    }

    /// A reader of the blob at `key`; `None` when there is none.
    pub async fn get_blob(&self, key: &str) -> Result<Option<BlobReader>, BlobError> {
        Ok(self.blob_info(key).await?.map(|(manifest, _)| BlobReader {
            store: self.clone(),
            key: key.to_string(),
            manifest,
            next: 0,
            read: 0,
            hasher: Sha256::new(),
        }))
    }

    /// Deletes the blob at `key` (its manifest, then its chunks); whether
    /// there was one.
    pub async fn delete_blob(&self, key: &str) -> Result<bool, BlobError> {
        let Some((manifest, revision)) = self.blob_info(key).await? else {
            return Ok(false);
        };
        match self.compare_and_delete(key, revision).await? {
            Ok(_) => {}
            Err(now) => {
                return Err(BlobError::Conflict {
                    key: key.to_string(),
                    revision: now,
                })
            }
        }
        self.delete_generation(key, &manifest).await?;
        Ok(true)
    }

    /// Deletes the chunks a manifest names (by key, without reading them).
    async fn delete_generation(&self, key: &str, manifest: &BlobManifest) -> Result<(), BlobError> {
        let keys: Vec<String> = (0..manifest.chunks)
            .map(|n| chunk_key(key, &manifest.generation, n))
            .collect();
        for batch in keys.chunks(DELETES_PER_TXN) {
            self.delete_keys(batch.to_vec()).await?;
        }
        Ok(())
    }

    /// Deletes the chunks of `key` that no manifest names and that are older
    /// than [`ORPHAN_GRACE`] (an interrupted writer's), except `keep`.
    async fn delete_orphans(&self, key: &str, keep: Option<&str>) -> Result<(), BlobError> {
        let dir = chunk_dir(key);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let cutoff = now.saturating_sub(ORPHAN_GRACE.as_nanos() as u64);
        let mut after: Option<String> = None;
        loop {
            let (entries, more) = self.scan(&dir, after.as_deref(), DELETES_PER_TXN).await?;
            after = entries.last().map(|e| e.key.clone());
            let doomed: Vec<String> = entries
                .into_iter()
                .map(|e| e.key)
                .filter(|k| {
                    let generation = k[dir.len()..].split('/').next().unwrap_or("");
                    Some(generation) != keep
                        && generation_started(generation).is_some_and(|t| t < cutoff)
                })
                .collect();
            if !doomed.is_empty() {
                self.delete_keys(doomed).await?;
            }
            if !more || after.is_none() {
                return Ok(());
            }
        }
    }

    /// Deletes every key under `prefix` (scanning: for chunks no manifest
    /// counts).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), BlobError> {
        loop {
            let (entries, _) = self.scan(prefix, None, DELETES_PER_TXN).await?;
            if entries.is_empty() {
                return Ok(());
            }
            self.delete_keys(entries.into_iter().map(|e| e.key).collect())
                .await?;
        }
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), BlobError> {
        let txns = keys.into_iter().map(StateTxn::delete).collect();
        self.transact(txns).await?;
        Ok(())
    }
}

/// Reads a blob chunk by chunk, checking its size and SHA-256 at the end.
pub struct BlobReader {
    store: StateStore,
    key: String,
    manifest: BlobManifest,
    next: u32,
    read: u64,
    hasher: Sha256,
}

impl BlobReader {
    pub fn manifest(&self) -> &BlobManifest {
        &self.manifest
    }

    /// The next chunk; `None` after the last, once the whole blob matched
    /// its size and checksum.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BlobError> {
        if self.next == self.manifest.chunks {
            if self.read != self.manifest.size {
                return Err(BlobError::Corrupt(format!(
                    "{} bytes read, the manifest says {}",
                    self.read, self.manifest.size
                )));
            }
            let digest = hex(&std::mem::take(&mut self.hasher).finalize());
            if digest != self.manifest.sha256 {
                return Err(BlobError::Corrupt(format!(
                    "SHA-256 {digest}, the manifest says {}",
                    self.manifest.sha256
                )));
            }
            self.next += 1;
            return Ok(None);
        }
        if self.next > self.manifest.chunks {
            return Ok(None);
        }
        let key = chunk_key(&self.key, &self.manifest.generation, self.next);
        let Some(entry) = self.store.get(&key).await? else {
            return Err(BlobError::Replaced);
        };
        self.next += 1;
        self.read += entry.value.len() as u64;
        self.hasher.update(&entry.value);
        Ok(Some(entry.value))
    }
}

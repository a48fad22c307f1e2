//! The token registry: tokens live in the replicated state (namespace
//! `auth`, key `token/<id>`, JSON [`TokenRecord`]); each node keeps a copy in
//! memory, loaded by a scan and kept current by a watch from the scan's
//! revision, so checking a request never waits on the cluster and a
//! revocation reaches every node as fast as the watch does (milliseconds;
//! the test holds it under a second).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chronicle_cluster::state::StateStore;
use chronicle_cluster::ClusterError;
use chronicle_storage::state::ChangeKind;
use chronicle_storage::StorageError;
use parking_lot::RwLock;
use tracing::{info, warn};

use crate::token::{
    credential_from_header, issue, secret_matches, sha256_hex, split_token, MIN_BOOTSTRAP_BYTES,
};
use crate::{AuthError, IssuedToken, Principal, Role, Scopes, TokenRecord};

/// The state namespace tokens are kept in.
pub const NAMESPACE: &str = "auth";

const TOKEN_KEYS: &str = "token/";

/// Longest token name, bytes.
const MAX_NAME_BYTES: usize = 256;

/// Most scope entries of each kind on one token.
const MAX_SCOPE_ENTRIES: usize = 64;

/// Longest a token may live when it expires (the state's TTL bound).
const MAX_TOKEN_TTL: Duration = Duration::from_millis(chronicle_storage::state::MAX_TTL_MS);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn store_err(e: ClusterError) -> AuthError {
    AuthError::Store(e.to_string())
}

/// Checks credentials against the tokens of the replicated state.
pub struct Authenticator {
    enabled: bool,
    /// SHA-256 of the configured bootstrap token (an admin that needs no
    /// state: how the first tokens get made).
    bootstrap: Option<String>,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    loaded: AtomicBool,
    store: Option<StateStore>,
}

impl Authenticator {
    /// Authentication off: everyone is [`Principal::anonymous`] (the node
    /// then serves on loopback only, unless told `--insecure`).
    pub fn disabled() -> Arc<Self> {
        Arc::new(Self {
            enabled: false,
            bootstrap: None,
            tokens: RwLock::default(),
            loaded: AtomicBool::new(true),
            store: None,
        })
    }

    /// Authentication on, tokens from `store` (namespace [`NAMESPACE`]).
    /// Spawns the follower on the current runtime (the cluster's); requests
    /// with a stored token get 503 until the first load completes, the
    /// bootstrap token works at once.
    pub fn start(store: StateStore, bootstrap: Option<&str>) -> Result<Arc<Self>, AuthError> {
        if store.namespace() != NAMESPACE {
            return Err(AuthError::Internal(format!(
                "tokens live in namespace {NAMESPACE:?}, not {:?}",
                store.namespace()
            )));
        }
        let bootstrap = match bootstrap.map(str::trim) {
            Some(b) if b.len() < MIN_BOOTSTRAP_BYTES => {
                return Err(AuthError::Invalid(format!(
                    "the bootstrap token needs at least {MIN_BOOTSTRAP_BYTES} bytes"
                )))
            }
            Some(b) => Some(sha256_hex(b.as_bytes())),
            None => None,
        };
        let auth = Arc::new(Self {
            enabled: true,
            bootstrap,
            tokens: RwLock::default(),
            loaded: AtomicBool::new(false),
            store: Some(store.clone()),
        });
        tokio::spawn(follow(Arc::downgrade(&auth), store));
        Ok(auth)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether stored tokens can be checked yet.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Who sent `authorization` (the header's value, if any).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        let credential = credential_from_header(authorization.ok_or(AuthError::Missing)?)?;
        self.verify(&credential)
    }

    /// Who `token` is.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        if let Some(hash) = &self.bootstrap {
            if secret_matches(token.as_bytes(), hash) {
                return Ok(Principal {
                    id: "bootstrap".into(),
                    name: "bootstrap".into(),
                    role: Role::Admin,
                    scopes: Scopes::default(),
                });
            }
        }
        let (id, secret) = split_token(token).ok_or(AuthError::Unauthenticated)?;
        if !self.is_loaded() {
            return Err(AuthError::NotReady);
        }
        let tokens = self.tokens.read();
        let record = tokens.get(id).ok_or(AuthError::Unauthenticated)?;
        if !secret_matches(secret.as_bytes(), &record.secret_sha256) {
            return Err(AuthError::Unauthenticated);
        }
        if record.expires_ms.is_some_and(|at| at <= now_ms()) {
            return Err(AuthError::Expired(record.id.clone()));
        }
        Ok(Principal {
            id: record.id.clone(),
            name: record.name.clone(),
            role: record.role,
            scopes: record.scopes.clone(),
        })
    }

    /// Whether `principal`'s token still counts (not revoked or expired):
    /// long-lived connections ask this to end with their token.
    pub fn still_valid(&self, principal: &Principal) -> bool {
        if !self.enabled || principal.id == "bootstrap" {
            return true;
        }
        self.tokens
            .read()
            .get(&principal.id)
            .is_some_and(|r| r.expires_ms.is_none_or(|at| at > now_ms()))
    }

    fn store(&self) -> Result<&StateStore, AuthError> {
        self.store.as_ref().ok_or_else(|| {
            AuthError::Invalid("authentication is off on this node: no tokens to manage".into())
        })
    }

    /// Makes a token and stores its record; the token is returned once.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        scopes: Scopes,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let store = self.store()?;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(AuthError::Invalid(format!(
                "a token's name needs 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        if scopes.features.len() > MAX_SCOPE_ENTRIES
            || scopes.metric_prefixes.len() > MAX_SCOPE_ENTRIES
            || scopes
                .features
                .iter()
                .chain(&scopes.metric_prefixes)
                .any(|s| s.is_empty() || s.len() > MAX_NAME_BYTES)
        {
            return Err(AuthError::Invalid(format!(
                "scopes: at most {MAX_SCOPE_ENTRIES} of each kind, each 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        if ttl.is_some_and(|t| t.is_zero() || t > MAX_TOKEN_TTL) {
            return Err(AuthError::Invalid(
                "a token's lifetime must be above zero and at most a year".into(),
            ));
        }
        let now = now_ms();
        let expires = ttl.map(|t| now.saturating_add(t.as_millis() as i64));
        let issued = issue(name, role, scopes, now, expires)?;
        let value = serde_json::to_vec(&issued.record)
            .map_err(|e| AuthError::Internal(format!("token record: {e}")))?;
        let key = format!("{TOKEN_KEYS}{}", issued.record.id);
        match ttl {
            // The state deletes it when it expires, on every node at once.
            Some(t) => store.put_with_ttl(&key, value, t).await,
            None => store.put(&key, value).await,
        }
        .map_err(store_err)?;
        // Usable here at once (the watch brings it to the other nodes, and
        // here too a moment later): a client that made a token uses it next.
        self.tokens
            .write()
            .insert(issued.record.id.clone(), issued.record.clone());
        info!(id = %issued.record.id, name, role = role.as_str(), "token created");
        Ok(issued)
    }

    /// Every stored token's record (no secrets), by id.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, AuthError> {
        let store = self.store()?;
        let (records, _) = load(store).await.map_err(store_err)?;
        let mut records: Vec<_> = records.into_values().collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Deletes token `id`; whether it existed. Every node stops accepting it
    /// once its watch sees the delete.
    pub async fn revoke(&self, id: &str) -> Result<bool, AuthError> {
        let store = self.store()?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(AuthError::Invalid(format!("{id:?} is not a token id")));
        }
        let key = format!("{TOKEN_KEYS}{id}");
        let existed = store.get(&key).await.map_err(store_err)?.is_some();
        if existed {
            store.delete(&key).await.map_err(store_err)?;
            // This node stops accepting it now, before its watch catches up.
            self.tokens.write().remove(id);
            info!(id, "token revoked");
        }
        Ok(existed)
    }

    fn apply(&self, key: &str, kind: ChangeKind, value: &[u8]) {
        let Some(id) = key.strip_prefix(TOKEN_KEYS) else {
            return;
        };
        match kind {
            ChangeKind::Delete => {
                self.tokens.write().remove(id);
            }
            ChangeKind::Put => match serde_json::from_slice::<TokenRecord>(value) {
                Ok(record) if record.id == id => {
                    self.tokens.write().insert(record.id.clone(), record);
                }
                Ok(_) | Err(_) => warn!(key, "ignoring a token record that does not parse"),
            },
        }
    }
}

/// Every token record in the store, and a revision to watch from.
async fn load(store: &StateStore) -> Result<(HashMap<String, TokenRecord>, u64), ClusterError> {
    let mut records = HashMap::new();
    let (mut after, mut first_revision) = (None::<String>, None);
    loop {
        let page = store
            .scan_page(
                TOKEN_KEYS,
                after.as_deref(),
                chronicle_storage::state::MAX_SCAN_LIMIT,
            )
            .await?;
        first_revision.get_or_insert(page.revision);
        for entry in &page.entries {
            match serde_json::from_slice::<TokenRecord>(&entry.value) {
                Ok(record) => {
                    records.insert(record.id.clone(), record);
                }
                Err(e) => {
                    warn!(key = %entry.key, error = %e, "ignoring a token record that does not parse")
                }
            }
        }
        after = page.entries.last().map(|e| e.key.clone());
        if !page.more || after.is_none() {
            break;
        }
    }
    Ok((records, first_revision.unwrap_or(0)))
}

/// Loads the registry, then follows the watch; starts over (a fresh load)
/// when the watch ends, e.g. because its history was pruned.
async fn follow(auth: Weak<Authenticator>, store: StateStore) {
    let mut logged_failure = false;
    loop {
        if auth.strong_count() == 0 {
            return;
        }
        match load(&store).await {
            Ok((records, revision)) => {
                let Some(a) = auth.upgrade() else { return };
                *a.tokens.write() = records;
                a.loaded.store(true, Ordering::Release);
                drop(a);
                logged_failure = false;
                let mut changes = store.watch(TOKEN_KEYS, revision, 1024);
                while let Some(change) = changes.recv().await {
                    let Some(a) = auth.upgrade() else { return };
                    match change {
                        Ok(c) => a.apply(&c.key, c.kind, &c.value),
                        Err(ClusterError::Storage(StorageError::Compacted { .. })) => {
                            info!("token watch fell behind the history; reloading");
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "token watch ended; reloading");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if !logged_failure {
                    warn!(error = %e, "loading tokens failed; retrying");
                    logged_failure = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

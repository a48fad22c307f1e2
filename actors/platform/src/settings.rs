//! Run-time settings: the node's config API. A setting is registered by
//! the part of the node it tunes (a name, a check, and how to apply a
//! value); a change is stored in the replicated state (namespace `config`),
//! so every node applies it (each follows `setting/`) and it survives
//! restarts; every change is recorded in a history (`history/`, 90 days)
//! with who made it and why. Unset, a setting has the value of the node's
//! configuration file.
//!
//! The HTTP routes (`/api/config`) are the node's; features that change
//! settings (remediation's config actions, capacity tuning) take the
//! [`RuntimeSettings`] handle from the services.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronicle_cluster::state::StateStore;
use chronicle_storage::state::ChangeKind;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// History records are kept this long.
const HISTORY_TTL: Duration = Duration::from_secs(90 * 86_400);
/// Longest setting value, bytes.
pub const MAX_VALUE: usize = 1024;
/// Longest reason given for a change, bytes.
pub const MAX_REASON: usize = 512;

/// Why a setting was not read or changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("no run-time setting {0:?}")]
    Unknown(String),
    #[error("{name}: {message}")]
    Invalid { name: String, message: String },
    /// `expected` was given and the setting holds something else.
    #[error("{name} changed meanwhile (it is {current:?})")]
    Conflict {
        name: String,
        current: Option<String>,
    },
    #[error("the replicated state: {0}")]
    Unavailable(String),
}

type Check = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
type Apply = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// One setting a part of the node lets change at run time.
pub struct Setting {
    pub name: &'static str,
    pub describe: &'static str,
    /// The value when unset (the configuration file's), as text.
    pub default: String,
    check: Check,
    apply: Apply,
}

impl Setting {
    /// `check` refuses a bad value before it is stored; `apply` takes a
    /// checked value (or `None`: back to the file's) on every node.
    pub fn new(
        name: &'static str,
        describe: &'static str,
        default: impl Into<String>,
        check: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
        apply: impl Fn(Option<&str>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            describe,
            default: default.into(),
            check: Box::new(check),
            apply: Box::new(apply),
        }
    }
}

/// What `setting/<name>` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    value: String,
    by: String,
    at_ms: i64,
    #[serde(default)]
    reason: String,
}

/// A setting as `GET /api/config` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingView {
    pub name: String,
    pub describe: String,
    /// In effect: the stored value, or the default.
    pub value: String,
    pub default: String,
    /// Whether a run-time value is stored (else the file's is in effect).
    pub set: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One change, as stored in the history and returned to who made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingChange {
    pub name: String,
    /// The run-time value before (`None`: the file's was in effect).
    pub previous: Option<String>,
    /// The run-time value after (`None`: back to the file's).
    pub value: Option<String>,
    pub by: String,
    pub at_ms: i64,
    pub reason: String,
    pub node: u64,
}

/// The node's run-time settings.
pub struct RuntimeSettings {
    state: StateStore,
    runtime: tokio::runtime::Handle,
    node: u64,
    settings: BTreeMap<&'static str, Setting>,
    next: AtomicU64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RuntimeSettings {
    pub fn new(
        state: StateStore,
        runtime: tokio::runtime::Handle,
        node: u64,
        settings: Vec<Setting>,
    ) -> Self {
        Self {
            state,
            runtime,
            node,
            settings: settings.into_iter().map(|s| (s.name, s)).collect(),
            next: AtomicU64::new(0),
        }
    }

    async fn run<T, F>(&self, call: impl FnOnce(StateStore) -> F) -> Result<T, SettingsError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, chronicle_cluster::ClusterError>>
            + Send
            + 'static,
    {
        crate::on_cluster(&self.runtime, &self.state, call)
            .await
            .map_err(SettingsError::Unavailable)
    }

    fn setting(&self, name: &str) -> Result<&Setting, SettingsError> {
        self.settings
            .get(name)
            .ok_or_else(|| SettingsError::Unknown(name.to_string()))
    }

    /// Whether `value` is one `name` takes (checked before an action that
    /// sets it is stored, not at the incident).
    pub fn check(&self, name: &str, value: &str) -> Result<(), SettingsError> {
        let setting = self.setting(name)?;
        (setting.check)(value).map_err(|message| SettingsError::Invalid {
            name: name.into(),
            message,
        })
    }

    /// Every setting with the value in effect (read linearizably).
    pub async fn list(&self) -> Result<Vec<SettingView>, SettingsError> {
        let (entries, _) = self
            .run(|s| async move { s.scan("setting/", None, 1000).await })
            .await?;
        let stored: BTreeMap<String, Stored> = entries
            .iter()
            .filter_map(|e| {
                let name = e.key.strip_prefix("setting/")?.to_string();
                Some((name, serde_json::from_slice(&e.value).ok()?))
            })
            .collect();
        Ok(self
            .settings
            .values()
            .map(|s| {
                let st = stored.get(s.name);
                SettingView {
                    name: s.name.into(),
                    describe: s.describe.into(),
                    value: st.map_or_else(|| s.default.clone(), |st| st.value.clone()),
                    default: s.default.clone(),
                    set: st.is_some(),
                    by: st.map(|st| st.by.clone()),
                    at_ms: st.map(|st| st.at_ms),
                    reason: st.map(|st| st.reason.clone()),
                }
            })
            .collect())
    }

    /// The run-time value of `name` (`None`: unset) and its revision.
    async fn current(&self, name: &str) -> Result<(Option<String>, u64), SettingsError> {
        let key = format!("setting/{name}");
        let entry = self.run(move |s| async move { s.get(&key).await }).await?;
        Ok(match entry {
            Some(e) => (
                serde_json::from_slice::<Stored>(&e.value)
                    .ok()
                    .map(|s| s.value),
                e.revision,
            ),
            None => (None, 0),
        })
    }

    /// Sets `name` to `value` (`None`: back to the file's value) for every
    /// node, recording who and why. With `expected`, only if the run-time
    /// value is that now (`Some(None)`: only if unset), so an undo never
    /// overwrites a later change.
    pub async fn set(
        &self,
        name: &str,
        value: Option<&str>,
        principal: &str,
        reason: &str,
        expected: Option<Option<&str>>,
    ) -> Result<SettingChange, SettingsError> {
        let setting = self.setting(name)?;
        if reason.len() > MAX_REASON {
            return Err(SettingsError::Invalid {
                name: name.into(),
                message: format!("a reason of at most {MAX_REASON} bytes"),
            });
        }
        if let Some(v) = value {
            if v.len() > MAX_VALUE {
                return Err(SettingsError::Invalid {
                    name: name.into(),
                    message: format!("a value of at most {MAX_VALUE} bytes"),
                });
            }
            (setting.check)(v).map_err(|message| SettingsError::Invalid {
                name: name.into(),
                message,
            })?;
        }
        let key = format!("setting/{name}");
        for _ in 0..16 {
            let (previous, revision) = self.current(name).await?;
            if let Some(want) = expected {
                if want != previous.as_deref() {
                    return Err(SettingsError::Conflict {
                        name: name.into(),
                        current: previous,
                    });
                }
            }
            let at_ms = now_ms();
            let k = key.clone();
            let stored = match value {
                Some(v) => {
                    let bytes = serde_json::to_vec(&Stored {
                        value: v.into(),
                        by: principal.into(),
                        at_ms,
                        reason: reason.into(),
                    })
                    .expect("a setting serializes");
                    self.run(move |s| async move { s.compare_and_set(&k, revision, bytes).await })
                        .await?
                        .map(|_| ())
                }
                None if revision == 0 => Ok(()),
                None => self
                    .run(move |s| async move { s.compare_and_delete(&k, revision).await })
                    .await?
                    .map(|_| ()),
            };
            if stored.is_err() {
                continue;
            }
            let change = SettingChange {
                name: name.into(),
                previous,
                value: value.map(str::to_string),
                by: principal.into(),
                at_ms,
                reason: reason.into(),
                node: self.node,
            };
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let hkey = format!("history/{:013}-{}-{n}", at_ms.max(0), self.node);
            let record = serde_json::to_vec(&change).expect("a change serializes");
            if let Err(e) = self
                .run(move |s| async move { s.put_with_ttl(&hkey, record, HISTORY_TTL).await })
                .await
            {
                warn!(error = %e, setting = name, "config: a change was not recorded in the history");
            }
            info!(setting = name, value = ?change.value, by = principal, "config: setting changed");
            return Ok(change);
        }
        Err(SettingsError::Unavailable(format!(
            "{name} kept changing under this node; try again"
        )))
    }

    /// Changes at or after `since` (ms), oldest first, at most `limit`;
    /// and whether more may follow.
    pub async fn history(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<(Vec<SettingChange>, bool), SettingsError> {
        let from = format!("history/{:013}", since.max(0));
        let (entries, more) = self
            .run(move |s| async move { s.scan("history/", Some(&from), limit).await })
            .await?;
        Ok((
            entries
                .iter()
                .filter_map(|e| serde_json::from_slice(&e.value).ok())
                .collect(),
            more,
        ))
    }

    /// Applies every stored value, then each change as it commits, on this
    /// node; returns when the watch ends (the caller starts it again).
    pub async fn follow(&self) -> Result<(), SettingsError> {
        let state = self.state.clone();
        let page = self
            .runtime
            .spawn(async move { state.scan_page("setting/", None, 1000).await })
            .await
            .map_err(|e| SettingsError::Unavailable(e.to_string()))?
            .map_err(|e| SettingsError::Unavailable(e.to_string()))?;
        // What is not stored is the file's value (a deletion missed while
        // the watch was down included).
        let stored: BTreeMap<&str, Option<String>> = page
            .entries
            .iter()
            .filter_map(|e| {
                let name = e.key.strip_prefix("setting/")?;
                let value = serde_json::from_slice::<Stored>(&e.value).ok()?.value;
                Some((name, Some(value)))
            })
            .collect();
        for s in self.settings.values() {
            self.apply(s, stored.get(s.name).cloned().flatten().as_deref());
        }
        let state = self.state.clone();
        let revision = page.revision;
        let mut changes = self
            .runtime
            .spawn(async move { state.watch("setting/", revision, 64) })
            .await
            .map_err(|e| SettingsError::Unavailable(e.to_string()))?;
        while let Some(change) = changes.recv().await {
            let change = change.map_err(|e| SettingsError::Unavailable(e.to_string()))?;
            let Some(setting) = change
                .key
                .strip_prefix("setting/")
                .and_then(|n| self.settings.get(n))
            else {
                continue;
            };
            let value = match change.kind {
                ChangeKind::Put => serde_json::from_slice::<Stored>(&change.value)
                    .ok()
                    .map(|s| s.value),
                _ => None,
            };
            self.apply(setting, value.as_deref());
        }
        Err(SettingsError::Unavailable(
            "the settings watch ended".into(),
        ))
    }

    fn apply(&self, setting: &Setting, value: Option<&str>) {
        // A stored value this build refuses (written by a newer one) is
        // not applied: the file's stays.
        let value = value.filter(|v| match (setting.check)(v) {
            Ok(()) => true,
            Err(e) => {
                warn!(setting = setting.name, error = %e, "config: a stored value is refused; the file's applies");
                false
            }
        });
        debug!(setting = setting.name, ?value, "config: applied");
        (setting.apply)(value);
    }
}

/// A shared handle, as published in the services.
pub type Settings = Arc<RuntimeSettings>;

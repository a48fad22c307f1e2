//! Backups as a feature (docs/operations.md, "Back up and restore").
//!
//! A node checkpoints every shard it leads, after a read index, under
//! `<data-dir>/backups/<name>/shard-<id>/` on `POST /api/v1/admin/backups`
//! (RocksDB checkpoints: hard links to the SST files, so taking one costs
//! little disk until compactions replace those). `chronicle backup take`
//! downloads the files (`GET /api/v1/admin/backups/<name>/<shard>/<file>`),
//! checks them against the SHA-256 the node computed and deletes the node's
//! copy (`DELETE /api/v1/admin/backups/<name>`). `chronicle backup restore`
//! (crate::backup_cli) reads a backup offline and writes it into any cluster
//! through the ordinary write and state APIs.
//!
//! Every route is admin-only (`Feature::access` below) and bounded: one
//! backup at a time per node, at most [`MAX_BACKUPS_ON_NODE`] kept, files
//! streamed in 1 MiB pieces.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use async_trait::async_trait;
use bytes::Bytes;
use chronicle_cluster::ClusterNode;
use chronicle_platform::{Feature, FeatureContext, FeatureError, Planned, Running};
use clap::{FromArgMatches, Subcommand};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::{admin_refused, error, AppState};

/// Backups a node keeps at once; `take` refuses more until some are deleted.
pub const MAX_BACKUPS_ON_NODE: usize = 4;
/// The node's description of one backup, in its directory.
pub const NODE_MANIFEST: &str = "backup.json";
/// Bytes per piece of a streamed file.
const PIECE_BYTES: usize = 1 << 20;

/// One file of a shard's checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFile {
    pub name: String,
    pub size: u64,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
}

/// One shard's checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardBackup {
    pub shard: u32,
    /// The node that led the shard and took the checkpoint.
    pub node: u64,
    /// The last Raft log entry the checkpoint holds.
    pub applied_index: u64,
    pub term: u64,
    pub files: Vec<BackupFile>,
}

/// What `POST /api/v1/admin/backups` took on one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeBackup {
    pub name: String,
    pub node: u64,
    /// Shards in the cluster (those this node did not lead are absent).
    pub shards_total: u32,
    /// The chunk range the shards were written with: a restore reads them
    /// with the same one.
    pub chunk_range_ns: u64,
    pub created_unix_ms: u64,
    pub shards: Vec<ShardBackup>,
}

pub struct BackupFeature;

impl Feature for BackupFeature {
    fn name(&self) -> &'static str {
        "backup"
    }

    fn describe(&self) -> &'static str {
        "back a cluster up to a directory and restore it into any cluster (admin)"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![chronicle_platform::RouteAccess::prefix(
            "/api/v1/admin/backups",
            chronicle_platform::Access::Admin,
        )]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        if section.is_some() {
            return Err(FeatureError::Config {
                feature: "backup",
                message: "backup has no settings".into(),
            });
        }
        Ok(Box::new(BackupPlan))
    }

    fn command(&self) -> Option<clap::Command> {
        Some(
            crate::backup_cli::BackupCommand::augment_subcommands(clap::Command::new("backup"))
                .subcommand_required(true),
        )
    }

    fn run_command(&self, matches: &clap::ArgMatches) -> Result<(), FeatureError> {
        let command = crate::backup_cli::BackupCommand::from_arg_matches(matches)
            .map_err(|e| FeatureError::Command(e.to_string()))?;
        crate::backup_cli::run(command).map_err(|e| FeatureError::Command(e.to_string()))
    }
}

struct BackupPlan;

#[async_trait(?Send)]
impl Planned for BackupPlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let backups = Backups {
            root: cx.cluster.data_dir().join("backups"),
            cluster: cx.cluster.clone(),
            runtime: cx.cluster_runtime.clone(),
            busy: tokio::sync::Mutex::new(()),
        };
        // What a crash left half-written is garbage.
        let root = backups.root.clone();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".partial-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Arc::new(RunningBackup {
            backups: web::Data::new(backups),
        }))
    }
}

struct Backups {
    root: PathBuf,
    cluster: Arc<ClusterNode>,
    runtime: tokio::runtime::Handle,
    busy: tokio::sync::Mutex<()>,
}

struct RunningBackup {
    backups: web::Data<Backups>,
}

#[async_trait(?Send)]
impl Running for RunningBackup {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.backups.clone())
            .route("/api/v1/admin/backups", web::post().to(take))
            .route("/api/v1/admin/backups", web::get().to(list))
            .route("/api/v1/admin/backups/{name}", web::delete().to(remove))
            .route(
                "/api/v1/admin/backups/{name}/{shard}/{file}",
                web::get().to(download),
            );
    }
}

/// A backup's name as the node makes it: `b<unix ms>-n<node>`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with('b')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn backup_names(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    match std::fs::read_dir(root) {
        Ok(entries) => {
            for e in entries {
                let name = e?.file_name().to_string_lossy().into_owned();
                if valid_name(&name) {
                    names.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    names.sort();
    Ok(names)
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// Hex SHA-256 and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex(&hasher.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a checkpoint directory, each with its size and SHA-256.
fn describe_files(dir: &Path) -> std::io::Result<Vec<BackupFile>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let (size, sha256) = sha256_file(&e.path())?;
        files.push(BackupFile { name, size, sha256 });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[tracing::instrument(name = "backup_take", skip_all)]
async fn take(state: web::Data<AppState>, backups: web::Data<Backups>) -> HttpResponse {
    if let Some(refused) = admin_refused(&state) {
        return refused;
    }
    let Ok(_busy) = backups.busy.try_lock() else {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            "a backup is being taken on this node; try again when it is done",
        );
    };
    let kept = match backup_names(&backups.root) {
        Ok(names) => names,
        Err(e) => return internal(format!("{}: {e}", backups.root.display())),
    };
    if kept.len() >= MAX_BACKUPS_ON_NODE {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "this node keeps {} backups ({}), the most it keeps: delete some with DELETE /api/v1/admin/backups/<name>",
                kept.len(),
                kept.join(", ")
            ),
        );
    }
    let (cluster, root) = (backups.cluster.clone(), backups.root.clone());
    let taken = backups
        .runtime
        .spawn(async move { take_on_node(&cluster, &root).await })
        .await;
    match taken {
        Ok(Ok(backup)) => HttpResponse::Ok().json(backup),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        Err(e) => internal(format!("backup task failed: {e}")),
    }
}

/// Checkpoints the shards this node leads into a new backup directory.
async fn take_on_node(cluster: &ClusterNode, root: &Path) -> Result<NodeBackup, String> {
    let created_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let name = format!("b{created_unix_ms}-n{}", cluster.node_id());
    let partial = root.join(format!(".partial-{name}"));
    let fail = |e: std::io::Error, p: &Path| format!("{}: {e}", p.display());
    std::fs::create_dir_all(&partial).map_err(|e| fail(e, &partial))?;
    let result = async {
        let mut shards = Vec::new();
        for shard in 0..cluster.shards() {
            let dir = partial.join(format!("shard-{shard}"));
            let Some(taken) = cluster
                .backup_checkpoint(shard, dir.clone())
                .await
                .map_err(|e| format!("shard {shard}: {e}"))?
            else {
                continue;
            };
            let files = tokio::task::spawn_blocking(move || describe_files(&dir))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("shard {shard}: {e}"))?;
            shards.push(ShardBackup {
                shard,
                node: cluster.node_id(),
                applied_index: taken.applied_index,
                term: taken.term,
                files,
            });
        }
        let backup = NodeBackup {
            name: name.clone(),
            node: cluster.node_id(),
            shards_total: cluster.shards(),
            chunk_range_ns: cluster.shard_config().chunk_range.as_nanos() as u64,
            created_unix_ms,
            shards,
        };
        let manifest = partial.join(NODE_MANIFEST);
        let text = serde_json::to_vec_pretty(&backup).map_err(|e| e.to_string())?;
        std::fs::write(&manifest, text).map_err(|e| fail(e, &manifest))?;
        let done = root.join(&name);
        std::fs::rename(&partial, &done).map_err(|e| fail(e, &done))?;
        tracing::info!(name, shards = backup.shards.len(), "backup taken");
        Ok(backup)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

async fn list(state: web::Data<AppState>, backups: web::Data<Backups>) -> HttpResponse {
    if let Some(refused) = admin_refused(&state) {
        return refused;
    }
    let root = backups.root.clone();
    let found = web::block(move || -> std::io::Result<Vec<NodeBackup>> {
        let mut out = Vec::new();
        for name in backup_names(&root)? {
            let text = std::fs::read(root.join(&name).join(NODE_MANIFEST))?;
            if let Ok(b) = serde_json::from_slice(&text) {
                out.push(b);
            }
        }
        Ok(out)
    })
    .await;
    match found {
        Ok(Ok(list)) => HttpResponse::Ok().json(serde_json::json!({ "backups": list })),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[tracing::instrument(name = "backup_delete", skip_all, fields(name = %name))]
async fn remove(
    state: web::Data<AppState>,
    backups: web::Data<Backups>,
    name: web::Path<String>,
) -> HttpResponse {
    if let Some(refused) = admin_refused(&state) {
        return refused;
    }
    let name = name.into_inner();
    if !valid_name(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{name:?} is not a backup name (b<unix ms>-n<node>)"),
        );
    }
    let dir = backups.root.join(&name);
    match web::block(move || std::fs::remove_dir_all(dir)).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "deleted": name })),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no backup {name} on this node"),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[tracing::instrument(name = "backup_download", skip_all, fields(path = ?path))]
async fn download(
    state: web::Data<AppState>,
    backups: web::Data<Backups>,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    if let Some(refused) = admin_refused(&state) {
        return refused;
    }
    let (name, shard, file) = path.into_inner();
    let shard: Option<u32> = shard.parse().ok();
    let (Some(shard), true, true) = (
        shard,
        valid_name(&name),
        chronicle_cluster::snapshot::safe_name(&file),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected /api/v1/admin/backups/<backup name>/<shard number>/<file name>",
        );
    };
    let path = backups
        .root
        .join(&name)
        .join(format!("shard-{shard}"))
        .join(&file);
    let opened = web::block(move || {
        let f = std::fs::File::open(&path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        Ok((f, meta.len()))
    })
    .await;
    let (file, size) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no file {file} in shard {shard} of backup {name} on this node"),
            )
        }
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    // One piece in memory at a time, read on the blocking pool.
    let pieces = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let read = web::block(move || {
            let mut buf = vec![0u8; PIECE_BYTES];
            let n = file.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await;
        match read {
            Ok(Ok((_, buf))) if buf.is_empty() => None,
            Ok(Ok((file, buf))) => Some((Ok(Bytes::from(buf)), Some(file))),
            Ok(Err(e)) => Some((Err(e), None)),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(actix_web::body::SizedStream::new(size, pieces))
}

//! Moving a snapshot to a member over the bus, file by file.
//!
//! 1. The leader offers the snapshot's manifest (names, sizes, checksums).
//! 2. The member links the files it already holds with the same size and
//!    checksum (from its own current snapshot: SST files are immutable, so a
//!    member that installed from this leader before shares most of them) into
//!    a fresh directory of its own, and answers with the files it lacks.
//! 3. The leader streams those in chunks of one bus message each.
//! 4. On `done` the member checks every received file against the manifest,
//!    syncs them, and hands the directory to openraft, which installs it
//!    (state_machine.rs, snapshot.rs) and answers when it is installed.
//!
//! Every file operation runs on the blocking pool. Each transfer has its own
//! directory, so concurrent transfers never share a temporary file; one left
//! behind by a leader that went away is removed when a later offer finds it
//! idle for two minutes, or at the next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{Fatal, ReplicationClosed, StreamingError, Unreachable};
use openraft::raft::SnapshotResponse;
use openraft::{Raft, Snapshot, Vote};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, info, warn};

use crate::network::{BusConnection, WireReply, WireRequest, MAX_RPC_BYTES};
use crate::snapshot::{safe_name, Layout, Manifest, SnapshotFiles};
use crate::types::TypeConfig;
use crate::wire::WireVote;

/// File bytes per chunk message: under the bus limit with room for the envelope.
pub const CHUNK_BYTES: usize = MAX_RPC_BYTES - 4096;
/// How long an offer or a chunk may take.
const STEP_TTL: Duration = Duration::from_secs(30);
/// How long checking and installing a whole snapshot may take.
const INSTALL_TTL: Duration = Duration::from_secs(600);
/// A transfer nobody has continued for this long is abandoned.
const IDLE_TRANSFER: Duration = Duration::from_secs(120);
/// Transfers a member keeps at once (a new leader's offer replaces the oldest).
const MAX_TRANSFERS: usize = 2;
/// Files a manifest may list.
const MAX_FILES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransferFailure(String);

fn unreachable(why: impl std::fmt::Display) -> StreamingError<TypeConfig, Fatal<u64>> {
    StreamingError::Unreachable(Unreachable::new(&TransferFailure(why.to_string())))
}

/// Sends `snapshot` through `conn`, sending only the files the member lacks.
pub(crate) async fn send(
    conn: &BusConnection,
    vote: Vote<u64>,
    snapshot: SnapshotFiles,
    cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
    let started = Instant::now();
    let mut cancel = std::pin::pin!(cancel);
    macro_rules! step {
        ($request:expr, $ttl:expr) => {
            tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                reply = conn.transfer_call(&$request, $ttl) => reply?,
            }
        };
    }
    let offer = WireRequest::SnapshotOffer {
        vote: WireVote::from(&vote),
        manifest: snapshot.manifest.clone(),
    };
    let (transfer, wanted) = match step!(offer, STEP_TTL) {
        WireReply::SnapshotNeed { transfer, files } => (transfer, files),
        WireReply::Snapshot { vote } => return Ok(SnapshotResponse::new(vote.into())),
        other => {
            return Err(unreachable(format!(
                "unexpected reply to an offer: {other:?}"
            )))
        }
    };
    let files = &snapshot.manifest.files;
    // Every file is opened now: should a newer snapshot replace this one and
    // its directory go while the transfer runs, open files stay readable.
    // (tokio's file I/O runs on the blocking pool.)
    let mut opened = Vec::with_capacity(wanted.len());
    for &index in &wanted {
        let file = files
            .get(index as usize)
            .ok_or_else(|| unreachable(format!("the member asked for file {index}")))?;
        let path = snapshot.dir.join(&file.name);
        let reader = tokio::fs::File::open(&path)
            .await
            .map_err(|e| unreachable(format!("{}: {e}", path.display())))?;
        opened.push((index, file, path, reader));
    }
    let mut sent_bytes = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    for (index, file, path, mut reader) in opened {
        let mut offset = 0u64;
        while offset < file.size {
            reader
                .seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| unreachable(format!("{}: {e}", path.display())))?;
            let want = CHUNK_BYTES.min((file.size - offset) as usize);
            let n = reader
                .read(&mut buf[..want])
                .await
                .map_err(|e| unreachable(format!("{}: {e}", path.display())))?;
            if n == 0 {
                return Err(unreachable(format!(
                    "{} is shorter than its manifest says",
                    path.display()
                )));
            }
            let chunk = WireRequest::SnapshotChunk {
                transfer,
                file: index,
                offset,
                data: buf[..n].to_vec(),
            };
            match step!(chunk, STEP_TTL) {
                WireReply::SnapshotChunkStored => {}
                other => {
                    return Err(unreachable(format!(
                        "unexpected reply to a chunk: {other:?}"
                    )))
                }
            }
            offset += n as u64;
            sent_bytes += n as u64;
        }
    }
    let done = WireRequest::SnapshotDone {
        transfer,
        vote: WireVote::from(&vote),
    };
    let reply = match step!(done, INSTALL_TTL) {
        WireReply::Snapshot { vote } => SnapshotResponse::new(vote.into()),
        other => return Err(unreachable(format!("unexpected reply to done: {other:?}"))),
    };
    info!(
        snapshot = %snapshot.manifest.meta.snapshot_id,
        files = files.len(),
        sent_files = wanted.len(),
        total_bytes = snapshot.manifest.total_bytes(),
        sent_bytes,
        took = ?started.elapsed(),
        "snapshot sent"
    );
    Ok(reply)
}

/// One snapshot being received.
struct Transfer {
    dir: PathBuf,
    manifest: Manifest,
    /// Bytes received so far of each file still being sent.
    missing: HashMap<u32, u64>,
    touched: Instant,
}

/// A member's side of snapshot transfers, for one group.
pub struct SnapshotReceiver {
    layout: Arc<Layout>,
    transfers: parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Transfer>>>>,
    next: AtomicU64,
    stats: ReceiveStats,
}

/// What a member received, since it started.
#[derive(Debug, Default)]
pub struct ReceiveStats {
    /// Files offered, and of those found already held (linked, not sent).
    pub files_offered: AtomicU64,
    pub files_reused: AtomicU64,
    /// Bytes offered (whole snapshots) and bytes that had to be sent.
    pub bytes_offered: AtomicU64,
    pub bytes_received: AtomicU64,
    pub installed: AtomicU64,
}

fn error(why: impl std::fmt::Display) -> WireReply {
    WireReply::Error(why.to_string())
}

impl SnapshotReceiver {
    pub fn new(layout: Arc<Layout>) -> Self {
        Self {
            layout,
            transfers: parking_lot::Mutex::default(),
            next: AtomicU64::new(1),
            stats: ReceiveStats::default(),
        }
    }

    pub fn stats(&self) -> &ReceiveStats {
        &self.stats
    }

    /// Transfers in progress (for tests and metrics).
    pub fn in_progress(&self) -> usize {
        self.transfers.lock().len()
    }

    /// Drops transfers idle too long, and the oldest beyond the cap.
    fn reap(&self, room_for: usize) {
        let mut transfers = self.transfers.lock();
        let mut ages: Vec<(Instant, u64)> = transfers
            .iter()
            .filter_map(|(id, t)| t.try_lock().ok().map(|t| (t.touched, *id)))
            .collect();
        ages.sort();
        let over = (transfers.len() + room_for).saturating_sub(MAX_TRANSFERS);
        for (i, (touched, id)) in ages.into_iter().enumerate() {
            if i < over || touched.elapsed() > IDLE_TRANSFER {
                if let Some(t) = transfers.remove(&id) {
                    if let Ok(t) = t.try_lock() {
                        let dir = t.dir.clone();
                        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
                    }
                }
            }
        }
    }

    pub(crate) async fn offer(
        &self,
        raft: &Raft<TypeConfig>,
        vote: Vote<u64>,
        manifest: Manifest,
    ) -> WireReply {
        let mine = raft.metrics().borrow().vote;
        if vote < mine {
            return WireReply::Snapshot {
                vote: WireVote::from(&mine),
            };
        }
        if manifest.files.len() > MAX_FILES {
            return error(format!("a snapshot of {} files", manifest.files.len()));
        }
        let mut names = std::collections::HashSet::new();
        for f in &manifest.files {
            if !safe_name(&f.name) || !names.insert(f.name.as_str()) {
                return error(format!("bad snapshot file name {:?}", f.name));
            }
        }
        self.reap(1);
        let layout = self.layout.clone();
        let dir = layout.incoming_root().join(layout.unique("receive"));
        let prepared = {
            let (dir, manifest) = (dir.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || prepare(&layout, &dir, &manifest))
        };
        let missing = match prepared.await {
            Ok(Ok(missing)) => missing,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!("matched above"),
                };
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
                return error(why);
            }
        };
        let files: Vec<u32> = missing.iter().map(|(&i, _)| i).collect();
        let mut files = files;
        files.sort_unstable();
        let reused = manifest.files.len() - files.len();
        debug!(offered = manifest.files.len(), reused, "snapshot offer");
        let st = &self.stats;
        st.files_offered
            .fetch_add(manifest.files.len() as u64, Ordering::Relaxed);
        st.files_reused.fetch_add(reused as u64, Ordering::Relaxed);
        st.bytes_offered
            .fetch_add(manifest.total_bytes(), Ordering::Relaxed);
        let transfer = self.next.fetch_add(1, Ordering::Relaxed);
        self.transfers.lock().insert(
            transfer,
            Arc::new(tokio::sync::Mutex::new(Transfer {
                dir,
                manifest,
                missing,
                touched: Instant::now(),
            })),
        );
        WireReply::SnapshotNeed { transfer, files }
    }

    fn transfer(&self, id: u64) -> Option<Arc<tokio::sync::Mutex<Transfer>>> {
        self.transfers.lock().get(&id).cloned()
    }

    pub(crate) async fn chunk(&self, id: u64, file: u32, offset: u64, data: Vec<u8>) -> WireReply {
        let Some(transfer) = self.transfer(id) else {
            return error(format!("no snapshot transfer {id}"));
        };
        let mut t = transfer.lock().await;
        let Some(size) = t.manifest.files.get(file as usize).map(|f| f.size) else {
            return error(format!("no file {file} in transfer {id}"));
        };
        let Some(&received) = t.missing.get(&file) else {
            return error(format!("file {file} of transfer {id} was not asked for"));
        };
        if offset != received || received + data.len() as u64 > size {
            return error(format!(
                "chunk at {offset} of {} bytes: expected one at {received} within {size} bytes",
                data.len()
            ));
        }
        let path = t.dir.join(&t.manifest.files[file as usize].name);
        let written = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            f.write_all_at(&data, offset).map(|()| data.len() as u64)
        })
        .await;
        match written {
            Ok(Ok(n)) => {
                self.stats.bytes_received.fetch_add(n, Ordering::Relaxed);
                t.missing.insert(file, received + n);
                t.touched = Instant::now();
                WireReply::SnapshotChunkStored
            }
            Ok(Err(e)) => error(e),
            Err(e) => error(e),
        }
    }

    pub(crate) async fn done(
        &self,
        raft: &Raft<TypeConfig>,
        id: u64,
        vote: Vote<u64>,
    ) -> WireReply {
        let Some(transfer) = self.transfers.lock().remove(&id) else {
            return error(format!("no snapshot transfer {id}"));
        };
        let t = transfer.lock().await;
        let incomplete: Vec<&str> = t
            .missing
            .iter()
            .filter(|(&i, &got)| got != t.manifest.files[i as usize].size)
            .map(|(&i, _)| t.manifest.files[i as usize].name.as_str())
            .collect();
        let dir = t.dir.clone();
        let discard = move |dir: PathBuf| {
            tokio::task::spawn_blocking(move || {
                if dir.exists() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            })
        };
        if !incomplete.is_empty() {
            let why = format!("snapshot files not complete: {incomplete:?}");
            discard(dir);
            return error(why);
        }
        let manifest = t.manifest.clone();
        let received: Vec<u32> = t.missing.keys().copied().collect();
        drop(t);
        let checked = {
            let (dir, manifest) = (dir.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || {
                let fresh = Manifest {
                    meta: manifest.meta.clone(),
                    files: received
                        .iter()
                        .map(|&i| manifest.files[i as usize].clone())
                        .collect(),
                };
                crate::snapshot::verify_and_sync(&dir, &fresh)?;
                crate::snapshot::write_manifest(&dir, &manifest)
            })
            .await
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "received snapshot rejected");
                discard(dir);
                return error(e);
            }
            Err(e) => {
                discard(dir);
                return error(e);
            }
        }
        let snapshot = Snapshot {
            meta: manifest.meta.to_meta(),
            snapshot: Box::new(SnapshotFiles {
                dir: dir.clone(),
                manifest,
            }),
        };
        let reply = raft.install_full_snapshot(vote, snapshot).await;
        // Installed, the directory moved into place; refused or failed, it goes.
        let _ = discard(dir).await;
        match reply {
            Ok(r) => {
                self.stats.installed.fetch_add(1, Ordering::Relaxed);
                WireReply::Snapshot {
                    vote: WireVote::from(&r.vote),
                }
            }
            Err(e) => error(e),
        }
    }
}

/// Makes the transfer's directory and links into it the files this member
/// already holds (same name, size and checksum in its current snapshot);
/// answers the files still missing, each with 0 bytes received.
fn prepare(
    layout: &Layout,
    dir: &std::path::Path,
    manifest: &Manifest,
) -> Result<HashMap<u32, u64>, crate::ClusterError> {
    std::fs::create_dir_all(dir).map_err(|source| crate::ClusterError::Snapshot {
        path: dir.display().to_string(),
        source,
    })?;
    let current = layout.current()?;
    let mut missing = HashMap::new();
    for (i, f) in manifest.files.iter().enumerate() {
        if f.size == 0 {
            let path = dir.join(&f.name);
            std::fs::File::create(&path).map_err(|source| crate::ClusterError::Snapshot {
                path: path.display().to_string(),
                source,
            })?;
            continue;
        }
        let held = current.as_ref().is_some_and(|c| {
            c.manifest.files.iter().any(|mine| mine == f)
                && std::fs::hard_link(c.dir.join(&f.name), dir.join(&f.name)).is_ok()
        });
        if !held {
            missing.insert(i as u32, 0);
        }
    }
    Ok(missing)
}

//! Snapshots as directories of files: a RocksDB checkpoint (hard links to the
//! shard's immutable SST files, copies of the few small mutable ones) and a
//! manifest naming every file with its size and checksum.
//!
//! Layout under a group's `state/` directory:
//! * `STATE` — the live shard generation and the current snapshot's
//!   directory, switched together by one atomic rename;
//! * `shards/<generation>/` — the live shard (older generations are removed
//!   once a newer one is durable and named in `STATE`);
//! * `snapshots/<name>/` — the current snapshot, and the one before it while
//!   a transfer may still read it;
//! * `building/`, `incoming/` — work in progress: a snapshot being built, one
//!   being received. Each has its own uniquely named directory, and whatever
//!   is left there after a crash is removed at the next open.
//!
//! A crash at any step leaves `STATE` naming the old generation and snapshot
//! or the new ones; a directory `STATE` does not name is garbage.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chronicle_storage::{Shard, ShardConfig};
use openraft::{EmptyNode, SnapshotMeta};
use parking_lot::Mutex;
use rkyv::{Archive, Deserialize, Serialize};
use tracing::{info, warn};

use crate::wire::WireSnapshotMeta;
use crate::ClusterError;

/// The manifest's file name inside a snapshot directory.
pub const MANIFEST_FILE: &str = "SNAPSHOT-MANIFEST";
const STATE_FILE: &str = "STATE";

/// One file of a snapshot.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub name: String,
    pub size: u64,
    /// XXH3-128 of the contents.
    pub checksum: [u8; 16],
}

/// What a snapshot covers and the files that hold it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Manifest {
    pub meta: WireSnapshotMeta,
    pub files: Vec<SnapshotFile>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |t, f| t.saturating_add(f.size))
    }
}

/// A snapshot as openraft hands it around: a directory holding every file of
/// the manifest, complete and checked.
#[derive(Debug)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Which generation and snapshot are live (the `STATE` file).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
struct WireState {
    generation: u64,
    snapshot: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Snapshot {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(what: &'static str, why: impl std::fmt::Display) -> ClusterError {
    ClusterError::Corrupt {
        what,
        why: why.to_string(),
    }
}

/// Crash points for the crash tests (`failpoints` feature); inert otherwise.
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name)
    };
}

/// A name a peer may give us for a file or a snapshot: one plain path
/// component, nothing that could reach outside the directory.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(MANIFEST_FILE)
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RocksDB never rewrites an SST file: those can be shared by hard links.
/// Everything else (MANIFEST, CURRENT, OPTIONS, WAL) may be written to by a
/// shard opened on it, so it is copied.
fn immutable(name: &str) -> bool {
    name.ends_with(".sst")
}

pub fn fsync_dir(dir: &Path) -> Result<(), ClusterError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// Size and XXH3-128 of a file, read in large blocks.
pub fn checksum_file(path: &Path) -> Result<(u64, [u8; 16]), ClusterError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.digest128().to_le_bytes()))
}

/// Puts `src` at `dst`: a hard link for an immutable file (a copy when the
/// link fails), a synced copy otherwise.
fn link_or_copy(src: &Path, dst: &Path, name: &str) -> Result<(), ClusterError> {
    if immutable(name) && std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map_err(io(dst))?;
    std::fs::File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(io(dst))
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ClusterError> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    let target = dir.join(name);
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    fsync_dir(dir)
}

pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ClusterError> {
    let bytes = chronicle_bus::envelope::encode(manifest).map_err(|e| corrupt("manifest", e))?;
    write_atomically(dir, MANIFEST_FILE, &bytes)
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, ClusterError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    chronicle_bus::envelope::decode(&bytes).map_err(|e| corrupt("manifest", e))
}

/// The manifest of a checkpoint in `dir`. Checksums of SST files the previous
/// snapshot shares (the same inode) are taken from its manifest instead of
/// reading the file again: a snapshot reads only what changed since the last.
fn manifest_of(
    dir: &Path,
    meta: WireSnapshotMeta,
    previous: Option<&SnapshotFiles>,
) -> Result<Manifest, ClusterError> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST_FILE || !entry.file_type().map_err(io(dir))?.is_file() {
            continue;
        }
        let path = entry.path();
        let stat = entry.metadata().map_err(io(&path))?;
        let known = previous.filter(|_| immutable(&name)).and_then(|p| {
            let f = p.manifest.files.iter().find(|f| f.name == name)?;
            let theirs = std::fs::metadata(p.dir.join(&name)).ok()?;
            (theirs.ino() == stat.ino() && theirs.dev() == stat.dev() && f.size == stat.len())
                .then_some(f.checksum)
        });
        let (size, checksum) = match known {
            Some(sum) => (stat.len(), sum),
            None => checksum_file(&path)?,
        };
        files.push(SnapshotFile {
            name,
            size,
            checksum,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Manifest { meta, files })
}

/// Checks that `dir` holds every file of `manifest` with its size and
/// checksum, and makes them durable.
pub fn verify_and_sync(dir: &Path, manifest: &Manifest) -> Result<(), ClusterError> {
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let (size, sum) = checksum_file(&path)?;
        if size != f.size || sum != f.checksum {
            return Err(corrupt(
                "snapshot file",
                format!(
                    "{}: {size} bytes with checksum {:02x?}, the manifest says {} bytes, {:02x?}",
                    f.name, sum, f.size, f.checksum
                ),
            ));
        }
        std::fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(io(&path))?;
    }
    fsync_dir(dir)
}

/// A group's `state/` directory: which generation and snapshot are live, and
/// the only way to change that.
pub struct Layout {
    dir: PathBuf,
    live: Mutex<WireState>,
    /// Makes work directories unique within this process; the process start
    /// time in the name makes them unique across restarts.
    seq: AtomicU64,
    epoch: u128,
}

/// What a finished build became.
pub enum Built {
    /// Now the current snapshot.
    Current(SnapshotFiles),
    /// Not newer than the current snapshot, or outdated by an install that
    /// happened meanwhile: the current one stands.
    Superseded,
}

impl Layout {
    /// Opens the layout, creating it, and removes whatever `STATE` does not
    /// name (leftovers of a crash or of an older generation).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let dir = dir.into();
        for sub in ["shards", "snapshots", "building", "incoming"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        let state_path = dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => chronicle_bus::envelope::decode::<WireState>(&bytes)
                .map_err(|e| corrupt("STATE", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = legacy_state(&dir)?;
                let bytes =
                    chronicle_bus::envelope::encode(&state).map_err(|e| corrupt("STATE", e))?;
                write_atomically(&dir, STATE_FILE, &bytes)?;
                // Only now that STATE is durable: the old files said the same.
                for old in ["snapshot.tar", "snapshot.meta", "CURRENT"] {
                    let _ = std::fs::remove_file(dir.join(old));
                }
                state
            }
            Err(e) => return Err(io(&state_path)(e)),
        };
        let layout = Self {
            dir,
            live: Mutex::new(state),
            seq: AtomicU64::new(0),
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        };
        layout.remove_unnamed(false)?;
        Ok(layout)
    }

    pub fn generation(&self) -> u64 {
        self.live.lock().generation
    }

    pub fn shard_dir(&self, generation: u64) -> PathBuf {
        self.dir.join("shards").join(generation.to_string())
    }

    fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.dir.join("snapshots").join(name)
    }

    pub fn incoming_root(&self) -> PathBuf {
        self.dir.join("incoming")
    }

    /// A fresh, unique name for a work directory.
    pub fn unique(&self, stem: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{stem}.{:x}.{n}", self.epoch)
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Result<Option<SnapshotFiles>, ClusterError> {
        let name = self.live.lock().snapshot.clone();
        let Some(name) = name else {
            return Ok(None);
        };
        let dir = self.snapshot_dir(&name);
        let manifest = read_manifest(&dir)?;
        Ok(Some(SnapshotFiles { dir, manifest }))
    }

    /// Removes what `STATE` does not name. Work directories go only at open
    /// (`live_work: false`); later, a build or a transfer may be using them.
    fn remove_unnamed(&self, live_work: bool) -> Result<(), ClusterError> {
        // Held throughout: an install filling a new generation under the lock
        // must not see its directories listed as garbage.
        let live = self.live.lock();
        let state = live.clone();
        let keep_shard = state.generation.to_string();
        let mut subs = vec!["shards", "snapshots"];
        if !live_work {
            subs.extend(["building", "incoming"]);
        }
        for sub in subs {
            let root = self.dir.join(sub);
            let mut names: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
            for entry in std::fs::read_dir(&root).map_err(io(&root))? {
                let entry = entry.map_err(io(&root))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = match sub {
                    "shards" => name == keep_shard,
                    "snapshots" => state.snapshot.as_deref() == Some(name.as_str()),
                    _ => false,
                };
                if !keep {
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    names.push((modified, entry.path()));
                }
            }
            // While running, the newest previous snapshot stays: a transfer
            // that started from it may still be reading it.
            if live_work && sub == "snapshots" {
                names.sort();
                names.pop();
            }
            for (_, path) in names {
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(e) = removed {
                    warn!(path = %path.display(), error = %e, "could not remove an old snapshot file");
                }
            }
        }
        Ok(())
    }

    fn switch(&self, live: &mut WireState, next: WireState) -> Result<(), ClusterError> {
        let bytes = chronicle_bus::envelope::encode(&next).map_err(|e| corrupt("STATE", e))?;
        write_atomically(&self.dir, STATE_FILE, &bytes)?;
        *live = next;
        Ok(())
    }

    /// Builds a snapshot of `shard` (generation `generation`) covering at most
    /// `applied`: `meta_at` turns the index the checkpoint holds everything up
    /// to (`None`: nothing) into the snapshot's metadata, or `None` when that
    /// is not newer than the current snapshot.
    pub fn build(
        &self,
        shard: &Shard,
        generation: u64,
        applied: Option<u64>,
        meta_at: impl FnOnce(Option<u64>) -> Option<SnapshotMeta<u64, EmptyNode>>,
    ) -> Result<Built, ClusterError> {
        let name = self.unique("build");
        let building = self.dir.join("building").join(&name);
        match self.build_in(shard, generation, applied, meta_at, &name, &building) {
            Ok(built) => Ok(built),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&building);
                // An install replaced the shard meanwhile (and removed its
                // files): the build is moot, not a failure.
                if self.generation() != generation {
                    Ok(Built::Superseded)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn build_in(
        &self,
        shard: &Shard,
        generation: u64,
        applied: Option<u64>,
        meta_at: impl FnOnce(Option<u64>) -> Option<SnapshotMeta<u64, EmptyNode>>,
        name: &str,
        building: &Path,
    ) -> Result<Built, ClusterError> {
        let frontier = shard.checkpoint_durable(building)?;
        crash_point!("snapshot-build-checkpointed");
        let covered = match frontier {
            chronicle_storage::DurableFrontier::Everything => applied,
            chronicle_storage::DurableFrontier::UpTo(i) => applied.map(|a| a.min(i)),
        };
        let discard = |building: &Path| {
            let _ = std::fs::remove_dir_all(building);
        };
        let Some(meta) = meta_at(covered) else {
            discard(building);
            return Ok(Built::Superseded);
        };
        let previous = self.current()?;
        let manifest = manifest_of(
            building,
            WireSnapshotMeta::from_meta(&meta),
            previous.as_ref(),
        )?;
        write_manifest(building, &manifest)?;
        crash_point!("snapshot-build-manifested");
        let mut live = self.live.lock();
        if live.generation != generation {
            // An install replaced the shard this was taken from.
            drop(live);
            discard(building);
            return Ok(Built::Superseded);
        }
        let target = self.snapshot_dir(name);
        std::fs::rename(building, &target).map_err(io(&target))?;
        fsync_dir(&self.dir.join("snapshots"))?;
        crash_point!("snapshot-build-placed");
        let next = WireState {
            generation,
            snapshot: Some(name.to_string()),
        };
        self.switch(&mut live, next)?;
        crash_point!("snapshot-build-switched");
        drop(live);
        self.remove_unnamed(true)?;
        info!(
            files = manifest.files.len(),
            bytes = manifest.total_bytes(),
            last = ?meta.last_log_id,
            "snapshot built"
        );
        Ok(Built::Current(SnapshotFiles {
            dir: target,
            manifest,
        }))
    }

    /// Makes `snapshot` (complete and checked) the live state: a new shard
    /// generation opened on its files, and the current snapshot. Returns the
    /// new shard and its generation.
    pub fn install(
        &self,
        snapshot: SnapshotFiles,
        config: ShardConfig,
    ) -> Result<(Shard, u64), ClusterError> {
        let SnapshotFiles { dir: src, manifest } = snapshot;
        let mut live = self.live.lock();
        let next = live.generation + 1;
        let shard_dir = self.shard_dir(next);
        if shard_dir.exists() {
            std::fs::remove_dir_all(&shard_dir).map_err(io(&shard_dir))?;
        }
        std::fs::create_dir_all(&shard_dir).map_err(io(&shard_dir))?;
        for f in &manifest.files {
            link_or_copy(&src.join(&f.name), &shard_dir.join(&f.name), &f.name)?;
        }
        fsync_dir(&shard_dir)?;
        fsync_dir(&self.dir.join("shards"))?;
        crash_point!("snapshot-install-linked");
        // Our own copy of the snapshot, to serve to others: a received one
        // moves in, another's (a local handover) is linked in.
        let name = self.unique("installed");
        let target = self.snapshot_dir(&name);
        if src.parent() == Some(self.incoming_root().as_path()) {
            std::fs::rename(&src, &target).map_err(io(&target))?;
        } else {
            let tmp = self.dir.join("building").join(&name);
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            for f in &manifest.files {
                link_or_copy(&src.join(&f.name), &tmp.join(&f.name), &f.name)?;
            }
            write_manifest(&tmp, &manifest)?;
            std::fs::rename(&tmp, &target).map_err(io(&target))?;
        }
        fsync_dir(&self.dir.join("snapshots"))?;
        crash_point!("snapshot-install-placed");
        let shard = match Shard::open(&shard_dir, config) {
            Ok(shard) => shard,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&shard_dir);
                let _ = std::fs::remove_dir_all(&target);
                return Err(e.into());
            }
        };
        crash_point!("snapshot-install-opened");
        let state = WireState {
            generation: next,
            snapshot: Some(name),
        };
        self.switch(&mut live, state)?;
        crash_point!("snapshot-install-switched");
        drop(live);
        // Readers may still hold the old shard; its open files outlive the unlink.
        self.remove_unnamed(true)?;
        Ok((shard, next))
    }
}

/// The state of a directory written before `STATE` existed: `CURRENT` names
/// the generation, `snapshot.tar` + `snapshot.meta` the snapshot, which is
/// unpacked into a snapshot directory.
fn legacy_state(dir: &Path) -> Result<WireState, ClusterError> {
    let current = dir.join("CURRENT");
    let generation = match std::fs::read_to_string(&current) {
        Ok(text) => text.trim().parse().map_err(|e| corrupt("CURRENT", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(&current)(e)),
    };
    let (tar, meta) = (dir.join("snapshot.tar"), dir.join("snapshot.meta"));
    let snapshot = match std::fs::read(&meta) {
        Ok(bytes) => {
            let meta: WireSnapshotMeta =
                chronicle_bus::envelope::decode(&bytes).map_err(|e| corrupt("snapshot meta", e))?;
            let name = "legacy".to_string();
            let target = dir.join("snapshots").join(&name);
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(io(&target))?;
            }
            let file = std::fs::File::open(&tar).map_err(io(&tar))?;
            tar::Archive::new(file)
                .unpack(&target)
                .map_err(io(&target))?;
            let manifest = manifest_of(&target, meta, None)?;
            write_manifest(&target, &manifest)?;
            fsync_dir(&dir.join("snapshots"))?;
            Some(name)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&meta)(e)),
    };
    Ok(WireState {
        generation,
        snapshot,
    })
}

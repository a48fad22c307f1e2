//! Simulated power cuts: what a node's process made durable is journalled
//! by the `chronicle-powercut` `LD_PRELOAD` library (fsync, fdatasync,
//! rename, unlink, ftruncate); after SIGKILL, [`cut`] drops everything else
//! from the node's data directory: each file is truncated to the length its
//! last sync covered, and files created since the process started and never
//! synced are deleted. Then the node restarts on what a machine that lost
//! power would have found on its disk.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ChaosError;

/// A file's identity: device and inode (renames and hard links keep it).
pub type FileId = (u64, u64);

/// What is durable: each file's length that survives a power cut.
pub type Durable = BTreeMap<FileId, u64>;

/// Every regular file under `dir` with its length: what is durable when a
/// process starts on a directory nobody wrote unsynced data to (its first
/// start, or right after a cut).
pub fn baseline(dir: &Path) -> Result<Durable, ChaosError> {
    let mut out = BTreeMap::new();
    walk(dir, &mut |_, meta| {
        out.insert((meta.dev(), meta.ino()), meta.len());
    })?;
    Ok(out)
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path, &std::fs::Metadata)) -> Result<(), ChaosError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ChaosError::Process(format!("{}: {e}", dir.display()))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ChaosError::Process(format!("{}: {e}", dir.display())))?;
        let meta = std::fs::symlink_metadata(entry.path())
            .map_err(|e| ChaosError::Process(format!("{}: {e}", entry.path().display())))?;
        if meta.is_dir() {
            walk(&entry.path(), f)?;
        } else if meta.is_file() {
            f(&entry.path(), &meta);
        }
    }
    Ok(())
}

/// What a cut dropped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CutReport {
    pub files_truncated: usize,
    pub files_deleted: usize,
    pub bytes_dropped: u64,
}

fn file_id(s: &str) -> Option<FileId> {
    let (dev, ino) = s.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// What is durable after a process that started with `baseline` wrote the
/// journal `journal`.
pub fn durable(baseline: &Durable, journal: &str) -> Result<Durable, ChaosError> {
    let mut durable = baseline.clone();
    for (n, line) in journal.lines().enumerate() {
        let bad = || ChaosError::Parse {
            line: n + 1,
            reason: format!("powercut journal: {line:?}"),
        };
        let mut parts = line.splitn(4, ' ');
        let kind = parts.next().ok_or_else(bad)?;
        let id = parts.next().and_then(file_id).ok_or_else(bad)?;
        match kind {
            "S" | "T" => {
                let len: u64 = parts.next().and_then(|l| l.parse().ok()).ok_or_else(bad)?;
                if kind == "S" {
                    durable.insert(id, len);
                } else if let Some(d) = durable.get_mut(&id) {
                    *d = (*d).min(len);
                }
            }
            "U" => {
                durable.remove(&id);
            }
            _ => return Err(bad()),
        }
    }
    Ok(durable)
}

/// Reads a journal (empty when the process never wrote one).
pub fn read_journal(journal: &Path) -> Result<String, ChaosError> {
    match std::fs::read_to_string(journal) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(ChaosError::Process(format!("{}: {e}", journal.display()))),
    }
}

/// Drops from `dir` what was not durable (`durable`): call it after the
/// process was killed. Each file is cut to its durable length; a file with
/// none is deleted.
pub fn cut(dir: &Path, durable: &Durable) -> Result<CutReport, ChaosError> {
    let mut files = Vec::new();
    walk(dir, &mut |path, meta| {
        files.push((path.to_path_buf(), (meta.dev(), meta.ino()), meta.len()))
    })?;
    let mut report = CutReport::default();
    let io = |p: &Path, e: std::io::Error| ChaosError::Process(format!("{}: {e}", p.display()));
    for (path, id, len) in files {
        match durable.get(&id) {
            Some(&keep) if len > keep => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(keep))
                    .map_err(|e| io(&path, e))?;
                report.files_truncated += 1;
                report.bytes_dropped += len - keep;
            }
            Some(_) => {}
            None => {
                std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                report.files_deleted += 1;
                report.bytes_dropped += len;
            }
        }
    }
    Ok(report)
}

/// `libchronicle_powercut.so` next to `exe` (where cargo builds both), if there.
pub fn find_library(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    [
        dir.join("libchronicle_powercut.so"),
        dir.join("../libchronicle_powercut.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(path: &Path) -> String {
        let m = std::fs::metadata(path).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    }

    #[test]
    fn the_journal_decides_what_survives() {
        let dir =
            std::env::temp_dir().join(format!("chronicle-powercut-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let keep = dir.join("old");
        let wal = dir.join("wal");
        std::fs::write(&keep, b"durable").unwrap();
        std::fs::write(&wal, b"0123").unwrap();
        let base = baseline(&dir).unwrap();
        // After the start: the WAL grows and is synced at 6 of 10 bytes; a
        // fresh file is never synced; a synced file is renamed with its
        // directory and hard-linked; an unlinked file's inode is gone.
        std::fs::write(&wal, b"0123456789").unwrap();
        let fresh = dir.join("fresh");
        std::fs::write(&fresh, b"lost").unwrap();
        let sst = dir.join("a/sst");
        std::fs::write(&sst, b"table").unwrap();
        let journal = format!("S {} 6 wal\nS {} 5 sst\n", id(&wal), id(&sst));
        std::fs::rename(dir.join("a"), dir.join("b")).unwrap();
        std::fs::hard_link(dir.join("b/sst"), dir.join("linked")).unwrap();
        let d = durable(&base, &journal).unwrap();
        let report = cut(&dir, &d).unwrap();
        assert_eq!(std::fs::read(&keep).unwrap(), b"durable");
        assert_eq!(std::fs::read(&wal).unwrap(), b"012345");
        assert!(!fresh.exists());
        assert_eq!(std::fs::read(dir.join("b/sst")).unwrap(), b"table");
        assert_eq!(std::fs::read(dir.join("linked")).unwrap(), b"table");
        assert_eq!((report.files_truncated, report.files_deleted), (1, 1));
        assert_eq!(report.bytes_dropped, 4 + 4);
        // The next process starts from what survived; unlinking drops it.
        let gone = durable(&d, &format!("U {} old\n", id(&keep))).unwrap();
        assert!(!gone.contains_key(&{
            let m = std::fs::metadata(&keep).unwrap();
            (m.dev(), m.ino())
        }));
        assert!(durable(&BTreeMap::new(), "X nonsense").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}

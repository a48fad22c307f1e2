//! Simulated power cuts: what a node's process made durable is journalled
//! by the `chronicle-powercut` `LD_PRELOAD` library (fsync, fdatasync,
//! rename, unlink, ftruncate); after SIGKILL, [`cut`] drops everything else
//! from the node's data directory: each file is truncated to the length its
//! last sync covered, and files created since the process started and never
//! synced are deleted. Then the node restarts on what a machine that lost
//! power would have found on its disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ChaosError;

/// Every regular file under `dir` with its length: what is durable when a
/// process starts (the previous one stopped cleanly or was cut already).
pub fn baseline(dir: &Path) -> Result<BTreeMap<PathBuf, u64>, ChaosError> {
    let mut out = BTreeMap::new();
    walk(dir, &mut |path, len| {
        out.insert(path.to_path_buf(), len);
    })?;
    Ok(out)
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path, u64)) -> Result<(), ChaosError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ChaosError::Process(format!("{}: {e}", dir.display()))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ChaosError::Process(format!("{}: {e}", dir.display())))?;
        let meta = entry
            .metadata()
            .map_err(|e| ChaosError::Process(format!("{}: {e}", entry.path().display())))?;
        if meta.is_dir() {
            walk(&entry.path(), f)?;
        } else if meta.is_file() {
            f(&entry.path(), meta.len());
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

/// The durable length of every file, from `baseline` and the journal's lines.
pub fn durable(
    baseline: &BTreeMap<PathBuf, u64>,
    journal: &str,
) -> Result<BTreeMap<PathBuf, u64>, ChaosError> {
    let mut durable = baseline.clone();
    for (n, line) in journal.lines().enumerate() {
        let bad = || ChaosError::Parse {
            line: n + 1,
            reason: format!("powercut journal: {line:?}"),
        };
        let (kind, rest) = line.split_once(' ').ok_or_else(bad)?;
        match kind {
            "S" | "T" => {
                let (len, path) = rest.split_once(' ').ok_or_else(bad)?;
                let len: u64 = len.parse().map_err(|_| bad())?;
                let path = PathBuf::from(path);
                if kind == "S" {
                    durable.insert(path, len);
                } else if let Some(d) = durable.get_mut(&path) {
                    *d = (*d).min(len);
                }
            }
            "R" => {
                let (old, new) = rest.split_once('\t').ok_or_else(bad)?;
                match durable.remove(Path::new(old)) {
                    Some(len) => {
                        durable.insert(PathBuf::from(new), len);
                    }
                    None => {
                        durable.remove(Path::new(new));
                    }
                }
            }
            "U" => {
                durable.remove(Path::new(rest));
            }
            _ => return Err(bad()),
        }
    }
    Ok(durable)
}

/// Drops from `dir` what the process whose journal is `journal` had not
/// made durable since it started with `baseline`. Call it after the process
/// was killed.
pub fn cut(
    dir: &Path,
    baseline: &BTreeMap<PathBuf, u64>,
    journal: &Path,
) -> Result<CutReport, ChaosError> {
    let text = match std::fs::read_to_string(journal) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ChaosError::Process(format!("{}: {e}", journal.display()))),
    };
    let durable = durable(baseline, &text)?;
    let mut files = Vec::new();
    walk(dir, &mut |path, len| files.push((path.to_path_buf(), len)))?;
    let mut report = CutReport::default();
    let io = |p: &Path, e: std::io::Error| ChaosError::Process(format!("{}: {e}", p.display()));
    for (path, len) in files {
        match durable.get(&path) {
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

    #[test]
    fn the_journal_decides_what_survives() {
        let dir = tempfile_dir();
        let keep = dir.join("old");
        let grown = dir.join("wal");
        let fresh = dir.join("fresh");
        let renamed_tmp = dir.join("tmp");
        let renamed = dir.join("CURRENT");
        std::fs::write(&keep, b"durable").unwrap();
        std::fs::write(&grown, b"0123").unwrap();
        let base = baseline(&dir).unwrap();
        // After the start: the WAL grows and is synced at 6 of 10 bytes, a
        // fresh file is never synced, a temp file is synced and renamed.
        std::fs::write(&grown, b"0123456789").unwrap();
        std::fs::write(&fresh, b"lost").unwrap();
        std::fs::write(&renamed, b"MANIFEST-2").unwrap();
        let text = format!(
            "S 6 {}\nS 10 {}\nR {}\t{}\n",
            grown.display(),
            renamed_tmp.display(),
            renamed_tmp.display(),
            renamed.display()
        );
        let outside = std::env::temp_dir().join(format!("pc-journal-{}", std::process::id()));
        std::fs::write(&outside, text).unwrap();
        let report = cut(&dir, &base, &outside).unwrap();
        std::fs::remove_file(&outside).ok();
        assert_eq!(std::fs::read(&keep).unwrap(), b"durable");
        assert_eq!(std::fs::read(&grown).unwrap(), b"012345");
        assert!(!fresh.exists());
        assert_eq!(std::fs::read(&renamed).unwrap(), b"MANIFEST-2");
        assert_eq!((report.files_truncated, report.files_deleted), (1, 1));
        assert_eq!(report.bytes_dropped, 4 + 4);
        std::fs::remove_dir_all(&dir).ok();
        assert!(durable(&BTreeMap::new(), "X nonsense").is_err());
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chronicle-powercut-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

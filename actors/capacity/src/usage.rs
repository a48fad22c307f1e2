//! What the node uses, sampled from the operating system and its data
//! directory: disk bytes by kind, the file system's free and total bytes,
//! resident memory and its limit, open files. The collector writes them
//! as `chronicle_self_*` series.

use std::collections::BTreeMap;
use std::path::Path;

/// Directory entries one sample visits at most (a data directory holds
/// RocksDB files: thousands, not millions).
const MAX_ENTRIES: usize = 1_000_000;

/// One sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Bytes under the data directory by place: a shard (`None`: outside
    /// every shard) and a kind: `data` (the shard's database), `raft_log`,
    /// `snapshots` (made, being made, or being received), `other`.
    pub disk: BTreeMap<(Option<u32>, &'static str), u64>,
    /// Of the file system holding the data directory.
    pub disk_free: Option<u64>,
    pub disk_size: Option<u64>,
    pub memory_rss: Option<u64>,
    /// The cgroup's memory limit, else the machine's memory.
    pub memory_limit: Option<u64>,
    pub open_files: Option<u64>,
}

/// The kind of a path under the data directory, by its place:
/// `shard-<n>/raft-log/...`, `shard-<n>/state/{snapshots,incoming,building}/...`,
/// `shard-<n>/state/shards/...`.
pub fn kind_of(relative: &Path) -> &'static str {
    let parts: Vec<&str> = relative
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    match parts.as_slice() {
        [shard, "raft-log", ..] if shard.starts_with("shard-") => "raft_log",
        [shard, "state", "snapshots" | "incoming" | "building", ..]
            if shard.starts_with("shard-") =>
        {
            "snapshots"
        }
        [shard, "state", "shards", ..] if shard.starts_with("shard-") => "data",
        _ => "other",
    }
}

/// The shard a path under the data directory belongs to (`shard-<n>/...`).
pub fn shard_of(relative: &Path) -> Option<u32> {
    relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .strip_prefix("shard-")?
        .parse()
        .ok()
}

/// Bytes under `root` by shard and kind (files only; what cannot be read
/// is skipped). Every shard directory found has each of its kinds, at 0
/// when empty.
pub fn disk_by_kind(root: &Path) -> BTreeMap<(Option<u32>, &'static str), u64> {
    let mut out: BTreeMap<(Option<u32>, &'static str), u64> =
        BTreeMap::from([((None, "other"), 0)]);
    if let Ok(entries) = std::fs::read_dir(root) {
        for shard in entries
            .flatten()
            .filter_map(|e| shard_of(Path::new(&e.file_name())))
        {
            for kind in ["data", "raft_log", "snapshots"] {
                out.insert((Some(shard), kind), 0);
            }
        }
    }
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_ENTRIES {
                return out;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                let kind = kind_of(relative);
                let shard = if kind == "other" {
                    None
                } else {
                    shard_of(relative)
                };
                *out.entry((shard, kind)).or_default() += meta.len();
            }
        }
    }
    out
}

/// Free and total bytes of the file system holding `path`.
pub fn file_system(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `stat` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((
        (stat.f_bavail as u64).saturating_mul(block),
        (stat.f_blocks as u64).saturating_mul(block),
    ))
}

/// A `<name>: <n> kB` line of a /proc file, in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// The memory this process may use: its cgroup's limit (v2, then v1),
/// else the machine's.
fn memory_limit() -> Option<u64> {
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = text.trim().parse::<u64>() {
                // v1 reports "no limit" as a huge number.
                if v < (1 << 60) {
                    return Some(v);
                }
            }
        }
    }
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// This process's resident memory, bytes (Linux).
pub fn memory_rss() -> Option<u64> {
    kb_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// Samples everything for a node whose data lives in `data_dir`.
pub fn sample(data_dir: &Path) -> Usage {
    let (disk_free, disk_size) = match file_system(data_dir) {
        Some((free, size)) => (Some(free), Some(size)),
        None => (None, None),
    };
    Usage {
        disk: disk_by_kind(data_dir),
        disk_free,
        disk_size,
        memory_rss: memory_rss(),
        memory_limit: memory_limit(),
        open_files: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_sorted_into_kinds() {
        assert_eq!(
            kind_of(Path::new("shard-0/raft-log/000004.log")),
            "raft_log"
        );
        assert_eq!(
            kind_of(Path::new("shard-3/state/snapshots/s1/a.sst")),
            "snapshots"
        );
        assert_eq!(kind_of(Path::new("shard-3/state/incoming/x")), "snapshots");
        assert_eq!(
            kind_of(Path::new("shard-1/state/shards/7/000010.sst")),
            "data"
        );
        assert_eq!(kind_of(Path::new("cluster.json")), "other");
        assert_eq!(kind_of(Path::new("backups/b1/x")), "other");
    }

    #[test]
    fn a_directory_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, n: usize| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, vec![0u8; n]).unwrap();
        };
        write("shard-0/raft-log/1.log", 1000);
        write("shard-0/state/shards/0/1.sst", 5000);
        write("shard-0/state/snapshots/s/1.sst", 300);
        write("shard-2/raft-log/1.log", 10);
        write("cluster.json", 7);
        let disk = disk_by_kind(dir.path());
        assert_eq!(disk[&(Some(0), "raft_log")], 1000);
        assert_eq!(disk[&(Some(0), "data")], 5000);
        assert_eq!(disk[&(Some(0), "snapshots")], 300);
        assert_eq!(disk[&(Some(2), "raft_log")], 10);
        assert_eq!(disk[&(Some(2), "data")], 0);
        assert_eq!(disk[&(None, "other")], 7);
        assert_eq!(disk.len(), 7);
        let usage = sample(dir.path());
        let (free, size) = (usage.disk_free.unwrap(), usage.disk_size.unwrap());
        assert!(free <= size && size > 0);
        assert!(usage.memory_rss.unwrap() > 0);
        assert!(usage.memory_limit.unwrap() >= usage.memory_rss.unwrap());
        assert!(usage.open_files.unwrap() > 0);
    }

    #[test]
    fn proc_fields_read_in_bytes() {
        let text = "Name:\tx\nVmRSS:\t  2048 kB\nThreads: 3\n";
        assert_eq!(kb_field(text, "VmRSS:"), Some(2 << 20));
        assert_eq!(kb_field(text, "VmSwap:"), None);
    }
}

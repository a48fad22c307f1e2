//! An `LD_PRELOAD` library that journals what a process made durable, so a
//! chaos run can simulate a power cut: SIGKILL keeps the page cache and
//! proves nothing about fsync, so after killing the process the harness
//! (`chronicle_chaos::powercut`) replays this journal and truncates every
//! file to the length its last `fsync`/`fdatasync` covered, deleting files
//! never synced.
//!
//! With `CHRONICLE_POWERCUT_JOURNAL` set, each call below is passed on to
//! libc and, when it succeeded on a file under `CHRONICLE_POWERCUT_DIR`,
//! one line is appended to the journal with one raw `write(2)` before the
//! call returns (so the journal is never behind what the process was told).
//! Files are named by device and inode (`<dev>:<ino>`), which renames,
//! directory renames and hard links do not change; the path follows for
//! people reading the journal:
//!
//! * `S <dev>:<ino> <len> <path>`: `fsync`/`fdatasync` made `<len>` bytes
//!   durable (the length taken before the sync: what was written by then);
//! * `T <dev>:<ino> <len> <path>`: `ftruncate`/`truncate` to `<len>`;
//! * `U <dev>:<ino> <path>`: the last name of a file was unlinked.
//!
//! What it does not model: the durability of directory entries (a created
//! or renamed file is taken to exist once its data is synced), truncation
//! by `open(O_TRUNC)` (a rewritten file keeps its unsynced new contents),
//! writes inside the synced part of a file (an overwrite there is kept),
//! and `mmap`.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

struct Journal {
    fd: c_int,
    dir: Vec<u8>,
}

fn journal() -> Option<&'static Journal> {
    static JOURNAL: OnceLock<Option<Journal>> = OnceLock::new();
    JOURNAL
        .get_or_init(|| {
            let path = std::env::var_os("CHRONICLE_POWERCUT_JOURNAL")?;
            let dir = std::env::var_os("CHRONICLE_POWERCUT_DIR")?;
            let path = std::ffi::CString::new(path.into_encoded_bytes()).ok()?;
            // SAFETY: a NUL-terminated path; the flags open (or create) a
            // file this process only appends to.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
                    0o644,
                )
            };
            (fd >= 0).then(|| Journal {
                fd,
                dir: dir.into_encoded_bytes(),
            })
        })
        .as_ref()
}

fn record(line: &[u8]) {
    if let Some(j) = journal() {
        // SAFETY: writes `line` to the journal's descriptor. One write(2)
        // with O_APPEND to a regular file lands whole, so lines of threads
        // do not interleave; a short write (a full disk) is finished.
        let mut rest = line;
        while !rest.is_empty() {
            let n = unsafe { libc::write(j.fd, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }
}

fn watched(path: &[u8]) -> bool {
    journal().is_some_and(|j| path.starts_with(&j.dir))
}

/// The path of an open descriptor.
fn fd_path(fd: c_int) -> Option<Vec<u8>> {
    let link = format!("/proc/self/fd/{fd}\0");
    let mut buf = vec![0u8; 4096];
    // SAFETY: `link` is NUL-terminated; `buf` has the length passed.
    let n = unsafe { libc::readlink(link.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    (n > 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

/// An absolute path for `path` relative to `dirfd` (or the working directory).
fn resolve(dirfd: c_int, path: *const c_char) -> Option<Vec<u8>> {
    if path.is_null() {
        return None;
    }
    // SAFETY: libc was given this pointer as a NUL-terminated path.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    if p.starts_with(b"/") {
        return Some(p.to_vec());
    }
    let mut base = if dirfd == libc::AT_FDCWD {
        std::env::current_dir()
            .ok()?
            .into_os_string()
            .into_encoded_bytes()
    } else {
        fd_path(dirfd)?
    };
    base.push(b'/');
    base.extend_from_slice(p);
    Some(base)
}

/// The next definition of `name` after this library's (libc's).
macro_rules! next {
    ($name:literal, $ty:ty) => {{
        static NEXT: OnceLock<usize> = OnceLock::new();
        let f = *NEXT.get_or_init(|| {
            // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
            unsafe { libc::dlsym(libc::RTLD_NEXT, concat!($name, "\0").as_ptr().cast()) as usize }
        });
        assert!(f != 0, concat!("powercut: no next ", $name));
        // SAFETY: `f` is libc's function of this exact signature.
        unsafe { std::mem::transmute::<usize, $ty>(f) }
    }};
}

/// A regular file's identity and length, from `fstat`.
fn fd_stat(fd: c_int) -> Option<(u64, u64, i64)> {
    // SAFETY: fstat fills `st` for a descriptor of the caller's.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
        .then_some((st.st_dev, st.st_ino, st.st_size))
}

/// A regular file's identity and link count, by path (not following links).
fn path_stat(dir: c_int, path: *const c_char) -> Option<(u64, u64, u64)> {
    if path.is_null() {
        return None;
    }
    // SAFETY: fstatat on a NUL-terminated path libc was given.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatat(dir, path, &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0
        && (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
        .then_some((st.st_dev, st.st_ino, st.st_nlink))
}

fn line(kind: &str, dev: u64, ino: u64, len: Option<i64>, path: &[u8]) {
    let mut out = match len {
        Some(len) => format!("{kind} {dev}:{ino} {len} ").into_bytes(),
        None => format!("{kind} {dev}:{ino} ").into_bytes(),
    };
    out.extend_from_slice(path);
    out.push(b'\n');
    record(&out);
}

/// Before a sync: the file and its length then (what the sync covers).
fn before_sync(fd: c_int) -> Option<(u64, u64, i64, Vec<u8>)> {
    journal()?;
    let path = fd_path(fd).filter(|p| watched(p))?;
    let (dev, ino, len) = fd_stat(fd)?;
    Some((dev, ino, len, path))
}

/// # Safety
/// Called as libc's `fsync`.
#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let before = before_sync(fd);
    let r = next!("fsync", unsafe extern "C" fn(c_int) -> c_int)(fd);
    if let (0, Some((dev, ino, len, path))) = (r, before) {
        line("S", dev, ino, Some(len), &path);
    }
    r
}

/// # Safety
/// Called as libc's `fdatasync`.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let before = before_sync(fd);
    let r = next!("fdatasync", unsafe extern "C" fn(c_int) -> c_int)(fd);
    if let (0, Some((dev, ino, len, path))) = (r, before) {
        line("S", dev, ino, Some(len), &path);
    }
    r
}

/// Before an unlink: the file, if this is its last name and it is watched.
fn before_unlink(dir: c_int, path: *const c_char) -> Option<(u64, u64, Vec<u8>)> {
    journal()?;
    let full = resolve(dir, path).filter(|p| watched(p))?;
    match path_stat(dir, path)? {
        (dev, ino, 1) => Some((dev, ino, full)),
        _ => None,
    }
}

/// # Safety
/// Called as libc's `unlink`.
#[no_mangle]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    let before = before_unlink(libc::AT_FDCWD, path);
    let r = next!("unlink", unsafe extern "C" fn(*const c_char) -> c_int)(path);
    if let (0, Some((dev, ino, full))) = (r, before) {
        line("U", dev, ino, None, &full);
    }
    r
}

/// # Safety
/// Called as libc's `unlinkat`.
#[no_mangle]
pub unsafe extern "C" fn unlinkat(dir: c_int, path: *const c_char, flags: c_int) -> c_int {
    let before = if flags & libc::AT_REMOVEDIR == 0 {
        before_unlink(dir, path)
    } else {
        None
    };
    let r = next!(
        "unlinkat",
        unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int
    )(dir, path, flags);
    if let (0, Some((dev, ino, full))) = (r, before) {
        line("U", dev, ino, None, &full);
    }
    r
}

fn truncated_fd(fd: c_int, len: i64) {
    if journal().is_none() {
        return;
    }
    if let (Some(path), Some((dev, ino, _))) = (fd_path(fd).filter(|p| watched(p)), fd_stat(fd)) {
        line("T", dev, ino, Some(len), &path);
    }
}

fn truncated_path(path: *const c_char, len: i64) {
    if journal().is_none() {
        return;
    }
    if let (Some(full), Some((dev, ino, _))) = (
        resolve(libc::AT_FDCWD, path).filter(|p| watched(p)),
        path_stat(libc::AT_FDCWD, path),
    ) {
        line("T", dev, ino, Some(len), &full);
    }
}

/// # Safety
/// Called as libc's `ftruncate`.
#[no_mangle]
pub unsafe extern "C" fn ftruncate(fd: c_int, len: libc::off_t) -> c_int {
    let r = next!(
        "ftruncate",
        unsafe extern "C" fn(c_int, libc::off_t) -> c_int
    )(fd, len);
    if r == 0 {
        truncated_fd(fd, len);
    }
    r
}

/// # Safety
/// Called as libc's `ftruncate64`.
#[no_mangle]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: libc::off64_t) -> c_int {
    let r = next!(
        "ftruncate64",
        unsafe extern "C" fn(c_int, libc::off64_t) -> c_int
    )(fd, len);
    if r == 0 {
        truncated_fd(fd, len);
    }
    r
}

/// # Safety
/// Called as libc's `truncate`.
#[no_mangle]
pub unsafe extern "C" fn truncate(path: *const c_char, len: libc::off_t) -> c_int {
    let r = next!(
        "truncate",
        unsafe extern "C" fn(*const c_char, libc::off_t) -> c_int
    )(path, len);
    if r == 0 {
        truncated_path(path, len);
    }
    r
}

/// # Safety
/// Called as libc's `truncate64`.
#[no_mangle]
pub unsafe extern "C" fn truncate64(path: *const c_char, len: libc::off64_t) -> c_int {
    let r = next!(
        "truncate64",
        unsafe extern "C" fn(*const c_char, libc::off64_t) -> c_int
    )(path, len);
    if r == 0 {
        truncated_path(path, len);
    }
    r
}

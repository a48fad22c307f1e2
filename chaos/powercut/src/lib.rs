//! An `LD_PRELOAD` library that journals what a process made durable, so a
//! chaos run can simulate a power cut: SIGKILL keeps the page cache and
//! proves nothing about fsync, so after killing the process the harness
//! ([`chronicle_chaos::powercut`]) replays this journal and truncates every
//! file to the length its last `fsync`/`fdatasync` covered, deleting files
//! created since the process started and never synced.
//!
//! With `CHRONICLE_POWERCUT_JOURNAL` set, each call below is passed on to
//! libc and, when it succeeded on a path under `CHRONICLE_POWERCUT_DIR`,
//! one line is appended to the journal with a raw `write(2)`, before the
//! call returns (so the journal is never behind what the process was told):
//!
//! * `S <len> <path>`: `fsync`/`fdatasync` made `<len>` bytes durable;
//! * `R <old>\t<new>`: `rename` (a synced file keeps what it had);
//! * `U <path>`: `unlink`;
//! * `T <len> <path>`: `ftruncate`.
//!
//! What it does not model: the durability of directory entries (a created
//! or renamed file is taken to exist once its data is synced), writes inside
//! the synced part of a file (an overwrite there is kept), and `mmap`.

use std::ffi::{c_char, c_int, c_uint, CStr};
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
        // SAFETY: writes `line` to the journal's descriptor; O_APPEND keeps
        // lines from threads whole (each is one write under PIPE_BUF-ish sizes).
        unsafe {
            libc::write(j.fd, line.as_ptr().cast(), line.len());
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

fn file_len(fd: c_int) -> Option<i64> {
    // SAFETY: fstat fills `st` for a descriptor the caller just synced.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG)
        .then_some(st.st_size)
}

fn synced(fd: c_int) {
    if journal().is_none() {
        return;
    }
    if let (Some(path), Some(len)) = (fd_path(fd), file_len(fd)) {
        if watched(&path) {
            let mut line = format!("S {len} ").into_bytes();
            line.extend_from_slice(&path);
            line.push(b'\n');
            record(&line);
        }
    }
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

/// # Safety
/// Called as libc's `fsync`.
#[no_mangle]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let r = next!("fsync", unsafe extern "C" fn(c_int) -> c_int)(fd);
    if r == 0 {
        synced(fd);
    }
    r
}

/// # Safety
/// Called as libc's `fdatasync`.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let r = next!("fdatasync", unsafe extern "C" fn(c_int) -> c_int)(fd);
    if r == 0 {
        synced(fd);
    }
    r
}

fn renamed(old: Option<Vec<u8>>, new: Option<Vec<u8>>) {
    if let (Some(old), Some(new)) = (old, new) {
        if watched(&old) || watched(&new) {
            let mut line = b"R ".to_vec();
            line.extend_from_slice(&old);
            line.push(b'\t');
            line.extend_from_slice(&new);
            line.push(b'\n');
            record(&line);
        }
    }
}

/// # Safety
/// Called as libc's `rename`.
#[no_mangle]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    let r = next!(
        "rename",
        unsafe extern "C" fn(*const c_char, *const c_char) -> c_int
    )(old, new);
    if r == 0 && journal().is_some() {
        renamed(resolve(libc::AT_FDCWD, old), resolve(libc::AT_FDCWD, new));
    }
    r
}

/// # Safety
/// Called as libc's `renameat`.
#[no_mangle]
pub unsafe extern "C" fn renameat(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
) -> c_int {
    let r = next!(
        "renameat",
        unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int
    )(olddir, old, newdir, new);
    if r == 0 && journal().is_some() {
        renamed(resolve(olddir, old), resolve(newdir, new));
    }
    r
}

/// # Safety
/// Called as libc's `renameat2`.
#[no_mangle]
pub unsafe extern "C" fn renameat2(
    olddir: c_int,
    old: *const c_char,
    newdir: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    let r = next!(
        "renameat2",
        unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int
    )(olddir, old, newdir, new, flags);
    if r == 0 && journal().is_some() {
        renamed(resolve(olddir, old), resolve(newdir, new));
    }
    r
}

fn unlinked(path: Option<Vec<u8>>) {
    if let Some(path) = path.filter(|p| watched(p)) {
        let mut line = b"U ".to_vec();
        line.extend_from_slice(&path);
        line.push(b'\n');
        record(&line);
    }
}

/// # Safety
/// Called as libc's `unlink`.
#[no_mangle]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    let r = next!("unlink", unsafe extern "C" fn(*const c_char) -> c_int)(path);
    if r == 0 && journal().is_some() {
        unlinked(resolve(libc::AT_FDCWD, path));
    }
    r
}

/// # Safety
/// Called as libc's `unlinkat`.
#[no_mangle]
pub unsafe extern "C" fn unlinkat(dir: c_int, path: *const c_char, flags: c_int) -> c_int {
    let r = next!(
        "unlinkat",
        unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int
    )(dir, path, flags);
    if r == 0 && journal().is_some() {
        unlinked(resolve(dir, path));
    }
    r
}

fn truncated(fd: c_int, len: i64) {
    if journal().is_none() {
        return;
    }
    if let Some(path) = fd_path(fd).filter(|p| watched(p)) {
        let mut line = format!("T {len} ").into_bytes();
        line.extend_from_slice(&path);
        line.push(b'\n');
        record(&line);
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
        truncated(fd, len);
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
        truncated(fd, len);
    }
    r
}

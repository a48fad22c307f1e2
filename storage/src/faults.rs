//! Disk faults for chaos runs and crash tests: `fail` failpoints on the
//! shard's write and read paths. Compiled in with the `failpoints` feature
//! (inert otherwise); configured at run time with `fail::cfg`, for example
//! `fail::cfg(faults::WRITE, "return(enospc)")` or `"sleep(200)"`.

/// Every write batch a shard gives RocksDB (points, chunks, state, meta).
pub const WRITE: &str = "storage::write";
/// Every sample and state read of a shard.
pub const READ: &str = "storage::read";

/// The error a disk would give for `what` (`enospc`, `eio`, `fsync`; any
/// other value reads as `eio`): what a failpoint's `return(what)` injects.
pub fn injected_error(what: Option<String>) -> std::io::Error {
    let what = what.unwrap_or_default();
    let (code, message) = match what.as_str() {
        "enospc" => (libc_enospc(), "no space left on device (injected)"),
        "fsync" => (libc_eio(), "fsync failed (injected)"),
        _ => (libc_eio(), "input/output error (injected)"),
    };
    std::io::Error::new(
        std::io::Error::from_raw_os_error(code).kind(),
        format!("{message}; os error {code}"),
    )
}

/// Fails with the configured error when `point` is set to `return(..)`,
/// sleeps when it is set to `sleep(ms)`, and does nothing otherwise.
pub fn check(point: &str) -> std::io::Result<()> {
    match fail::eval(point, injected_error) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether failpoints are compiled into this build.
pub const ENABLED: bool = cfg!(feature = "failpoints");

// The Linux values; the injected error only has to read as the real one.
const fn libc_enospc() -> i32 {
    28
}
const fn libc_eio() -> i32 {
    5
}

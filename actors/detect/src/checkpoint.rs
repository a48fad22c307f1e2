//! A compact binary form of a series detector's state, for checkpoints in
//! the replicated state (about 2 KiB a series with the defaults, where
//! JSON would take several times that and cannot hold the NaNs that mark
//! empty buckets).
//!
//! What is kept: the window's samples (time, value), the season's bucket
//! means and period, the CUSUM sums, the slow spread, the last sample's
//! time and the open episode. The window's remainders are recomputed from
//! the samples and the season on restore. Decoding checks every length
//! against the bytes left and the configured bounds, so a corrupt entry is
//! an error, never a panic or a huge allocation.

use crate::detector::Episode;

/// The format's version (first byte).
const VERSION: u8 = 1;

/// Why a checkpoint did not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("detector checkpoint: {0}")]
pub struct CheckpointError(pub String);

pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn version(&mut self) {
        self.u8(VERSION);
    }
    pub fn episode(&mut self, e: Option<&Episode>) {
        match e.and_then(|e| serde_json::to_vec(e).ok()) {
            Some(json) => {
                self.u8(1);
                self.bytes(&json);
            }
            None => self.u8(0),
        }
    }
}

pub(crate) struct Reader<'a>(pub &'a [u8]);

fn short(what: &str) -> CheckpointError {
    CheckpointError(format!("ends inside {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CheckpointError> {
        if self.0.len() < n {
            return Err(short(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u8(&mut self, what: &str) -> Result<u8, CheckpointError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u32(&mut self, what: &str) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self, what: &str) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn i64(&mut self, what: &str) -> Result<i64, CheckpointError> {
        Ok(i64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn f32(&mut self, what: &str) -> Result<f32, CheckpointError> {
        Ok(f32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn f64(&mut self, what: &str) -> Result<f64, CheckpointError> {
        Ok(f64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], CheckpointError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// A count of items of `size` bytes each, at most `max`.
    pub fn count(&mut self, size: usize, max: usize, what: &str) -> Result<usize, CheckpointError> {
        let n = self.u32(what)? as usize;
        if n > max || n.saturating_mul(size) > self.0.len() {
            return Err(CheckpointError(format!("{what}: {n} items do not fit")));
        }
        Ok(n)
    }
    pub fn version(&mut self) -> Result<(), CheckpointError> {
        match self.u8("version")? {
            VERSION => Ok(()),
            v => Err(CheckpointError(format!(
                "version {v}, this build reads {VERSION}"
            ))),
        }
    }
    pub fn episode(&mut self) -> Result<Option<Episode>, CheckpointError> {
        match self.u8("episode")? {
            0 => Ok(None),
            1 => serde_json::from_slice(self.bytes("episode")?)
                .map(Some)
                .map_err(|e| CheckpointError(format!("episode: {e}"))),
            t => Err(CheckpointError(format!("episode tag {t}"))),
        }
    }
}

//! Shard configuration.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::aggregate::AggregateFunction;
use crate::codec::EncodeOptions;
use crate::matcher::Matcher;
use crate::model::Limits;

/// How a shard stores and keeps data. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// fsync the RocksDB WAL before `write_batch` returns (durable against power loss).
    pub sync_writes: bool,
    /// Raw data older than this is deleted by `enforce_retention`; `None` keeps it.
    pub retention: Option<Duration>,
    /// Chunks never span a boundary of this epoch-aligned window.
    pub chunk_range: Duration,
    /// A series' head is cut into a chunk at this many samples.
    pub max_chunk_samples: usize,
    /// When this many batches are logged past the durable index, old heads are cut.
    pub max_log_lag: u64,
    pub limits: Limits,
    pub downsample: Vec<DownsampleRule>,
    pub encode: EncodeOptions,
    /// RocksDB block cache shared by the shard's column families.
    pub block_cache_bytes: usize,
    /// Recently read chunks kept decoded, bytes (0 turns the cache off).
    pub decoded_cache_bytes: usize,
    /// Threads one read decodes its chunks on, the calling one included
    /// (1: the calling thread alone). Reads under 8 KiB of chunks use one.
    pub decode_threads: usize,
    /// Run first on every helper thread a read starts (the node lowers the
    /// thread's priority below Raft's there).
    pub on_decode_thread_start: fn(),
    /// Threads a cut of heads into chunks encodes on, the applying one
    /// included (1: that thread alone). Cuts under 16,384 samples use one.
    pub encode_threads: usize,
    /// Run-time overrides of `max_chunk_samples` and `encode`, shared by
    /// every shard opened from clones of this config (the config API sets
    /// them; a shard reopened after a snapshot install keeps them).
    pub tuning: Arc<Tuning>,
}

/// Settings a running shard takes changes of. Each applies to chunks cut
/// from then on; chunks already written stay as they are.
#[derive(Debug, Default)]
pub struct Tuning {
    /// 0: the config's `max_chunk_samples`.
    max_chunk_samples: AtomicUsize,
    /// `i32::MIN`: the config's zstd level.
    zstd_level: AtomicI32,
}

impl Tuning {
    pub fn new() -> Self {
        Self {
            max_chunk_samples: AtomicUsize::new(0),
            zstd_level: AtomicI32::new(i32::MIN),
        }
    }

    /// `None`: back to the config's value.
    pub fn set_max_chunk_samples(&self, samples: Option<usize>) {
        self.max_chunk_samples
            .store(samples.unwrap_or(0), Ordering::Relaxed);
    }

    /// `None`: back to the config's level.
    pub fn set_zstd_level(&self, level: Option<i32>) {
        self.zstd_level
            .store(level.unwrap_or(i32::MIN), Ordering::Relaxed);
    }
}

impl ShardConfig {
    /// The head size at which a series' head is cut, in effect now.
    pub fn effective_max_chunk_samples(&self) -> usize {
        match self.tuning.max_chunk_samples.load(Ordering::Relaxed) {
            0 => self.max_chunk_samples,
            n => n,
        }
    }

    /// How chunks are encoded now.
    pub fn effective_encode(&self) -> EncodeOptions {
        match self.tuning.zstd_level.load(Ordering::Relaxed) {
            i32::MIN => self.encode,
            zstd_level => EncodeOptions { zstd_level },
        }
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            sync_writes: true,
            retention: None,
            chunk_range: Duration::from_secs(2 * 3600),
            max_chunk_samples: 2048,
            max_log_lag: 1024,
            limits: Limits::default(),
            downsample: Vec::new(),
            encode: EncodeOptions::default(),
            block_cache_bytes: 64 << 20,
            decoded_cache_bytes: 256 << 20,
            decode_threads: default_shard_threads(),
            on_decode_thread_start: || {},
            encode_threads: default_shard_threads(),
            tuning: Arc::new(Tuning::new()),
        }
    }
}

/// The threads a read decodes on, and a cut encodes on, when the config does
/// not say: the cores this process may use (cgroup limits included), at most 8.
pub fn default_shard_threads() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    })
}

/// Aggregate raw series into `<metric>:<window>:<fn>` series with the same labels.
#[derive(Debug, Clone)]
pub struct DownsampleRule {
    pub window: Duration,
    pub function: AggregateFunction,
    /// How long the downsampled series are kept; `None` keeps them.
    pub retention: Option<Duration>,
    /// Which raw series the rule reads; empty means all of them.
    pub matchers: Vec<Matcher>,
}

impl DownsampleRule {
    /// The suffix of the output series' metric name, e.g. `5m:mean`.
    pub fn suffix(&self) -> String {
        format!("{}:{}", format_duration(self.window), self.function.name())
    }
}

/// Compact duration text: `90s`, `5m`, `2h`, `7d`, or `250ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in units {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(feature = "engine")]
pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

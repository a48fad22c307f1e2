//! Measures what the node's data does under other storage settings: the
//! newest chunks of its replicas are decoded and encoded again at each
//! candidate compression level and cut at each smaller chunk size, and the
//! series' heads are counted. The codec keeps the smallest of several
//! encodings per chunk, so a setting's effect depends on the data: trying
//! it on the node's own chunks is the only honest estimate.

use std::time::Instant;

use chronicle_storage::codec::{encode_chunk, EncodeOptions};
use chronicle_storage::{Sample, SampledChunk, Shard};

use crate::recommend::{ChunkProfile, LevelTrial, SizeTrial};

/// At most this many samples are re-encoded per trial (bounds the CPU a
/// recommendation costs: about a second at level 19 on this machine).
pub const MAX_SAMPLES: usize = 200_000;
/// At most this many chunks are read from the shards.
pub const MAX_CHUNKS: usize = 2_000;
/// Compression levels tried besides the one in effect.
pub const LEVELS: [i32; 3] = [3, 9, 19];
/// Chunk sizes tried below the one in effect.
pub const SIZES: [usize; 4] = [1024, 512, 256, 128];

/// Profiles `shards` (this node's replicas) under their shared settings.
/// Blocking: run it off the async runtime. `None` when they hold no chunks.
pub fn measure(shards: &[std::sync::Arc<Shard>]) -> Result<Option<ChunkProfile>, String> {
    let Some(first) = shards.first() else {
        return Ok(None);
    };
    let config = first.config();
    let level = config.effective_encode().zstd_level;
    let max_chunk_samples = config.effective_max_chunk_samples();
    let mut chunks: Vec<SampledChunk> = Vec::new();
    let mut samples = 0usize;
    let per_shard = (MAX_CHUNKS / shards.len()).max(1);
    for shard in shards {
        for c in shard.sample_chunks(per_shard).map_err(|e| e.to_string())? {
            if samples >= MAX_SAMPLES {
                break;
            }
            samples += c.samples.len();
            chunks.push(c);
        }
    }
    if samples == 0 {
        return Ok(None);
    }
    let stored: usize = chunks.iter().map(|c| c.encoded_bytes).sum();
    let mut levels: Vec<i32> = LEVELS.to_vec();
    levels.push(level);
    levels.sort_unstable();
    levels.dedup();
    let levels = levels
        .into_iter()
        .map(|l| {
            let started = Instant::now();
            let bytes = encoded_bytes(&chunks, usize::MAX, l);
            LevelTrial {
                level: l,
                bytes_per_sample: bytes as f64 / samples as f64,
                encode_seconds_per_million: started.elapsed().as_secs_f64() * 1e6 / samples as f64,
            }
        })
        .collect();
    let mut heads: Vec<u32> = shards.iter().flat_map(|s| s.head_lengths()).collect();
    heads.sort_unstable();
    let sizes = SIZES
        .iter()
        .filter(|&&size| size < max_chunk_samples)
        .map(|&size| SizeTrial {
            max_chunk_samples: size,
            bytes_per_sample: encoded_bytes(&chunks, size, level) as f64 / samples as f64,
            head_samples_over: heads
                .iter()
                .map(|&n| u64::from(n).saturating_sub(size as u64))
                .sum(),
        })
        .collect();
    let chunk_bytes = shards
        .iter()
        .flat_map(|s| s.engine_stats().column_families)
        .filter(|cf| cf.name == chronicle_storage::CF_CHUNKS)
        // Memtables too: they are chunks on their way to disk.
        .map(|cf| cf.live_sst_bytes + cf.memtable_bytes)
        .sum();
    Ok(Some(ChunkProfile {
        chunks: chunks.len(),
        samples,
        stored_bytes_per_sample: stored as f64 / samples as f64,
        chunk_bytes,
        compression_level: level,
        max_chunk_samples,
        levels,
        sizes,
        head_series: heads.len(),
        head_samples: heads.iter().map(|&n| u64::from(n)).sum(),
    }))
}

/// Bytes of `chunks` encoded at `level`, each cut into pieces of at most
/// `size` samples as the shard would cut them.
fn encoded_bytes(chunks: &[SampledChunk], size: usize, level: i32) -> usize {
    let opts = EncodeOptions { zstd_level: level };
    chunks
        .iter()
        .flat_map(|c| c.samples.chunks(size.max(1)))
        .map(|piece: &[Sample]| encode_chunk(piece, opts).len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_storage::{Label, Point, ShardConfig};
    use std::sync::Arc;

    fn shard(dir: &std::path::Path) -> Arc<Shard> {
        Arc::new(Shard::open(dir, ShardConfig::default()).unwrap())
    }

    fn write(shard: &Shard, series: usize, samples: usize, value: impl Fn(usize, usize) -> f64) {
        for batch in 0..samples / 100 {
            let points: Vec<Point> = (0..series)
                .flat_map(|s| {
                    let value = &value;
                    (0..100).map(move |k| {
                        let i = batch * 100 + k;
                        Point {
                            metric: "cpu".into(),
                            labels: vec![Label::new("host", format!("h{s}"))],
                            timestamp: 1_700_000_000_000_000_000 + i as i64 * 1_000_000_000,
                            value: value(s, i),
                        }
                    })
                })
                .collect();
            shard.write_batch(&points).unwrap();
        }
    }

    #[test]
    fn nothing_stored_measures_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(measure(&[shard(dir.path())]).unwrap(), None);
        assert_eq!(measure(&[]).unwrap(), None);
    }

    #[test]
    fn the_trials_reencode_the_stored_chunks_and_count_the_heads() {
        let dir = tempfile::tempdir().unwrap();
        let s = shard(dir.path());
        // 5000 one-second samples per series in batches of 100: a head
        // passes 2048 within a batch and is cut after it, so two chunks of
        // 2100 samples, 800 left in each head. Noisy values: size matters.
        let mut x = 1u64;
        let noise = move |_: usize, _: usize| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as f64 / 1000.0
        };
        let noise = std::cell::RefCell::new(noise);
        write(&s, 4, 5000, |a, b| (noise.borrow_mut())(a, b));
        let p = measure(std::slice::from_ref(&s)).unwrap().expect("chunks");
        assert_eq!(p.chunks, 8);
        assert_eq!(p.samples, 8 * 2100);
        assert_eq!((p.head_series, p.head_samples), (4, 4 * 800));
        assert_eq!((p.compression_level, p.max_chunk_samples), (9, 2048));
        let level = |l: i32| p.levels.iter().find(|t| t.level == l).unwrap();
        // Re-encoded at the level in effect: what is stored.
        assert!(
            (level(9).bytes_per_sample - p.stored_bytes_per_sample).abs() < 1e-9,
            "{p:?}"
        );
        assert_eq!(p.sizes.len(), 4);
        let at = |n: usize| p.sizes.iter().find(|t| t.max_chunk_samples == n).unwrap();
        assert_eq!(at(512).head_samples_over, 4 * (800 - 512));
        assert_eq!(at(1024).head_samples_over, 0);
        // Smaller chunks cost bytes (headers, first values), never save.
        assert!(
            at(128).bytes_per_sample > at(1024).bytes_per_sample,
            "{p:?}"
        );
        assert!(
            at(1024).bytes_per_sample >= level(9).bytes_per_sample,
            "{p:?}"
        );
        // Changed at run time, the profile reports the new settings.
        s.config().tuning.set_max_chunk_samples(Some(512));
        s.config().tuning.set_zstd_level(Some(19));
        let p = measure(&[s]).unwrap().unwrap();
        assert_eq!((p.compression_level, p.max_chunk_samples), (19, 512));
        assert_eq!(
            p.sizes
                .iter()
                .map(|t| t.max_chunk_samples)
                .collect::<Vec<_>>(),
            [256, 128]
        );
    }
}

//! Bytes per sample of the chunk codec on the benchmark's generated data, per metric,
//! with the timestamps' share: `cargo run --release -p chronicle-storage --example
//! codec_report [rounds]` (default 2,160 rounds: three 2 h chunks per series).
//!
//! Also, per metric, the decoder's nanoseconds a sample for the whole chunk and
//! for its timestamps alone (the same timestamps with constant values), and
//! what splitting each chunk into independently decodable segments would cost
//! (the price of a skip index that lets a read start mid-chunk).

use std::collections::BTreeMap;

use chronicle_storage::codec::{decode_chunk_into, encode_chunk, EncodeOptions};
use chronicle_storage::model::Sample;
use chronicle_storage::workload::Workload;

const INTERVAL: i64 = 10_000_000_000;
const CHUNK_SAMPLES: usize = 720;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("rounds must be a number"))
        .unwrap_or(3 * CHUNK_SAMPLES);
    let series = 1000;
    let mut load = Workload::realistic(series, INTERVAL, 1_700_000_000_000_000_000, 42);
    let mut per_series: Vec<(String, Vec<Sample>)> = Vec::new();
    for _ in 0..rounds {
        for (i, p) in load.next_batch(series).into_iter().enumerate() {
            if per_series.len() <= i {
                per_series.push((p.metric.clone(), Vec::new()));
            }
            per_series[i].1.push(Sample::new(p.timestamp, p.value));
        }
    }
    let opts = EncodeOptions::default();
    // metric -> (samples, total bytes, timestamp-only bytes)
    let mut report: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut chunks = Vec::new();
    for (metric, samples) in &per_series {
        for chunk in samples.chunks(CHUNK_SAMPLES) {
            let encoded = encode_chunk(chunk, opts);
            let total = encoded.len();
            chunks.push(encoded);
            let ts_only: Vec<Sample> = chunk
                .iter()
                .map(|s| Sample::new(s.timestamp, 0.0))
                .collect();
            let ts = encode_chunk(&ts_only, opts).len();
            let e = report.entry(metric.clone()).or_default();
            e.0 += chunk.len();
            e.1 += total;
            e.2 += ts;
        }
    }
    let (mut n, mut bytes, mut ts) = (0, 0, 0);
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "metric", "B/sample", "ts B/s", "value B/s"
    );
    for (metric, (count, total, ts_bytes)) in &report {
        let c = *count as f64;
        println!(
            "{metric:<40} {:>10.3} {:>10.3} {:>10.3}",
            *total as f64 / c,
            *ts_bytes as f64 / c,
            (*total as f64 - *ts_bytes as f64) / c
        );
        n += count;
        bytes += total;
        ts += ts_bytes;
    }
    println!();
    println!(
        "{:<40} {:>10} {:>10}",
        "decode, ns/sample", "whole", "ts alone"
    );
    for metric in report.keys() {
        let (mut whole, mut ts_only) = (Vec::new(), Vec::new());
        for (_, samples) in per_series.iter().filter(|(m, _)| m == metric) {
            for chunk in samples.chunks(CHUNK_SAMPLES) {
                whole.push(encode_chunk(chunk, opts));
                let ts: Vec<Sample> = chunk
                    .iter()
                    .map(|s| Sample::new(s.timestamp, 0.0))
                    .collect();
                ts_only.push(encode_chunk(&ts, opts));
            }
        }
        println!(
            "{metric:<40} {:>10.1} {:>10.1}",
            best_decode_ns(&whole),
            best_decode_ns(&ts_only)
        );
    }
    println!();
    // A chunk's streams are sequential with adaptive models, so a read can
    // only start mid-chunk at a segment coded from fresh models. One header
    // and checksum (24 bytes) for the chunk, not one per segment; the index
    // of segment offsets itself is not counted.
    for segments in [2usize, 4, 8] {
        let (mut whole, mut split, mut n) = (0usize, 0usize, 0usize);
        for (_, samples) in &per_series {
            for chunk in samples.chunks(CHUNK_SAMPLES) {
                whole += encode_chunk(chunk, opts).len();
                let parts: Vec<usize> = chunk
                    .chunks(chunk.len().div_ceil(segments))
                    .map(|c| encode_chunk(c, opts).len())
                    .collect();
                split += parts.iter().sum::<usize>() - (parts.len() - 1) * 24;
                n += chunk.len();
            }
        }
        println!(
            "{segments} independent segments a chunk: {:.3} B/sample against {:.3} (+{:.3})",
            split as f64 / n as f64,
            whole as f64 / n as f64,
            (split as f64 - whole as f64) / n as f64
        );
    }
    let started = std::time::Instant::now();
    let mut decoded = Vec::with_capacity(CHUNK_SAMPLES);
    let mut total_samples = 0usize;
    for chunk in &chunks {
        decoded.clear();
        decode_chunk_into(chunk, &mut decoded).expect("fresh chunks decode");
        total_samples += decoded.len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "decode: {total_samples} samples in {:.1} ms ({:.1} ns/sample)",
        secs * 1e3,
        secs * 1e9 / total_samples as f64
    );
    println!(
        "{:<40} {:>10.3} {:>10.3} {:>10.3}",
        "all",
        bytes as f64 / n as f64,
        ts as f64 / n as f64,
        (bytes - ts) as f64 / n as f64
    );
}

/// The best of five passes over `chunks`, in nanoseconds a sample.
fn best_decode_ns(chunks: &[Vec<u8>]) -> f64 {
    let mut out = Vec::with_capacity(CHUNK_SAMPLES);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let mut n = 0usize;
        for chunk in chunks {
            out.clear();
            decode_chunk_into(chunk, &mut out).expect("fresh chunks decode");
            n += out.len();
        }
        best = best.min(started.elapsed().as_nanos() as f64 / n.max(1) as f64);
    }
    best
}

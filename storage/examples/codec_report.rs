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
    let mut report: BTreeMap<String, MetricChunks> = BTreeMap::new();
    for (metric, samples) in &per_series {
        let e = report.entry(metric.clone()).or_default();
        for chunk in samples.chunks(CHUNK_SAMPLES) {
            let ts_only: Vec<Sample> = chunk
                .iter()
                .map(|s| Sample::new(s.timestamp, 0.0))
                .collect();
            e.0 += chunk.len();
            e.1.push(encode_chunk(chunk, opts));
            e.2.push(encode_chunk(&ts_only, opts));
        }
    }
    let size = |chunks: &[Vec<u8>]| chunks.iter().map(Vec::len).sum::<usize>();
    let (mut n, mut bytes, mut ts) = (0, 0, 0);
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "metric", "B/sample", "ts B/s", "value B/s"
    );
    for (metric, (count, whole, ts_only)) in &report {
        let (c, total, ts_bytes) = (*count as f64, size(whole), size(ts_only));
        println!(
            "{metric:<40} {:>10.3} {:>10.3} {:>10.3}",
            total as f64 / c,
            ts_bytes as f64 / c,
            (total as f64 - ts_bytes as f64) / c
        );
        n += count;
        bytes += total;
        ts += ts_bytes;
    }
    println!(
        "{:<40} {:>10.3} {:>10.3} {:>10.3}",
        "all",
        bytes as f64 / n as f64,
        ts as f64 / n as f64,
        (bytes - ts) as f64 / n as f64
    );
    println!();
    println!(
        "{:<40} {:>10} {:>10}",
        "decode, ns/sample", "whole", "ts alone"
    );
    for (metric, (_, whole, ts_only)) in &report {
        println!(
            "{metric:<40} {:>10.1} {:>10.1}",
            best_decode_ns(whole),
            best_decode_ns(ts_only)
        );
    }
    let all: Vec<Vec<u8>> = report.values().flat_map(|(_, w, _)| w.clone()).collect();
    println!("{:<40} {:>10.1}", "all", best_decode_ns(&all));
    println!();
    // A chunk's streams are sequential with adaptive models, so a read can
    // only start mid-chunk at a segment coded from fresh models. One header
    // and checksum (24 bytes) for the chunk, not one per segment; the index
    // of segment offsets itself is not counted.
    for segments in [2usize, 4, 8] {
        let mut split = 0usize;
        for (_, samples) in &per_series {
            for chunk in samples.chunks(CHUNK_SAMPLES) {
                let parts: Vec<usize> = chunk
                    .chunks(chunk.len().div_ceil(segments))
                    .map(|c| encode_chunk(c, opts).len())
                    .collect();
                split += parts.iter().sum::<usize>() - (parts.len() - 1) * 24;
            }
        }
        println!(
            "{segments} independent segments a chunk: {:.3} B/sample against {:.3} (+{:.3})",
            split as f64 / n as f64,
            bytes as f64 / n as f64,
            (split as f64 - bytes as f64) / n as f64
        );
    }
}

/// Of one metric: its samples, and its encoded chunks, whole and with the
/// values made constant (the timestamps' share, and their decoding alone).
type MetricChunks = (usize, Vec<Vec<u8>>, Vec<Vec<u8>>);

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

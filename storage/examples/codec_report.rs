//! Bytes per sample of the chunk codec on the benchmark's generated data, per metric,
//! with the timestamps' share: `cargo run --release -p chronicle-storage --example
//! codec_report [rounds]` (default 2,160 rounds: three 2 h chunks per series).

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

//! Writes numbered batches to a shard and prints each number once the write returned.
//! The crash test kills this process with SIGKILL at random moments.
//!
//! Usage: crash-writer <data-dir> <first-batch> <points-per-batch>

use std::io::Write;

use chronicle_storage::{Label, Point, Shard, ShardConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: crash-writer <data-dir> <first-batch> <points-per-batch>");
        std::process::exit(2);
    }
    let first: i64 = args[2].parse().expect("first batch is a number");
    let per_batch: usize = args[3].parse().expect("points per batch is a number");
    let config = ShardConfig {
        sync_writes: true,
        // Small chunks and a short log lag so kills also land inside cuts and truncations.
        max_chunk_samples: 16,
        max_log_lag: 8,
        ..ShardConfig::default()
    };
    let shard = Shard::open(&args[1], config).expect("shard opens");
    let mut out = std::io::stdout().lock();
    for batch in first.. {
        let points: Vec<Point> = (0..per_batch)
            .map(|i| {
                Point::new(
                    "crash_test",
                    vec![Label::new("series", i.to_string())],
                    batch as f64,
                    batch * 1_000_000_000,
                )
            })
            .collect();
        shard.write_batch(&points).expect("write succeeds");
        writeln!(out, "{batch}").expect("stdout is open");
        out.flush().expect("stdout is open");
    }
}

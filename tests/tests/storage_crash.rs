//! A writer process is killed with SIGKILL at random moments; after reopening, every
//! batch whose write returned is there in full and no batch is there in part.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chronicle_storage::{Matcher, Shard, ShardConfig};
use rand::{Rng, SeedableRng};

const PER_BATCH: usize = 40;

#[test]
fn acknowledged_batches_survive_sigkill_and_none_is_partial() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shard");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xC0FFEE);
    let mut next_batch = 0i64;
    let mut acked_total = Vec::new();
    for round in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(&data)
            .arg(next_batch.to_string())
            .arg(PER_BATCH.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("writer starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.parse::<i64>().unwrap()).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledged batches (so at a random point of
        // a later write), waiting with a timeout rather than sleeping.
        let target = rng.random_range(3..120);
        let mut acked = Vec::new();
        while acked.len() < target {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(b) => acked.push(b),
                Err(e) => panic!(
                    "round {round}: writer stalled after {} acks: {e}",
                    acked.len()
                ),
            }
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        acked_total.extend(acked.iter().copied());

        let shard = Shard::open(&data, ShardConfig::default()).expect("reopens after SIGKILL");
        let mut per_batch: BTreeMap<i64, usize> = BTreeMap::new();
        for (_, samples) in shard
            .query(
                &[Matcher::equal("__name__", "crash_test")],
                i64::MIN,
                i64::MAX,
            )
            .unwrap()
        {
            for s in samples {
                assert_eq!(s.value, (s.timestamp / 1_000_000_000) as f64);
                *per_batch.entry(s.timestamp / 1_000_000_000).or_default() += 1;
            }
        }
        for (batch, n) in &per_batch {
            assert_eq!(
                *n, PER_BATCH,
                "round {round}: batch {batch} is there in part"
            );
        }
        for b in &acked_total {
            assert!(
                per_batch.contains_key(b),
                "round {round}: acknowledged batch {b} is lost"
            );
        }
        next_batch = per_batch.keys().next_back().map_or(0, |b| b + 1);
    }
}

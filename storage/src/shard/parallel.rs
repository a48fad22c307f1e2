//! Decoding the series of one read on several threads.
//!
//! A cold read spends most of its time decoding chunks, one series after
//! another, while the machine's other cores idle. The read plan (a RocksDB
//! iterator over one snapshot) stays on the calling thread, which hands each
//! series' chunk bytes to helper threads as it reads them and decodes too once
//! the plan is done. Answers come back in plan order, so a read's result does
//! not depend on how many threads did it.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use crossbeam_channel::TrySendError;

use crate::codec::{encode_chunk, EncodeOptions};
use crate::model::Sample;
use crate::Result;

/// Below this many encoded bytes a read is decoded on the calling thread
/// alone: starting a helper takes tens of microseconds, and 8 KiB is about
/// 6,000 samples of typical data, 0.4 ms of decoding.
const PARALLEL_FROM_BYTES: usize = 8 << 10;

/// Series read ahead of the decoders, at most (before helpers start, and in
/// their queue): bounds what a read holds beyond what is being decoded, even
/// when its chunks come decoded from the cache and count no bytes.
const READ_AHEAD: usize = 64;

/// How many samples a read may still decode, shared by its threads. Once
/// overdrawn it stays so, and every thread stops at its next window.
pub(super) struct SampleBudget {
    left: AtomicI64,
}

impl SampleBudget {
    pub(super) fn new(max_samples: usize) -> Self {
        Self {
            left: AtomicI64::new(i64::try_from(max_samples).unwrap_or(i64::MAX)),
        }
    }

    /// Spends `n` samples; false once the read has gone over its budget. (It
    /// cannot wrap: that would take 2^63 samples spent.)
    pub(super) fn spend(&self, n: usize) -> bool {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.left.fetch_sub(n, Ordering::Relaxed).saturating_sub(n) >= 0
    }

    pub(super) fn overdrawn(&self) -> bool {
        self.left.load(Ordering::Relaxed) < 0
    }
}

/// Runs `work` on every series `plan` reads, on up to `threads` threads (the
/// calling one included), and answers one result per series in plan order,
/// with the number of threads it ran on (helpers started, plus the caller).
/// `encoded_bytes` says what a series costs to decode (helpers start only for
/// reads worth it); each helper runs `on_helper_start` first. A plan error
/// ends the reading: that series answers the error and the series after it
/// are left out. `stop` is asked before each series is read: once it says
/// so, no more are.
pub(super) fn map_series<T: Send, R: Send>(
    plan: impl Iterator<Item = Result<T>>,
    threads: usize,
    stop: impl Fn() -> bool,
    encoded_bytes: impl Fn(&T) -> usize,
    on_helper_start: fn(),
    work: impl Fn(T) -> R + Sync,
) -> (Vec<Result<R>>, usize) {
    let mut plan = plan.fuse();
    let mut out: Vec<Option<Result<R>>> = Vec::new();
    // The next series, numbered; a plan error is answered at once.
    let mut read = |out: &mut Vec<Option<Result<R>>>| -> Option<(usize, T)> {
        if stop() {
            return None;
        }
        let item = plan.next()?;
        out.push(None);
        let index = out.len() - 1;
        match item {
            Ok(series) => Some((index, series)),
            Err(e) => {
                out[index] = Some(Err(e));
                None
            }
        }
    };
    if threads <= 1 {
        while let Some((i, series)) = read(&mut out) {
            out[i] = Some(Ok(work(series)));
        }
        return (finish(out), 1);
    }
    // Until the read has shown it is worth a helper, the calling thread reads
    // ahead (at most READ_AHEAD series: chunks served from the decoded cache
    // count no bytes) and decodes what it read.
    let mut pending: Vec<(usize, T)> = Vec::new();
    let mut seen_bytes = 0usize;
    while seen_bytes < PARALLEL_FROM_BYTES {
        let Some((i, series)) = read(&mut out) else {
            for (i, series) in pending {
                out[i] = Some(Ok(work(series)));
            }
            return (finish(out), 1);
        };
        seen_bytes += encoded_bytes(&series);
        pending.push((i, series));
        if pending.len() >= READ_AHEAD && seen_bytes < PARALLEL_FROM_BYTES {
            for (i, series) in pending.drain(..) {
                out[i] = Some(Ok(work(series)));
            }
        }
    }

    // Helpers wait on the queue; the calling thread never does (it decodes a
    // queued series itself when the queue is full), so no one waits on a
    // thread that is waiting on them.
    let (tx, rx) = crossbeam_channel::bounded::<(usize, T)>(READ_AHEAD);
    let decode_all = |rx: crossbeam_channel::Receiver<(usize, T)>| {
        rx.iter()
            .map(|(i, series)| (i, work(series)))
            .collect::<Vec<_>>()
    };
    let mut done = Vec::new();
    let mut used = 1;
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|n| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("chronicle-decode-{n}"))
                    .spawn_scoped(scope, move || {
                        on_helper_start();
                        decode_all(rx)
                    })
                    .ok()
            })
            .collect();
        used += helpers.len();
        let mut jobs = pending.into_iter();
        while let Some(mut job) = jobs.next().or_else(|| read(&mut out)) {
            // A full queue (helpers behind, or none started): decode a
            // queued series here, then try again.
            loop {
                match tx.try_send(job) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        job = back;
                        if let Ok((i, series)) = rx.try_recv() {
                            done.push((i, work(series)));
                        }
                    }
                    Err(TrySendError::Disconnected(back)) => {
                        // Unreachable while `rx` lives; decode it here regardless.
                        let (i, series) = back;
                        done.push((i, work(series)));
                        break;
                    }
                }
            }
        }
        drop(tx);
        // The plan is read: the calling thread decodes what is left.
        done.extend(decode_all(rx));
        for helper in helpers {
            // A helper that panicked leaves its series unanswered: an error
            // below, as a panic on the calling thread would fail the read.
            if let Ok(d) = helper.join() {
                done.extend(d);
            }
        }
    });
    for (i, r) in done {
        out[i] = Some(Ok(r));
    }
    (finish(out), used)
}

/// Every series' answer; one never answered (a decoding thread panicked)
/// is an error rather than a silent gap.
fn finish<R>(out: Vec<Option<Result<R>>>) -> Vec<Result<R>> {
    out.into_iter()
        .map(|r| r.unwrap_or(Err(crate::StorageError::DecodeThreadPanicked)))
        .collect()
}

/// Below this many samples a cut encodes on the applying thread alone.
const PARALLEL_ENCODE_FROM_SAMPLES: usize = 16 << 10;

/// Encodes every run of samples into a chunk, on up to `threads` threads;
/// chunks come back in the order of `runs`. A cut of many series at once
/// (every series of a scrape crosses a chunk window together) otherwise
/// stalls the shard's apply for the whole encoding: 1,000 series of 720
/// samples take about 150 ms on one core.
pub(super) fn encode_runs(runs: &[&[Sample]], opts: EncodeOptions, threads: usize) -> Vec<Vec<u8>> {
    let samples: usize = runs.iter().map(|r| r.len()).sum();
    let threads = threads.clamp(1, runs.len().max(1));
    if threads == 1 || samples < PARALLEL_ENCODE_FROM_SAMPLES {
        return runs.iter().map(|r| encode_chunk(r, opts)).collect();
    }
    // Runs are claimed one at a time, so threads that draw large runs do not
    // leave the others idle at the end.
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(run) = runs.get(i) else {
                return done;
            };
            done.push((i, encode_chunk(run, opts)));
        }
    };
    let mut chunks = vec![Vec::new(); runs.len()];
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for helper in helpers {
            // A panic in a helper is the same bug as one on this thread.
            all.extend(
                helper
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        for (i, chunk) in all {
            chunks[i] = chunk;
        }
    });
    chunks
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::StorageError;

    /// `n` jobs of `bytes` each, answering their own number squared; every
    /// seventh sleeps a little, so threads finish out of order.
    fn run(n: usize, bytes: usize, threads: usize) -> (Vec<Result<usize>>, usize) {
        map_series(
            (0..n).map(Ok),
            threads,
            || false,
            |_| bytes,
            || {},
            |i| {
                if i % 7 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                i * i
            },
        )
    }

    #[test]
    fn answers_come_back_in_plan_order_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            // Many more jobs than the queue holds, so the caller also
            // decodes when it is full.
            let (out, used) = run(1000, 1 << 10, threads);
            let got: Vec<usize> = out.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(got, (0..1000).map(|i| i * i).collect::<Vec<_>>());
            assert_eq!(used, threads, "threads {threads}");
        }
    }

    #[test]
    fn a_small_read_stays_on_the_calling_thread() {
        let (out, used) = run(10, 100, 8);
        assert_eq!(out.len(), 10);
        assert_eq!(used, 1);
        let (out, used) = run(0, 100, 8);
        assert!(out.is_empty());
        assert_eq!(used, 1);
    }

    #[test]
    fn a_read_of_cached_chunks_stays_on_one_thread_until_it_meets_bytes() {
        // Series that cost nothing to decode (their chunks come decoded) do
        // not start helpers, however many; bytes met later still do.
        let (out, used) = run(1000, 0, 4);
        assert_eq!(out.len(), 1000);
        assert_eq!(used, 1);
        let (out, used) = map_series(
            (0..1000usize).map(Ok),
            4,
            || false,
            |i| if *i >= 500 { 1 << 10 } else { 0 },
            || {},
            |i| i,
        );
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, r)| *r.as_ref().unwrap() == i));
        assert_eq!(used, 4);
    }

    #[test]
    fn helpers_run_the_start_hook() {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let (_, used) = map_series(
            (0..1000usize).map(Ok),
            3,
            || false,
            |_| 1 << 10,
            || {
                STARTED.fetch_add(1, Ordering::Relaxed);
            },
            |i| i,
        );
        assert_eq!(used, 3);
        assert_eq!(STARTED.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_plan_error_answers_that_series_and_ends_the_read() {
        for (threads, at) in [(1, 5), (4, 5), (4, 900)] {
            let plan = (0..1000).map(|i| {
                if i == at {
                    Err(StorageError::InvalidRequest("broken".into()))
                } else {
                    Ok(i)
                }
            });
            let (out, _) = map_series(plan, threads, || false, |_| 1 << 10, || {}, |i| i);
            assert_eq!(out.len(), at + 1, "threads {threads}");
            assert!(out[..at].iter().all(|r| r.is_ok()));
            assert!(matches!(out[at], Err(StorageError::InvalidRequest(_))));
        }
    }

    #[test]
    fn stop_ends_the_reading_and_what_was_read_is_answered() {
        for threads in [1, 4] {
            let done = AtomicUsize::new(0);
            let (out, _) = map_series(
                (0..100_000).map(Ok),
                threads,
                || done.load(Ordering::Relaxed) >= 500,
                |_| 1 << 10,
                || {},
                |i: usize| {
                    done.fetch_add(1, Ordering::Relaxed);
                    i
                },
            );
            // Read ahead is bounded: the queue, plus what was pending.
            assert!(out.len() < 500 + READ_AHEAD + 64, "{}", out.len());
            assert!(out
                .iter()
                .enumerate()
                .all(|(i, r)| *r.as_ref().unwrap() == i));
        }
    }

    #[test]
    fn a_panicking_helper_is_an_error_not_a_gap() {
        let (out, used) = map_series(
            (0..1000usize).map(Ok),
            2,
            || false,
            |_| 1 << 10,
            || {},
            |i| {
                if std::thread::current().name() == Some("chronicle-decode-1") {
                    panic!("helper fails");
                }
                // Slow enough that the helper gets a series before the
                // calling thread has decoded them all.
                std::thread::sleep(Duration::from_micros(100));
                i
            },
        );
        assert_eq!(used, 2);
        assert_eq!(out.len(), 1000);
        let failed = out
            .iter()
            .filter(|r| matches!(r, Err(StorageError::DecodeThreadPanicked)))
            .count();
        assert!(failed >= 1);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, r)| r.as_ref().map_or(true, |v| *v == i)));
    }

    #[test]
    fn the_budget_is_spent_across_threads_and_stays_overdrawn() {
        let budget = SampleBudget::new(10);
        assert!(budget.spend(4));
        assert!(budget.spend(6));
        assert!(!budget.overdrawn());
        assert!(!budget.spend(1));
        assert!(budget.overdrawn());
        assert!(!budget.spend(0));
        let unlimited = SampleBudget::new(usize::MAX);
        assert!(unlimited.spend(usize::MAX / 4));
    }

    #[test]
    fn runs_encode_on_several_threads_to_the_chunks_one_thread_makes() {
        // Runs of different lengths and shapes, enough samples to start helpers.
        let runs: Vec<Vec<Sample>> = (0..120)
            .map(|r| {
                (0..(50 + r * 7))
                    .map(|i| Sample::new(1_000 * i as i64, ((i * r) % 97) as f64 / 4.0))
                    .collect()
            })
            .collect();
        let runs: Vec<&[Sample]> = runs.iter().map(|r| &r[..]).collect();
        assert!(runs.iter().map(|r| r.len()).sum::<usize>() >= PARALLEL_ENCODE_FROM_SAMPLES);
        let opts = EncodeOptions::default();
        let one = encode_runs(&runs, opts, 1);
        assert_eq!(one.len(), runs.len());
        for threads in [2, 3, 8] {
            assert_eq!(encode_runs(&runs, opts, threads), one, "{threads} threads");
        }
        for (chunk, run) in one.iter().zip(&runs) {
            assert_eq!(crate::codec::decode_chunk(chunk).unwrap(), run.to_vec());
        }
        assert!(encode_runs(&[], opts, 4).is_empty());
    }
}

//! Generated data shaped like what exporters send, for benchmarks and tests.
//!
//! Each series is one scrape target's metric, sampled every `interval` with the
//! target's own phase and a few milliseconds of jitter (timestamps at millisecond
//! precision, as Prometheus scrapes and remote-writes them). Values follow the
//! precision exporters report: CPU percent with two decimals, temperatures with one,
//! memory in whole pages, integer counters, and some constant series.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::model::{Label, Point};

const MS: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Mean-reverting random walk in [0, 100], two decimals.
    CpuPercent { mean: f64 },
    /// Slow random walk, one decimal.
    Temperature,
    /// Bytes in 4 KiB pages, drifting.
    MemoryBytes,
    /// Integer counter with Poisson-like increments at a per-series rate.
    Counter { per_scrape: f64 },
    /// `up`, limits, info metrics.
    Constant,
    /// Full-precision random doubles (the worst case for any float codec).
    Noise,
}

struct Series {
    metric: String,
    labels: Vec<Label>,
    shape: Shape,
    phase_ms: i64,
    value: f64,
}

/// Deterministic generator of points, one scrape round at a time.
pub struct Workload {
    rng: SmallRng,
    series: Vec<Series>,
    interval: i64,
    start: i64,
    round: i64,
    next_series: usize,
}

impl Workload {
    /// `series` series of the realistic mix, sampled every `interval_ns` from `start_ns`.
    pub fn realistic(series: usize, interval_ns: i64, start_ns: i64, seed: u64) -> Self {
        Self::build(series, interval_ns, start_ns, seed, false)
    }

    /// Like [`Workload::realistic`] but every value is a full-precision random double.
    pub fn noisy(series: usize, interval_ns: i64, start_ns: i64, seed: u64) -> Self {
        Self::build(series, interval_ns, start_ns, seed, true)
    }

    fn build(n: usize, interval: i64, start: i64, seed: u64, noisy: bool) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let interval_ms = (interval / MS).max(1);
        let series = (0..n)
            .map(|i| {
                let host = format!("host-{:03}", i / 20);
                let dc = ["us-east-1", "eu-west-1", "ap-south-1"][i % 3];
                let slot = i % 20;
                let (metric, extra, shape, value) = if noisy {
                    ("noise", vec![], Shape::Noise, 0.0)
                } else {
                    match slot {
                        0..=5 => {
                            let mean = rng.random_range(2.0..80.0);
                            let mode = ["user", "system", "iowait", "idle", "steal", "irq"][slot];
                            (
                                "cpu_usage_percent",
                                vec![Label::new("mode", mode)],
                                Shape::CpuPercent { mean },
                                mean,
                            )
                        }
                        6..=8 => {
                            let sensor = format!("temp{}", slot - 6);
                            (
                                "node_hwmon_temp_celsius",
                                vec![Label::new("sensor", sensor)],
                                Shape::Temperature,
                                rng.random_range(35.0f64..70.0).round(),
                            )
                        }
                        9..=11 => {
                            let kind = ["active", "cached", "free"][slot - 9];
                            let pages = rng.random_range(100_000u32..4_000_000) as f64;
                            (
                                "node_memory_bytes",
                                vec![Label::new("kind", kind)],
                                Shape::MemoryBytes,
                                pages * 4096.0,
                            )
                        }
                        12..=17 => {
                            let (metric, rate) = match slot {
                                12 => ("http_requests_total", rng.random_range(5.0..500.0)),
                                13 => ("http_request_errors_total", rng.random_range(0.0..2.0)),
                                14 => (
                                    "node_network_receive_packets_total",
                                    rng.random_range(100.0..20_000.0),
                                ),
                                15 => (
                                    "node_disk_writes_completed_total",
                                    rng.random_range(1.0..300.0),
                                ),
                                16 => (
                                    "node_context_switches_total",
                                    rng.random_range(1_000.0..50_000.0),
                                ),
                                _ => ("process_open_fds_changes_total", rng.random_range(0.0..5.0)),
                            };
                            (
                                metric,
                                vec![],
                                Shape::Counter { per_scrape: rate },
                                rng.random_range(0u32..1_000_000) as f64,
                            )
                        }
                        18 => ("up", vec![], Shape::Constant, 1.0),
                        _ => (
                            "node_memory_limit_bytes",
                            vec![],
                            Shape::Constant,
                            17_179_869_184.0,
                        ),
                    }
                };
                let mut labels = vec![
                    Label::new("dc", dc),
                    Label::new("host", host),
                    Label::new("job", "node"),
                ];
                labels.extend(extra);
                labels.sort();
                Series {
                    metric: metric.to_string(),
                    labels,
                    shape,
                    phase_ms: rng.random_range(0..interval_ms),
                    value,
                }
            })
            .collect();
        Self {
            rng,
            series,
            interval,
            start,
            round: 0,
            next_series: 0,
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The next `n` points, scrape round by scrape round.
    pub fn next_batch(&mut self, n: usize) -> Vec<Point> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let i = self.next_series;
            let jitter_ms = self.rng.random_range(-5i64..=5);
            let normal = gaussian(&mut self.rng);
            let uniform = self.rng.random::<f64>();
            let s = &mut self.series[i];
            s.value = step(s.shape, s.value, normal, uniform);
            let ts = self.start + self.round * self.interval + (s.phase_ms + jitter_ms) * MS;
            out.push(Point {
                metric: s.metric.clone(),
                labels: s.labels.clone(),
                value: s.value,
                timestamp: ts,
            });
            self.next_series += 1;
            if self.next_series == self.series.len() {
                self.next_series = 0;
                self.round += 1;
            }
        }
        out
    }
}

fn gaussian(rng: &mut SmallRng) -> f64 {
    // Box-Muller; u1 in (0, 1] keeps ln finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn round_to(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

fn step(shape: Shape, v: f64, normal: f64, uniform: f64) -> f64 {
    match shape {
        Shape::CpuPercent { mean } => {
            round_to((v + normal * 1.5 + 0.1 * (mean - v)).clamp(0.0, 100.0), 2)
        }
        Shape::Temperature => round_to(v + normal * 0.2, 1),
        Shape::MemoryBytes => {
            let pages = (v / 4096.0 + (normal * 300.0).round()).max(1.0);
            pages * 4096.0
        }
        Shape::Counter { per_scrape } => {
            // Poisson-like: mean per_scrape, spread sqrt(per_scrape).
            let inc = (per_scrape + normal * per_scrape.sqrt()).round().max(0.0);
            v + inc
        }
        Shape::Constant => v,
        Shape::Noise => uniform * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_cover_every_series_with_jittered_millisecond_timestamps() {
        let interval = 10_000 * MS;
        let mut w = Workload::realistic(100, interval, 0, 7);
        let batch = w.next_batch(300);
        assert_eq!(batch.len(), 300);
        assert!(batch.iter().all(|p| p.timestamp % MS == 0));
        // Three rounds of the same 100 series, each about one interval apart.
        for i in 0..100 {
            let gap = batch[i + 100].timestamp - batch[i].timestamp;
            assert!((gap - interval).abs() <= 10 * MS, "gap {gap}");
            assert_eq!(batch[i].labels, batch[i + 100].labels);
        }
        let cpu = batch
            .iter()
            .find(|p| p.metric == "cpu_usage_percent")
            .unwrap();
        assert_eq!(round_to(cpu.value, 2), cpu.value);
    }
}

//! A labelled set to measure detection on: series with daily (and for some
//! weekly) seasonality, autocorrelated noise with heavy tails, occasional
//! gaps in scraping, and anomalies of every kind planted at known times;
//! and the scoring of detections against the labels.
//!
//! Scoring is window-based, as in the Numenta Anomaly Benchmark and most
//! of the time-series anomaly literature: each planted anomaly is a window
//! from its start to its end plus a tail (the return to normal is part of
//! the episode). A labelled window is found (a true positive) when a
//! detection starts inside it; a detection that starts inside no window is
//! a false positive. Precision = detections in windows / detections,
//! recall = windows found / windows, F1 their harmonic mean; the delay is
//! the time from a window's start to the first detection in it.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::detector::{DetectorConfig, Event, Kind, SeriesDetector};

/// A planted anomaly.
#[derive(Debug, Clone, Serialize)]
pub struct Label {
    pub series: usize,
    pub kind: Kind,
    pub start_ms: i64,
    /// End of the window, tail included.
    pub end_ms: i64,
}

/// One generated series: its samples (time, value) and labels.
pub struct PlantedSeries {
    pub samples: Vec<(i64, f64)>,
    pub labels: Vec<Label>,
}

/// The shape of the generated set.
#[derive(Debug, Clone, Copy)]
pub struct PlantedConfig {
    pub series: usize,
    pub days: i64,
    /// Sample interval.
    pub step_ms: i64,
    /// Days before the first anomaly: the detector learns the season (two
    /// weeks show a weekly one twice). Detections in them are not scored
    /// (the "probationary period" of the Numenta benchmark).
    pub warmup_days: i64,
    /// Anomalies planted per series (kinds in turn).
    pub per_series: usize,
    pub seed: u64,
}

impl Default for PlantedConfig {
    fn default() -> Self {
        Self {
            series: 60,
            days: 21,
            step_ms: 60_000,
            warmup_days: 15,
            per_series: 2,
            seed: 7,
        }
    }
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Student-t with 10 degrees of freedom (heavier tails than a normal
/// distribution: a 6-sigma sample is about a hundred times likelier),
/// scaled to unit variance.
fn heavy(rng: &mut SmallRng) -> f64 {
    let normal = |rng: &mut SmallRng| {
        // Box-Muller.
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let z = normal(rng);
    let chi2: f64 = (0..10).map(|_| normal(rng).powi(2)).sum();
    z / (chi2 / 10.0).sqrt() / (10.0f64 / 8.0).sqrt()
}

/// How much of the weekend pattern applies at `t` (0 on weekdays, 1 on
/// weekends, logistic transitions of a few hours around midnight).
fn weekend_weight(t: i64) -> f64 {
    let x = (t as f64 / DAY as f64).rem_euclid(7.0);
    let s = |v: f64| 1.0 / (1.0 + (-v / 0.1).exp());
    s(x - 5.0) - s(x - 7.0) + 1.0 - s(x)
}

/// Generates series `index` of the set.
pub fn series(config: &PlantedConfig, index: usize) -> PlantedSeries {
    let mut rng = SmallRng::seed_from_u64(config.seed ^ (index as u64).wrapping_mul(0x9e37_79b9));
    let level = rng.random_range(20.0..500.0);
    let amplitude = level * rng.random_range(0.1..0.5);
    let weekly = index.is_multiple_of(3);
    let sigma = amplitude * rng.random_range(0.02..0.06);
    let phase = rng.random_range(0.0..std::f64::consts::TAU);
    let n = (config.days * DAY / config.step_ms) as usize;

    // Anomalies at distinct times after the warm-up, kinds in turn.
    let mut labels = Vec::new();
    let mut effects: Vec<(Kind, i64, i64, f64)> = Vec::new();
    let usable = (config.days - config.warmup_days) * DAY;
    let slot = usable / config.per_series.max(1) as i64;
    for k in 0..config.per_series {
        let kind = Kind::ALL[(index * config.per_series + k) % Kind::ALL.len()];
        let from = config.warmup_days * DAY + k as i64 * slot;
        let start = from + rng.random_range(slot / 5..slot * 3 / 5);
        let start = start - start % config.step_ms;
        let (length, size, tail) = match kind {
            Kind::Spike | Kind::Dip => (
                config.step_ms * rng.random_range(1..4),
                sigma * rng.random_range(10.0..16.0),
                10 * MINUTE,
            ),
            Kind::LevelShift => (
                rng.random_range(2 * HOUR..6 * HOUR),
                sigma * rng.random_range(4.0..8.0),
                HOUR,
            ),
            Kind::Trend => (
                rng.random_range(2 * HOUR..5 * HOUR),
                sigma * rng.random_range(12.0..20.0),
                HOUR,
            ),
            Kind::Absent => (rng.random_range(20 * MINUTE..60 * MINUTE), 0.0, 5 * MINUTE),
        };
        let sign = if kind == Kind::Dip || (kind != Kind::Spike && rng.random_bool(0.5)) {
            -1.0
        } else {
            1.0
        };
        effects.push((kind, start, start + length, sign * size));
        labels.push(Label {
            series: index,
            kind,
            start_ms: start,
            end_ms: start + length + tail,
        });
    }

    let mut samples = Vec::with_capacity(n);
    let mut ar = 0.0;
    for i in 0..n {
        let t = i as i64 * config.step_ms;
        let day_angle = std::f64::consts::TAU * (t % DAY) as f64 / DAY as f64 + phase;
        let mut seasonal = day_angle.sin() + 0.3 * (2.0 * day_angle).sin();
        if weekly {
            // Weekends (days 5 and 6) are quieter, blended in and out over
            // a few hours around midnight as real traffic does.
            let w = weekend_weight(t);
            seasonal = (1.0 - w) * seasonal + w * (0.4 * seasonal - 0.5);
        }
        ar = 0.5 * ar + heavy(&mut rng) * (1.0f64 - 0.25).sqrt();
        let mut value = level + amplitude * seasonal + sigma * ar;
        let mut missing = false;
        for &(kind, start, end, size) in &effects {
            if t < start || t >= end {
                continue;
            }
            match kind {
                Kind::Spike | Kind::Dip | Kind::LevelShift => value += size,
                Kind::Trend => value += size * (t - start) as f64 / (end - start) as f64,
                Kind::Absent => missing = true,
            }
        }
        // Ordinary scrape misses (a sample now and then): not anomalies.
        if missing || rng.random_bool(0.002) {
            continue;
        }
        samples.push((t, value));
    }
    PlantedSeries { samples, labels }
}

/// Precision, recall, F1 and delays of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub series: usize,
    pub windows: usize,
    pub found: usize,
    pub detections: usize,
    pub false_positives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Delay from a window's start to its first detection, minutes.
    pub delay_p50_minutes: f64,
    pub delay_p90_minutes: f64,
    /// Per kind: (windows, found).
    pub by_kind: Vec<(Kind, usize, usize)>,
    /// False positives by the kind the detector gave them.
    pub false_by_kind: Vec<(Kind, usize)>,
    /// Most episodes open at once on one series (1: no alert storm).
    pub max_open_per_series: usize,
}

/// Runs a fresh detector over every series of the set and scores it.
pub fn evaluate(planted: &PlantedConfig, detector: &DetectorConfig) -> Score {
    let mut windows = Vec::new();
    let mut detections: Vec<(usize, i64, Kind)> = Vec::new();
    let mut max_open = 0usize;
    let mut scratch = Vec::new();
    for s in 0..planted.series {
        let data = series(planted, s);
        windows.extend(data.labels.iter().cloned());
        let mut d = SeriesDetector::new();
        let mut open = 0usize;
        let probation = planted.warmup_days * DAY;
        let mut note = |e: Option<Event>, open: &mut usize| match e {
            Some(Event::Opened(ep)) => {
                *open += 1;
                max_open = max_open.max(*open);
                if ep.start_ms >= probation {
                    detections.push((s, ep.start_ms, ep.kind));
                }
            }
            Some(Event::Closed(_)) => *open = open.saturating_sub(1),
            _ => {}
        };
        let mut next_tick = 0i64;
        for &(t, v) in &data.samples {
            // The clock ticks every step, with or without data.
            while next_tick < t {
                note(d.tick(detector, next_tick), &mut open);
                next_tick += planted.step_ms;
            }
            note(d.observe(detector, t, v, &mut scratch), &mut open);
        }
    }
    score(planted.series, &windows, &detections, max_open)
}

/// Scores detections (series, start, kind) against labelled windows.
pub fn score(
    series: usize,
    windows: &[Label],
    detections: &[(usize, i64, Kind)],
    max_open: usize,
) -> Score {
    let inside =
        |w: &Label, d: &(usize, i64, Kind)| d.0 == w.series && d.1 >= w.start_ms && d.1 <= w.end_ms;
    let mut false_by_kind: Vec<(Kind, usize)> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
    for d in detections {
        if !windows.iter().any(|w| inside(w, d)) {
            if let Some(k) = false_by_kind.iter_mut().find(|k| k.0 == d.2) {
                k.1 += 1;
            }
        }
    }
    let false_positives = false_by_kind.iter().map(|k| k.1).sum::<usize>();
    let mut delays = Vec::new();
    let mut by_kind: Vec<(Kind, usize, usize)> = Kind::ALL.iter().map(|k| (*k, 0, 0)).collect();
    let mut found = 0;
    for w in windows {
        let first = detections
            .iter()
            .filter(|d| inside(w, d))
            .map(|d| d.1)
            .min();
        let entry = by_kind
            .iter_mut()
            .find(|k| k.0 == w.kind)
            .expect("every kind");
        entry.1 += 1;
        if let Some(t) = first {
            found += 1;
            entry.2 += 1;
            delays.push((t - w.start_ms) as f64 / MINUTE as f64);
        }
    }
    let precision = if detections.is_empty() {
        0.0
    } else {
        (detections.len() - false_positives) as f64 / detections.len() as f64
    };
    let recall = if windows.is_empty() {
        0.0
    } else {
        found as f64 / windows.len() as f64
    };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    delays.sort_unstable_by(f64::total_cmp);
    let q = |p: f64| {
        if delays.is_empty() {
            f64::NAN
        } else {
            delays[((delays.len() - 1) as f64 * p).round() as usize]
        }
    };
    Score {
        series,
        windows: windows.len(),
        found,
        detections: detections.len(),
        false_positives,
        precision,
        recall,
        f1,
        delay_p50_minutes: q(0.5),
        delay_p90_minutes: q(0.9),
        by_kind,
        false_by_kind,
        max_open_per_series: max_open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_counts_windows_and_false_positives() {
        let w = |series, start_ms, end_ms| Label {
            series,
            kind: Kind::Spike,
            start_ms,
            end_ms,
        };
        let windows = [w(0, 100, 200), w(1, 100, 200), w(0, 500, 600)];
        // Two in the first window, one in another series' window, one outside.
        let detections = [
            (0, 120, Kind::Spike),
            (0, 150, Kind::Spike),
            (1, 200, Kind::Dip),
            (0, 300, Kind::Trend),
        ];
        let s = score(2, &windows, &detections, 1);
        assert_eq!((s.found, s.false_positives), (2, 1));
        assert!((s.precision - 0.75).abs() < 1e-9);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.by_kind[0], (Kind::Spike, 3, 2));
    }

    #[test]
    fn the_planted_set_is_deterministic_and_labels_every_kind() {
        let c = PlantedConfig {
            series: 5,
            ..PlantedConfig::default()
        };
        let a = series(&c, 3);
        let b = series(&c, 3);
        assert_eq!(a.samples, b.samples);
        let kinds: std::collections::BTreeSet<&str> = (0..5)
            .flat_map(|i| series(&c, i).labels)
            .map(|l| l.kind.as_str())
            .collect();
        assert_eq!(kinds.len(), 5);
    }

    #[test]
    fn the_default_detector_meets_the_quality_target_on_a_small_planted_set() {
        // The full figure comes from `chronicle bench detect`; this keeps a
        // regression from passing unnoticed (a smaller set, the same code).
        let planted = PlantedConfig {
            series: 10,
            ..PlantedConfig::default()
        };
        let detector = DetectorConfig {
            absent_after_ms: 10 * MINUTE,
            ..DetectorConfig::default()
        };
        let s = evaluate(&planted, &detector);
        assert!(s.f1 >= 0.8, "{s:#?}");
        assert_eq!(s.max_open_per_series, 1);
    }
}

//! The seasonal baseline of one series: values averaged into coarse time
//! buckets (an hour by default), the period found by autocorrelation of
//! those buckets, and the expected value at a time read from the same
//! phase of the last few periods.
//!
//! Memory is fixed per series: `history` bucket means (f32) and one bucket
//! being filled. With the defaults (1 h buckets, 15 days kept) that is
//! 360 values, enough to see a weekly period twice.

use serde::{Deserialize, Serialize};

/// How the baseline is learnt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeasonConfig {
    /// Width of a bucket, milliseconds.
    pub bucket_ms: i64,
    /// Buckets kept: the baseline needs two periods before the bucket
    /// being judged, so at least twice the longest period plus a bit.
    pub history: usize,
    /// Longest period considered, in buckets.
    pub max_period: usize,
    /// Shortest period considered, in buckets.
    pub min_period: usize,
    /// Autocorrelation a period needs to count.
    pub min_correlation: f64,
    /// Periods averaged (by median) for the baseline.
    pub cycles: usize,
}

impl Default for SeasonConfig {
    fn default() -> Self {
        Self {
            bucket_ms: 3_600_000,
            history: 360,
            max_period: 168,
            min_period: 3,
            min_correlation: 0.3,
            cycles: 3,
        }
    }
}

/// Buckets needed before a period is looked for (three days of hours):
/// with fewer, noise correlates with itself often enough to fake one, and
/// a day's lag cannot be told from its neighbours.
const MIN_BUCKETS: usize = 72;

/// Bucket means of one series and the period they show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Season {
    /// Index (time / bucket_ms) of the bucket being filled.
    current: i64,
    sum: f64,
    count: u32,
    /// Completed bucket means, oldest first; NaN where a bucket had no data.
    means: std::collections::VecDeque<f32>,
    /// The period, in buckets, when one was found.
    period: Option<usize>,
    /// Buckets completed since the period was last looked for.
    since_search: usize,
}

impl Season {
    pub fn new() -> Self {
        Self {
            current: i64::MIN,
            sum: 0.0,
            count: 0,
            means: std::collections::VecDeque::new(),
            period: None,
            since_search: 0,
        }
    }

    /// Whether enough history was seen to have looked for a period: before
    /// that, a slow daily swing is indistinguishable from a trend.
    pub fn learnt(&self) -> bool {
        self.means.len() >= MIN_BUCKETS
    }

    /// The period in buckets, when one was found.
    pub fn period(&self) -> Option<usize> {
        self.period
    }

    /// The period in milliseconds, when one was found.
    pub fn period_ms(&self, config: &SeasonConfig) -> Option<i64> {
        self.period.map(|p| p as i64 * config.bucket_ms)
    }

    /// Adds a sample. Samples older than the bucket being filled are
    /// ignored (the baseline is learnt in time order).
    pub fn add(&mut self, config: &SeasonConfig, t_ms: i64, value: f64) {
        let bucket = t_ms.div_euclid(config.bucket_ms);
        if self.current == i64::MIN {
            self.current = bucket;
        }
        if bucket < self.current || !value.is_finite() {
            return;
        }
        if bucket > self.current {
            let mean = if self.count > 0 {
                (self.sum / f64::from(self.count)) as f32
            } else {
                f32::NAN
            };
            self.push(config, mean);
            // Buckets without data in between (at most a history's worth).
            let gap = (bucket - self.current - 1).min(config.history as i64);
            for _ in 0..gap {
                self.push(config, f32::NAN);
            }
            self.current = bucket;
            self.sum = 0.0;
            self.count = 0;
        }
        self.sum += value;
        self.count += 1;
    }

    fn push(&mut self, config: &SeasonConfig, mean: f32) {
        if self.means.len() == config.history {
            self.means.pop_front();
        }
        self.means.push_back(mean);
        self.since_search += 1;
        // Looked for again every day's worth of buckets (or as soon as
        // there is enough history the first time).
        let due = self.period.is_none() || self.since_search >= 24;
        if due && self.means.len() >= MIN_BUCKETS.max(2 * config.min_period) {
            self.since_search = 0;
            self.period = find_period(&self.means, config, self.period);
        }
    }

    /// The expected value at `t_ms`: the median, over the last `cycles`
    /// periods, of the bucket means at the same phase, interpolated between
    /// the two nearest bucket centres. `None` without a period or history.
    pub fn baseline(&self, config: &SeasonConfig, t_ms: i64) -> Option<f64> {
        let period = self.period? as i64;
        // Position in buckets, relative to bucket centres.
        let pos = t_ms as f64 / config.bucket_ms as f64 - 0.5;
        let lower = pos.floor() as i64;
        let frac = pos - lower as f64;
        let a = self.phase_value(config, lower, period)?;
        let b = self.phase_value(config, lower + 1, period).unwrap_or(a);
        Some(a + (b - a) * frac)
    }

    /// Median of the completed buckets at `bucket - k * period`.
    fn phase_value(&self, config: &SeasonConfig, bucket: i64, period: i64) -> Option<f64> {
        // The newest completed bucket's index.
        let newest = self.current - 1;
        let mut seen = [0f64; 8];
        let mut n = 0;
        let mut k = 1;
        while n < config.cycles.min(seen.len()) && k <= 4 * config.cycles as i64 {
            let b = bucket - k * period;
            k += 1;
            if b > newest {
                continue;
            }
            let back = (newest - b) as usize;
            if back >= self.means.len() {
                break;
            }
            let v = self.means[self.means.len() - 1 - back];
            if v.is_finite() {
                seen[n] = f64::from(v);
                n += 1;
            }
        }
        // One period alone is one noisy sample of the pattern.
        if n < 2.min(config.cycles) {
            return None;
        }
        let s = &mut seen[..n];
        s.sort_unstable_by(f64::total_cmp);
        Some(if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        })
    }
}

impl Season {
    pub(crate) fn encode(&self, w: &mut crate::checkpoint::Writer) {
        w.i64(self.current);
        w.f64(self.sum);
        w.u32(self.count);
        w.u32(self.means.len() as u32);
        for m in &self.means {
            w.f32(*m);
        }
        w.u32(self.period.map_or(0, |p| p as u32));
        w.u32(self.since_search as u32);
    }

    pub(crate) fn decode(
        r: &mut crate::checkpoint::Reader,
        config: &SeasonConfig,
    ) -> Result<Self, crate::checkpoint::CheckpointError> {
        let current = r.i64("season")?;
        let sum = r.f64("season")?;
        let count = r.u32("season")?;
        let n = r.count(4, config.history, "bucket means")?;
        let mut means = std::collections::VecDeque::with_capacity(n);
        for _ in 0..n {
            means.push_back(r.f32("bucket means")?);
        }
        let period = match r.u32("period")? as usize {
            0 => None,
            p if p <= config.max_period => Some(p),
            p => {
                return Err(crate::checkpoint::CheckpointError(format!(
                    "a period of {p} buckets"
                )))
            }
        };
        let since_search = r.u32("season")? as usize;
        Ok(Self {
            current,
            sum,
            count,
            means,
            period,
            since_search,
        })
    }
}

impl Default for Season {
    fn default() -> Self {
        Self::new()
    }
}

/// The period (in buckets) with the strongest autocorrelation, or a
/// divisor of it that correlates almost as well (a day rather than a week
/// when weekdays and weekends look alike); `current` is kept unless the new
/// one is clearly better (periods that flip make baselines jump). `None`
/// when no lag reaches `min_correlation`.
/// Whether `a` is not greater than `b` (a missing `a` never is).
fn not_above(a: f64, b: f64) -> bool {
    a.partial_cmp(&b) != Some(std::cmp::Ordering::Greater)
}

pub fn find_period(
    means: &std::collections::VecDeque<f32>,
    config: &SeasonConfig,
    current: Option<usize>,
) -> Option<usize> {
    let n = means.len();
    let values: Vec<f64> = means.iter().map(|v| f64::from(*v)).collect();
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() < 2 * config.min_period {
        return None;
    }
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / finite.len() as f64;
    if var <= f64::EPSILON * mean.abs().max(1.0) {
        return None;
    }
    let acf = |lag: usize| -> f64 {
        let (mut s, mut m) = (0.0, 0usize);
        for i in lag..n {
            let (a, b) = (values[i], values[i - lag]);
            if a.is_finite() && b.is_finite() {
                s += (a - mean) * (b - mean);
                m += 1;
            }
        }
        if m < config.min_period {
            return f64::NAN;
        }
        let r = s / m as f64 / var;
        // Noise alone gives |r| up to about 2/sqrt(m): ask for twice that.
        if r < 4.0 / (m as f64).sqrt() {
            return f64::NAN;
        }
        r
    };
    let max_lag = (n / 2).min(config.max_period);
    if max_lag < config.min_period + 1 {
        return None;
    }
    // Lags below the shortest period are computed too: a peak at the
    // shortest lag must rise above its left neighbour like any other (a
    // smooth series' autocorrelation falls from lag 1, which is no period).
    let r: Vec<f64> = (0..=max_lag + 1)
        .map(|lag| {
            if lag == 0 {
                f64::NAN
            } else {
                acf(lag.min(n - 1))
            }
        })
        .collect();
    // Local maxima only: a smooth series correlates with itself at short lags.
    let peaks: Vec<(usize, f64)> = (config.min_period..=max_lag)
        .filter(|&l| {
            r[l].is_finite()
                && r[l] >= config.min_correlation
                && not_above(r[l - 1], r[l])
                && not_above(r[l + 1], r[l])
        })
        .map(|l| (l, r[l]))
        .collect();
    let (best, best_r) =
        peaks
            .iter()
            .copied()
            .fold(None, |acc: Option<(usize, f64)>, p| match acc {
                Some(a) if a.1 >= p.1 => Some(a),
                _ => Some(p),
            })?;
    let chosen = peaks
        .iter()
        .find(|p| best % p.0 == 0 && p.1 >= 0.95 * best_r)
        .map_or(best, |p| p.0);
    match current {
        Some(c) if c <= max_lag && r[c].is_finite() && r[c] >= r[chosen] - 0.02 => Some(c),
        _ => Some(chosen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_pattern_is_found_and_predicted() {
        let config = SeasonConfig::default();
        let mut s = Season::new();
        let day = 86_400_000f64;
        let value = |t: i64| 100.0 + 30.0 * (2.0 * std::f64::consts::PI * t as f64 / day).sin();
        let minute = 60_000;
        for i in 0..(4 * 1440) {
            let t = i * minute;
            s.add(&config, t, value(t));
        }
        assert_eq!(s.period_ms(&config), Some(86_400_000));
        let t = 4 * 1440 * minute + 7 * 3_600_000 + 13 * minute;
        let predicted = s.baseline(&config, t).unwrap();
        assert!(
            (predicted - value(t)).abs() < 0.5,
            "{predicted} vs {}",
            value(t)
        );
    }

    #[test]
    fn a_weekly_pattern_beats_the_daily_one_and_noise_has_none() {
        let config = SeasonConfig::default();
        let mut s = Season::new();
        let hour = 3_600_000i64;
        for h in 0..(15 * 24) {
            let day = (h / 24) % 7;
            let weekend = if day >= 5 { 0.3 } else { 1.0 };
            let daily = (2.0 * std::f64::consts::PI * (h % 24) as f64 / 24.0).sin();
            s.add(
                &config,
                h * hour,
                100.0 + 40.0 * weekend * daily + 30.0 * weekend,
            );
        }
        assert_eq!(s.period, Some(168));

        let mut rng = 12345u64;
        let mut noise = Season::new();
        for h in 0..(15 * 24) {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            noise.add(&config, h * hour, (rng >> 33) as f64 / 2f64.powi(31));
        }
        assert_eq!(noise.period, None);
    }
}

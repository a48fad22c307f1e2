//! Windowed aggregation with mergeable partial states.
//!
//! A [`Partial`] summarises the samples of one window; partials merge associatively,
//! so shards (or series) aggregate separately and a coordinator merges the results.

use std::str::FromStr;

use crate::model::{Label, Sample, STALE_NAN_BITS};
use crate::{Result, StorageError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggregateFunction {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    First,
    Last,
    /// Sample standard deviation (divides by n - 1).
    Stddev,
    /// Percentile in [0, 100], linear interpolation between closest ranks.
    Percentile(f64),
    /// Per-second increase of a counter, reset-aware, summed over the group's series.
    Rate,
}

impl AggregateFunction {
    /// The short name used in downsampled series names and requests.
    pub fn name(&self) -> String {
        match self {
            AggregateFunction::Count => "count".into(),
            AggregateFunction::Sum => "sum".into(),
            AggregateFunction::Mean => "mean".into(),
            AggregateFunction::Min => "min".into(),
            AggregateFunction::Max => "max".into(),
            AggregateFunction::First => "first".into(),
            AggregateFunction::Last => "last".into(),
            AggregateFunction::Stddev => "stddev".into(),
            AggregateFunction::Percentile(p) => format!("p{p}"),
            AggregateFunction::Rate => "rate".into(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let AggregateFunction::Percentile(p) = self {
            if !(0.0..=100.0).contains(p) {
                return Err(StorageError::InvalidRequest(format!(
                    "percentile {p} is outside [0, 100]"
                )));
            }
        }
        Ok(())
    }
}

impl FromStr for AggregateFunction {
    type Err = StorageError;

    /// Accepts `count`, `sum`, `mean` (or `avg`), `min`, `max`, `first`, `last`,
    /// `stddev`, `rate`, and `pNN` / `percentile:NN` for percentiles.
    fn from_str(s: &str) -> Result<Self> {
        let f = match s {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "mean" | "avg" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "first" => Self::First,
            "last" => Self::Last,
            "stddev" => Self::Stddev,
            "rate" => Self::Rate,
            _ => {
                let p = s
                    .strip_prefix("percentile:")
                    .or_else(|| s.strip_prefix('p'))
                    .and_then(|p| p.parse::<f64>().ok())
                    .ok_or_else(|| {
                        StorageError::InvalidRequest(format!("unknown aggregate function {s:?}"))
                    })?;
                Self::Percentile(p)
            }
        };
        f.validate()?;
        Ok(f)
    }
}

/// Mergeable summary of one window's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub count: u64,
    pub sum: f64,
    /// Running mean and sum of squared deviations (Welford / Chan et al.).
    pub mean: f64,
    pub m2: f64,
    pub min: f64,
    pub max: f64,
    pub first: Option<Sample>,
    pub last: Option<Sample>,
    /// Kept only for percentiles.
    pub values: Vec<f64>,
    /// Sum of the per-series rates folded in, and how many series gave one.
    pub rate: f64,
    pub rate_series: u64,
}

impl Default for Partial {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: None,
            last: None,
            values: Vec::new(),
            rate: 0.0,
            rate_series: 0,
        }
    }
}

impl Partial {
    pub fn push(&mut self, s: Sample, keep_values: bool) {
        let v = s.value;
        self.count += 1;
        self.sum += v;
        let delta = v - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if self.first.is_none_or(|f| s.timestamp < f.timestamp) {
            self.first = Some(s);
        }
        if self.last.is_none_or(|l| s.timestamp >= l.timestamp) {
            self.last = Some(s);
        }
        if keep_values {
            self.values.push(v);
        }
    }

    pub fn merge(&mut self, o: &Partial) {
        self.rate += o.rate;
        self.rate_series += o.rate_series;
        if o.count == 0 {
            return;
        }
        let n = self.count + o.count;
        let delta = o.mean - self.mean;
        self.m2 += o.m2 + delta * delta * (self.count as f64 * o.count as f64) / n as f64;
        self.mean += delta * o.count as f64 / n as f64;
        self.count = n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if let Some(f) = o.first {
            if self.first.is_none_or(|s| f.timestamp < s.timestamp) {
                self.first = Some(f);
            }
        }
        if let Some(l) = o.last {
            if self.last.is_none_or(|s| l.timestamp >= s.timestamp) {
                self.last = Some(l);
            }
        }
        self.values.extend_from_slice(&o.values);
    }

    /// The function's value, or `None` when the window has too few samples for it.
    pub fn finish(&mut self, f: AggregateFunction) -> Option<f64> {
        if f == AggregateFunction::Rate {
            return (self.rate_series > 0).then_some(self.rate);
        }
        if self.count == 0 {
            return None;
        }
        match f {
            AggregateFunction::Count => Some(self.count as f64),
            AggregateFunction::Sum => Some(self.sum),
            AggregateFunction::Mean => Some(self.sum / self.count as f64),
            AggregateFunction::Min => Some(self.min),
            AggregateFunction::Max => Some(self.max),
            AggregateFunction::First => self.first.map(|s| s.value),
            AggregateFunction::Last => self.last.map(|s| s.value),
            AggregateFunction::Stddev => {
                (self.count >= 2).then(|| (self.m2 / (self.count - 1) as f64).sqrt())
            }
            AggregateFunction::Percentile(p) => Some(percentile(&mut self.values, p)),
            AggregateFunction::Rate => unreachable!("handled above"),
        }
    }
}

/// Linear interpolation between closest ranks (numpy's default).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = p / 100.0 * (values.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    values[lo] + (values[hi] - values[lo]) * (rank - lo as f64)
}

/// Per-series counter state for one window: increase across resets.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterWindow {
    first: Option<Sample>,
    last: Option<Sample>,
    increase: f64,
}

impl CounterWindow {
    pub fn push(&mut self, s: Sample) {
        if let Some(prev) = self.last {
            // A drop means the counter restarted from zero.
            self.increase += if s.value >= prev.value {
                s.value - prev.value
            } else {
                s.value
            };
        } else {
            self.first = Some(s);
        }
        self.last = Some(s);
    }

    /// Increase per second between the window's first and last sample.
    pub fn rate(&self) -> Option<f64> {
        let (f, l) = (self.first?, self.last?);
        let secs = (l.timestamp - f.timestamp) as f64 / 1e9;
        (secs > 0.0).then(|| self.increase / secs)
    }
}

/// Whether a sample takes part in aggregation (Prometheus's stale markers do not).
#[inline]
pub fn is_aggregatable(s: &Sample) -> bool {
    s.value.to_bits() != STALE_NAN_BITS
}

/// Start of the window holding `t`, windows aligned to the epoch.
#[inline]
pub fn window_start(t: i64, window: i64) -> i64 {
    // Near i64::MIN the aligned start is not representable; clamp to it.
    t.checked_sub(t.rem_euclid(window)).unwrap_or(i64::MIN)
}

/// One output series of an aggregation: the group's labels and one point per window.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSeries {
    pub group: Vec<Label>,
    /// Timestamps are window starts.
    pub points: Vec<Sample>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(values: &[f64]) -> Partial {
        let mut p = Partial::default();
        for (i, v) in values.iter().enumerate() {
            p.push(Sample::new(i as i64, *v), true);
        }
        p
    }

    #[test]
    fn merged_partials_equal_one_pass() {
        let all = [3.0, 1.5, 8.25, -2.0, 4.0, 4.0, 10.0];
        let mut whole = partial(&all);
        let mut left = partial(&all[..3]);
        left.merge(&partial(&all[3..]));
        for f in [
            AggregateFunction::Count,
            AggregateFunction::Sum,
            AggregateFunction::Mean,
            AggregateFunction::Min,
            AggregateFunction::Max,
            AggregateFunction::Stddev,
            AggregateFunction::Percentile(90.0),
        ] {
            let (a, b) = (whole.finish(f).unwrap(), left.finish(f).unwrap());
            assert!((a - b).abs() < 1e-9, "{f:?}: {a} vs {b}");
        }
        // Sample stddev of the values above, computed by hand with n - 1.
        let mean = all.iter().sum::<f64>() / 7.0;
        let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
        assert!((whole.finish(AggregateFunction::Stddev).unwrap() - var.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn percentile_interpolates() {
        assert_eq!(percentile(&mut [1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert_eq!(percentile(&mut [5.0], 99.0), 5.0);
        assert_eq!(percentile(&mut [1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
    }

    #[test]
    fn counter_rate_handles_resets() {
        let mut c = CounterWindow::default();
        for (t, v) in [(0, 10.0), (10, 20.0), (20, 5.0), (30, 15.0)] {
            c.push(Sample::new(t * 1_000_000_000, v));
        }
        // 10 + 5 (after the reset) + 10 over 30 s.
        assert!((c.rate().unwrap() - 25.0 / 30.0).abs() < 1e-12);
    }

    #[test]
    fn function_names_parse() {
        assert_eq!(
            "p99".parse::<AggregateFunction>().unwrap(),
            AggregateFunction::Percentile(99.0)
        );
        assert_eq!(
            "avg".parse::<AggregateFunction>().unwrap(),
            AggregateFunction::Mean
        );
        assert!("p101".parse::<AggregateFunction>().is_err());
        assert!("median".parse::<AggregateFunction>().is_err());
    }
}

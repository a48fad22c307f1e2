//! Why two windows match: shape features of each, and which agree.
//! Features are read from the z-normalised windows, so they describe
//! shape, not level or scale.

use serde::{Deserialize, Serialize};

/// One feature of the query and of a match, and whether they agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub feature: String,
    pub query: f64,
    pub matched: f64,
    pub agrees: bool,
}

/// The shape features of a z-normalised window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features {
    /// Least-squares slope over the window, in standard deviations.
    pub trend: f64,
    /// Where the highest and lowest samples are, 0 (start) to 1 (end).
    pub peak_at: f64,
    pub trough_at: f64,
    /// The highest and lowest samples, in standard deviations.
    pub peak: f64,
    pub trough: f64,
    /// Mean absolute change from one sample to the next.
    pub volatility: f64,
    /// The last quarter's mean less the first quarter's.
    pub shift: f64,
}

impl Features {
    pub fn of(z: &[f64]) -> Self {
        let n = z.len().max(1);
        let nf = n as f64;
        let t = |i: usize| i as f64 / (nf - 1.0).max(1.0);
        let t_mean = 0.5;
        let (mut cov, mut var) = (0.0, 0.0);
        for (i, v) in z.iter().enumerate() {
            cov += (t(i) - t_mean) * v;
            var += (t(i) - t_mean).powi(2);
        }
        let (mut peak, mut peak_i, mut trough, mut trough_i) = (f64::MIN, 0, f64::MAX, 0);
        for (i, &v) in z.iter().enumerate() {
            if v > peak {
                (peak, peak_i) = (v, i);
            }
            if v < trough {
                (trough, trough_i) = (v, i);
            }
        }
        let q = (n / 4).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        Self {
            trend: if var > 0.0 { cov / var } else { 0.0 },
            peak_at: t(peak_i),
            trough_at: t(trough_i),
            peak: if z.is_empty() { 0.0 } else { peak },
            trough: if z.is_empty() { 0.0 } else { trough },
            volatility: z.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / nf,
            shift: mean(&z[n.saturating_sub(q)..]) - mean(&z[..q.min(z.len())]),
        }
    }

    /// Each feature side by side, with the tolerance within which they agree.
    pub fn compare(&self, other: &Features) -> Vec<Agreement> {
        let row = |feature: &str, query: f64, matched: f64, tolerance: f64| Agreement {
            feature: feature.to_string(),
            query: round(query),
            matched: round(matched),
            agrees: (query - matched).abs() <= tolerance,
        };
        vec![
            row("trend", self.trend, other.trend, 0.5),
            row("shift", self.shift, other.shift, 0.5),
            row("peak_at", self.peak_at, other.peak_at, 0.1),
            row("trough_at", self.trough_at, other.trough_at, 0.1),
            row("peak", self.peak, other.peak, 0.5),
            row("trough", self.trough, other.trough, 0.5),
            row("volatility", self.volatility, other.volatility, 0.1),
        ]
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::znormalize;

    #[test]
    fn features_read_the_shape() {
        let ramp: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let f = Features::of(&znormalize(&ramp).unwrap());
        assert!(f.trend > 3.0 && f.shift > 2.0, "{f:?}");
        assert_eq!((f.peak_at, f.trough_at), (1.0, 0.0));
        let mut spike = vec![0.0; 41];
        spike[20] = 10.0;
        let g = Features::of(&znormalize(&spike).unwrap());
        assert_eq!(g.peak_at, 0.5);
        assert!(g.peak > 5.0 && g.trend.abs() < 0.1, "{g:?}");
        let agree = f.compare(&g);
        assert!(!agree.iter().find(|a| a.feature == "trend").unwrap().agrees);
        assert!(f.compare(&f).iter().all(|a| a.agrees));
    }
}

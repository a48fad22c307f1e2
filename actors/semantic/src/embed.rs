//! Pattern fingerprints: a window of a series, z-normalised, projected on
//! the first `dims` functions of the orthonormal DCT-II basis.
//!
//! Why this embedding: two windows are "similar in shape" when their
//! z-normalised Euclidean distance is small (the matrix-profile notion).
//! The DCT-II basis is orthonormal, so the distance between two full
//! projections *is* that distance (Parseval), and the distance between
//! truncated projections is a lower bound of it that misses only the
//! energy in the dropped high frequencies. Shapes of operational series
//! (ramps, steps, spikes, cycles) put most of their energy in the low
//! frequencies, so the bound is tight and ranks agree (docs/semantic.md
//! has the measured agreement). PAA, the other classic lower-bounding
//! projection, keeps less energy for the same number of dimensions (a
//! step function basis); the figures are measured side by side in the
//! tests. Statistical features (trend, peak position, volatility) are
//! computed too, but only to explain a match: added to the vector they
//! would break the lower bound.

use crate::SemanticError;

/// The smallest and largest window, in samples.
pub const WINDOW_SAMPLES: std::ops::RangeInclusive<usize> = 8..=4096;

/// A window whose standard deviation is below this share of its mean
/// magnitude (or absolute, near zero) is flat: it has no shape to match.
pub const FLAT: f64 = 1e-9;

/// Embeds windows of a fixed length into `dims` dimensions.
#[derive(Debug, Clone)]
pub struct Embedder {
    window: usize,
    dims: usize,
    /// `dims` rows of the orthonormal DCT-II basis, each `window` long.
    basis: Vec<Vec<f64>>,
}

impl Embedder {
    pub fn new(window: usize, dims: usize) -> Result<Self, SemanticError> {
        if !WINDOW_SAMPLES.contains(&window) {
            return Err(SemanticError::Invalid(format!(
                "window: {} to {} samples",
                WINDOW_SAMPLES.start(),
                WINDOW_SAMPLES.end()
            )));
        }
        if dims == 0 || dims > window {
            return Err(SemanticError::Invalid(format!(
                "dims: 1 to the window's {window} samples"
            )));
        }
        let n = window as f64;
        let basis = (0..dims)
            .map(|k| {
                let scale = if k == 0 {
                    (1.0 / n).sqrt()
                } else {
                    (2.0 / n).sqrt()
                };
                (0..window)
                    .map(|i| scale * (std::f64::consts::PI * (i as f64 + 0.5) * k as f64 / n).cos())
                    .collect()
            })
            .collect();
        Ok(Self {
            window,
            dims,
            basis,
        })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The fingerprint of `window` (which must be `self.window()` long);
    /// `None` for a flat window, or one with a non-finite value.
    pub fn embed(&self, window: &[f64]) -> Option<Vec<f32>> {
        if window.len() != self.window {
            return None;
        }
        let z = znormalize(window)?;
        Some(self.project(&z))
    }

    /// Projects an already z-normalised window.
    pub fn project(&self, z: &[f64]) -> Vec<f32> {
        // The first coefficient is the mean: zero after z-normalising, so
        // it carries nothing; kept for a basis that stays orthonormal.
        self.basis
            .iter()
            .map(|row| row.iter().zip(z).map(|(b, x)| b * x).sum::<f64>() as f32)
            .collect()
    }
}

/// `(x - mean) / std` (population std), or `None` when the window is flat
/// or holds a NaN or an infinity.
pub fn znormalize(window: &[f64]) -> Option<Vec<f64>> {
    if window.is_empty() || window.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let n = window.len() as f64;
    let mean = window.iter().sum::<f64>() / n;
    let var = window.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let std = var.sqrt();
    if !std.is_finite() || std <= FLAT * mean.abs().max(1.0) {
        return None;
    }
    Some(window.iter().map(|v| (v - mean) / std).collect())
}

/// The z-normalised Euclidean distance between two windows of one length
/// (`None` when either is flat): the exact measure the index approximates.
pub fn z_distance(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let (a, b) = (znormalize(a)?, znormalize(b)?);
    Some(euclidean(&a, &b))
}

pub fn euclidean(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Similarity in [0, 1] from a z-normalised distance over `n` samples:
/// `d² = 2n(1 − r)` for Pearson's `r`, so this is `(1 + r) / 2`: 1 for
/// the same shape, 0.5 for unrelated ones, 0 for a mirror image.
pub fn similarity(distance: f64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    (1.0 - distance * distance / (4.0 * n as f64)).clamp(0.0, 1.0)
}

/// Piecewise aggregate approximation of a z-normalised window, scaled so
/// that its Euclidean distance lower-bounds the window's (Keogh et al.):
/// measured against the DCT in the tests, not used by the index.
pub fn paa(z: &[f64], dims: usize) -> Vec<f32> {
    let n = z.len();
    (0..dims)
        .map(|k| {
            let (from, to) = (k * n / dims, ((k + 1) * n / dims).max(k * n / dims + 1));
            let seg = &z[from..to.min(n)];
            let mean = seg.iter().sum::<f64>() / seg.len().max(1) as f64;
            (mean * (seg.len() as f64).sqrt()) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn the_full_projection_keeps_the_distance_and_a_truncated_one_bounds_it() {
        let n = 64;
        let full = Embedder::new(n, n).unwrap();
        let cut = Embedder::new(n, 16).unwrap();
        for seed in 0..50 {
            let a = noise(seed, n);
            let b = noise(seed + 1000, n);
            let exact = z_distance(&a, &b).unwrap();
            let d_full = l2(&full.embed(&a).unwrap(), &full.embed(&b).unwrap());
            assert!(
                (d_full - exact).abs() < 1e-4 * exact.max(1.0),
                "{d_full} {exact}"
            );
            let d_cut = l2(&cut.embed(&a).unwrap(), &cut.embed(&b).unwrap());
            assert!(d_cut <= exact + 1e-4, "{d_cut} > {exact}");
        }
    }

    #[test]
    fn flat_and_broken_windows_have_no_fingerprint() {
        let e = Embedder::new(16, 8).unwrap();
        assert_eq!(e.embed(&[3.0; 16]), None);
        assert_eq!(e.embed(&[1e12; 16]), None);
        let mut w = noise(1, 16);
        w[3] = f64::NAN;
        assert_eq!(e.embed(&w), None);
        assert_eq!(e.embed(&noise(1, 15)), None, "wrong length");
        assert!(Embedder::new(4, 2).is_err());
        assert!(Embedder::new(64, 65).is_err());
        assert!(Embedder::new(64, 0).is_err());
    }

    #[test]
    fn similarity_is_one_for_the_same_shape_and_zero_for_its_mirror() {
        let a: Vec<f64> = (0..32).map(|i| (i as f64 / 5.0).sin()).collect();
        let scaled: Vec<f64> = a.iter().map(|v| 100.0 + 7.0 * v).collect();
        let mirror: Vec<f64> = a.iter().map(|v| -v).collect();
        let d = z_distance(&a, &scaled).unwrap();
        assert!(similarity(d, 32) > 0.999_999);
        let d = z_distance(&a, &mirror).unwrap();
        assert!(similarity(d, 32) < 1e-9);
    }
}

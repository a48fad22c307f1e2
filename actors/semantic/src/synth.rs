//! Seeded series with planted motifs: a noisy random walk with copies of
//! shapes (templates of the text grammar) planted at known places, each
//! copy scaled, offset and noised. Ground truth for recall tests and for
//! `chronicle bench semantic`; nothing here runs in a node.

use crate::text;

/// A small xorshift generator: the same seed gives the same data on
/// every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal (sum of uniforms), mean 0, standard deviation 1.
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Where a motif was planted.
#[derive(Debug, Clone, PartialEq)]
pub struct Planted {
    pub motif: &'static str,
    pub series: usize,
    pub start: usize,
}

/// The shapes planted, as text queries describe them.
pub const MOTIFS: [&str; 6] = [
    "sudden spike followed by gradual recovery",
    "dip then level shift",
    "gradual increase then plateau then sudden decrease",
    "oscillation",
    "spike twice",
    "level shift then recovery",
];

/// `series` series of `len` samples, with `per_series` motifs of `window`
/// samples planted in each at places that do not overlap.
pub fn planted(
    seed: u64,
    series: usize,
    len: usize,
    window: usize,
    per_series: usize,
) -> (Vec<Vec<f64>>, Vec<Planted>) {
    let mut rng = Rng::new(seed);
    let templates: Vec<Vec<f64>> = MOTIFS
        .iter()
        .map(|m| text::template(&text::parse(m).expect("the motifs parse"), window))
        .collect();
    let mut data = Vec::with_capacity(series);
    let mut truth = Vec::new();
    for s in 0..series {
        let mut level = 50.0;
        let mut v: Vec<f64> = (0..len)
            .map(|_| {
                level += rng.normal() * 0.3;
                level + rng.normal() * 0.2
            })
            .collect();
        let slots = (len / window).max(1);
        let mut taken = vec![false; slots];
        for _ in 0..per_series.min(slots) {
            let mut slot = rng.below(slots);
            while taken[slot] {
                slot = (slot + 1) % slots;
            }
            taken[slot] = true;
            let m = rng.below(MOTIFS.len());
            let (scale, start) = (2.0 + rng.uniform() * 8.0, slot * window);
            for (i, t) in templates[m].iter().enumerate() {
                if start + i < len {
                    v[start + i] = v[start] + scale * t + rng.normal() * 0.15 * scale;
                }
            }
            truth.push(Planted {
                motif: MOTIFS[m],
                series: s,
                start,
            });
        }
        data.push(v);
    }
    (data, truth)
}

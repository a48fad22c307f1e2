//! The vector index of one time partition: an HNSW graph (hnsw_rs) over
//! the fingerprints, the fingerprints themselves for exact scans, and a
//! planner that chooses between them by the filter's selectivity.
//!
//! Filters are checked during the graph's traversal (hnsw_rs expands
//! through windows the filter refuses and keeps only those it accepts),
//! never by post-filtering a short list. A traversal under a selective
//! filter visits far more of the graph than it returns, so below a
//! selectivity threshold the planner scans the accepted windows exactly:
//! cheaper there, and exact.

use hnsw_rs::prelude::{Distance, FilterT, Hnsw};
use serde::{Deserialize, Serialize};

use crate::SemanticError;

/// Graph parameters, exposed to operators (docs/semantic.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexParams {
    /// Links per window in the graph (HNSW's M): more links, better
    /// recall, more memory (about 8 bytes a link) and slower inserts.
    pub m: usize,
    /// Candidates kept while inserting.
    pub ef_construction: usize,
    /// Candidates kept while searching: recall against speed.
    pub ef_search: usize,
    /// Below this share of windows accepted by a filter, scan them exactly.
    pub scan_below: f64,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            scan_below: 0.05,
        }
    }
}

impl IndexParams {
    pub fn check(&self) -> Result<(), SemanticError> {
        let bad = |m: &str| Err(SemanticError::Invalid(m.into()));
        if !(4..=64).contains(&self.m) {
            return bad("m: 4 to 64");
        }
        if !(self.m..=2000).contains(&self.ef_construction) {
            return bad("ef_construction: m to 2000");
        }
        if !(1..=2000).contains(&self.ef_search) {
            return bad("ef_search: 1 to 2000");
        }
        if !(0.0..=1.0).contains(&self.scan_below) {
            return bad("scan_below: 0 to 1");
        }
        Ok(())
    }
}

/// One result: a window's id in its index and its distance to the query
/// (Euclidean, between fingerprints).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: usize,
    pub distance: f32,
}

/// How a search ran (reported with results, and what the tests check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "plan")]
pub enum Plan {
    /// The graph, no filter.
    Graph { ef: usize },
    /// The graph, the filter checked during traversal.
    FilteredGraph { ef: usize },
    /// Every accepted window, exactly.
    Scan { accepted: usize },
}

/// Fingerprints of one partition and their graph.
pub struct VectorIndex {
    dims: usize,
    params: IndexParams,
    graph: Hnsw<'static, f32, Euclid>,
    /// Every fingerprint, `dims` apiece, by id.
    vectors: Vec<f32>,
}

/// HNSW's layer count: enough for far more windows than a partition holds.
const MAX_LAYERS: usize = 16;

impl VectorIndex {
    /// An empty index expecting about `capacity` windows (a hint).
    pub fn new(dims: usize, params: IndexParams, capacity: usize) -> Result<Self, SemanticError> {
        params.check()?;
        if dims == 0 {
            return Err(SemanticError::Invalid("dims: at least 1".into()));
        }
        Ok(Self {
            dims,
            params,
            graph: Hnsw::new(
                params.m,
                capacity.max(1024),
                MAX_LAYERS,
                params.ef_construction,
                Euclid,
            ),
            vectors: Vec::with_capacity(capacity.min(1 << 20) * dims),
        })
    }

    pub fn len(&self) -> usize {
        self.vectors.len() / self.dims
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn params(&self) -> IndexParams {
        self.params
    }

    /// Adds a fingerprint; its id is its position.
    pub fn insert(&mut self, vector: &[f32]) -> Result<usize, SemanticError> {
        if vector.len() != self.dims || vector.iter().any(|v| !v.is_finite()) {
            return Err(SemanticError::Invalid(format!(
                "a fingerprint of {} finite values",
                self.dims
            )));
        }
        let id = self.len();
        self.vectors.extend_from_slice(vector);
        self.graph.insert_slice((vector, id));
        Ok(id)
    }

    /// The fingerprint `id`.
    pub fn vector(&self, id: usize) -> Option<&[f32]> {
        self.vectors.get(id * self.dims..(id + 1) * self.dims)
    }

    /// The `k` nearest fingerprints to `query` that `accept` accepts (all,
    /// without one). `accepted` is how many windows the filter accepts
    /// (the caller counts them from its window metadata, cheaply): the
    /// planner scans exactly below `scan_below` of the windows.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        accept: Option<&dyn Fn(usize) -> bool>,
        accepted: usize,
        ef: Option<usize>,
    ) -> (Vec<Hit>, Plan) {
        let n = self.len();
        if k == 0 || n == 0 || query.len() != self.dims {
            return (Vec::new(), Plan::Scan { accepted: 0 });
        }
        let ef = ef.unwrap_or(self.params.ef_search).max(k);
        let Some(accept) = accept else {
            let hits = self.graph.search(query, k, ef);
            return (convert(hits), Plan::Graph { ef });
        };
        if (accepted as f64) < self.params.scan_below * n as f64 || accepted <= ef {
            return (self.scan(query, k, Some(accept)), Plan::Scan { accepted });
        }
        let filter = Accept(accept);
        let hits = self.graph.search_filter(query, k, ef, Some(&filter));
        (convert(hits), Plan::FilteredGraph { ef })
    }

    /// Exactly the `k` nearest accepted fingerprints (brute force).
    pub fn scan(
        &self,
        query: &[f32],
        k: usize,
        accept: Option<&dyn Fn(usize) -> bool>,
    ) -> Vec<Hit> {
        let mut best: std::collections::BinaryHeap<(ordered::F32, usize)> =
            std::collections::BinaryHeap::with_capacity(k + 1);
        for (id, v) in self.vectors.chunks_exact(self.dims).enumerate() {
            if accept.is_some_and(|a| !a(id)) {
                continue;
            }
            let d = l2(query, v);
            if best.len() < k {
                best.push((ordered::F32(d), id));
            } else if best.peek().is_some_and(|(worst, _)| d < worst.0) {
                best.pop();
                best.push((ordered::F32(d), id));
            }
        }
        let mut hits: Vec<Hit> = best
            .into_iter()
            .map(|(d, id)| Hit { id, distance: d.0 })
            .collect();
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        hits
    }
}

struct Accept<'a>(&'a dyn Fn(usize) -> bool);

impl FilterT for Accept<'_> {
    fn hnsw_filter(&self, id: &usize) -> bool {
        (self.0)(*id)
    }
}

fn convert(hits: Vec<hnsw_rs::prelude::Neighbour>) -> Vec<Hit> {
    let mut hits: Vec<Hit> = hits
        .into_iter()
        .map(|h| Hit {
            id: h.d_id,
            distance: h.distance,
        })
        .collect();
    hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    hits
}

/// The Euclidean distance between fingerprints, as the graph and the
/// exact scan compute it. anndists' `DistL2` without its SIMD feature sums
/// in one dependent chain the compiler cannot vectorise (float addition
/// is not associative); summed in sixteen independent lanes it vectorises,
/// with AVX2 where the CPU has it. Most of a search's time is here.
#[derive(Debug, Default, Clone, Copy)]
pub struct Euclid;

impl Distance<f32> for Euclid {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        l2(a, b)
    }
}

pub fn l2(a: &[f32], b: &[f32]) -> f32 {
    squared(a, b).sqrt()
}

fn squared(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the one feature the function is compiled for.
        return unsafe { squared_avx2(a, b) };
    }
    squared_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn squared_avx2(a: &[f32], b: &[f32]) -> f32 {
    squared_lanes(a, b)
}

#[inline(always)]
fn squared_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    acc.iter().sum::<f32>() + tail
}

mod ordered {
    /// An f32 ordered by `total_cmp` (distances are finite).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct F32(pub f32);
    impl Eq for F32 {}
    impl PartialOrd for F32 {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for F32 {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&other.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clustered points (what fingerprints of real shapes look like: many
    /// near-duplicates around a few shapes), seeded.
    fn points(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..50)
            .map(|_| (0..dims).map(|_| next() * 4.0).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                c.iter().map(|v| v + next()).collect()
            })
            .collect()
    }

    fn recall(found: &[Hit], truth: &[Hit]) -> f64 {
        let truth: std::collections::HashSet<usize> = truth.iter().map(|h| h.id).collect();
        found.iter().filter(|h| truth.contains(&h.id)).count() as f64 / truth.len().max(1) as f64
    }

    fn build(n: usize) -> (VectorIndex, Vec<Vec<f32>>) {
        let data = points(n, 32, 7);
        let mut index = VectorIndex::new(32, IndexParams::default(), n).unwrap();
        for v in &data {
            index.insert(v).unwrap();
        }
        (index, data)
    }

    #[test]
    fn the_graph_finds_what_the_scan_finds() {
        let (index, _) = build(5000);
        let queries = points(200, 32, 99);
        let mut total = 0.0;
        for q in &queries {
            let (hits, plan) = index.search(q, 10, None, index.len(), None);
            assert_eq!(plan, Plan::Graph { ef: 64 });
            total += recall(&hits, &index.scan(q, 10, None));
        }
        let r = total / queries.len() as f64;
        assert!(r >= 0.95, "recall@10 {r}");
    }

    #[test]
    fn filtered_searches_keep_their_recall_at_every_selectivity() {
        let (index, _) = build(10_000);
        let queries = points(100, 32, 1234);
        for (share, want_scan) in [(0.01, true), (0.10, false), (0.50, false)] {
            // A filter unrelated to the clusters: a hash of the id.
            let modulus = (1.0 / share) as usize;
            let accept =
                move |id: usize| (id.wrapping_mul(2_654_435_761) >> 7).is_multiple_of(modulus);
            let accepted = (0..index.len()).filter(|&id| accept(id)).count();
            let mut total = 0.0;
            for q in &queries {
                let (hits, plan) = index.search(q, 10, Some(&accept), accepted, None);
                assert_eq!(
                    matches!(plan, Plan::Scan { .. }),
                    want_scan,
                    "{share}: {plan:?}"
                );
                assert!(
                    hits.iter().all(|h| accept(h.id)),
                    "{share}: a refused window"
                );
                total += recall(&hits, &index.scan(q, 10, Some(&accept)));
            }
            let r = total / queries.len() as f64;
            assert!(r >= 0.95, "{share}: recall@10 {r}");
        }
    }

    #[test]
    fn the_lane_distance_is_the_euclidean_distance() {
        for n in [1, 7, 16, 31, 32, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((f64::from(l2(&a, &b)) - plain).abs() < 1e-4, "{n}");
            assert_eq!(l2(&a, &a), 0.0);
        }
    }

    #[test]
    fn bad_input_is_refused_or_empty() {
        let (mut index, _) = build(100);
        assert!(index.insert(&[0.0; 3]).is_err());
        assert!(index.insert(&[f32::NAN; 32]).is_err());
        assert!(index.search(&[0.0; 3], 10, None, 0, None).0.is_empty());
        assert!(index.search(&[0.0; 32], 0, None, 0, None).0.is_empty());
        let bad = IndexParams {
            m: 2,
            ..IndexParams::default()
        };
        assert!(VectorIndex::new(32, bad, 10).is_err());
    }
}

//! The vector index of one time partition: an HNSW graph (usearch) over
//! the fingerprints, the fingerprints themselves for exact scans, and a
//! planner that chooses between them by the filter's selectivity.
//!
//! Filters are checked during the graph's traversal (usearch expands
//! through windows the filter refuses and keeps only those it accepts),
//! never by post-filtering a short list. A traversal under a selective
//! filter visits far more of the graph than it returns, so below a
//! selectivity threshold the planner scans the accepted windows exactly:
//! cheaper there, and exact.

use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

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
    graph: Index,
    /// Admits searches into the graph (see [`Gate`]).
    gate: Gate,
    /// Every fingerprint, `dims` apiece, by id.
    vectors: Vec<f32>,
}

/// Searches the graph serves at once. usearch gives each running search
/// one of a fixed number of working contexts (reserved with the capacity)
/// and fails a search that finds none free, so [`Gate`] holds the rest
/// back. Each context costs about one bit per window plus the candidate
/// queues: eight are a few hundred KiB for a million windows.
const SEARCH_SLOTS: usize = 8;

impl VectorIndex {
    /// An empty index expecting about `capacity` windows (a hint).
    pub fn new(dims: usize, params: IndexParams, capacity: usize) -> Result<Self, SemanticError> {
        params.check()?;
        if dims == 0 {
            return Err(SemanticError::Invalid("dims: at least 1".into()));
        }
        let options = IndexOptions {
            dimensions: dims,
            // Squared Euclidean: the same ranking, one square root fewer
            // per distance (hits take theirs on the way out).
            metric: MetricKind::L2sq,
            quantization: ScalarKind::F32,
            connectivity: params.m,
            expansion_add: params.ef_construction,
            expansion_search: params.ef_search,
            multi: false,
        };
        let graph = Index::new(&options).map_err(index_error)?;
        let capacity = capacity.clamp(1024, 1 << 24);
        graph
            .reserve_capacity_and_threads(capacity, SEARCH_SLOTS)
            .map_err(index_error)?;
        Ok(Self {
            dims,
            params,
            graph,
            gate: Gate::new(params.ef_search),
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

    /// Bytes held: the graph (its links and its copy of each fingerprint)
    /// and the fingerprints kept for exact scans.
    pub fn memory_bytes(&self) -> usize {
        self.graph.memory_usage() + self.vectors.capacity() * std::mem::size_of::<f32>()
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
        if self.graph.size() >= self.graph.capacity() {
            // The graph's storage is reserved ahead; grow it geometrically
            // (`&mut self`: no search runs meanwhile).
            let grown = (self.graph.capacity() * 2).max(1024);
            self.graph
                .reserve_capacity_and_threads(grown, SEARCH_SLOTS)
                .map_err(index_error)?;
        }
        self.graph.add(id as u64, vector).map_err(index_error)?;
        self.vectors.extend_from_slice(vector);
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
        if let Some(accept) = accept {
            if (accepted as f64) < self.params.scan_below * n as f64 || accepted <= ef {
                return (self.scan(query, k, Some(accept)), Plan::Scan { accepted });
            }
        }
        let found = {
            let _pass = self.gate.enter(ef, &self.graph);
            match accept {
                None => self.graph.search(query, k),
                Some(accept) => self
                    .graph
                    .filtered_search(query, k, |key| accept(key as usize)),
            }
        };
        let plan = match accept {
            None => Plan::Graph { ef },
            Some(_) => Plan::FilteredGraph { ef },
        };
        match found {
            Ok(found) => {
                let mut hits: Vec<Hit> = found
                    .keys
                    .iter()
                    .zip(&found.distances)
                    .map(|(&id, &d)| Hit {
                        id: id as usize,
                        distance: d.max(0.0).sqrt(),
                    })
                    .collect();
                hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
                (hits, plan)
            }
            // usearch fails a search only for want of memory or a context,
            // both of which the constructor and the gate rule out; were it
            // to happen, the exact scan still answers.
            Err(_) => (self.scan(query, k, accept), Plan::Scan { accepted }),
        }
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

fn index_error(e: impl std::fmt::Display) -> SemanticError {
    SemanticError::Index(e.to_string())
}

/// Admits at most [`SEARCH_SLOTS`] searches into a graph at once, all with
/// the same `ef`. usearch reads `ef` from the index's configuration, not
/// per search, so a search asking for another `ef` waits until the
/// running ones leave, sets it, and runs; newcomers wait behind it, so it
/// is not starved.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    running: usize,
    ef: usize,
    /// Searches waiting for another `ef`.
    switching: usize,
}

struct Pass<'a>(&'a Gate);

impl Gate {
    fn new(ef: usize) -> Self {
        Self {
            state: Mutex::new(GateState {
                running: 0,
                ef,
                switching: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn enter<'a>(&'a self, ef: usize, graph: &Index) -> Pass<'a> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut counted = false;
        loop {
            if s.ef == ef {
                // A search that waited for this `ef` runs; a newcomer waits
                // behind searches waiting for another (two waiting for the
                // same one must not wait for each other).
                if s.running < SEARCH_SLOTS && (counted || s.switching == 0) {
                    break;
                }
            } else if s.running == 0 {
                graph.change_expansion_search(ef);
                s.ef = ef;
                break;
            } else if !counted {
                s.switching += 1;
                counted = true;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if counted {
            s.switching -= 1;
        }
        s.running += 1;
        Pass(self)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.running -= 1;
        drop(s);
        self.0.changed.notify_all();
    }
}

/// The Euclidean distance between fingerprints, as the exact scan computes
/// it. Summed in sixteen independent lanes (float addition is not
/// associative, so one dependent chain would not vectorise), with AVX2
/// where the CPU has it.
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
    fn the_graph_grows_past_its_reserved_capacity() {
        let data = points(3000, 32, 11);
        let mut index = VectorIndex::new(32, IndexParams::default(), 1).unwrap();
        for (i, v) in data.iter().enumerate() {
            assert_eq!(index.insert(v).unwrap(), i);
        }
        assert_eq!(index.len(), 3000);
        let (hits, plan) = index.search(&data[2999], 1, None, 3000, None);
        assert_eq!(plan, Plan::Graph { ef: 64 });
        assert_eq!(hits[0].id, 2999);
        assert_eq!(hits[0].distance, 0.0);
        assert!(index.memory_bytes() > 3000 * 32 * 4);
    }

    /// More searches at once than the graph has contexts, asking for
    /// different `ef`s: each is answered by the graph (a search the graph
    /// failed would fall back to the scan and say so in its plan).
    #[test]
    fn concurrent_searches_with_different_ef_are_all_answered_by_the_graph() {
        let (index, _) = build(5000);
        let queries = points(30, 32, 5);
        std::thread::scope(|s| {
            for t in 0..(3 * SEARCH_SLOTS) {
                let (index, queries) = (&index, &queries);
                s.spawn(move || {
                    let ef = [16, 64, 200][t % 3];
                    for q in queries {
                        let (hits, plan) = index.search(q, 10, None, index.len(), Some(ef));
                        assert_eq!(plan, Plan::Graph { ef });
                        assert_eq!(hits.len(), 10);
                    }
                });
            }
        });
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

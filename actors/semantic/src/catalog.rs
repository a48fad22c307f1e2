//! The semantic index of one shard replica: its watched series, the
//! windows cut from them as samples arrive, and one [`VectorIndex`] per
//! day (time partition) holding the windows that start in it.
//!
//! Everything here is rebuilt from the shard's data (ADR 0006): nothing is
//! persisted, so a snapshot install or a restart rebuilds the shard's
//! catalog from the replica it has. Retention drops whole partitions.
//!
//! A window is `window` consecutive samples of one series; a new one is
//! cut every `stride` samples. Each keeps its raw values (f32) beside its
//! fingerprint, so a search reranks its candidates by the exact
//! z-normalised distance and answers with the values to draw.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use chronicle_storage::{MatchOp, Matcher};

use crate::embed::Embedder;
use crate::index::{IndexParams, Plan, VectorIndex};

/// Nanoseconds in a partition (a UTC day).
pub const PARTITION_NS: i64 = 86_400_000_000_000;

/// Candidates fetched per result from each partition's graph, then
/// reranked by the exact distance (docs/semantic.md, "Rerank").
pub const RERANK: usize = 4;

/// A watched series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesInfo {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
}

/// One window's place: its series and its first and last samples' times (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WindowMeta {
    series: u32,
    start: i64,
    end: i64,
}

/// The windows that start on one day.
struct Partition {
    index: VectorIndex,
    windows: Vec<WindowMeta>,
    /// `window` raw values per window, by id.
    values: Vec<f32>,
    first_start: i64,
    last_end: i64,
}

/// Cuts windows from one series' samples as they arrive in time order.
#[derive(Debug, Clone, Default)]
struct Windower {
    recent: VecDeque<(i64, f64)>,
    /// Samples taken since the series was first seen.
    taken: u64,
    last: Option<i64>,
}

/// What a search keeps: windows of series the filter accepts that overlap
/// `[start, end)` (ns), except those overlapping `exclude` (the query's
/// own windows: trivial matches).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// Metric name matchers, `None`: any.
    #[serde(default)]
    pub metric: Option<String>,
    /// Labels a series must have, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub start: Option<i64>,
    #[serde(default)]
    pub end: Option<i64>,
    #[serde(default)]
    pub exclude: Option<Exclude>,
}

/// A series and a time range (ns) whose windows a search leaves out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exclude {
    pub series: SeriesInfo,
    pub start: i64,
    pub end: i64,
}

/// One match, with what the coordinator needs to rank, explain and draw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    pub series: SeriesInfo,
    pub shard: u32,
    pub start: i64,
    pub end: i64,
    /// Exact z-normalised Euclidean distance to the query window.
    pub distance: f64,
    pub values: Vec<f64>,
}

/// How the partitions of a search ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchStats {
    pub partitions: usize,
    pub windows: usize,
    pub graph: usize,
    pub filtered_graph: usize,
    pub scans: usize,
}

/// Figures of a catalog, for status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogStatus {
    pub series: usize,
    pub windows: usize,
    pub partitions: Vec<PartitionStatus>,
    /// Samples skipped: older than the series' last, or not finite.
    pub skipped_samples: u64,
    /// Windows not indexed: flat (no shape), or over the node's budget.
    pub flat_windows: u64,
    pub refused_windows: u64,
    pub refused_series: u64,
    /// Estimated bytes held (fingerprints, values, graph links, metadata).
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The day's first instant (ms).
    pub day: i64,
    pub windows: usize,
}

/// Shape of the windows and the index, shared by every catalog of a node.
#[derive(Clone)]
pub struct Layout {
    pub embedder: Arc<Embedder>,
    pub stride: usize,
    pub params: IndexParams,
    pub max_series: usize,
    /// Windows held by every catalog of the node together, at most.
    pub budget: Arc<Budget>,
}

/// The node's window budget, shared by its catalogs.
#[derive(Debug)]
pub struct Budget {
    pub limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// The index of one shard replica.
pub struct Catalog {
    pub shard: u32,
    layout: Layout,
    series: Vec<SeriesInfo>,
    by_key: HashMap<u64, u32>,
    windowers: Vec<Windower>,
    partitions: BTreeMap<i64, Partition>,
    windows: usize,
    skipped_samples: u64,
    flat_windows: u64,
    refused_windows: u64,
    refused_series: u64,
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.layout.budget.give_back(self.windows);
    }
}

impl Catalog {
    pub fn new(shard: u32, layout: Layout) -> Self {
        Self {
            shard,
            layout,
            series: Vec::new(),
            by_key: HashMap::new(),
            windowers: Vec::new(),
            partitions: BTreeMap::new(),
            windows: 0,
            skipped_samples: 0,
            flat_windows: 0,
            refused_windows: 0,
            refused_series: 0,
        }
    }

    pub fn windows(&self) -> usize {
        self.windows
    }

    /// Whether series `key` is known here.
    pub fn knows(&self, key: u64) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Registers a series (its key hashed by [`series_key`]); `None` when
    /// the catalog holds `max_series` already.
    pub fn series(&mut self, key: u64, info: impl FnOnce() -> SeriesInfo) -> Option<u32> {
        if let Some(&i) = self.by_key.get(&key) {
            return Some(i);
        }
        if self.series.len() >= self.layout.max_series {
            self.refused_series += 1;
            return None;
        }
        let i = self.series.len() as u32;
        self.series.push(info());
        self.windowers.push(Windower::default());
        self.by_key.insert(key, i);
        Some(i)
    }

    /// The last sample time (ns) taken for series `i`.
    pub fn last_time(&self, i: u32) -> Option<i64> {
        self.windowers.get(i as usize).and_then(|w| w.last)
    }

    /// Takes one sample of series `i`; indexes the window it completes.
    pub fn push(&mut self, i: u32, t: i64, v: f64) {
        let window = self.layout.embedder.window();
        let stride = self.layout.stride as u64;
        let Some(w) = self.windowers.get_mut(i as usize) else {
            return;
        };
        if !v.is_finite() || w.last.is_some_and(|last| t <= last) {
            self.skipped_samples += 1;
            return;
        }
        w.last = Some(t);
        w.taken += 1;
        w.recent.push_back((t, v));
        if w.recent.len() > window {
            w.recent.pop_front();
        }
        if w.recent.len() < window || !(w.taken - window as u64).is_multiple_of(stride) {
            return;
        }
        let start = w.recent.front().map_or(t, |s| s.0);
        let values: Vec<f64> = w.recent.iter().map(|s| s.1).collect();
        self.index_window(i, start, t, &values);
    }

    fn index_window(&mut self, series: u32, start: i64, end: i64, values: &[f64]) {
        let Some(fingerprint) = self.layout.embedder.embed(values) else {
            self.flat_windows += 1;
            return;
        };
        if !self.layout.budget.take() {
            self.refused_windows += 1;
            return;
        }
        let day = start.div_euclid(PARTITION_NS);
        let (dims, params) = (self.layout.embedder.dims(), self.layout.params);
        let partition = match self.partitions.entry(day) {
            Entry::Occupied(p) => p.into_mut(),
            Entry::Vacant(slot) => match VectorIndex::new(dims, params, 4096) {
                Ok(index) => slot.insert(Partition {
                    index,
                    windows: Vec::new(),
                    values: Vec::new(),
                    first_start: start,
                    last_end: end,
                }),
                Err(_) => {
                    self.layout.budget.give_back(1);
                    self.refused_windows += 1;
                    return;
                }
            },
        };
        if partition.index.insert(&fingerprint).is_err() {
            self.layout.budget.give_back(1);
            self.refused_windows += 1;
            return;
        }
        partition.windows.push(WindowMeta { series, start, end });
        partition.values.extend(values.iter().map(|v| *v as f32));
        partition.first_start = partition.first_start.min(start);
        partition.last_end = partition.last_end.max(end);
        self.windows += 1;
    }

    /// Drops the partitions whose windows all started before `cutoff` (ns):
    /// the retention the shard applies to its data. Returns windows dropped.
    pub fn drop_before(&mut self, cutoff: i64) -> usize {
        let keep_from = cutoff.div_euclid(PARTITION_NS);
        let old: Vec<i64> = self
            .partitions
            .range(..keep_from)
            .map(|(day, _)| *day)
            .collect();
        let mut dropped = 0;
        for day in old {
            if let Some(p) = self.partitions.remove(&day) {
                dropped += p.windows.len();
            }
        }
        self.windows -= dropped;
        self.layout.budget.give_back(dropped);
        dropped
    }

    /// The `k` windows nearest to `query` (a z-normalised window of the
    /// layout's length) that `filter` keeps, by exact distance, at most one
    /// of any run of overlapping windows of a series.
    pub fn search(
        &self,
        query: &[f64],
        k: usize,
        filter: &Filter,
        ef: Option<usize>,
    ) -> Result<(Vec<Match>, SearchStats), crate::SemanticError> {
        let embedder = &self.layout.embedder;
        if query.len() != embedder.window() {
            return Err(crate::SemanticError::Invalid(format!(
                "a query of {} samples",
                embedder.window()
            )));
        }
        let fingerprint = embedder.project(query);
        let metric = filter.metric.as_deref().map(metric_matcher).transpose()?;
        let excluded = filter.exclude.as_ref().and_then(|e| {
            self.series
                .iter()
                .position(|s| *s == e.series)
                .map(|i| (i as u32, e))
        });
        let unfiltered = metric.is_none()
            && filter.labels.is_empty()
            && filter.start.is_none()
            && filter.end.is_none()
            && excluded.is_none();
        // Which series the filter accepts, once per filtered search.
        let accepted_series: Vec<bool> = if unfiltered {
            Vec::new()
        } else {
            self.series
                .iter()
                .map(|s| {
                    metric.as_ref().is_none_or(|m| m.matches(&s.metric))
                        && filter
                            .labels
                            .iter()
                            .all(|(k, v)| s.labels.get(k).is_some_and(|have| have == v))
                })
                .collect()
        };
        let (from, to) = (
            filter.start.unwrap_or(i64::MIN),
            filter.end.unwrap_or(i64::MAX),
        );
        let keeps = |w: &WindowMeta| {
            accepted_series[w.series as usize]
                && w.end >= from
                && w.start < to
                && excluded
                    .is_none_or(|(s, e)| !(w.series == s && w.start <= e.end && w.end >= e.start))
        };
        let want = k.saturating_mul(RERANK);
        let mut stats = SearchStats::default();
        let mut candidates: Vec<(f64, u32, &Partition, usize)> = Vec::new();
        for p in self.partitions.values() {
            if p.last_end < from || p.first_start >= to {
                continue;
            }
            let (hits, plan) = if unfiltered {
                p.index
                    .search(&fingerprint, want, None, p.windows.len(), ef)
            } else {
                let accept = |id: usize| p.windows.get(id).is_some_and(keeps);
                let accepted = p.windows.iter().filter(|w| keeps(w)).count();
                if accepted == 0 {
                    continue;
                }
                p.index
                    .search(&fingerprint, want, Some(&accept), accepted, ef)
            };
            stats.partitions += 1;
            stats.windows += p.windows.len();
            match plan {
                Plan::Graph { .. } => stats.graph += 1,
                Plan::FilteredGraph { .. } => stats.filtered_graph += 1,
                Plan::Scan { .. } => stats.scans += 1,
            }
            let n = embedder.window();
            for h in hits {
                let values = &p.values[h.id * n..(h.id + 1) * n];
                let Some(d) = z_distance_to(query, values) else {
                    continue;
                };
                candidates.push((d, p.windows[h.id].series, p, h.id));
            }
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Best first; a window overlapping a better one of its series is the
        // same occurrence, slid.
        let mut kept: Vec<Match> = Vec::with_capacity(k);
        let mut taken: Vec<(u32, i64, i64)> = Vec::new();
        for (distance, series, p, id) in candidates {
            if kept.len() == k {
                break;
            }
            let w = p.windows[id];
            if taken
                .iter()
                .any(|(s, a, b)| *s == series && w.start <= *b && w.end >= *a)
            {
                continue;
            }
            taken.push((series, w.start, w.end));
            let n = embedder.window();
            kept.push(Match {
                series: self.series[series as usize].clone(),
                shard: self.shard,
                start: w.start,
                end: w.end,
                distance,
                values: p.values[id * n..(id + 1) * n]
                    .iter()
                    .map(|v| f64::from(*v))
                    .collect(),
            });
        }
        Ok((kept, stats))
    }

    pub fn status(&self) -> CatalogStatus {
        let n = self.layout.embedder.window();
        // The graphs report their own; values and metadata are counted here.
        let per_window = 4 * n + std::mem::size_of::<WindowMeta>();
        let graphs: usize = self
            .partitions
            .values()
            .map(|p| p.index.memory_bytes())
            .sum();
        CatalogStatus {
            series: self.series.len(),
            windows: self.windows,
            partitions: self
                .partitions
                .iter()
                .map(|(day, p)| PartitionStatus {
                    day: day * (PARTITION_NS / 1_000_000),
                    windows: p.windows.len(),
                })
                .collect(),
            skipped_samples: self.skipped_samples,
            flat_windows: self.flat_windows,
            refused_windows: self.refused_windows,
            refused_series: self.refused_series,
            bytes: graphs
                + self.windows * per_window
                + self
                    .series
                    .iter()
                    .map(|s| {
                        s.metric.len()
                            + s.labels
                                .iter()
                                .map(|(k, v)| k.len() + v.len() + 48)
                                .sum::<usize>()
                            + 16 * n
                    })
                    .sum::<usize>(),
        }
    }
}

/// The exact z-normalised distance from `query` (z-normalised already) to
/// the raw window `x`, in one pass and without copying it: with `Σq = 0`
/// and `Σq² = n`, `d² = 2n − 2·Σ q·(x − x̄)/σ = 2n − 2·Σ q·x/σ`. Sums are
/// taken of `x − x₀` so a high level with a small variation keeps its
/// precision. `None` for a flat window (as [`znormalize`] decides).
pub fn z_distance_to(query: &[f64], x: &[f32]) -> Option<f64> {
    let n = x.len();
    if n == 0 || query.len() != n {
        return None;
    }
    let shift = f64::from(x[0]);
    let (mut sum, mut squares, mut dot) = (0.0, 0.0, 0.0);
    for (q, v) in query.iter().zip(x) {
        let v = f64::from(*v) - shift;
        sum += v;
        squares += v * v;
        dot += q * v;
    }
    let nf = n as f64;
    let mean = sum / nf;
    let std = (squares / nf - mean * mean).max(0.0).sqrt();
    if !std.is_finite() || std <= crate::embed::FLAT * (mean + shift).abs().max(1.0) {
        return None;
    }
    Some((2.0 * nf - 2.0 * dot / std).max(0.0).sqrt())
}

/// A matcher of metric names for a glob (`*` any run of characters, `?`
/// one), as the watch list and the search filter give them.
pub fn metric_matcher(glob: &str) -> Result<Matcher, crate::SemanticError> {
    if glob.is_empty() || glob.len() > 256 {
        return Err(crate::SemanticError::Invalid(
            "metric: a glob of 1 to 256 bytes".into(),
        ));
    }
    let mut regex = String::with_capacity(glob.len() + 8);
    for c in glob.chars() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            c if c.is_ascii_punctuation() => {
                regex.push('\\');
                regex.push(c);
            }
            c => regex.push(c),
        }
    }
    Matcher::new(MatchOp::Regex, "__name__", regex)
        .map_err(|e| crate::SemanticError::Invalid(format!("metric {glob:?}: {e}")))
}

/// A series' identity in a catalog: a hash of its metric and its labels in
/// name order.
pub fn series_key<'a>(metric: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    h.update(metric.as_bytes());
    for (name, value) in labels {
        h.update(&[0xff]);
        h.update(name.as_bytes());
        h.update(&[0xfe]);
        h.update(value.as_bytes());
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{euclidean, znormalize};
    use crate::synth;

    fn layout(window: usize, stride: usize, budget: usize) -> Layout {
        Layout {
            embedder: Arc::new(Embedder::new(window, 16).unwrap()),
            stride,
            params: IndexParams::default(),
            max_series: 100,
            budget: Arc::new(Budget::new(budget)),
        }
    }

    fn info(metric: &str, host: &str) -> SeriesInfo {
        SeriesInfo {
            metric: metric.into(),
            labels: [("host".to_string(), host.to_string())].into(),
        }
    }

    const MIN: i64 = 60_000_000_000;

    #[test]
    fn windows_are_cut_every_stride_samples_and_planted_shapes_are_found() {
        let (data, truth) = synth::planted(3, 4, 2048, 64, 6);
        let mut c = Catalog::new(0, layout(64, 16, 1_000_000));
        for (s, values) in data.iter().enumerate() {
            let i = c
                .series(s as u64, || info("cpu", &format!("h{s}")))
                .unwrap();
            for (j, v) in values.iter().enumerate() {
                c.push(i, j as i64 * MIN, *v);
            }
        }
        // (2048 − 64) / 16 + 1 windows a series, less any flat one.
        assert_eq!(c.windows() + c.status().flat_windows as usize, 4 * 125);
        // Each planted motif's own window is its best match (itself),
        // and the query's own windows are left out when asked.
        for p in truth.iter().take(8) {
            let query = znormalize(&data[p.series][p.start..p.start + 64]).unwrap();
            let (hits, _) = c.search(&query, 3, &Filter::default(), None).unwrap();
            assert_eq!(hits[0].start, p.start as i64 * MIN, "{p:?}");
            assert!(hits[0].distance < 1e-3);
            let exclude = Filter {
                exclude: Some(Exclude {
                    series: info("cpu", &format!("h{}", p.series)),
                    start: p.start as i64 * MIN,
                    end: (p.start as i64 + 63) * MIN,
                }),
                ..Filter::default()
            };
            let (hits, _) = c.search(&query, 3, &exclude, None).unwrap();
            assert!(hits
                .iter()
                .all(|h| h.series.labels["host"] != format!("h{}", p.series)
                    || h.end < p.start as i64 * MIN
                    || h.start > (p.start as i64 + 63) * MIN));
            // No two results are overlapping windows of one series.
            for (a, b) in hits.iter().zip(hits.iter().skip(1)) {
                assert!(a.series != b.series || a.end < b.start || b.end < a.start);
            }
        }
    }

    #[test]
    fn the_one_pass_distance_is_the_z_normalised_distance() {
        let q = znormalize(&(0..64).map(|i| (i as f64 / 5.0).sin()).collect::<Vec<_>>()).unwrap();
        for (level, scale) in [(0.0, 1.0), (1e6, 0.5), (-3.0, 200.0)] {
            let x: Vec<f32> = (0..64)
                .map(|i| (level + scale * ((i * 7 % 11) as f64).cos()) as f32)
                .collect();
            let raw: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
            let exact = euclidean(&q, &znormalize(&raw).unwrap());
            let fast = z_distance_to(&q, &x).unwrap();
            assert!(
                (exact - fast).abs() < 1e-3 * exact.max(1.0),
                "{level}: {exact} {fast}"
            );
        }
        assert_eq!(z_distance_to(&q, &[7.0; 64]), None);
        assert_eq!(z_distance_to(&q, &[7.0; 3]), None);
    }

    #[test]
    fn filters_budget_retention_and_late_samples() {
        let mut c = Catalog::new(0, layout(16, 8, 10));
        let a = c.series(1, || info("cpu", "a")).unwrap();
        let b = c.series(2, || info("mem", "b")).unwrap();
        let wave = |j: usize| ((j * 7 % 13) as f64).sin() * 10.0;
        for j in 0..200 {
            c.push(a, j as i64 * MIN, wave(j));
            c.push(b, j as i64 * MIN, wave(j + 3));
        }
        // The budget holds: ten windows, the rest refused and counted.
        assert_eq!(c.windows(), 10);
        assert!(c.status().refused_windows > 0);
        // A late sample is skipped, not indexed out of order.
        c.push(a, 5 * MIN, 1.0);
        assert_eq!(c.status().skipped_samples, 1);
        let query = znormalize(&(0..16).map(wave).collect::<Vec<_>>()).unwrap();
        let only_mem = Filter {
            metric: Some("mem".into()),
            ..Filter::default()
        };
        let (hits, _) = c.search(&query, 10, &only_mem, None).unwrap();
        assert!(!hits.is_empty() && hits.iter().all(|h| h.series.metric == "mem"));
        let glob = Filter {
            metric: Some("c*".into()),
            labels: [("host".to_string(), "a".to_string())].into(),
            ..Filter::default()
        };
        let (hits, _) = c.search(&query, 10, &glob, None).unwrap();
        assert!(!hits.is_empty() && hits.iter().all(|h| h.series.metric == "cpu"));
        assert!(c.search(&query[..8], 1, &Filter::default(), None).is_err());
        // Two days of data: retention drops the first day's partition and
        // gives its windows back to the budget.
        let mut d = Catalog::new(0, layout(16, 16, 1000));
        let s = d.series(1, || info("cpu", "a")).unwrap();
        for j in 0..(2 * 24 * 60) {
            d.push(s, j as i64 * MIN, wave(j));
        }
        let before = d.windows();
        assert_eq!(d.status().partitions.len(), 2);
        let dropped = d.drop_before(PARTITION_NS);
        assert!(dropped > 0 && d.windows() == before - dropped);
        assert_eq!(d.layout.budget.used(), d.windows());
        drop(d);
    }
}

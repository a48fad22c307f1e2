//! Recall against the exact baseline: brute-force z-normalised Euclidean
//! search over every window, on series with planted motifs.

use std::collections::HashSet;

use chronicle_semantic::embed::{euclidean, znormalize, Embedder};
use chronicle_semantic::index::{IndexParams, VectorIndex};
use chronicle_semantic::synth::{planted, MOTIFS};
use chronicle_semantic::text;

const WINDOW: usize = 64;
const STRIDE: usize = 8;

struct Corpus {
    /// (series, start) of each window, by id.
    windows: Vec<(usize, usize)>,
    /// The z-normalised windows, by id (the exact baseline's input).
    z: Vec<Vec<f64>>,
}

fn corpus(data: &[Vec<f64>]) -> Corpus {
    let mut windows = Vec::new();
    let mut z = Vec::new();
    for (s, series) in data.iter().enumerate() {
        let mut start = 0;
        while start + WINDOW <= series.len() {
            if let Some(w) = znormalize(&series[start..start + WINDOW]) {
                windows.push((s, start));
                z.push(w);
            }
            start += STRIDE;
        }
    }
    Corpus { windows, z }
}

/// Not the query's own window or one overlapping it (trivial matches).
fn trivial(c: &Corpus, id: usize, own: Option<(usize, usize)>) -> bool {
    own.is_some_and(|(s, start)| {
        let (ws, wstart) = c.windows[id];
        ws == s && wstart.abs_diff(start) < WINDOW
    })
}

fn exact_top(c: &Corpus, q: &[f64], k: usize, own: Option<(usize, usize)>) -> Vec<usize> {
    let mut all: Vec<(f64, usize)> =
        c.z.iter()
            .enumerate()
            .filter(|(id, _)| !trivial(c, *id, own))
            .map(|(id, w)| (euclidean(q, w), id))
            .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(k).map(|(_, id)| id).collect()
}

/// The index's top k: `k × rerank` candidates by fingerprint, ordered by
/// exact distance (rerank 1: the fingerprint order as it is).
fn index_top(
    c: &Corpus,
    index: &VectorIndex,
    embedder: &Embedder,
    q: &[f64],
    k: usize,
    rerank: usize,
    own: Option<(usize, usize)>,
) -> Vec<usize> {
    let accept = |id: usize| !trivial(c, id, own);
    let accepted = c.windows.len();
    let (hits, _) = index.search(
        &embedder.project(q),
        k * rerank,
        Some(&accept),
        accepted,
        None,
    );
    let mut ranked: Vec<(f64, usize)> = hits
        .iter()
        .map(|h| {
            (
                if rerank > 1 {
                    euclidean(q, &c.z[h.id])
                } else {
                    f64::from(h.distance)
                },
                h.id,
            )
        })
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    ranked.into_iter().take(k).map(|(_, id)| id).collect()
}

#[test]
fn recall_at_10_against_the_exact_search_and_planted_motifs_by_their_words() {
    let (data, truth) = planted(42, 40, 2048, WINDOW, 8);
    let c = corpus(&data);
    // 64 of 64 dims is the exact distance itself (an orthonormal basis).
    for dims in [16, 32] {
        let embedder = Embedder::new(WINDOW, dims).unwrap();
        let mut index = VectorIndex::new(dims, IndexParams::default(), c.z.len()).unwrap();
        for w in &c.z {
            index.insert(&embedder.project(w)).unwrap();
        }
        for rerank in [1, 4] {
            let mut found = 0;
            let queries: Vec<usize> = (0..100).map(|i| i * c.z.len() / 100).collect();
            for &qid in &queries {
                let own = Some(c.windows[qid]);
                let want: HashSet<usize> = exact_top(&c, &c.z[qid], 10, own).into_iter().collect();
                let got = index_top(&c, &index, &embedder, &c.z[qid], 10, rerank, own);
                found += got.iter().filter(|id| want.contains(id)).count();
            }
            let recall = found as f64 / (queries.len() * 10) as f64;
            eprintln!(
                "dims {dims} rerank {rerank}: recall@10 {recall:.3} over {} windows",
                c.z.len()
            );
            if dims == 32 && rerank == 4 {
                assert!(recall >= 0.95, "recall@10 {recall}");
            }
        }
    }
    // Text: each motif's words find planted copies of it in the top 10.
    let embedder = Embedder::new(WINDOW, 32).unwrap();
    let mut index = VectorIndex::new(32, IndexParams::default(), c.z.len()).unwrap();
    for w in &c.z {
        index.insert(&embedder.project(w)).unwrap();
    }
    for motif in MOTIFS {
        let template = text::template(&text::parse(motif).unwrap(), WINDOW);
        let q = znormalize(&template).unwrap();
        let top = index_top(&c, &index, &embedder, &q, 10, 4, None);
        let planted_here = |id: usize| {
            let (s, start) = c.windows[id];
            truth
                .iter()
                .any(|p| p.motif == motif && p.series == s && p.start.abs_diff(start) <= STRIDE)
        };
        let hits = top.iter().filter(|&&id| planted_here(id)).count();
        eprintln!("{motif:?}: {hits} of the top 10 are planted copies");
        assert!(hits >= 8, "{motif:?}: {hits} of 10");
    }
}

//! `chronicle bench semantic`: the semantic index at scale, side by side
//! with an exact scan in the same run.
//!
//! Windows of seeded series with planted motifs (`chronicle_semantic::synth`)
//! are embedded and inserted one at a time (one core); queries are windows
//! of series the index has not seen. For each `ef_search` the bench reports
//! queries a second on one core and recall@k against the exact search (brute
//! force over the z-normalised windows), in the graph's order and with the
//! search's exact rerank of `rerank × k` candidates; then the exact scan's
//! speed over fingerprints and over raw windows, the build time, and memory a
//! vector (the index's own count, and the process's resident growth).

use std::time::Instant;

use chronicle_semantic::embed::{euclidean, znormalize, Embedder};
use chronicle_semantic::index::{IndexParams, VectorIndex};
use chronicle_semantic::synth::planted;
use clap::Args;
use serde_json::json;

use crate::bench::round3;

#[derive(Args, Debug)]
pub struct SemanticBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Windows indexed.
    #[arg(long, default_value_t = 100_000)]
    windows: usize,
    /// Samples in a window.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Fingerprint dimensions.
    #[arg(long, default_value_t = 64)]
    dims: usize,
    /// Query windows (from series the index has not seen).
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// Results a query asks for.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// ef_search values to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    ef_search: Vec<usize>,
    /// Links per window (HNSW's M).
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// Candidates kept while inserting.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Candidates reranked exactly, as a multiple of k.
    #[arg(long, default_value_t = 4)]
    rerank: usize,
}

/// Windows of `data`, `stride` apart, z-normalised (flat ones skipped).
fn windows(data: &[Vec<f64>], window: usize, stride: usize, limit: usize) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(limit.min(1 << 20));
    for series in data {
        let mut start = 0;
        while start + window <= series.len() && out.len() < limit {
            if let Some(z) = znormalize(&series[start..start + window]) {
                out.push(z);
            }
            start += stride;
        }
    }
    out
}

/// Resident memory of this process, bytes (0 where it cannot be read).
fn rss_bytes() -> u64 {
    chronicle_capacity::usage::memory_rss().unwrap_or(0)
}

pub fn run(args: SemanticBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.windows < 100 || args.queries == 0 || args.k == 0 || args.rerank == 0 {
        return Err("--windows at least 100; --queries, --k and --rerank at least 1".into());
    }
    if args.ef_search.is_empty() {
        return Err("--ef-search: at least one value".into());
    }
    let embedder = Embedder::new(args.window, args.dims)?;
    let params = IndexParams {
        m: args.m,
        ef_construction: args.ef_construction,
        ef_search: args.ef_search[0],
        ..IndexParams::default()
    };
    params.check()?;
    let stride = (args.window / 8).max(1);
    let len = 4096.max(args.window * 4);
    let per_series = (len - args.window) / stride + 1;
    let series = args.windows.div_ceil(per_series) + 1;
    eprintln!(
        "generating {series} series of {len} samples ({} windows of {} samples, every {stride})",
        args.windows, args.window
    );
    let (data, _) = planted(1, series, len, args.window, len / args.window / 2);
    let indexed = windows(&data, args.window, stride, args.windows);
    let (qdata, _) = planted(
        2,
        args.queries.div_ceil(per_series) + 1,
        len,
        args.window,
        2,
    );
    // Every query series' windows, spread: not neighbours of each other.
    let all_queries = windows(&qdata, args.window, stride, usize::MAX);
    let queries: Vec<&Vec<f64>> = (0..args.queries)
        .map(|i| &all_queries[i * all_queries.len() / args.queries])
        .collect();

    // Embedding timed on its own, then again inside the build, so the
    // resident growth is the index's alone.
    let started = Instant::now();
    for z in &indexed {
        std::hint::black_box(embedder.project(z));
    }
    let embed_secs = started.elapsed().as_secs_f64();
    let rss_before = rss_bytes();
    let mut index = VectorIndex::new(args.dims, params, indexed.len())?;
    let started = Instant::now();
    for (i, z) in indexed.iter().enumerate() {
        index.insert(&embedder.project(z))?;
        if (i + 1) % 20_000 == 0 {
            eprintln!("  inserted {} of {}", i + 1, indexed.len());
        }
    }
    let build_secs = started.elapsed().as_secs_f64() - embed_secs;
    let rss_after = rss_bytes();
    eprintln!("built in {build_secs:.1} s; the exact answers next");

    // The exact answers: brute force over the z-normalised windows.
    let started = Instant::now();
    let truth: Vec<Vec<usize>> = queries
        .iter()
        .map(|q| {
            let mut all: Vec<(f64, usize)> = indexed
                .iter()
                .enumerate()
                .map(|(id, w)| (euclidean(q, w), id))
                .collect();
            all.select_nth_unstable_by(args.k - 1, |a, b| a.0.total_cmp(&b.0));
            all.truncate(args.k);
            all.into_iter().map(|(_, id)| id).collect()
        })
        .collect();
    let exact_raw_qps = queries.len() as f64 / started.elapsed().as_secs_f64();
    let projected: Vec<Vec<f32>> = queries.iter().map(|q| embedder.project(q)).collect();
    let started = Instant::now();
    for q in &projected {
        std::hint::black_box(index.scan(q, args.k, None));
    }
    let exact_fingerprint_qps = queries.len() as f64 / started.elapsed().as_secs_f64();

    let recall = |found: &[usize], want: &[usize]| {
        found.iter().filter(|id| want.contains(id)).count() as f64 / want.len().max(1) as f64
    };
    let mut rows = Vec::new();
    for &ef in &args.ef_search {
        let (mut graph_recall, mut reranked_recall) = (0.0, 0.0);
        let started = Instant::now();
        let mut answers = Vec::with_capacity(queries.len());
        for q in &projected {
            answers.push(
                index
                    .search(q, args.k * args.rerank, None, index.len(), Some(ef))
                    .0,
            );
        }
        let graph_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for ((hits, q), want) in answers.iter().zip(&queries).zip(&truth) {
            let order: Vec<usize> = hits.iter().take(args.k).map(|h| h.id).collect();
            graph_recall += recall(&order, want);
            let mut ranked: Vec<(f64, usize)> = hits
                .iter()
                .map(|h| (euclidean(q, &indexed[h.id]), h.id))
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            let top: Vec<usize> = ranked.iter().take(args.k).map(|r| r.1).collect();
            reranked_recall += recall(&top, want);
        }
        let rerank_secs = started.elapsed().as_secs_f64();
        let n = queries.len() as f64;
        let qps = n / (graph_secs + rerank_secs);
        rows.push(json!({
            "ef_search": ef,
            "queries_per_second": round3(qps),
            "recall_graph_order": round3(graph_recall / n),
            "recall_reranked": round3(reranked_recall / n),
            "speedup_over_exact_raw": round3(qps / exact_raw_qps),
            "speedup_over_exact_fingerprints": round3(qps / exact_fingerprint_qps),
        }));
    }
    let rss_per_vector = rss_after.saturating_sub(rss_before) as f64 / index.len() as f64;
    let report = json!({
        "windows": index.len(),
        "window": args.window,
        "dims": args.dims,
        "queries": queries.len(),
        "k": args.k,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "rerank": args.rerank,
        "embed_seconds": round3(embed_secs),
        "build_seconds": round3(build_secs),
        "inserts_per_second": round3(index.len() as f64 / build_secs),
        "exact_raw_queries_per_second": round3(exact_raw_qps),
        "exact_fingerprint_queries_per_second": round3(exact_fingerprint_qps),
        "rss_bytes_per_vector": round3(rss_per_vector),
        "searches": rows,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} windows of {} samples, {} dims; M {}, ef_construction {}; {} queries, k {}",
        index.len(),
        args.window,
        args.dims,
        args.m,
        args.ef_construction,
        queries.len(),
        args.k
    );
    println!(
        "build: {build_secs:.1} s ({:.0} inserts/s on one core); embedding {embed_secs:.2} s",
        index.len() as f64 / build_secs
    );
    println!(
        "memory a vector: {rss_per_vector:.0} bytes (the process's resident growth over the build)"
    );
    println!(
        "exact scan: {exact_raw_qps:.1} queries/s over raw windows, {exact_fingerprint_qps:.1} over fingerprints"
    );
    println!(
        "{:>9} {:>12} {:>14} {:>14} {:>10}",
        "ef_search", "queries/s", "recall (graph)", "recall (rerank)", "speed-up"
    );
    for r in &rows {
        println!(
            "{:>9} {:>12.1} {:>14.3} {:>14.3} {:>9.1}x",
            r["ef_search"],
            r["queries_per_second"].as_f64().unwrap_or(0.0),
            r["recall_graph_order"].as_f64().unwrap_or(0.0),
            r["recall_reranked"].as_f64().unwrap_or(0.0),
            r["speedup_over_exact_raw"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}

//! `chronicle bench semantic`: the node's search path at scale, side by
//! side with an exact scan and with hnswlib in the same run.
//!
//! Seeded series with planted motifs (`chronicle_semantic::synth`) are fed
//! sample by sample into a shard's [`Catalog`], as the indexing actor feeds
//! it: windows cut every `window / 8` samples, embedded, inserted one at a
//! time (one core). Queries are windows of series the catalog has not seen,
//! searched as a node searches a shard: `4 × k` candidates from the graph,
//! reranked by the exact z-normalised distance of their stored windows, at
//! most one of any run of overlapping windows of a series. The exact answer
//! is a brute-force search over every z-normalised window under the same
//! rule. With `--hnswlib PYTHON`, hnswlib (the C++ library, through its
//! Python binding, one thread) indexes the same fingerprints and answers
//! the same queries; its candidates are reranked by the same code.

use std::sync::Arc;
use std::time::Instant;

use chronicle_semantic::catalog::{Budget, Catalog, Filter, Layout, SeriesInfo};
use chronicle_semantic::embed::{euclidean, znormalize, Embedder};
use chronicle_semantic::index::IndexParams;
use chronicle_semantic::synth::planted;
use clap::Args;
use serde_json::{json, Value};

use crate::bench::round3;

type Error = Box<dyn std::error::Error>;

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
    /// Also run hnswlib (`pip install hnswlib`) with this Python on the
    /// same fingerprints and queries.
    #[arg(long)]
    hnswlib: Option<String>,
}

/// A window of the corpus: its series, its first sample, its z-normalised values.
struct Window {
    series: usize,
    start: usize,
    z: Vec<f64>,
}

/// Windows of `data`, `stride` apart, z-normalised (flat ones skipped), as
/// the catalog cuts them, up to `limit`.
fn windows(data: &[Vec<f64>], window: usize, stride: usize, limit: usize) -> Vec<Window> {
    let mut out = Vec::with_capacity(limit.min(1 << 20));
    for (series, values) in data.iter().enumerate() {
        let mut start = 0;
        while start + window <= values.len() && out.len() < limit {
            if let Some(z) = znormalize(&values[start..start + window]) {
                out.push(Window { series, start, z });
            }
            start += stride;
        }
    }
    out
}

/// The best `k` of `ranked` (distance, window id, best first), at most one
/// of any run of overlapping windows of a series (the search's rule).
fn non_overlapping(
    ranked: &[(f64, usize)],
    corpus: &[Window],
    window: usize,
    k: usize,
) -> Vec<(usize, usize)> {
    let mut taken: Vec<(usize, usize)> = Vec::with_capacity(k);
    for &(_, id) in ranked {
        if taken.len() == k {
            break;
        }
        let w = &corpus[id];
        if taken
            .iter()
            .any(|&(s, start)| s == w.series && start.abs_diff(w.start) < window)
        {
            continue;
        }
        taken.push((w.series, w.start));
    }
    taken
}

/// Samples are a second apart; a window's place is its series and first sample.
const STEP_NS: i64 = 1_000_000_000;

pub fn run(args: SemanticBench) -> Result<(), Error> {
    if args.windows < 100 || args.queries == 0 || !(1..=100).contains(&args.k) {
        return Err("--windows at least 100, --queries at least 1, --k 1 to 100".into());
    }
    if args.ef_search.is_empty() {
        return Err("--ef-search: at least one value".into());
    }
    let embedder = Arc::new(Embedder::new(args.window, args.dims)?);
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
    let corpus = windows(&data, args.window, stride, args.windows);
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
        .map(|i| &all_queries[i * all_queries.len() / args.queries].z)
        .collect();

    // The catalog, fed as the indexing actor feeds it; its budget stops it
    // at the corpus's size.
    let rss_before = crate::bench::rss_bytes();
    let layout = Layout {
        embedder: embedder.clone(),
        stride,
        params,
        max_series: series,
        budget: Arc::new(Budget::new(corpus.len())),
    };
    let mut catalog = Catalog::new(0, layout);
    let started = Instant::now();
    for (s, values) in data.iter().enumerate() {
        if catalog.windows() == corpus.len() {
            break;
        }
        let info = SeriesInfo {
            metric: "bench".into(),
            labels: [("s".to_string(), s.to_string())].into(),
        };
        let i = catalog
            .series(s as u64, || info)
            .ok_or("the catalog refused a series")?;
        for (t, v) in values.iter().enumerate() {
            catalog.push(i, t as i64 * STEP_NS, *v);
        }
        if s % 50 == 49 {
            eprintln!(
                "  indexed {} of {} windows",
                catalog.windows(),
                corpus.len()
            );
        }
    }
    let build_secs = started.elapsed().as_secs_f64();
    let rss_after = crate::bench::rss_bytes();
    if catalog.windows() != corpus.len() {
        return Err(format!(
            "the catalog cut {} windows, the corpus {}",
            catalog.windows(),
            corpus.len()
        )
        .into());
    }
    eprintln!("built in {build_secs:.1} s; the exact answers next");

    // The exact answers: brute force over every z-normalised window.
    let started = Instant::now();
    let truth: Vec<Vec<(usize, usize)>> = queries
        .iter()
        .map(|q| {
            let mut all: Vec<(f64, usize)> = corpus
                .iter()
                .enumerate()
                .map(|(id, w)| (euclidean(q, &w.z), id))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            non_overlapping(&all, &corpus, args.window, args.k)
        })
        .collect();
    let exact_qps = queries.len() as f64 / started.elapsed().as_secs_f64();
    let recall = |found: &[(usize, usize)], want: &[(usize, usize)]| {
        found.iter().filter(|f| want.contains(f)).count() as f64 / want.len().max(1) as f64
    };

    let mut rows = Vec::new();
    for &ef in &args.ef_search {
        let started = Instant::now();
        let mut answers = Vec::with_capacity(queries.len());
        for q in &queries {
            answers.push(catalog.search(q, args.k, &Filter::default(), Some(ef))?.0);
        }
        let qps = queries.len() as f64 / started.elapsed().as_secs_f64();
        let mut total = 0.0;
        for (found, want) in answers.iter().zip(&truth) {
            let found: Vec<(usize, usize)> = found
                .iter()
                .map(|m| {
                    let s = m.series.labels["s"].parse().unwrap_or(usize::MAX);
                    (s, (m.start / STEP_NS) as usize)
                })
                .collect();
            total += recall(&found, want);
        }
        rows.push(json!({
            "ef_search": ef,
            "queries_per_second": round3(qps),
            "recall": round3(total / queries.len() as f64),
            "speedup_over_exact": round3(qps / exact_qps),
        }));
    }
    let status = catalog.status();
    let rss_per_window = rss_after.saturating_sub(rss_before) as f64 / corpus.len() as f64;
    let peer = match &args.hnswlib {
        None => Value::Null,
        Some(python) => hnswlib(python, &args, &embedder, &corpus, &queries, &truth)?,
    };
    let report = json!({
        "windows": corpus.len(),
        "window": args.window,
        "dims": args.dims,
        "queries": queries.len(),
        "k": args.k,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "candidates_reranked": args.k * chronicle_semantic::catalog::RERANK,
        "build_seconds": round3(build_secs),
        "inserts_per_second": round3(corpus.len() as f64 / build_secs),
        "exact_queries_per_second": round3(exact_qps),
        "bytes_per_window_estimated": status.bytes / corpus.len().max(1),
        "rss_bytes_per_window": round3(rss_per_window),
        "searches": rows,
        "hnswlib": peer,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_summary(&report);
    Ok(())
}

fn print_summary(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "{} windows of {} samples, {} dims; M {}, ef_construction {}; {} queries, k {}, {} candidates reranked",
        r["windows"], r["window"], r["dims"], r["m"], r["ef_construction"], r["queries"], r["k"], r["candidates_reranked"]
    );
    println!(
        "build: {:.1} s ({:.0} windows/s on one core); memory a window: {:.0} bytes resident, {} estimated",
        f(&r["build_seconds"]),
        f(&r["inserts_per_second"]),
        f(&r["rss_bytes_per_window"]),
        r["bytes_per_window_estimated"]
    );
    println!(
        "exact scan: {:.1} queries/s",
        f(&r["exact_queries_per_second"])
    );
    println!(
        "{:>9} {:>12} {:>9} {:>10}",
        "ef_search", "queries/s", "recall", "speed-up"
    );
    for row in r["searches"].as_array().into_iter().flatten() {
        println!(
            "{:>9} {:>12.1} {:>9.3} {:>9.1}x",
            row["ef_search"],
            f(&row["queries_per_second"]),
            f(&row["recall"]),
            f(&row["speedup_over_exact"])
        );
    }
    let peer = &r["hnswlib"];
    if peer.is_object() {
        println!(
            "hnswlib {} (one thread): build {:.1} s",
            peer["version"].as_str().unwrap_or("?"),
            f(&peer["build_seconds"])
        );
        println!(
            "{:>9} {:>12} {:>12} {:>9}",
            "ef_search", "graph q/s", "+ rerank q/s", "recall"
        );
        for row in peer["searches"].as_array().into_iter().flatten() {
            println!(
                "{:>9} {:>12.1} {:>12.1} {:>9.3}",
                row["ef_search"],
                f(&row["graph_queries_per_second"]),
                f(&row["queries_per_second"]),
                f(&row["recall"])
            );
        }
    }
}

/// hnswlib on the same fingerprints: built with the same M and
/// ef_construction on one thread, queried for the same candidates at each
/// ef, its candidates reranked by the same code as the catalog's.
fn hnswlib(
    python: &str,
    args: &SemanticBench,
    embedder: &Embedder,
    corpus: &[Window],
    queries: &[&Vec<f64>],
    truth: &[Vec<(usize, usize)>],
) -> Result<Value, Error> {
    let dir = tempfile::tempdir()?;
    let write = |name: &str, rows: &mut dyn Iterator<Item = Vec<f32>>| -> Result<(), Error> {
        let mut bytes = Vec::new();
        for row in rows {
            for v in row {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(dir.path().join(name), bytes)?;
        Ok(())
    };
    write(
        "base.f32",
        &mut corpus.iter().map(|w| embedder.project(&w.z)),
    )?;
    write(
        "queries.f32",
        &mut queries.iter().map(|q| embedder.project(q)),
    )?;
    let candidates = args.k * chronicle_semantic::catalog::RERANK;
    let request = json!({
        "dir": dir.path(),
        "dims": args.dims,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "ef_search": args.ef_search,
        "candidates": candidates,
    });
    eprintln!("hnswlib: building and searching the same fingerprints");
    let out = std::process::Command::new(python)
        .args(["-c", HNSWLIB_SCRIPT, &request.to_string()])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "hnswlib run failed (pip install hnswlib?): {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut answer: Value = serde_json::from_slice(&out.stdout)?;
    let mut rows = Vec::new();
    for search in answer["searches"].as_array().cloned().unwrap_or_default() {
        let labels = search["labels"].as_array().cloned().unwrap_or_default();
        let started = Instant::now();
        let mut total = 0.0;
        for ((q, want), row) in queries.iter().zip(truth).zip(&labels) {
            let mut ranked: Vec<(f64, usize)> = row
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .map(|id| (euclidean(q, &corpus[id as usize].z), id as usize))
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            let found = non_overlapping(&ranked, corpus, args.window, args.k);
            total +=
                found.iter().filter(|f| want.contains(f)).count() as f64 / want.len().max(1) as f64;
        }
        let rerank_secs = started.elapsed().as_secs_f64();
        let graph_secs = search["seconds"].as_f64().unwrap_or(f64::NAN);
        let n = queries.len() as f64;
        rows.push(json!({
            "ef_search": search["ef"],
            "graph_queries_per_second": round3(n / graph_secs),
            "queries_per_second": round3(n / (graph_secs + rerank_secs)),
            "recall": round3(total / n),
        }));
    }
    answer["searches"] = Value::Array(rows);
    Ok(answer)
}

/// Builds an hnswlib index of the fingerprints on one thread and times a
/// batch query of every query at each ef; answers JSON.
const HNSWLIB_SCRIPT: &str = r#"
import json, sys, time
import numpy as np
import hnswlib
req = json.loads(sys.argv[1])
d = req["dims"]
base = np.fromfile(req["dir"] + "/base.f32", dtype="<f4").reshape(-1, d)
queries = np.fromfile(req["dir"] + "/queries.f32", dtype="<f4").reshape(-1, d)
index = hnswlib.Index(space="l2", dim=d)
index.init_index(max_elements=len(base), M=req["m"], ef_construction=req["ef_construction"], random_seed=1)
index.set_num_threads(1)
t = time.perf_counter()
index.add_items(base, np.arange(len(base)), num_threads=1)
build = time.perf_counter() - t
searches = []
for ef in req["ef_search"]:
    index.set_ef(max(ef, req["candidates"]))
    t = time.perf_counter()
    labels, _ = index.knn_query(queries, k=req["candidates"], num_threads=1)
    searches.append({"ef": ef, "seconds": time.perf_counter() - t, "labels": labels.tolist()})
from importlib.metadata import version
print(json.dumps({"version": version("hnswlib"), "build_seconds": build, "searches": searches}))
"#;

//! Semantic search requests (HTTP bodies and the `chronicle.semantic.search`
//! subject): no panic whatever the JSON; a request that passes its checks
//! is searched against a small catalog with its filters, and every match
//! it answers is one the filter keeps, with a finite distance.
#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use chronicle_semantic::api::{resample, SearchRequest};
use chronicle_semantic::catalog::{Budget, Catalog, Filter, Layout, SeriesInfo};
use chronicle_semantic::embed::{znormalize, Embedder};
use chronicle_semantic::index::IndexParams;
use chronicle_semantic::synth::planted;
use libfuzzer_sys::fuzz_target;

const WINDOW: usize = 32;

static CATALOG: LazyLock<Mutex<Catalog>> = LazyLock::new(|| {
    let layout = Layout {
        embedder: Arc::new(Embedder::new(WINDOW, 8).unwrap()),
        stride: 8,
        params: IndexParams::default(),
        max_series: 16,
        budget: Arc::new(Budget::new(10_000)),
    };
    let mut c = Catalog::new(0, layout);
    let (data, _) = planted(1, 4, 512, WINDOW, 4);
    for (s, values) in data.iter().enumerate() {
        let info = SeriesInfo {
            metric: if s % 2 == 0 { "cpu_load" } else { "mem_used" }.into(),
            labels: [("host".to_string(), format!("h{s}"))].into(),
        };
        let i = c.series(s as u64, || info).unwrap();
        for (t, v) in values.iter().enumerate() {
            c.push(i, t as i64 * 60_000_000_000, *v);
        }
    }
    Mutex::new(c)
});

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<SearchRequest>(data) else {
        return;
    };
    let Ok(k) = req.check() else {
        return;
    };
    let Some(values) = req.pattern.as_ref().and_then(|p| p.values.clone()) else {
        return;
    };
    let Some(query) = znormalize(&resample(&values, WINDOW)) else {
        return;
    };
    let filter = Filter {
        metric: req.metric.clone(),
        labels: req.labels.clone(),
        start: req.start.map(|ms| ms * 1_000_000),
        end: req.end.map(|ms| ms * 1_000_000),
        exclude: None,
    };
    let catalog = CATALOG.lock().unwrap();
    let (matches, _) = catalog
        .search(&query, k, &filter, req.ef_search)
        .expect("a checked request searches");
    assert!(matches.len() <= k);
    for m in matches {
        assert!(m.distance.is_finite());
        assert!(req
            .labels
            .iter()
            .all(|(k, v)| m.series.labels.get(k) == Some(v)));
        assert!(filter.start.is_none_or(|s| m.end >= s));
        assert!(filter.end.is_none_or(|e| m.start < e));
    }
});

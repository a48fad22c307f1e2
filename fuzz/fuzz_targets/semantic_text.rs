//! Text queries of semantic search (shape words): no panic; an accepted
//! query has 1 to 16 steps, and its template has the length asked for,
//! finite values, and a fingerprint unless it is flat.
#![no_main]

use chronicle_semantic::embed::Embedder;
use chronicle_semantic::text::{parse, template, MAX_STEPS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(steps) = parse(text) else {
        return;
    };
    assert!(!steps.is_empty() && steps.len() <= MAX_STEPS);
    for n in [8, 64, 100] {
        let t = template(&steps, n);
        assert_eq!(t.len(), n);
        assert!(t.iter().all(|v| v.is_finite()));
        let e = Embedder::new(n, 8).unwrap();
        if let Some(f) = e.embed(&t) {
            assert!(f.iter().all(|v| v.is_finite()));
        }
    }
});

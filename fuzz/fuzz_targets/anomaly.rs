//! Anomalies other services send (JSON on `<prefix>.anomaly.<metric>`):
//! no panic; an accepted anomaly meets every bound and survives a round
//! trip through its JSON unchanged.
#![no_main]

use chronicle_detect::anomaly::{Anomaly, MAX_LABELS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(a) = Anomaly::parse(data) else {
        return;
    };
    assert!(a.check().is_ok());
    assert!(a.labels.len() <= MAX_LABELS);
    assert!(a.score.is_finite());
    let again = Anomaly::parse(&serde_json::to_vec(&a).unwrap()).expect("its own JSON parses");
    assert_eq!(again, a);
});

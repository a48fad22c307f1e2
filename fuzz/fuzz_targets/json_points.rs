//! JSON points from the wire: never a panic; what is accepted is valid.
#![no_main]

use chronicle_ingest::parse_json;
use chronicle_storage::model::{validate, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(points) = parse_json(data, 0, &limits) {
        assert!(points.len() <= limits.max_request_points);
        for (_, metric, labels) in points.series_iter() {
            assert!(validate(metric, labels, &limits).is_ok());
        }
    }
});

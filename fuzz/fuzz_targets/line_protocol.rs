//! Line protocol from the wire: never a panic; what is accepted is valid.
#![no_main]

use chronicle_ingest::{parse_line_protocol, Precision};
use chronicle_storage::model::{validate, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    for precision in [Precision::Nanoseconds, Precision::Seconds] {
        if let Ok(points) = parse_line_protocol(text, precision, 0, &limits) {
            assert!(points.len() <= limits.max_request_points);
            for (_, metric, labels) in points.series_iter() {
                assert!(validate(metric, labels, &limits).is_ok());
            }
        }
    }
});

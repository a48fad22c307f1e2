//! Prometheus remote-write bodies from the wire: never a panic, never more
//! memory than the size limit allows; what is accepted is valid.
#![no_main]

use chronicle_ingest::parse_remote_write;
use chronicle_storage::model::{validate, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(points) = parse_remote_write(data, 1 << 20, &limits) {
        assert!(points.len() <= limits.max_request_points);
        for (_, metric, labels) in points.series_iter() {
            assert!(validate(metric, labels, &limits).is_ok());
        }
    }
});

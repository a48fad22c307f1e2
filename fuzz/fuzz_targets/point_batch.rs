//! Point batches from the Raft log and forwarded writes (storage's point
//! encoding): never a panic; what decodes survives a round trip bit-exactly.
#![no_main]

use chronicle_storage::model::{decode_points, encode_points};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(points) = decode_points(data) {
        let again = decode_points(&encode_points(&points)).expect("re-encoded batch decodes");
        assert_eq!(again.len(), points.len());
        for (a, b) in again.iter().zip(&points) {
            assert!(a.metric == b.metric && a.labels == b.labels && a.timestamp == b.timestamp);
            assert_eq!(a.value.to_bits(), b.value.to_bits());
        }
    }
});

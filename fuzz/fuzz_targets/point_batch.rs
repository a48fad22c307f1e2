//! Point batches from the Raft log and forwarded writes (storage's point
//! encoding): never a panic; what decodes survives a round trip bit-exactly,
//! and the borrowed view the state machine applies agrees with the owned points.
#![no_main]

use chronicle_storage::model::{decode_points, encode_points, EncodedPoints};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let owned = decode_points(data);
    let checked = EncodedPoints::from_bytes(data.to_vec());
    assert_eq!(owned.is_ok(), checked.is_ok(), "one decoder, one verdict");
    if let (Ok(points), Ok(batch)) = (owned, checked) {
        let again = decode_points(&encode_points(&points)).expect("re-encoded batch decodes");
        assert_eq!(again.len(), points.len());
        for (a, b) in again.iter().zip(&points) {
            assert!(a.metric == b.metric && a.labels == b.labels && a.timestamp == b.timestamp);
            assert_eq!(a.value.to_bits(), b.value.to_bits());
        }
        let view = batch.view().expect("an accepted batch has a view");
        assert_eq!(view.len(), points.len());
        for (v, p) in view.iter().zip(&points) {
            assert!(v.metric == p.metric && v.labels.len() == p.labels.len());
            assert_eq!(v.value.to_bits(), p.value.to_bits());
        }
    }
});

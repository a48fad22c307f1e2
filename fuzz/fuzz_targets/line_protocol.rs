//! Line protocol from the wire: never a panic; what is accepted is valid; and
//! the node's parser agrees with the crate-based reference parser (the same
//! points, or both refuse).
#![no_main]

use chronicle_ingest::reference::parse_line_protocol_reference;
use chronicle_ingest::{parse_line_protocol, Precision};
use chronicle_storage::model::{validate, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    for precision in [Precision::Nanoseconds, Precision::Seconds] {
        let parsed = parse_line_protocol(text, precision, 0, &limits);
        let reference = parse_line_protocol_reference(text, precision, 0, &limits);
        match (&parsed, &reference) {
            // Line protocol has no NaN: points compare equal.
            (Ok(a), Ok(b)) => assert!(
                a.to_points() == b.to_points(),
                "{text:?}: the parsers disagree"
            ),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "{text:?}: {:?} against the reference's {:?}",
                parsed.as_ref().map(|b| b.len()),
                reference.as_ref().map(|b| b.len())
            ),
        }
        if let Ok(points) = parsed {
            assert!(points.len() <= limits.max_request_points);
            for (_, metric, labels) in points.series_iter() {
                assert!(validate(metric, labels, &limits).is_ok());
            }
        }
    }
});

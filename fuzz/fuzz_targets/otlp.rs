//! OTLP metrics from the wire (POST /v1/metrics), as protobuf and as JSON:
//! never a panic; every accepted point passes validation.
#![no_main]

use chronicle_ingest::otlp::OtlpOptions;
use chronicle_ingest::{parse_otlp_metrics, OtlpEncoding};
use chronicle_storage::model::{validate, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let options = OtlpOptions {
        promote_resource_attributes: vec!["host.name".into()],
    };
    for encoding in [OtlpEncoding::Protobuf, OtlpEncoding::Json] {
        if let Ok(points) = parse_otlp_metrics(data, encoding, 0, &limits, &options) {
            assert!(points.len() <= limits.max_request_points);
            for (_, metric, labels) in points.series_iter() {
                assert!(validate(metric, labels, &limits).is_ok());
            }
        }
    }
});

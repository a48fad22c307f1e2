//! Prometheus remote write 1.0: a snappy-compressed (block format) protobuf
//! `WriteRequest`. Every sample keeps its metric name and labels exactly, so the
//! same PromQL gives the same answer here as in Prometheus.

use chronicle_storage::model::{validate, Label, Limits};
use chronicle_storage::PointBatch;
use prost::Message;

use crate::{IngestError, RequestBudget};

/// `prometheus.WriteRequest` (remote write 1.0), the fields Chronicle reads.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<ProtoLabel>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<ProtoSample>,
    /// Exemplars (tag 3) are not stored; native histograms (tag 4) are refused.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub histograms: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoLabel {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoSample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

const NS_PER_MS: i64 = 1_000_000;

/// Decodes a remote-write body into points, all or nothing. `max_bytes` bounds
/// the decompressed size, checked before decompressing.
pub fn parse_remote_write(
    body: &[u8],
    max_bytes: usize,
    limits: &Limits,
) -> Result<PointBatch, IngestError> {
    let bad = |m: String| IngestError::BadRequest(m);
    let len = snap::raw::decompress_len(body)
        .map_err(|e| bad(format!("the body is not snappy (block format): {e}")))?;
    if len > max_bytes {
        return Err(bad(format!(
            "the decompressed body would be {len} bytes, over the limit of {max_bytes}"
        )));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| bad(format!("the body is not snappy (block format): {e}")))?;
    let request =
        WriteRequest::decode(raw.as_slice()).map_err(|e| bad(format!("invalid protobuf: {e}")))?;
    // Counted before anything is built. A time series' label set is kept
    // once however many samples it has, so it counts once.
    let mut budget = RequestBudget::new(limits);
    for series in &request.timeseries {
        let bytes: usize = series
            .labels
            .iter()
            .map(|l| {
                if l.name == "__name__" {
                    l.value.len()
                } else {
                    l.name.len() + l.value.len()
                }
            })
            .sum();
        budget.charge(series.samples.len(), bytes)?;
    }
    // Each time series is one entry of the batch's series table, its samples
    // points of it: the label set is never copied per sample.
    let mut points = PointBatch::with_capacity(
        request.timeseries.len(),
        request.timeseries.iter().map(|s| s.samples.len()).sum(),
    );
    for (index, series) in request.timeseries.into_iter().enumerate() {
        let problem = |reason: String| IngestError::Point { index, reason };
        if !series.histograms.is_empty() {
            return Err(problem("native histograms are not supported".into()));
        }
        let mut metric = None;
        let mut labels = Vec::with_capacity(series.labels.len());
        for l in series.labels {
            if l.name == "__name__" {
                metric = Some(l.value);
            } else {
                labels.push(Label::new(l.name, l.value));
            }
        }
        let metric = metric.ok_or_else(|| problem("series without a __name__ label".into()))?;
        labels.sort();
        validate(&metric, &labels, limits).map_err(|p| problem(format!("{}: {p}", p.field())))?;
        if series.samples.is_empty() {
            continue;
        }
        let id = points.add_series(metric, labels);
        for s in series.samples {
            let timestamp = s
                .timestamp
                .checked_mul(NS_PER_MS)
                .ok_or_else(|| problem(format!("timestamp {} ms is out of range", s.timestamp)))?;
            points.push(id, timestamp, s.value);
        }
    }
    Ok(points)
}

/// Encodes a request the way Prometheus sends it (tests, benchmarks, tools).
pub fn encode_remote_write(request: &WriteRequest) -> Vec<u8> {
    let raw = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(name: &str, samples: &[(i64, f64)]) -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    ProtoLabel {
                        name: "__name__".into(),
                        value: name.into(),
                    },
                    ProtoLabel {
                        name: "job".into(),
                        value: "node".into(),
                    },
                ],
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| ProtoSample { value, timestamp })
                    .collect(),
                histograms: Vec::new(),
            }],
        }
    }

    #[test]
    fn keeps_names_labels_values_and_times() {
        let body = encode_remote_write(&request("up", &[(1000, 1.0), (2000, f64::NAN)]));
        let points = parse_remote_write(&body, 1 << 20, &Limits::default())
            .unwrap()
            .to_points();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].metric, "up");
        assert_eq!(points[0].labels, vec![Label::new("job", "node")]);
        assert_eq!(points[0].timestamp, 1_000_000_000);
        assert_eq!(points[1].value.to_bits(), f64::NAN.to_bits());
    }

    #[test]
    fn refuses_what_it_cannot_store() {
        let limits = Limits::default();
        assert!(parse_remote_write(b"not snappy at all", 1 << 20, &limits).is_err());
        let mut nameless = request("x", &[(1, 1.0)]);
        nameless.timeseries[0].labels.remove(0);
        let err =
            parse_remote_write(&encode_remote_write(&nameless), 1 << 20, &limits).unwrap_err();
        assert!(err.to_string().contains("__name__"), "{err}");
        let mut histogram = request("x", &[]);
        histogram.timeseries[0].histograms.push(vec![1, 2]);
        assert!(parse_remote_write(&encode_remote_write(&histogram), 1 << 20, &limits).is_err());
        // Over the decompressed-size limit, refused before decompressing.
        let big = request("x", &vec![(1, 1.0); 10_000]);
        assert!(parse_remote_write(&encode_remote_write(&big), 1024, &limits).is_err());
    }

    #[test]
    fn a_large_label_set_under_many_samples_is_kept_once() {
        // 60 labels of 2 KiB under 100,000 empty samples: 12 GB if every
        // sample had its own copy.
        let mut req = request("m", &vec![(0, 0.0); 100_000]);
        for i in 0..60 {
            req.timeseries[0].labels.push(ProtoLabel {
                name: format!("l{i:02}"),
                value: "x".repeat(2_000),
            });
        }
        let body = encode_remote_write(&req);
        let batch = parse_remote_write(&body, 32 << 20, &Limits::default()).unwrap();
        assert_eq!((batch.len(), batch.series_count()), (100_000, 1));
        // Encoded for the log with the label set once.
        assert!(batch.encode().as_bytes().len() < 100_000 * 12 + 130_000);
        // A request whose series (each with its own labels) are too large is
        // refused before any is built.
        let many = WriteRequest {
            timeseries: (0..100)
                .map(|i| {
                    let mut s = req.timeseries[0].clone();
                    s.samples.truncate(1);
                    s.labels[0].value = format!("m{i}");
                    s
                })
                .collect(),
        };
        let limits = Limits {
            max_request_label_bytes: 1 << 20,
            ..Limits::default()
        };
        let err = parse_remote_write(&encode_remote_write(&many), 32 << 20, &limits).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
        // Too many points, whatever their labels.
        let limits = Limits {
            max_request_points: 10,
            ..Limits::default()
        };
        let err = parse_remote_write(
            &encode_remote_write(&request("m", &[(0, 0.0); 11])),
            1 << 20,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
        assert_eq!(
            parse_remote_write(
                &encode_remote_write(&request("m", &[(0, 0.0); 10])),
                1 << 20,
                &limits
            )
            .unwrap()
            .len(),
            10
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_remote_write(&bytes, 1 << 20, &Limits::default());
        }

        #[test]
        fn round_trips(samples in proptest::collection::vec((0i64..1 << 40, any::<f64>()), 0..50)) {
            let body = encode_remote_write(&request("m", &samples));
            let points = parse_remote_write(&body, 1 << 24, &Limits::default()).unwrap().to_points();
            prop_assert_eq!(points.len(), samples.len());
            for (p, (t, v)) in points.iter().zip(&samples) {
                prop_assert_eq!(p.timestamp, t * 1_000_000);
                // Bit for bit, except that prost's encoder (proto3) elides -0.0 as
                // the default; the decoder keeps whatever is on the wire.
                prop_assert!(p.value.to_bits() == v.to_bits() || (*v == 0.0 && p.value == 0.0));
            }
        }
    }
}

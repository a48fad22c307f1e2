//! Payloads the ingest path accepts: InfluxDB line protocol and JSON points.
//!
//! Line protocol naming: every field of a line becomes one point. The metric is
//! `<measurement>_<field>`, except for a field named `value`, which keeps the bare
//! measurement name (`cpu,host=a value=1` is the metric `cpu`). Tags become labels.
//! Floats are stored as they are; integers and unsigned integers when they are exact
//! in an f64 (|n| <= 2^53; larger ones are an error rather than silently rounded);
//! booleans as 1 and 0. String fields cannot be stored in a numeric series and are
//! an error naming the line. A line without a timestamp gets the receive time.

use std::str::FromStr;

use chronicle_storage::model::{validate, Label, Limits};
use chronicle_storage::PointBatch;

pub use crate::line_protocol::parse_line_protocol;
use serde::Deserialize;

use crate::{label_bytes, IngestError, RequestBudget};

/// Timestamp unit of line protocol input (InfluxDB's `precision` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    pub(crate) fn factor(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
        }
    }
}

impl FromStr for Precision {
    type Err = IngestError;

    /// `ns`, `us` (or `u`), `ms`, `s` — InfluxDB's spellings.
    fn from_str(s: &str) -> Result<Self, IngestError> {
        Ok(match s {
            "ns" | "n" => Precision::Nanoseconds,
            "us" | "u" | "µs" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            other => {
                return Err(IngestError::BadRequest(format!(
                    "unknown precision {other:?} (use ns, us, ms or s)"
                )))
            }
        })
    }
}

/// One point in the JSON format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPoint {
    metric: String,
    /// `labels` and `tags` are the same thing; the Go original says `tags`.
    #[serde(default, alias = "tags")]
    labels: std::collections::BTreeMap<String, String>,
    value: JsonValue,
    /// Nanoseconds since the epoch; the receive time when absent.
    timestamp: Option<i64>,
}

/// A JSON number, or one of the strings Prometheus uses for non-finite values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonValue {
    Number(f64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonBody {
    Wrapped { points: Vec<JsonPoint> },
    List(Vec<JsonPoint>),
    One(JsonPoint),
}

/// Parses `{"points": [...]}`, a bare array of points, or one point object. Errors
/// name the point's index (0-based) and the reason.
pub fn parse_json(bytes: &[u8], now_ns: i64, limits: &Limits) -> Result<PointBatch, IngestError> {
    let body: JsonBody = serde_json::from_slice(bytes)
        .map_err(|e| IngestError::BadRequest(format!("invalid JSON points: {e}")))?;
    let raw = match body {
        JsonBody::Wrapped { points } | JsonBody::List(points) => points,
        JsonBody::One(p) => vec![p],
    };
    let mut budget = RequestBudget::new(limits);
    let mut points = PointBatch::with_capacity(raw.len(), raw.len());
    for (index, p) in raw.into_iter().enumerate() {
        budget.charge(
            1,
            label_bytes(
                &p.metric,
                p.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
        )?;
        let bad = |reason: String| IngestError::Point { index, reason };
        let value = match p.value {
            JsonValue::Number(v) => v,
            JsonValue::Text(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "+Inf" | "Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other
                    .parse()
                    .map_err(|_| bad(format!("value {other:?} is not a number")))?,
            },
        };
        // A BTreeMap: already sorted by name.
        let labels: Vec<Label> = p
            .labels
            .into_iter()
            .map(|(k, v)| Label::new(k, v))
            .collect();
        validate(&p.metric, &labels, limits).map_err(|e| bad(format!("{}: {e}", e.field())))?;
        let series = points.add_series(p.metric, labels);
        points.push(series, p.timestamp.unwrap_or(now_ns), value);
    }
    Ok(points)
}

/// Line protocol or JSON, by content type when given, else by the first byte.
pub fn parse_payload(
    bytes: &[u8],
    content_type: Option<&str>,
    precision: Precision,
    now_ns: i64,
    limits: &Limits,
) -> Result<PointBatch, IngestError> {
    let json = match content_type {
        Some(ct) => ct.contains("json"),
        None => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'['),
    };
    if json {
        parse_json(bytes, now_ns, limits)
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| IngestError::BadRequest(format!("line protocol is not UTF-8: {e}")))?;
        parse_line_protocol(text, precision, now_ns, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_storage::model::Point;

    #[test]
    fn fields_repeating_large_tags_are_bounded_per_request() {
        let limits = Limits {
            max_request_label_bytes: 10_000,
            ..Limits::default()
        };
        let tags: String = (0..10)
            .map(|i| format!(",t{i}={}", "v".repeat(200)))
            .collect();
        let fields: Vec<String> = (0..10).map(|i| format!("f{i}=1")).collect();
        // One line: 10 fields x ~2 KiB of tags = ~20 KB of label copies.
        let line = format!("m{tags} {} 1", fields.join(","));
        let err = parse_line_protocol(&line, Precision::Seconds, 0, &limits).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
        let few = Limits {
            max_request_points: 3,
            ..Limits::default()
        };
        let err =
            parse_line_protocol("m a=1,b=2\nm c=3,d=4", Precision::Seconds, 0, &few).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
        let err = parse_json(br#"[{"metric":"a","value":1},{"metric":"a","value":1},{"metric":"a","value":1},{"metric":"a","value":1}]"#, 0, &few).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
    }
    use proptest::prelude::*;

    fn lp(text: &str) -> Result<Vec<Point>, IngestError> {
        parse_line_protocol(text, Precision::Nanoseconds, 42, &Limits::default())
            .map(|b| b.to_points())
    }

    #[test]
    fn the_fields_of_a_line_share_its_tags() {
        let batch = parse_line_protocol(
            "cpu,host=a,region=eu user=1,system=2,idle=3 1000\n",
            Precision::Nanoseconds,
            0,
            &Limits::default(),
        )
        .unwrap();
        let labels: Vec<*const Label> = batch
            .series_iter()
            .map(|(_, _, labels)| labels.as_ptr())
            .collect();
        assert_eq!(labels.len(), 3);
        assert!(
            labels.iter().all(|&p| p == labels[0]),
            "one copy of the tags"
        );
    }

    #[test]
    fn every_field_becomes_a_point() {
        let points =
            lp("cpu,host=a,region=eu usage_user=1.5,usage_system=2i,up=true 1000\n").unwrap();
        let names: Vec<_> = points.iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(names, ["cpu_usage_user", "cpu_usage_system", "cpu_up"]);
        assert_eq!(points[1].value, 2.0);
        assert_eq!(points[2].value, 1.0);
        assert!(points.iter().all(|p| p.timestamp == 1000));
        assert_eq!(points[0].labels[0], Label::new("host", "a"));
    }

    #[test]
    fn value_field_keeps_the_measurement_name_and_time_defaults_to_now() {
        let points = lp("temp,room=k value=21.5").unwrap();
        assert_eq!(points[0].metric, "temp");
        assert_eq!(points[0].timestamp, 42);
    }

    #[test]
    fn errors_name_the_line() {
        let err = lp("# comment\ncpu value=1 1\n\ncpu value= 2\n").unwrap_err();
        match err {
            IngestError::Line { line, .. } => assert_eq!(line, 4),
            other => panic!("{other}"),
        }
        let err = lp("cpu msg=\"hello\" 1").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("string"), "{err}");
        let err = lp("cpu n=9007199254740993i 1").unwrap_err().to_string();
        assert!(err.contains("2^53"), "{err}");
        let err = lp("cpu,1bad=x value=1 1").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn precision_scales_timestamps() {
        let points = parse_line_protocol("m value=1 5", Precision::Seconds, 0, &Limits::default())
            .unwrap()
            .to_points();
        assert_eq!(points[0].timestamp, 5_000_000_000);
        assert!(parse_line_protocol(
            "m value=1 9223372036854775807",
            Precision::Seconds,
            0,
            &Limits::default()
        )
        .is_err());
    }

    #[test]
    fn json_forms() {
        let limits = Limits::default();
        let one = br#"{"metric":"cpu","tags":{"host":"a"},"value":1.5,"timestamp":7}"#;
        let points = parse_json(one, 0, &limits).unwrap().to_points();
        assert_eq!(points[0].labels, vec![Label::new("host", "a")]);
        let wrapped = br#"{"points":[{"metric":"a","value":1},{"metric":"b","value":"NaN"}]}"#;
        let points = parse_json(wrapped, 9, &limits).unwrap().to_points();
        assert!(points[1].value.is_nan());
        assert_eq!(points[0].timestamp, 9);
        let err = parse_json(br#"[{"metric":"","value":1}]"#, 0, &limits).unwrap_err();
        assert!(matches!(err, IngestError::Point { index: 0, .. }), "{err}");
        assert!(parse_json(b"{", 0, &limits).is_err());
        assert!(parse_payload(
            br#" [{"metric":"a","value":1}]"#,
            None,
            Precision::default(),
            0,
            &limits
        )
        .is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = lp(&text);
            let _ = parse_json(text.as_bytes(), 0, &Limits::default());
        }

        #[test]
        fn numeric_fields_round_trip(v in any::<f64>().prop_filter("finite", |v| v.is_finite()), t in any::<i64>()) {
            let points = lp(&format!("m,k=v f={v:?} {t}")).unwrap();
            prop_assert_eq!(points[0].value.to_bits(), v.to_bits());
            prop_assert_eq!(points[0].timestamp, t);
        }
    }
}

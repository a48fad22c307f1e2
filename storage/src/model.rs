//! Data model: points, labels, series keys, and their validation.

use std::fmt;

use crate::codec::{get_uvarint, put_uvarint, CodecError};

/// One observation of a series: nanoseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub timestamp: i64,
    pub value: f64,
}

impl Sample {
    pub const fn new(timestamp: i64, value: f64) -> Self {
        Self { timestamp, value }
    }

    /// Bit-exact equality (NaN payloads and the sign of zero count).
    pub fn bit_eq(&self, other: &Sample) -> bool {
        self.timestamp == other.timestamp && self.value.to_bits() == other.value.to_bits()
    }
}

/// A label pair. Series keep their labels sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Prometheus's stale marker: a NaN with this exact bit pattern.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A point as clients write it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: String,
    pub labels: Vec<Label>,
    pub value: f64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
}

impl Point {
    /// Builds a point; labels are sorted by name.
    pub fn new(metric: impl Into<String>, labels: Vec<Label>, value: f64, timestamp: i64) -> Self {
        let mut labels = labels;
        labels.sort();
        Self {
            metric: metric.into(),
            labels,
            value,
            timestamp,
        }
    }
}

/// Size limits applied when a point is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_labels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_bytes: 256,
            max_label_value_bytes: 2048,
            max_labels: 64,
        }
    }
}

/// What is wrong with a point; [`crate::StorageError::InvalidPoint`] adds its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointProblem {
    EmptyMetric,
    InvalidMetricName(String),
    InvalidLabelName(String),
    ReservedLabelName(String),
    DuplicateLabel(String),
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    TooManyLabels {
        count: usize,
        max: usize,
    },
}

impl PointProblem {
    /// The field the problem is about, for clients that map errors to inputs.
    pub fn field(&self) -> String {
        match self {
            PointProblem::EmptyMetric | PointProblem::InvalidMetricName(_) => "metric".into(),
            PointProblem::InvalidLabelName(n)
            | PointProblem::ReservedLabelName(n)
            | PointProblem::DuplicateLabel(n) => format!("labels.{n}"),
            PointProblem::TooLong { field, .. } => field.clone(),
            PointProblem::TooManyLabels { .. } => "labels".into(),
        }
    }
}

impl fmt::Display for PointProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointProblem::EmptyMetric => write!(f, "metric: name is empty"),
            PointProblem::InvalidMetricName(n) => {
                write!(f, "metric: {n:?} does not match [a-zA-Z_:][a-zA-Z0-9_:]*")
            }
            PointProblem::InvalidLabelName(n) => {
                write!(f, "label name {n:?} does not match [a-zA-Z_][a-zA-Z0-9_]*")
            }
            PointProblem::ReservedLabelName(n) => {
                write!(
                    f,
                    "label name {n:?} is reserved (the metric name is given apart)"
                )
            }
            PointProblem::DuplicateLabel(n) => write!(f, "label name {n:?} appears twice"),
            PointProblem::TooLong { field, len, max } => {
                write!(f, "{field}: {len} bytes is over the limit of {max}")
            }
            PointProblem::TooManyLabels { count, max } => {
                write!(f, "labels: {count} labels is over the limit of {max}")
            }
        }
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Prometheus's label name rule.
pub fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a point against Prometheus's naming rules and the size limits.
///
/// Labels must already be sorted by name (as [`Point::new`] leaves them). A label with
/// an empty value is the same as no label, as in Prometheus; [`SeriesKey`] drops it.
pub fn validate(metric: &str, labels: &[Label], limits: &Limits) -> Result<(), PointProblem> {
    if metric.is_empty() {
        return Err(PointProblem::EmptyMetric);
    }
    if metric.len() > limits.max_name_bytes {
        return Err(PointProblem::TooLong {
            field: "metric".into(),
            len: metric.len(),
            max: limits.max_name_bytes,
        });
    }
    if !is_metric_name(metric) {
        return Err(PointProblem::InvalidMetricName(metric.into()));
    }
    if labels.len() > limits.max_labels {
        return Err(PointProblem::TooManyLabels {
            count: labels.len(),
            max: limits.max_labels,
        });
    }
    for (i, l) in labels.iter().enumerate() {
        if l.name.len() > limits.max_name_bytes {
            return Err(PointProblem::TooLong {
                field: "label name".into(),
                len: l.name.len(),
                max: limits.max_name_bytes,
            });
        }
        if !is_label_name(&l.name) {
            return Err(PointProblem::InvalidLabelName(l.name.clone()));
        }
        // `__name__` is the metric, given apart from the labels. Other `__` names
        // are stored as Prometheus's TSDB stores them (remote write, `__address__`).
        if l.name == METRIC_LABEL {
            return Err(PointProblem::ReservedLabelName(l.name.clone()));
        }
        if l.value.len() > limits.max_label_value_bytes {
            return Err(PointProblem::TooLong {
                field: format!("labels.{}", l.name),
                len: l.value.len(),
                max: limits.max_label_value_bytes,
            });
        }
        if i > 0 && labels[i - 1].name == l.name {
            return Err(PointProblem::DuplicateLabel(l.name.clone()));
        }
    }
    Ok(())
}

/// Identity of a series: metric name and sorted labels (no empty values).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub metric: String,
    pub labels: Vec<Label>,
}

impl SeriesKey {
    pub fn new(metric: impl Into<String>, mut labels: Vec<Label>) -> Self {
        labels.retain(|l| !l.value.is_empty());
        labels.sort();
        Self {
            metric: metric.into(),
            labels,
        }
    }

    /// The value of a label, with `__name__` meaning the metric.
    pub fn label(&self, name: &str) -> Option<&str> {
        if name == METRIC_LABEL {
            return Some(&self.metric);
        }
        self.labels
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].value.as_str())
    }

    /// Canonical bytes: length-prefixed metric, then length-prefixed label pairs.
    pub fn encode(&self) -> Vec<u8> {
        encode_series(&self.metric, &self.labels)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut pos = 0;
        let metric = read_str(bytes, &mut pos)?;
        let mut labels = Vec::new();
        while pos < bytes.len() {
            let name = read_str(bytes, &mut pos)?;
            let value = read_str(bytes, &mut pos)?;
            labels.push(Label::new(name, value));
        }
        Ok(Self { metric, labels })
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.metric)?;
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        write!(f, "}}")
    }
}

/// The pseudo label that names the metric in matchers and postings.
pub const METRIC_LABEL: &str = "__name__";

/// Encodes a series key from sorted labels, skipping empty values.
pub fn encode_series(metric: &str, labels: &[Label]) -> Vec<u8> {
    let mut out = Vec::with_capacity(metric.len() + labels.len() * 16 + 4);
    put_str(&mut out, metric);
    for l in labels.iter().filter(|l| !l.value.is_empty()) {
        put_str(&mut out, &l.name);
        put_str(&mut out, &l.value);
    }
    out
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn read_str(bytes: &[u8], pos: &mut usize) -> Result<String, CodecError> {
    let len = get_uvarint(bytes, pos)? as usize;
    let end = pos.checked_add(len).ok_or(CodecError::Truncated)?;
    let s = bytes.get(*pos..end).ok_or(CodecError::Truncated)?;
    *pos = end;
    String::from_utf8(s.to_vec()).map_err(|_| CodecError::Malformed("series key is not UTF-8"))
}

/// A batch of points as bytes (the Raft log's and the cluster's form of a
/// write): the count, then per point the metric, the label count and pairs,
/// the timestamp and the value's bits. Labels are kept exactly as given
/// (order and empty values too): decoding gives back equal points.
pub fn encode_points(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * 96 + 4);
    put_uvarint(&mut out, points.len() as u64);
    for p in points {
        put_str(&mut out, &p.metric);
        put_uvarint(&mut out, p.labels.len() as u64);
        for l in &p.labels {
            put_str(&mut out, &l.name);
            put_str(&mut out, &l.value);
        }
        out.extend_from_slice(&p.timestamp.to_le_bytes());
        out.extend_from_slice(&p.value.to_bits().to_le_bytes());
    }
    out
}

/// Decodes [`encode_points`]; any malformed or truncated input is an error.
pub fn decode_points(bytes: &[u8]) -> Result<Vec<Point>, CodecError> {
    let mut pos = 0;
    let n = get_uvarint(bytes, &mut pos)? as usize;
    // Every point takes at least 18 bytes: a hostile count cannot reserve more.
    let mut out = Vec::with_capacity(n.min(bytes.len() / 18));
    for _ in 0..n {
        let metric = read_str(bytes, &mut pos)?;
        let labels_n = get_uvarint(bytes, &mut pos)? as usize;
        let mut labels = Vec::with_capacity(labels_n.min(bytes.len().saturating_sub(pos) / 2));
        for _ in 0..labels_n {
            let name = read_str(bytes, &mut pos)?;
            let value = read_str(bytes, &mut pos)?;
            labels.push(Label::new(name, value));
        }
        let fixed = bytes.get(pos..pos + 16).ok_or(CodecError::Truncated)?;
        pos += 16;
        let timestamp = i64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
        let value = f64::from_bits(u64::from_le_bytes(fixed[8..].try_into().expect("8 bytes")));
        out.push(Point {
            metric,
            labels,
            value,
            timestamp,
        });
    }
    if pos != bytes.len() {
        return Err(CodecError::Malformed("bytes after the last point"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(metric: &str, labels: &[(&str, &str)]) -> Result<(), PointProblem> {
        let p = Point::new(
            metric,
            labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
            1.0,
            0,
        );
        validate(&p.metric, &p.labels, &Limits::default())
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(check("", &[]), Err(PointProblem::EmptyMetric));
        assert!(matches!(
            check("1cpu", &[]),
            Err(PointProblem::InvalidMetricName(_))
        ));
        assert_eq!(
            check("cpu", &[("host-name", "a")]),
            Err(PointProblem::InvalidLabelName("host-name".into()))
        );
        assert_eq!(
            check("cpu", &[("host", "a"), ("host", "b")]),
            Err(PointProblem::DuplicateLabel("host".into()))
        );
        assert_eq!(
            check("cpu", &[("__name__", "x")]),
            Err(PointProblem::ReservedLabelName("__name__".into()))
        );
        let long = "x".repeat(5000);
        let err = check("cpu", &[("host", &long)]).unwrap_err();
        assert_eq!(err.field(), "labels.host");
        let many: Vec<(String, String)> = (0..65).map(|i| (format!("l{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert!(matches!(
            check("cpu", &many),
            Err(PointProblem::TooManyLabels { count: 65, .. })
        ));
        assert_eq!(
            check("node_cpu:rate5m", &[("cpu", "0"), ("mode", "idle")]),
            Ok(())
        );
    }

    #[test]
    fn series_key_round_trips_and_drops_empty_values() {
        let key = SeriesKey::new(
            "m",
            vec![
                Label::new("b", "2"),
                Label::new("a", "1"),
                Label::new("c", ""),
            ],
        );
        assert_eq!(key.labels.len(), 2);
        assert_eq!(SeriesKey::decode(&key.encode()).unwrap(), key);
        assert_eq!(key.label("__name__"), Some("m"));
        assert_eq!(key.label("a"), Some("1"));
        assert_eq!(key.to_string(), "m{a=\"1\",b=\"2\"}");
    }

    fn arb_point() -> impl proptest::strategy::Strategy<Value = Point> {
        use proptest::prelude::*;
        (
            ".{0,12}",
            proptest::collection::vec((".{0,6}", ".{0,6}"), 0..5),
            any::<u64>(),
            any::<i64>(),
        )
            .prop_map(|(metric, labels, bits, ts)| Point {
                metric,
                labels: labels.into_iter().map(|(n, v)| Label::new(n, v)).collect(),
                value: f64::from_bits(bits),
                timestamp: ts,
            })
    }

    proptest::proptest! {
        #[test]
        fn points_round_trip_bit_exactly(points in proptest::collection::vec(arb_point(), 0..20)) {
            let back = decode_points(&encode_points(&points)).unwrap();
            proptest::prop_assert_eq!(back.len(), points.len());
            for (a, b) in back.iter().zip(&points) {
                proptest::prop_assert_eq!(&a.metric, &b.metric);
                proptest::prop_assert_eq!(&a.labels, &b.labels);
                proptest::prop_assert_eq!(a.timestamp, b.timestamp);
                proptest::prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
            }
        }

        #[test]
        fn damaged_point_batches_are_errors_not_panics(
            points in proptest::collection::vec(arb_point(), 1..5),
            cut in 0usize..200,
            flip in 0usize..200,
        ) {
            let bytes = encode_points(&points);
            let _ = decode_points(&bytes[..cut.min(bytes.len() - 1)]).unwrap_err();
            let mut bad = bytes.clone();
            let i = flip % bad.len();
            bad[i] ^= 0xa5;
            let _ = decode_points(&bad);
        }
    }
}

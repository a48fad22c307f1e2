//! Data model: points, labels, series keys, and their validation.

use std::fmt;

use crate::codec::{get_uvarint, put_uvarint, unzigzag, zigzag, CodecError};

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

/// Read access to a label pair, so owned [`Label`]s and [`LabelRef`]s borrowed
/// from an encoded batch share one validation, hashing and lookup path.
pub trait LabelPair {
    fn name(&self) -> &str;
    fn value(&self) -> &str;
}

impl LabelPair for Label {
    fn name(&self) -> &str {
        &self.name
    }
    fn value(&self) -> &str {
        &self.value
    }
}

/// A label pair borrowed from an encoded batch (see [`PointsView`]). Orders
/// as [`Label`] does: by name, then value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelRef<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl LabelPair for LabelRef<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn value(&self) -> &str {
        self.value
    }
}

impl<'a> From<&'a Label> for LabelRef<'a> {
    fn from(l: &'a Label) -> Self {
        Self {
            name: &l.name,
            value: &l.value,
        }
    }
}

impl From<LabelRef<'_>> for Label {
    fn from(l: LabelRef<'_>) -> Self {
        Label::new(l.name, l.value)
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

/// Size limits: of one point (checked when it is validated) and of one write
/// request (checked by the parsers before they build the points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_name_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_labels: usize,
    /// Points one request may create.
    pub max_request_points: usize,
    /// Metric name and label bytes of the series one request creates,
    /// counted per series (a batch keeps a series once however many samples
    /// it has; each line protocol field is a series of its own).
    pub max_request_label_bytes: usize,
}

impl Limits {
    /// No size limit, only the rules of what a name and a label set are: what
    /// a replica applies committed entries under, so that a node configured
    /// with smaller limits than the leader's still applies what was committed.
    pub fn structural() -> Self {
        Self {
            max_name_bytes: usize::MAX,
            max_label_value_bytes: usize::MAX,
            max_labels: usize::MAX,
            max_request_points: usize::MAX,
            max_request_label_bytes: usize::MAX,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_name_bytes: 256,
            max_label_value_bytes: 2048,
            max_labels: 64,
            max_request_points: 1_000_000,
            max_request_label_bytes: 128 << 20,
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
pub fn validate<L: LabelPair>(
    metric: &str,
    labels: &[L],
    limits: &Limits,
) -> Result<(), PointProblem> {
    validate_metric(metric, limits)?;
    validate_labels(labels, limits)
}

/// The metric name's part of [`validate`] (for parsers that check each
/// distinct name once).
pub fn validate_metric(metric: &str, limits: &Limits) -> Result<(), PointProblem> {
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
    Ok(())
}

/// The labels' part of [`validate`] (for parsers that check each distinct
/// label set once); sorted by name, as there.
pub fn validate_labels<L: LabelPair>(labels: &[L], limits: &Limits) -> Result<(), PointProblem> {
    if labels.len() > limits.max_labels {
        return Err(PointProblem::TooManyLabels {
            count: labels.len(),
            max: limits.max_labels,
        });
    }
    for (i, l) in labels.iter().enumerate() {
        if l.name().len() > limits.max_name_bytes {
            return Err(PointProblem::TooLong {
                field: "label name".into(),
                len: l.name().len(),
                max: limits.max_name_bytes,
            });
        }
        if !is_label_name(l.name()) {
            return Err(PointProblem::InvalidLabelName(l.name().into()));
        }
        // `__name__` is the metric, given apart from the labels. Other `__` names
        // are stored as Prometheus's TSDB stores them (remote write, `__address__`).
        if l.name() == METRIC_LABEL {
            return Err(PointProblem::ReservedLabelName(l.name().into()));
        }
        if l.value().len() > limits.max_label_value_bytes {
            return Err(PointProblem::TooLong {
                field: format!("labels.{}", l.name()),
                len: l.value().len(),
                max: limits.max_label_value_bytes,
            });
        }
        if i > 0 && labels[i - 1].name() == l.name() {
            return Err(PointProblem::DuplicateLabel(l.name().into()));
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
    borrow_str(bytes, pos).map(String::from)
}

/// A batch of points as bytes (the Raft log's and the cluster's form of a
/// write). Each distinct series (metric and labels, exactly as given: order
/// and empty values too) is written once, in a table ahead of the points;
/// a point is its series' index, its timestamp as a zigzag varint delta from
/// the point before it, and its value's bits. A batch of many samples of few
/// series (remote write, OTLP, line protocol with many fields) costs about
/// 10 to 13 bytes a point instead of repeating every label set. Decoding
/// gives back equal points.
///
/// Layout: `0x80 0x00`, the series count, per series the metric, the label
/// count and the pairs; then the point count and the points. (The first
/// layout, still read, began with the point count as a varint and repeated
/// each point's labels; a varint is never written as `0x80 0x00`, so no
/// batch of it begins so, and no cut of one of these is one of it.)
pub fn encode_points(points: &[Point]) -> Vec<u8> {
    let mut index: rustc_hash::FxHashMap<(&str, &[Label]), u32> = Default::default();
    let mut order: Vec<&Point> = Vec::new();
    let mut series_of = Vec::with_capacity(points.len());
    for p in points {
        let next = order.len() as u32;
        let id = *index
            .entry((p.metric.as_str(), p.labels.as_slice()))
            .or_insert_with(|| {
                order.push(p);
                next
            });
        series_of.push(id);
    }
    let series: Vec<(&str, &[Label])> = order
        .iter()
        .map(|p| (p.metric.as_str(), p.labels.as_slice()))
        .collect();
    let samples = points
        .iter()
        .zip(series_of)
        .map(|(p, s)| (s, p.timestamp, p.value));
    write_batch(&series, points.len(), samples)
}

/// Writes [`encode_points`]' layout: the tag, the series table, then
/// `count` points, each its series' position in `series`, its time and its
/// value (what [`crate::PointBatch`] encodes its entries with too).
pub(crate) fn write_batch(
    series: &[(&str, &[Label])],
    count: usize,
    points: impl Iterator<Item = (u32, i64, f64)>,
) -> Vec<u8> {
    let table: usize = series
        .iter()
        .map(|(m, ls)| {
            m.len()
                + ls.iter()
                    .map(|l| l.name.len() + l.value.len() + 2)
                    .sum::<usize>()
                + 4
        })
        .sum();
    let mut out = Vec::with_capacity(table + count * 14 + 8);
    out.extend_from_slice(&BATCH_V2);
    put_uvarint(&mut out, series.len() as u64);
    for (metric, labels) in series {
        put_str(&mut out, metric);
        put_uvarint(&mut out, labels.len() as u64);
        for l in labels.iter() {
            put_str(&mut out, &l.name);
            put_str(&mut out, &l.value);
        }
    }
    put_uvarint(&mut out, count as u64);
    let mut previous = 0i64;
    for (series, timestamp, value) in points {
        put_uvarint(&mut out, u64::from(series));
        put_uvarint(&mut out, zigzag(timestamp.wrapping_sub(previous)));
        previous = timestamp;
        out.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    out
}

/// The tag of [`encode_points`]' layout.
pub(crate) const BATCH_V2: [u8; 2] = [0x80, 0x00];

/// Decodes [`encode_points`] into owned points; any malformed or truncated
/// input is an error. The write path reads batches through [`PointsView`]
/// instead, without a string allocation per label.
pub fn decode_points(bytes: &[u8]) -> Result<Vec<Point>, CodecError> {
    Ok(PointsView::decode(bytes)?.to_points())
}

/// A point whose strings are borrowed (from an encoded batch or from owned
/// points); its labels are a slice of its batch's [`PointsView`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointRef<'v, 'a> {
    pub metric: &'a str,
    pub labels: &'v [LabelRef<'a>],
    pub value: f64,
    pub timestamp: i64,
}

/// Reads a metric, a label count and the pairs (both layouts write a
/// series so), appending the pairs to `labels`.
fn read_series<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    labels: &mut Vec<LabelRef<'a>>,
) -> Result<SeriesSlot<'a>, CodecError> {
    let metric = borrow_str(bytes, pos)?;
    let count = get_uvarint(bytes, pos)?;
    let count = u32::try_from(count).map_err(|_| CodecError::Malformed("label count"))?;
    let first = u32::try_from(labels.len())
        .map_err(|_| CodecError::Malformed("too many labels in one batch"))?;
    for _ in 0..count {
        let name = borrow_str(bytes, pos)?;
        let value = borrow_str(bytes, pos)?;
        labels.push(LabelRef { name, value });
    }
    Ok(SeriesSlot {
        metric,
        first,
        count,
    })
}

/// A series of a view: its metric and `labels[first..first + count]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesSlot<'a> {
    pub(crate) metric: &'a str,
    pub(crate) first: u32,
    pub(crate) count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PointSlot {
    /// Index into the view's (or the batch's) series.
    pub(crate) series: u32,
    pub(crate) value: f64,
    pub(crate) timestamp: i64,
}

/// A batch of points read without copying its strings: a few allocations per
/// batch instead of one per string, and each series' labels once however
/// many of its points the batch holds. Replicas apply every Raft entry
/// through one of these.
#[derive(Debug, Clone, Default)]
pub struct PointsView<'a> {
    pub(crate) labels: Vec<LabelRef<'a>>,
    pub(crate) series: Vec<SeriesSlot<'a>>,
    pub(crate) points: Vec<PointSlot>,
}

impl<'a> PointsView<'a> {
    /// Borrows owned points (each point its own series).
    pub fn from_points(points: &'a [Point]) -> Self {
        let mut labels = Vec::with_capacity(points.iter().map(|p| p.labels.len()).sum());
        let mut series = Vec::with_capacity(points.len());
        let points = points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let first = labels.len() as u32;
                labels.extend(p.labels.iter().map(LabelRef::from));
                series.push(SeriesSlot {
                    metric: &p.metric,
                    first,
                    count: p.labels.len() as u32,
                });
                PointSlot {
                    series: i as u32,
                    value: p.value,
                    timestamp: p.timestamp,
                }
            })
            .collect();
        Self {
            labels,
            series,
            points,
        }
    }

    /// Reads [`encode_points`]' bytes (either layout); any malformed or
    /// truncated input, or bytes after the last point, is an error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CodecError> {
        if bytes.len() > 1 && bytes[..2] == BATCH_V2 {
            Self::decode_v2(bytes)
        } else {
            Self::decode_v1(bytes)
        }
    }

    fn decode_v2(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let mut pos = BATCH_V2.len();
        let n_series = get_uvarint(bytes, &mut pos)? as usize;
        // A series takes at least 2 bytes, a label 2, a point 10: a hostile
        // count cannot reserve more than the input could hold.
        let mut series = Vec::with_capacity(n_series.min(bytes.len() / 2));
        let mut labels = Vec::with_capacity(n_series.saturating_mul(4).min(bytes.len() / 2));
        for _ in 0..n_series {
            series.push(read_series(bytes, &mut pos, &mut labels)?);
        }
        let n = get_uvarint(bytes, &mut pos)? as usize;
        let mut points = Vec::with_capacity(n.min(bytes.len() / 10));
        let mut timestamp = 0i64;
        for _ in 0..n {
            let s = get_uvarint(bytes, &mut pos)?;
            let s = u32::try_from(s)
                .ok()
                .filter(|&s| (s as usize) < series.len())
                .ok_or(CodecError::Malformed(
                    "a point's series is not in the batch",
                ))?;
            timestamp = timestamp.wrapping_add(unzigzag(get_uvarint(bytes, &mut pos)?));
            let raw = bytes.get(pos..pos + 8).ok_or(CodecError::Truncated)?;
            pos += 8;
            let mut bits = [0u8; 8];
            bits.copy_from_slice(raw);
            points.push(PointSlot {
                series: s,
                value: f64::from_bits(u64::from_le_bytes(bits)),
                timestamp,
            });
        }
        if pos != bytes.len() {
            return Err(CodecError::Malformed("bytes after the last point"));
        }
        Ok(Self {
            labels,
            series,
            points,
        })
    }

    /// The first layout: every point with its own metric and labels.
    fn decode_v1(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let mut pos = 0;
        let n = get_uvarint(bytes, &mut pos)? as usize;
        // Every point takes at least 18 bytes and every label 2.
        let mut points = Vec::with_capacity(n.min(bytes.len() / 18));
        let mut series = Vec::with_capacity(n.min(bytes.len() / 18));
        let mut labels = Vec::with_capacity(n.saturating_mul(4).min(bytes.len() / 2));
        for i in 0..n {
            series.push(read_series(bytes, &mut pos, &mut labels)?);
            let fixed = bytes.get(pos..pos + 16).ok_or(CodecError::Truncated)?;
            pos += 16;
            let mut ts = [0u8; 8];
            let mut bits = [0u8; 8];
            ts.copy_from_slice(&fixed[..8]);
            bits.copy_from_slice(&fixed[8..]);
            points.push(PointSlot {
                series: u32::try_from(i)
                    .map_err(|_| CodecError::Malformed("too many points in one batch"))?,
                value: f64::from_bits(u64::from_le_bytes(bits)),
                timestamp: i64::from_le_bytes(ts),
            });
        }
        if pos != bytes.len() {
            return Err(CodecError::Malformed("bytes after the last point"));
        }
        Ok(Self {
            labels,
            series,
            points,
        })
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Distinct series slots in the batch (points share one when the batch
    /// was encoded with their series once; owned points each have one).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The series slot of the point at `index`: points with the same slot
    /// have the same metric and labels (points with different slots may too).
    pub fn series_slot(&self, index: usize) -> Option<usize> {
        self.points.get(index).map(|p| p.series as usize)
    }

    pub fn get(&self, index: usize) -> Option<PointRef<'_, 'a>> {
        self.points.get(index).map(|s| self.point(s))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = PointRef<'_, 'a>> + '_ {
        self.points.iter().map(|s| self.point(s))
    }

    /// Each point with its series slot.
    pub fn iter_with_series(
        &self,
    ) -> impl ExactSizeIterator<Item = (usize, PointRef<'_, 'a>)> + '_ {
        self.points
            .iter()
            .map(|s| (s.series as usize, self.point(s)))
    }

    fn series_labels(&self, s: &SeriesSlot<'a>) -> &[LabelRef<'a>] {
        let first = s.first as usize;
        &self.labels[first..first + s.count as usize]
    }

    fn point(&self, s: &PointSlot) -> PointRef<'_, 'a> {
        let series = &self.series[s.series as usize];
        PointRef {
            metric: series.metric,
            labels: self.series_labels(series),
            value: s.value,
            timestamp: s.timestamp,
        }
    }

    /// Sorts each series' labels by name (in place; most batches arrive sorted).
    pub fn sort_labels(&mut self) {
        for s in &self.series {
            let first = s.first as usize;
            let labels = &mut self.labels[first..first + s.count as usize];
            if labels.windows(2).any(|w| w[0] > w[1]) {
                labels.sort_unstable();
            }
        }
    }

    /// [`validate`] of each series slot, checked once however many points share it.
    fn series_problems(&self, limits: &Limits) -> Vec<Option<PointProblem>> {
        self.series
            .iter()
            .map(|s| validate(s.metric, self.series_labels(s), limits).err())
            .collect()
    }

    /// Validates every point ([`validate`]); labels must be sorted first
    /// ([`PointsView::sort_labels`]). The error names the first bad point.
    pub fn validate(&self, limits: &Limits) -> Result<(), (usize, PointProblem)> {
        let problems = self.series_problems(limits);
        if problems.iter().all(Option::is_none) {
            return Ok(());
        }
        for (index, p) in self.points.iter().enumerate() {
            if let Some(problem) = &problems[p.series as usize] {
                return Err((index, problem.clone()));
            }
        }
        Ok(())
    }

    /// Keeps the points whose index (in the view as it is) passes `keep`.
    pub fn retain_indexes(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut index = 0;
        self.points.retain(|_| {
            let kept = keep(index);
            index += 1;
            kept
        });
    }

    /// Drops the points [`validate`] refuses, keeping the others in order;
    /// returns each dropped point's original index and problem.
    pub fn retain_valid(&mut self, limits: &Limits) -> Vec<(usize, PointProblem)> {
        let problems = self.series_problems(limits);
        let mut dropped = Vec::new();
        if problems.iter().all(Option::is_none) {
            return dropped;
        }
        let mut index = 0;
        self.points.retain(|p| {
            let kept = match &problems[p.series as usize] {
                None => true,
                Some(problem) => {
                    dropped.push((index, problem.clone()));
                    false
                }
            };
            index += 1;
            kept
        });
        dropped
    }

    pub fn to_points(&self) -> Vec<Point> {
        self.iter()
            .map(|p| Point {
                metric: p.metric.into(),
                labels: p.labels.iter().map(|&l| l.into()).collect(),
                value: p.value,
                timestamp: p.timestamp,
            })
            .collect()
    }
}

/// An encoded batch ([`encode_points`]) that is known to decode: built by
/// encoding points, or from bytes after a full check. Clones share the bytes,
/// so a Raft entry goes to the log, to every follower and to the state machine
/// without being encoded or decoded again.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedPoints {
    pub(crate) bytes: bytes::Bytes,
    pub(crate) len: usize,
}

impl EncodedPoints {
    pub fn encode(points: &[Point]) -> Self {
        Self {
            bytes: encode_points(points).into(),
            len: points.len(),
        }
    }

    /// Takes bytes from the network or the disk, refusing any that do not decode.
    pub fn from_bytes(bytes: impl Into<bytes::Bytes>) -> Result<Self, CodecError> {
        let bytes = bytes.into();
        let len = PointsView::decode(&bytes)?.len();
        Ok(Self { bytes, len })
    }

    /// Points in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The batch, borrowed. Cannot fail for bytes this type accepted; the
    /// error is there so that a broken invariant is an error, not a panic.
    pub fn view(&self) -> Result<PointsView<'_>, CodecError> {
        PointsView::decode(&self.bytes)
    }
}

impl Default for EncodedPoints {
    fn default() -> Self {
        Self::encode(&[])
    }
}

impl fmt::Debug for EncodedPoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedPoints")
            .field("points", &self.len)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

fn borrow_str<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a str, CodecError> {
    let len = get_uvarint(bytes, pos)? as usize;
    let end = pos.checked_add(len).ok_or(CodecError::Truncated)?;
    let s = bytes.get(*pos..end).ok_or(CodecError::Truncated)?;
    *pos = end;
    std::str::from_utf8(s).map_err(|_| CodecError::Malformed("a string is not UTF-8"))
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
    fn a_view_validates_like_points_and_names_the_bad_one() {
        let points = vec![
            Point::new("cpu", vec![Label::new("host", "a")], 1.0, 1),
            Point::new("cpu", vec![Label::new("host-name", "a")], 1.0, 1),
        ];
        let encoded = EncodedPoints::encode(&points);
        let err = encoded.view().unwrap().validate(&Limits::default());
        assert_eq!(
            err,
            Err((1, PointProblem::InvalidLabelName("host-name".into())))
        );
        assert!(EncodedPoints::from_bytes(vec![2u8, 0]).is_err());
        assert_eq!(EncodedPoints::default().view().unwrap().len(), 0);
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

    /// Points drawn from a few series, so batches repeat them.
    fn arb_batch() -> impl proptest::strategy::Strategy<Value = Vec<Point>> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(arb_point(), 1..4),
            proptest::collection::vec((0usize..4, any::<i64>(), any::<u64>()), 0..30),
        )
            .prop_map(|(series, picks)| {
                picks
                    .into_iter()
                    .map(|(i, ts, bits)| {
                        let s = &series[i % series.len()];
                        Point {
                            metric: s.metric.clone(),
                            labels: s.labels.clone(),
                            value: f64::from_bits(bits),
                            timestamp: ts,
                        }
                    })
                    .collect()
            })
    }

    /// The first layout, as it was written (logs written before the series
    /// table must still read).
    fn encode_v1(points: &[Point]) -> Vec<u8> {
        let mut out = Vec::new();
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

    #[test]
    fn a_batch_states_each_series_once() {
        let labels = |h: usize| {
            vec![
                Label::new("dc", "eu-west-1"),
                Label::new("host", format!("host-{h:04}")),
                Label::new("job", "node-exporter"),
            ]
        };
        let points: Vec<Point> = (0..5_000)
            .map(|i| {
                Point::new(
                    "node_cpu_seconds_total",
                    labels(i % 50),
                    i as f64 * 0.25,
                    1_767_225_600_000_000_000 + (i as i64 / 50) * 10_000_000_000,
                )
            })
            .collect();
        let v2 = encode_points(&points);
        let v1 = encode_v1(&points);
        let per_point = v2.len() as f64 / points.len() as f64;
        assert!(per_point < 13.0, "{per_point} bytes a point");
        assert!(v1.len() > 6 * v2.len(), "{} against {}", v1.len(), v2.len());
        let view = PointsView::decode(&v2).unwrap();
        assert_eq!(view.series_count(), 50);
        assert_eq!(view.to_points(), points);
        assert_eq!(PointsView::decode(&v1).unwrap().to_points(), points);
    }

    #[test]
    fn a_point_naming_a_series_the_batch_lacks_is_an_error() {
        let mut bytes = BATCH_V2.to_vec();
        put_uvarint(&mut bytes, 1); // one series
        put_str(&mut bytes, "m");
        put_uvarint(&mut bytes, 0);
        put_uvarint(&mut bytes, 1); // one point, of series 1
        put_uvarint(&mut bytes, 1);
        put_uvarint(&mut bytes, 0);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        assert!(PointsView::decode(&bytes).is_err());
        // A count no input could hold reserves nothing.
        let mut huge = BATCH_V2.to_vec();
        put_uvarint(&mut huge, u64::MAX >> 1);
        assert!(PointsView::decode(&huge).is_err());
    }

    proptest::proptest! {
        #[test]
        fn batches_of_repeated_series_round_trip_in_both_layouts(points in arb_batch()) {
            let exact = |ps: &[Point]| -> Vec<(String, Vec<Label>, i64, u64)> {
                ps.iter()
                    .map(|p| (p.metric.clone(), p.labels.clone(), p.timestamp, p.value.to_bits()))
                    .collect()
            };
            let back = decode_points(&encode_points(&points)).unwrap();
            proptest::prop_assert_eq!(exact(&back), exact(&points));
            let old = decode_points(&encode_v1(&points)).unwrap();
            proptest::prop_assert_eq!(exact(&old), exact(&points));
            let mut view_bytes = encode_points(&points);
            let view = PointsView::decode(&view_bytes).unwrap();
            for i in 0..view.len() {
                for j in 0..view.len() {
                    if view.series_slot(i) == view.series_slot(j) {
                        let (a, b) = (view.get(i).unwrap(), view.get(j).unwrap());
                        proptest::prop_assert_eq!((a.metric, a.labels), (b.metric, b.labels));
                    }
                }
            }
            view_bytes.clear();
        }

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
        fn views_of_bytes_and_of_points_agree(points in proptest::collection::vec(arb_point(), 0..20)) {
            let encoded = EncodedPoints::encode(&points);
            proptest::prop_assert_eq!(encoded.len(), points.len());
            let again = EncodedPoints::from_bytes(encoded.as_bytes().to_vec()).unwrap();
            proptest::prop_assert_eq!(&again, &encoded);
            let from_bytes = encoded.view().unwrap();
            let from_points = PointsView::from_points(&points);
            proptest::prop_assert_eq!(from_bytes.len(), points.len());
            for (a, b) in from_bytes.iter().zip(from_points.iter()) {
                proptest::prop_assert_eq!(a.metric, b.metric);
                proptest::prop_assert_eq!(a.labels, b.labels);
                proptest::prop_assert_eq!(a.timestamp, b.timestamp);
                proptest::prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
            }
        }

        #[test]
        fn sorting_a_view_sorts_like_point_new(points in proptest::collection::vec(arb_point(), 0..20)) {
            let mut view = PointsView::from_points(&points);
            view.sort_labels();
            for (v, p) in view.iter().zip(&points) {
                let sorted = Point::new(p.metric.clone(), p.labels.clone(), p.value, p.timestamp);
                let owned: Vec<Label> = v.labels.iter().map(|&l| l.into()).collect();
                proptest::prop_assert_eq!(owned, sorted.labels);
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
            if let Ok(batch) = EncodedPoints::from_bytes(bad) {
                proptest::prop_assert!(batch.view().is_ok());
            }
        }
    }
}

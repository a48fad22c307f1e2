//! [`PointBatch`]: points as the parsers build them and the write path
//! carries them, each series once however many samples it has.

use std::sync::Arc;

use crate::model::{
    write_batch, EncodedPoints, Label, LabelRef, Point, PointSlot, PointsView, SeriesSlot,
};

/// A series of a [`PointBatch`], by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(u32);

impl SeriesId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
struct BatchSeries {
    /// Shared: a parser that interns metric names gives every series of one
    /// name the same copy.
    metric: Arc<str>,
    /// Sorted by name. Shared: the fields of one line protocol line, for
    /// example, are series with one label set between them.
    labels: Arc<[Label]>,
}

/// Owned points with a series table: a series (metric and labels) is stored
/// once and each point is its series' id, its timestamp and its value. The
/// formats that state a label set once for many samples (remote write's time
/// series, line protocol's tags over many fields) are parsed into one of
/// these without copying the label set per sample, and the write path routes
/// and encodes per series, not per point. The encoded form
/// ([`EncodedPoints`]) keeps the table.
///
/// Two series of a batch may be equal (batches appended to each other keep
/// their own tables); nothing depends on a series being unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointBatch {
    series: Vec<BatchSeries>,
    points: Vec<PointSlot>,
}

impl PointBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(series: usize, points: usize) -> Self {
        Self {
            series: Vec::with_capacity(series),
            points: Vec::with_capacity(points),
        }
    }

    /// Adds a series and returns its id; labels are sorted by name here if
    /// they are not already.
    pub fn add_series(
        &mut self,
        metric: impl Into<Arc<str>>,
        labels: impl Into<Arc<[Label]>>,
    ) -> SeriesId {
        let mut labels: Arc<[Label]> = labels.into();
        if labels.windows(2).any(|w| w[0] > w[1]) {
            let mut sorted = labels.to_vec();
            sorted.sort();
            labels = sorted.into();
        }
        let id = SeriesId(self.next_series_id());
        self.series.push(BatchSeries {
            metric: metric.into(),
            labels,
        });
        id
    }

    fn next_series_id(&self) -> u32 {
        // Every series takes tens of bytes and a request is bounded far below
        // 2^32 points; a batch past it is a broken caller.
        u32::try_from(self.series.len()).expect("fewer than 2^32 series in one batch")
    }

    /// A sample of `series` (an id this batch gave).
    pub fn push(&mut self, series: SeriesId, timestamp: i64, value: f64) {
        debug_assert!(series.index() < self.series.len());
        self.points.push(PointSlot {
            series: series.0,
            value,
            timestamp,
        });
    }

    /// Adds an owned point (a series of its own).
    pub fn push_point(&mut self, point: Point) {
        let series = self.add_series(point.metric, point.labels);
        self.push(series, point.timestamp, point.value);
    }

    /// Owned points; each run of points with equal series shares one entry.
    pub fn from_points(points: Vec<Point>) -> Self {
        let mut batch = Self::with_capacity(points.len(), points.len());
        for p in points {
            let same = batch
                .series
                .last()
                .is_some_and(|s| *s.metric == *p.metric && *s.labels == *p.labels);
            if same {
                let id = SeriesId(batch.series.len() as u32 - 1);
                batch.push(id, p.timestamp, p.value);
            } else {
                batch.push_point(p);
            }
        }
        batch
    }

    /// Points in the batch.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Entries in the series table.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The metric and labels of a series.
    pub fn series(&self, id: SeriesId) -> (&str, &[Label]) {
        let s = &self.series[id.index()];
        (&s.metric, &s.labels)
    }

    /// Every series with its id, in the order they were added.
    pub fn series_iter(&self) -> impl ExactSizeIterator<Item = (SeriesId, &str, &[Label])> + '_ {
        self.series
            .iter()
            .enumerate()
            .map(|(i, s)| (SeriesId(i as u32), &*s.metric, &s.labels[..]))
    }

    /// Every point: its series, timestamp and value.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = (SeriesId, i64, f64)> + '_ {
        self.points
            .iter()
            .map(|p| (SeriesId(p.series), p.timestamp, p.value))
    }

    /// Moves `other`'s points after this batch's.
    pub fn append(&mut self, other: PointBatch) {
        if self.is_empty() && self.series.is_empty() {
            *self = other;
            return;
        }
        let offset = self.next_series_id();
        self.series.extend(other.series);
        // Checked once for the whole table.
        let _ = self.next_series_id();
        self.points
            .extend(other.points.into_iter().map(|p| PointSlot {
                series: p.series + offset,
                ..p
            }));
    }

    /// The batch, borrowed as the storage engine reads batches.
    pub fn view(&self) -> PointsView<'_> {
        let mut labels = Vec::with_capacity(self.series.iter().map(|s| s.labels.len()).sum());
        let series = self
            .series
            .iter()
            .map(|s| {
                let first = labels.len() as u32;
                labels.extend(s.labels.iter().map(LabelRef::from));
                SeriesSlot {
                    metric: &s.metric,
                    first,
                    count: s.labels.len() as u32,
                }
            })
            .collect();
        PointsView {
            labels,
            series,
            points: self.points.clone(),
        }
    }

    /// Encodes the whole batch.
    pub fn encode(&self) -> EncodedPoints {
        self.encode_points(0..self.points.len())
    }

    /// Encodes the points at `indexes` (in that order), with a table of only
    /// the series they use. Panics on an index out of range (a caller's bug).
    pub fn encode_points(&self, indexes: impl IntoIterator<Item = usize> + Clone) -> EncodedPoints {
        const UNSEEN: u32 = u32::MAX;
        let mut remap = vec![UNSEEN; self.series.len()];
        // Equal series of different entries (appended batches, lines of one
        // series in a payload) are written once: looked up per entry, not
        // per point.
        let mut by_content: rustc_hash::FxHashMap<(&str, &[Label]), u32> = Default::default();
        let mut used = Vec::new();
        let mut count = 0usize;
        for i in indexes.clone() {
            let s = self.points[i].series as usize;
            if remap[s] == UNSEEN {
                let series = &self.series[s];
                let next = used.len() as u32;
                remap[s] = *by_content
                    .entry((&*series.metric, &series.labels))
                    .or_insert_with(|| {
                        used.push(s);
                        next
                    });
            }
            count += 1;
        }
        let series: Vec<(&str, &[Label])> = used
            .iter()
            .map(|&s| (&*self.series[s].metric, &self.series[s].labels[..]))
            .collect();
        let samples = indexes.into_iter().map(|i| {
            let p = &self.points[i];
            (remap[p.series as usize], p.timestamp, p.value)
        });
        let out = write_batch(&series, count, samples);
        EncodedPoints {
            bytes: out.into(),
            len: count,
        }
    }

    /// Splits `indexes` into consecutive parts of at most `max_points` points
    /// each, whose [`Self::encode_points`] stays within `max_bytes` (a part
    /// holds at least one point, however large its series). Each part
    /// carries the series it uses, so the bound counts them once per part.
    pub fn split_for_encoding<'i>(
        &self,
        indexes: &'i [usize],
        max_points: usize,
        max_bytes: usize,
    ) -> Vec<&'i [usize]> {
        // The most a point's series index, time delta and value take; the
        // batch's tag and two counts.
        const POINT_BYTES: usize = 5 + 10 + 8;
        const HEADER: usize = 2 + 10 + 10;
        let string = |s: &str| uvarint_len(s.len() as u64) + s.len();
        let series_bytes = |s: &BatchSeries| {
            string(&s.metric)
                + uvarint_len(s.labels.len() as u64)
                + s.labels
                    .iter()
                    .map(|l| string(&l.name) + string(&l.value))
                    .sum::<usize>()
        };
        let max_points = max_points.max(1);
        let mut parts = Vec::new();
        // The part that last counted each series, by the names it shares: a
        // parser gives every point a series slot of its own, sharing one
        // metric and one label set among equal ones (which encode_points
        // writes once per part). Equal series that share nothing are counted
        // again, which only errs on the safe side.
        let mut counted_in: rustc_hash::FxHashMap<(*const u8, *const Label), usize> =
            Default::default();
        let (mut start, mut bytes) = (0, HEADER);
        for (at, &i) in indexes.iter().enumerate() {
            let series = &self.series[self.points[i].series as usize];
            let shared = (series.metric.as_ptr(), series.labels.as_ptr());
            let mut add = POINT_BYTES;
            if counted_in.get(&shared) != Some(&parts.len()) {
                add += series_bytes(series);
            }
            if at > start && (at - start >= max_points || bytes + add > max_bytes) {
                parts.push(&indexes[start..at]);
                start = at;
                bytes = HEADER;
                add = POINT_BYTES + series_bytes(series);
            }
            counted_in.insert(shared, parts.len());
            bytes += add;
        }
        if start < indexes.len() {
            parts.push(&indexes[start..]);
        }
        parts
    }

    /// Owned points, one per sample (tests and tools; copies every label set).
    pub fn to_points(&self) -> Vec<Point> {
        self.points
            .iter()
            .map(|p| {
                let s = &self.series[p.series as usize];
                Point {
                    metric: s.metric.to_string(),
                    labels: s.labels.to_vec(),
                    value: p.value,
                    timestamp: p.timestamp,
                }
            })
            .collect()
    }
}

impl From<Vec<Point>> for PointBatch {
    fn from(points: Vec<Point>) -> Self {
        Self::from_points(points)
    }
}

/// Bytes `put_uvarint` writes for `v`.
fn uvarint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode_points;
    use proptest::prelude::*;

    fn point(metric: &str, labels: &[(&str, &str)], t: i64, v: f64) -> Point {
        Point::new(
            metric,
            labels.iter().map(|(k, v)| Label::new(*k, *v)).collect(),
            v,
            t,
        )
    }

    #[test]
    fn a_series_with_many_samples_is_stored_once() {
        let mut batch = PointBatch::new();
        let labels: Arc<[Label]> = vec![Label::new("b", "2"), Label::new("a", "1")].into();
        let s = batch.add_series("m", labels.clone());
        let t = batch.add_series("n", labels);
        for i in 0..1000 {
            batch.push(s, i, i as f64);
        }
        batch.push(t, 5, 5.0);
        assert_eq!(batch.len(), 1001);
        assert_eq!(batch.series_count(), 2);
        // Sorted on the way in.
        assert_eq!(batch.series(s).1[0].name, "a");
        let encoded = batch.encode();
        // The label set is in the bytes once per series, not per point.
        assert!(
            encoded.as_bytes().len() < 1001 * 12 + 64,
            "{}",
            encoded.as_bytes().len()
        );
        assert_eq!(
            decode_points(encoded.as_bytes()).unwrap(),
            batch.to_points()
        );
    }

    #[test]
    fn appending_keeps_each_point_with_its_series() {
        let mut a = PointBatch::from_points(vec![point("m", &[("x", "1")], 1, 1.0)]);
        let b = PointBatch::from_points(vec![
            point("n", &[("y", "2")], 2, 2.0),
            point("n", &[("y", "2")], 3, 3.0),
        ]);
        assert_eq!(b.series_count(), 1);
        let mut expected = a.to_points();
        expected.extend(b.to_points());
        a.append(b);
        assert_eq!(a.to_points(), expected);
        assert_eq!(a.view().to_points(), expected);
    }

    #[test]
    fn equal_series_of_appended_batches_are_encoded_once() {
        let big = "v".repeat(1000);
        let one = || PointBatch::from_points(vec![point("m", &[("k", &big)], 1, 1.0)]);
        let mut batch = one();
        for _ in 0..9 {
            batch.append(one());
        }
        assert_eq!(batch.series_count(), 10);
        let encoded = batch.encode();
        assert!(
            encoded.as_bytes().len() < 1200,
            "{}",
            encoded.as_bytes().len()
        );
        assert_eq!(
            decode_points(encoded.as_bytes()).unwrap(),
            batch.to_points()
        );
    }

    #[test]
    fn a_subset_encodes_with_only_its_series() {
        let batch = PointBatch::from_points(vec![
            point("a", &[], 1, 1.0),
            point("b", &[("k", &"v".repeat(500))], 2, 2.0),
            point("a", &[], 3, 3.0),
        ]);
        let subset = batch.encode_points([0, 2]);
        assert!(subset.as_bytes().len() < 100);
        assert_eq!(
            decode_points(subset.as_bytes()).unwrap(),
            vec![point("a", &[], 1, 1.0), point("a", &[], 3, 3.0)]
        );
    }

    proptest! {
        #[test]
        fn every_form_gives_back_the_points(
            raw in proptest::collection::vec((0u8..4, 0u8..3, any::<i64>(), any::<f64>()), 0..60),
            split in 0usize..60,
        ) {
            let points: Vec<Point> = raw
                .iter()
                .map(|&(m, l, t, v)| {
                    let labels: Vec<(&str, &str)> = match l {
                        0 => vec![],
                        1 => vec![("z", "1"), ("a", "2")],
                        _ => vec![("a", "")],
                    };
                    point(["m0", "m1", "m2", "m3"][m as usize], &labels, t, v)
                })
                .collect();
            let exact = |ps: &[Point]| -> Vec<(String, Vec<Label>, i64, u64)> {
                ps.iter()
                    .map(|p| (p.metric.clone(), p.labels.clone(), p.timestamp, p.value.to_bits()))
                    .collect()
            };
            let split = split.min(points.len());
            let mut batch = PointBatch::from_points(points[..split].to_vec());
            batch.append(PointBatch::from_points(points[split..].to_vec()));
            prop_assert_eq!(exact(&batch.to_points()), exact(&points));
            prop_assert_eq!(exact(&batch.view().to_points()), exact(&points));
            let decoded = decode_points(batch.encode().as_bytes()).unwrap();
            prop_assert_eq!(exact(&decoded), exact(&points));
            let odd: Vec<usize> = (0..points.len()).filter(|i| i % 2 == 1).collect();
            let decoded = decode_points(batch.encode_points(odd.iter().copied()).as_bytes()).unwrap();
            let expected: Vec<Point> = odd.iter().map(|&i| points[i].clone()).collect();
            prop_assert_eq!(exact(&decoded), exact(&expected));
        }
    }

    #[test]
    fn uvarint_len_is_what_put_uvarint_writes() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            crate::codec::put_uvarint(&mut out, v);
            assert_eq!(uvarint_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn parts_for_encoding_keep_order_and_both_bounds() {
        // 300 series, one of them with a label value of 40 KiB, points
        // interleaved as a scrape writes them.
        let mut points = Vec::new();
        for t in 0..20 {
            for s in 0..300 {
                let big = "x".repeat(40 << 10);
                let value = if s == 7 { big.as_str() } else { "small" };
                points.push(point("m", &[("s", &s.to_string()), ("v", value)], t, 1.0));
            }
        }
        let batch = PointBatch::from_points(points);
        let indexes: Vec<usize> = (0..batch.len()).collect();
        for (max_points, max_bytes) in [(1_000, 1 << 20), (10_000, 64 << 10), (10_000, 1)] {
            let parts = batch.split_for_encoding(&indexes, max_points, max_bytes);
            assert_eq!(parts.concat(), indexes, "parts cover the points in order");
            for part in &parts {
                assert!(!part.is_empty() && part.len() <= max_points);
                let encoded = batch.encode_points(part.iter().copied());
                assert!(
                    encoded.bytes.len() <= max_bytes || part.len() == 1,
                    "{} bytes in a part of {} points, bound {max_bytes}",
                    encoded.bytes.len(),
                    part.len()
                );
            }
            if max_bytes == 1 {
                assert_eq!(parts.len(), indexes.len(), "one point a part");
            }
        }
        // Without the byte bound the parts are as long as allowed.
        let parts = batch.split_for_encoding(&indexes, 1_000, usize::MAX);
        assert_eq!(parts.len(), 6);
        assert!(batch.split_for_encoding(&[], 1_000, 1).is_empty());

        // A parser's batch: a series slot per point, names shared among equal
        // series. Each part counts a series once: 1,000 points of 300 series
        // of 300-byte labels take about 120 KB, where counting every point's
        // labels would make 300 KB.
        let mut parsed = PointBatch::new();
        let metric: Arc<str> = Arc::from("m");
        let label_sets: Vec<Arc<[Label]>> = (0..300)
            .map(|s| Arc::from(vec![Label::new("s", format!("{s:0>300}"))]))
            .collect();
        for t in 0..20 {
            for labels in &label_sets {
                let id = parsed.add_series(metric.clone(), labels.clone());
                parsed.push(id, t, 1.0);
            }
        }
        let indexes: Vec<usize> = (0..parsed.len()).collect();
        let parts = parsed.split_for_encoding(&indexes, 1_000, 256 << 10);
        assert_eq!(parts.len(), 6);
        for part in parts {
            assert!(parsed.encode_points(part.iter().copied()).bytes.len() <= 256 << 10);
        }
    }
}

//! The storage shard as a series source (feature `shard`).

use chronicle_storage::{Label, Matcher, SeriesSamples, Shard};

use crate::source::{storage_error, too_many_samples, SeriesSource};
use crate::value::{Labels, RangeSeries, Sample, METRIC_NAME};
use crate::Result;

const NS_PER_MS: i64 = 1_000_000;

/// A storage shard: nanosecond timestamps become milliseconds (samples that are
/// not on a millisecond are floored, as Prometheus would store them).
impl SeriesSource for Shard {
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>> {
        let (start_ns, end_ns) = crate::source::storage_window(start, end);
        let series = self
            .query_limited(matchers, start_ns, end_ns, max_samples)
            .map_err(storage_error)?
            .ok_or_else(|| too_many_samples(max_samples))?;
        Ok(from_storage(series))
    }

    fn select_last(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>> {
        let (start_ns, end_ns) = crate::source::storage_window(start, end);
        let series = self
            .query_last(matchers, start_ns, end_ns)
            .map_err(storage_error)?;
        if series.len() > max_samples {
            return Err(too_many_samples(max_samples));
        }
        Ok(from_storage(series))
    }
}

/// Storage series as the engine's: `__name__` among the labels, nanoseconds
/// floored to milliseconds.
pub fn from_storage(series: Vec<SeriesSamples>) -> Vec<RangeSeries> {
    series
        .into_iter()
        .map(|(key, samples)| {
            let mut pairs: Vec<(String, String)> = key
                .labels
                .into_iter()
                .map(|Label { name, value }| (name, value))
                .collect();
            pairs.push((METRIC_NAME.to_string(), key.metric));
            RangeSeries {
                labels: Labels::new(pairs),
                samples: samples
                    .into_iter()
                    .map(|s| Sample {
                        t: s.timestamp.div_euclid(NS_PER_MS),
                        v: s.value,
                    })
                    .collect(),
            }
        })
        .collect()
}

//! Where the engine reads series from.

use chronicle_storage::Matcher;

use crate::value::RangeSeries;
use crate::{EngineError, Result};

#[cfg(feature = "shard")]
pub use crate::shard_source::from_storage;

/// The storage window (nanoseconds, end exclusive) of an engine selection
/// (milliseconds, end inclusive).
pub fn storage_window(start_ms: i64, end_ms: i64) -> (i64, i64) {
    const NS_PER_MS: i64 = 1_000_000;
    (
        start_ms.saturating_mul(NS_PER_MS),
        end_ms.saturating_add(1).saturating_mul(NS_PER_MS),
    )
}

/// Anything that selects series by label matchers and reads their samples.
pub trait SeriesSource: Sync {
    /// Every series matching all `matchers`, with its samples in `[start, end]`
    /// (milliseconds, both inclusive) in time order, staleness markers included.
    /// More than `max_samples` samples in all is [`EngineError::Limit`], found
    /// while reading, not after.
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>>;

    /// [`Self::select`] keeping only each series' newest sample in
    /// `[start, end]`: what an instant selector evaluated at one time needs.
    /// Sources that know a series' newest sample without reading the range
    /// (a shard keeps it in memory) answer this without decoding; others
    /// read the range and keep its last sample.
    fn select_last(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>> {
        let mut series = self.select(matchers, start, end, max_samples)?;
        for s in &mut series {
            if let Some(last) = s.samples.pop() {
                s.samples = vec![last];
            }
        }
        Ok(series)
    }
}

/// A storage error as the engine's: the caller's mistakes (a bad matcher or
/// request) are invalid queries, anything else a storage failure.
pub fn storage_error(e: chronicle_storage::StorageError) -> EngineError {
    match e {
        chronicle_storage::StorageError::InvalidMatcher { .. }
        | chronicle_storage::StorageError::InvalidRequest(_) => EngineError::Invalid(e.to_string()),
        other => EngineError::Storage(other.to_string()),
    }
}

/// The error for a selection over its sample budget.
pub fn too_many_samples(max: usize) -> EngineError {
    EngineError::Limit(format!(
        "query processing would load too many samples into memory (over {max})"
    ))
}

/// Series held in memory (tests, and results fed back into a plan).
#[derive(Debug, Default, Clone)]
pub struct MemorySource {
    pub series: Vec<RangeSeries>,
}

impl SeriesSource for MemorySource {
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        max_samples: usize,
    ) -> Result<Vec<RangeSeries>> {
        let out: Vec<RangeSeries> = self
            .series
            .iter()
            .filter(|s| {
                matchers
                    .iter()
                    .all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))
            })
            .map(|s| RangeSeries {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .filter(|x| x.t >= start && x.t <= end)
                    .copied()
                    .collect(),
            })
            .collect();
        if out.iter().map(|s| s.samples.len()).sum::<usize>() > max_samples {
            return Err(too_many_samples(max_samples));
        }
        Ok(out)
    }
}

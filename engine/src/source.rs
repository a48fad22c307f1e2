//! Where the engine reads series from.

use chronicle_storage::Matcher;

use crate::value::RangeSeries;
use crate::Result;

/// Anything that selects series by label matchers and reads their samples.
pub trait SeriesSource: Sync {
    /// Every series matching all `matchers`, with its samples in `[start, end]`
    /// (milliseconds, both inclusive) in time order, staleness markers included.
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<RangeSeries>>;
}

/// Series held in memory (tests, and results fed back into a plan).
#[derive(Debug, Default, Clone)]
pub struct MemorySource {
    pub series: Vec<RangeSeries>,
}

impl SeriesSource for MemorySource {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Result<Vec<RangeSeries>> {
        Ok(self
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
            .collect())
    }
}

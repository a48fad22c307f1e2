//! The in-memory inverted index: label name → value → sorted series ids.
//!
//! Every series key is in memory already (the shard's state); answering
//! matchers from this index instead of iterating the postings column family
//! takes selection off RocksDB's iterator path, which was a third of a small
//! query's time. The column family stays the durable copy the index is
//! rebuilt from at open, together with the series ids.

use std::collections::{BTreeMap, HashMap};

use crate::matcher::{MatchOp, Matcher};
use crate::model::{SeriesKey, METRIC_LABEL};

#[derive(Default)]
pub(crate) struct Postings {
    by_name: HashMap<String, BTreeMap<String, Vec<u64>>>,
}

impl Postings {
    fn pairs(key: &SeriesKey) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once((METRIC_LABEL, key.metric.as_str())).chain(
            key.labels
                .iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.name.as_str(), l.value.as_str())),
        )
    }

    pub fn add(&mut self, id: u64, key: &SeriesKey) {
        for (name, value) in Self::pairs(key) {
            let ids = self
                .by_name
                .entry(name.to_string())
                .or_default()
                .entry(value.to_string())
                .or_default();
            // Ids are mostly assigned in increasing order: push, else insert in place.
            match ids.last() {
                Some(&last) if last >= id => {
                    if let Err(at) = ids.binary_search(&id) {
                        ids.insert(at, id);
                    }
                }
                _ => ids.push(id),
            }
        }
    }

    pub fn remove(&mut self, id: u64, key: &SeriesKey) {
        for (name, value) in Self::pairs(key) {
            let Some(values) = self.by_name.get_mut(name) else {
                continue;
            };
            if let Some(ids) = values.get_mut(value) {
                if let Ok(at) = ids.binary_search(&id) {
                    ids.remove(at);
                }
                if ids.is_empty() {
                    values.remove(value);
                }
            }
            if values.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// Sorted ids of series that have label `m.name` with a value that matches
    /// (or, with `negate`, does not match). Series without the label are in neither.
    pub fn matching(&self, m: &Matcher, negate: bool) -> Vec<u64> {
        let Some(values) = self.by_name.get(&m.name) else {
            return Vec::new();
        };
        if m.op == MatchOp::Equal && !negate {
            return values.get(&m.value).cloned().unwrap_or_default();
        }
        let mut ids: Vec<u64> = values
            .iter()
            .filter(|(value, _)| m.matches(value) != negate)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Label;

    fn key(metric: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(
            metric,
            labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        )
    }

    #[test]
    fn matches_by_every_operator_and_forgets_removed_series() {
        let mut p = Postings::default();
        p.add(3, &key("cpu", &[("host", "b")]));
        p.add(1, &key("cpu", &[("host", "a")]));
        p.add(2, &key("mem", &[("host", "a")]));
        let host_a = Matcher::equal("host", "a");
        assert_eq!(p.matching(&host_a, false), vec![1, 2]);
        assert_eq!(p.matching(&host_a, true), vec![3]);
        let cpu = Matcher::equal(METRIC_LABEL, "cpu");
        assert_eq!(p.matching(&cpu, false), vec![1, 3]);
        let re = Matcher::new(MatchOp::Regex, "host", "a|b").unwrap();
        assert_eq!(p.matching(&re, false), vec![1, 2, 3]);
        p.remove(1, &key("cpu", &[("host", "a")]));
        assert_eq!(p.matching(&host_a, false), vec![2]);
        p.remove(2, &key("mem", &[("host", "a")]));
        assert!(p.matching(&host_a, false).is_empty());
        assert!(p
            .matching(&Matcher::equal("missing", "x"), false)
            .is_empty());
    }
}

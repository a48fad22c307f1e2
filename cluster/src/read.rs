//! Reads across shards: what a query asks of one shard ([`ShardRead`]), how a
//! shard answers it ([`ShardRead::run`]), how answers from every shard merge
//! ([`merge`]), and their encodings on the bus.
//!
//! Aggregations travel as partial aggregates (count, sum, moments, extremes),
//! not samples: each shard folds its own series and the coordinator merges.

use chronicle_storage::{
    AggregateFunction, AggregateRequest, GroupBy, Label, MatchOp, Matcher, Partial, PartialGroups,
    Sample, SeriesKey, SeriesSamples, Shard, StorageError,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::ClusterError;

/// One shard's part of a query. Times are nanoseconds, start inclusive, end
/// exclusive.
#[derive(Debug, Clone)]
pub enum ShardRead {
    /// The samples of every matching series; more than `max_samples` in all
    /// answers [`ShardAnswer::Series`]`(None)`.
    Series {
        matchers: Vec<Matcher>,
        start: i64,
        end: i64,
        max_samples: usize,
    },
    /// Partial aggregates per group and window.
    Partials(AggregateRequest),
    /// The keys of matching series that have data in `[start, end)`
    /// (`i64::MIN..i64::MAX`: any data, nothing read); more than `max_series`
    /// answers [`ShardAnswer::Keys`]`(None)`.
    Keys {
        matchers: Vec<Matcher>,
        start: i64,
        end: i64,
        max_series: usize,
    },
    /// The first `count` samples of the matching series in key order (metric,
    /// then labels): each shard stops reading once it has `count`.
    First {
        matchers: Vec<Matcher>,
        start: i64,
        end: i64,
        count: usize,
    },
    /// The newest sample in `[start, end)` of every matching series (an
    /// instant selector's read), answered as [`ShardAnswer::Series`]: a
    /// shard answers it from memory where it can, without decoding.
    Last {
        matchers: Vec<Matcher>,
        start: i64,
        end: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShardAnswer {
    Series(Option<Vec<SeriesSamples>>),
    /// Series in key order; `truncated` when samples were left unread.
    First {
        series: Vec<SeriesSamples>,
        truncated: bool,
    },
    Partials(PartialGroups),
    Keys(Option<Vec<SeriesKey>>),
}

impl ShardRead {
    /// Every sample of the matching series, no limit.
    pub fn all_series(matchers: &[Matcher], start: i64, end: i64) -> Self {
        ShardRead::Series {
            matchers: matchers.to_vec(),
            start,
            end,
            max_samples: usize::MAX,
        }
    }

    /// Answers the read from `shard`.
    pub fn run(&self, shard: &Shard) -> Result<ShardAnswer, StorageError> {
        Ok(match self {
            ShardRead::Series {
                matchers,
                start,
                end,
                max_samples,
            } => ShardAnswer::Series(shard.query_limited(matchers, *start, *end, *max_samples)?),
            ShardRead::Partials(req) => ShardAnswer::Partials(shard.aggregate_partials(req)?),
            ShardRead::Keys {
                matchers,
                start,
                end,
                max_series,
            } => ShardAnswer::Keys(shard.series_keys(matchers, *start, *end, *max_series)?),
            ShardRead::First {
                matchers,
                start,
                end,
                count,
            } => {
                let (series, truncated) = shard.query_first(matchers, *start, *end, *count)?;
                ShardAnswer::First { series, truncated }
            }
            ShardRead::Last {
                matchers,
                start,
                end,
            } => ShardAnswer::Series(Some(shard.query_last(matchers, *start, *end)?)),
        })
    }

    /// What can be refused before asking any shard (a remote shard's errors
    /// come back as text, so the caller's mistakes are caught here).
    pub fn validate(&self) -> Result<(), StorageError> {
        if let ShardRead::Partials(req) = self {
            req.function.validate()?;
            if req.window < 0 {
                return Err(StorageError::InvalidRequest(
                    "window must not be negative".into(),
                ));
            }
        }
        Ok(())
    }

    /// The answer when no shard has anything.
    pub fn empty_answer(&self) -> ShardAnswer {
        match self {
            ShardRead::Series { .. } | ShardRead::Last { .. } => {
                ShardAnswer::Series(Some(Vec::new()))
            }
            ShardRead::Partials(_) => ShardAnswer::Partials(PartialGroups::new()),
            ShardRead::Keys { .. } => ShardAnswer::Keys(Some(Vec::new())),
            ShardRead::First { .. } => ShardAnswer::First {
                series: Vec::new(),
                truncated: false,
            },
        }
    }
}

/// Merges the answers of every shard to `read`. A series lives in one shard,
/// so series and keys concatenate; partial aggregates of the same group and
/// window fold together. Limits apply to the whole.
pub fn merge(read: &ShardRead, answers: Vec<ShardAnswer>) -> Result<ShardAnswer, ClusterError> {
    let mut out = read.empty_answer();
    for answer in answers {
        match (&mut out, answer) {
            (ShardAnswer::Series(all), ShardAnswer::Series(part)) => match (all.as_mut(), part) {
                (Some(all), Some(part)) => all.extend(part),
                _ => *all = None,
            },
            (ShardAnswer::Keys(all), ShardAnswer::Keys(part)) => match (all.as_mut(), part) {
                (Some(all), Some(part)) => all.extend(part),
                _ => *all = None,
            },
            (
                ShardAnswer::First { series, truncated },
                ShardAnswer::First {
                    series: part,
                    truncated: cut,
                },
            ) => {
                series.extend(part);
                *truncated |= cut;
            }
            (ShardAnswer::Partials(all), ShardAnswer::Partials(part)) => {
                for (group, windows) in part {
                    let mine = all.entry(group).or_default();
                    for (window, partial) in windows {
                        mine.entry(window).or_default().merge(&partial);
                    }
                }
            }
            (_, other) => {
                return Err(ClusterError::Corrupt {
                    what: "read answer",
                    why: format!("a shard answered {other:?} to {read:?}"),
                })
            }
        }
    }
    match (&mut out, read) {
        (ShardAnswer::Series(Some(all)), ShardRead::Series { max_samples, .. })
            if all.iter().map(|(_, s)| s.len()).sum::<usize>() > *max_samples =>
        {
            out = ShardAnswer::Series(None)
        }
        (ShardAnswer::Keys(Some(all)), ShardRead::Keys { max_series, .. })
            if all.len() > *max_series =>
        {
            out = ShardAnswer::Keys(None)
        }
        // Each shard gave its own first `count`; the first `count` of all of
        // them are among those.
        (ShardAnswer::First { series, truncated }, ShardRead::First { count, .. }) => {
            series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut left = *count;
            series.retain_mut(|(_, samples)| {
                if left == 0 {
                    *truncated = true;
                    return false;
                }
                if samples.len() > left {
                    samples.truncate(left);
                    *truncated = true;
                }
                left -= samples.len();
                true
            });
        }
        _ => {}
    }
    Ok(out)
}

// ---- Encodings on the bus ----

/// A matcher as (label, op, value); the regex is compiled again on arrival.
pub(crate) type WireMatcher = (String, u8, String);

pub(crate) fn wire_matchers(matchers: &[Matcher]) -> Vec<WireMatcher> {
    matchers
        .iter()
        .map(|m| {
            let op = match m.op {
                MatchOp::Equal => 0,
                MatchOp::NotEqual => 1,
                MatchOp::Regex => 2,
                MatchOp::NotRegex => 3,
            };
            (m.name.clone(), op, m.value.clone())
        })
        .collect()
}

pub(crate) fn matchers_from(wire: Vec<WireMatcher>) -> Result<Vec<Matcher>, String> {
    wire.into_iter()
        .map(|(name, op, value)| {
            let op = match op {
                0 => MatchOp::Equal,
                1 => MatchOp::NotEqual,
                2 => MatchOp::Regex,
                3 => MatchOp::NotRegex,
                other => return Err(format!("unknown matcher op {other}")),
            };
            Matcher::new(op, &name, &value).map_err(|e| e.to_string())
        })
        .collect()
}

type WireLabels = Vec<(String, String)>;

fn wire_labels(labels: &[Label]) -> WireLabels {
    labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

fn labels_from(wire: WireLabels) -> Vec<Label> {
    wire.into_iter().map(|(n, v)| Label::new(n, v)).collect()
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireRead {
    Series {
        matchers: Vec<WireMatcher>,
        start: i64,
        end: i64,
        max_samples: u64,
    },
    Partials {
        matchers: Vec<WireMatcher>,
        start: i64,
        end: i64,
        window: i64,
        /// The function's code, and the percentile for code 8.
        function: (u8, f64),
        /// `None` groups by series.
        group_by: Option<Vec<String>>,
    },
    Keys {
        matchers: Vec<WireMatcher>,
        start: i64,
        end: i64,
        max_series: u64,
    },
    First {
        matchers: Vec<WireMatcher>,
        start: i64,
        end: i64,
        count: u64,
    },
    Last {
        matchers: Vec<WireMatcher>,
        start: i64,
        end: i64,
    },
}

pub(crate) fn function_code(f: AggregateFunction) -> (u8, f64) {
    match f {
        AggregateFunction::Count => (0, 0.0),
        AggregateFunction::Sum => (1, 0.0),
        AggregateFunction::Mean => (2, 0.0),
        AggregateFunction::Min => (3, 0.0),
        AggregateFunction::Max => (4, 0.0),
        AggregateFunction::First => (5, 0.0),
        AggregateFunction::Last => (6, 0.0),
        AggregateFunction::Stddev => (7, 0.0),
        AggregateFunction::Percentile(p) => (8, p),
        AggregateFunction::Rate => (9, 0.0),
    }
}

pub(crate) fn function_from((code, p): (u8, f64)) -> Result<AggregateFunction, String> {
    Ok(match code {
        0 => AggregateFunction::Count,
        1 => AggregateFunction::Sum,
        2 => AggregateFunction::Mean,
        3 => AggregateFunction::Min,
        4 => AggregateFunction::Max,
        5 => AggregateFunction::First,
        6 => AggregateFunction::Last,
        7 => AggregateFunction::Stddev,
        8 => AggregateFunction::Percentile(p),
        9 => AggregateFunction::Rate,
        other => return Err(format!("unknown aggregate function {other}")),
    })
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl From<&ShardRead> for WireRead {
    fn from(read: &ShardRead) -> Self {
        match read {
            ShardRead::Series {
                matchers,
                start,
                end,
                max_samples,
            } => WireRead::Series {
                matchers: wire_matchers(matchers),
                start: *start,
                end: *end,
                max_samples: count(*max_samples),
            },
            ShardRead::Partials(req) => WireRead::Partials {
                matchers: wire_matchers(&req.matchers),
                start: req.start,
                end: req.end,
                window: req.window,
                function: function_code(req.function),
                group_by: match &req.group_by {
                    GroupBy::Series => None,
                    GroupBy::Labels(names) => Some(names.clone()),
                },
            },
            ShardRead::Keys {
                matchers,
                start,
                end,
                max_series,
            } => WireRead::Keys {
                matchers: wire_matchers(matchers),
                start: *start,
                end: *end,
                max_series: count(*max_series),
            },
            ShardRead::First {
                matchers,
                start,
                end,
                count: n,
            } => WireRead::First {
                matchers: wire_matchers(matchers),
                start: *start,
                end: *end,
                count: count(*n),
            },
            ShardRead::Last {
                matchers,
                start,
                end,
            } => WireRead::Last {
                matchers: wire_matchers(matchers),
                start: *start,
                end: *end,
            },
        }
    }
}

impl TryFrom<WireRead> for ShardRead {
    type Error = String;

    fn try_from(wire: WireRead) -> Result<Self, String> {
        Ok(match wire {
            WireRead::Series {
                matchers,
                start,
                end,
                max_samples,
            } => ShardRead::Series {
                matchers: matchers_from(matchers)?,
                start,
                end,
                max_samples: size(max_samples),
            },
            WireRead::Partials {
                matchers,
                start,
                end,
                window,
                function,
                group_by,
            } => ShardRead::Partials(AggregateRequest {
                matchers: matchers_from(matchers)?,
                start,
                end,
                window,
                function: function_from(function)?,
                group_by: group_by.map_or(GroupBy::Series, GroupBy::Labels),
            }),
            WireRead::Keys {
                matchers,
                start,
                end,
                max_series,
            } => ShardRead::Keys {
                matchers: matchers_from(matchers)?,
                start,
                end,
                max_series: size(max_series),
            },
            WireRead::First {
                matchers,
                start,
                end,
                count,
            } => ShardRead::First {
                matchers: matchers_from(matchers)?,
                start,
                end,
                count: size(count),
            },
            WireRead::Last {
                matchers,
                start,
                end,
            } => ShardRead::Last {
                matchers: matchers_from(matchers)?,
                start,
                end,
            },
        })
    }
}

/// A series' key and its samples as (timestamp, value).
type WireSeries = (String, WireLabels, Vec<(i64, f64)>);

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct WirePartial {
    count: u64,
    sum: f64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    first: Option<(i64, f64)>,
    last: Option<(i64, f64)>,
    values: Vec<f64>,
    rate: f64,
    rate_series: u64,
}

impl From<&Partial> for WirePartial {
    fn from(p: &Partial) -> Self {
        Self {
            count: p.count,
            sum: p.sum,
            mean: p.mean,
            m2: p.m2,
            min: p.min,
            max: p.max,
            first: p.first.map(|s| (s.timestamp, s.value)),
            last: p.last.map(|s| (s.timestamp, s.value)),
            values: p.values.clone(),
            rate: p.rate,
            rate_series: p.rate_series,
        }
    }
}

impl From<WirePartial> for Partial {
    fn from(w: WirePartial) -> Self {
        Partial {
            count: w.count,
            sum: w.sum,
            mean: w.mean,
            m2: w.m2,
            min: w.min,
            max: w.max,
            first: w.first.map(|(t, v)| Sample::new(t, v)),
            last: w.last.map(|(t, v)| Sample::new(t, v)),
            values: w.values,
            rate: w.rate,
            rate_series: w.rate_series,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireAnswer {
    Series(Option<Vec<WireSeries>>),
    Partials(Vec<(WireLabels, Vec<(i64, WirePartial)>)>),
    Keys(Option<Vec<(String, WireLabels)>>),
    First(Vec<WireSeries>, bool),
}

fn wire_series(all: &[SeriesSamples]) -> Vec<WireSeries> {
    all.iter()
        .map(|(key, samples)| {
            (
                key.metric.clone(),
                wire_labels(&key.labels),
                samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            )
        })
        .collect()
}

fn series_from(all: Vec<WireSeries>) -> Vec<SeriesSamples> {
    all.into_iter()
        .map(|(metric, labels, samples)| {
            (
                SeriesKey::new(metric, labels_from(labels)),
                samples
                    .into_iter()
                    .map(|(t, v)| Sample::new(t, v))
                    .collect(),
            )
        })
        .collect()
}

impl From<&ShardAnswer> for WireAnswer {
    fn from(answer: &ShardAnswer) -> Self {
        match answer {
            ShardAnswer::Series(series) => {
                WireAnswer::Series(series.as_ref().map(|all| wire_series(all)))
            }
            ShardAnswer::First { series, truncated } => {
                WireAnswer::First(wire_series(series), *truncated)
            }
            ShardAnswer::Partials(groups) => WireAnswer::Partials(
                groups
                    .iter()
                    .map(|(group, windows)| {
                        (
                            wire_labels(group),
                            windows
                                .iter()
                                .map(|(w, p)| (*w, WirePartial::from(p)))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            ShardAnswer::Keys(keys) => WireAnswer::Keys(keys.as_ref().map(|all| {
                all.iter()
                    .map(|k| (k.metric.clone(), wire_labels(&k.labels)))
                    .collect()
            })),
        }
    }
}

impl From<WireAnswer> for ShardAnswer {
    fn from(wire: WireAnswer) -> Self {
        match wire {
            WireAnswer::Series(series) => ShardAnswer::Series(series.map(series_from)),
            WireAnswer::First(series, truncated) => ShardAnswer::First {
                series: series_from(series),
                truncated,
            },
            WireAnswer::Partials(groups) => ShardAnswer::Partials(
                groups
                    .into_iter()
                    .map(|(group, windows)| {
                        (
                            labels_from(group),
                            windows
                                .into_iter()
                                .map(|(w, p)| (w, Partial::from(p)))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            WireAnswer::Keys(keys) => ShardAnswer::Keys(keys.map(|all| {
                all.into_iter()
                    .map(|(metric, labels)| SeriesKey::new(metric, labels_from(labels)))
                    .collect()
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(values: &[f64]) -> Partial {
        let mut p = Partial::default();
        for (i, v) in values.iter().enumerate() {
            p.push(Sample::new(i as i64, *v), true);
        }
        p
    }

    #[test]
    fn partial_aggregates_merge_to_the_whole() {
        let group = vec![Label::new("host", "a")];
        let read = ShardRead::Partials(AggregateRequest {
            matchers: vec![],
            start: 0,
            end: 10,
            window: 0,
            function: AggregateFunction::Stddev,
            group_by: GroupBy::Labels(vec!["host".into()]),
        });
        let one =
            ShardAnswer::Partials([(group.clone(), [(0, partial(&[1.0, 2.0]))].into())].into());
        let two =
            ShardAnswer::Partials([(group.clone(), [(0, partial(&[4.0, 9.0]))].into())].into());
        let ShardAnswer::Partials(mut merged) = merge(&read, vec![one, two]).unwrap() else {
            panic!("not partials");
        };
        let mut whole = partial(&[1.0, 2.0, 4.0, 9.0]);
        let p = merged.get_mut(&group).unwrap().get_mut(&0).unwrap();
        for f in [
            AggregateFunction::Count,
            AggregateFunction::Sum,
            AggregateFunction::Mean,
            AggregateFunction::Max,
            AggregateFunction::Stddev,
            AggregateFunction::Percentile(50.0),
        ] {
            let (a, b) = (p.finish(f).unwrap(), whole.finish(f).unwrap());
            assert!((a - b).abs() < 1e-9, "{f:?}: {a} != {b}");
        }
    }

    #[test]
    fn limits_apply_to_the_merged_answer() {
        let read = ShardRead::Series {
            matchers: vec![],
            start: 0,
            end: 10,
            max_samples: 3,
        };
        let series = |name: &str, n: usize| {
            (
                SeriesKey::new(name, vec![]),
                (0..n as i64).map(|t| Sample::new(t, 1.0)).collect(),
            )
        };
        let one = ShardAnswer::Series(Some(vec![series("a", 2)]));
        let two = ShardAnswer::Series(Some(vec![series("b", 2)]));
        assert_eq!(
            merge(&read, vec![one.clone(), two]).unwrap(),
            ShardAnswer::Series(None)
        );
        let small = ShardAnswer::Series(Some(vec![series("b", 1)]));
        let ShardAnswer::Series(Some(all)) = merge(&read, vec![one, small]).unwrap() else {
            panic!("over the limit");
        };
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn reads_and_answers_survive_the_wire() {
        let read = ShardRead::Partials(AggregateRequest {
            matchers: vec![Matcher::new(MatchOp::Regex, "host", "a|b").unwrap()],
            start: -5,
            end: 99,
            window: 7,
            function: AggregateFunction::Percentile(99.5),
            group_by: GroupBy::Labels(vec!["host".into()]),
        });
        let wire = WireRead::from(&read);
        let bytes = chronicle_bus::envelope::encode(&wire).unwrap();
        let back: WireRead = chronicle_bus::envelope::decode(&bytes).unwrap();
        assert_eq!(back, wire);
        let ShardRead::Partials(req) = ShardRead::try_from(back).unwrap() else {
            panic!("not partials");
        };
        assert_eq!(req.function, AggregateFunction::Percentile(99.5));
        assert_eq!(req.matchers[0].value, "a|b");

        let answer = ShardAnswer::Partials(
            [(
                vec![Label::new("host", "a")],
                [(7, partial(&[3.0, 1.0]))].into(),
            )]
            .into(),
        );
        let bytes = chronicle_bus::envelope::encode(&WireAnswer::from(&answer)).unwrap();
        let back: WireAnswer = chronicle_bus::envelope::decode(&bytes).unwrap();
        assert_eq!(ShardAnswer::from(back), answer);

        let last = ShardRead::Last {
            matchers: vec![Matcher::new(MatchOp::Equal, "host", "a").unwrap()],
            start: -7,
            end: i64::MAX,
        };
        let bytes = chronicle_bus::envelope::encode(&WireRead::from(&last)).unwrap();
        let back: WireRead = chronicle_bus::envelope::decode(&bytes).unwrap();
        let ShardRead::Last {
            matchers,
            start,
            end,
        } = ShardRead::try_from(back).unwrap()
        else {
            panic!("not last");
        };
        assert_eq!(
            (matchers[0].value.as_str(), start, end),
            ("a", -7, i64::MAX)
        );
        assert_eq!(last.empty_answer(), ShardAnswer::Series(Some(Vec::new())));
    }
}

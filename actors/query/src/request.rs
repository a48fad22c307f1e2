//! The JSON query request and result (`chronicle.query`, HTTP `/query`).
//!
//! Fields follow the Go original's `Query`: metric, tags (exact label matches) or
//! matchers, start, end, aggregation {function, window, percentile}, group_by, limit.
//! `promql` (with `step` for a range), `sql` or `cql` run a query in that language
//! instead; `explain` shows the plan without running it. An unknown field is an
//! error, never ignored.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chronicle_storage::{AggregateFunction, GroupBy, Label, MatchOp, Matcher, Sample};
use serde::{Deserialize, Serialize, Serializer};

use crate::QueryError;

/// A query as it arrives.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The metric (`__name__`); optional when matchers select series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Exact label matches (`labels` is accepted too).
    #[serde(default, alias = "labels", skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Label matchers with `=`, `!=`, `=~`, `!~` (regexes anchored as in Prometheus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<MatcherSpec>,
    /// Inclusive start: nanoseconds since the epoch, RFC 3339, `now` or `now-<duration>`.
    /// Default: one hour before `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<TimeSpec>,
    /// Exclusive end, same forms. Default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<TimeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<AggregationSpec>,
    /// Labels to group an aggregation by; `["*"]` keeps every series apart; empty
    /// aggregates all selected series together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// At most this many points in the whole result (series in label order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// A PromQL expression. With it only `start`, `end`, `step` and `limit` apply:
    /// a range query when `step` is given, else an instant query at `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promql: Option<String>,
    /// Resolution of a PromQL range query (`15s`, `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A SQL SELECT (docs/sql.md); the answer is `columns` and `rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// A CQL query (docs/cql.md); the answer is `columns` and `rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cql: Option<String>,
    /// Answer with the plan (`explain`) instead of running the query.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explain: bool,
    /// Longest the query may take (`30s`, `500ms`), any language; the node's
    /// own limit wins when shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherSpec {
    pub name: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationSpec {
    /// count, sum, mean (avg), min, max, first, last, stddev, percentile, rate.
    pub function: String,
    /// Window length (`30s`, `5m`, `1h`); absent: one window over the whole range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// For `percentile`: 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
}

impl QueryRequest {
    /// The requested timeout; zero when none was given.
    pub fn timeout(&self) -> Result<Duration, QueryError> {
        match &self.timeout {
            None => Ok(Duration::ZERO),
            Some(text) => humantime::parse_duration(text.trim())
                .map_err(|e| QueryError::BadRequest(format!("timeout {text:?}: {e}"))),
        }
    }
}

/// A point in time as a request gives it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TimeSpec {
    Nanos(i64),
    Text(String),
}

impl TimeSpec {
    pub fn resolve(&self, now: i64) -> Result<i64, QueryError> {
        let bad = |s: &str| {
            QueryError::BadRequest(format!(
                "time {s:?}: use nanoseconds, RFC 3339, `now` or `now-<duration>`"
            ))
        };
        match self {
            TimeSpec::Nanos(n) => Ok(*n),
            TimeSpec::Text(s) => {
                let s = s.trim();
                if s == "now" {
                    return Ok(now);
                }
                if let Some(rest) = s.strip_prefix("now-") {
                    let d = humantime::parse_duration(rest.trim()).map_err(|_| bad(s))?;
                    return Ok(now.saturating_sub(duration_ns(d)));
                }
                if let Some(rest) = s.strip_prefix("now+") {
                    let d = humantime::parse_duration(rest.trim()).map_err(|_| bad(s))?;
                    return Ok(now.saturating_add(duration_ns(d)));
                }
                let t = humantime::parse_rfc3339_weak(s).map_err(|_| bad(s))?;
                let since = t.duration_since(UNIX_EPOCH).map_err(|_| bad(s))?;
                Ok(duration_ns(since))
            }
        }
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ns)
        .unwrap_or_default()
}

/// A request checked and resolved against the storage model.
#[derive(Debug, Clone)]
pub struct Plan {
    pub matchers: Vec<Matcher>,
    pub start: i64,
    pub end: i64,
    pub aggregate: Option<(AggregateFunction, i64, GroupBy)>,
    pub limit: Option<usize>,
}

impl QueryRequest {
    /// Whether any field of the JSON selection (metric, tags, matchers,
    /// aggregation, group_by) is given; query languages carry their own.
    pub fn has_selection(&self) -> bool {
        self.metric.is_some()
            || !self.tags.is_empty()
            || !self.matchers.is_empty()
            || self.aggregation.is_some()
            || !self.group_by.is_empty()
    }

    /// Validates the request and resolves times against `now`.
    pub fn plan(&self, now: i64) -> Result<Plan, QueryError> {
        let bad = |m: String| QueryError::BadRequest(m);
        let mut matchers = Vec::new();
        if let Some(metric) = &self.metric {
            matchers.push(Matcher::equal(
                chronicle_storage::model::METRIC_LABEL,
                metric,
            ));
        }
        for (k, v) in &self.tags {
            matchers.push(Matcher::equal(k, v));
        }
        for m in &self.matchers {
            let op = match m.op.as_str() {
                "=" | "==" => MatchOp::Equal,
                "!=" => MatchOp::NotEqual,
                "=~" => MatchOp::Regex,
                "!~" => MatchOp::NotRegex,
                other => {
                    return Err(bad(format!(
                        "matcher on {:?}: unknown operator {other:?} (use =, !=, =~, !~)",
                        m.name
                    )))
                }
            };
            matchers.push(
                Matcher::new(op, &m.name, &m.value)
                    .map_err(|e| bad(format!("matcher on {:?}: {e}", m.name)))?,
            );
        }
        if matchers.is_empty() {
            return Err(bad(
                "select something: give a metric, tags or matchers".into()
            ));
        }
        let end = match &self.end {
            Some(t) => t.resolve(now)?,
            None => now,
        };
        let start = match &self.start {
            Some(t) => t.resolve(now)?,
            None => end.saturating_sub(3_600_000_000_000),
        };
        if start >= end {
            return Err(bad(format!("start ({start}) must be before end ({end})")));
        }
        let aggregate = match &self.aggregation {
            None => {
                if !self.group_by.is_empty() {
                    return Err(bad("group_by needs an aggregation".into()));
                }
                None
            }
            Some(a) => {
                let function = match (a.function.as_str(), a.percentile) {
                    ("percentile", Some(p)) => AggregateFunction::Percentile(p),
                    ("percentile", None) => {
                        return Err(bad("percentile needs \"percentile\": 0..100".into()))
                    }
                    (name, _) => name.parse().map_err(|e| bad(format!("{e}")))?,
                };
                function.validate().map_err(|e| bad(e.to_string()))?;
                let window = match &a.window {
                    None => 0,
                    Some(w) => {
                        let d = humantime::parse_duration(w)
                            .map_err(|e| bad(format!("window {w:?}: {e}")))?;
                        let ns = duration_ns(d);
                        if ns <= 0 {
                            return Err(bad(format!("window {w:?} must be positive")));
                        }
                        ns
                    }
                };
                let group_by = if self.group_by.iter().any(|g| g == "*") {
                    GroupBy::Series
                } else {
                    GroupBy::Labels(self.group_by.clone())
                };
                Some((function, window, group_by))
            }
        };
        Ok(Plan {
            matchers,
            start,
            end,
            aggregate,
            limit: self.limit,
        })
    }
}

/// What a query returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueryResult {
    pub series: Vec<SeriesResult>,
    /// True when `limit` cut the result short.
    #[serde(default)]
    pub truncated: bool,
    /// PromQL's warnings and infos about the answer (`PromQL warning: ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub infos: Vec<String>,
    /// SQL and CQL answers: column names, and rows of cells in that order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Vec<crate::select::Cell>>>,
    /// With `explain`: the plan, one step per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesResult {
    /// Absent for an aggregation grouped without `__name__`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `[timestamp_ns, value]`; non-finite values as "NaN", "+Inf", "-Inf".
    pub points: Vec<PointResult>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PointResult(pub i64, #[serde(deserialize_with = "value_de")] pub f64);

impl Serialize for PointResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        if self.1.is_finite() {
            t.serialize_element(&self.1)?;
        } else if self.1.is_nan() {
            t.serialize_element("NaN")?;
        } else if self.1 > 0.0 {
            t.serialize_element("+Inf")?;
        } else {
            t.serialize_element("-Inf")?;
        }
        t.end()
    }
}

fn value_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        N(f64),
        S(String),
    }
    Ok(match V::deserialize(d)? {
        V::N(v) => v,
        V::S(s) => match s.as_str() {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => f64::NAN,
        },
    })
}

impl SeriesResult {
    pub fn from_labels(labels: &[Label], samples: &[Sample]) -> Self {
        let mut metric = None;
        let mut map = BTreeMap::new();
        for l in labels {
            if l.name == chronicle_storage::model::METRIC_LABEL {
                metric = Some(l.value.clone());
            } else {
                map.insert(l.name.clone(), l.value.clone());
            }
        }
        Self {
            metric,
            labels: map,
            points: samples
                .iter()
                .map(|s| PointResult(s.timestamp, s.value))
                .collect(),
        }
    }
}

/// The identifiers of the query text (PromQL, SQL or CQL): a write to a
/// metric among them makes a live query (live, collab) run again. A query naming metrics by a `__name__` matcher
/// watches every write.
pub fn watched_metrics(text: &str) -> Option<std::collections::BTreeSet<String>> {
    if text.contains("__name__") {
        return None;
    }
    let mut names = std::collections::BTreeSet::new();
    let mut current = String::new();
    let mut quoted: Option<char> = None;
    for c in text.chars().chain(std::iter::once(' ')) {
        if let Some(q) = quoted {
            if c == q {
                quoted = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
            continue;
        }
        if !current.is_empty() && !current.starts_with(|d: char| d.is_ascii_digit()) {
            names.insert(std::mem::take(&mut current));
        }
        current.clear();
        if c == '"' || c == '\'' {
            // Label values and strings are not metric names.
            quoted = Some(c);
        }
    }
    Some(names)
}

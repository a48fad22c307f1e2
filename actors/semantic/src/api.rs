//! The search request and its answer, as HTTP, the bus subject and the
//! CLI carry them (JSON), and the checks every entry point shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::SearchStats;
use crate::explain::Agreement;
use crate::SemanticError;

/// Most results one search returns.
pub const MAX_K: usize = 100;
/// Longest ad hoc pattern, samples (it is stretched to the window).
pub const MAX_PATTERN: usize = 4096;
/// Shortest pattern: fewer samples have no shape to speak of.
pub const MIN_PATTERN: usize = 8;
/// Most label filters.
pub const MAX_LABELS: usize = 32;
/// Longest label name or value, and metric glob, bytes.
pub const MAX_NAME: usize = 256;

/// `POST /api/semantic/search`, `/api/semantic/text`, and the
/// `<prefix>.semantic.search` subject: exactly one of `pattern` and `text`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Pattern>,
    /// Shape words: "sudden spike followed by gradual recovery".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Results wanted (1 to 100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// Only series whose metric matches this glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Only series with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Only windows overlapping `[start, end)`, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// Candidates kept while searching each graph (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_search: Option<usize>,
    /// Add each match's aligned pair (query and match, z-normalised, and
    /// the match's raw values) for a chart.
    #[serde(default)]
    pub compare: bool,
}

/// What to look for: exactly one of its fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// An ad hoc series (8 to 4096 values, stretched to the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
    /// A time range of a stored series (its own windows there are left
    /// out of the results: trivial matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<SeriesRange>,
    /// A pattern saved under this name (`/api/semantic/patterns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesRange {
    pub metric: String,
    /// Every label of the series (one series must match exactly).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// ms since the epoch, `[start, end)`.
    pub start: i64,
    pub end: i64,
}

/// A pattern saved for later searches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPattern {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub values: Vec<f64>,
}

impl SearchRequest {
    /// Checks everything that needs no data: bounds, names, exactly one
    /// query. Returns `k`.
    pub fn check(&self) -> Result<usize, SemanticError> {
        let bad = |m: String| Err(SemanticError::Invalid(m));
        let k = self.k.unwrap_or(10);
        if !(1..=MAX_K).contains(&k) {
            return bad(format!("k: 1 to {MAX_K}"));
        }
        match (&self.pattern, &self.text) {
            (Some(p), None) => p.check()?,
            (None, Some(t)) => {
                crate::text::parse(t)?;
            }
            _ => return bad("give exactly one of \"pattern\" and \"text\"".into()),
        }
        if let Some(m) = &self.metric {
            crate::catalog::metric_matcher(m)?;
        }
        check_labels(&self.labels)?;
        if let (Some(s), Some(e)) = (self.start, self.end) {
            if s >= e {
                return bad("start must be before end".into());
            }
        }
        for t in [self.start, self.end].into_iter().flatten() {
            ms_to_ns(t)?;
        }
        if let Some(ef) = self.ef_search {
            if !(1..=2000).contains(&ef) {
                return bad("ef_search: 1 to 2000".into());
            }
        }
        Ok(k)
    }
}

impl Pattern {
    pub fn check(&self) -> Result<(), SemanticError> {
        let given = [
            self.values.is_some(),
            self.series.is_some(),
            self.saved.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(SemanticError::Invalid(
                "a pattern is exactly one of \"values\", \"series\" and \"saved\"".into(),
            ));
        }
        if let Some(v) = &self.values {
            check_values(v)?;
        }
        if let Some(s) = &self.series {
            if s.metric.is_empty() || s.metric.len() > MAX_NAME {
                return Err(SemanticError::Invalid(format!(
                    "series.metric: 1 to {MAX_NAME} bytes"
                )));
            }
            check_labels(&s.labels)?;
            if s.start >= s.end {
                return Err(SemanticError::Invalid(
                    "series: start must be before end".into(),
                ));
            }
            ms_to_ns(s.start)?;
            ms_to_ns(s.end)?;
        }
        if let Some(name) = &self.saved {
            check_pattern_name(name)?;
        }
        Ok(())
    }
}

pub fn check_values(v: &[f64]) -> Result<(), SemanticError> {
    if !(MIN_PATTERN..=MAX_PATTERN).contains(&v.len()) {
        return Err(SemanticError::Invalid(format!(
            "values: {MIN_PATTERN} to {MAX_PATTERN} samples"
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(SemanticError::Invalid("values: finite numbers".into()));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SemanticError> {
    if labels.len() > MAX_LABELS {
        return Err(SemanticError::Invalid(format!(
            "labels: at most {MAX_LABELS}"
        )));
    }
    if labels
        .iter()
        .any(|(k, v)| k.is_empty() || k.len() > MAX_NAME || v.len() > MAX_NAME)
    {
        return Err(SemanticError::Invalid(format!(
            "labels: names of 1 to {MAX_NAME} bytes, values up to {MAX_NAME}"
        )));
    }
    Ok(())
}

/// Pattern names: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn check_pattern_name(name: &str) -> Result<(), SemanticError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(SemanticError::Invalid(
            "a pattern name: 1 to 64 of A-Z a-z 0-9 _ . -".into(),
        ));
    }
    Ok(())
}

/// ms → ns, refusing what does not fit.
pub fn ms_to_ns(ms: i64) -> Result<i64, SemanticError> {
    ms.checked_mul(1_000_000)
        .ok_or_else(|| SemanticError::Invalid(format!("time {ms} ms is out of range")))
}

/// `values` stretched (or shrunk) to `n` samples by linear interpolation.
pub fn resample(values: &[f64], n: usize) -> Vec<f64> {
    if values.len() == n || values.is_empty() {
        return values.to_vec();
    }
    let last = (values.len() - 1) as f64;
    (0..n)
        .map(|i| {
            let x = if n == 1 {
                0.0
            } else {
                i as f64 * last / (n - 1) as f64
            };
            let (lo, frac) = (x.floor() as usize, x - x.floor());
            let hi = (lo + 1).min(values.len() - 1);
            values[lo] * (1.0 - frac) + values[hi] * frac
        })
        .collect()
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchAnswer {
    pub matches: Vec<MatchView>,
    /// Samples in a window (every pattern is stretched to it).
    pub window: usize,
    /// The query as searched (z-normalised, `window` samples), for a chart.
    pub query: Vec<f64>,
    pub shards: ShardCoverage,
    pub stats: SearchStats,
    pub took_ms: f64,
}

/// Which shards answered; results are complete when `missing` and
/// `rebuilding` are empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardCoverage {
    pub searched: Vec<u32>,
    /// No replica answered in time.
    pub missing: Vec<u32>,
    /// The replica that answered was still rebuilding its index (its
    /// results cover what it had indexed).
    pub rebuilding: Vec<u32>,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchView {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub shard: u32,
    /// The window's first and last samples, ms since the epoch.
    pub start: i64,
    pub end: i64,
    /// `(1 + r) / 2` for the Pearson correlation `r` of the two windows:
    /// 1 the same shape, 0.5 unrelated, 0 a mirror image.
    pub similarity: f64,
    /// The exact z-normalised Euclidean distance.
    pub distance: f64,
    /// The features that agree, in words.
    pub agrees: Vec<String>,
    pub explanation: Vec<Agreement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

/// An aligned pair for a chart: sample `i` of the query beside sample `i`
/// of the match, both z-normalised, and the match's own values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub query: Vec<f64>,
    #[serde(rename = "match")]
    pub matched: Vec<f64>,
    pub values: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<usize, String> {
        let r: SearchRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        r.check().map_err(|e| e.to_string())
    }

    #[test]
    fn requests_are_checked_before_anything_is_read() {
        assert_eq!(req(r#"{"text":"spike"}"#), Ok(10));
        assert_eq!(
            req(r#"{"pattern":{"values":[1,2,3,4,5,6,7,8]},"k":3}"#),
            Ok(3)
        );
        for bad in [
            r#"{}"#,
            r#"{"text":"spike","pattern":{"saved":"x"}}"#,
            r#"{"text":"wobble"}"#,
            r#"{"text":"spike","k":0}"#,
            r#"{"text":"spike","k":101}"#,
            r#"{"pattern":{"values":[1,2]}}"#,
            r#"{"pattern":{}}"#,
            r#"{"pattern":{"saved":"a b"}}"#,
            r#"{"pattern":{"saved":"x","values":[1,2,3,4,5,6,7,8]}}"#,
            r#"{"pattern":{"series":{"metric":"m","start":5,"end":5}}}"#,
            r#"{"pattern":{"series":{"metric":"m","start":0,"end":9223372036854775807}}}"#,
            r#"{"text":"spike","start":10,"end":1}"#,
            r#"{"text":"spike","ef_search":0}"#,
            r#"{"text":"spike","metric":""}"#,
            r#"{"text":"spike","surprise":1}"#,
        ] {
            assert!(req(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resampling_keeps_the_ends_and_the_shape() {
        let v = [0.0, 10.0, 0.0];
        let r = resample(&v, 5);
        assert_eq!(r, vec![0.0, 5.0, 10.0, 5.0, 0.0]);
        assert_eq!(resample(&r, 3), v.to_vec());
        assert_eq!(resample(&v, 3), v.to_vec());
    }
}

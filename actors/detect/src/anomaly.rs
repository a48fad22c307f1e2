//! An anomaly as Chronicle publishes, stores and accepts it: the JSON on
//! `<prefix>.anomaly.<metric>`, in the state and on `/api/anomalies`.
//! Anomalies from outside (any service publishing that JSON) are parsed
//! here with bounds, since their bytes are untrusted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::detector::{Episode, Evidence, Kind, Severity};

/// Largest anomaly message accepted, bytes.
pub const MAX_ANOMALY_BYTES: usize = 64 << 10;
/// Labels on one anomaly at most.
pub const MAX_LABELS: usize = 64;
/// Longest metric name, label name or value, source, id, bytes.
pub const MAX_TEXT: usize = 1024;

/// One anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    /// Unique: `<start ms>-<series hash>` for the detector's (so a repeat of
    /// the same episode has the same id), the sender's choice otherwise.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub metric: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub severity: Severity,
    pub score: f64,
    /// Milliseconds since the epoch.
    pub start: i64,
    /// Set once the episode ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Who found it: `detector` (this cluster) or the sender's name.
    #[serde(default = "external")]
    pub source: String,
}

fn external() -> String {
    "external".into()
}

/// Why an anomaly message was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnomalyError {
    #[error("an anomaly of {0} bytes; at most {MAX_ANOMALY_BYTES}")]
    TooLarge(usize),
    #[error("invalid anomaly JSON: {0}")]
    Json(String),
    #[error("invalid anomaly: {0}")]
    Invalid(String),
}

impl Anomaly {
    /// An anomaly of the detector's, from one of its episodes.
    pub fn from_episode(
        metric: &str,
        labels: BTreeMap<String, String>,
        series_hash: u64,
        e: &Episode,
    ) -> Self {
        Self {
            id: format!("{}-{series_hash:016x}", e.start_ms),
            kind: e.kind,
            metric: metric.to_string(),
            labels,
            severity: e.severity,
            score: e.score,
            start: e.start_ms,
            end: e.end_ms,
            evidence: Some(e.evidence.clone()),
            source: "detector".into(),
        }
    }

    /// Parses and checks an anomaly from outside.
    pub fn parse(bytes: &[u8]) -> Result<Self, AnomalyError> {
        if bytes.len() > MAX_ANOMALY_BYTES {
            return Err(AnomalyError::TooLarge(bytes.len()));
        }
        let a: Anomaly =
            serde_json::from_slice(bytes).map_err(|e| AnomalyError::Json(e.to_string()))?;
        a.check()?;
        Ok(a)
    }

    /// The bounds every stored anomaly meets.
    pub fn check(&self) -> Result<(), AnomalyError> {
        let bad = |why: String| Err(AnomalyError::Invalid(why));
        if !valid_metric(&self.metric) {
            return bad(format!(
                "metric {:?}: a Prometheus metric name of at most {MAX_TEXT} bytes",
                self.metric
            ));
        }
        if self.id.is_empty()
            || self.id.len() > 128
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return bad("id: 1 to 128 characters of [A-Za-z0-9._-]".into());
        }
        if self.labels.len() > MAX_LABELS {
            return bad(format!(
                "{} labels; at most {MAX_LABELS}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > MAX_TEXT || v.len() > MAX_TEXT {
                return bad(format!(
                    "label {k:?}: names and values of 1 to {MAX_TEXT} bytes"
                ));
            }
        }
        if self.source.is_empty() || self.source.len() > 128 {
            return bad("source: 1 to 128 bytes".into());
        }
        if !self.score.is_finite() {
            return bad("score: a finite number".into());
        }
        if let Some(end) = self.end {
            if end < self.start {
                return bad("end is before start".into());
            }
        }
        if let Some(e) = &self.evidence {
            if ![e.baseline, e.observed, e.spread]
                .iter()
                .all(|v| v.is_finite())
            {
                return bad("evidence: finite numbers".into());
            }
        }
        Ok(())
    }
}

/// A Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), bounded.
pub fn valid_metric(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        && name.len() <= MAX_TEXT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_anomaly_parses_and_hostile_ones_are_refused() {
        let ok =
            br#"{"id":"a-1","type":"spike","metric":"http_errors_total","labels":{"job":"api"},
                      "severity":"high","score":9.5,"start":1767225600000,"source":"grafana"}"#;
        let a = Anomaly::parse(ok).unwrap();
        assert_eq!((a.kind, a.severity), (Kind::Spike, Severity::High));
        // Round trip.
        assert_eq!(Anomaly::parse(&serde_json::to_vec(&a).unwrap()).unwrap(), a);
        for bad in [
            &br#"{"id":"a","type":"boom","metric":"m","severity":"low","score":1,"start":0}"#[..],
            br#"{"id":"a","type":"spike","metric":"9m","severity":"low","score":1,"start":0}"#,
            br#"{"id":"a b","type":"spike","metric":"m","severity":"low","score":1,"start":0}"#,
            br#"{"id":"a","type":"spike","metric":"m","severity":"low","score":1,"start":5,"end":1}"#,
            br#"{"id":"a","type":"spike","metric":"m","severity":"low","score":1,"start":0,"x":1}"#,
            br#"not json"#,
        ] {
            assert!(Anomaly::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut big = br#"{"id":"a","type":"spike","metric":"m","severity":"low","score":1,"start":0,"labels":{"#.to_vec();
        for i in 0..100 {
            big.extend_from_slice(format!(r#""l{i}":"v","#).as_bytes());
        }
        big.extend_from_slice(br#""z":"v"}}"#);
        assert!(Anomaly::parse(&big)
            .unwrap_err()
            .to_string()
            .contains("labels"));
        assert!(matches!(
            Anomaly::parse(&vec![b' '; MAX_ANOMALY_BYTES + 1]),
            Err(AnomalyError::TooLarge(_))
        ));
    }
}

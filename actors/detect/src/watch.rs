//! Which series the detector watches: metric name globs (`*` any run of
//! characters, `?` one) and exact label matchers, each with its own
//! sensitivity and absence limit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `[[features.detect.watch]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// A glob over metric names: `http_*`, `cpu_?_seconds`, `*`.
    pub metric: String,
    /// Labels a series must have, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Robust z-score of a spike or dip (default 7: see docs/anomalies.md).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// No sample for this long is an absence (`"10m"`); unset: not checked.
    #[serde(default)]
    pub absent_after: Option<String>,
}

/// A glob over metric names: `*` matches any run of characters, `?` one.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    // Iterative with one backtrack point: linear in practice, never
    // exponential whatever the pattern.
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

impl Watch {
    /// Whether a series (metric and labels as pairs) is watched by this entry.
    pub fn matches<'a>(
        &self,
        metric: &str,
        mut label: impl FnMut(&str) -> Option<&'a str>,
    ) -> bool {
        glob_matches(&self.metric, metric)
            && self
                .labels
                .iter()
                .all(|(k, v)| label(k).is_some_and(|have| have == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_documented() {
        for (p, n, want) in [
            ("*", "anything", true),
            ("cpu_*", "cpu_seconds_total", true),
            ("cpu_*", "gpu_seconds_total", false),
            ("*_total", "http_requests_total", true),
            ("http_?_x", "http_a_x", true),
            ("http_?_x", "http_ab_x", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
            ("**", "x", true),
        ] {
            assert_eq!(glob_matches(p, n), want, "{p} {n}");
        }
        // A hostile pattern stays fast.
        let p = "*a".repeat(50);
        let n = "a".repeat(10_000) + "b";
        let started = std::time::Instant::now();
        assert!(!glob_matches(&p, &n));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn label_matchers_are_exact() {
        let w = Watch {
            metric: "up".into(),
            labels: [("job".to_string(), "api".to_string())].into(),
            threshold: None,
            absent_after: None,
        };
        assert!(w.matches("up", |k| (k == "job").then_some("api")));
        assert!(!w.matches("up", |k| (k == "job").then_some("db")));
        assert!(!w.matches("up", |_| None));
    }
}

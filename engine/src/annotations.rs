//! Warnings and infos a query produces beside its answer, as Prometheus's
//! annotations: the answer stands, but something about it deserves a look
//! (a quantile outside [0, 1], a sort that a range query undoes, ...).

use std::fmt;

/// Where an expression starts in the query text: line and column, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// The position of byte `offset` of `text` (columns count characters).
    pub fn at(text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() as u32 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() as u32 + 1;
        Self { line, col }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Warning,
    Info,
}

/// One annotation, its message worded and positioned as Prometheus words it
/// (`PromQL warning: ... (1:5)`), so clients and the conformance scripts see
/// the same text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Annotation {
    pub severity: Severity,
    pub message: String,
}

impl Annotation {
    pub fn new(severity: Severity, text: impl fmt::Display, pos: Option<Pos>) -> Self {
        let prefix = match severity {
            Severity::Warning => "PromQL warning",
            Severity::Info => "PromQL info",
        };
        let message = match pos {
            Some(p) => format!("{prefix}: {text} ({}:{})", p.line, p.col),
            None => format!("{prefix}: {text}"),
        };
        Self { severity, message }
    }

    pub fn warning(text: impl fmt::Display, pos: Option<Pos>) -> Self {
        Self::new(Severity::Warning, text, pos)
    }

    pub fn info(text: impl fmt::Display, pos: Option<Pos>) -> Self {
        Self::new(Severity::Info, text, pos)
    }
}

impl fmt::Display for Annotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A float as Go's `%g` prints it in Prometheus's messages (`NaN`, `+Inf`, `2`).
pub(crate) fn go_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        assert_eq!(Pos::at("sum(sort(x))", 4), Pos { line: 1, col: 5 });
        assert_eq!(Pos::at("a +\n  é + sort(x)", 11), Pos { line: 2, col: 7 });
    }

    #[test]
    fn messages_read_like_prometheus() {
        let a = Annotation::warning("sort is ineffective", Some(Pos { line: 1, col: 1 }));
        assert_eq!(a.message, "PromQL warning: sort is ineffective (1:1)");
        assert_eq!(Annotation::info("x", None).message, "PromQL info: x");
        assert_eq!(go_float(f64::NAN), "NaN");
        assert_eq!(go_float(2.0), "2");
        assert_eq!(go_float(-0.5), "-0.5");
    }
}

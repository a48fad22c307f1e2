//! Label matchers with Prometheus semantics.

use regex::Regex;

use crate::{Result, StorageError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// `name op value`; regexes are anchored at both ends, as in Prometheus.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    pub fn new(op: MatchOp, name: impl Into<String>, value: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let value = value.into();
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(Regex::new(&format!("^(?s:{value})$")).map_err(|e| {
                    StorageError::InvalidMatcher {
                        label: name.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
            _ => None,
        };
        Ok(Self {
            name,
            op,
            value,
            regex,
        })
    }

    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(MatchOp::Equal, name, value).expect("equality matchers always build")
    }

    /// Whether a label value matches; an absent label is the empty string.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_are_anchored() {
        let m = Matcher::new(MatchOp::Regex, "host", "web").unwrap();
        assert!(m.matches("web"));
        assert!(!m.matches("web1"));
        assert!(!m.matches("aweb"));
        let m = Matcher::new(MatchOp::Regex, "host", "web|db.*").unwrap();
        assert!(m.matches("db7") && m.matches("web") && !m.matches("xweb"));
        let m = Matcher::new(MatchOp::NotRegex, "host", "").unwrap();
        assert!(!m.matches("") && m.matches("a"));
        assert!(Matcher::new(MatchOp::Regex, "host", "(").is_err());
    }
}

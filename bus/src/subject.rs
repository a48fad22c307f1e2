//! NATS subject rules: dot-separated non-empty tokens without whitespace; in a
//! subscription `*` matches one token and `>` (last token only) one or more.

use crate::{BusError, Result};

/// Checks a subject for publishing: no wildcards.
pub fn validate_publish(subject: &str) -> Result<()> {
    validate(subject, false)
}

/// Checks a subject pattern for subscribing: wildcards allowed where NATS allows them.
pub fn validate_subscribe(subject: &str) -> Result<()> {
    validate(subject, true)
}

fn validate(subject: &str, wildcards: bool) -> Result<()> {
    let bad = |reason| BusError::InvalidSubject {
        subject: subject.to_string(),
        reason,
    };
    if subject.is_empty() {
        return Err(bad("empty"));
    }
    let count = subject.split('.').count();
    for (i, token) in subject.split('.').enumerate() {
        if token.is_empty() {
            return Err(bad("empty token"));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(bad("whitespace"));
        }
        let wildcard = token == "*" || token == ">";
        if wildcard && !wildcards {
            return Err(bad("wildcards are only for subscriptions"));
        }
        if token == ">" && i + 1 != count {
            return Err(bad("'>' must be the last token"));
        }
        if !wildcard && (token.contains('*') || token.contains('>')) && wildcards {
            return Err(bad("a wildcard must be a whole token"));
        }
    }
    Ok(())
}

/// Checks a queue group name: one token, no spaces.
pub fn validate_queue_group(group: &str) -> Result<()> {
    if group.is_empty() || group.chars().any(char::is_whitespace) {
        return Err(BusError::InvalidQueueGroup(group.to_string()));
    }
    Ok(())
}

/// Whether `subject` (a concrete subject) matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_in_nats() {
        assert!(matches("chronicle.ingest.>", "chronicle.ingest.cpu"));
        assert!(matches("chronicle.ingest.>", "chronicle.ingest.cpu.x"));
        assert!(!matches("chronicle.ingest.>", "chronicle.ingest"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate_publish("a.b").is_ok());
        assert!(validate_publish("a.*").is_err());
        assert!(validate_publish("a..b").is_err());
        assert!(validate_publish("").is_err());
        assert!(validate_publish("a b").is_err());
        assert!(validate_subscribe("a.*.>").is_ok());
        assert!(validate_subscribe("a.>.b").is_err());
        assert!(validate_subscribe("a.b*").is_err());
        assert!(validate_queue_group("workers").is_ok());
        assert!(validate_queue_group("").is_err());
    }
}

//! The replicated state as JSON: one protocol for services on the bus
//! (`<prefix>.kv.<op>` request/reply) and operators over HTTP
//! (`POST /api/v1/kv/<op>`, `chronicle kv`). This module parses and checks
//! requests and renders answers without touching the cluster (the fuzz
//! target builds it so); [`service`] answers them (docs/state.md).

use std::time::Duration;

use base64::Engine;
use chronicle_storage::state::{
    validate_key, validate_namespace, ChangeKind, StateChange, StateCheck, StateEntry, StateOp,
    StateTxn, TxnOutcome, MAX_CHANGES_LIMIT, MAX_SCAN_LIMIT, MAX_STATE_VALUE_BYTES, MAX_TTL_MS,
    MAX_WATCH_WAIT,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[cfg(feature = "service")]
pub mod service;

/// The operations, as they appear in subjects and paths.
pub const OPS: [&str; 6] = ["get", "put", "del", "ls", "watch", "txn"];
/// Largest request body: an entry at its limit (900 KiB), in base64 and JSON.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;
/// Entries a scan returns when the request names no limit.
pub const DEFAULT_SCAN_LIMIT: usize = 100;
/// Changes a watch poll returns when the request names no limit.
pub const DEFAULT_CHANGES_LIMIT: usize = 1_000;

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub enum KvRequest {
    Get {
        namespace: String,
        key: String,
    },
    /// With `revision`: only if the key is at it (0: only if absent); with
    /// `ttl_ms` > 0 the key expires that long after the write.
    Put {
        namespace: String,
        key: String,
        value: Vec<u8>,
        revision: Option<u64>,
        ttl_ms: u64,
    },
    Del {
        namespace: String,
        key: String,
        revision: Option<u64>,
    },
    Ls {
        namespace: String,
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
    Watch {
        namespace: String,
        prefix: String,
        after: u64,
        limit: usize,
        wait: Duration,
    },
    Txn {
        namespace: String,
        txns: Vec<StateTxn>,
    },
}

/// An answer: HTTP status and JSON body (errors carry the status as `code`,
/// which is how a bus reply tells them apart).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub fn ok(body: Value) -> Answer {
    Answer { status: 200, body }
}

pub fn fail(status: u16, error: impl Into<String>) -> Answer {
    Answer {
        status,
        body: json!({ "error": error.into(), "code": status }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBody {
    namespace: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    namespace: String,
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
    revision: Option<u64>,
    #[serde(default)]
    ttl_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelBody {
    namespace: String,
    key: String,
    revision: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LsBody {
    namespace: String,
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchBody {
    namespace: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    namespace: String,
    txns: Vec<TxnJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnJson {
    #[serde(default)]
    checks: Vec<CheckJson>,
    #[serde(default)]
    ops: Vec<OpJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckJson {
    key: String,
    revision: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum OpJson {
    Put {
        key: String,
        value: Option<String>,
        value_base64: Option<String>,
        #[serde(default)]
        ttl_ms: u64,
    },
    Delete {
        key: String,
    },
}

fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(bytes).map_err(|e| fail(400, format!("bad request: {e}")))
}

fn bad(e: impl ToString) -> Answer {
    fail(400, e.to_string())
}

/// UTF-8 text as `value`, anything else as `value_base64`; at most `MAX_STATE_VALUE_BYTES`.
fn value_bytes(value: Option<String>, value_base64: Option<String>) -> Result<Vec<u8>, Answer> {
    let bytes = match (value, value_base64) {
        (Some(v), None) => v.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| bad(format!("value_base64: {e}")))?,
        (None, None) => return Err(bad("a value is needed (value or value_base64)")),
        (Some(_), Some(_)) => return Err(bad("give value or value_base64, not both")),
    };
    if bytes.len() > MAX_STATE_VALUE_BYTES {
        return Err(bad(format!(
            "a value of {} bytes; at most {MAX_STATE_VALUE_BYTES} (chunk larger blobs)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, Answer> {
    match given.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(bad(format!("limit is 1 to {max}, not {n}"))),
    }
}

/// Parses and checks operation `op`'s JSON `bytes`: names, sizes and
/// limits, before anything reaches the cluster.
pub fn parse(op: &str, bytes: &[u8]) -> Result<KvRequest, Answer> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(fail(
            413,
            format!(
                "a request of {} bytes; at most {MAX_REQUEST_BYTES}",
                bytes.len()
            ),
        ));
    }
    let request = match op {
        "get" => {
            let b: GetBody = body(bytes)?;
            validate_key(&b.key).map_err(bad)?;
            KvRequest::Get {
                namespace: b.namespace,
                key: b.key,
            }
        }
        "put" => {
            let b: PutBody = body(bytes)?;
            validate_key(&b.key).map_err(bad)?;
            if b.ttl_ms > MAX_TTL_MS {
                return Err(bad(format!("ttl_ms is at most {MAX_TTL_MS} (a year)")));
            }
            KvRequest::Put {
                value: value_bytes(b.value, b.value_base64)?,
                namespace: b.namespace,
                key: b.key,
                revision: b.revision,
                ttl_ms: b.ttl_ms,
            }
        }
        "del" => {
            let b: DelBody = body(bytes)?;
            validate_key(&b.key).map_err(bad)?;
            KvRequest::Del {
                namespace: b.namespace,
                key: b.key,
                revision: b.revision,
            }
        }
        "ls" => {
            let b: LsBody = body(bytes)?;
            if let Some(a) = &b.after {
                validate_key(a).map_err(bad)?;
            }
            KvRequest::Ls {
                limit: limit(b.limit, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT)?,
                namespace: b.namespace,
                prefix: b.prefix,
                after: b.after,
            }
        }
        "watch" => {
            let b: WatchBody = body(bytes)?;
            let wait = Duration::from_millis(b.wait_ms);
            if wait > MAX_WATCH_WAIT {
                return Err(bad(format!(
                    "wait_ms is at most {}",
                    MAX_WATCH_WAIT.as_millis()
                )));
            }
            KvRequest::Watch {
                limit: limit(b.limit, DEFAULT_CHANGES_LIMIT, MAX_CHANGES_LIMIT)?,
                namespace: b.namespace,
                prefix: b.prefix,
                after: b.after,
                wait,
            }
        }
        "txn" => {
            let b: TxnBody = body(bytes)?;
            let mut txns = Vec::with_capacity(b.txns.len());
            for t in b.txns {
                let mut ops = Vec::with_capacity(t.ops.len());
                for op in t.ops {
                    ops.push(match op {
                        OpJson::Put {
                            key,
                            value,
                            value_base64,
                            ttl_ms,
                        } => StateOp::Put {
                            value: value_bytes(value, value_base64)?,
                            key,
                            ttl_ms,
                        },
                        OpJson::Delete { key } => StateOp::Delete { key },
                    });
                }
                let checks = t
                    .checks
                    .into_iter()
                    .map(|c| StateCheck {
                        key: c.key,
                        revision: c.revision,
                    })
                    .collect();
                txns.push(StateTxn { checks, ops });
            }
            KvRequest::Txn {
                namespace: b.namespace,
                txns,
            }
        }
        other => {
            return Err(fail(
                404,
                format!("no operation {other:?}; one of {}", OPS.join(", ")),
            ))
        }
    };
    validate_namespace(request.namespace()).map_err(bad)?;
    Ok(request)
}

impl KvRequest {
    pub fn namespace(&self) -> &str {
        match self {
            KvRequest::Get { namespace, .. }
            | KvRequest::Put { namespace, .. }
            | KvRequest::Del { namespace, .. }
            | KvRequest::Ls { namespace, .. }
            | KvRequest::Watch { namespace, .. }
            | KvRequest::Txn { namespace, .. } => namespace,
        }
    }
}

/// A value's JSON field: `("value", text)` for UTF-8, else `("value_base64", ...)`.
pub fn value_json(bytes: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(bytes) {
        Ok(s) => ("value", Value::String(s.to_string())),
        Err(_) => (
            "value_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// `{"key", "value" | "value_base64", "revision", "created"}`.
pub fn entry_json(e: &StateEntry) -> Value {
    let (name, value) = value_json(&e.value);
    let mut v = json!({ "key": e.key, name: value, "revision": e.revision, "created": e.created });
    if e.expires != 0 {
        v["expires"] = json!(e.expires);
    }
    v
}

/// `{"revision", "kind": "put" | "delete", "key", "at", "value"...}`.
pub fn change_json(c: &StateChange) -> Value {
    let mut v = json!({
        "revision": c.revision,
        "kind": match c.kind { ChangeKind::Put => "put", ChangeKind::Delete => "delete" },
        "key": c.key,
        "at": c.at,
    });
    if c.kind == ChangeKind::Put {
        let (name, value) = value_json(&c.value);
        v[name] = value;
    }
    v
}

/// A conditional change: 200 with the new revision, or 409 with the key's
/// current one (0: absent).
pub fn conditional_json(o: Result<u64, u64>) -> Answer {
    match o {
        Ok(revision) => ok(json!({ "revision": revision })),
        Err(current) => Answer {
            status: 409,
            body: json!({
                "error": "the key is not at the given revision",
                "code": 409,
                "current": current,
            }),
        },
    }
}

/// `{"committed": revision}` or `{"failed": {"key", "current"}}` per transaction.
pub fn outcomes_json(outcomes: &[TxnOutcome]) -> Value {
    let outcomes: Vec<Value> = outcomes
        .iter()
        .map(|o| match o {
            TxnOutcome::Committed { revision } => json!({ "committed": revision }),
            TxnOutcome::Failed { key, revision } => {
                json!({ "failed": { "key": key, "current": revision } })
            }
        })
        .collect();
    json!({ "outcomes": outcomes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_they_reach_the_cluster() {
        let status = |op: &str, body: &str| {
            parse(op, body.as_bytes())
                .map(|_| 200)
                .unwrap_or_else(|a| a.status)
        };
        assert_eq!(status("get", r#"{"namespace":"n","key":"k"}"#), 200);
        assert_eq!(status("get", r#"{"namespace":"n","key":""}"#), 400);
        assert_eq!(status("get", r#"{"namespace":"a b","key":"k"}"#), 400);
        assert_eq!(status("get", r#"{"namespace":"n","key":"k","x":1}"#), 400);
        assert_eq!(status("frob", "{}"), 404);
        assert_eq!(status("put", r#"{"namespace":"n","key":"k"}"#), 400);
        assert_eq!(
            status("put", r#"{"namespace":"n","key":"k","value_base64":"!!"}"#),
            400
        );
        assert_eq!(status("ls", r#"{"namespace":"n","limit":0}"#), 400);
        assert_eq!(status("watch", r#"{"namespace":"n","wait_ms":30001}"#), 400);
        assert_eq!(
            status(
                "txn",
                r#"{"namespace":"n","txns":[{"ops":[{"put":{"key":"k","value":"v"}}]}]}"#
            ),
            200
        );
        let big = format!(
            r#"{{"namespace":"n","key":"k","value":"{}"}}"#,
            "x".repeat(MAX_STATE_VALUE_BYTES + 1)
        );
        assert_eq!(status("put", &big), 400);
        assert_eq!(
            parse("put", &vec![b' '; MAX_REQUEST_BYTES + 1])
                .unwrap_err()
                .status,
            413
        );
        match parse(
            "put",
            br#"{"namespace":"n","key":"k","value_base64":"AP8=","revision":0}"#,
        ) {
            Ok(KvRequest::Put {
                value, revision, ..
            }) => {
                assert_eq!((value, revision), (vec![0, 255], Some(0)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_that_are_not_text_come_back_in_base64() {
        let e = StateEntry {
            key: "k".into(),
            value: vec![0xff, 0],
            revision: 3,
            created: 2,
            expires: 0,
        };
        assert_eq!(entry_json(&e)["value_base64"], "/wA=");
        let e = StateEntry {
            value: b"hi".to_vec(),
            ..e
        };
        assert_eq!(entry_json(&e)["value"], "hi");
    }
}

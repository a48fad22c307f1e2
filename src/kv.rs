//! The replicated state as JSON, for services on the bus
//! (`<prefix>.kv.<op>` request/reply) and operators over HTTP
//! (`POST /api/v1/kv/<op>`, `chronicle kv`): one protocol, one handler
//! (docs/state.md lists the operations).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chronicle_bus::{Bus, Message};
use chronicle_cluster::state::{MAX_CHANGES_LIMIT, MAX_SCAN_LIMIT, MAX_WATCH_WAIT};
use chronicle_cluster::{ClusterError, ClusterNode};
use chronicle_storage::state::{ChangeKind, StateCheck, StateEntry, StateOp, StateTxn, TxnOutcome};
use chronicle_storage::StorageError;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info_span, warn, Instrument};

/// The operations, as they appear in subjects and paths.
pub const OPS: [&str; 6] = ["get", "put", "del", "ls", "watch", "txn"];
/// Largest request body: a transaction batch at the entry limit, in base64.
pub const MAX_REQUEST_BYTES: usize = 6 << 20;
/// Requests one node answers over the bus at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// A JSON value: UTF-8 text as `value`, anything else as `value_base64`.
#[derive(Deserialize, Default)]
struct Value_ {
    value: Option<String>,
    value_base64: Option<String>,
}

impl Value_ {
    fn bytes(self) -> Result<Vec<u8>, String> {
        match (self.value, self.value_base64) {
            (Some(v), None) => Ok(v.into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("value_base64: {e}")),
            (None, None) => Err("a value is needed (value or value_base64)".into()),
            (Some(_), Some(_)) => Err("give value or value_base64, not both".into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetRequest {
    namespace: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    namespace: String,
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
    /// Only if the key is at this revision (0: only if absent).
    revision: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelRequest {
    namespace: String,
    key: String,
    revision: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LsRequest {
    namespace: String,
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchRequest {
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
struct TxnRequest {
    namespace: String,
    txns: Vec<JsonTxn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTxn {
    #[serde(default)]
    checks: Vec<JsonCheck>,
    #[serde(default)]
    ops: Vec<JsonOp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCheck {
    key: String,
    revision: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum JsonOp {
    Put {
        key: String,
        value: Option<String>,
        value_base64: Option<String>,
    },
    Delete {
        key: String,
    },
}

/// An answer: HTTP status and JSON body (the bus reply carries the status
/// as `code` when it is not 200).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

fn ok(body: Value) -> Answer {
    Answer { status: 200, body }
}

fn fail(status: u16, error: impl Into<String>) -> Answer {
    Answer {
        status,
        body: json!({ "error": error.into(), "code": status }),
    }
}

fn from_cluster(e: ClusterError) -> Answer {
    match e {
        ClusterError::Storage(StorageError::InvalidRequest(why)) => fail(400, why),
        ClusterError::Storage(e @ StorageError::Compacted { .. }) => fail(410, e.to_string()),
        ClusterError::Unavailable(why) => fail(503, why),
        other => fail(500, other.to_string()),
    }
}

fn value_json(bytes: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(bytes) {
        Ok(s) => ("value", Value::String(s.to_string())),
        Err(_) => (
            "value_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn entry_json(e: &StateEntry) -> Value {
    let (name, value) = value_json(&e.value);
    json!({ "key": e.key, name: value, "revision": e.revision, "created": e.created })
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| fail(400, format!("bad request: {e}")))
}

/// Answers operation `op` with the JSON `body`.
pub async fn handle(node: &Arc<ClusterNode>, op: &str, body: &[u8]) -> Answer {
    if body.len() > MAX_REQUEST_BYTES {
        return fail(
            413,
            format!("a request of {} bytes; at most {MAX_REQUEST_BYTES}", body.len()),
        );
    }
    let result = match op {
        "get" => get(node, body).await,
        "put" => put(node, body).await,
        "del" => del(node, body).await,
        "ls" => ls(node, body).await,
        "watch" => watch(node, body).await,
        "txn" => txn(node, body).await,
        other => Err(fail(
            404,
            format!("no operation {other:?}; one of {}", OPS.join(", ")),
        )),
    };
    result.unwrap_or_else(|e| e)
}

fn store(
    node: &Arc<ClusterNode>,
    ns: &str,
) -> Result<chronicle_cluster::state::StateStore, Answer> {
    node.state(ns).map_err(from_cluster)
}

async fn get(node: &Arc<ClusterNode>, body: &[u8]) -> Result<Answer, Answer> {
    let r: GetRequest = parse(body)?;
    match store(node, &r.namespace)?.get(&r.key).await {
        Ok(Some(e)) => Ok(ok(entry_json(&e))),
        Ok(None) => Ok(fail(404, format!("no key {:?}", r.key))),
        Err(e) => Err(from_cluster(e)),
    }
}

/// A conditional change's answer: 200 with the revision, or 409 with the
/// key's current one.
fn outcome_json(o: Result<u64, u64>) -> Answer {
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

async fn put(node: &Arc<ClusterNode>, body: &[u8]) -> Result<Answer, Answer> {
    let r: PutRequest = parse(body)?;
    let value = Value_ {
        value: r.value,
        value_base64: r.value_base64,
    }
    .bytes()
    .map_err(|e| fail(400, e))?;
    let store = store(node, &r.namespace)?;
    let done = match r.revision {
        None => store.put(&r.key, value).await.map(Ok),
        Some(rev) => store.compare_and_set(&r.key, rev, value).await,
    };
    done.map(outcome_json).map_err(from_cluster)
}

async fn del(node: &Arc<ClusterNode>, body: &[u8]) -> Result<Answer, Answer> {
    let r: DelRequest = parse(body)?;
    let store = store(node, &r.namespace)?;
    let done = match r.revision {
        None => store.delete(&r.key).await.map(Ok),
        Some(rev) => store.compare_and_delete(&r.key, rev).await,
    };
    done.map(outcome_json).map_err(from_cluster)
}

async fn ls(node: &Arc<ClusterNode>, body: &[u8]) -> Result<Answer, Answer> {
    let r: LsRequest = parse(body)?;
    let limit = r.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_SCAN_LIMIT {
        return Err(fail(400, format!("limit is 1 to {MAX_SCAN_LIMIT}")));
    }
    let (entries, more) = store(node, &r.namespace)?
        .scan(&r.prefix, r.after.as_deref(), limit)
        .await
        .map_err(from_cluster)?;
    Ok(ok(json!({
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "more": more,
    })))
}

async fn watch(node: &Arc<ClusterNode>, body: &[u8]) -> Result<Answer, Answer> {
    let r: WatchRequest = parse(body)?;
    let limit = r.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_CHANGES_LIMIT {
        return Err(fail(400, format!("limit is 1 to {MAX_CHANGES_LIMIT}")));
    }
    let wait = Duration::from_millis(r.wait_ms);
    if wait > MAX_WATCH_WAIT {
        return Err(fail(
            400,
            format!("wait_ms is at most {}", MAX_WATCH_WAIT.as_millis()),
        ));
    }
    let c = store(node, &r.namespace)?
        .changes(&r.prefix, r.after, limit, wait)
        .await
        .map_err(from_cluster)?;
    let changes: Vec<Value> = c
        .changes
        .iter()
        .map(|c| {
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
        })
        .collect();
    Ok(ok(
        json!({ "changes": changes, "more": c.more, "revision": c.revision }),
    ))
}

async fn txn(node: &Arc<ClusterNode>, body: &[u8]) -> Result<Answer, Answer> {
    let r: TxnRequest = parse(body)?;
    let mut txns = Vec::with_capacity(r.txns.len());
    for t in r.txns {
        let mut ops = Vec::with_capacity(t.ops.len());
        for op in t.ops {
            ops.push(match op {
                JsonOp::Put {
                    key,
                    value,
                    value_base64,
                } => StateOp::Put {
                    key,
                    value: Value_ {
                        value,
                        value_base64,
                    }
                    .bytes()
                    .map_err(|e| fail(400, e))?,
                },
                JsonOp::Delete { key } => StateOp::Delete { key },
            });
        }
        txns.push(StateTxn {
            checks: t
                .checks
                .into_iter()
                .map(|c| StateCheck {
                    key: c.key,
                    revision: c.revision,
                })
                .collect(),
            ops,
        });
    }
    let outcomes = store(node, &r.namespace)?
        .transact(txns)
        .await
        .map_err(from_cluster)?;
    let outcomes: Vec<Value> = outcomes
        .iter()
        .map(|o| match o {
            TxnOutcome::Committed { revision } => json!({ "committed": revision }),
            TxnOutcome::Failed { key, revision } => {
                json!({ "failed": { "key": key, "current": revision } })
            }
        })
        .collect();
    Ok(ok(json!({ "outcomes": outcomes })))
}

/// Serves `<prefix>.kv.<op>` on `bus`: each request answered on its own
/// task, its reply the answer's JSON (with `code` when not 200).
pub async fn serve_bus(
    node: Arc<ClusterNode>,
    bus: Arc<dyn Bus>,
    prefix: String,
) -> Result<tokio::task::JoinHandle<()>, chronicle_bus::BusError> {
    let subject = format!("{prefix}.kv.*");
    let mut sub = bus.subscribe(&subject, Some("chronicle-kv")).await?;
    let ops_at = prefix.len() + ".kv.".len();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    Ok(tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let (node, bus) = (node.clone(), bus.clone());
            let op = message.subject.get(ops_at..).unwrap_or("").to_string();
            let span = info_span!("kv_bus", op = %op);
            // Watches wait up to 30 s each: a flood of them is refused, not queued.
            let slot = slots.clone().try_acquire_owned();
            tokio::spawn(
                async move {
                    let answer = match slot {
                        Ok(_slot) => handle(&node, &op, &message.payload).await,
                        Err(_) => fail(
                            503,
                            format!("{MAX_IN_FLIGHT} state requests in flight on this node; retry"),
                        ),
                    };
                    let payload = serde_json::to_vec(&answer.body).unwrap_or_default();
                    if let Err(e) = bus.publish(Message::new(reply_to, payload)).await {
                        warn!(error = %e, "kv reply not sent");
                    }
                }
                .instrument(span),
            );
        }
    }))
}

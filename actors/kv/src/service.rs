//! Answers [`KvRequest`]s from the cluster's replicated state, on the bus
//! (`<prefix>.kv.<op>`) and for the node's HTTP route.

use std::sync::Arc;

use chronicle_bus::{Bus, Message};
use chronicle_cluster::{ClusterError, ClusterNode};
use chronicle_storage::state::{StateOp, StateTxn, TxnOutcome};
use chronicle_storage::StorageError;
use serde_json::json;
use tracing::{info_span, warn, Instrument};

use crate::{
    change_json, conditional_json, entry_json, fail, ok, outcomes_json, parse, Answer, KvRequest,
};

/// Requests one node answers over the bus at once (watches wait up to 30 s
/// each: a flood of them is refused, not queued).
pub const MAX_IN_FLIGHT: usize = 256;
/// Largest reply sent on the bus (NATS's default message limit is 1 MiB).
pub const MAX_REPLY_BYTES: usize = 1000 << 10;

fn from_cluster(e: ClusterError) -> Answer {
    match e {
        ClusterError::Storage(StorageError::InvalidRequest(why)) => fail(400, why),
        ClusterError::Storage(e @ StorageError::Compacted { .. }) => fail(410, e.to_string()),
        ClusterError::Unavailable(why) => fail(503, why),
        other => fail(500, other.to_string()),
    }
}

/// Answers operation `op` with the JSON `body`.
/// Namespaces the platform keeps for itself (API tokens): not writable or
/// readable through kv, so a kv-scoped admin cannot mint tokens.
pub const RESERVED_NAMESPACES: &[&str] = &["auth"];

pub async fn handle(node: &Arc<ClusterNode>, op: &str, body: &[u8]) -> Answer {
    match parse(op, body) {
        Ok(request) if RESERVED_NAMESPACES.contains(&request.namespace()) => fail(
            403,
            format!("namespace {:?} is reserved", request.namespace()),
        ),
        Ok(request) => execute(node, request).await.unwrap_or_else(from_cluster),
        Err(answer) => answer,
    }
}

async fn execute(node: &Arc<ClusterNode>, request: KvRequest) -> Result<Answer, ClusterError> {
    let store = node.state(request.namespace())?;
    Ok(match request {
        KvRequest::Get { key, .. } => match store.get(&key).await? {
            Some(e) => ok(entry_json(&e)),
            None => fail(404, format!("no key {key:?}")),
        },
        KvRequest::Put {
            key,
            value,
            revision,
            ttl_ms,
            ..
        } => {
            let put = StateOp::Put {
                key: key.clone(),
                value,
                ttl_ms,
            };
            let mut txn = StateTxn {
                checks: Vec::new(),
                ops: vec![put],
            };
            if let Some(rev) = revision {
                txn = txn.when(key, rev);
            }
            conditional_json(match store.transact(vec![txn]).await?.pop() {
                Some(TxnOutcome::Committed { revision }) => Ok(revision),
                Some(TxnOutcome::Failed { revision, .. }) => Err(revision),
                None => return Err(ClusterError::Raft("no outcome".into())),
            })
        }
        KvRequest::Del { key, revision, .. } => conditional_json(match revision {
            None => Ok(store.delete(&key).await?),
            Some(rev) => store.compare_and_delete(&key, rev).await?,
        }),
        KvRequest::Ls {
            prefix,
            after,
            limit,
            ..
        } => {
            let (entries, more) = store.scan(&prefix, after.as_deref(), limit).await?;
            let entries: Vec<_> = entries.iter().map(entry_json).collect();
            ok(json!({ "entries": entries, "more": more }))
        }
        KvRequest::Watch {
            prefix,
            after,
            limit,
            wait,
            ..
        } => {
            let c = store.changes(&prefix, after, limit, wait).await?;
            let changes: Vec<_> = c.changes.iter().map(change_json).collect();
            ok(json!({ "changes": changes, "more": c.more, "revision": c.revision }))
        }
        KvRequest::Txn { txns, .. } => ok(outcomes_json(&store.transact(txns).await?)),
    })
}

/// Decides whether a request message may be served (its credentials, in
/// its headers); the refusal is the answer sent back.
pub type Authorize = Arc<dyn Fn(&Message) -> Result<(), Answer> + Send + Sync>;

/// Serves `<prefix>.kv.<op>` on `bus` (a queue group: one node answers
/// each request), each request on its own task, if `authorize` lets it.
pub async fn serve_bus(
    node: Arc<ClusterNode>,
    bus: Arc<dyn Bus>,
    prefix: String,
    authorize: Authorize,
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
            let slot = slots.clone().try_acquire_owned();
            let allowed = authorize(&message);
            tokio::spawn(
                async move {
                    let answer = match (allowed, slot) {
                        (Err(refused), _) => refused,
                        (Ok(()), Ok(_slot)) => handle(&node, &op, &message.payload).await,
                        (Ok(()), Err(_)) => fail(
                            503,
                            format!("{MAX_IN_FLIGHT} state requests in flight on this node; retry"),
                        ),
                    };
                    let mut payload = serde_json::to_vec(&answer.body).unwrap_or_default();
                    // JSON (base64, escapes) can outgrow a bus message where
                    // the bytes fit: say so rather than send nothing.
                    if payload.len() > MAX_REPLY_BYTES {
                        let too_big = fail(
                            413,
                            format!(
                                "the answer is {} bytes as JSON, over a bus message; ask for fewer entries (limit) or read this key over HTTP",
                                payload.len()
                            ),
                        );
                        payload = serde_json::to_vec(&too_big.body).unwrap_or_default();
                    }
                    if let Err(e) = bus.publish(Message::new(reply_to, payload)).await {
                        warn!(error = %e, "kv reply not sent");
                    }
                }
                .instrument(span),
            );
        }
    }))
}

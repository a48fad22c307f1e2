//! `/api/v1/kv/blob?namespace=<ns>&key=<key>`: blobs of the replicated state
//! streamed over HTTP (admin, like every kv route). `PUT` stores the body
//! (up to 1 GiB), `GET` streams it back with its size and SHA-256 in the
//! headers, `DELETE` removes it. Memory per request: a few chunks.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use chronicle_cluster::blob::{BlobError, MAX_BLOB_BYTES};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, ReadBuf};
use tracing::instrument;

use crate::http::{error, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlobParams {
    namespace: String,
    key: String,
}

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/kv/blob")
            .route(web::put().to(put))
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    );
}

fn blob_error(e: BlobError) -> HttpResponse {
    use chronicle_cluster::ClusterError;
    use chronicle_storage::StorageError;
    let status = match e {
        BlobError::Cluster(ClusterError::Storage(StorageError::InvalidRequest(m))) => {
            return error(StatusCode::BAD_REQUEST, "bad_request", m)
        }
        BlobError::Cluster(c) => return crate::http::cluster_error(c),
        BlobError::Key(_) | BlobError::Source(_) => StatusCode::BAD_REQUEST,
        BlobError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        BlobError::Conflict { .. } | BlobError::Replaced | BlobError::NotABlob(_) => {
            StatusCode::CONFLICT
        }
        BlobError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, "blob", e.to_string())
}

/// The request body as an `AsyncRead` on the cluster's runtime: the HTTP
/// worker forwards the payload through a small bounded channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
    /// Set once the whole body was forwarded: a channel that closes before
    /// (the request cancelled) is an error, never a shorter blob.
    complete: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.current = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    return Poll::Ready(
                        if self.complete.load(std::sync::atomic::Ordering::Acquire) {
                            Ok(())
                        } else {
                            Err(std::io::Error::other(
                                "the upload ended before its body did",
                            ))
                        },
                    )
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(self.current.len());
        let part = self.current.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

/// The checks every blob route makes first: admin APIs served, parameters
/// present, namespace not reserved; the store to use.
fn open(
    state: &AppState,
    params: Result<web::Query<BlobParams>, actix_web::Error>,
) -> Result<(BlobParams, chronicle_cluster::state::StateStore), Box<HttpResponse>> {
    if let Some(refused) = crate::http::admin_refused(state) {
        return Err(Box::new(refused));
    }
    let bad = |m: String| Box::new(error(StatusCode::BAD_REQUEST, "bad_request", m));
    let params = params.map_err(|e| bad(e.to_string()))?.into_inner();
    if params.namespace == chronicle_auth::NAMESPACE {
        return Err(bad(format!(
            "namespace {:?} is reserved (tokens: use /api/v1/auth/tokens)",
            params.namespace
        )));
    }
    let store = state
        .cluster
        .state(params.namespace.clone())
        .map_err(|e| bad(e.to_string()))?;
    Ok((params, store))
}

fn task_failed(e: tokio::task::JoinError) -> HttpResponse {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("blob task failed: {e}"),
    )
}

#[instrument(name = "http_blob_put", skip_all)]
async fn put(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    params: Result<web::Query<BlobParams>, actix_web::Error>,
    mut payload: web::Payload,
) -> HttpResponse {
    let (params, store) = match open(&state, params) {
        Ok(opened) => opened,
        Err(refused) => return *refused,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let key = params.key.clone();
    let complete = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
        complete: complete.clone(),
    };
    let writing = state
        .cluster_runtime
        .spawn(async move { store.put_blob(&key, reader).await });
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut received = 0u64;
    let mut whole = true;
    while let Some(chunk) = payload.next().await {
        let item = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        received += item.as_ref().map_or(0, |b| b.len() as u64);
        let failed = item.is_err();
        // Past the limit the writer refuses and cleans up: stop reading.
        if tx.send(item).await.is_err() || failed || received > MAX_BLOB_BYTES {
            whole = false;
            break;
        }
    }
    if whole && declared.is_none_or(|n| n == received) {
        complete.store(true, std::sync::atomic::Ordering::Release);
    }
    drop(tx);
    match writing.await {
        Ok(Ok(manifest)) => HttpResponse::Ok().json(json!({
            "namespace": params.namespace,
            "key": params.key,
            "size": manifest.size,
            "chunks": manifest.chunks,
            "sha256": manifest.sha256,
        })),
        Ok(Err(e)) => blob_error(e),
        Err(e) => task_failed(e),
    }
}

#[instrument(name = "http_blob_get", skip_all)]
async fn get(
    state: web::Data<AppState>,
    params: Result<web::Query<BlobParams>, actix_web::Error>,
) -> HttpResponse {
    let (params, store) = match open(&state, params) {
        Ok(opened) => opened,
        Err(refused) => return *refused,
    };
    let key = params.key.clone();
    let opened = state
        .cluster_runtime
        .spawn(async move { store.get_blob(&key).await })
        .await;
    let mut reader = match opened {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no blob {} in {}", params.key, params.namespace),
            )
        }
        Ok(Err(e)) => return blob_error(e),
        Err(e) => return task_failed(e),
    };
    let manifest = reader.manifest().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    state.cluster_runtime.spawn(async move {
        loop {
            let next = match reader.next_chunk().await {
                Ok(Some(chunk)) => Ok(Bytes::from(chunk)),
                Ok(None) => return,
                // The client sees a body shorter than Content-Length.
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("X-Chronicle-Blob-Sha256", manifest.sha256.clone()))
        .insert_header(("X-Chronicle-Blob-Size", manifest.size.to_string()))
        .no_chunking(manifest.size)
        .streaming(body)
}

#[instrument(name = "http_blob_delete", skip_all)]
async fn delete(
    state: web::Data<AppState>,
    params: Result<web::Query<BlobParams>, actix_web::Error>,
) -> HttpResponse {
    let (params, store) = match open(&state, params) {
        Ok(opened) => opened,
        Err(refused) => return *refused,
    };
    let key = params.key.clone();
    match state
        .cluster_runtime
        .spawn(async move { store.delete_blob(&key).await })
        .await
    {
        Ok(Ok(true)) => HttpResponse::Ok().json(json!({ "deleted": params.key })),
        Ok(Ok(false)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no blob {} in {}", params.key, params.namespace),
        ),
        Ok(Err(e)) => blob_error(e),
        Err(e) => task_failed(e),
    }
}

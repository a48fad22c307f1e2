//! `/api/v1/auth/tokens`: create, list and revoke API tokens (admin only,
//! enforced by the HTTP middleware like every admin route).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chronicle_auth::{AuthError, Role, Scopes, TokenRecord};
use serde::Deserialize;
use serde_json::json;
use tracing::instrument;

use crate::http::{error, read_body, AppState};

/// Largest token request body, bytes.
const MAX_TOKEN_REQUEST_BYTES: usize = 64 << 10;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/auth/tokens", web::post().to(create))
        .route("/api/v1/auth/tokens", web::get().to(list))
        .route("/api/v1/auth/tokens/{id}", web::delete().to(revoke));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    role: Role,
    #[serde(default)]
    scopes: Scopes,
    /// How long the token lives (`"30d"`, `"12h"`); absent: until revoked.
    #[serde(default)]
    ttl: Option<String>,
}

fn auth_error(e: AuthError) -> HttpResponse {
    error(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.code(),
        e.to_string(),
    )
}

/// A record as shown to operators: everything but the secret's hash.
pub fn record_json(r: &TokenRecord) -> serde_json::Value {
    json!({
        "id": r.id,
        "name": r.name,
        "role": r.role,
        "scopes": r.scopes,
        "created_ms": r.created_ms,
        "expires_ms": r.expires_ms,
    })
}

/// Runs a registry call on the cluster's runtime (its state store lives there).
async fn on_cluster<T: Send + 'static>(
    state: &AppState,
    f: impl std::future::Future<Output = Result<T, AuthError>> + Send + 'static,
) -> Result<T, HttpResponse> {
    match state.cluster_runtime.spawn(f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(auth_error(e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("token task failed: {e}"),
        )),
    }
}

#[instrument(name = "http_token_create", skip_all)]
async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let body = match read_body(&req, payload, MAX_TOKEN_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request: CreateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("token request: {e}"),
            )
        }
    };
    // A scoped admin makes only tokens within its own scopes: scopes must
    // not be a way to widen rights.
    if let Some(creator) =
        actix_web::HttpMessage::extensions(&req).get::<chronicle_auth::Principal>()
    {
        let (mine, theirs) = (&creator.scopes, &request.scopes);
        let features_ok = mine.features.is_empty()
            || (!theirs.features.is_empty()
                && theirs.features.iter().all(|f| mine.features.contains(f)));
        let prefixes_ok = mine.metric_prefixes.is_empty()
            || (!theirs.metric_prefixes.is_empty()
                && theirs.metric_prefixes.iter().all(|p| {
                    mine.metric_prefixes
                        .iter()
                        .any(|m| p.starts_with(m.as_str()))
                }));
        if !features_ok || !prefixes_ok {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {} may only make tokens within its own scopes {:?}",
                    creator.id, creator.scopes
                ),
            );
        }
    }
    let ttl = match request
        .ttl
        .as_deref()
        .map(|t| humantime::parse_duration(t.trim()))
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("ttl: {e}")),
    };
    let auth = state.auth.clone();
    let made = on_cluster(&state, async move {
        auth.create(&request.name, request.role, request.scopes, ttl)
            .await
    })
    .await;
    match made {
        Ok(issued) => {
            let mut body = record_json(&issued.record);
            body["token"] = json!(issued.token);
            HttpResponse::Created().json(body)
        }
        Err(resp) => resp,
    }
}

#[instrument(name = "http_token_list", skip_all)]
async fn list(state: web::Data<AppState>) -> HttpResponse {
    let auth = state.auth.clone();
    match on_cluster(&state, async move { auth.list().await }).await {
        Ok(records) => HttpResponse::Ok()
            .json(json!({ "tokens": records.iter().map(record_json).collect::<Vec<_>>() })),
        Err(resp) => resp,
    }
}

#[instrument(name = "http_token_revoke", skip_all)]
async fn revoke(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let (auth, id) = (state.auth.clone(), id.into_inner());
    let shown = id.clone();
    match on_cluster(&state, async move { auth.revoke(&id).await }).await {
        Ok(true) => HttpResponse::Ok().json(json!({ "revoked": shown })),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token {shown}"),
        ),
        Err(resp) => resp,
    }
}

//! The config API as a feature: run-time settings stored in the replicated
//! state and applied on every node (`chronicle_platform::settings`), served
//! on `/api/config` (reading: read access; changing: admin) and published in
//! the services for features that tune the node (remediation's config
//! actions). docs/http-api.md, "Run-time settings".

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use async_trait::async_trait;
use chronicle_actor_runtime::Restarts;
use chronicle_auth::Principal;
use chronicle_platform::settings::{RuntimeSettings, Setting, Settings, SettingsError};
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use crate::config::NodeConfig;

pub struct SettingsFeature {
    raw_retention: Option<String>,
}

impl SettingsFeature {
    pub fn new(config: &NodeConfig) -> Self {
        Self {
            raw_retention: config.retention.raw.clone(),
        }
    }
}

/// Bounds of `storage.max_chunk_samples`: below 64 a chunk's header
/// outweighs its samples; above 65,536 one series' head holds 1 MiB.
pub const CHUNK_SAMPLES: std::ops::RangeInclusive<usize> = 64..=65_536;
/// Bounds of `storage.compression_level` (zstd's levels without its
/// "ultra" ones, which need far more memory to decode).
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// A whole number within `bounds`, or why not (`what` names it).
fn parse_within<T>(
    text: &str,
    bounds: &std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match text.trim().parse::<T>() {
        Ok(n) if bounds.contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?}: {what}, {} to {}",
            bounds.start(),
            bounds.end()
        )),
    }
}

fn parse_chunk_samples(text: &str) -> Result<usize, String> {
    parse_within(text, &CHUNK_SAMPLES, "samples per chunk")
}

fn parse_compression_level(text: &str) -> Result<i32, String> {
    parse_within(text, &COMPRESSION_LEVELS, "a zstd level")
}

/// `retention.raw`: a duration, or `none` (kept for ever).
fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "none" | "forever" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(3600) => Ok(Some(d)),
            Ok(_) => Err("at least 1h (data is deleted in whole 2-hour chunk windows)".into()),
            Err(e) => Err(format!("{t:?}: {e} (a duration such as 30d, or none)")),
        },
    }
}

impl Feature for SettingsFeature {
    fn name(&self) -> &'static str {
        "config"
    }

    fn describe(&self) -> &'static str {
        "run-time settings (retention, chunk size, compression) changed through /api/config for every node, with a history"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![
            // Reading settings and their history; changing one is an admin's.
            chronicle_platform::RouteAccess::exact("/api/config", chronicle_platform::Access::Read)
                .methods(chronicle_platform::Methods::Get),
            chronicle_platform::RouteAccess::exact(
                "/api/config/history",
                chronicle_platform::Access::Read,
            )
            .methods(chronicle_platform::Methods::Get),
            chronicle_platform::RouteAccess::prefix(
                "/api/config",
                chronicle_platform::Access::Admin,
            ),
        ]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        if section.is_some() {
            return Err(FeatureError::Config {
                feature: "config",
                message: "the config API has no settings".into(),
            });
        }
        Ok(Box::new(SettingsPlan {
            raw_retention: self.raw_retention.clone(),
        }))
    }
}

struct SettingsPlan {
    raw_retention: Option<String>,
}

#[async_trait(?Send)]
impl Planned for SettingsPlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let cluster = cx.cluster.clone();
        let retention = Setting::new(
            "retention.raw",
            "how long raw data is kept (a duration such as 30d, or none)",
            self.raw_retention.unwrap_or_else(|| "none".into()),
            |v| parse_retention(v).map(|_| ()),
            move |v| {
                // Checked before it was stored and again before applied.
                let raw = v.map(|v| parse_retention(v).unwrap_or(None));
                cluster.set_raw_retention(raw);
            },
        );
        let shard = cx.cluster.shard_config();
        let tuning = shard.tuning.clone();
        let chunk_samples = Setting::new(
            "storage.max_chunk_samples",
            "a series' head is cut into a chunk at this many samples (memory per active series against compression)",
            shard.max_chunk_samples.to_string(),
            |v| parse_chunk_samples(v).map(|_| ()),
            move |v| tuning.set_max_chunk_samples(v.and_then(|v| parse_chunk_samples(v).ok())),
        );
        let tuning = shard.tuning.clone();
        let compression = Setting::new(
            "storage.compression_level",
            "zstd level of the chunk encoder's byte-oriented candidate (chunks cut from now on)",
            shard.encode.zstd_level.to_string(),
            |v| parse_compression_level(v).map(|_| ()),
            move |v| tuning.set_zstd_level(v.and_then(|v| parse_compression_level(v).ok())),
        );
        let settings: Settings = Arc::new(RuntimeSettings::new(
            cx.state("config")?,
            cx.cluster_runtime.clone(),
            cx.node_id,
            vec![retention, chunk_samples, compression],
        ));
        cx.services.provide(settings.clone());
        let for_actor = settings.clone();
        let (addr, arbiter) = cx.supervise("config", move |_, restarts| Follower {
            settings: for_actor,
            restarts,
        });
        Ok(Arc::new(RunningSettings {
            settings: web::Data::new(settings),
            _actor: addr,
            arbiter: ArbiterSlot::new(arbiter),
        }))
    }
}

/// Applies the stored settings on this node, and each change.
struct Follower {
    settings: Settings,
    restarts: Restarts,
}

impl Actor for Follower {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let settings = self.settings.clone();
        let task = async move {
            loop {
                if let Err(e) = settings.follow().await {
                    warn!(error = %e, "config: following the settings stopped; starting again");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        ctx.spawn(task.into_actor(self));
    }
}

impl Supervised for Follower {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.restarts.pause(ctx);
    }
}

struct RunningSettings {
    settings: web::Data<Settings>,
    _actor: Addr<Follower>,
    arbiter: ArbiterSlot,
}

#[async_trait(?Send)]
impl Running for RunningSettings {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.settings.clone())
            .route("/api/config", web::get().to(list))
            .route("/api/config/history", web::get().to(history))
            .route("/api/config/{name}", web::put().to(set))
            .route("/api/config/{name}", web::delete().to(unset));
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

fn settings_error(e: SettingsError) -> HttpResponse {
    let status = match &e {
        SettingsError::Unknown(_) => StatusCode::NOT_FOUND,
        SettingsError::Invalid { .. } => StatusCode::BAD_REQUEST,
        SettingsError::Conflict { .. } => StatusCode::CONFLICT,
        SettingsError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::CONFLICT => "conflict",
        _ => "unavailable",
    };
    error(status, code, e.to_string())
}

fn principal(req: &HttpRequest) -> String {
    req.extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "anonymous".into())
}

#[tracing::instrument(name = "config_list", skip_all)]
async fn list(settings: web::Data<Settings>) -> HttpResponse {
    match settings.list().await {
        Ok(s) => HttpResponse::Ok().json(json!({"settings": s})),
        Err(e) => settings_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    value: String,
    #[serde(default)]
    reason: String,
}

#[tracing::instrument(name = "config_set", skip_all, fields(name = %name))]
async fn set(
    settings: web::Data<Settings>,
    name: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let body: SetBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("a JSON body {{\"value\": \"...\", \"reason\": \"...\"}}: {e}"),
            )
        }
    };
    match settings
        .set(
            &name,
            Some(&body.value),
            &principal(&req),
            &body.reason,
            None,
        )
        .await
    {
        Ok(change) => HttpResponse::Ok().json(change),
        Err(e) => settings_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsetQuery {
    #[serde(default)]
    reason: String,
}

#[tracing::instrument(name = "config_unset", skip_all, fields(name = %name))]
async fn unset(
    settings: web::Data<Settings>,
    name: web::Path<String>,
    req: HttpRequest,
    query: Result<web::Query<UnsetQuery>, actix_web::Error>,
) -> HttpResponse {
    let reason = match query {
        Ok(q) => q.into_inner().reason,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    match settings
        .set(&name, None, &principal(&req), &reason, None)
        .await
    {
        Ok(change) => HttpResponse::Ok().json(change),
        Err(e) => settings_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// At or after (ms); default: 30 days ago.
    since: Option<i64>,
    limit: Option<usize>,
}

#[tracing::instrument(name = "config_history", skip_all)]
async fn history(
    settings: web::Data<Settings>,
    query: Result<web::Query<HistoryQuery>, actix_web::Error>,
) -> HttpResponse {
    let q = match query {
        Ok(q) => q.into_inner(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return error(StatusCode::BAD_REQUEST, "bad_request", "limit: 1 to 1000");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let since = q.since.unwrap_or(now - 30 * 86_400_000);
    match settings.history(since, limit).await {
        Ok((changes, more)) => HttpResponse::Ok().json(json!({"changes": changes, "more": more})),
        Err(e) => settings_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_values() {
        assert_eq!(parse_retention("none"), Ok(None));
        assert_eq!(
            parse_retention("30d"),
            Ok(Some(Duration::from_secs(30 * 86_400)))
        );
        assert!(parse_retention("10m").is_err());
        assert!(parse_retention("soon").is_err());
        assert!(parse_retention("").is_err());
    }

    #[test]
    fn storage_values() {
        assert_eq!(parse_chunk_samples("512"), Ok(512));
        for bad in ["63", "65537", "-1", "lots", ""] {
            assert!(parse_chunk_samples(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_compression_level("19"), Ok(19));
        for bad in ["0", "20", "-5", "high"] {
            assert!(parse_compression_level(bad).is_err(), "{bad}");
        }
    }
}

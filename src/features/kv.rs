//! The replicated state as a feature: `<prefix>.kv.<op>` on the bus and
//! `POST /api/v1/kv/<op>`, both admin APIs (docs/state.md).

use std::sync::Arc;

use actix_web::web;
use async_trait::async_trait;
use chronicle_auth::Access;
use chronicle_platform::{Feature, FeatureContext, FeatureError, Planned, Running};

use crate::config::NodeConfig;

pub struct KvFeature {
    admin_api: bool,
}

impl KvFeature {
    pub fn new(config: &NodeConfig) -> Self {
        Self {
            admin_api: config.enable_admin_api,
        }
    }
}

impl Feature for KvFeature {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn describe(&self) -> &'static str {
        "the replicated state as JSON for other services and operators (admin)"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![chronicle_platform::RouteAccess::prefix(
            "/api/v1/kv/",
            chronicle_platform::Access::Admin,
        )]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        if section.is_some() {
            return Err(FeatureError::Config {
                feature: "kv",
                message: "kv has no settings (it is served with --auth or --enable-admin-api)"
                    .into(),
            });
        }
        Ok(Box::new(KvPlan {
            admin_api: self.admin_api,
        }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}.kv.*")]
    }
}

struct KvPlan {
    admin_api: bool,
}

#[async_trait(?Send)]
impl Planned for KvPlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let service = if self.admin_api || cx.auth.is_enabled() {
            // With authentication on, a bus request needs an admin token in
            // its Authorization header; with it off, the admin API switch.
            let checker = cx.auth.clone();
            let authorize: chronicle_kv::service::Authorize = Arc::new(move |message| {
                checker
                    .authenticate(message.headers.get("Authorization").map(str::as_bytes))
                    .and_then(|who| who.authorize(Access::Admin, "kv"))
                    .map_err(|e| chronicle_kv::fail(e.status(), e.to_string()))
            });
            let serving = cx
                .cluster_runtime
                .spawn(chronicle_kv::service::serve_bus(
                    cx.cluster.clone(),
                    cx.bus.clone(),
                    cx.prefix.clone(),
                    authorize,
                ))
                .await
                .map_err(|e| FeatureError::Start {
                    feature: "kv",
                    message: e.to_string(),
                })?
                .map_err(|e| FeatureError::Start {
                    feature: "kv",
                    message: e.to_string(),
                })?;
            Some(serving)
        } else {
            None
        };
        Ok(Arc::new(RunningKv {
            service: parking_lot::Mutex::new(service),
        }))
    }
}

struct RunningKv {
    service: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait(?Send)]
impl Running for RunningKv {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        // Before `{op}`: its path would match `blob` too.
        cfg.configure(crate::blob_http::configure)
            .route("/api/v1/kv/{op}", web::post().to(crate::http::kv));
    }

    async fn stop(&self) {
        let task = self.service.lock().take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

//! Query as a feature: the query actor on `<prefix>.query`, and the query
//! routes (JSON, CQL, the Prometheus HTTP API).

use std::sync::Arc;

use actix::Addr;
use actix_web::web;
use async_trait::async_trait;
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use chronicle_query::{DataSource, QueryActor, QueryConfig, QueryGate};

use crate::cluster_io::ClusterSource;
use crate::config::NodeConfig;

pub struct QueryFeature {
    config: QueryConfig,
}

impl QueryFeature {
    pub fn new(config: &NodeConfig) -> Self {
        Self {
            config: config.query_config(),
        }
    }
}

impl Feature for QueryFeature {
    fn name(&self) -> &'static str {
        "query"
    }

    fn describe(&self) -> &'static str {
        "queries: JSON selections, PromQL, SQL and CQL on the bus and HTTP, the Prometheus API"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![
            chronicle_platform::RouteAccess::exact("/query", chronicle_platform::Access::Read),
            chronicle_platform::RouteAccess::prefix(
                "/api/v1/cql",
                chronicle_platform::Access::Read,
            ),
            // Deleting series, cleaning tombstones: an admin's.
            chronicle_platform::RouteAccess::prefix(
                "/api/v1/admin/",
                chronicle_platform::Access::Admin,
            ),
            // The Prometheus HTTP API's read routes (the most general rule:
            // other features' rules under /api/v1/ are more specific).
            chronicle_platform::RouteAccess::prefix("/api/v1/", chronicle_platform::Access::Read),
        ]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        super::no_section(self.name(), section)?;
        Ok(Box::new(QueryPlan {
            config: self.config.clone(),
        }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}.query")]
    }
}

struct QueryPlan {
    config: QueryConfig,
}

#[async_trait(?Send)]
impl Planned for QueryPlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        let source: Arc<dyn DataSource> = Arc::new(ClusterSource {
            cluster: cx.cluster.clone(),
            runtime: cx.cluster_runtime.clone(),
        });
        // One gate: the actor admits bus requests through it, the HTTP
        // routes their queries (docs/architecture.md).
        let gate = QueryGate::new(source, self.config);
        let bus = cx.bus.clone();
        let actor_gate = gate.clone();
        let (addr, arbiter) = cx.supervise(chronicle_query::ACTOR_NAME, move |_, restarts| {
            QueryActor::with_gate(bus, actor_gate).with_restarts(restarts)
        });
        addr.send(chronicle_query::Ping)
            .await
            .map_err(|_| FeatureError::Start {
                feature: "query",
                message: "the actor did not answer".into(),
            })?;
        cx.services.provide(addr.clone());
        cx.services.provide(gate);
        Ok(Arc::new(RunningQuery {
            addr,
            arbiter: ArbiterSlot::new(arbiter),
        }))
    }
}

struct RunningQuery {
    addr: Addr<QueryActor>,
    arbiter: ArbiterSlot,
}

#[async_trait(?Send)]
impl Running for RunningQuery {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.route("/query", web::post().to(crate::http::query))
            .route("/api/v1/cql", web::post().to(crate::http::cql_query))
            .route(
                "/api/v1/cql/validate",
                web::post().to(crate::http::cql_validate),
            )
            .route(
                "/api/v1/cql/explain",
                web::post().to(crate::http::cql_explain),
            )
            .configure(crate::prom_api::configure);
    }

    async fn stop_intake(&self) {
        let _ = self.addr.send(chronicle_query::StopIntake).await;
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

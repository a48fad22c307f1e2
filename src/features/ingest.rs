//! Ingest as a feature: the ingest actor on `<prefix>.ingest.>`, its storage
//! writer, and the write routes (line protocol, remote write, OTLP).

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, SyncArbiter};
use actix_web::web;
use async_trait::async_trait;
use chronicle_ingest::{IngestActor, IngestConfig, PointSink, StorageWriter};
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use tracing::{info, warn};

use crate::cluster_io::ClusterSink;
use crate::config::NodeConfig;

pub struct IngestFeature {
    config: IngestConfig,
}

impl IngestFeature {
    pub fn new(config: &NodeConfig) -> Self {
        Self {
            config: config.ingest_config(),
        }
    }
}

impl Feature for IngestFeature {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn describe(&self) -> &'static str {
        "writes: line protocol and JSON on the bus and HTTP, Prometheus remote write, OTLP"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        // Writers write; a token limited to metric prefixes writes only
        // under them (checked by the handler, per request).
        ["/write", "/api/v2/write", "/api/v1/write", "/v1/metrics"]
            .map(|path| {
                chronicle_platform::RouteAccess::exact(path, chronicle_platform::Access::Write)
            })
            .into()
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        super::no_section(self.name(), section)?;
        Ok(Box::new(IngestPlan {
            config: self.config.clone(),
        }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}.ingest.>")]
    }
}

struct IngestPlan {
    config: IngestConfig,
}

#[async_trait(?Send)]
impl Planned for IngestPlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        chronicle_ingest::register_metrics();
        let sink: Arc<dyn PointSink> = Arc::new(ClusterSink {
            cluster: cx.cluster.clone(),
            runtime: cx.cluster_runtime.clone(),
        });
        let writer = SyncArbiter::start(1, move || StorageWriter::new(sink.clone()));
        let (bus, config) = (cx.bus.clone(), self.config);
        let (addr, arbiter) = cx.supervise(chronicle_ingest::ACTOR_NAME, move |_, restarts| {
            IngestActor::new(bus, writer, config).with_restarts(restarts)
        });
        // It subscribes in `started`: this returns once its subject is live.
        addr.send(chronicle_ingest::Ping)
            .await
            .map_err(|_| FeatureError::Start {
                feature: "ingest",
                message: "the actor did not answer".into(),
            })?;
        cx.services.provide(addr.clone());
        Ok(Arc::new(RunningIngest {
            addr,
            arbiter: ArbiterSlot::new(arbiter),
        }))
    }
}

struct RunningIngest {
    addr: Addr<IngestActor>,
    arbiter: ArbiterSlot,
}

#[async_trait(?Send)]
impl Running for RunningIngest {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.route("/write", web::post().to(crate::http::write))
            .route("/api/v2/write", web::post().to(crate::http::write))
            .route("/api/v1/write", web::post().to(crate::http::remote_write))
            .route("/v1/metrics", web::post().to(crate::http::otlp_metrics));
    }

    async fn stop_intake(&self) {
        // Drained subscriptions: the server delivers nothing new; what was
        // already delivered is written and acknowledged on the open connection.
        let _ = self.addr.send(chronicle_ingest::StopIntake).await;
    }

    /// Lets the actor consume what the bus had buffered, then write it.
    async fn finish(&self, deadline: tokio::time::Instant) {
        let draining = std::time::Instant::now();
        loop {
            let _ = self.addr.send(chronicle_ingest::Flush).await;
            let _ = self.addr.send(chronicle_ingest::Ping).await;
            let idle = self
                .addr
                .send(chronicle_ingest::IsDrained)
                .await
                .unwrap_or(true);
            if idle {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                // Bounded by the bus's subscription capacity; a debug build
                // or a slow disk can still take longer than this.
                warn!(
                    "intake not all written before the shutdown deadline; messages still queued \
                     are dropped unacknowledged (publishers waiting for an ack see none)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(took = ?draining.elapsed(), "intake written");
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

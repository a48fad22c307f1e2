//! A Chronicle node: the bus, the storage shard, the supervised actors and the HTTP
//! server, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Arbiter, Supervisor, SyncArbiter};
use chronicle_bus::{Bus, LocalBus, NatsBus};
use chronicle_ingest::{IngestActor, StorageWriter};
use chronicle_query::QueryActor;
use chronicle_storage::{Shard, ShardConfig};
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::http;
use crate::metrics::{MeteredBus, BUS_CONNECTED};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage at {path}: {source}")]
    Storage {
        path: String,
        source: chronicle_storage::StorageError,
    },
    #[error("bus: {0}")]
    Bus(#[from] chronicle_bus::BusError),
    #[error("HTTP server on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {0} actor did not start")]
    ActorStart(&'static str),
}

/// A running node. Must be started inside an actix `System`.
pub struct Node {
    pub bus: Arc<dyn Bus>,
    pub shard: Arc<Shard>,
    pub ingest: Addr<IngestActor>,
    pub query: Addr<QueryActor>,
    /// The address the HTTP server listens on (the real port when 0 was asked).
    pub http_addr: SocketAddr,
    /// `local` or `nats`.
    pub bus_kind: &'static str,
    /// Subjects are `<prefix>.ingest.>` and `<prefix>.query`.
    pub subject_prefix: String,
    http: actix_web::dev::ServerHandle,
    arbiters: Vec<Arbiter>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        chronicle_ingest::register_metrics();
        let (raw_bus, bus_kind): (Arc<dyn Bus>, _) = if config.nats.urls.is_empty() {
            (Arc::new(LocalBus::default()), "local")
        } else {
            let nats = Arc::new(NatsBus::connect(config.nats_options()).await?);
            crate::metrics::watch_nats(&nats);
            (nats, "nats")
        };
        BUS_CONNECTED.set(1);
        let bus: Arc<dyn Bus> = Arc::new(MeteredBus::new(raw_bus));

        let shard_config = ShardConfig {
            sync_writes: config.sync_writes,
            decoded_cache_bytes: config.decoded_cache_bytes,
            ..ShardConfig::default()
        };
        let path = config.data_dir.clone();
        let shard = tokio::task::spawn_blocking(move || Shard::open(&path, shard_config))
            .await
            .map_err(|_| NodeError::ActorStart("storage"))?
            .map_err(|source| NodeError::Storage {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        let shard = Arc::new(shard);

        let writer_shard = shard.clone();
        let writer = SyncArbiter::start(1, move || StorageWriter::new(writer_shard.clone()));

        // Each actor on its own arbiter (thread): a busy ingest never delays queries.
        let ingest_arbiter = Arbiter::new();
        let ingest_bus = bus.clone();
        let ingest_config = config.ingest_config();
        chronicle_actor_runtime::announce(chronicle_ingest::ACTOR_NAME);
        chronicle_actor_runtime::announce(chronicle_query::ACTOR_NAME);
        let ingest = Supervisor::start_in_arbiter(&ingest_arbiter.handle(), move |_| {
            IngestActor::new(ingest_bus, writer, ingest_config)
        });
        let query_arbiter = Arbiter::new();
        let query_bus = bus.clone();
        let query_shard = shard.clone();
        let query_config = config.query_config();
        let query = Supervisor::start_in_arbiter(&query_arbiter.handle(), move |_| {
            QueryActor::new(query_bus, query_shard, query_config)
        });
        // Both subscribe in `started` before handling messages: these return once
        // the subjects are live.
        ingest
            .send(chronicle_ingest::Ping)
            .await
            .map_err(|_| NodeError::ActorStart("ingest"))?;
        query
            .send(chronicle_query::Ping)
            .await
            .map_err(|_| NodeError::ActorStart("query"))?;
        bus.flush().await?;

        let state = http::AppState {
            ingest: ingest.clone(),
            query: query.clone(),
            bus_kind,
            max_body_bytes: config.max_body_bytes,
            write_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_writes.max(1),
            )),
        };
        let (server, http_addr) =
            http::serve(state, config.http_addr).map_err(|source| NodeError::Http {
                addr: config.http_addr,
                source,
            })?;
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                warn!(error = %e, "HTTP server stopped with an error");
            }
        });
        info!(%http_addr, bus = bus_kind, data_dir = %config.data_dir.display(), "node started");
        Ok(Self {
            bus,
            shard,
            ingest,
            query,
            http_addr,
            bus_kind,
            subject_prefix: config.subject_prefix.clone(),
            http: handle,
            arbiters: vec![ingest_arbiter, query_arbiter],
        })
    }

    /// Graceful shutdown: stop intake (HTTP, then the bus subscriptions), write what
    /// was received, cut the head into chunks, close RocksDB.
    pub async fn shutdown(self) {
        info!("shutting down: stopping intake");
        self.http.stop(true).await;
        if let Err(e) = self.bus.drain().await {
            warn!(error = %e, "bus drain failed");
        }
        // Let the ingest actor consume what the bus had buffered, then write it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let _ = self.ingest.send(chronicle_ingest::Flush).await;
            let _ = self.ingest.send(chronicle_ingest::Ping).await;
            let idle = self
                .ingest
                .send(chronicle_ingest::IsDrained)
                .await
                .unwrap_or(true);
            if idle || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let shard = self.shard.clone();
        match tokio::task::spawn_blocking(move || shard.flush()).await {
            Ok(Ok(report)) => info!(chunks = report.chunks, "head flushed into chunks"),
            Ok(Err(e)) => warn!(error = %e, "final flush failed; the log replays on restart"),
            Err(_) => warn!("final flush panicked; the log replays on restart"),
        }
        // Close RocksDB here, in order: stop the actors' threads (dropping the writer's
        // last handle ends its thread), then drop the last reference to the shard.
        // Leaving it open while the process exits races RocksDB's background threads
        // against static destructors.
        let Node {
            shard,
            arbiters,
            ingest,
            query,
            bus,
            ..
        } = self;
        drop((ingest, query, bus));
        let _ = tokio::task::spawn_blocking(move || {
            for arbiter in arbiters {
                arbiter.stop();
                let _ = arbiter.join();
            }
        })
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&shard) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match Arc::try_unwrap(shard) {
            Ok(shard) => {
                let _ = tokio::task::spawn_blocking(move || drop(shard)).await;
            }
            Err(_) => warn!("storage still referenced at shutdown; closing at exit"),
        }
        BUS_CONNECTED.set(0);
        info!("node stopped");
    }
}

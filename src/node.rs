//! A Chronicle node: the bus, its member of the cluster (Raft groups whose
//! state machines are the storage shards), the supervised actors and the HTTP
//! server, started and stopped together.
//!
//! A node is always a cluster member: alone by default (one-voter groups), so
//! every write takes the same path, through the Raft log, on one node or many.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use chronicle_auth::Authenticator;
use chronicle_bus::{Bus, FaultController, FaultyBus, LocalBus, NatsBus, SignedBus};
use chronicle_cluster::{ClusterConfig, ClusterError, ClusterNode};
use chronicle_ingest::IngestActor;
use chronicle_platform::{FeatureContext, Features, Plan, Services};
use chronicle_query::{QueryActor, QueryGate};
use chronicle_storage::{Point, Shard, ShardConfig};
use tracing::{info, warn};

use crate::config::{ClusterSettings, NodeConfig};
use crate::http;
use crate::metrics::{MeteredBus, BUS_CONNECTED};

/// Where a data directory records the cluster it was created for.
const IDENTITY_FILE: &str = "cluster.json";

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
    #[error("{0}")]
    Config(String),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// The cluster identity of `dir`: recorded at creation, and what a restart
/// must keep (placement derives from it). Settings given again must match;
/// none given means "as recorded".
fn settle_identity(dir: &Path, given: &ClusterSettings) -> Result<ClusterSettings, NodeError> {
    let path = dir.join(IDENTITY_FILE);
    let mut wanted = given.clone();
    // A joining node learns the shard count from the cluster.
    wanted.shards = (!given.join).then(|| given.shard_count());
    wanted.initial_nodes = given.members();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let recorded: ClusterSettings = serde_json::from_slice(&bytes)
                .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
            let same_joiner = wanted.join && recorded.join && wanted.node_id == recorded.node_id;
            // Only the identity counts: tunables (snapshot size, feed, secret)
            // may change between restarts.
            let identity = |s: &ClusterSettings| {
                (
                    s.node_id,
                    s.initial_nodes.clone(),
                    s.shards,
                    s.replication,
                    s.join,
                )
            };
            let unset = identity(given) == identity(&ClusterSettings::default());
            if unset || identity(&wanted) == identity(&recorded) || same_joiner {
                Ok(recorded)
            } else {
                Err(NodeError::Config(format!(
                    "{} holds node {} of cluster {:?} ({} shards, {} replicas); start it with those settings or none (asked: node {} of {:?}, {} shards, {} replicas)",
                    dir.display(),
                    recorded.node_id,
                    recorded.initial_nodes,
                    recorded.shard_count(),
                    recorded.replication,
                    wanted.node_id,
                    wanted.initial_nodes,
                    wanted.shard_count(),
                    wanted.replication
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("CURRENT").exists() {
                return Err(NodeError::Config(format!(
                    "{} holds a storage shard of an earlier layout (no {IDENTITY_FILE}); start with an empty --data-dir",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| NodeError::Config(format!("data directory {}: {e}", dir.display())))?;
            let text = serde_json::to_vec_pretty(&wanted).expect("settings serialize");
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
            Ok(wanted)
        }
        Err(e) => Err(NodeError::Config(format!("{}: {e}", path.display()))),
    }
}

fn record_identity(dir: &Path, identity: &ClusterSettings) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| NodeError::Config(format!("data directory {}: {e}", dir.display())))?;
    let path = dir.join(IDENTITY_FILE);
    let text = serde_json::to_vec_pretty(identity).expect("settings serialize");
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
}

/// The HTTPS listener's configuration from PEM files (ring's primitives,
/// the same provider the NATS client uses).
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "TLS certificate {}: no certificate in it",
            cert.display()
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| format!("TLS certificate and key: {e}"))
}

/// The authenticator: tokens from the replicated state with `--auth`.
async fn start_auth(
    config: &NodeConfig,
    cluster: &Arc<ClusterNode>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Arc<Authenticator>, NodeError> {
    if !config.auth.enabled {
        return Ok(Authenticator::disabled());
    }
    let bootstrap = config.bootstrap_token().map_err(NodeError::Config)?;
    if bootstrap.is_none() {
        warn!("authentication is on without a bootstrap token: only stored tokens get in");
    }
    let store = cluster.state(chronicle_auth::NAMESPACE)?;
    runtime
        .spawn(async move { Authenticator::start(store, bootstrap.as_deref()) })
        .await
        .map_err(|_| NodeError::ActorStart("auth"))?
        .map_err(|e| NodeError::Config(e.to_string()))
}

/// A start that failed after the cluster started: stops the cluster (its
/// RocksDB closes) and its runtime, off the async workers; returns `error`.
async fn abandon(
    error: NodeError,
    cluster: Arc<ClusterNode>,
    runtime: tokio::runtime::Runtime,
) -> NodeError {
    warn!(%error, "start failed; stopping the cluster");
    let _ = runtime
        .spawn(async move {
            cluster.shutdown().await;
        })
        .await;
    let _ =
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5))).await;
    error
}

/// A node's name in the fault wrapper (`Chronicle-From` headers).
pub fn fault_name(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// A running node. Must be started inside an actix `System`.
pub struct Node {
    pub bus: Arc<dyn Bus>,
    /// This node's member of the cluster; runs on `runtime`.
    pub cluster: Arc<ClusterNode>,
    /// The ingest and query actors (`None` when their feature is disabled).
    pub ingest: Option<Addr<IngestActor>>,
    pub query: Option<Addr<QueryActor>>,
    /// The started features, in start order.
    pub features: Features,
    /// The address the HTTP server listens on (the real port when 0 was asked).
    pub http_addr: SocketAddr,
    /// `local` or `nats`.
    pub bus_kind: &'static str,
    /// Subjects are `<prefix>.ingest.>` and `<prefix>.query`.
    pub subject_prefix: String,
    http: actix_web::dev::ServerHandle,
    /// The cluster's own runtime (actix's is single-threaded per arbiter;
    /// Raft's timers must not wait behind an actor).
    runtime: Option<tokio::runtime::Runtime>,
    /// Readiness turns false once shutdown begins.
    shutting_down: Arc<std::sync::atomic::AtomicBool>,
    /// Raft's and the cluster's own connection (the client bus on the
    /// in-process bus).
    cluster_bus: Arc<dyn Bus>,
}

/// How long a stopping node lets in-flight HTTP requests finish.
const HTTP_DRAIN: Duration = Duration::from_secs(5);
/// How long a stopping node lets in-flight requests and its features'
/// intake finish, from the moment it starts stopping.
const FINISH_WITHIN: Duration = Duration::from_secs(12);
/// How long a stopping node waits for its bus connection to drain.
const BUS_DRAIN: Duration = Duration::from_secs(5);
impl Node {
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        // Every feature checks its configuration before anything starts.
        let registry = crate::features::registry(&config);
        let plan =
            Plan::new(&registry, &config.features).map_err(|e| NodeError::Config(e.to_string()))?;
        let access =
            Arc::new(http::access_table(&registry).map_err(|e| NodeError::Config(e.to_string()))?);
        for (subject, owner) in http::subject_table(&registry, &config.subject_prefix)
            .map_err(|e| NodeError::Config(e.to_string()))?
        {
            tracing::debug!(subject, owner, "serves");
        }
        // The certificate is checked before anything starts.
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(tls_config(cert, key).map_err(NodeError::Config)?),
            _ => None,
        };
        if let Some(variant) = config.unsafe_variant {
            if !config.fault_injection {
                return Err(NodeError::Config(
                    "--unsafe-variant needs --allow-fault-injection (chaos runs only)".into(),
                ));
            }
            warn!(
                ?variant,
                "KNOWN-BAD VARIANT: this node breaks its guarantees on purpose"
            );
        }
        let identity = {
            let (dir, given) = (config.data_dir.clone(), config.cluster.clone());
            tokio::task::spawn_blocking(move || settle_identity(&dir, &given))
                .await
                .map_err(|_| NodeError::ActorStart("storage"))??
        };
        let (raw_bus, raw_cluster_bus, bus_kind): (Arc<dyn Bus>, Arc<dyn Bus>, _) =
            if config.nats.urls.is_empty() {
                let local: Arc<dyn Bus> = Arc::new(LocalBus::default());
                (local.clone(), local, "local")
            } else {
                let nats = Arc::new(NatsBus::connect(config.nats_options()).await?);
                crate::metrics::watch_nats(&nats);
                // Raft and cluster traffic get their own connection and
                // subscription buffers: a client flood that makes the server
                // cut the client connection off as a slow consumer never cuts
                // Raft's heartbeats with it.
                let cluster = Arc::new(NatsBus::connect(config.cluster_nats_options()).await?);
                (nats, cluster, "nats")
            };
        BUS_CONNECTED.set(1);
        // Chaos runs cut this node off from others with the fault wrapper.
        let (raw_bus, raw_cluster_bus, faults) = if config.fault_injection {
            let faults = FaultController::new(identity.node_id);
            let name = fault_name(identity.node_id);
            warn!(node = %name, "fault injection is on: /debug/faults can partition this node");
            let faulty: Arc<dyn Bus> =
                Arc::new(FaultyBus::new(raw_bus, name.clone(), faults.clone()));
            let faulty_cluster: Arc<dyn Bus> =
                Arc::new(FaultyBus::new(raw_cluster_bus, name, faults.clone()));
            (faulty, faulty_cluster, Some(faults))
        } else {
            (raw_bus, raw_cluster_bus, None)
        };
        let bus: Arc<dyn Bus> = Arc::new(MeteredBus::new(raw_bus, &config.subject_prefix));
        let cluster_bus: Arc<dyn Bus> =
            Arc::new(MeteredBus::new(raw_cluster_bus, &config.subject_prefix));
        // Node-to-node messages carry an HMAC under the cluster secret; those
        // without a valid one are dropped (and counted).
        let cluster_bus: Arc<dyn Bus> = match config.cluster_secret().map_err(NodeError::Config)? {
            Some(secret) => {
                let signed = SignedBus::new(cluster_bus, &secret)?;
                crate::metrics::watch_rejected(signed.rejected());
                Arc::new(signed)
            }
            None => {
                if bus_kind == "nats" {
                    warn!("no cluster secret: node-to-node messages on NATS are not authenticated");
                }
                cluster_bus
            }
        };

        let mut identity = identity;
        if identity.join && identity.shards.is_none() {
            let (answered, shards) = chronicle_cluster::ClusterNode::discover(
                cluster_bus.as_ref(),
                &config.subject_prefix,
                Duration::from_secs(30),
            )
            .await?;
            info!(shards, answered, "found the cluster");
            identity.shards = Some(shards);
            let (dir, recorded) = (config.data_dir.clone(), identity.clone());
            tokio::task::spawn_blocking(move || record_identity(&dir, &recorded))
                .await
                .map_err(|_| NodeError::ActorStart("storage"))??;
        }
        let members = identity.members();
        let shards = identity.shard_count();
        let local = chronicle_cluster::placement(&members, shards, identity.replication)
            .iter()
            .filter(|replicas| replicas.contains(&identity.node_id))
            .count()
            .max(1);
        let mut cluster_config =
            ClusterConfig::new(identity.node_id, members.clone(), &config.data_dir);
        cluster_config.shards = shards;
        cluster_config.replication = identity.replication;
        cluster_config.prefix = config.subject_prefix.clone();
        cluster_config.sync_log = config.sync_writes;
        cluster_config.snapshot_log_bytes = config.cluster.snapshot_log_bytes.max(1 << 20);
        cluster_config.idempotency_window =
            Duration::from_secs(config.cluster.idempotency_window_secs.max(1));
        cluster_config.state_history =
            Duration::from_secs(config.cluster.state_history_secs.max(1));
        cluster_config.write_events = config.cluster.write_events;
        cluster_config.unsafe_stale_reads =
            config.unsafe_variant == Some(crate::config::UnsafeVariant::StaleReads);
        cluster_config.write_event_points = config.cluster.write_event_points;
        cluster_config.retention_check =
            Duration::from_secs(config.retention.check_interval_secs.max(1));
        cluster_config.downsample_delay = config
            .retention
            .downsample_delay()
            .map_err(NodeError::Config)?;
        cluster_config.metric_retention = config
            .retention
            .metric_retention()
            .map_err(NodeError::Config)?;
        cluster_config.shard = ShardConfig {
            retention: config
                .retention
                .raw_retention()
                .map_err(NodeError::Config)?,
            downsample: config
                .retention
                .downsample_rules()
                .map_err(NodeError::Config)?,
            sync_writes: config.sync_writes,
            // The cache budget is the node's, shared by its replicas.
            decoded_cache_bytes: config.decoded_cache_bytes / local,
            decode_threads: config.query.decode_threads.max(1),
            // Helpers decoding a read yield to Raft as the query's thread does.
            on_decode_thread_start: chronicle_actor_runtime::yield_to_cluster_work,
            ..ShardConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chronicle-cluster")
            .enable_all()
            .build()
            .map_err(|e| NodeError::Config(format!("cluster runtime: {e}")))?;
        let cluster = runtime
            .spawn(ClusterNode::start(cluster_config, cluster_bus.clone()))
            .await
            .map_err(|_| NodeError::ActorStart("cluster"))?
            .map_err(|e| match e {
                ClusterError::Storage(source) => NodeError::Storage {
                    path: config.data_dir.display().to_string(),
                    source,
                },
                other => NodeError::Cluster(other),
            })?;
        crate::metrics::watch_cluster(&cluster);
        if members.len() == 1 {
            // Alone, this node elects itself: serve once it has.
            let c = cluster.clone();
            let elected = runtime
                .spawn(async move { c.wait_for_leaders(Duration::from_secs(10)).await })
                .await
                .unwrap_or(false);
            if !elected {
                warn!("no leader elected in 10 s; writes wait for one");
            }
        }
        // Past this point a failure must stop the cluster and its runtime
        // before returning (a runtime dropped on an async worker panics).
        let auth = match start_auth(&config, &cluster, &runtime).await {
            Ok(auth) => auth,
            Err(e) => return Err(abandon(e, cluster, runtime).await),
        };
        // Every feature of the registry that is not disabled, in order, each
        // on its own arbiter (thread): a busy ingest never delays queries.
        let context = FeatureContext {
            node_id: identity.node_id,
            prefix: config.subject_prefix.clone(),
            bus: bus.clone(),
            peers: cluster_bus.clone(),
            cluster: cluster.clone(),
            cluster_runtime: runtime.handle().clone(),
            auth: auth.clone(),
            restart_policy: config.features.restart_policy(),
            services: Services::default(),
        };
        let features = match plan.start(&context, Duration::from_secs(30)).await {
            Ok(f) => f,
            Err(e) => {
                drop(context);
                return Err(abandon(NodeError::Config(e.to_string()), cluster, runtime).await);
            }
        };
        let ingest = context
            .services
            .get::<Addr<IngestActor>>()
            .map(|a| (*a).clone());
        let query = context
            .services
            .get::<Addr<QueryActor>>()
            .map(|a| (*a).clone());
        let query_gate = context.services.get::<QueryGate>().map(|g| (*g).clone());
        drop(context);
        if let Err(e) = bus.flush().await {
            features.stop().await;
            return Err(abandon(e.into(), cluster, runtime).await);
        }

        let shutting_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = http::AppState {
            ingest: ingest.clone(),
            query: query_gate,
            bus_kind,
            max_body_bytes: config.max_body_bytes,
            limits: config.point_limits(),
            otlp: config.otlp_options(),
            write_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_writes.max(1),
            )),
            cluster: cluster.clone(),
            cluster_runtime: runtime.handle().clone(),
            faults,
            buses: vec![("bus", bus.clone()), ("cluster bus", cluster_bus.clone())],
            shutting_down: shutting_down.clone(),
            admin_api: config.enable_admin_api,
            auth: auth.clone(),
            features: features.clone(),
            access,
            ack_before_commit: config.unsafe_variant
                == Some(crate::config::UnsafeVariant::AckBeforeCommit),
        };
        let (server, http_addr) = match http::serve(state, config.http_addr, tls) {
            Ok(served) => served,
            Err(source) => {
                // Stopping the features drops their handles on the cluster.
                features.stop().await;
                let error = NodeError::Http {
                    addr: config.http_addr,
                    source,
                };
                return Err(abandon(error, cluster, runtime).await);
            }
        };
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                warn!(error = %e, "HTTP server stopped with an error");
            }
        });
        info!(
            %http_addr,
            bus = bus_kind,
            data_dir = %config.data_dir.display(),
            node_id = identity.node_id,
            ?members,
            shards,
            "node started"
        );
        Ok(Self {
            bus,
            cluster,
            ingest,
            query,
            http_addr,
            bus_kind,
            subject_prefix: config.subject_prefix.clone(),
            http: handle,
            features,
            runtime: Some(runtime),
            shutting_down,
            cluster_bus,
        })
    }

    /// The runtime the cluster runs on (its futures must be driven there).
    pub fn cluster_runtime(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the node")
            .handle()
            .clone()
    }

    /// Writes points through the cluster (as the ingest actor does, without
    /// batching), acknowledged once committed.
    pub async fn write(&self, points: Vec<Point>) -> Result<usize, ClusterError> {
        let cluster = self.cluster.clone();
        self.cluster_runtime()
            .spawn(async move { cluster.write_owned(points).await })
            .await
            .map_err(|e| ClusterError::Raft(format!("write task failed: {e}")))?
    }

    /// This node's replicas' storage (for tools and benchmarks; reads through
    /// them may lag the leader).
    pub fn local_shards(&self) -> Vec<Arc<Shard>> {
        self.cluster
            .local_shards()
            .into_iter()
            .map(|(_, shard)| shard)
            .collect()
    }

    /// Graceful shutdown, in an order that loses no acknowledgement: stop
    /// intake (readiness off, the bus subscriptions drained, HTTP closed to new
    /// requests), write what was received while the bus is up so its
    /// acknowledgements go out, hand over the leadership of every shard this
    /// node leads, then close the bus, the cluster and RocksDB.
    ///
    /// Returns whether every replica's RocksDB was closed. When one is still
    /// held (a task the runtime could not stop in time), the caller must not
    /// let the process run C++ static destructors while RocksDB's background
    /// threads are alive (that race aborted a node once): see `cli::serve`.
    pub async fn shutdown(self) -> bool {
        info!("shutting down: stopping intake");
        // Requests in flight and what features took get this long in all,
        // so a node stops well within a 30 s grace period even when it has
        // no quorum left to commit them.
        let finish_by = tokio::time::Instant::now() + FINISH_WITHIN;
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Features take nothing new (drained subscriptions: what was already
        // delivered is still handled and acknowledged on the open connection).
        self.features.stop_intake().await;
        // In-flight HTTP writes finish (they wait for their commit) first, for
        // at most HTTP_DRAIN; then they are cut off, and their clients see the
        // connection close (an unknown outcome, as after a crash). A node left
        // without a quorum (the last of a cluster to stop) must not wait out
        // every queued write's commit timeout: the chaos soak found the last
        // node taking over 30 s to stop.
        if tokio::time::timeout(HTTP_DRAIN, self.http.stop(true))
            .await
            .is_err()
        {
            warn!(limit = ?HTTP_DRAIN, "in-flight requests did not finish in time; closing them");
            // Not awaited past the limit either: a handler blocked on a
            // write ends with the process.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.http.stop(false)).await;
        }
        // Then what features took is finished (ingest writes what the bus had
        // buffered) while the bus and the cluster are up.
        self.features.finish(finish_by).await;
        // The acknowledgements out, then the client connection closed.
        match tokio::time::timeout(BUS_DRAIN, self.bus.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "bus drain failed"),
            Err(_) => warn!(limit = ?BUS_DRAIN, "bus drain did not finish in time"),
        }
        // Followers take over now, not an election timeout after this node
        // stops answering.
        let handing = std::time::Instant::now();
        let cluster = self.cluster.clone();
        let handed = self
            .cluster_runtime()
            .spawn(async move { cluster.hand_over_leadership(Duration::from_secs(5)).await })
            .await;
        if let Ok((moved, kept)) = handed {
            info!(?moved, ?kept, took = ?handing.elapsed(), "leadership handed over");
        }
        let flushing = std::time::Instant::now();
        let shards = self.local_shards();
        let open: Vec<std::sync::Weak<Shard>> = shards.iter().map(Arc::downgrade).collect();
        let flushed = tokio::task::spawn_blocking(move || {
            shards.iter().try_fold(0, |chunks, shard| {
                shard.flush().map(|report| chunks + report.chunks)
            })
        })
        .await;
        match flushed {
            Ok(Ok(chunks)) => info!(chunks, took = ?flushing.elapsed(), "head flushed into chunks"),
            Ok(Err(e)) => warn!(error = %e, "final flush failed; the Raft log replays on restart"),
            Err(_) => warn!("final flush panicked; the Raft log replays on restart"),
        }
        // Close RocksDB here, in order: stop the actors' threads (dropping the
        // writer's and the query actor's handles on the cluster), then the
        // cluster's groups, then its runtime. Leaving RocksDB open while the
        // process exits races its background threads against static destructors.
        let Node {
            cluster,
            features,
            ingest,
            query,
            bus,
            runtime,
            cluster_bus,
            ..
        } = self;
        drop((ingest, query, bus));
        features.stop().await;
        drop(features);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while Arc::strong_count(&cluster) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let runtime = runtime.expect("the runtime lives as long as the node");
        if Arc::strong_count(&cluster) > 1 {
            warn!("the cluster is still referenced at shutdown; closing anyway");
        }
        let _ = runtime
            .spawn(async move {
                cluster.shutdown().await;
                drop(cluster);
                if let Err(e) = cluster_bus.drain().await {
                    warn!(error = %e, "cluster bus drain failed");
                }
            })
            .await;
        let _ = tokio::task::spawn_blocking(move || {
            runtime.shutdown_timeout(Duration::from_secs(5));
        })
        .await;
        BUS_CONNECTED.set(0);
        // Every replica's last handle is gone, so its RocksDB is closed (its
        // background threads joined), before the process may exit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while open.iter().any(|w| w.strong_count() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let still_open = open.iter().filter(|w| w.strong_count() > 0).count();
        if still_open > 0 {
            warn!(
                replicas = still_open,
                "RocksDB still open at exit (a task outlived the runtime's shutdown); \
                 exiting without static destructors"
            );
        }
        info!("node stopped");
        still_open == 0
    }
}

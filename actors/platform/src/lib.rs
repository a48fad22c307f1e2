//! How a feature plugs into a Chronicle node.
//!
//! A feature is a crate with a type implementing [`Feature`]: its name, its
//! configuration section (`[features.<name>]`), the subjects it serves, an
//! optional CLI subcommand, and a plan that starts it. Started, it is a
//! [`Running`] that adds HTTP routes, reports readiness, and stops in the
//! node's shutdown order. The node names no feature: it walks the registry
//! (`src/features.rs`) for configuration, start, routes, readiness, stop and
//! the CLI.
//!
//! What a feature gets ([`FeatureContext`]): the bus (metered and, in chaos
//! runs, fault-wrapped like the core actors'), its namespace of the
//! replicated state, the change feed, the authenticator, supervision with
//! backoff, and handles other features published ([`Services`]: the query
//! and write handles among them), and WebSockets ([`ws`]). Features reach
//! each other only through subjects and those handles.

mod access;
pub mod client;
pub mod settings;
pub mod ws;

pub use access::{
    check_subjects, subjects_overlap, AccessTable, Methods, RouteAccess, RoutePath, UNKNOWN_SCOPE,
};
pub use chronicle_auth::Access;

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Context, Supervised, Supervisor};
use async_trait::async_trait;
use chronicle_actor_runtime::{RestartPolicy, Restarts};
use chronicle_auth::Authenticator;
use chronicle_bus::Bus;
use chronicle_cluster::state::StateStore;
use chronicle_cluster::ClusterNode;
use serde::Deserialize;
use tracing::{info, warn};

/// Why a feature could not be configured, started or run.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("[features.{feature}]: {message}")]
    Config {
        feature: &'static str,
        message: String,
    },
    #[error("[features]: {0}")]
    Registry(String),
    #[error("feature {feature} did not start: {message}")]
    Start {
        feature: &'static str,
        message: String,
    },
    #[error("{0}")]
    Command(String),
}

/// A capability that plugs into the node.
pub trait Feature: Send + Sync + 'static {
    /// Names its configuration section (`[features.<name>]`), its state
    /// namespace, its metrics (`chronicle_<name>_*`) and the `disabled` list.
    fn name(&self) -> &'static str;

    /// One line for `--help` and docs.
    fn describe(&self) -> &'static str;

    /// Checks its section (absent: `None`) and plans a start. Called for
    /// every known feature, enabled or not, when the node starts, so a typo
    /// in a disabled feature's section still fails at deploy time.
    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError>;

    /// The subjects it serves under `prefix` (for docs and overlap checks).
    fn subjects(&self, _prefix: &str) -> Vec<String> {
        Vec::new()
    }

    /// The access each of its HTTP routes needs; the node authorizes every
    /// request against these rules (with the feature's name as the scope a
    /// token may be limited to) before a handler runs. A route no rule
    /// covers needs admin. Stated here, not by the running feature, so
    /// that access does not change when a feature is disabled.
    fn access(&self) -> Vec<RouteAccess> {
        Vec::new()
    }

    /// `chronicle <name> ...`: a client command, run without starting a node.
    fn command(&self) -> Option<clap::Command> {
        None
    }

    fn run_command(&self, _matches: &clap::ArgMatches) -> Result<(), FeatureError> {
        Err(FeatureError::Command(format!(
            "feature {} has no command",
            self.name()
        )))
    }
}

/// A configured feature, ready to start inside the node's actix system.
#[async_trait(?Send)]
pub trait Planned {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError>;
}

/// A started feature.
#[async_trait(?Send)]
pub trait Running: Send + Sync {
    /// Its HTTP routes (called once per HTTP worker). Each needs a rule in
    /// [`Feature::access`]; a route without one needs admin.
    fn routes(&self, _cfg: &mut actix_web::web::ServiceConfig) {}

    /// What keeps it from serving now (empty: ready).
    fn not_ready(&self) -> Vec<String> {
        Vec::new()
    }

    /// Shutdown, first step: take no new work (drain subscriptions).
    async fn stop_intake(&self) {}

    /// Shutdown, second step: finish work already taken, until `deadline`,
    /// while the bus and the cluster are still up.
    async fn finish(&self, _deadline: tokio::time::Instant) {}

    /// Shutdown, last step: stop its actors and join their threads.
    async fn stop(&self) {}
}

/// Runs a call on the replicated state on the cluster's runtime (the
/// state's futures run there) from any executor, such as a feature's actix
/// arbiter; a failed task or call is its error text.
pub async fn on_cluster<T, F>(
    runtime: &tokio::runtime::Handle,
    state: &StateStore,
    call: impl FnOnce(StateStore) -> F,
) -> Result<T, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, chronicle_cluster::ClusterError>> + Send + 'static,
{
    runtime
        .spawn(call(state.clone()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Handles features publish for others (by type): the query and write
/// handles, an actor's address.
#[derive(Default, Clone)]
pub struct Services(Arc<parking_lot::RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>);

impl Services {
    /// Publishes `value`, replacing an earlier one of the same type.
    pub fn provide<T: Any + Send + Sync>(&self, value: T) {
        self.0.write().insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.0
            .read()
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|v| v.downcast::<T>().ok())
    }
}

/// What a feature is given when it starts.
#[derive(Clone)]
pub struct FeatureContext {
    pub node_id: u64,
    /// Subjects are `<prefix>.<...>`.
    pub prefix: String,
    /// The client bus (metered; fault-wrapped in chaos runs).
    pub bus: Arc<dyn Bus>,
    /// The node-to-node bus, for messages between a feature's actors on
    /// different nodes: the cluster's connection, signed under the cluster
    /// secret when one is set (a client that lacks it cannot forge them;
    /// unsigned ones are dropped and counted). Never for client traffic.
    pub peers: Arc<dyn Bus>,
    /// This node's cluster member (state, feed, reads and writes); its
    /// futures run on `cluster_runtime`.
    pub cluster: Arc<ClusterNode>,
    pub cluster_runtime: tokio::runtime::Handle,
    /// Checks credentials (requests on a feature's own subjects).
    pub auth: Arc<Authenticator>,
    /// How its supervised actors restart.
    pub restart_policy: RestartPolicy,
    pub services: Services,
}

impl FeatureContext {
    /// The feature's namespace of the replicated state (named after it).
    pub fn state(&self, feature: &'static str) -> Result<StateStore, FeatureError> {
        self.cluster
            .state(feature)
            .map_err(|e| FeatureError::Start {
                feature,
                message: format!("state namespace: {e}"),
            })
    }

    /// Starts `make`'s actor on its own arbiter (thread) under actix's
    /// supervisor, restarted after a panic (see
    /// `chronicle_actor_runtime::guarded`) with the context's backoff; its
    /// restarts count in `chronicle_actor_restarts_total{actor}` and too
    /// many in the policy's window make the node report it not ready. The
    /// actor calls `Restarts::pause` in its `Supervised::restarting`.
    pub fn supervise<A>(
        &self,
        actor: &'static str,
        make: impl FnOnce(&mut Context<A>, Restarts) -> A + Send + 'static,
    ) -> (Addr<A>, Arbiter)
    where
        A: Actor<Context = Context<A>> + Supervised,
    {
        chronicle_actor_runtime::announce(actor);
        let restarts = Restarts::new(actor, self.restart_policy);
        let arbiter = Arbiter::new();
        let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |ctx| make(ctx, restarts));
        (addr, arbiter)
    }
}

/// Subscribes to the change feed while `open` counts sessions (of live
/// queries, collaborative sessions), and passes each written metric's name
/// to them (`*` when the feed lost track, or after a time unsubscribed).
/// Nothing is read while no session is open.
pub async fn follow_written_metrics(
    bus: Arc<dyn chronicle_bus::Bus>,
    prefix: String,
    writes: tokio::sync::broadcast::Sender<Arc<str>>,
    mut open: tokio::sync::watch::Receiver<usize>,
) {
    loop {
        if open.wait_for(|n| *n > 0).await.is_err() {
            return;
        }
        let mut feed =
            match chronicle_cluster::feed::WriteFeed::subscribe(bus.as_ref(), &prefix).await {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "the change feed is unavailable; live results wait for it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        // Whatever was written while nobody listened: sessions run again.
        let _ = writes.send("*".into());
        loop {
            tokio::select! {
                item = feed.next() => {
                    let Some(item) = item else { break };
                    let metric: Arc<str> = match item {
                        chronicle_cluster::feed::FeedItem::Write(e) => e.metric.into(),
                        chronicle_cluster::feed::FeedItem::Gap { .. } => "*".into(),
                    };
                    // No session listening is fine.
                    let _ = writes.send(metric);
                }
                changed = open.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *open.borrow() == 0 {
                        // The subscription ends with `feed`.
                        break;
                    }
                }
            }
        }
    }
}

/// A JSON error answer, as every feature's routes give them:
/// `{"error": {"code": "...", "message": "..."}}`.
pub fn http_error(
    status: actix_web::http::StatusCode,
    code: &str,
    message: impl Into<String>,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::build(status)
        .content_type("application/json")
        .body(chronicle_actor_runtime::error_json(code, message))
}

/// A feature's `[features.<name>]` section as its config type (the
/// defaults when absent); a bad section is a configuration error naming it.
pub fn parse_section<T: serde::de::DeserializeOwned + Default>(
    feature: &'static str,
    section: Option<&toml::Value>,
) -> Result<T, FeatureError> {
    match section {
        None => Ok(T::default()),
        Some(s) => s.clone().try_into::<T>().map_err(|e| FeatureError::Config {
            feature,
            message: e.to_string(),
        }),
    }
}

/// A feature's arbiter (actor thread), stopped and joined once at shutdown.
pub struct ArbiterSlot(parking_lot::Mutex<Option<Arbiter>>);

impl ArbiterSlot {
    pub fn new(arbiter: Arbiter) -> Self {
        Self(parking_lot::Mutex::new(Some(arbiter)))
    }

    /// Stops the arbiter and waits for its thread (off the async workers).
    pub async fn stop(&self) {
        let arbiter = self.0.lock().take();
        if let Some(arbiter) = arbiter {
            let _ = tokio::task::spawn_blocking(move || {
                arbiter.stop();
                let _ = arbiter.join();
            })
            .await;
        }
    }
}

/// `[features]`: which registered features run, how they restart, and each
/// one's own section (`[features.<name>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FeaturesConfig {
    /// Registered features that do not start (their routes answer 404,
    /// their subjects go unserved).
    pub disabled: Vec<String>,
    /// Restarts with backoff; more than `restart_intensity` restarts within
    /// `restart_window_secs` make the node report the actor not ready.
    pub restart_intensity: Option<u32>,
    pub restart_window_secs: Option<u64>,
    /// Each feature's section, checked by the feature.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

impl FeaturesConfig {
    pub fn restart_policy(&self) -> RestartPolicy {
        let d = RestartPolicy::default();
        RestartPolicy {
            intensity: self.restart_intensity.unwrap_or(d.intensity).max(1),
            window: self
                .restart_window_secs
                .map(|s| Duration::from_secs(s.max(1)))
                .unwrap_or(d.window),
            ..d
        }
    }
}

/// The registry's features, configured: the enabled ones in registry order.
pub struct Plan {
    planned: Vec<(&'static str, Box<dyn Planned>)>,
}

impl Plan {
    /// Checks `config` against `registry`: a section or a disabled name no
    /// registered feature has is an error, every feature checks its own
    /// section (enabled or not).
    pub fn new(
        registry: &[Box<dyn Feature>],
        config: &FeaturesConfig,
    ) -> Result<Self, FeatureError> {
        let known: Vec<&str> = registry.iter().map(|f| f.name()).collect();
        for (i, name) in known.iter().enumerate() {
            if known[..i].contains(name) {
                return Err(FeatureError::Registry(format!(
                    "two features are named {name:?}"
                )));
            }
        }
        let unknown = |n: &str| {
            FeatureError::Registry(format!(
                "no feature is named {n:?} (known: {})",
                known.join(", ")
            ))
        };
        if let Some(n) = config
            .sections
            .keys()
            .find(|n| !known.contains(&n.as_str()))
        {
            return Err(unknown(n));
        }
        if let Some(n) = config
            .disabled
            .iter()
            .find(|n| !known.contains(&n.as_str()))
        {
            return Err(unknown(n));
        }
        let mut planned = Vec::new();
        for feature in registry {
            let plan = feature.configure(config.sections.get(feature.name()))?;
            if !config.disabled.iter().any(|d| d == feature.name()) {
                planned.push((feature.name(), plan));
            }
        }
        Ok(Self { planned })
    }

    /// The names that will start, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.planned.iter().map(|(n, _)| *n).collect()
    }

    /// Starts every planned feature in order, each within `timeout`.
    pub async fn start(
        self,
        cx: &FeatureContext,
        timeout: Duration,
    ) -> Result<Features, FeatureError> {
        let mut running: Vec<(&'static str, Arc<dyn Running>)> = Vec::new();
        for (name, plan) in self.planned {
            let started = tokio::time::timeout(timeout, plan.start(cx)).await;
            match started {
                Ok(Ok(r)) => {
                    info!(feature = name, "feature started");
                    running.push((name, r));
                }
                Ok(Err(e)) => {
                    Features { running }.stop_started().await;
                    return Err(e);
                }
                Err(_) => {
                    Features { running }.stop_started().await;
                    return Err(FeatureError::Start {
                        feature: name,
                        message: format!("not started within {timeout:?}"),
                    });
                }
            }
        }
        Ok(Features { running })
    }
}

/// The started features.
#[derive(Clone, Default)]
pub struct Features {
    running: Vec<(&'static str, Arc<dyn Running>)>,
}

/// How long shutdown waits for one feature to stop.
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Features {
    pub fn names(&self) -> Vec<&'static str> {
        self.running.iter().map(|(n, _)| *n).collect()
    }

    /// Every feature's routes.
    pub fn routes(&self, cfg: &mut actix_web::web::ServiceConfig) {
        for (_, r) in &self.running {
            r.routes(cfg);
        }
    }

    /// What keeps features (and supervised actors) from serving, named.
    pub fn not_ready(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .running
            .iter()
            .flat_map(|(name, r)| {
                r.not_ready()
                    .into_iter()
                    .map(move |p| format!("{name}: {p}"))
            })
            .collect();
        problems.extend(chronicle_actor_runtime::failing_actors());
        problems
    }

    /// Shutdown's first step, in reverse start order.
    pub async fn stop_intake(&self) {
        for (_, r) in self.running.iter().rev() {
            r.stop_intake().await;
        }
    }

    /// Shutdown's second step, in reverse start order, all by `deadline`.
    pub async fn finish(&self, deadline: tokio::time::Instant) {
        for (name, r) in self.running.iter().rev() {
            // Held to the deadline whatever the feature awaits (an actor
            // busy with a write that waits for a quorum that is gone).
            let _ = tokio::time::timeout_at(deadline, r.finish(deadline)).await;
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    feature = name,
                    "shutdown deadline reached while features finished"
                );
            }
        }
    }

    /// Stops features started before a later one failed to start.
    async fn stop_started(&self) {
        self.stop_intake().await;
        self.stop().await;
    }

    /// Shutdown's last step, in reverse start order.
    pub async fn stop(&self) {
        for (name, r) in self.running.iter().rev() {
            if tokio::time::timeout(STOP_LIMIT, r.stop()).await.is_err() {
                warn!(feature = name, limit = ?STOP_LIMIT, "feature did not stop in time; going on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy(&'static str);

    struct DummyPlan;

    #[async_trait(?Send)]
    impl Planned for DummyPlan {
        async fn start(
            self: Box<Self>,
            _: &FeatureContext,
        ) -> Result<Arc<dyn Running>, FeatureError> {
            unreachable!("not started in these tests")
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct DummyConfig {
        size: u32,
    }

    impl Feature for Dummy {
        fn name(&self) -> &'static str {
            self.0
        }
        fn describe(&self) -> &'static str {
            "a test feature"
        }
        fn configure(
            &self,
            section: Option<&toml::Value>,
        ) -> Result<Box<dyn Planned>, FeatureError> {
            if let Some(s) = section {
                s.clone()
                    .try_into::<DummyConfig>()
                    .map_err(|e| FeatureError::Config {
                        feature: self.0,
                        message: e.to_string(),
                    })?;
            }
            Ok(Box::new(DummyPlan))
        }
    }

    fn config(text: &str) -> FeaturesConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn sections_and_names_are_checked_against_the_registry() {
        let registry: Vec<Box<dyn Feature>> = vec![Box::new(Dummy("a")), Box::new(Dummy("b"))];
        let plan = Plan::new(&registry, &config("disabled = [\"a\"]\n[b]\nsize = 3\n")).unwrap();
        assert_eq!(plan.names(), ["b"]);
        // A typo in a disabled feature's section still fails.
        let err = Plan::new(&registry, &config("disabled = [\"a\"]\n[a]\nsiz = 3\n"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("siz"), "{err}");
        let err = Plan::new(&registry, &config("[c]\nsize = 1\n"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("no feature is named \"c\""),
            "{err}"
        );
        let err = Plan::new(&registry, &config("disabled = [\"x\"]"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("\"x\""), "{err}");
        let twice: Vec<Box<dyn Feature>> = vec![Box::new(Dummy("a")), Box::new(Dummy("a"))];
        assert!(Plan::new(&twice, &config("")).is_err());
        let policy = config("restart_intensity = 2\nrestart_window_secs = 5").restart_policy();
        assert_eq!(
            (policy.intensity, policy.window),
            (2, Duration::from_secs(5))
        );
    }

    #[test]
    fn services_are_found_by_type() {
        let s = Services::default();
        assert!(s.get::<u32>().is_none());
        s.provide(7u32);
        s.provide(String::from("x"));
        assert_eq!(*s.get::<u32>().unwrap(), 7);
        assert_eq!(s.get::<String>().unwrap().as_str(), "x");
    }
}

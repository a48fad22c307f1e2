//! Node configuration: defaults, then a TOML file, then `CHRONICLE_*` environment
//! variables, then flags (flags win). clap reads the environment and the flags; the
//! file fills in what neither gave.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Everything a node needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the RocksDB shard lives.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Subject prefix (`<prefix>.ingest.>`, `<prefix>.query`).
    pub subject_prefix: String,
    /// Largest HTTP request body, bytes (after decompression).
    pub max_body_bytes: usize,
    /// HTTP /write requests in progress at once (reading, parsing, writing);
    /// more wait their turn before their bodies are read.
    pub max_concurrent_writes: usize,
    /// fsync every write batch (durable on return); off trades durability for speed.
    pub sync_writes: bool,
    /// Memory for recently read chunks kept decoded, bytes; 0 turns the cache off
    /// (every query decodes the chunks it reads).
    pub decoded_cache_bytes: usize,
    pub nats: NatsConfig,
    pub ingest: IngestSettings,
    pub query: QuerySettings,
    pub cluster: ClusterSettings,
    pub retention: RetentionSettings,
    /// Wrap the bus in the fault injector and serve `/debug/faults/*` (chaos
    /// and partition tests only: anyone who can reach HTTP can cut the node off).
    pub fault_injection: bool,
    /// A known-bad variant the chaos harness runs to show its checkers catch
    /// what it breaks (needs `fault_injection`; never in production). Only
    /// from the command line, never from a config file.
    #[serde(skip)]
    pub unsafe_variant: Option<UnsafeVariant>,
    /// Serve Prometheus's admin API (`/api/v1/admin/tsdb/delete_series`):
    /// anyone who can reach HTTP can then delete data. Off by default, as
    /// Prometheus's `--web.enable-admin-api`.
    pub enable_admin_api: bool,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    /// Which features run, how their actors restart, and each feature's
    /// own `[features.<name>]` section.
    pub features: chronicle_platform::FeaturesConfig,
}

/// Who may use the node. With authentication off, the node serves only on a
/// loopback address unless `insecure` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Require an API token (Bearer, or Basic with the token as password) on
    /// every route but the health probes and on the bus's kv subjects.
    pub enabled: bool,
    /// A file holding the bootstrap token: an admin credential that needs no
    /// stored token (how the first tokens are made). Also
    /// `CHRONICLE_BOOTSTRAP_TOKEN`.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Serve a non-loopback address without authentication, or a cluster
    /// over NATS without a cluster secret. For isolated test networks only.
    pub insecure: bool,
}

/// TLS on the HTTP listener (rustls). Both files PEM.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http_addr: "127.0.0.1:8086".parse().expect("static address"),
            subject_prefix: "chronicle".into(),
            max_body_bytes: 32 << 20,
            max_concurrent_writes: 4,
            sync_writes: true,
            decoded_cache_bytes: chronicle_storage::ShardConfig::default().decoded_cache_bytes,
            nats: NatsConfig::default(),
            ingest: IngestSettings::default(),
            query: QuerySettings::default(),
            cluster: ClusterSettings::default(),
            retention: RetentionSettings::default(),
            fault_injection: false,
            unsafe_variant: None,
            enable_admin_api: false,
            auth: AuthSettings::default(),
            tls: TlsSettings::default(),
            features: chronicle_platform::FeaturesConfig::default(),
        }
    }
}

/// How long data is kept. Retention runs as a replicated operation: the
/// leader of each shard proposes "drop what is before T" with T fixed in the
/// entry, so replicas never diverge by their clocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Raw data older than this is deleted, in whole 2-hour chunk windows
    /// (`"30d"`, `"12h"`); absent: kept for ever.
    pub raw: Option<String>,
    /// How often each shard's leader proposes retention and runs the
    /// downsampling rules.
    pub check_interval_secs: u64,
    /// A downsampling window is run once it ended this long ago, so samples
    /// arriving late are in it (`"1m"`).
    pub downsample_delay: String,
    /// Downsampling rules (`[[retention.downsample]]`), run in this order;
    /// rule *i* writes tier *i + 1*. Every node of a cluster must have the
    /// same rules in the same order.
    pub downsample: Vec<DownsampleSettings>,
    /// Per-metric raw retention (`[[retention.metric]]`): the series a
    /// selector matches are kept for less than `raw`.
    pub metric: Vec<MetricRetentionSettings>,
}

/// One per-metric retention rule: the raw samples of every series the
/// selector matches are deleted once older than `raw`, in whole hours.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRetentionSettings {
    /// A series selector (`'debug_requests_total'`, `'{env="dev"}'`).
    #[serde(rename = "match")]
    pub selector: String,
    /// How long its raw samples are kept (`"7d"`); shorter than
    /// `[retention] raw` when that is set.
    pub raw: String,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            raw: None,
            check_interval_secs: 60,
            downsample_delay: "1m".into(),
            downsample: Vec::new(),
            metric: Vec::new(),
        }
    }
}

/// One downsampling rule: every raw series the selector matches gets a
/// `<metric>:<window>:<function>` series with the same labels, one point
/// per complete window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownsampleSettings {
    /// Window length (`"5m"`, `"1h"`).
    pub window: String,
    /// count, sum, mean, min, max, first, last, stddev, rate, or a
    /// percentile (`p99`).
    pub function: String,
    /// How long the output is kept (`"400d"`); absent: for ever.
    pub retention: Option<String>,
    /// A series selector (`'{job="node"}'`, `'http_requests_total'`);
    /// absent: every raw series.
    #[serde(rename = "match")]
    pub selector: Option<String>,
}

fn positive_duration(what: &str, text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| format!("{what} {text:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{what} must be longer than zero"));
    }
    Ok(d)
}

impl DownsampleSettings {
    /// The rule, checked: a window of whole milliseconds from one second to
    /// a week, a known function, a selector with exactly one matcher set.
    pub fn rule(&self) -> Result<chronicle_storage::DownsampleRule, String> {
        let what = "[[retention.downsample]]";
        let window = positive_duration(&format!("{what} window"), &self.window)?;
        if window < std::time::Duration::from_secs(1)
            || window > std::time::Duration::from_secs(7 * 86_400)
            || window.subsec_nanos() % 1_000_000 != 0
        {
            return Err(format!(
                "{what} window {:?}: between 1s and 7d, in whole milliseconds",
                self.window
            ));
        }
        let function: chronicle_storage::AggregateFunction = self
            .function
            .parse()
            .map_err(|e| format!("{what} function {:?}: {e}", self.function))?;
        if !function.name().bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "{what} function {:?}: a whole-number percentile (the name goes in series names)",
                self.function
            ));
        }
        let retention = self
            .retention
            .as_deref()
            .map(|r| positive_duration(&format!("{what} retention"), r))
            .transpose()?;
        let matchers = match self.selector.as_deref() {
            None => Vec::new(),
            Some(text) => {
                let mut sets = chronicle_query::selector_matchers(text)
                    .map_err(|e| format!("{what} match {text:?}: {e}"))?;
                if sets.len() != 1 {
                    return Err(format!(
                        "{what} match {text:?}: one selector, not an `or` of several"
                    ));
                }
                sets.pop().unwrap_or_default()
            }
        };
        Ok(chronicle_storage::DownsampleRule {
            window,
            function,
            retention,
            matchers,
        })
    }
}

impl RetentionSettings {
    /// The downsampling rules, checked; two rules may not write the same
    /// series names.
    pub fn downsample_rules(&self) -> Result<Vec<chronicle_storage::DownsampleRule>, String> {
        let rules = self
            .downsample
            .iter()
            .map(DownsampleSettings::rule)
            .collect::<Result<Vec<_>, _>>()?;
        if rules.len() > 32 {
            return Err("[[retention.downsample]]: at most 32 rules".into());
        }
        let mut suffixes = std::collections::BTreeSet::new();
        for r in &rules {
            if !suffixes.insert(r.suffix()) {
                return Err(format!(
                    "[[retention.downsample]]: two rules write `<metric>:{}`",
                    r.suffix()
                ));
            }
        }
        Ok(rules)
    }

    /// The per-metric retention rules, checked: one selector each, a
    /// duration of at least an hour (deletes go by whole hours), shorter
    /// than `raw` (which drops whole windows of every series: it cannot
    /// keep some series longer).
    pub fn metric_retention(
        &self,
    ) -> Result<Vec<(Vec<chronicle_storage::Matcher>, std::time::Duration)>, String> {
        let what = "[[retention.metric]]";
        if self.metric.len() > 32 {
            return Err(format!("{what}: at most 32 rules"));
        }
        let raw = self.raw_retention()?;
        self.metric
            .iter()
            .map(|rule| {
                let keep = positive_duration(&format!("{what} raw"), &rule.raw)?;
                if keep < std::time::Duration::from_secs(3600) {
                    return Err(format!(
                        "{what} raw {:?}: at least 1h (samples go by whole hours)",
                        rule.raw
                    ));
                }
                if raw.is_some_and(|raw| keep >= raw) {
                    return Err(format!(
                        "{what} raw {:?}: must be shorter than [retention] raw {:?}, which \
                         deletes every series' older data; leave raw unset to keep other \
                         series for ever",
                        rule.raw,
                        self.raw.as_deref().unwrap_or_default()
                    ));
                }
                let text = &rule.selector;
                let mut sets = chronicle_query::selector_matchers(text)
                    .map_err(|e| format!("{what} match {text:?}: {e}"))?;
                if sets.len() != 1 {
                    return Err(format!(
                        "{what} match {text:?}: one selector, not an `or` of several"
                    ));
                }
                // The parser refuses a selector whose every matcher matches
                // the empty string, as a delete needs.
                Ok((sets.pop().unwrap_or_default(), keep))
            })
            .collect()
    }

    /// The downsampling delay, checked.
    pub fn downsample_delay(&self) -> Result<std::time::Duration, String> {
        humantime::parse_duration(self.downsample_delay.trim()).map_err(|e| {
            format!(
                "[retention] downsample_delay {:?}: {e}",
                self.downsample_delay
            )
        })
    }

    /// The raw retention, checked.
    pub fn raw_retention(&self) -> Result<Option<std::time::Duration>, String> {
        self.raw
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text.trim())
                    .map_err(|e| format!("[retention] raw {text:?}: {e}"))
                    .and_then(|d| {
                        if d.is_zero() {
                            Err("[retention] raw must be longer than zero".into())
                        } else {
                            Ok(d)
                        }
                    })
            })
            .transpose()
    }
}

/// Which cluster the node belongs to. A node always runs as a cluster member:
/// alone by default (one-voter Raft groups, the same write path as many nodes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster (1 or more).
    pub node_id: u64,
    /// The members a new cluster is created with; empty: this node alone.
    pub initial_nodes: Vec<u64>,
    /// Shards of a new cluster (fixed at creation); default 1 for a one-node
    /// cluster, 4 for more.
    pub shards: Option<u32>,
    /// Replicas per shard, on distinct nodes (capped at the number of nodes).
    pub replication: usize,
    /// Start as a new member of a running cluster: host nothing until
    /// `chronicle cluster add-node` moves shards here.
    pub join: bool,
    /// A replica snapshots its shard once this many bytes were appended to
    /// its Raft log since the last snapshot, then purges the log before it.
    pub snapshot_log_bytes: u64,
    /// How long a write's idempotency key is remembered, in seconds.
    pub idempotency_window_secs: u64,
    /// How long state changes stay watchable, in seconds.
    pub state_history_secs: u64,
    /// Whether shard leaders publish the change feed on
    /// `<prefix>.events.write.<metric>`.
    pub write_events: bool,
    /// Whether the feed's events carry the points.
    pub write_event_points: bool,
    /// A file holding the cluster secret: node-to-node messages carry an
    /// HMAC under it, and messages without a valid one are dropped. Also
    /// `CHRONICLE_CLUSTER_SECRET`. Not part of the cluster's identity.
    #[serde(skip_serializing)]
    pub secret_file: Option<PathBuf>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_id: 1,
            initial_nodes: Vec::new(),
            shards: None,
            replication: 3,
            join: false,
            snapshot_log_bytes: 64 << 20,
            idempotency_window_secs: 600,
            state_history_secs: 86_400,
            write_events: true,
            write_event_points: false,
            secret_file: None,
        }
    }
}

impl ClusterSettings {
    /// The members the cluster is created with (none for a joining node).
    pub fn members(&self) -> Vec<u64> {
        if self.join {
            return Vec::new();
        }
        let mut members = if self.initial_nodes.is_empty() {
            vec![self.node_id]
        } else {
            self.initial_nodes.clone()
        };
        members.sort_unstable();
        members.dedup();
        members
    }

    pub fn shard_count(&self) -> u32 {
        self.shards
            .unwrap_or(if self.members().len() > 1 { 4 } else { 1 })
    }

    /// Refuses settings no cluster can be made of.
    pub fn validate(&self, has_nats: bool) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("--node-id must be 1 or more".into());
        }
        if self.join {
            if !self.initial_nodes.is_empty() {
                return Err(
                    "--join starts a node outside --initial-nodes; give one or the other".into(),
                );
            }
            if !has_nats {
                return Err("--join needs --nats-url: the cluster is found over NATS".into());
            }
            return Ok(());
        }
        let members = self.members();
        if !members.contains(&self.node_id) {
            return Err(format!(
                "node {} is not among --initial-nodes {:?}; a node joining an existing cluster is added with `chronicle cluster add-node`",
                self.node_id, self.initial_nodes
            ));
        }
        if members.len() > 1 && !has_nats {
            return Err(
                "a cluster of several nodes needs --nats-url: members reach each other over NATS"
                    .into(),
            );
        }
        if self.shard_count() == 0 {
            return Err("--shards must be 1 or more".into());
        }
        if self.replication == 0 {
            return Err("--replication must be 1 or more".into());
        }
        Ok(())
    }
}

/// Joining NATS; with no URL the node uses the in-process bus.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub require_tls: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Messages buffered per subscription; beyond it NATS's slow-consumer rule
    /// drops (unacknowledged) messages instead of growing memory. Ingest
    /// messages are up to the server's max payload (1 MiB by default) each.
    pub subscription_capacity: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            credentials_file: None,
            require_tls: false,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            subscription_capacity: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    pub max_batch_points: usize,
    pub max_batch_delay_ms: u64,
    /// Messages parsed in parallel or waiting in order to be batched (default:
    /// twice the number of cores); beyond it the actor takes no more input.
    pub parse_queue: usize,
    /// Batches committing through Raft at once; beyond it the actor holds its input.
    pub commits_in_flight: usize,
    /// Points one write request (HTTP or bus message) may create; more: 413.
    pub max_request_points: usize,
    /// Metric name and label bytes one request may create, counted per point
    /// (a label set stated once for many samples counts once per sample); more: 413.
    pub max_request_label_bytes: usize,
    /// OTLP resource attributes copied as labels onto every series of their
    /// resource (the others are only on `target_info`).
    pub otlp_promote_resource_attributes: Vec<String>,
}

impl Default for IngestSettings {
    fn default() -> Self {
        let d = chronicle_ingest::IngestConfig::default();
        Self {
            max_batch_points: d.max_batch_points,
            max_batch_delay_ms: d.max_batch_delay.as_millis() as u64,
            parse_queue: d.parse_queue,
            commits_in_flight: d.commits_in_flight,
            max_request_points: d.limits.max_request_points,
            max_request_label_bytes: d.limits.max_request_label_bytes,
            otlp_promote_resource_attributes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    pub max_points: usize,
    pub concurrency: usize,
    /// PromQL: samples one query may read from storage.
    pub max_samples: usize,
    /// PromQL: series one selector may select.
    pub max_series: usize,
    /// Longest a query may run, any language (a client's shorter `timeout` wins).
    pub timeout_secs: u64,
    /// Queries waiting for a slot; past it a query is refused at once (503 busy).
    pub max_queued: usize,
    /// Threads one query decodes chunks on, its own included (1: no helper);
    /// default the cores the node may use, at most 8.
    pub decode_threads: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        let d = chronicle_query::QueryConfig::default();
        Self {
            max_points: d.max_points,
            concurrency: d.concurrency,
            max_samples: d.promql.max_samples,
            max_series: d.promql.max_series,
            timeout_secs: d.promql.default_timeout.as_secs(),
            max_queued: d.max_queued,
            decode_threads: chronicle_storage::default_shard_threads(),
        }
    }
}

/// `chronicle serve` flags; each can also come from its `CHRONICLE_*` variable.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Data directory (RocksDB). Default ./data.
    #[arg(long, env = "CHRONICLE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address. Default 127.0.0.1:8086.
    #[arg(long, env = "CHRONICLE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Join NATS at this URL (comma-separated for several); default: in-process bus.
    #[arg(long, env = "CHRONICLE_NATS_URL", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// TOML configuration file (see docs/operations.md for every key).
    #[arg(long, env = "CHRONICLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Turn off fsync per write batch (faster, loses the last batches on power loss).
    #[arg(long, env = "CHRONICLE_NO_SYNC")]
    pub no_sync: bool,
    /// Subject prefix: the node serves `<prefix>.ingest.>` and `<prefix>.query`.
    /// Default `chronicle`.
    #[arg(long, env = "CHRONICLE_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
    /// This node's id in the cluster (1 or more). Default 1.
    #[arg(long, env = "CHRONICLE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Export traces (OTLP over HTTP, protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 (spans are posted to /v1/traces). Without it,
    /// OTEL_EXPORTER_OTLP_ENDPOINT; without either, no traces leave the node.
    #[arg(long, env = "CHRONICLE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Create a cluster of these members (comma-separated node ids, this node
    /// among them), as etcd's initial cluster; they find each other over NATS.
    /// Default: this node alone.
    #[arg(long, env = "CHRONICLE_INITIAL_NODES", value_delimiter = ',')]
    pub initial_nodes: Vec<u64>,
    /// Shards of a new cluster (fixed once created). Default 1 alone, 4 with peers.
    #[arg(long, env = "CHRONICLE_SHARDS")]
    pub shards: Option<u32>,
    /// Replicas per shard of a new cluster. Default 3 (capped at the member count).
    #[arg(long, env = "CHRONICLE_REPLICATION")]
    pub replication: Option<usize>,
    /// Serve /debug/faults/partition and /debug/faults/heal, which cut this
    /// node off from others on the bus (chaos and partition tests only).
    #[arg(long, env = "CHRONICLE_ALLOW_FAULT_INJECTION")]
    pub allow_fault_injection: bool,
    /// TEST ONLY, BREAKS GUARANTEES: run a known-bad variant so a chaos run
    /// can show its checkers catch it: `ack-before-commit` (writes and state
    /// puts answer before they commit) or `stale-reads` (reads answer from
    /// the local replica without a read index). Needs --allow-fault-injection.
    #[arg(long, value_enum, hide = true)]
    pub unsafe_variant: Option<UnsafeVariant>,
    /// Serve Prometheus's admin API (POST /api/v1/admin/tsdb/delete_series):
    /// whoever reaches HTTP can then delete data.
    #[arg(long, env = "CHRONICLE_ENABLE_ADMIN_API")]
    pub enable_admin_api: bool,
    /// Start as a new member of the running cluster on --nats-url: the node
    /// holds nothing until `chronicle cluster add-node <id>` moves shards to it.
    #[arg(long, env = "CHRONICLE_JOIN", conflicts_with = "initial_nodes")]
    pub join: bool,
    /// Require an API token on every route but the health probes (see
    /// docs/security.md); make the first tokens with the bootstrap token.
    #[arg(long, env = "CHRONICLE_AUTH")]
    pub auth: bool,
    /// File holding the bootstrap token (an admin credential; at least 16
    /// bytes, e.g. `openssl rand -hex 32`).
    #[arg(long, env = "CHRONICLE_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Serve a non-loopback address without --auth, or a NATS cluster
    /// without a cluster secret. Isolated test networks only.
    #[arg(long, env = "CHRONICLE_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain for HTTPS on --http-addr (with --tls-key).
    #[arg(long, env = "CHRONICLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "CHRONICLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// File holding the cluster secret (at least 16 bytes) that signs
    /// node-to-node messages; every member needs the same one.
    #[arg(long, env = "CHRONICLE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "CHRONICLE_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the variable to the flag: flags show in `ps`).
    #[arg(long, env = "CHRONICLE_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "CHRONICLE_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (JWT and nkey seed, `.creds`).
    #[arg(long, env = "CHRONICLE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`) to authenticate to NATS with.
    #[arg(long, env = "CHRONICLE_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// PEM CA certificates to trust for NATS TLS (implies TLS).
    #[arg(long, env = "CHRONICLE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Require TLS to NATS.
    #[arg(long, env = "CHRONICLE_NATS_TLS")]
    pub nats_tls: bool,
}

impl ServeArgs {
    /// Resolves the configuration in precedence order.
    /// Where traces go, if anywhere: `--otlp-endpoint`, else the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }

    pub fn resolve(&self) -> Result<NodeConfig, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?;
                toml::from_str::<NodeConfig>(&text)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(a) = self.http_addr {
            config.http_addr = a;
        }
        if !self.nats_url.is_empty() {
            config.nats.urls = self.nats_url.clone();
        }
        if self.no_sync {
            config.sync_writes = false;
        }
        if let Some(p) = &self.subject_prefix {
            config.subject_prefix = p.clone();
        }
        if let Some(id) = self.node_id {
            config.cluster.node_id = id;
        }
        if !self.initial_nodes.is_empty() {
            config.cluster.initial_nodes = self.initial_nodes.clone();
        }
        if let Some(n) = self.shards {
            config.cluster.shards = Some(n);
        }
        if let Some(r) = self.replication {
            config.cluster.replication = r;
        }
        if self.allow_fault_injection {
            config.fault_injection = true;
        }
        if self.unsafe_variant.is_some() {
            config.unsafe_variant = self.unsafe_variant;
        }
        if self.enable_admin_api {
            config.enable_admin_api = true;
        }
        if self.join {
            config.cluster.join = true;
        }
        if self.auth {
            config.auth.enabled = true;
        }
        if let Some(f) = &self.bootstrap_token_file {
            config.auth.bootstrap_token_file = Some(f.clone());
        }
        if self.insecure {
            config.auth.insecure = true;
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls.cert_file = Some(cert.clone());
            config.tls.key_file = Some(key.clone());
        }
        if let Some(f) = &self.cluster_secret_file {
            config.cluster.secret_file = Some(f.clone());
        }
        let n = &mut config.nats;
        for (flag, field) in [
            (&self.nats_user, &mut n.user),
            (&self.nats_password, &mut n.password),
            (&self.nats_token, &mut n.token),
        ] {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        if let Some(f) = &self.nats_creds {
            n.credentials_file = Some(f.clone());
        }
        if let Some(f) = &self.nats_nkey_file {
            let seed = std::fs::read_to_string(f)
                .map_err(|e| format!("--nats-nkey-file {}: {e}", f.display()))?;
            n.nkey_seed = Some(seed.trim().to_string());
        }
        if let Some(f) = &self.nats_ca {
            n.tls_ca_file = Some(f.clone());
            n.require_tls = true;
        }
        if self.nats_tls {
            n.require_tls = true;
        }
        config.cluster.validate(!config.nats.urls.is_empty())?;
        config.validate_security()?;
        chronicle_bus::subject::validate_publish(&format!("{}.query", config.subject_prefix))
            .map_err(|e| format!("subject prefix {:?}: {e}", config.subject_prefix))?;
        Ok(config)
    }
}

impl NodeConfig {
    /// Refuses settings that would expose the node or silently not
    /// authenticate: a NATS user without a password (or the reverse), half a
    /// TLS pair, a non-loopback listener without authentication, a NATS
    /// cluster with authentication but no cluster secret.
    pub fn validate_security(&self) -> Result<(), String> {
        let n = &self.nats;
        match (&n.user, &n.password) {
            (Some(_), None) => return Err("[nats] user is set without a password".into()),
            (None, Some(_)) => return Err("[nats] password is set without a user".into()),
            _ => {}
        }
        if n.tls_client_cert.is_some() != n.tls_client_key.is_some() {
            return Err("[nats] tls_client_cert and tls_client_key go together".into());
        }
        // NATS authenticates a connection with one of these: given two, the
        // client would send both and which one counts is the server's guess.
        let kinds: Vec<&str> = [
            ("user and password", n.user.is_some()),
            ("token", n.token.is_some()),
            ("nkey seed", n.nkey_seed.is_some()),
            ("credentials file", n.credentials_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, given)| given.then_some(kind))
        .collect();
        if kinds.len() > 1 {
            return Err(format!(
                "[nats] give one credential, not {}",
                kinds.join(" and ")
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err("[tls] cert_file and key_file go together".into());
        }
        if !self.auth.enabled && !self.auth.insecure && !self.http_addr.ip().is_loopback() {
            return Err(format!(
                "refusing to serve {} without authentication: start with --auth (and a bootstrap token), bind a loopback address, or pass --insecure",
                self.http_addr
            ));
        }
        if self.auth.enabled
            && !self.auth.insecure
            && !n.urls.is_empty()
            && self.cluster.secret_file.is_none()
            && std::env::var_os("CHRONICLE_CLUSTER_SECRET").is_none()
        {
            return Err(
                "--auth over NATS needs a cluster secret (--cluster-secret-file or CHRONICLE_CLUSTER_SECRET) so clients cannot forge node-to-node messages; or pass --insecure"
                    .into(),
            );
        }
        Ok(())
    }

    /// The bootstrap token: `CHRONICLE_BOOTSTRAP_TOKEN`, else the file's
    /// contents (trimmed).
    pub fn bootstrap_token(&self) -> Result<Option<String>, String> {
        if let Ok(t) = std::env::var("CHRONICLE_BOOTSTRAP_TOKEN") {
            return Ok(Some(t.trim().to_string()));
        }
        self.auth
            .bootstrap_token_file
            .as_ref()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("bootstrap token file {}: {e}", f.display()))
            })
            .transpose()
    }

    /// The cluster secret: `CHRONICLE_CLUSTER_SECRET`, else the file's bytes
    /// (a trailing newline dropped).
    pub fn cluster_secret(&self) -> Result<Option<Vec<u8>>, String> {
        if let Ok(t) = std::env::var("CHRONICLE_CLUSTER_SECRET") {
            return Ok(Some(t.trim_end().as_bytes().to_vec()));
        }
        self.cluster
            .secret_file
            .as_ref()
            .map(|f| {
                std::fs::read(f)
                    .map(|mut b| {
                        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                            b.pop();
                        }
                        b
                    })
                    .map_err(|e| format!("cluster secret file {}: {e}", f.display()))
            })
            .transpose()
    }

    pub fn ingest_config(&self) -> chronicle_ingest::IngestConfig {
        chronicle_ingest::IngestConfig {
            subject_prefix: self.subject_prefix.clone(),
            max_batch_points: self.ingest.max_batch_points.max(1),
            max_batch_delay: Duration::from_millis(self.ingest.max_batch_delay_ms),
            parse_queue: self.ingest.parse_queue.max(1),
            commits_in_flight: self.ingest.commits_in_flight.max(1),
            limits: self.point_limits(),
            ..Default::default()
        }
    }

    /// How OTLP resources become labels.
    pub fn otlp_options(&self) -> chronicle_ingest::otlp::OtlpOptions {
        chronicle_ingest::otlp::OtlpOptions {
            promote_resource_attributes: self.ingest.otlp_promote_resource_attributes.clone(),
        }
    }

    /// What one point and one write request may hold.
    pub fn point_limits(&self) -> chronicle_storage::Limits {
        chronicle_storage::Limits {
            max_request_points: self.ingest.max_request_points.max(1),
            max_request_label_bytes: self.ingest.max_request_label_bytes.max(1),
            ..chronicle_storage::Limits::default()
        }
    }

    pub fn query_config(&self) -> chronicle_query::QueryConfig {
        chronicle_query::QueryConfig {
            subject_prefix: self.subject_prefix.clone(),
            max_points: self.query.max_points,
            concurrency: self.query.concurrency.max(1),
            max_queued: self.query.max_queued,
            promql: chronicle_query::PromqlLimits {
                max_samples: self.query.max_samples.max(1),
                max_series: self.query.max_series.max(1),
                default_timeout: Duration::from_secs(self.query.timeout_secs.max(1)),
            },
            ..Default::default()
        }
    }

    /// The cluster's own NATS connection: the same servers and credentials,
    /// its own name and larger subscription buffers (Raft appends and
    /// snapshot chunks must not be dropped behind client traffic).
    pub fn cluster_nats_options(&self) -> chronicle_bus::NatsOptions {
        chronicle_bus::NatsOptions {
            name: Some("chronicle-node-cluster".into()),
            subscription_capacity: Some(self.nats.subscription_capacity.max(1024)),
            ..self.nats_options()
        }
    }

    pub fn nats_options(&self) -> chronicle_bus::NatsOptions {
        let n = &self.nats;
        chronicle_bus::NatsOptions {
            urls: n.urls.clone(),
            name: Some("chronicle-node".into()),
            user: n.user.clone(),
            password: n.password.clone(),
            token: n.token.clone(),
            nkey_seed: n.nkey_seed.clone(),
            credentials_file: n.credentials_file.clone(),
            require_tls: n.require_tls,
            tls_ca_file: n.tls_ca_file.clone(),
            tls_client_cert: n.tls_client_cert.clone().zip(n.tls_client_key.clone()),
            subscription_capacity: Some(n.subscription_capacity.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_metric_retention_rules_are_checked() {
        let parse = |text: &str| {
            toml::from_str::<NodeConfig>(text)
                .map_err(|e| e.to_string())?
                .retention
                .metric_retention()
        };
        let rules = parse(
            "[retention]\nraw = \"30d\"\n[[retention.metric]]\nmatch = 'debug_total{env=\"dev\"}'\nraw = \"2d\"\n",
        )
        .unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].1, std::time::Duration::from_secs(2 * 86_400));
        assert_eq!(rules[0].0.len(), 2);
        let refused = |text: &str, why: &str| {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        };
        refused(
            "[retention]\nraw = \"1d\"\n[[retention.metric]]\nmatch = 'x'\nraw = \"2d\"\n",
            "must be shorter than [retention] raw",
        );
        refused(
            "[[retention.metric]]\nmatch = 'x'\nraw = \"10m\"\n",
            "at least 1h",
        );
        refused(
            "[[retention.metric]]\nmatch = '{a=\"\"}'\nraw = \"2h\"\n",
            "at least one non-empty matcher",
        );
        refused(
            "[[retention.metric]]\nmatch = 'x or y'\nraw = \"2h\"\n",
            "match",
        );
        refused("[[retention.metric]]\nmatch = 'x'\nraw = \"soon\"\n", "raw");
        refused(
            "[[retention.metric]]\nselector = 'x'\nraw = \"2h\"\n",
            "unknown field",
        );
    }

    #[test]
    fn downsampling_rules_are_checked_when_the_file_is_read() {
        let parse = |text: &str| -> Result<Vec<chronicle_storage::DownsampleRule>, String> {
            toml::from_str::<NodeConfig>(text)
                .map_err(|e| e.to_string())?
                .retention
                .downsample_rules()
        };
        let rules = parse(
            r#"
[[retention.downsample]]
window = "5m"
function = "mean"
retention = "400d"
match = '{job="node"}'

[[retention.downsample]]
window = "1h"
function = "p99"
"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].suffix(), "5m:mean");
        assert_eq!(rules[0].matchers.len(), 1);
        assert_eq!(rules[1].suffix(), "1h:p99");
        assert!(rules[1].matchers.is_empty());
        let refused = [
            ("window = \"0s\"\nfunction = \"mean\"", "longer than zero"),
            (
                "window = \"500ms\"\nfunction = \"mean\"",
                "between 1s and 7d",
            ),
            (
                "window = \"5m\"\nfunction = \"median\"",
                "unknown aggregate function",
            ),
            (
                "window = \"5m\"\nfunction = \"p99.5\"",
                "whole-number percentile",
            ),
            (
                "window = \"5m\"\nfunction = \"mean\"\nmatch = '{job=\"a\" or job=\"b\"}'",
                "one selector",
            ),
            (
                "window = \"5m\"\nfunction = \"mean\"\nmatch = \"rate(x[1m])\"",
                "not a series selector",
            ),
        ];
        for (rule, why) in refused {
            let err = parse(&format!("[[retention.downsample]]\n{rule}\n")).unwrap_err();
            assert!(err.contains(why), "{rule:?}: {err}");
        }
        let twice = "[[retention.downsample]]\nwindow = \"5m\"\nfunction = \"mean\"\n".repeat(2);
        assert!(parse(&twice).unwrap_err().contains("two rules write"));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nhttp_addr = \"127.0.0.1:9000\"\n[ingest]\nmax_batch_points = 7\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            http_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.http_addr.port(), 9100);
        assert_eq!(c.ingest.max_batch_points, 7);
        assert!(c.nats.urls.is_empty());

        std::fs::write(&file, "dta_dir = \"x\"\n").unwrap();
        let err = args.resolve().unwrap_err();
        assert!(err.contains("dta_dir"), "{err}");
    }
}

/// Known-bad variants for showing that the chaos checkers catch violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnsafeVariant {
    /// `/write` answers 204 and `kv put` 200 before the write commits.
    AckBeforeCommit,
    /// Reads answer from the local replica without confirming leadership.
    StaleReads,
}

//! Node-level metrics: bus traffic and round trips, and the `/metrics` text.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chronicle_actor_runtime::register;
use chronicle_bus::{Bus, ConnectionState, Message, NatsBus, Result, Subscription};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, TextEncoder,
};

static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_bus_messages_total",
            "Bus messages this node sent or received, by subject class and direction",
        ),
        &["class", "direction"],
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_bus_payload_bytes_total",
            "Payload bytes of the bus messages this node sent or received, by subject class and direction",
        ),
        &["class", "direction"],
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

/// The classes subjects are counted by: the word after the node's prefix.
/// Anything else is `other`, and NATS reply inboxes are `reply`, so the label
/// has a fixed set of values whatever subjects clients use.
const CLASSES: &[&str] = &[
    "ingest",
    "query",
    "cluster",
    "raft",
    "kv",
    "events",
    "node",
    "inbox",
    "collab",
    "anomaly",
    "remediation",
    "live",
];

fn subject_class<'a>(prefix: &str, subject: &'a str) -> &'a str {
    if subject.starts_with("_INBOX.") {
        return "reply";
    }
    let word = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.split('.').next());
    match word {
        Some(w) if CLASSES.contains(&w) => w,
        _ => "other",
    }
}

fn count(prefix: &str, subject: &str, direction: &str, bytes: usize) {
    let labels = [subject_class(prefix, subject), direction];
    MESSAGES.with_label_values(&labels).inc();
    BYTES.with_label_values(&labels).inc_by(bytes as u64);
}

static ROUND_TRIPS: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "chronicle_bus_request_seconds",
            "Bus request/reply round trips started by this node",
        )
        .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
    )
    .expect("static metric definition");
    register(Box::new(h.clone()));
    h
});

/// 1 when the bus is connected (always for the in-process bus).
pub static BUS_CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new(
        "chronicle_bus_connected",
        "1 when the node's bus connection is up",
    )
    .expect("static metric definition");
    register(Box::new(g.clone()));
    g
});

/// Messages NATS dropped for the node's subscriptions (slow consumer).
pub static BUS_SLOW_CONSUMER: LazyLock<IntCounter> = LazyLock::new(|| {
    let g = IntCounter::new(
        "chronicle_bus_slow_consumer_dropped_total",
        "Messages the NATS client dropped because a subscription's buffer was full",
    )
    .expect("static metric definition");
    register(Box::new(g.clone()));
    g
});

/// Node-to-node messages dropped for a missing or bad cluster MAC.
static BUS_UNAUTHENTICATED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "chronicle_bus_unauthenticated_dropped_total",
        "Node-to-node messages dropped because they carried no valid cluster MAC",
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

/// Requests refused by authentication (401) or authorization (403).
pub static AUTH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_auth_refused_total",
            "HTTP requests refused for missing or bad credentials (401) or rights (403)",
        ),
        &["status"],
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

/// The signed bus whose drops the metrics report.
static WATCHED_SIGNED: Mutex<Option<Arc<std::sync::atomic::AtomicU64>>> = Mutex::new(None);

/// Reports `rejected` in `chronicle_bus_unauthenticated_dropped_total`.
pub fn watch_rejected(rejected: Arc<std::sync::atomic::AtomicU64>) {
    *WATCHED_SIGNED.lock().unwrap_or_else(|e| e.into_inner()) = Some(rejected);
}

/// The NATS connection whose state the metrics report (none on the in-process bus).
static WATCHED_NATS: Mutex<Option<Weak<NatsBus>>> = Mutex::new(None);

/// Reports this connection's state in `chronicle_bus_connected` and its drops
/// in `chronicle_bus_slow_consumer_dropped_total`, read at scrape time.
pub fn watch_nats(bus: &Arc<NatsBus>) {
    *WATCHED_NATS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(bus));
}

fn refresh_bus_gauges() {
    if let Some(rejected) = WATCHED_SIGNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let (seen, reported) = (rejected.load(Ordering::Relaxed), BUS_UNAUTHENTICATED.get());
        if seen > reported {
            BUS_UNAUTHENTICATED.inc_by(seen - reported);
        }
    }
    let watched = WATCHED_NATS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bus) = watched.as_ref().and_then(Weak::upgrade) {
        BUS_CONNECTED.set(i64::from(bus.state() == ConnectionState::Connected));
        // The connection counts; the counter catches up at each scrape.
        let (seen, reported) = (bus.slow_consumer_events(), BUS_SLOW_CONSUMER.get());
        if seen > reported {
            BUS_SLOW_CONSUMER.inc_by(seen - reported);
        }
    }
}

/// Wraps a bus to count what the node sends and time its round trips.
pub struct MeteredBus {
    inner: Arc<dyn Bus>,
    /// The node's subject prefix, which subject classes follow.
    prefix: Arc<str>,
    requests_in_flight: AtomicI64,
}

impl MeteredBus {
    pub fn new(inner: Arc<dyn Bus>, prefix: &str) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
            requests_in_flight: AtomicI64::new(0),
        }
    }
}

#[async_trait]
impl Bus for MeteredBus {
    async fn publish(&self, mut message: Message) -> Result<()> {
        chronicle_bus::trace::inject(&mut message.headers);
        count(
            &self.prefix,
            &message.subject,
            "sent",
            message.payload.len(),
        );
        self.inner.publish(message).await
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        let prefix = self.prefix.clone();
        let subscription = self.inner.subscribe(subject, queue_group).await?;
        Ok(subscription.inspect(move |m| count(&prefix, &m.subject, "received", m.payload.len())))
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Message> {
        chronicle_bus::trace::inject(&mut message.headers);
        count(
            &self.prefix,
            &message.subject,
            "sent",
            message.payload.len(),
        );
        // The reply counts under the request's class (its subject is an inbox).
        let class = subject_class(&self.prefix, &message.subject).to_owned();
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.inner.request(message, timeout).await;
        if let Ok(reply) = &result {
            let labels = [class.as_str(), "received"];
            MESSAGES.with_label_values(&labels).inc();
            BYTES
                .with_label_values(&labels)
                .inc_by(reply.payload.len() as u64);
        }
        ROUND_TRIPS.observe(started.elapsed().as_secs_f64());
        self.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn drain(&self) -> Result<()> {
        self.inner.drain().await
    }

    fn new_inbox(&self) -> String {
        self.inner.new_inbox()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
}

/// The cluster node whose groups the metrics report (the last started).
static WATCHED_CLUSTER: Mutex<Option<Weak<chronicle_cluster::ClusterNode>>> = Mutex::new(None);

/// Reports `cluster`'s shards (Raft state, RocksDB figures) at each scrape.
pub fn watch_cluster(cluster: &Arc<chronicle_cluster::ClusterNode>) {
    *WATCHED_CLUSTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(cluster));
}

/// Every registered metric in Prometheus's text format.
pub fn render() -> String {
    // Touch the node's own metrics so they appear before their first event.
    // Fixed label sets start at zero, so `rate()` sees their first event.
    for class in CLASSES.iter().chain(&["reply", "other"]) {
        for direction in ["sent", "received"] {
            MESSAGES.with_label_values(&[class, direction]);
            BYTES.with_label_values(&[class, direction]);
        }
    }
    for status in ["401", "403"] {
        AUTH_REFUSED.with_label_values(&[status]);
    }
    LazyLock::force(&ROUND_TRIPS);
    LazyLock::force(&BUS_CONNECTED);
    LazyLock::force(&BUS_SLOW_CONSUMER);
    LazyLock::force(&BUS_UNAUTHENTICATED);
    LazyLock::force(&AUTH_REFUSED);
    refresh_bus_gauges();
    chronicle_query::metrics::register_all();
    let cluster = WATCHED_CLUSTER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Weak::upgrade);
    if let Some(cluster) = cluster {
        cluster.refresh_metrics();
    }
    LazyLock::force(&chronicle_actor_runtime::ACTOR_RESTARTS);
    TextEncoder::new()
        .encode_to_string(&prometheus::default_registry().gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

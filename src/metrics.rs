//! Node-level metrics: bus traffic and round trips, and the `/metrics` text.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chronicle_actor_runtime::register;
use chronicle_bus::{Bus, Message, Result, Subscription};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, TextEncoder};

static PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "chronicle_bus_published_messages_total",
        "Messages this node published on the bus",
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

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

/// Wraps a bus to count what the node sends and time its round trips.
pub struct MeteredBus {
    inner: Arc<dyn Bus>,
    requests_in_flight: AtomicI64,
}

impl MeteredBus {
    pub fn new(inner: Arc<dyn Bus>) -> Self {
        Self {
            inner,
            requests_in_flight: AtomicI64::new(0),
        }
    }
}

#[async_trait]
impl Bus for MeteredBus {
    async fn publish(&self, message: Message) -> Result<()> {
        PUBLISHED.inc();
        self.inner.publish(message).await
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        self.inner.subscribe(subject, queue_group).await
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message> {
        PUBLISHED.inc();
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.inner.request(message, timeout).await;
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
}

/// Every registered metric in Prometheus's text format.
pub fn render() -> String {
    // Touch the node's own metrics so they appear before their first event.
    LazyLock::force(&PUBLISHED);
    LazyLock::force(&ROUND_TRIPS);
    LazyLock::force(&BUS_CONNECTED);
    LazyLock::force(&chronicle_actor_runtime::ACTOR_RESTARTS);
    TextEncoder::new()
        .encode_to_string(&prometheus::default_registry().gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

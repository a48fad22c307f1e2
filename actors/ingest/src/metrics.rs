use std::sync::LazyLock;

use chronicle_actor_runtime::register;
use prometheus::{Histogram, HistogramOpts, IntCounter};

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    register(Box::new(c.clone()));
    c
}

pub static POINTS_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chronicle_ingest_points_total",
        "Points written durably and acknowledged",
    )
});
pub static BYTES_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chronicle_ingest_bytes_total",
        "Payload bytes received by the ingest actor from the bus",
    )
});
pub static REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chronicle_ingest_rejected_messages_total",
        "Ingest messages rejected for bad input",
    )
});
pub static BATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "chronicle_ingest_batch_write_seconds",
            "Time to write one batch durably",
        )
        .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
    )
    .expect("static metric definition");
    register(Box::new(h.clone()));
    h
});

/// Registers the ingest metrics so `/metrics` lists them before the first write.
pub fn register_all() {
    LazyLock::force(&POINTS_WRITTEN);
    LazyLock::force(&BYTES_RECEIVED);
    LazyLock::force(&REJECTED);
    LazyLock::force(&BATCH_SECONDS);
}

//! `chronicle_collab_*` metrics.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    chronicle_actor_runtime::register(Box::new(c.clone()));
    c
}

pub static SESSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_collab_sessions",
            "Collaborative sessions open on this node",
        )
        .expect("static metric definition"),
    )
});

pub static PARTICIPANTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_collab_participants",
            "Participants connected to this node's sessions",
        )
        .expect("static metric definition"),
    )
});

pub static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronicle_collab_refused_total",
                "Participant messages refused, by reason (viewer, full, malformed, incomplete, inconsistent, flood, busy, clients)",
            ),
            &["reason"],
        )
        .expect("static metric definition"),
    )
});

pub static DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronicle_collab_participants_dropped_total",
                "Participants the node disconnected, by reason (slow, flood, malformed, revoked)",
            ),
            &["reason"],
        )
        .expect("static metric definition"),
    )
});

pub static WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "chronicle_collab_write_seconds",
                "Time to make a batch of edits durable in the replicated state",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("static metric definition"),
    )
});

pub static CLAIMS_LOST: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_collab_claims_lost_total",
            "Batches of edits not stored because a client id they carry was claimed by another node meanwhile (the session reloads from the state)",
        )
        .expect("static metric definition"),
    )
});

pub static QUERY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "chronicle_collab_query_seconds",
                "Time a session's live query took to run",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )
        .expect("static metric definition"),
    )
});

pub static COMPACTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_collab_compactions_total",
            "Session logs folded into a snapshot",
        )
        .expect("static metric definition"),
    )
});

pub static REMOTE_UPDATES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronicle_collab_remote_updates_total",
                "Updates from other nodes that changed a session's document here, by how they came: relay (as they were made), sync (a catch-up after a missed relay) or state (read from the replicated state after taking a client id over from another node)",
            ),
            &["via"],
        )
        .expect("static metric definition"),
    )
});

/// Makes every metric visible (at zero) from the start.
pub fn init() {
    LazyLock::force(&SESSIONS);
    LazyLock::force(&PARTICIPANTS);
    LazyLock::force(&REFUSED);
    LazyLock::force(&DROPPED);
    LazyLock::force(&WRITE_SECONDS);
    LazyLock::force(&COMPACTIONS);
    LazyLock::force(&CLAIMS_LOST);
    LazyLock::force(&QUERY_SECONDS);
    for via in ["relay", "sync", "state"] {
        REMOTE_UPDATES.with_label_values(&[via]);
    }
}

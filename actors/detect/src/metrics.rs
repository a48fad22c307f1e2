//! `chronicle_detect_*` metrics.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    chronicle_actor_runtime::register(Box::new(c.clone()));
    c
}

pub static POINTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_detect_points_total",
            "Points of batches of led shards the detector looked at (watched or not)",
        )
        .expect("static metric definition"),
    )
});

pub static SERIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_detect_series",
            "Series the detector watches here",
        )
        .expect("static metric definition"),
    )
});

pub static REFUSED_SERIES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_detect_series_refused_total",
            "Points of watched series left alone because max_series were watched already",
        )
        .expect("static metric definition"),
    )
});

pub static LAGGED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_detect_batches_missed_total",
            "Applied batches the detector fell too far behind to see",
        )
        .expect("static metric definition"),
    )
});

pub static ANOMALIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronicle_detect_anomalies_total",
                "Anomalies the detector opened, by type",
            ),
            &["type"],
        )
        .expect("static metric definition"),
    )
});

pub static EXTERNAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronicle_detect_external_total",
                "Anomalies other services sent on <prefix>.anomaly.*, by outcome (stored, refused)",
            ),
            &["outcome"],
        )
        .expect("static metric definition"),
    )
});

pub static CHECKPOINT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_detect_checkpoint_bytes_total",
            "Bytes of detector state saved in the replicated state",
        )
        .expect("static metric definition"),
    )
});

/// Makes every metric visible (at zero) from the start.
pub fn init() {
    LazyLock::force(&POINTS);
    LazyLock::force(&SERIES);
    LazyLock::force(&REFUSED_SERIES);
    LazyLock::force(&LAGGED);
    LazyLock::force(&CHECKPOINT_BYTES);
    for kind in crate::Kind::ALL {
        ANOMALIES.with_label_values(&[kind.as_str()]);
    }
    for outcome in ["stored", "refused"] {
        EXTERNAL.with_label_values(&[outcome]);
    }
}

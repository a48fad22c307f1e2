//! The query actor's metrics: latency and result size by language and
//! outcome, the wait for a slot, and refusals. Label values come from fixed
//! sets (languages, [`QueryError::code`]), never from the query.

use std::sync::LazyLock;

use chronicle_actor_runtime::register;
use chronicle_engine::{Answer, QueryValue};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};

use crate::promql::MetaAnswer;
use crate::request::QueryResult;
use crate::QueryError;

static SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "chronicle_query_duration_seconds",
            "Queries from admission to answer, by language and outcome (ok or the error code)",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0,
        ]),
        &["language", "outcome"],
    )
    .expect("static metric definition");
    register(Box::new(h.clone()));
    h
});

static ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_query_result_rows_total",
            "Rows, samples or names answered by successful queries, by language",
        ),
        &["language"],
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

static QUEUE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "chronicle_query_queue_wait_seconds",
            "Time an admitted query waited for a free slot before running",
        )
        .buckets(vec![
            0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0,
        ]),
    )
    .expect("static metric definition");
    register(Box::new(h.clone()));
    h
});

static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "chronicle_query_rejected_total",
            "Queries refused before running: busy (wait queue full) or timeout (no slot in time)",
        ),
        &["reason"],
    )
    .expect("static metric definition");
    register(Box::new(c.clone()));
    c
});

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    register(Box::new(g.clone()));
    g
}

pub(crate) static RUNNING: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("chronicle_query_running", "Queries running now"));

pub(crate) static WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "chronicle_query_waiting",
        "Admitted queries waiting for a slot",
    )
});

/// Registers the query metrics so `/metrics` lists them before the first query.
pub fn register_all() {
    // The series of fixed label sets start at zero, so `rate()` sees
    // their first event.
    for language in ["promql", "sql", "cql", "select", "metadata"] {
        SECONDS.with_label_values(&[language, "ok"]);
        ROWS.with_label_values(&[language]);
    }
    for reason in ["busy", "timeout"] {
        REJECTED.with_label_values(&[reason]);
    }
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&RUNNING);
    LazyLock::force(&WAITING);
}

pub(crate) fn waited(seconds: f64) {
    QUEUE_WAIT.observe(seconds);
}

pub(crate) fn rejected(reason: &'static str) {
    REJECTED.with_label_values(&[reason]).inc();
}

/// Records one query's end.
pub(crate) fn finished<T: ResultSize>(
    language: &'static str,
    outcome: &Result<T, QueryError>,
    seconds: f64,
) {
    let code = match outcome {
        Ok(answer) => {
            ROWS.with_label_values(&[language]).inc_by(answer.rows());
            "ok"
        }
        Err(e) => e.code(),
    };
    SECONDS
        .with_label_values(&[language, code])
        .observe(seconds);
}

/// What a successful answer counts as rows.
pub(crate) trait ResultSize {
    fn rows(&self) -> u64;
}

impl ResultSize for QueryResult {
    fn rows(&self) -> u64 {
        match &self.rows {
            Some(rows) => rows.len() as u64,
            None => self.series.iter().map(|s| s.points.len() as u64).sum(),
        }
    }
}

impl ResultSize for Answer {
    fn rows(&self) -> u64 {
        match &self.value {
            QueryValue::Scalar(_) | QueryValue::String(_) => 1,
            QueryValue::Vector(v) => v.len() as u64,
            QueryValue::Matrix(m) => m.iter().map(|s| s.samples.len() as u64).sum(),
        }
    }
}

impl ResultSize for MetaAnswer {
    fn rows(&self) -> u64 {
        match self {
            MetaAnswer::Series(s) => s.len() as u64,
            MetaAnswer::Strings(s) => s.len() as u64,
        }
    }
}

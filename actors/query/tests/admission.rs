//! The query actor's admission: a bounded wait queue (busy at once past it),
//! a timeout that holds in the queue and while running, and cancellation.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use chronicle_bus::{LocalBus, LocalBusOptions};
use chronicle_engine::source::SeriesSource;
use chronicle_engine::{EngineError, RangeSeries};
use chronicle_query::{
    DataSource, PromqlQuery, QueryActor, QueryConfig, QueryError, QueryGate, QueryRequest,
    ReadLimit, RunQuery, SeriesRead,
};
use chronicle_storage::{AggregateRequest, AggregateSeries, Matcher, SeriesKey};

/// A source whose reads take until they are released (or 10 s at most).
#[derive(Default)]
struct Slow {
    release: AtomicBool,
    reads: AtomicUsize,
}

impl Slow {
    fn wait(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let until = Instant::now() + Duration::from_secs(10);
        while !self.release.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl SeriesSource for Slow {
    fn select(
        &self,
        _: &[Matcher],
        _: i64,
        _: i64,
        _: usize,
    ) -> Result<Vec<RangeSeries>, EngineError> {
        self.wait();
        Ok(Vec::new())
    }
}

impl DataSource for Slow {
    fn series(
        &self,
        _: &[Matcher],
        _: i64,
        _: i64,
        _: ReadLimit,
    ) -> Result<SeriesRead, QueryError> {
        self.wait();
        Ok(SeriesRead::default())
    }

    fn aggregate(&self, _: &AggregateRequest) -> Result<Vec<AggregateSeries>, QueryError> {
        self.wait();
        Ok(Vec::new())
    }

    fn series_keys(
        &self,
        _: &[Matcher],
        _: i64,
        _: i64,
        _: usize,
    ) -> Result<Option<Vec<SeriesKey>>, QueryError> {
        Ok(Some(Vec::new()))
    }
}

/// A slow source, a bus, and room for one query running and one waiting.
fn one_running_one_waiting() -> (Arc<Slow>, Arc<LocalBus>, QueryConfig) {
    let config = QueryConfig {
        concurrency: 1,
        max_queued: 1,
        ..QueryConfig::default()
    };
    (
        Arc::new(Slow::default()),
        Arc::new(LocalBus::new(LocalBusOptions::default())),
        config,
    )
}

fn request(json: &str) -> QueryRequest {
    serde_json::from_str(json).unwrap()
}

/// The node's HTTP routes run queries through the gate the actor admits bus
/// requests through: one bound for both, whichever way a query comes.
#[test]
fn the_gate_and_the_actor_share_one_admission() {
    actix::System::new().block_on(async {
        let (source, bus, config) = one_running_one_waiting();
        let gate = QueryGate::new(source.clone(), config);
        let actor = QueryActor::with_gate(bus, gate.clone()).start();
        let q = || request(r#"{"metric":"m","start":0,"end":10}"#);
        let promql = || PromqlQuery {
            query: "m".into(),
            start: 0,
            end: 0,
            step: 0,
            timeout: Duration::ZERO,
            cancelled: None,
        };

        // One runs through the actor, one waits at the gate: both places
        // are then full, and a query either way is refused at once.
        let running = actix::spawn(actor.send(RunQuery::new(q())));
        while source.reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waiting = actix::spawn(gate.promql(promql()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let through_gate = gate.run(q(), Duration::ZERO, None).await;
        assert!(
            matches!(through_gate, Err(QueryError::Busy)),
            "{through_gate:?}"
        );
        let through_actor = actor.send(RunQuery::new(q())).await.unwrap();
        assert!(
            matches!(through_actor, Err(QueryError::Busy)),
            "{through_actor:?}"
        );

        source.release.store(true, Ordering::SeqCst);
        running.await.unwrap().unwrap().unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(
            source.reads.load(Ordering::SeqCst),
            2,
            "the waiting query ran"
        );
    });
}

#[test]
fn a_full_queue_answers_busy_at_once_and_timeouts_hold() {
    actix::System::new().block_on(async {
        let (source, bus, config) = one_running_one_waiting();
        let actor = QueryActor::new(bus, source.clone(), config).start();
        let q = || request(r#"{"metric":"m","start":0,"end":10}"#);

        // One runs, one waits: the third is refused at once.
        let running = actor.send(RunQuery::new(q()));
        let waiting = actor.send(RunQuery::new(q()));
        let (running, waiting) = (actix::spawn(running), actix::spawn(waiting));
        while source.reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let third = actor.send(RunQuery::new(q())).await.unwrap();
        assert!(matches!(third, Err(QueryError::Busy)), "{third:?}");
        assert!(started.elapsed() < Duration::from_secs(1));

        source.release.store(true, Ordering::SeqCst);
        running.await.unwrap().unwrap().unwrap();
        waiting.await.unwrap().unwrap().unwrap();

        // A timeout is kept even while the work is stuck in storage.
        source.release.store(false, Ordering::SeqCst);
        let started = Instant::now();
        let timed = actor
            .send(RunQuery::new(request(
                r#"{"metric":"m","start":0,"end":10,"timeout":"200ms"}"#,
            )))
            .await
            .unwrap();
        assert!(matches!(timed, Err(QueryError::Timeout)), "{timed:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        source.release.store(true, Ordering::SeqCst);

        // A bad timeout is the client's error.
        let bad = actor
            .send(RunQuery::new(request(r#"{"metric":"m","timeout":"soon"}"#)))
            .await
            .unwrap();
        assert!(matches!(bad, Err(QueryError::BadRequest(_))), "{bad:?}");

        // A cancelled query stops before it runs.
        let cancelled = Arc::new(AtomicBool::new(true));
        let answer = actor
            .send(RunQuery {
                request: q(),
                cancelled: Some(cancelled),
                span: tracing::Span::none(),
            })
            .await
            .unwrap();
        assert!(matches!(answer, Err(QueryError::Cancelled)), "{answer:?}");
    });
}

/// A source whose reads set the query's cancel flag, as an HTTP client that
/// goes away while the first read runs would, and count themselves.
struct CancelsOnRead {
    flag: Arc<AtomicBool>,
    reads: AtomicUsize,
}

impl CancelsOnRead {
    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.flag.store(true, Ordering::SeqCst);
    }
}

impl SeriesSource for CancelsOnRead {
    fn select(
        &self,
        _: &[Matcher],
        _: i64,
        _: i64,
        _: usize,
    ) -> Result<Vec<RangeSeries>, EngineError> {
        self.read();
        Ok(Vec::new())
    }
}

impl DataSource for CancelsOnRead {
    fn series(
        &self,
        _: &[Matcher],
        _: i64,
        _: i64,
        _: ReadLimit,
    ) -> Result<SeriesRead, QueryError> {
        self.read();
        Ok(SeriesRead::default())
    }

    fn aggregate(&self, _: &AggregateRequest) -> Result<Vec<AggregateSeries>, QueryError> {
        self.read();
        Ok(Vec::new())
    }

    fn series_keys(
        &self,
        _: &[Matcher],
        _: i64,
        _: i64,
        _: usize,
    ) -> Result<Option<Vec<SeriesKey>>, QueryError> {
        Ok(Some(Vec::new()))
    }
}

/// Every language checks between its reads and stages: cancelled during
/// its first read, a query answers "cancelled" and reads nothing more (a
/// CQL join's second side is never read).
#[test]
fn every_language_stops_at_its_next_check_once_cancelled() {
    let cases = [
        (r#"{"metric":"m","start":0,"end":10}"#, 1),
        (
            r#"{"metric":"m","start":0,"end":10,"aggregation":{"function":"mean","window":"1s"}}"#,
            1,
        ),
        (r#"{"sql":"SELECT * FROM m"}"#, 1),
        (r#"{"cql":"SELECT * FROM m LAST 1h"}"#, 1),
        (
            r#"{"cql":"SELECT a.value, b.value FROM m AS a ASOF JOIN n AS b LAST 1h"}"#,
            1,
        ),
        (r#"{"promql":"m + n","start":0,"end":100,"step":"1s"}"#, 1),
    ];
    actix::System::new().block_on(async {
        for (text, reads) in cases {
            let flag = Arc::new(AtomicBool::new(false));
            let source = Arc::new(CancelsOnRead {
                flag: flag.clone(),
                reads: AtomicUsize::new(0),
            });
            let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
            let actor = QueryActor::new(bus, source.clone(), QueryConfig::default()).start();
            let answer = actor
                .send(RunQuery {
                    request: request(text),
                    cancelled: Some(flag),
                    span: tracing::Span::none(),
                })
                .await
                .unwrap();
            assert!(
                matches!(answer, Err(QueryError::Cancelled)),
                "{text}: {answer:?}"
            );
            assert_eq!(source.reads.load(Ordering::SeqCst), reads, "{text}");
        }
    });
}

/// The timeout holds for every language, and past the queue each gets
/// "busy" at once.
#[test]
fn every_language_times_out_and_is_refused_when_busy() {
    let languages = [
        r#"{"metric":"m","start":0,"end":10"#,
        r#"{"sql":"SELECT * FROM m""#,
        r#"{"cql":"SELECT * FROM m LAST 1h""#,
        r#"{"promql":"m","start":0,"end":10,"step":"1s""#,
    ];
    actix::System::new().block_on(async {
        let source = Arc::new(Slow::default());
        let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
        let config = QueryConfig {
            concurrency: 1,
            max_queued: 0,
            ..QueryConfig::default()
        };
        let actor = QueryActor::new(bus, source.clone(), config).start();
        for text in languages {
            let started = Instant::now();
            let timed = actor
                .send(RunQuery::new(request(&format!(
                    r#"{text},"timeout":"200ms"}}"#
                ))))
                .await
                .unwrap();
            assert!(
                matches!(timed, Err(QueryError::Timeout)),
                "{text}: {timed:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(2), "{text}");
            // The timed-out work still holds the one slot until its read
            // returns: the next query of any language is busy at once.
            let started = Instant::now();
            let busy = actor
                .send(RunQuery::new(request(&format!("{text}}}"))))
                .await
                .unwrap();
            assert!(matches!(busy, Err(QueryError::Busy)), "{text}: {busy:?}");
            assert!(started.elapsed() < Duration::from_secs(1), "{text}");
            source.release.store(true, Ordering::SeqCst);
            while actor
                .send(RunQuery::new(request(&format!("{text}}}"))))
                .await
                .unwrap()
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            source.release.store(false, Ordering::SeqCst);
        }
    });
}

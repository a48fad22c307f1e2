//! `chronicle bench detect`: how well and how fast anomalies are detected.
//!
//! * Quality: the planted set of `chronicle_detect::planted` (series with
//!   daily and weekly seasonality, heavy-tailed autocorrelated noise, scrape
//!   misses, and anomalies of every kind planted after a two-week learning
//!   period), scored by window: precision, recall, F1, detection delay, and
//!   the most episodes open at once on one series.
//! * Throughput: a node started in this process watches `--series` series;
//!   writers send them through `/write` (line protocol over HTTP, the path
//!   users take) as fast as the node acknowledges, and the detector's count
//!   of points judged is read from `/metrics`. Reported: the ingest rate,
//!   the detector's rate, and how long after the last acknowledged write
//!   the detector had judged every point (its lag).

use std::time::{Duration, Instant};

use chronicle_detect::planted::{evaluate, PlantedConfig};
use chronicle_detect::DetectorConfig;
use clap::Args;
use serde_json::json;

use crate::bench::round3;
use crate::{Node, NodeConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Args, Debug)]
pub struct DetectBench {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Series of the planted set.
    #[arg(long, default_value_t = 60)]
    planted_series: usize,
    /// Days each planted series spans (the first 15 are for learning).
    #[arg(long, default_value_t = 21)]
    planted_days: i64,
    /// Series watched in the throughput run.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Points written per series in the throughput run.
    #[arg(long, default_value_t = 100)]
    points_per_series: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Do not fsync (a measurement of the rest).
    #[arg(long)]
    no_sync: bool,
}

pub fn run(args: DetectBench) -> Result<(), Box<dyn std::error::Error>> {
    if args.planted_days < 17 || args.planted_series == 0 {
        return Err(
            "--planted-days must be at least 17 (15 of learning) and --planted-series at least 1"
                .into(),
        );
    }
    if args.series == 0 || args.points_per_series == 0 || args.writers == 0 {
        return Err("--series, --points-per-series and --writers must be at least 1".into());
    }
    eprintln!(
        "quality: {} planted series of {} days",
        args.planted_series, args.planted_days
    );
    let planted = PlantedConfig {
        series: args.planted_series,
        days: args.planted_days,
        ..PlantedConfig::default()
    };
    let detector = DetectorConfig {
        absent_after_ms: 10 * 60_000,
        ..DetectorConfig::default()
    };
    let started = Instant::now();
    let score = evaluate(&planted, &detector);
    let quality_seconds = started.elapsed().as_secs_f64();
    let samples: f64 = planted.series as f64 * planted.days as f64 * 1440.0;

    let throughput = throughput(&args).map_err(|e| e.to_string())?;
    let report = json!({
        "quality": {
            "series": score.series,
            "windows": score.windows,
            "found": score.found,
            "detections": score.detections,
            "false_positives": score.false_positives,
            "precision": round3(score.precision),
            "recall": round3(score.recall),
            "f1": round3(score.f1),
            "delay_p50_minutes": score.delay_p50_minutes,
            "delay_p90_minutes": score.delay_p90_minutes,
            "by_type": score.by_kind.iter().map(|(k, w, f)| json!({"type": k, "windows": w, "found": f})).collect::<Vec<_>>(),
            "false_by_type": score.false_by_kind.iter().map(|(k, n)| json!({"type": k, "false_positives": n})).collect::<Vec<_>>(),
            "max_open_per_series": score.max_open_per_series,
            "detector_points_per_second_one_thread": round3(samples / quality_seconds),
        },
        "throughput": throughput,
    });
    if args.json {
        println!("{report}");
    } else {
        let q = &report["quality"];
        println!(
            "quality: precision {} recall {} F1 {} ({} of {} windows, {} false positives); delay p50 {} min, p90 {} min; at most {} open per series",
            q["precision"], q["recall"], q["f1"], q["found"], q["windows"], q["false_positives"],
            q["delay_p50_minutes"], q["delay_p90_minutes"], q["max_open_per_series"]
        );
        let t = &report["throughput"];
        println!(
            "throughput: {} series; ingest {} points/s acknowledged, detector {} points/s; every point judged {} s after the last write",
            t["series"], t["ingest_points_per_second"], t["detector_points_per_second"], t["detector_lag_seconds"]
        );
    }
    Ok(())
}

fn detected_points(http: &str) -> Result<f64, Error> {
    let text = ureq::get(format!("{http}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("chronicle_detect_points_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

fn throughput(args: &DetectBench) -> Result<serde_json::Value, Error> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().expect("static address"),
        sync_writes: !args.no_sync,
        ..NodeConfig::default()
    };
    let section: toml::Value = toml::from_str(&format!(
        "max_series = {}\n[[watch]]\nmetric = \"bench_*\"\n",
        args.series
    ))?;
    config.features.sections.insert("detect".into(), section);
    let system = actix::System::new();
    let (series, per, writers) = (args.series, args.points_per_series, args.writers);
    system.block_on(async move {
        let node = Node::start(config).await.map_err(|e| e.to_string())?;
        let http = format!("http://{}", node.http_addr);
        let result = tokio::task::spawn_blocking(move || drive(&http, series, per, writers))
            .await
            .map_err(|e| e.to_string())?;
        node.shutdown().await;
        result.map_err(|e| e.to_string().into())
    })
}

/// Writes `per` points to each of `series` series, a minute apart, with
/// noise, from `writers` threads; then waits for the detector.
fn drive(
    http: &str,
    series: usize,
    per: usize,
    writers: usize,
) -> Result<serde_json::Value, Error> {
    eprintln!("throughput: {series} series x {per} points through /write, {writers} writers");
    let before = detected_points(http)?;
    let start_ms = 1_767_225_600_000i64;
    // Each request: one time step for a slice of the series (as scrapes
    // arrive), at most 5,000 lines.
    let chunk = 5_000.min(series);
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let http = http.to_string();
            std::thread::spawn(move || -> Result<(), String> {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ w as u64;
                for step in (w..per).step_by(writers) {
                    let t = (start_ms + step as i64 * 60_000) * 1_000_000;
                    for from in (0..series).step_by(chunk) {
                        let mut body = String::with_capacity(chunk * 48);
                        for s in from..(from + chunk).min(series) {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            let noise = (state >> 40) as f64 / (1u64 << 24) as f64;
                            let value = 100.0 + (s % 50) as f64 + noise;
                            body.push_str(&format!("bench_load,host=h{s} value={value:.4} {t}\n"));
                        }
                        let r = agent
                            .post(format!("{http}/write"))
                            .send(body.as_bytes())
                            .map_err(|e| e.to_string())?;
                        if r.status() != 204 {
                            return Err(format!("write answered {}", r.status()));
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a writer panicked")??;
    }
    let written = (series * per) as f64;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let acked = Instant::now();
    let deadline = acked + Duration::from_secs(120);
    let mut seen = detected_points(http)? - before;
    while seen < written {
        if Instant::now() > deadline {
            return Err(
                format!("the detector judged {seen} of {written} points within 120 s").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        seen = detected_points(http)? - before;
    }
    let lag = acked.elapsed().as_secs_f64();
    let total = started.elapsed().as_secs_f64();
    Ok(json!({
        "series": series,
        "points": written,
        "ingest_points_per_second": round3(written / ingest_seconds),
        "detector_points_per_second": round3(written / total),
        "detector_lag_seconds": round3(lag),
    }))
}

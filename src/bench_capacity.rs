//! `chronicle bench capacity`: how accurate the capacity planner's forecasts
//! are. sMAPE and MASE on held-out points, side by side with statsmodels
//! (the same model family, fitted by statsmodels) and the seasonal-naive
//! baseline (MASE < 1: better than it), over generated series of known
//! structure and over a recording of a node's own usage under a load whose
//! rate swings in cycles.

use std::io::Write;
use std::time::{Duration, Instant};

use chronicle_capacity::forecast::{self, Seasonality, Trend};
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::{Node, NodeConfig};

type Error = Box<dyn std::error::Error>;

/// The script the statsmodels test uses: ExponentialSmoothing per series.
const STATSMODELS_FIT: &str = include_str!("../actors/capacity/tests/statsmodels_fit.py");

#[derive(Debug, Args)]
pub struct CapacityBench {
    /// How long to record the node's usage under load, in seconds (0: skip
    /// the recording).
    #[arg(long, default_value_t = 600)]
    pub record_secs: u64,
    /// The load's cycle in seconds: the write rate swings over it.
    #[arg(long, default_value_t = 60)]
    pub load_period_secs: u64,
    /// Points per second at the load's peak (its trough is a tenth of it).
    #[arg(long, default_value_t = 20_000)]
    pub peak_rate: u64,
    /// A Python with statsmodels; when it cannot run, statsmodels' columns
    /// are left out and the report says so.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One series to forecast: history, held-out truth, its true period.
struct Case {
    name: String,
    train: Vec<f64>,
    test: Vec<f64>,
    /// The period the series was made with (1: none), for the baseline.
    period: usize,
}

fn generated() -> Vec<Case> {
    let mut rng = SmallRng::seed_from_u64(22);
    let mut noise = move |scale: f64| (rng.random::<f64>() - 0.5) * 2.0 * scale;
    let pi2 = 2.0 * std::f64::consts::PI;
    let mut cases = Vec::new();
    let mut push = |name: &str, y: Vec<f64>, h: usize, period: usize| {
        let (train, test) = y.split_at(y.len() - h);
        cases.push(Case {
            name: name.into(),
            train: train.to_vec(),
            test: test.to_vec(),
            period,
        });
    };
    // Hourly for three weeks, a day ahead.
    push(
        "disk: rising line, daily cycle",
        (0..504)
            .map(|t| 5e10 + 2e7 * t as f64 + 3e8 * (pi2 * t as f64 / 24.0).sin() + noise(5e7))
            .collect(),
        48,
        24,
    );
    push(
        "ingest: growing level, proportional daily swings",
        (0..504)
            .map(|t| {
                let level = 10_000.0 + 10.0 * t as f64;
                level * (1.0 + 0.5 * (pi2 * t as f64 / 24.0).sin()) + noise(150.0)
            })
            .collect(),
        48,
        24,
    );
    push(
        "queries: weekday cycle with a level shift",
        (0..504)
            .map(|t| {
                let shift = if t >= 300 { 400.0 } else { 0.0 };
                1_000.0 + shift + 300.0 * (pi2 * t as f64 / 24.0).cos() + noise(40.0)
            })
            .collect(),
        48,
        24,
    );
    push(
        "disk: compaction sawtooth on a trend",
        (0..504)
            .map(|t| 2e9 + 1e6 * t as f64 + 4e7 * ((t % 24) as f64 / 24.0) + noise(2e6))
            .collect(),
        48,
        24,
    );
    // Daily for sixteen weeks, two weeks ahead.
    push(
        "series: slowing growth, weekly cycle",
        (0..112)
            .map(|t| {
                let t = t as f64;
                50_000.0
                    + 20_000.0 * (1.0 - (-t / 60.0).exp())
                    + 800.0 * (pi2 * t / 7.0).sin()
                    + noise(100.0)
            })
            .collect(),
        14,
        7,
    );
    push(
        "memory: approach to a limit",
        (0..200)
            .map(|t| 8e9 - 6e9 * (-(t as f64) / 50.0).exp() + noise(2e7))
            .collect(),
        20,
        1,
    );
    let mut level = 50.0;
    push(
        "latency: a wandering level",
        (0..300)
            .map(|_| {
                level += noise(1.0);
                level + noise(0.5)
            })
            .collect(),
        20,
        1,
    );
    push(
        "bus: two harmonics, period 12",
        (0..120)
            .map(|t| {
                let t = t as f64;
                500.0
                    + 80.0 * (pi2 * t / 12.0).sin()
                    + 30.0 * (2.0 * pi2 * t / 12.0).cos()
                    + noise(8.0)
            })
            .collect(),
        24,
        12,
    );
    cases
}

/// The seasonal-naive forecast: each point the value one period earlier.
fn seasonal_naive(train: &[f64], h: usize, period: usize) -> Vec<f64> {
    let m = period.max(1).min(train.len());
    (0..h).map(|i| train[train.len() - m + i % m]).collect()
}

/// What was measured on one case.
struct Scored {
    name: String,
    points: usize,
    held_out: usize,
    model: String,
    ours: (f64, f64),
    statsmodels: Option<(f64, f64)>,
    naive: (f64, f64),
    /// The series and our forecast of its held-out end (in the JSON
    /// report, so a recording can be looked at or fitted elsewhere).
    values: Vec<f64>,
    forecast: Vec<f64>,
}

fn score(case: &Case, predicted: &[f64]) -> (f64, f64) {
    (
        forecast::smape(&case.test, predicted),
        forecast::mase(&case.train, &case.test, predicted, case.period),
    )
}

/// Our forecasts, then statsmodels' with the family each case got.
fn evaluate(cases: &[Case], python: &str) -> Result<(Vec<Scored>, Option<String>), Error> {
    let mut scored = Vec::new();
    let mut requests = Vec::new();
    for c in cases {
        let model = forecast::auto(&c.train, None)?;
        let f = model.forecast(c.test.len(), 0.95, 200, 1);
        let spec = f.spec;
        requests.push(json!({
            "name": c.name,
            "train": c.train,
            "h": c.test.len(),
            "trend": match spec.trend { Trend::None => Value::Null, _ => json!("add") },
            "damped": spec.trend == Trend::Damped,
            "seasonal": match spec.seasonality {
                Seasonality::None => Value::Null,
                Seasonality::Additive => json!("add"),
                Seasonality::Multiplicative => json!("mul"),
            },
            "period": spec.period,
        }));
        scored.push(Scored {
            name: c.name.clone(),
            points: c.train.len() + c.test.len(),
            held_out: c.test.len(),
            model: f.model.clone(),
            ours: score(c, &f.mean),
            statsmodels: None,
            naive: score(c, &seasonal_naive(&c.train, c.test.len(), c.period)),
            values: c.train.iter().chain(&c.test).copied().collect(),
            forecast: f.mean.clone(),
        });
    }
    let note = match statsmodels(python, &json!({ "series": requests })) {
        Ok(answer) => {
            for (s, c) in scored.iter_mut().zip(cases) {
                let f: Option<Vec<f64>> = answer[&c.name]["forecast"]
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect());
                s.statsmodels = f.map(|f| score(c, &f));
            }
            None
        }
        Err(e) => Some(format!("statsmodels not compared: {e}")),
    };
    Ok((scored, note))
}

fn statsmodels(python: &str, request: &Value) -> Result<Value, Error> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("statsmodels_fit.py");
    std::fs::write(&script, STATSMODELS_FIT)?;
    let mut child = std::process::Command::new(python)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{python}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(&serde_json::to_vec(request)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string().into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Records the node's own usage, through its capacity collector (a sample
/// a second), while a load whose rate swings over `period` writes to it.
fn record(args: &CapacityBench) -> Result<Vec<Case>, Error> {
    let dir = tempfile::tempdir()?;
    let mut config = NodeConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().expect("static address"),
        ..NodeConfig::default()
    };
    config.features.sections.insert(
        "capacity".into(),
        toml::from_str(
            "sample_every = \"1s\"\nstep = \"1s\"\nhistory = \"1h\"\nhorizon = \"1m\"\n",
        )?,
    );
    let (secs, period, peak) = (
        args.record_secs,
        args.load_period_secs.max(2),
        args.peak_rate,
    );
    let system = actix::System::new();
    system.block_on(async move {
        let node = Node::start(config).await.map_err(|e| e.to_string())?;
        let http = format!("http://{}", node.http_addr);
        let result = tokio::task::spawn_blocking(move || {
            load_and_read(&http, secs, period, peak).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
        node.shutdown().await;
        result.map_err(|e| e.to_string().into())
    })
}

fn load_and_read(http: &str, secs: u64, period: u64, peak: u64) -> Result<Vec<Case>, Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    eprintln!(
        "recording the node's usage for {secs} s under a load of {} to {peak} points/s over a {period} s cycle",
        peak / 10
    );
    let started = Instant::now();
    let start_ns = chronicle_query::request::now_ns();
    let mut sent = 0u64;
    let mut seq = 0u64;
    let mut shown = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        let t = started.elapsed().as_secs_f64();
        let phase = (2.0 * std::f64::consts::PI * t / period as f64).sin();
        let rate = peak as f64 * (0.55 + 0.45 * phase);
        // Ten batches a second.
        let n = (rate / 10.0) as u64;
        let now = chronicle_query::request::now_ns();
        let body: String = (0..n)
            .map(|i| {
                seq += 1;
                format!(
                    "bench_usage,host=h{} value={} {}\n",
                    seq % 500,
                    seq % 1000,
                    now + i as i64
                )
            })
            .collect();
        agent.post(format!("{http}/write")).send(body.as_bytes())?;
        sent += n;
        let next = Duration::from_millis(100 * ((t * 10.0) as u64 + 1));
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let second = started.elapsed().as_secs();
        if second > shown {
            shown = second;
            eprint!("\r  {second} s, {sent} points");
        }
    }
    eprintln!("\r  {secs} s, {sent} points written");
    // The recording ends with the load (after it, the rate falls to zero:
    // not what was recorded under load); its last samples land meanwhile.
    let end_ns = chronicle_query::request::now_ns();
    std::thread::sleep(Duration::from_secs(2));
    // Read at the forecasts' resolution, as the node does (its default is
    // hourly steps over days: 24 to a daily cycle): here 12 to a load cycle.
    // At the 1 s sampling itself, a level model's one-step errors on so
    // smooth a series are as small as a seasonal one's, and AICc picks it.
    let step = (period / 12).max(1);
    let per_cycle = (period / step) as usize;
    let read = |promql: &str| -> Result<Vec<f64>, Error> {
        let mut r = agent
            .get(format!("{http}/api/v1/query_range"))
            .query("query", promql)
            .query("start", format!("{:.3}", start_ns as f64 / 1e9 + 10.0))
            .query("end", format!("{:.3}", end_ns as f64 / 1e9))
            .query("step", format!("{step}s"))
            .call()?;
        let v: Value = serde_json::from_slice(&r.body_mut().read_to_vec()?)?;
        Ok(v["data"]["result"][0]["values"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
                    .collect()
            })
            .unwrap_or_default())
    };
    let mut cases = Vec::new();
    for (name, promql) in [
        (
            "recorded ingest rate (points/s)",
            "sum(rate(chronicle_self_ingest_points_total[STEP]))",
        ),
        (
            "recorded resident memory (bytes)",
            "max(last_over_time(chronicle_self_memory_rss_bytes[STEP]))",
        ),
        (
            "recorded disk (bytes)",
            "sum(last_over_time(chronicle_self_disk_bytes[STEP]))",
        ),
    ] {
        let window = format!("{}s", step.max(2));
        let y = read(&promql.replace("STEP", &window))?;
        // Ten points and two load cycles at least, besides what is held out.
        let need = (2 * per_cycle).max(10) + 5;
        if y.len() < need {
            return Err(format!(
                "{name}: {} samples recorded, {need} needed: record longer (--record-secs)",
                y.len()
            )
            .into());
        }
        // The last fifth held out, at most two cycles.
        let h = (y.len() / 5).min(2 * per_cycle).max(1);
        let (train, test) = y.split_at(y.len() - h);
        cases.push(Case {
            name: name.into(),
            train: train.to_vec(),
            test: test.to_vec(),
            period: per_cycle,
        });
    }
    Ok(cases)
}

pub fn run(args: CapacityBench) -> Result<(), Error> {
    eprintln!("generated series: fitting ours and statsmodels'");
    let (generated, note) = evaluate(&generated(), &args.python)?;
    let (recorded, recorded_note) = if args.record_secs > 0 {
        let cases = record(&args)?;
        evaluate(&cases, &args.python)?
    } else {
        (Vec::new(), None)
    };
    let rows = |s: &[Scored]| -> Vec<Value> {
        s.iter()
            .map(|s| {
                json!({
                    "series": s.name, "points": s.points, "held_out": s.held_out, "model": s.model,
                    "ours": {"smape": s.ours.0, "mase": s.ours.1},
                    "statsmodels": s.statsmodels.map(|(a, b)| json!({"smape": a, "mase": b})),
                    "seasonal_naive": {"smape": s.naive.0, "mase": s.naive.1},
                    "values": s.values, "forecast": s.forecast,
                })
            })
            .collect()
    };
    let notes: Vec<String> = [note, recorded_note].into_iter().flatten().collect();
    let report = json!({
        "generated": rows(&generated),
        "recorded": rows(&recorded),
        "record_secs": args.record_secs,
        "load_period_secs": args.load_period_secs,
        "notes": notes,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let fmt =
        |x: Option<(f64, f64)>| x.map_or("-".to_string(), |(a, b)| format!("{a:.3} / {b:.3}"));
    for (title, set) in [("generated", &generated), ("recorded", &recorded)] {
        if set.is_empty() {
            continue;
        }
        println!(
            "{title}: sMAPE % / MASE on held-out points (MASE < 1: better than seasonal naive)"
        );
        println!(
            "{:<52} {:>5} {:>4}  {:<16} {:>17} {:>17} {:>17}",
            "series", "pts", "h", "model", "ours", "statsmodels", "seasonal naive"
        );
        for s in set {
            println!(
                "{:<52} {:>5} {:>4}  {:<16} {:>17} {:>17} {:>17}",
                s.name,
                s.points,
                s.held_out,
                s.model,
                fmt(Some(s.ours)),
                fmt(s.statsmodels),
                fmt(Some(s.naive))
            );
        }
        println!();
    }
    for n in report["notes"].as_array().into_iter().flatten() {
        println!("note: {}", n.as_str().unwrap_or_default());
    }
    Ok(())
}

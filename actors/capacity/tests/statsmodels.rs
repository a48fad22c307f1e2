//! Our Holt-Winters against statsmodels' `ExponentialSmoothing` (PyPI, the
//! reference implementation of the same recursions) on the same generated
//! series: for each, the same model family fitted by both, forecasts that
//! agree within 3 % (sMAPE between the two), and ours no less accurate on
//! the held-out points than statsmodels' (within 1 sMAPE point).
//! `scripts/test-all` installs statsmodels when it is missing.

use std::io::Write;
use std::process::{Command, Stdio};

use chronicle_capacity::forecast::{fit, smape, Seasonality, Spec, Trend};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    spec: Spec,
    series: Vec<f64>,
    h: usize,
}

fn noise(rng: &mut SmallRng, scale: f64) -> f64 {
    // The sum of four uniforms: near normal, bounded.
    (0..4).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>() * scale / 2.0
}

fn cases() -> Vec<Case> {
    let mut rng = SmallRng::seed_from_u64(42);
    let tau = 2.0 * std::f64::consts::PI;
    let mut cases = Vec::new();
    // Hourly disk use: a rising line with a daily cycle.
    let disk: Vec<f64> = (0..24 * 21)
        .map(|t| {
            500.0 + 0.8 * t as f64 + 20.0 * (tau * t as f64 / 24.0).sin() + noise(&mut rng, 4.0)
        })
        .collect();
    cases.push(Case {
        name: "disk: trend + additive daily",
        spec: Spec {
            trend: Trend::Additive,
            seasonality: Seasonality::Additive,
            period: 24,
        },
        series: disk,
        h: 48,
    });
    // Ingest rate: daily swings proportional to a growing level.
    let ingest: Vec<f64> = (0..24 * 21)
        .map(|t| {
            let level = 1000.0 + 2.0 * t as f64;
            level * (1.0 + 0.4 * (tau * t as f64 / 24.0).sin()) + noise(&mut rng, 15.0)
        })
        .collect();
    cases.push(Case {
        name: "ingest: trend + multiplicative daily",
        spec: Spec {
            trend: Trend::Additive,
            seasonality: Seasonality::Multiplicative,
            period: 24,
        },
        series: ingest,
        h: 48,
    });
    // Daily series counts with a weekly cycle and a slowing growth.
    let series: Vec<f64> = (0..7 * 16)
        .map(|t| {
            let growth = 5000.0 * (1.0 - (-(t as f64) / 60.0).exp());
            20_000.0 + growth + 300.0 * (tau * t as f64 / 7.0).cos() + noise(&mut rng, 60.0)
        })
        .collect();
    cases.push(Case {
        name: "series: damped trend + additive weekly",
        spec: Spec {
            trend: Trend::Damped,
            seasonality: Seasonality::Additive,
            period: 7,
        },
        series,
        h: 14,
    });
    // Memory: a damped trend, no season.
    let memory: Vec<f64> = (0..200)
        .map(|t| 4000.0 - 3000.0 * (-(t as f64) / 80.0).exp() + noise(&mut rng, 20.0))
        .collect();
    cases.push(Case {
        name: "memory: damped trend",
        spec: Spec {
            trend: Trend::Damped,
            seasonality: Seasonality::None,
            period: 0,
        },
        series: memory,
        h: 20,
    });
    // Query latency: a level that wanders.
    let mut level = 50.0;
    let latency: Vec<f64> = (0..300)
        .map(|_| {
            level += noise(&mut rng, 0.5);
            level + noise(&mut rng, 2.0)
        })
        .collect();
    cases.push(Case {
        name: "latency: level only",
        spec: Spec {
            trend: Trend::None,
            seasonality: Seasonality::None,
            period: 0,
        },
        series: latency,
        h: 20,
    });
    // Monthly-like period 12, additive, no trend.
    let monthly: Vec<f64> = (0..12 * 10)
        .map(|t| {
            200.0
                + 30.0 * (tau * t as f64 / 12.0).sin()
                + 10.0 * (tau * t as f64 / 6.0).cos()
                + noise(&mut rng, 3.0)
        })
        .collect();
    cases.push(Case {
        name: "bus: additive period 12",
        spec: Spec {
            trend: Trend::None,
            seasonality: Seasonality::Additive,
            period: 12,
        },
        series: monthly,
        h: 24,
    });
    cases
}

#[test]
fn forecasts_agree_with_statsmodels() {
    let cases = cases();
    let request = json!({"series": cases.iter().map(|c| {
        let train = &c.series[..c.series.len() - c.h];
        json!({"name": c.name, "train": train, "h": c.h,
               "trend": match c.spec.trend { Trend::None => Value::Null, _ => json!("add") },
               "damped": c.spec.trend == Trend::Damped,
               "seasonal": match c.spec.seasonality {
                   Seasonality::None => Value::Null,
                   Seasonality::Additive => json!("add"),
                   Seasonality::Multiplicative => json!("mul"),
               },
               "period": c.spec.period})
    }).collect::<Vec<_>>()});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/statsmodels_fit.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test-all installs statsmodels)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "statsmodels failed (is it installed? scripts/test-all installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "{:<40} {:>10} {:>10} {:>10} {:>12}",
        "series", "ours", "statsm.", "agree", "sse ratio"
    );
    for c in &cases {
        let (train, test) = c.series.split_at(c.series.len() - c.h);
        let model = fit(train, c.spec).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let ours = model.predict(c.h);
        let reference: Vec<f64> = theirs[c.name]["forecast"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let agreement = smape(&reference, &ours);
        let (ours_error, their_error) = (smape(test, &ours), smape(test, &reference));
        let sse_ratio = model.sse / theirs[c.name]["sse"].as_f64().unwrap();
        eprintln!(
            "{:<40} {:>9.3}% {:>9.3}% {:>9.3}% {:>12.4}",
            c.name, ours_error, their_error, agreement, sse_ratio
        );
        assert!(
            agreement < 3.0,
            "{}: our forecast is {agreement:.2} % (sMAPE) from statsmodels'",
            c.name
        );
        assert!(
            ours_error <= their_error + 1.0,
            "{}: sMAPE {ours_error:.3} against statsmodels' {their_error:.3}",
            c.name
        );
        // The optimiser reaches statsmodels' fit; with seasonality, within
        // 30 % of its in-sample SSE, since statsmodels also fits the m
        // initial seasonal states (ours come from a decomposition of the
        // first cycles), which buys it in-sample error, not forecasts.
        let bound = if c.spec.period > 0 { 1.3 } else { 1.01 };
        assert!(
            sse_ratio < bound,
            "{}: SSE {sse_ratio:.3} x statsmodels'",
            c.name
        );
    }
}

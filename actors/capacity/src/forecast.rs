//! Holt-Winters exponential smoothing, fitted and chosen from the data.
//!
//! Models: no trend, an additive trend or a damped one; no seasonality,
//! additive or multiplicative seasonality of a period found in the data
//! (or given). For each candidate, the smoothing parameters and the initial
//! level and slope are fitted by minimising the sum of squared one-step-ahead
//! errors with Nelder-Mead (argmin), from several starts, under the usual
//! bounds (`0 < alpha < 1`, `0 < beta < 1`, `0 < gamma < 1 - alpha`,
//! `0.8 <= phi <= 0.995`); the initial seasonal states come from a classical
//! decomposition of the first cycles. The candidate with the lowest AICc
//! wins. Prediction intervals come from simulating the fitted model forward
//! with its residual variance.
//!
//! The recursions are the error-correction form of Hyndman et al.,
//! *Forecasting with Exponential Smoothing* (2008), as statsmodels'
//! `ExponentialSmoothing` uses them:
//!
//! ```text
//! yhat_t = l + phi b (+ s_{t-m})          or (l + phi b) * s_{t-m}
//! l_t    = alpha (y_t - s_{t-m}) + (1 - alpha)(l + phi b)   (y_t / s_{t-m} when multiplicative)
//! b_t    = beta (l_t - l) + (1 - beta) phi b
//! s_t    = gamma (y_t - l - phi b) + (1 - gamma) s_{t-m}    (y_t / (l + phi b) when multiplicative)
//! ```

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::neldermead::NelderMead;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::CapacityError;

/// Points a series may have at most (one fit is O(n) per evaluation).
pub const MAX_POINTS: usize = 100_000;
/// The shortest series fitted.
pub const MIN_POINTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    None,
    Additive,
    /// Additive, damped by `phi` each step ahead.
    Damped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seasonality {
    None,
    Additive,
    Multiplicative,
}

/// One model of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub trend: Trend,
    pub seasonality: Seasonality,
    /// Points per season (0 without seasonality).
    pub period: usize,
}

impl Spec {
    /// Its name in the ETS notation with additive errors: `ETS(A,Ad,M)[24]`.
    pub fn name(&self) -> String {
        let t = match self.trend {
            Trend::None => "N",
            Trend::Additive => "A",
            Trend::Damped => "Ad",
        };
        match self.seasonality {
            Seasonality::None => format!("ETS(A,{t},N)"),
            Seasonality::Additive => format!("ETS(A,{t},A)[{}]", self.period),
            Seasonality::Multiplicative => format!("ETS(A,{t},M)[{}]", self.period),
        }
    }

    fn seasonal(&self) -> bool {
        self.seasonality != Seasonality::None
    }

    fn trended(&self) -> bool {
        self.trend != Trend::None
    }
}

/// Fitted smoothing parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub phi: f64,
}

/// The states the recursions carry.
#[derive(Debug, Clone, PartialEq)]
struct States {
    level: f64,
    slope: f64,
    /// By phase (`t mod period`): the latest seasonal state of that phase.
    season: Vec<f64>,
}

/// A fitted model: what a forecast starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub spec: Spec,
    pub params: Params,
    /// Points it was fitted on.
    pub n: usize,
    /// Sum of squared one-step-ahead errors.
    pub sse: f64,
    /// Free parameters counted by the information criterion.
    pub k: usize,
    pub aicc: f64,
    end: States,
}

/// A forecast with its prediction interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// `ETS(A,Ad,M)[24]`.
    pub model: String,
    pub spec: Spec,
    pub params: Params,
    pub aicc: f64,
    /// Root mean squared one-step-ahead error of the fit.
    pub rmse: f64,
    /// Coverage of `lower..upper` (0.95: a 95 % interval).
    pub coverage: f64,
    pub mean: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

impl Params {
    /// From the optimiser's unbounded coordinates.
    fn from_free(spec: &Spec, u: &[f64]) -> (Params, usize) {
        let mut i = 0;
        let mut next = || {
            i += 1;
            u[i - 1]
        };
        let alpha = 0.0001 + 0.9998 * sigmoid(next());
        let beta = if spec.trended() {
            0.0001 + 0.9998 * sigmoid(next())
        } else {
            0.0
        };
        let phi = if spec.trend == Trend::Damped {
            0.8 + 0.195 * sigmoid(next())
        } else {
            1.0
        };
        let gamma = if spec.seasonal() {
            (1.0 - alpha) * (0.0001 + 0.9998 * sigmoid(next()))
        } else {
            0.0
        };
        (
            Params {
                alpha,
                beta,
                gamma,
                phi,
            },
            i,
        )
    }
}

/// One step of the recursions: the forecast of `y` made from `s`, then `s`
/// updated with `y`. `None` when the states left the admissible region.
fn step(spec: &Spec, p: &Params, s: &mut States, t: usize, y: f64) -> Option<f64> {
    let damped = match spec.trend {
        Trend::None => 0.0,
        _ => p.phi * s.slope,
    };
    let base = s.level + damped;
    let phase = if spec.seasonal() { t % spec.period } else { 0 };
    let old = if spec.seasonal() {
        s.season[phase]
    } else {
        0.0
    };
    let (prediction, level) = match spec.seasonality {
        Seasonality::None => (base, p.alpha * y + (1.0 - p.alpha) * base),
        Seasonality::Additive => (base + old, p.alpha * (y - old) + (1.0 - p.alpha) * base),
        Seasonality::Multiplicative => {
            if old <= 0.0 || base <= 0.0 {
                return None;
            }
            (base * old, p.alpha * y / old + (1.0 - p.alpha) * base)
        }
    };
    if spec.trended() {
        s.slope = p.beta * (level - s.level) + (1.0 - p.beta) * damped;
    }
    match spec.seasonality {
        Seasonality::None => {}
        Seasonality::Additive => {
            s.season[phase] = p.gamma * (y - base) + (1.0 - p.gamma) * old;
        }
        Seasonality::Multiplicative => {
            s.season[phase] = p.gamma * y / base + (1.0 - p.gamma) * old;
        }
    }
    s.level = level;
    (prediction.is_finite() && level.is_finite() && s.slope.is_finite()).then_some(prediction)
}

/// The forecast `h` (>= 1) steps after the last point `n - 1`, from the
/// final states, without updating them.
fn ahead(spec: &Spec, p: &Params, s: &States, n: usize, h: usize) -> f64 {
    let trend = match spec.trend {
        Trend::None => 0.0,
        Trend::Additive => h as f64 * s.slope,
        Trend::Damped => {
            let mut sum = 0.0;
            let mut f = 1.0;
            for _ in 0..h {
                f *= p.phi;
                sum += f;
            }
            sum * s.slope
        }
    };
    let base = s.level + trend;
    match spec.seasonality {
        Seasonality::None => base,
        Seasonality::Additive => base + s.season[(n - 1 + h) % spec.period],
        Seasonality::Multiplicative => base * s.season[(n - 1 + h) % spec.period],
    }
}

/// Starting states by the heuristic of Hyndman et al. (2008, 2.6.1): the
/// seasonal states from a centred moving average over the first cycles (at
/// most four), level and slope from a line through the first seasonally
/// adjusted points.
fn heuristic(y: &[f64], spec: &Spec) -> States {
    let m = spec.period;
    let mut season = Vec::new();
    if spec.seasonal() {
        let cycles = (y.len() / m).clamp(2, 4);
        let span = &y[..cycles * m];
        // Centred moving average of width m (2 x m when m is even).
        let half = m / 2;
        let mut sums = vec![0.0; m];
        let mut counts = vec![0usize; m];
        for t in half..span.len().saturating_sub(half) {
            let ma = if m.is_multiple_of(2) {
                let inner: f64 = span[t + 1 - half..t + half].iter().sum();
                (inner + 0.5 * (span[t - half] + span[t + half])) / m as f64
            } else {
                span[t - half..=t + half].iter().sum::<f64>() / m as f64
            };
            let d = match spec.seasonality {
                Seasonality::Multiplicative => span[t] / ma,
                _ => span[t] - ma,
            };
            if d.is_finite() {
                sums[t % m] += d;
                counts[t % m] += 1;
            }
        }
        season = sums
            .iter()
            .zip(&counts)
            .map(|(s, c)| if *c > 0 { s / *c as f64 } else { f64::NAN })
            .collect();
        let neutral = if spec.seasonality == Seasonality::Multiplicative {
            1.0
        } else {
            0.0
        };
        for v in season.iter_mut() {
            if !v.is_finite() {
                *v = neutral;
            }
        }
        let mean = season.iter().sum::<f64>() / m as f64;
        for v in season.iter_mut() {
            match spec.seasonality {
                Seasonality::Multiplicative if mean > 0.0 => *v /= mean,
                Seasonality::Multiplicative => *v = 1.0,
                _ => *v -= mean,
            }
        }
    }
    let adjusted: Vec<f64> = y
        .iter()
        .enumerate()
        .take(y.len().min(10.max(2 * m)))
        .map(|(t, v)| match spec.seasonality {
            Seasonality::None => *v,
            Seasonality::Additive => v - season[t % m],
            Seasonality::Multiplicative => v / season[t % m],
        })
        .collect();
    let (a, b) = line(&adjusted);
    let (level, slope) = if spec.trended() {
        // The states before the first point.
        (a - b, b)
    } else {
        (adjusted.iter().sum::<f64>() / adjusted.len() as f64, 0.0)
    };
    States {
        level,
        slope,
        season,
    }
}

/// Least-squares line through `(t, y[t])`: (intercept, slope).
fn line(y: &[f64]) -> (f64, f64) {
    let n = y.len() as f64;
    if y.len() < 2 {
        return (y.first().copied().unwrap_or(0.0), 0.0);
    }
    let mt = (n - 1.0) / 2.0;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (t, v) in y.iter().enumerate() {
        sxy += (t as f64 - mt) * (v - my);
        sxx += (t as f64 - mt).powi(2);
    }
    let b = sxy / sxx;
    (my - b * mt, b)
}

/// The optimiser's problem: SSE as a function of the free coordinates.
#[derive(Clone)]
struct Problem<'a> {
    y: &'a [f64],
    spec: Spec,
    start: States,
    /// Scale of the level and slope offsets.
    spread: f64,
}

impl Problem<'_> {
    fn states(&self, u: &[f64], used: usize) -> States {
        let mut s = self.start.clone();
        s.level += u[used] * self.spread;
        if self.spec.trended() {
            s.slope += u[used + 1] * self.spread / self.y.len() as f64;
        }
        s
    }

    fn sse(&self, u: &[f64]) -> f64 {
        let (p, used) = Params::from_free(&self.spec, u);
        let mut s = self.states(u, used);
        let mut sse = 0.0;
        for (t, y) in self.y.iter().enumerate() {
            match step(&self.spec, &p, &mut s, t, *y) {
                Some(prediction) => sse += (y - prediction).powi(2),
                None => return f64::INFINITY,
            }
        }
        sse
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, u: &Self::Param) -> Result<f64, argmin::core::Error> {
        let v = self.sse(u);
        // Nelder-Mead compares; an inadmissible point must lose.
        Ok(if v.is_finite() { v } else { f64::MAX })
    }
}

/// Fits one model to `y` (finite values, evenly spaced).
pub fn fit(y: &[f64], spec: Spec) -> Result<Model, CapacityError> {
    check(y)?;
    if spec.seasonal() {
        if spec.period < 2 {
            return Err(CapacityError::Invalid(
                "a seasonal period of at least 2".into(),
            ));
        }
        if y.len() < 2 * spec.period {
            return Err(CapacityError::Invalid(format!(
                "{} points: a seasonal model of period {} needs two full cycles",
                y.len(),
                spec.period
            )));
        }
        if spec.seasonality == Seasonality::Multiplicative && y.iter().any(|v| *v <= 0.0) {
            return Err(CapacityError::Invalid(
                "multiplicative seasonality needs positive values".into(),
            ));
        }
    }
    let start = heuristic(y, &spec);
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let spread = (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / y.len() as f64)
        .sqrt()
        .max(mean.abs() * 1e-3)
        .max(1e-9)
        / 10.0;
    let problem = Problem {
        y,
        spec,
        start,
        spread,
    };
    let mut best: Option<(f64, Vec<f64>)> = None;
    for alpha in [0.2, 0.5, 0.8] {
        let mut u = vec![logit(alpha)];
        if spec.trended() {
            u.push(logit(0.1));
        }
        if spec.trend == Trend::Damped {
            u.push(logit(0.5));
        }
        if spec.seasonal() {
            u.push(logit(0.1));
        }
        u.push(0.0);
        if spec.trended() {
            u.push(0.0);
        }
        let mut simplex = vec![u.clone()];
        for i in 0..u.len() {
            let mut v = u.clone();
            v[i] += 1.0;
            simplex.push(v);
        }
        let solver = NelderMead::new(simplex)
            .with_sd_tolerance(1e-10)
            .map_err(|e| CapacityError::Fit(e.to_string()))?;
        let result = Executor::new(problem.clone(), solver)
            .configure(|s| s.max_iters(4000))
            .run()
            .map_err(|e| CapacityError::Fit(e.to_string()))?;
        let state = result.state();
        if let Some(param) = state.get_best_param() {
            let cost = state.get_best_cost();
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, param.clone()));
            }
        }
    }
    let (sse, u) = best.ok_or_else(|| CapacityError::Fit("no fit found".into()))?;
    if !sse.is_finite() || sse >= f64::MAX {
        return Err(CapacityError::Fit(format!(
            "{}: no admissible parameters for this series",
            spec.name()
        )));
    }
    let (params, used) = Params::from_free(&spec, &u);
    let mut end = problem.states(&u, used);
    for (t, v) in y.iter().enumerate() {
        step(&spec, &params, &mut end, t, *v);
    }
    let k = 2
        + 2 * usize::from(spec.trended())
        + usize::from(spec.trend == Trend::Damped)
        + if spec.seasonal() { spec.period } else { 0 };
    let n = y.len();
    let aicc = if n > k + 1 {
        let sse = sse.max(f64::MIN_POSITIVE * n as f64);
        n as f64 * (sse / n as f64).ln()
            + 2.0 * k as f64
            + 2.0 * (k * (k + 1)) as f64 / (n - k - 1) as f64
    } else {
        f64::INFINITY
    };
    Ok(Model {
        spec,
        params,
        n,
        sse,
        k,
        aicc,
        end,
    })
}

fn check(y: &[f64]) -> Result<(), CapacityError> {
    if y.len() < MIN_POINTS {
        return Err(CapacityError::Invalid(format!(
            "{} points: at least {MIN_POINTS} are needed",
            y.len()
        )));
    }
    if y.len() > MAX_POINTS {
        return Err(CapacityError::Invalid(format!(
            "{} points: at most {MAX_POINTS}",
            y.len()
        )));
    }
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        return Err(CapacityError::Invalid(format!(
            "point {i} is not a finite number (fill gaps before forecasting)"
        )));
    }
    Ok(())
}

/// The seasonal period of `y` in points, by the detector's autocorrelation
/// search on the series less its straight-line trend: `None` when no lag
/// of 2 to `len / 2` correlates clearly.
pub fn detect_period(y: &[f64]) -> Option<usize> {
    if y.len() < 8 {
        return None;
    }
    let (a, b) = line(y);
    let residuals: std::collections::VecDeque<f32> = y
        .iter()
        .enumerate()
        .map(|(t, v)| (v - a - b * t as f64) as f32)
        .collect();
    let config = chronicle_detect::season::SeasonConfig {
        min_period: 2,
        max_period: y.len() / 2,
        min_correlation: 0.3,
        ..Default::default()
    };
    chronicle_detect::season::find_period(&residuals, &config, None)
}

/// Every candidate the data allows, fitted; the lowest AICc first.
pub fn candidates(y: &[f64], period: Option<usize>) -> Result<Vec<Model>, CapacityError> {
    check(y)?;
    let period = match period {
        Some(p) => Some(p),
        None => detect_period(y),
    }
    .filter(|p| *p >= 2 && y.len() >= 2 * p);
    let mut specs = Vec::new();
    for trend in [Trend::None, Trend::Additive, Trend::Damped] {
        specs.push(Spec {
            trend,
            seasonality: Seasonality::None,
            period: 0,
        });
        if let Some(p) = period {
            specs.push(Spec {
                trend,
                seasonality: Seasonality::Additive,
                period: p,
            });
            if y.iter().all(|v| *v > 0.0) {
                specs.push(Spec {
                    trend,
                    seasonality: Seasonality::Multiplicative,
                    period: p,
                });
            }
        }
    }
    let mut fitted: Vec<Model> = specs.into_iter().filter_map(|s| fit(y, s).ok()).collect();
    if fitted.is_empty() {
        return Err(CapacityError::Fit("no model could be fitted".into()));
    }
    fitted.sort_by(|a, b| a.aicc.total_cmp(&b.aicc));
    Ok(fitted)
}

/// The model with the lowest AICc.
pub fn auto(y: &[f64], period: Option<usize>) -> Result<Model, CapacityError> {
    Ok(candidates(y, period)?.remove(0))
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Model {
    /// The residual standard deviation (SSE over the degrees of freedom).
    pub fn sigma(&self) -> f64 {
        (self.sse / self.n.saturating_sub(self.k).max(1) as f64).sqrt()
    }

    /// Point forecasts for the next `h` steps.
    pub fn predict(&self, h: usize) -> Vec<f64> {
        (1..=h)
            .map(|i| ahead(&self.spec, &self.params, &self.end, self.n, i))
            .collect()
    }

    /// Point forecasts and a `coverage` interval for the next `h` steps:
    /// `paths` futures simulated from the fitted model with normal errors
    /// of its residual variance (seeded: the same call gives the same
    /// interval).
    pub fn forecast(&self, h: usize, coverage: f64, paths: usize, seed: u64) -> Forecast {
        let mean = self.predict(h);
        let sigma = self.sigma();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut draws = vec![Vec::with_capacity(paths); h];
        for _ in 0..paths.max(1) {
            let mut s = self.end.clone();
            for (i, column) in draws.iter_mut().enumerate() {
                let t = self.n + i;
                let expected = ahead(&self.spec, &self.params, &s, t, 1);
                let y = expected + sigma * normal(&mut rng);
                if step(&self.spec, &self.params, &mut s, t, y).is_none() {
                    // A path that left the admissible region ends at its
                    // last value.
                    column.push(expected);
                    continue;
                }
                column.push(y);
            }
        }
        let tail = (1.0 - coverage.clamp(0.5, 0.999)) / 2.0;
        let (mut lower, mut upper) = (Vec::with_capacity(h), Vec::with_capacity(h));
        for column in &mut draws {
            column.sort_by(|a, b| a.total_cmp(b));
            let at = |q: f64| column[((column.len() - 1) as f64 * q).round() as usize];
            lower.push(at(tail));
            upper.push(at(1.0 - tail));
        }
        Forecast {
            model: self.spec.name(),
            spec: self.spec,
            params: self.params,
            aicc: self.aicc,
            rmse: (self.sse / self.n as f64).sqrt(),
            coverage,
            mean,
            lower,
            upper,
        }
    }
}

/// Symmetric mean absolute percentage error, in percent (0 to 200).
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let terms: Vec<f64> = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| {
            let d = a.abs() + f.abs();
            if d == 0.0 {
                0.0
            } else {
                200.0 * (a - f).abs() / d
            }
        })
        .collect();
    terms.iter().sum::<f64>() / terms.len().max(1) as f64
}

/// Mean absolute scaled error against the seasonal-naive forecast's
/// in-sample error (`period` 1: the naive one): below 1 beats it.
pub fn mase(train: &[f64], actual: &[f64], forecast: &[f64], period: usize) -> f64 {
    let m = period.max(1);
    let scale = train
        .windows(m + 1)
        .map(|w| (w[m] - w[0]).abs())
        .sum::<f64>()
        / train.len().saturating_sub(m).max(1) as f64;
    let mae = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum::<f64>()
        / actual.len().max(1) as f64;
    mae / scale.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily cycle of period 24 on a rising line with noise.
    fn seasonal(n: usize, slope: f64, amplitude: f64, multiplicative: bool, seed: u64) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n)
            .map(|t| {
                let level = 100.0 + slope * t as f64;
                let wave = (2.0 * std::f64::consts::PI * t as f64 / 24.0).sin();
                let v = if multiplicative {
                    level * (1.0 + amplitude * wave)
                } else {
                    level + amplitude * 10.0 * wave
                };
                v + normal(&mut rng)
            })
            .collect()
    }

    #[test]
    fn the_period_is_found() {
        let y = seasonal(24 * 14, 0.5, 0.3, false, 1);
        assert_eq!(detect_period(&y), Some(24));
        let line: Vec<f64> = (0..300).map(|t| 3.0 * t as f64).collect();
        assert_eq!(detect_period(&line), None);
    }

    #[test]
    fn a_seasonal_series_gets_a_seasonal_model_that_forecasts_it() {
        let y = seasonal(24 * 21, 0.2, 0.3, false, 2);
        let (train, test) = y.split_at(24 * 18);
        let model = auto(train, None).unwrap();
        assert_eq!(model.spec.seasonality, Seasonality::Additive, "{model:?}");
        assert_eq!(model.spec.period, 24);
        let f = model.forecast(test.len(), 0.95, 500, 7);
        let error = smape(test, &f.mean);
        assert!(error < 2.0, "sMAPE {error}");
        assert!(mase(train, test, &f.mean, 24) < 1.0);
        let inside = test
            .iter()
            .zip(f.lower.iter().zip(&f.upper))
            .filter(|(v, (lo, hi))| *lo <= *v && *v <= *hi)
            .count() as f64
            / test.len() as f64;
        assert!((0.85..=1.0).contains(&inside), "coverage {inside}");
    }

    #[test]
    fn growing_swings_are_multiplicative() {
        let y = seasonal(24 * 20, 1.0, 0.4, true, 3);
        let model = auto(&y, None).unwrap();
        assert_eq!(
            model.spec.seasonality,
            Seasonality::Multiplicative,
            "{}",
            model.spec.name()
        );
    }

    #[test]
    fn a_line_gets_a_trend_and_no_season() {
        let mut rng = SmallRng::seed_from_u64(4);
        let y: Vec<f64> = (0..200)
            .map(|t| 50.0 + 2.0 * t as f64 + normal(&mut rng))
            .collect();
        let model = auto(&y, None).unwrap();
        assert_eq!(model.spec.seasonality, Seasonality::None);
        assert_ne!(model.spec.trend, Trend::None, "{}", model.spec.name());
        let next = model.predict(10);
        assert!((next[9] - (50.0 + 2.0 * 209.0)).abs() < 5.0, "{next:?}");
    }

    #[test]
    fn the_fit_beats_fixed_parameters() {
        // The optimiser finds at least what a sensible fixed choice gives.
        let y = seasonal(24 * 10, 0.1, 0.3, false, 5);
        let spec = Spec {
            trend: Trend::Additive,
            seasonality: Seasonality::Additive,
            period: 24,
        };
        let model = fit(&y, spec).unwrap();
        let fixed = Params {
            alpha: 0.3,
            beta: 0.05,
            gamma: 0.1,
            phi: 1.0,
        };
        let mut s = heuristic(&y, &spec);
        let sse: f64 = y
            .iter()
            .enumerate()
            .map(|(t, v)| (v - step(&spec, &fixed, &mut s, t, *v).unwrap()).powi(2))
            .sum();
        assert!(model.sse < sse, "{} >= {sse}", model.sse);
        assert!(model.params.gamma < 1.0 - model.params.alpha);
    }

    #[test]
    fn bad_series_are_refused() {
        assert!(auto(&[1.0; 5], None).is_err());
        let mut y = vec![1.0; 50];
        y[7] = f64::NAN;
        assert!(auto(&y, None).is_err());
        let short = seasonal(30, 0.0, 0.3, false, 6);
        let spec = Spec {
            trend: Trend::None,
            seasonality: Seasonality::Additive,
            period: 24,
        };
        assert!(fit(&short, spec).is_err(), "two cycles are needed");
        let negative: Vec<f64> = (0..100).map(|t| (t as f64).sin()).collect();
        let spec = Spec {
            trend: Trend::None,
            seasonality: Seasonality::Multiplicative,
            period: 4,
        };
        assert!(fit(&negative, spec).is_err());
    }

    #[test]
    fn scores() {
        assert_eq!(smape(&[100.0], &[100.0]), 0.0);
        assert!((smape(&[100.0], &[50.0]) - 66.666).abs() < 0.01);
        let train = [1.0, 2.0, 3.0, 4.0];
        // Naive in-sample error 1; forecast error 0.5.
        assert!((mase(&train, &[5.0], &[5.5], 1) - 0.5).abs() < 1e-12);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever finite series a user writes into the usage series, a
        /// forecast is an answer or an error, never a panic, and its
        /// interval is ordered.
        #[test]
        fn any_finite_series_forecasts_or_is_refused(
            values in prop::collection::vec(
                prop_oneof![
                    -1e12f64..1e12,
                    Just(0.0),
                    Just(1.0),
                    1e300f64..1e307,
                    -1e-300f64..1e-300,
                ],
                0..120,
            ),
            period in prop::option::of(0usize..80),
        ) {
            if let Ok(model) = auto(&values, period) {
                let f = model.forecast(12, 0.9, 50, 3);
                prop_assert_eq!(f.mean.len(), 12);
                for i in 0..12 {
                    if f.lower[i].is_finite() && f.upper[i].is_finite() {
                        prop_assert!(f.lower[i] <= f.upper[i]);
                    }
                }
            }
            let _ = detect_period(&values);
        }
    }
}

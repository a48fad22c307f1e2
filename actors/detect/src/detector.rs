//! The online detector of one series.
//!
//! Each sample is compared with what the series should do now: its seasonal
//! baseline when it has a period (see [`crate::season`]), and the recent
//! level of what remains. The remainder's recent window gives a robust
//! centre and spread (median and MAD), so one outlier moves neither:
//!
//! * spike / dip: a sample whose robust z-score passes `threshold`;
//! * level shift / trend: a two-sided CUSUM of the z-scores (each clipped,
//!   so one spike cannot trip it) passes `cusum_limit`; whether the run
//!   looks like a step or a ramp decides which (a step model against a
//!   line, by squared error);
//! * absent: no sample for `absent_after` (checked by [`SeriesDetector::tick`]).
//!
//! One episode at most is open per series: later alarms while it is open
//! extend it (or retype a spike that turned out to last into a shift); it
//! closes after `close_after` samples back inside half the threshold.
//! State is fixed in size per series: the window, the season's buckets and
//! a few numbers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::season::{Season, SeasonConfig};

/// What kind of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Spike,
    Dip,
    LevelShift,
    Trend,
    Absent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Spike => "spike",
            Kind::Dip => "dip",
            Kind::LevelShift => "level_shift",
            Kind::Trend => "trend",
            Kind::Absent => "absent",
        }
    }

    pub const ALL: [Kind; 5] = [
        Kind::Spike,
        Kind::Dip,
        Kind::LevelShift,
        Kind::Trend,
        Kind::Absent,
    ];
}

/// How bad, from the score relative to the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// `ratio`: the score over the threshold that opened the episode.
    pub fn from_ratio(ratio: f64) -> Self {
        if ratio >= 3.0 {
            Severity::Critical
        } else if ratio >= 2.0 {
            Severity::High
        } else if ratio >= 1.4 {
            Severity::Medium
        } else {
            Severity::Low
        }
    }
}

/// Sensitivity and memory of the detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// Robust z-score that makes a spike or dip.
    pub threshold: f64,
    /// Samples in the recent window (the centre and spread).
    pub window: usize,
    /// Samples the window needs before anything is reported.
    pub warmup: usize,
    /// CUSUM: the drift allowed per sample (in z units) and the limit.
    pub cusum_drift: f64,
    pub cusum_limit: f64,
    /// z-scores fed to the CUSUM are clipped to this.
    pub cusum_clip: f64,
    /// Samples back within half the threshold that close an episode.
    pub close_after: u32,
    /// No sample for this long is an absence (0: not checked).
    pub absent_after_ms: i64,
    /// Spread never taken below this fraction of the level (a flat series
    /// with a tiny wiggle is not an anomaly every time it wiggles).
    pub min_relative_spread: f64,
    pub season: SeasonConfig,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold: 7.0,
            window: 60,
            warmup: 30,
            cusum_drift: 1.0,
            cusum_limit: 16.0,
            cusum_clip: 4.0,
            close_after: 10,
            absent_after_ms: 0,
            min_relative_spread: 1e-4,
            season: SeasonConfig::default(),
        }
    }
}

/// The numbers behind an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// What the series was expected to be.
    pub baseline: f64,
    pub observed: f64,
    /// The spread (a robust standard deviation) the score is measured in.
    pub spread: f64,
    /// Samples the baseline's recent level was taken from.
    pub window: usize,
    /// The seasonal period used, milliseconds (absent: none found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<i64>,
}

/// An episode as the detector sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub kind: Kind,
    pub severity: Severity,
    /// The largest score seen (z units; for a CUSUM alarm, its statistic
    /// scaled to the threshold; for an absence, the gap over the limit).
    pub score: f64,
    pub start_ms: i64,
    /// Set when it closed.
    pub end_ms: Option<i64>,
    pub evidence: Evidence,
}

/// What one sample or tick did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Opened(Episode),
    /// The open episode's kind, severity or score changed.
    Updated(Episode),
    Closed(Episode),
}

/// The detector of one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesDetector {
    /// Remainders (value minus seasonal baseline), newest last, winsorized.
    window: VecDeque<f64>,
    /// The same samples as (time, value), winsorized, to recompute the
    /// remainders when the season's period changes.
    window_values: VecDeque<(i64, f64)>,
    season: Season,
    /// The period the remainders were computed against.
    period: Option<usize>,
    cusum_up: f64,
    cusum_down: f64,
    /// A slow estimate of the spread: an exponentially weighted mean of
    /// absolute deviations (winsorized) over about a thousand samples. The
    /// window's MAD alone, from 60 samples, is often a fifth too small.
    slow_deviation: f64,
    /// The last `window` remainders, not winsorized: what a shift or trend
    /// is judged on.
    run: VecDeque<f64>,
    seen: u64,
    last_ms: Option<i64>,
    open: Option<Episode>,
    calm: u32,
}

fn median_of(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Median and MAD (scaled to a normal standard deviation).
pub fn robust_centre(values: impl Iterator<Item = f64>, scratch: &mut Vec<f64>) -> (f64, f64) {
    scratch.clear();
    scratch.extend(values);
    if scratch.is_empty() {
        return (0.0, 0.0);
    }
    scratch.sort_unstable_by(f64::total_cmp);
    let m = median_of(scratch);
    for v in scratch.iter_mut() {
        *v = (*v - m).abs();
    }
    scratch.sort_unstable_by(f64::total_cmp);
    (m, 1.4826 * median_of(scratch))
}

/// Whether the recent remainders look more like a ramp than a step: the
/// best "flat, then a ramp from the same level" (a hinge) against the best
/// "flat, then flat at another level" (a step), by squared error, each with
/// its breakpoint chosen freely.
pub fn looks_like_trend(run: &[f64]) -> bool {
    let n = run.len();
    if n < 8 {
        return false;
    }
    let total: f64 = run.iter().sum();
    let total_sq: f64 = run.iter().map(|y| y * y).sum();
    let mut step_sse = f64::INFINITY;
    let mut prefix = 0.0;
    for (k, y) in run.iter().enumerate().take(n - 1) {
        prefix += y;
        let (n1, n2) = ((k + 1) as f64, (n - k - 1) as f64);
        let rest = total - prefix;
        step_sse = step_sse.min(total_sq - prefix * prefix / n1 - rest * rest / n2);
    }
    // Hinge at k: y = a + b * max(0, i - k), least squares in (a, b).
    let mut hinge_sse = f64::INFINITY;
    for k in 0..n - 2 {
        let (mut sx, mut sxx, mut sxy) = (0.0, 0.0, 0.0);
        for (i, y) in run.iter().enumerate().skip(k + 1) {
            let x = (i - k) as f64;
            sx += x;
            sxx += x * x;
            sxy += x * y;
        }
        let nf = n as f64;
        let det = nf * sxx - sx * sx;
        if det.abs() < 1e-12 {
            continue;
        }
        let a = (total * sxx - sx * sxy) / det;
        let b = (nf * sxy - sx * total) / det;
        // SSE = sum y^2 - a * sum y - b * sum x y (normal equations).
        hinge_sse = hinge_sse.min(total_sq - a * total - b * sxy);
    }
    hinge_sse < step_sse
}

impl Default for SeriesDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl SeriesDetector {
    pub fn new() -> Self {
        Self {
            window: VecDeque::new(),
            window_values: VecDeque::new(),
            season: Season::new(),
            period: None,
            cusum_up: 0.0,
            cusum_down: 0.0,
            slow_deviation: 0.0,
            run: VecDeque::new(),
            seen: 0,
            last_ms: None,
            open: None,
            calm: 0,
        }
    }

    /// The open episode, if any.
    pub fn open(&self) -> Option<&Episode> {
        self.open.as_ref()
    }

    /// When the last sample came.
    pub fn last_ms(&self) -> Option<i64> {
        self.last_ms
    }

    /// Feeds one sample (in time order; older ones are ignored).
    pub fn observe(
        &mut self,
        config: &DetectorConfig,
        t_ms: i64,
        value: f64,
        scratch: &mut Vec<f64>,
    ) -> Option<Event> {
        if !value.is_finite() || self.last_ms.is_some_and(|last| t_ms <= last) {
            return None;
        }
        let mut event = None;
        // An absence ends when data comes back.
        if self.open.as_ref().is_some_and(|e| e.kind == Kind::Absent) {
            event = self.close(t_ms);
        }
        self.last_ms = Some(t_ms);
        self.seen += 1;
        if self.season.period() != self.period {
            // A new period: the window's remainders against the new baseline.
            self.period = self.season.period();
            let season = &self.season;
            self.window = self
                .window_values
                .iter()
                .map(|&(t, v)| v - season.baseline(&config.season, t).unwrap_or(0.0))
                .collect();
            self.run.clear();
        }
        let seasonal = self.season.baseline(&config.season, t_ms);
        self.season.add(&config.season, t_ms, value);
        if seasonal.is_none() && self.period.is_some() {
            // The phase has no history (a gap in the data): not judged.
            return event;
        }
        let remainder = value - seasonal.unwrap_or(0.0);
        if self.run.len() >= config.window {
            self.run.pop_front();
        }
        self.run.push_back(remainder);

        if self.window.len() < config.warmup.max(3) {
            self.window.push_back(remainder);
            self.window_values.push_back((t_ms, value));
            return event;
        }
        let (centre, mad) = robust_centre(self.window.iter().copied(), scratch);
        let level = (centre + seasonal.unwrap_or(0.0)).abs();
        // Mean absolute deviation to a normal's standard deviation.
        let slow = 1.2533 * self.slow_deviation;
        let spread = mad
            .max(slow)
            .max(config.min_relative_spread * level)
            .max(1e-12);
        let z = (remainder - centre) / spread;
        let deviation = (remainder - centre).abs().min(config.threshold * spread);
        self.slow_deviation = if self.slow_deviation == 0.0 {
            mad / 1.2533
        } else {
            self.slow_deviation + (deviation - self.slow_deviation) / 1000.0
        };

        // The window takes the sample clipped at the threshold, so an
        // outlier does not widen the spread, yet a lasting change is taken
        // in within about half a window.
        let clip = (z.clamp(-config.threshold, config.threshold) - z) * spread;
        if self.window.len() >= config.window {
            self.window.pop_front();
            self.window_values.pop_front();
        }
        self.window.push_back(remainder + clip);
        self.window_values.push_back((t_ms, value + clip));

        // Shifts and trends only once the season is learnt (until then a
        // daily swing would look like one).
        if self.season.learnt() {
            let zc = z.clamp(-config.cusum_clip, config.cusum_clip);
            self.cusum_up = (self.cusum_up + zc - config.cusum_drift).max(0.0);
            self.cusum_down = (self.cusum_down - zc - config.cusum_drift).max(0.0);
        }

        let evidence = Evidence {
            baseline: centre + seasonal.unwrap_or(0.0),
            observed: value,
            spread,
            window: self.window.len(),
            period_ms: self.season.period_ms(&config.season),
        };
        let shift = if self.cusum_up >= config.cusum_limit {
            Some(1.0)
        } else if self.cusum_down >= config.cusum_limit {
            Some(-1.0)
        } else {
            None
        };
        let point = z.abs() >= config.threshold;

        if shift.is_some() || point {
            self.calm = 0;
            let (kind, score) = match shift {
                Some(sign) => {
                    let run: Vec<f64> = self.run.iter().copied().collect();
                    let kind = if looks_like_trend(&run) {
                        Kind::Trend
                    } else {
                        Kind::LevelShift
                    };
                    let stat = if sign > 0.0 {
                        self.cusum_up
                    } else {
                        self.cusum_down
                    };
                    // In threshold units, comparable with a point's z.
                    (kind, stat / config.cusum_limit * config.threshold)
                }
                None if z > 0.0 => (Kind::Spike, z.abs()),
                None => (Kind::Dip, z.abs()),
            };
            if shift.is_some() {
                self.cusum_up = 0.0;
                self.cusum_down = 0.0;
            }
            let start_ms = t_ms;
            event = match self.open.as_mut() {
                None => {
                    let e = Episode {
                        kind,
                        severity: Severity::from_ratio(score / config.threshold),
                        score,
                        start_ms,
                        end_ms: None,
                        evidence,
                    };
                    self.open = Some(e.clone());
                    Some(Event::Opened(e))
                }
                Some(open) => {
                    let retype = shift.is_some()
                        && matches!(open.kind, Kind::Spike | Kind::Dip)
                        && open.kind != kind;
                    let worse = score > open.score;
                    if retype || worse {
                        if retype {
                            open.kind = kind;
                        }
                        if worse {
                            open.score = score;
                            open.severity = Severity::from_ratio(score / config.threshold);
                            open.evidence = evidence;
                        }
                        Some(Event::Updated(open.clone()))
                    } else {
                        None
                    }
                }
            };
        } else if self.open.is_some() {
            let quiet = z.abs() < config.threshold / 2.0
                && self.cusum_up < config.cusum_limit / 2.0
                && self.cusum_down < config.cusum_limit / 2.0;
            if quiet {
                self.calm += 1;
                if self.calm >= config.close_after {
                    event = self.close(t_ms);
                }
            } else {
                self.calm = 0;
            }
        }
        event
    }

    /// Its state in the checkpoint form (see [`crate::checkpoint`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = crate::checkpoint::Writer(std::mem::take(out));
        w.version();
        w.u32(self.window_values.len() as u32);
        for (t, v) in &self.window_values {
            w.i64(*t);
            w.f64(*v);
        }
        self.season.encode(&mut w);
        w.f64(self.cusum_up);
        w.f64(self.cusum_down);
        w.f64(self.slow_deviation);
        w.u64(self.seen);
        w.i64(self.last_ms.unwrap_or(i64::MIN));
        w.u32(self.calm);
        w.episode(self.open.as_ref());
        *out = w.0;
    }

    /// A detector from its checkpoint form; `config` bounds what it may
    /// hold. The window's remainders come from the samples and the season.
    pub fn decode(
        bytes: &[u8],
        config: &DetectorConfig,
    ) -> Result<Self, crate::checkpoint::CheckpointError> {
        let mut r = crate::checkpoint::Reader(bytes);
        r.version()?;
        let n = r.count(16, config.window.max(config.warmup.max(3)), "window")?;
        let mut window_values = VecDeque::with_capacity(n);
        for _ in 0..n {
            window_values.push_back((r.i64("window")?, r.f64("window")?));
        }
        let season = Season::decode(&mut r, &config.season)?;
        let (cusum_up, cusum_down) = (r.f64("cusum")?, r.f64("cusum")?);
        let slow_deviation = r.f64("spread")?;
        let seen = r.u64("seen")?;
        let last_ms = Some(r.i64("last")?).filter(|t| *t != i64::MIN);
        let calm = r.u32("calm")?;
        let open = r.episode()?;
        if !r.0.is_empty() {
            return Err(crate::checkpoint::CheckpointError(
                "bytes after the end".into(),
            ));
        }
        let period = season.period();
        let window: VecDeque<f64> = window_values
            .iter()
            .map(|&(t, v)| v - season.baseline(&config.season, t).unwrap_or(0.0))
            .collect();
        Ok(Self {
            run: window.clone(),
            window,
            window_values,
            season,
            period,
            cusum_up,
            cusum_down,
            slow_deviation,
            seen,
            last_ms,
            open,
            calm,
        })
    }

    /// Checks for an absence at `now_ms`.
    pub fn tick(&mut self, config: &DetectorConfig, now_ms: i64) -> Option<Event> {
        if config.absent_after_ms <= 0 || self.open.is_some() {
            return None;
        }
        let last = self.last_ms?;
        let gap = now_ms - last;
        if gap < config.absent_after_ms {
            return None;
        }
        let ratio = gap as f64 / config.absent_after_ms as f64;
        let e = Episode {
            kind: Kind::Absent,
            severity: Severity::from_ratio(ratio),
            score: ratio,
            start_ms: last + config.absent_after_ms,
            end_ms: None,
            evidence: Evidence {
                baseline: 0.0,
                observed: 0.0,
                spread: 0.0,
                window: self.window.len(),
                period_ms: self.season.period_ms(&config.season),
            },
        };
        self.open = Some(e.clone());
        Some(Event::Opened(e))
    }

    fn close(&mut self, t_ms: i64) -> Option<Event> {
        let mut e = self.open.take()?;
        e.end_ms = Some(t_ms);
        self.calm = 0;
        Some(Event::Closed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut SeriesDetector, c: &DetectorConfig, values: &[f64]) -> Vec<Event> {
        let mut scratch = Vec::new();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| d.observe(c, i as i64 * 60_000, *v, &mut scratch))
            .collect()
    }

    fn noise(n: usize, seed: u64) -> Vec<f64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0)
            .collect()
    }

    #[test]
    fn a_spike_opens_one_episode_that_closes() {
        let c = DetectorConfig::default();
        let mut d = SeriesDetector::new();
        let mut v: Vec<f64> = noise(400, 1).iter().map(|x| 100.0 + x).collect();
        v[200] += 20.0;
        v[201] += 15.0;
        let events = feed(&mut d, &c, &v);
        let opened: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Opened(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(opened.len(), 1, "{events:?}");
        assert_eq!(opened[0].kind, Kind::Spike);
        assert_eq!(opened[0].start_ms, 200 * 60_000);
        assert!(events.iter().any(|e| matches!(e, Event::Closed(_))));
    }

    #[test]
    fn a_step_is_a_level_shift_and_a_ramp_a_trend() {
        // Minute buckets: the season is learnt (shifts judged) after 72 samples.
        let c = DetectorConfig {
            season: SeasonConfig {
                bucket_ms: 60_000,
                ..SeasonConfig::default()
            },
            ..DetectorConfig::default()
        };
        let base: Vec<f64> = noise(600, 2).iter().map(|x| 50.0 + x).collect();
        let mut step = base.clone();
        for v in &mut step[300..] {
            *v += 4.0;
        }
        let events = feed(&mut SeriesDetector::new(), &c, &step);
        let kinds: Vec<Kind> = events
            .iter()
            .filter_map(|e| match e {
                Event::Opened(e) | Event::Updated(e) => Some(e.kind),
                _ => None,
            })
            .collect();
        assert_eq!(kinds.last(), Some(&Kind::LevelShift), "{events:?}");
        let opened = events.iter().find_map(|e| match e {
            Event::Opened(e) => Some(e.start_ms),
            _ => None,
        });
        assert!(opened.unwrap() >= 300 * 60_000 && opened.unwrap() < 320 * 60_000);

        let mut ramp = base;
        for (i, v) in ramp[300..].iter_mut().enumerate() {
            *v += 0.1 * i as f64;
        }
        let events = feed(&mut SeriesDetector::new(), &c, &ramp);
        let first = events.iter().find_map(|e| match e {
            Event::Opened(e) => Some(e.kind),
            _ => None,
        });
        assert_eq!(first, Some(Kind::Trend), "{events:?}");
    }

    #[test]
    fn plain_noise_raises_nothing_and_absence_is_seen() {
        let c = DetectorConfig {
            absent_after_ms: 600_000,
            ..DetectorConfig::default()
        };
        let mut d = SeriesDetector::new();
        let v: Vec<f64> = noise(5000, 3).iter().map(|x| 10.0 + x).collect();
        let events = feed(&mut d, &c, &v);
        assert!(events.is_empty(), "{events:?}");
        let last = 4999 * 60_000;
        assert_eq!(d.tick(&c, last + 300_000), None);
        match d.tick(&c, last + 700_000) {
            Some(Event::Opened(e)) => {
                assert_eq!(e.kind, Kind::Absent);
                assert_eq!(e.start_ms, last + 600_000);
            }
            other => panic!("{other:?}"),
        }
        // Once open, not again; data closes it.
        assert_eq!(d.tick(&c, last + 900_000), None);
        let mut scratch = Vec::new();
        assert!(matches!(
            d.observe(&c, last + 960_000, 10.0, &mut scratch),
            Some(Event::Closed(_))
        ));
    }

    #[test]
    fn a_checkpoint_restores_a_detector_that_goes_on_as_the_original() {
        let c = DetectorConfig {
            absent_after_ms: 600_000,
            ..DetectorConfig::default()
        };
        let mut a = SeriesDetector::new();
        let mut scratch = Vec::new();
        let day = 86_400_000f64;
        let value = |i: i64| {
            let t = i * 60_000;
            100.0 + 30.0 * (std::f64::consts::TAU * t as f64 / day).sin() + (i % 7) as f64 * 0.3
        };
        for i in 0..6000i64 {
            a.observe(&c, i * 60_000, value(i), &mut scratch);
        }
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        assert!(bytes.len() < 4096, "{}", bytes.len());
        let mut b = SeriesDetector::decode(&bytes, &c).unwrap();
        assert_eq!(a.season.period(), b.season.period());
        // The same events from here on, a spike included.
        for i in 6000..6600i64 {
            let v = if i == 6300 { value(i) + 50.0 } else { value(i) };
            let (ea, eb) = (
                a.observe(&c, i * 60_000, v, &mut scratch),
                b.observe(&c, i * 60_000, v, &mut scratch),
            );
            assert_eq!(ea.is_some(), eb.is_some(), "sample {i}: {ea:?} / {eb:?}");
        }
        // Corrupt or truncated forms are errors, never panics.
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(SeriesDetector::decode(&bytes[..cut], &c).is_err());
        }
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(SeriesDetector::decode(&huge, &c).is_err());
    }

    #[test]
    fn state_is_bounded_whatever_the_input() {
        let c = DetectorConfig::default();
        let mut d = SeriesDetector::new();
        let mut scratch = Vec::new();
        for i in 0..200_000i64 {
            let v = if i % 97 == 0 { 1e12 } else { (i % 13) as f64 };
            d.observe(&c, i * 1000, v, &mut scratch);
        }
        assert!(d.window.len() <= c.window);
        assert!(d.run.len() <= c.window);
        let bytes = serde_json::to_vec(&d).unwrap().len();
        assert!(bytes < 64 << 10, "{bytes}");
    }
}

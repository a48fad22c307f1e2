//! The series workload: clients append unique points to a few series
//! (each point its own write, acknowledged or not) and read whole series
//! back, through any node; at the end every series is read once more. The
//! checker then asks of every read:
//!
//! * **phantom**: it shows a value no client ever wrote (or at a time the
//!   value was not written at);
//! * **duplicate**: it shows one point twice (a write applied twice);
//! * **stale** (lost, for the final reads): it misses a write acknowledged
//!   before the read was invoked. Reads are linearizable, so this is the
//!   guarantee to check; it includes read-your-writes for each client;
//! * **non-monotonic**: it misses a point a read that completed before it
//!   was invoked had shown (acknowledged or not: once seen, a point stays).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

/// How the workload runs.
#[derive(Debug, Clone)]
pub struct SeriesWorkload {
    /// The metric it writes (one series per key).
    pub metric: String,
    pub keys: usize,
    pub clients: usize,
    /// One request's timeout: past it the outcome is unknown.
    pub timeout: Duration,
    /// Wall-clock ns the points' timestamps start from (set per run).
    pub base: i64,
}

impl Default for SeriesWorkload {
    fn default() -> Self {
        Self {
            metric: "chaos_series".into(),
            keys: 4,
            clients: 4,
            timeout: Duration::from_secs(2),
            base: 0,
        }
    }
}

/// One operation as recorded. Times are ns since the run's epoch.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesOp {
    pub client: u64,
    /// Index of the series.
    pub series: usize,
    /// The node (1-based) the request went to (0: the final reads' node 1).
    pub node: u64,
    pub call: u64,
    /// `None`: the outcome is unknown.
    pub ret: Option<u64>,
    pub kind: SeriesKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// Appended value `value` at its own timestamp.
    Append { value: u64 },
    /// The values a whole-series read returned (with their timestamps),
    /// in the order returned; `final_read` for the reads after the heal.
    Read {
        points: Vec<(i64, u64)>,
        final_read: bool,
    },
}

pub type SeriesHistory = Vec<SeriesOp>;

/// The timestamp of value `v`: unique per value, 1 µs apart, near `base`.
fn timestamp(base: i64, value: u64) -> i64 {
    base + value as i64 * 1_000
}

struct Client {
    agent: ureq::Agent,
    workload: SeriesWorkload,
    base: i64,
}

impl Client {
    fn new(workload: &SeriesWorkload, base: i64) -> Self {
        Self {
            agent: crate::http_agent(workload.timeout),
            workload: workload.clone(),
            base,
        }
    }

    /// `Some(true)`: acknowledged (204), `Some(false)`: unknown, `None`:
    /// refused (nothing listened, so it did not happen).
    fn append(&self, http: &str, series: usize, value: u64) -> Option<bool> {
        let line = format!(
            "{},key=k{series} value={value} {}\n",
            self.workload.metric,
            timestamp(self.base, value)
        );
        let url = format!("{http}/write?precision=ns");
        match self.agent.post(&url).content_type("text/plain").send(line) {
            Ok(r) => Some(r.status().as_u16() == 204),
            Err(e) if crate::refused(&e) => None,
            Err(_) => Some(false),
        }
    }

    /// The whole series, or `None` when the read failed or was cut short.
    fn read(&self, http: &str, series: usize) -> Option<Vec<(i64, u64)>> {
        let body = json!({
            "metric": self.workload.metric,
            "tags": {"key": format!("k{series}")},
            "start": self.base - 1_000_000_000,
            "end": self.base + 86_400_000_000_000i64,
        });
        let mut r = self
            .agent
            .post(&format!("{http}/query"))
            .send_json(&body)
            .ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        let answer: Value = r.body_mut().read_json().ok()?;
        if answer["truncated"].as_bool() != Some(false) {
            return None;
        }
        let mut points = Vec::new();
        for s in answer["series"].as_array()? {
            for p in s["points"].as_array()? {
                let ts = p[0].as_i64()?;
                let v = p[1].as_f64()?;
                points.push((ts, v as u64));
            }
        }
        Some(points)
    }
}

/// Runs the workload against `nodes` until `stop` is set.
pub fn run(
    workload: &SeriesWorkload,
    nodes: &[String],
    seed: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<SeriesHistory>>,
    refused: Arc<Mutex<Vec<u64>>>,
) {
    let now = move || epoch.elapsed().as_nanos() as u64;
    let next_value = AtomicU64::new(1);
    std::thread::scope(|scope| {
        for c in 0..workload.clients {
            let (stop, history, nodes, next_value, refused) = (
                stop.clone(),
                history.clone(),
                nodes.to_vec(),
                &next_value,
                refused.clone(),
            );
            scope.spawn(move || {
                let client = Client::new(workload, workload.base);
                let mut rng = SmallRng::seed_from_u64(seed ^ 0x5e71e5 ^ ((c as u64 + 1) << 40));
                while !stop.load(Ordering::Relaxed) {
                    let series = rng.random_range(0..workload.keys);
                    let node = rng.random_range(0..nodes.len());
                    let http = &nodes[node];
                    let call = now();
                    let (kind, answered) = if rng.random_range(0..100) < 70 {
                        let value = next_value.fetch_add(1, Ordering::Relaxed);
                        match client.append(http, series, value) {
                            Some(acked) => (SeriesKind::Append { value }, acked),
                            None => {
                                refused.lock().expect("refused lock").push(call);
                                std::thread::sleep(crate::BACKOFF);
                                continue;
                            }
                        }
                    } else {
                        match client.read(http, series) {
                            Some(points) => (
                                SeriesKind::Read {
                                    points,
                                    final_read: false,
                                },
                                true,
                            ),
                            // A failed read tells nothing: not recorded.
                            None => {
                                std::thread::sleep(crate::BACKOFF);
                                continue;
                            }
                        }
                    };
                    let ret = answered.then(now);
                    if !answered {
                        std::thread::sleep(crate::BACKOFF);
                    }
                    history.lock().expect("history lock").push(SeriesOp {
                        client: c as u64,
                        series,
                        node: node as u64 + 1,
                        call,
                        ret,
                        kind,
                    });
                }
            });
        }
    });
}

/// Reads every series once through `http` (after the heal); a read that
/// fails is retried for up to 30 s, since a missing final read hides loss.
pub fn final_reads(
    workload: &SeriesWorkload,
    http: &str,
    epoch: Instant,
    history: &Mutex<SeriesHistory>,
) -> Result<(), String> {
    let client = Client::new(workload, workload.base);
    for series in 0..workload.keys {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let call = epoch.elapsed().as_nanos() as u64;
            if let Some(points) = client.read(http, series) {
                let ret = epoch.elapsed().as_nanos() as u64;
                history.lock().expect("history lock").push(SeriesOp {
                    client: u64::MAX,
                    series,
                    node: 1,
                    call,
                    ret: Some(ret),
                    kind: SeriesKind::Read {
                        points,
                        final_read: true,
                    },
                });
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("series k{series} could not be read after the heal"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SeriesCheck {
    pub appends: usize,
    pub acknowledged: usize,
    pub reads: usize,
    /// Acknowledged appends the final reads show.
    pub final_present: usize,
    /// Unknown appends the final reads show (took effect after all).
    pub unknown_present: usize,
    pub phantom: usize,
    pub duplicate: usize,
    pub stale: usize,
    pub lost: usize,
    pub non_monotonic: usize,
    /// The first violations, in words (at most 20), with the time (ns
    /// since the epoch) of the read that shows each.
    pub examples: Vec<(u64, String)>,
}

impl SeriesCheck {
    pub fn violations(&self) -> usize {
        self.phantom + self.duplicate + self.stale + self.lost + self.non_monotonic
    }

    fn note(&mut self, at: u64, what: String) {
        if self.examples.len() < 20 {
            self.examples.push((at, what));
        }
    }
}

/// Checks a history (see the module's documentation). `base` is the
/// timestamp base the workload used.
pub fn check(history: &[SeriesOp], base: i64) -> SeriesCheck {
    let mut out = SeriesCheck::default();
    let mut by_series: BTreeMap<usize, Vec<&SeriesOp>> = BTreeMap::new();
    for op in history {
        by_series.entry(op.series).or_default().push(op);
    }
    for (series, ops) in by_series {
        // value -> completion of its append (None: unknown).
        let mut appends: HashMap<u64, Option<u64>> = HashMap::new();
        let mut reads = Vec::new();
        for op in &ops {
            match &op.kind {
                SeriesKind::Append { value } => {
                    appends.insert(*value, op.ret);
                }
                SeriesKind::Read { points, final_read } => {
                    if let Some(ret) = op.ret {
                        reads.push((op.call, ret, points, *final_read, op.node));
                    }
                }
            }
        }
        out.appends += appends.len();
        let mut acked: Vec<(u64, u64)> = appends
            .iter()
            .filter_map(|(&v, ret)| ret.map(|r| (r, v)))
            .collect();
        acked.sort_unstable();
        out.acknowledged += acked.len();
        out.reads += reads.len();

        // When each value was first seen by a completed read.
        let mut first_seen: HashMap<u64, u64> = HashMap::new();
        for (_, ret, points, _, _) in &reads {
            for &(_, v) in points.iter() {
                let e = first_seen.entry(v).or_insert(*ret);
                *e = (*e).min(*ret);
            }
        }
        let mut seen: Vec<(u64, u64)> = first_seen.iter().map(|(&v, &t)| (t, v)).collect();
        seen.sort_unstable();

        let mut final_values = HashSet::new();
        for (call, _, points, final_read, node) in &reads {
            let mut values = HashSet::with_capacity(points.len());
            for &(ts, v) in points.iter() {
                if !values.insert(v) {
                    out.duplicate += 1;
                    out.note(
                        *call,
                        format!("series k{series}: value {v} shows twice in one read"),
                    );
                }
                match appends.get(&v) {
                    None => {
                        out.phantom += 1;
                        out.note(
                            *call,
                            format!("series k{series}: value {v} was never written"),
                        );
                    }
                    Some(_) if ts != timestamp(base, v) => {
                        out.phantom += 1;
                        out.note(
                            *call,
                            format!("series k{series}: value {v} shows at {ts}, written at another time"),
                        );
                    }
                    Some(_) => {}
                }
            }
            if *final_read {
                final_values.extend(values.iter().copied());
            }
            // Every append acknowledged before this read was invoked.
            let before = acked.partition_point(|&(ret, _)| ret < *call);
            for &(ret, v) in &acked[..before] {
                if !values.contains(&v) {
                    if *final_read {
                        out.lost += 1;
                        out.note(
                            *call,
                            format!(
                                "series k{series}: acknowledged value {v} is lost (final read)"
                            ),
                        );
                    } else {
                        out.stale += 1;
                        out.note(
                            *call,
                            format!("series k{series}: a read through node {node} invoked {:.3} s after value {v} was acknowledged misses it ({} points read)", (*call - ret) as f64 / 1e9, points.len()),
                        );
                    }
                }
            }
            // Every value a read completed before this one had shown.
            let before = seen.partition_point(|&(t, _)| t < *call);
            for &(_, v) in &seen[..before] {
                if !values.contains(&v) {
                    out.non_monotonic += 1;
                    out.note(*call, format!("series k{series}: value {v}, shown by an earlier read, is gone from a read through node {node}"));
                }
            }
        }
        out.final_present += acked
            .iter()
            .filter(|(_, v)| final_values.contains(v))
            .count();
        out.unknown_present += appends
            .iter()
            .filter(|(v, ret)| ret.is_none() && final_values.contains(v))
            .count();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(series: usize, value: u64, call: u64, ret: Option<u64>) -> SeriesOp {
        SeriesOp {
            client: 0,
            series,
            node: 1,
            call,
            ret,
            kind: SeriesKind::Append { value },
        }
    }

    fn read(series: usize, call: u64, ret: u64, values: &[u64], final_read: bool) -> SeriesOp {
        SeriesOp {
            client: 1,
            series,
            node: 1,
            call,
            ret: Some(ret),
            kind: SeriesKind::Read {
                points: values.iter().map(|&v| (timestamp(0, v), v)).collect(),
                final_read,
            },
        }
    }

    #[test]
    fn a_clean_history_passes_and_unknown_appends_may_show_or_not() {
        let h = vec![
            append(0, 1, 0, Some(10)),
            append(0, 2, 5, None),
            read(0, 11, 12, &[1], false),
            read(0, 13, 14, &[1, 2], false),
            append(0, 3, 20, None),
            read(0, 30, 31, &[1, 2], true),
        ];
        let c = check(&h, 0);
        assert_eq!(c.violations(), 0, "{:?}", c.examples);
        assert_eq!((c.final_present, c.unknown_present), (1, 1));
    }

    #[test]
    fn each_anomaly_is_caught() {
        // Lost: acknowledged, missing from the final read.
        let c = check(&[append(0, 1, 0, Some(1)), read(0, 5, 6, &[], true)], 0);
        assert_eq!(c.lost, 1);
        // Stale: acknowledged before the read was invoked, missing.
        let c = check(&[append(0, 1, 0, Some(1)), read(0, 5, 6, &[], false)], 0);
        assert_eq!(c.stale, 1);
        // Concurrent with the read: may be missing.
        let c = check(&[append(0, 1, 0, Some(6)), read(0, 5, 7, &[], false)], 0);
        assert_eq!(c.violations(), 0);
        // Phantom and duplicate.
        let c = check(&[read(0, 5, 6, &[9], false)], 0);
        assert_eq!(c.phantom, 1);
        let c = check(
            &[append(0, 1, 0, Some(1)), read(0, 5, 6, &[1, 1], false)],
            0,
        );
        assert_eq!(c.duplicate, 1);
        // A value at the wrong time is a phantom too.
        let mut wrong = read(0, 5, 6, &[1], false);
        if let SeriesKind::Read { points, .. } = &mut wrong.kind {
            points[0].0 += 1;
        }
        let c = check(&[append(0, 1, 0, None), wrong], 0);
        assert_eq!(c.phantom, 1);
        // Non-monotonic: an unknown append seen, then gone.
        let c = check(
            &[
                append(0, 1, 0, None),
                read(0, 5, 6, &[1], false),
                read(0, 7, 8, &[], false),
            ],
            0,
        );
        assert_eq!(c.non_monotonic, 1);
        // Series are judged apart.
        let c = check(&[append(0, 1, 0, Some(1)), read(1, 5, 6, &[], false)], 0);
        assert_eq!(c.violations(), 0);
    }
}

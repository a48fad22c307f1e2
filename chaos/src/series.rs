//! The series workload: clients append unique points to a few series
//! (each point its own write, acknowledged or not; a series is a list per
//! key, its order the points' times) and read them back through any node:
//! whole series, time ranges of them, and the newest sample (a PromQL
//! instant query, which reads no chunk). At the end every series is read
//! once more. The checker then asks of every read:
//!
//! * **phantom**: it shows a value no client ever wrote (or at a time the
//!   value was not written at, or outside the range asked);
//! * **duplicate**: it shows one point twice (a write applied twice);
//! * **stale** (lost, for the final reads): it misses a write acknowledged
//!   before the read was invoked. Reads are linearizable, so this is the
//!   guarantee to check; it includes read-your-writes for each client;
//! * **non-monotonic**: it misses a point a read that completed before it
//!   was invoked had shown (acknowledged or not: once seen, a point stays);
//! * **write order** (an Elle-style real-time check of the list): it shows a
//!   point but misses one whose write was acknowledged before that point's
//!   write was invoked. Such a pair is ordered in real time, so a
//!   linearizable store cannot show the later write without the earlier.
//!
//! A newest-sample read is checked the same way, on its one value: it must
//! be a written value, no older than any value acknowledged before the read
//! was invoked, and no older than any value a read completed before it had
//! shown.

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
    /// The values a read returned (with their timestamps), in the order
    /// returned; `final_read` for the reads after the heal. `range`: the
    /// times asked for (`None`: the whole series).
    Read {
        points: Vec<(i64, u64)>,
        final_read: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        range: Option<(i64, i64)>,
    },
    /// The newest sample's value an instant query returned (`None`: the
    /// series had none).
    Newest { value: Option<u64> },
}

pub type SeriesHistory = Vec<SeriesOp>;

/// The timestamp of value `v`: unique per value, 1 µs apart, near `base`.
fn timestamp(base: i64, value: u64) -> i64 {
    base + value as i64 * 1_000
}

/// The instant the newest-sample reads ask at: after every point a run can
/// write (values stay far below 10^8, 100 s of timestamps) and within
/// PromQL's default 5-minute lookback of the first.
fn newest_at(base: i64) -> i64 {
    base + 120_000_000_000
}

/// The times a range read of values `lo..=hi` asks for: half-way between
/// values, so the bounds' inclusiveness cannot matter.
fn range_of(base: i64, lo: u64, hi: u64) -> (i64, i64) {
    (timestamp(base, lo) - 500, timestamp(base, hi) + 500)
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

    /// The series (`range`: the part in those times), or `None` when the
    /// read failed or was cut short.
    fn read(
        &self,
        http: &str,
        series: usize,
        range: Option<(i64, i64)>,
    ) -> Option<Vec<(i64, u64)>> {
        let (start, end) =
            range.unwrap_or((self.base - 1_000_000_000, self.base + 86_400_000_000_000));
        let body = json!({
            "metric": self.workload.metric,
            "tags": {"key": format!("k{series}")},
            "start": start,
            "end": end,
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

    /// The series' newest value through a PromQL instant query (the path
    /// that answers from each series' newest sample), `Some(None)` when it
    /// has none, `None` when the read failed.
    fn newest(&self, http: &str, series: usize) -> Option<Option<u64>> {
        let query = format!("{}{{key=\"k{series}\"}}", self.workload.metric);
        let time = format!("{:.6}", newest_at(self.base) as f64 / 1e9);
        let mut r = self
            .agent
            .get(&format!("{http}/api/v1/query"))
            .query("query", &query)
            .query("time", &time)
            .call()
            .ok()?;
        if r.status().as_u16() != 200 {
            return None;
        }
        let answer: Value = r.body_mut().read_json().ok()?;
        if answer["status"] != "success" || answer["data"]["resultType"] != "vector" {
            return None;
        }
        match answer["data"]["result"].as_array()?.as_slice() {
            [] => Some(None),
            [one] => {
                let v: f64 = one["value"][1].as_str()?.parse().ok()?;
                Some(Some(v as u64))
            }
            // One series per key: more is not an answer this workload
            // can judge, so it is not recorded.
            _ => None,
        }
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
                    let pick = rng.random_range(0..100);
                    let (kind, answered) = if pick < 70 {
                        let value = next_value.fetch_add(1, Ordering::Relaxed);
                        match client.append(http, series, value) {
                            Some(acked) => (SeriesKind::Append { value }, acked),
                            None => {
                                refused.lock().expect("refused lock").push(call);
                                std::thread::sleep(crate::BACKOFF);
                                continue;
                            }
                        }
                    } else if pick < 90 {
                        // Half whole series, half a range of up to 200
                        // values somewhere in what was written so far.
                        let range = (pick >= 80).then(|| {
                            let top = next_value.load(Ordering::Relaxed).max(1);
                            let lo = rng.random_range(1..=top);
                            range_of(client.base, lo, lo + rng.random_range(0..200))
                        });
                        match client.read(http, series, range) {
                            Some(points) => (
                                SeriesKind::Read {
                                    points,
                                    final_read: false,
                                    range,
                                },
                                true,
                            ),
                            // A failed read tells nothing: not recorded.
                            None => {
                                std::thread::sleep(crate::BACKOFF);
                                continue;
                            }
                        }
                    } else {
                        match client.newest(http, series) {
                            Some(value) => (SeriesKind::Newest { value }, true),
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

/// Reads every series once (after the heal), through the first node that
/// answers; a read that fails is retried on the next node for up to 30 s,
/// since a missing final read hides loss.
pub fn final_reads(
    workload: &SeriesWorkload,
    nodes: &[String],
    epoch: Instant,
    history: &Mutex<SeriesHistory>,
) -> Result<(), String> {
    let client = Client::new(workload, workload.base);
    let mut node = 0;
    for series in 0..workload.keys {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let call = epoch.elapsed().as_nanos() as u64;
            if let Some(points) = client.read(&nodes[node], series, None) {
                let ret = epoch.elapsed().as_nanos() as u64;
                history.lock().expect("history lock").push(SeriesOp {
                    client: u64::MAX,
                    series,
                    node: node as u64 + 1,
                    call,
                    ret: Some(ret),
                    kind: SeriesKind::Read {
                        points,
                        final_read: true,
                        range: None,
                    },
                });
                break;
            }
            node = (node + 1) % nodes.len();
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
    /// Every read: whole series, ranges and newest samples.
    pub reads: usize,
    pub range_reads: usize,
    pub newest_reads: usize,
    /// Acknowledged appends the final reads show.
    pub final_present: usize,
    /// Unknown appends the final reads show (took effect after all).
    pub unknown_present: usize,
    pub phantom: usize,
    pub duplicate: usize,
    pub stale: usize,
    pub lost: usize,
    pub non_monotonic: usize,
    pub write_order: usize,
    /// The first violations, in words (at most 20), with the time (ns
    /// since the epoch) of the read that shows each.
    pub examples: Vec<(u64, String)>,
}

impl SeriesCheck {
    pub fn violations(&self) -> usize {
        self.phantom
            + self.duplicate
            + self.stale
            + self.lost
            + self.non_monotonic
            + self.write_order
    }

    fn note(&mut self, at: u64, what: String) {
        if self.examples.len() < 20 {
            self.examples.push((at, what));
        }
    }
}

/// One completed read of a series, as the checker sees it.
struct Seen<'a> {
    call: u64,
    ret: u64,
    node: u64,
    what: SeenKind<'a>,
}

enum SeenKind<'a> {
    Points {
        points: &'a [(i64, u64)],
        final_read: bool,
        range: Option<(i64, i64)>,
    },
    Newest(Option<u64>),
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
        // value -> (invocation, completion) of its append (None: unknown).
        let mut appends: HashMap<u64, (u64, Option<u64>)> = HashMap::new();
        let mut reads = Vec::new();
        for op in &ops {
            let what = match &op.kind {
                SeriesKind::Append { value } => {
                    appends.insert(*value, (op.call, op.ret));
                    continue;
                }
                SeriesKind::Read {
                    points,
                    final_read,
                    range,
                } => SeenKind::Points {
                    points,
                    final_read: *final_read,
                    range: *range,
                },
                SeriesKind::Newest { value } => SeenKind::Newest(*value),
            };
            if let Some(ret) = op.ret {
                reads.push(Seen {
                    call: op.call,
                    ret,
                    node: op.node,
                    what,
                });
            }
        }
        out.appends += appends.len();
        // (completion, value) of every acknowledged append, by completion.
        let mut acked: Vec<(u64, u64)> = appends
            .iter()
            .filter_map(|(&v, &(_, ret))| ret.map(|r| (r, v)))
            .collect();
        acked.sort_unstable();
        out.acknowledged += acked.len();
        out.reads += reads.len();

        // When each value was first seen by a completed read.
        let mut first_seen: HashMap<u64, u64> = HashMap::new();
        for read in &reads {
            let shown: Vec<u64> = match &read.what {
                SeenKind::Points { points, .. } => points.iter().map(|p| p.1).collect(),
                SeenKind::Newest(v) => v.iter().copied().collect(),
            };
            for v in shown {
                let e = first_seen.entry(v).or_insert(read.ret);
                *e = (*e).min(read.ret);
            }
        }
        let mut seen: Vec<(u64, u64)> = first_seen.iter().map(|(&v, &t)| (t, v)).collect();
        seen.sort_unstable();

        let mut final_values = HashSet::new();
        for read in &reads {
            let (call, node) = (read.call, read.node);
            let acked_before = &acked[..acked.partition_point(|&(ret, _)| ret < call)];
            let seen_before = &seen[..seen.partition_point(|&(t, _)| t < call)];
            let (points, final_read, range) = match read.what {
                SeenKind::Points {
                    points,
                    final_read,
                    range,
                } => (points, final_read, range),
                SeenKind::Newest(value) => {
                    out.newest_reads += 1;
                    check_newest(
                        &mut out,
                        series,
                        (call, node),
                        value,
                        &appends,
                        acked_before,
                        seen_before,
                    );
                    continue;
                }
            };
            out.range_reads += usize::from(range.is_some());
            let in_range =
                |v: u64| range.is_none_or(|(from, to)| (from..=to).contains(&timestamp(base, v)));
            let mut values = HashSet::with_capacity(points.len());
            for &(ts, v) in points {
                if !values.insert(v) {
                    out.duplicate += 1;
                    out.note(
                        call,
                        format!("series k{series}: value {v} shows twice in one read"),
                    );
                }
                match appends.get(&v) {
                    None => {
                        out.phantom += 1;
                        out.note(
                            call,
                            format!("series k{series}: value {v} was never written"),
                        );
                    }
                    Some(_) if ts != timestamp(base, v) => {
                        out.phantom += 1;
                        out.note(
                            call,
                            format!("series k{series}: value {v} shows at {ts}, written at another time"),
                        );
                    }
                    Some(_) if !in_range(v) => {
                        out.phantom += 1;
                        out.note(
                            call,
                            format!("series k{series}: value {v} shows in a read of {range:?}, outside it"),
                        );
                    }
                    Some(_) => {}
                }
            }
            if final_read {
                final_values.extend(values.iter().copied());
            }
            // Every append acknowledged before this read was invoked.
            for &(ret, v) in acked_before {
                if in_range(v) && !values.contains(&v) {
                    if final_read {
                        out.lost += 1;
                        out.note(
                            call,
                            format!(
                                "series k{series}: acknowledged value {v} is lost (final read)"
                            ),
                        );
                    } else {
                        out.stale += 1;
                        out.note(
                            call,
                            format!("series k{series}: a read through node {node} invoked {:.3} s after value {v} was acknowledged misses it ({} points read)", (call - ret) as f64 / 1e9, points.len()),
                        );
                    }
                }
            }
            // Every value a read completed before this one had shown.
            for &(_, v) in seen_before {
                if in_range(v) && !values.contains(&v) {
                    out.non_monotonic += 1;
                    out.note(call, format!("series k{series}: value {v}, shown by an earlier read, is gone from a read through node {node}"));
                }
            }
            // Write order: the latest invocation among the writes shown; every
            // write acknowledged before it precedes a shown one in real time.
            // (Those acknowledged before this read was invoked are stale or
            // lost above already.)
            let latest = values
                .iter()
                .filter_map(|v| appends.get(v).map(|a| a.0))
                .max()
                .unwrap_or(0);
            let upto = acked.partition_point(|&(ret, _)| ret < latest);
            for &(ret, v) in &acked[acked_before.len().min(upto)..upto] {
                if in_range(v) && !values.contains(&v) {
                    out.write_order += 1;
                    out.note(call, format!("series k{series}: a read through node {node} shows a write invoked {:.3} s after value {v} was acknowledged, but not {v}", (latest - ret) as f64 / 1e9));
                }
            }
        }
        out.final_present += acked
            .iter()
            .filter(|(_, v)| final_values.contains(v))
            .count();
        out.unknown_present += appends
            .iter()
            .filter(|(v, (_, ret))| ret.is_none() && final_values.contains(v))
            .count();
    }
    out
}

/// A newest-sample read: values grow with their times, so the newest
/// sample is the largest value the series holds.
fn check_newest(
    out: &mut SeriesCheck,
    series: usize,
    (call, node): (u64, u64),
    value: Option<u64>,
    appends: &HashMap<u64, (u64, Option<u64>)>,
    acked_before: &[(u64, u64)],
    seen_before: &[(u64, u64)],
) {
    if let Some(v) = value {
        if !appends.contains_key(&v) {
            out.phantom += 1;
            out.note(
                call,
                format!("series k{series}: the newest sample's value {v} was never written"),
            );
        }
    }
    let shown = value.map_or(0, |v| v + 1);
    if let Some(&(_, v)) = acked_before.iter().max_by_key(|&&(_, v)| v) {
        if shown <= v {
            out.stale += 1;
            out.note(call, format!("series k{series}: the newest sample through node {node} is {value:?}, older than value {v}, acknowledged before the read"));
        }
    }
    if let Some(&(_, v)) = seen_before.iter().max_by_key(|&&(_, v)| v) {
        if shown <= v {
            out.non_monotonic += 1;
            out.note(call, format!("series k{series}: the newest sample through node {node} is {value:?}, older than value {v}, which an earlier read had shown"));
        }
    }
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
                range: None,
            },
        }
    }

    fn range_read(call: u64, ret: u64, (lo, hi): (u64, u64), values: &[u64]) -> SeriesOp {
        let mut op = read(0, call, ret, values, false);
        if let SeriesKind::Read { range, .. } = &mut op.kind {
            *range = Some(range_of(0, lo, hi));
        }
        op
    }

    fn newest(call: u64, ret: u64, value: Option<u64>) -> SeriesOp {
        SeriesOp {
            client: 2,
            series: 0,
            node: 1,
            call,
            ret: Some(ret),
            kind: SeriesKind::Newest { value },
        }
    }

    #[test]
    fn range_reads_are_judged_on_their_range_only() {
        let writes = [
            append(0, 1, 0, Some(1)),
            append(0, 2, 0, Some(1)),
            append(0, 3, 0, Some(1)),
        ];
        let with = |r: SeriesOp| {
            let mut h = writes.to_vec();
            h.push(r);
            check(&h, 0)
        };
        // Values 2..=3 asked for: 1 may be missing, 2 and 3 may not.
        let c = with(range_read(5, 6, (2, 3), &[2, 3]));
        assert_eq!((c.violations(), c.range_reads), (0, 1), "{:?}", c.examples);
        let c = with(range_read(5, 6, (2, 3), &[3]));
        assert_eq!(c.stale, 1);
        // A point outside the range asked for is a phantom.
        let c = with(range_read(5, 6, (2, 3), &[1, 2, 3]));
        assert_eq!(c.phantom, 1);
    }

    #[test]
    fn a_read_showing_a_write_must_show_what_was_acknowledged_before_it_began() {
        // 1 acknowledged at 10; 2 invoked at 20, unknown. A read concurrent with
        // both (invoked at 5) may show neither, or 1, but not 2 without 1.
        let h = |shown: &[u64]| {
            check(
                &[
                    append(0, 1, 0, Some(10)),
                    append(0, 2, 20, None),
                    read(0, 5, 30, shown, false),
                ],
                0,
            )
        };
        assert_eq!(h(&[]).violations(), 0);
        assert_eq!(h(&[1]).violations(), 0);
        assert_eq!(h(&[1, 2]).violations(), 0);
        let c = h(&[2]);
        assert_eq!((c.write_order, c.violations()), (1, 1), "{:?}", c.examples);
        // Concurrent writes are not ordered: either may show alone.
        let c = check(
            &[
                append(0, 1, 0, Some(10)),
                append(0, 2, 5, Some(12)),
                read(0, 1, 30, &[2], false),
            ],
            0,
        );
        assert_eq!(c.violations(), 0, "{:?}", c.examples);
    }

    #[test]
    fn the_newest_sample_is_no_older_than_what_was_acknowledged_or_seen() {
        let writes = [append(0, 1, 0, Some(1)), append(0, 2, 2, Some(3))];
        let with = |extra: &[SeriesOp]| {
            let mut h = writes.to_vec();
            h.extend_from_slice(extra);
            check(&h, 0)
        };
        let c = with(&[newest(5, 6, Some(2))]);
        assert_eq!((c.violations(), c.newest_reads), (0, 1), "{:?}", c.examples);
        // Invoked after 2 was acknowledged: 1 or nothing is stale.
        assert_eq!(with(&[newest(5, 6, Some(1))]).stale, 1);
        assert_eq!(with(&[newest(5, 6, None)]).stale, 1);
        // Concurrent with 2's write: 1 is fine.
        assert_eq!(with(&[newest(2, 6, Some(1))]).violations(), 0);
        // A value never written.
        assert_eq!(with(&[newest(5, 6, Some(9))]).phantom, 1);
        // An unknown write seen by a read is there for every later read.
        let c = check(
            &[
                append(0, 1, 0, None),
                read(0, 2, 3, &[1], false),
                newest(4, 5, None),
            ],
            0,
        );
        assert_eq!(c.non_monotonic, 1, "{:?}", c.examples);
        // And a newest read's value counts as seen by whole reads after it.
        let c = check(
            &[
                append(0, 1, 0, None),
                newest(2, 3, Some(1)),
                read(0, 4, 5, &[], false),
            ],
            0,
        );
        assert_eq!(c.non_monotonic, 1, "{:?}", c.examples);
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

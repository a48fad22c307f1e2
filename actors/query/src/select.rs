//! Runs a [`SelectPlan`] (SQL or CQL) over a [`DataSource`] and answers with rows.
//!
//! Aggregates are computed by the shards as mergeable partials when the plan
//! allows it ([`SelectPlan::pushdown`]); otherwise the samples are read and
//! aggregated here with the same [`Partial`] arithmetic, so both paths agree
//! (a test checks it on random data).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chronicle_engine::select::{Alignment, Column, GapFill, RowView, SelectPlan, Side};
use chronicle_storage::aggregate::{is_aggregatable, window_start, CounterWindow};
use chronicle_storage::model::METRIC_LABEL;
use chronicle_storage::{
    AggregateFunction, AggregateRequest, GroupBy, Matcher, Partial, Sample, SeriesKey,
};
use serde::{Deserialize, Serialize, Serializer};

use crate::actor::Budget;
use crate::source::{DataSource, ReadLimit};
use crate::QueryError;

/// One value in an answer row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    /// Times (nanoseconds) and counts.
    Int(i64),
    Number(f64),
    Text(String),
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Null => s.serialize_none(),
            Cell::Int(i) => s.serialize_i64(*i),
            Cell::Number(v) if v.is_finite() => s.serialize_f64(*v),
            Cell::Number(v) if v.is_nan() => s.serialize_str("NaN"),
            Cell::Number(v) if *v > 0.0 => s.serialize_str("+Inf"),
            Cell::Number(_) => s.serialize_str("-Inf"),
            Cell::Text(t) => s.serialize_str(t),
        }
    }
}

impl Cell {
    /// Sort order: nulls first, then numbers (times included), then text.
    fn order(&self, other: &Cell) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let rank = |c: &Cell| match c {
            Cell::Null => 0,
            Cell::Int(_) | Cell::Number(_) => 1,
            Cell::Text(_) => 2,
        };
        match (self, other) {
            (Cell::Int(a), Cell::Int(b)) => a.cmp(b),
            (Cell::Text(a), Cell::Text(b)) => a.cmp(b),
            (a @ (Cell::Int(_) | Cell::Number(_)), b @ (Cell::Int(_) | Cell::Number(_))) => {
                let f = |c: &Cell| match c {
                    Cell::Int(i) => *i as f64,
                    Cell::Number(v) => *v,
                    _ => 0.0,
                };
                f(a).total_cmp(&f(b))
            }
            (a, b) => rank(a).cmp(&rank(b)).then(Ordering::Equal),
        }
    }
}

/// Rows with named columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// Most label-set alternatives or windows a query may expand into.
const MAX_WINDOWS: i64 = 10_000_000;

/// Runs `plan`. An answer over `max_rows` (after LIMIT) is an error, never
/// silently cut; so is reading more than `max_samples` raw samples (found
/// while reading, not after).
/// Runs a SQL or CQL plan. `stop` is checked between reads and between
/// stages: a query timed out or cancelled stops at its next check (one read
/// runs to its end; `max_samples` bounds it).
pub fn run_select(
    source: &dyn DataSource,
    plan: &SelectPlan,
    now: i64,
    max_rows: usize,
    max_samples: usize,
    stop: &Budget,
) -> Result<Table, QueryError> {
    let mut budget = max_samples;
    let (start, end) = plan.filter.time_bounds(now);
    if start >= end {
        return Ok(empty_table(plan, &[], &[]));
    }
    let (left_sets, exact) = plan.left_selection();
    let mut out = if plan.pushdown() {
        pushed_down(source, plan, &left_sets[0], start, end, max_rows)?
    } else {
        let left = read_series(source, &left_sets, start, end, &mut budget, stop)?;
        let right = match &plan.join {
            None => Vec::new(),
            // Every series of the joined measurement: its label conditions are
            // checked on the joined rows (filtering before the join would match
            // rows with a sample the condition then refuses, not with none).
            Some(j) => {
                let from = j.tolerance.map_or(i64::MIN, |t| start.saturating_sub(t));
                read_series(
                    source,
                    &[vec![Matcher::equal(METRIC_LABEL, &j.metric)]],
                    from,
                    end,
                    &mut budget,
                    stop,
                )?
            }
        };
        stop.check()?;
        let rows = join_rows(plan, &left, &right, start, end);
        stop.check()?;
        let check = !(plan.filter.is_selection_only() && exact && plan.join.is_none());
        let rows: Vec<Row> = if check {
            rows.into_iter()
                .filter(|r| {
                    plan.filter.eval(
                        &RowRef {
                            row: r,
                            left: &left,
                            right: &right,
                        },
                        now,
                    )
                })
                .collect()
        } else {
            rows
        };
        stop.check()?;
        if plan.is_aggregate() {
            aggregate_rows(plan, &rows, &left, start, end, max_rows)?
        } else {
            project_raw(plan, &rows, &left, &right)
        }
    };
    stop.check()?;
    out.order_limit(plan);
    if out.rows.len() > max_rows {
        return Err(QueryError::TooLarge(format!(
            "the answer would hold {} rows, over this node's limit of {max_rows}; \
             narrow the time range or the selection, aggregate, or add LIMIT",
            out.rows.len()
        )));
    }
    Ok(out.finish(plan))
}

/// Rows being built: cells for every plan column (hidden ones included).
struct Building {
    columns: Vec<String>,
    /// Where each plan column's cells start in a row.
    starts: Vec<usize>,
    rows: Vec<Vec<Cell>>,
}

impl Building {
    fn order_limit(&mut self, plan: &SelectPlan) {
        if !plan.order_by.is_empty() {
            let keys: Vec<(usize, bool)> = plan
                .order_by
                .iter()
                .map(|k| (self.starts[k.column], k.descending))
                .collect();
            self.rows.sort_by(|a, b| {
                for &(i, desc) in &keys {
                    let o = a[i].order(&b[i]);
                    let o = if desc { o.reverse() } else { o };
                    if o.is_ne() {
                        return o;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        let skip = plan.offset.min(self.rows.len());
        self.rows.drain(..skip);
        if let Some(l) = plan.limit {
            self.rows.truncate(l);
        }
    }

    fn finish(self, plan: &SelectPlan) -> Table {
        // Drop hidden sort columns (they sit after the visible ones' cells).
        let mut keep = vec![true; self.columns.len()];
        for (i, c) in plan.columns.iter().enumerate() {
            if c.hidden {
                let end = self
                    .starts
                    .get(i + 1)
                    .copied()
                    .unwrap_or(self.columns.len());
                keep[self.starts[i]..end]
                    .iter_mut()
                    .for_each(|k| *k = false);
            }
        }
        let pick = |v: Vec<Cell>| -> Vec<Cell> {
            v.into_iter()
                .zip(&keep)
                .filter_map(|(c, k)| k.then_some(c))
                .collect()
        };
        Table {
            columns: self
                .columns
                .into_iter()
                .zip(&keep)
                .filter_map(|(c, k)| k.then_some(c))
                .collect(),
            rows: self.rows.into_iter().map(pick).collect(),
        }
    }
}

fn empty_table(plan: &SelectPlan, left: &[Series], right: &[Series]) -> Table {
    let (columns, starts) = column_layout(plan, left, right);
    Building {
        columns,
        starts,
        rows: Vec::new(),
    }
    .finish(plan)
}

type Series = (SeriesKey, Vec<Sample>);

/// Every series matching any of the sets, once each, in key order. `budget`
/// is how many samples the query may still read; reads take from it.
fn read_series(
    source: &dyn DataSource,
    sets: &[Vec<Matcher>],
    start: i64,
    end: i64,
    budget: &mut usize,
    stop: &Budget,
) -> Result<Vec<Series>, QueryError> {
    let mut all: BTreeMap<SeriesKey, Vec<Sample>> = BTreeMap::new();
    for set in sets {
        stop.check()?;
        let read = source.series(set, start, end, ReadLimit::AtMost(*budget))?;
        for (key, samples) in read.series {
            *budget -= samples.len();
            all.entry(key).or_insert(samples);
        }
    }
    Ok(all.into_iter().collect())
}

/// One row before projection: a left sample and the right sample joined to it.
struct Row {
    t: i64,
    left: (usize, f64),
    right: Option<(usize, f64)>,
}

struct RowRef<'a> {
    row: &'a Row,
    left: &'a [Series],
    right: &'a [Series],
}

fn label_of<'a>(key: &'a SeriesKey, name: &str) -> Option<&'a str> {
    key.label(name)
}

impl RowView for RowRef<'_> {
    fn time(&self) -> i64 {
        self.row.t
    }

    fn value(&self, side: Side) -> Option<f64> {
        match side {
            Side::Left => Some(self.row.left.1),
            Side::Right => self.row.right.map(|r| r.1),
        }
    }

    fn label(&self, side: Side, name: &str) -> Option<&str> {
        match side {
            Side::Left => label_of(&self.left[self.row.left.0].0, name),
            Side::Right => self
                .row
                .right
                .and_then(|(i, _)| label_of(&self.right[i].0, name)),
        }
    }
}

/// Whether two series agree on every label both have (the ASOF JOIN's key).
fn compatible(a: &SeriesKey, b: &SeriesKey) -> bool {
    a.labels.iter().all(|l| {
        b.labels
            .iter()
            .find(|m| m.name == l.name)
            .is_none_or(|m| m.value == l.value)
    })
}

fn join_rows(
    plan: &SelectPlan,
    left: &[Series],
    right: &[Series],
    start: i64,
    end: i64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (li, (lkey, samples)) in left.iter().enumerate() {
        let partners: Vec<usize> = match &plan.join {
            None => Vec::new(),
            Some(_) => (0..right.len())
                .filter(|&ri| compatible(lkey, &right[ri].0))
                .collect(),
        };
        for s in samples {
            if s.timestamp < start || s.timestamp >= end || !is_aggregatable(s) {
                continue;
            }
            let Some(j) = &plan.join else {
                rows.push(Row {
                    t: s.timestamp,
                    left: (li, s.value),
                    right: None,
                });
                continue;
            };
            let before = rows.len();
            for &ri in &partners {
                let rs = &right[ri].1;
                // The latest right sample at or before the left one.
                let n = rs.partition_point(|r| r.timestamp <= s.timestamp);
                let Some(r) = rs[..n].iter().rev().find(|r| is_aggregatable(r)) else {
                    continue;
                };
                if j.tolerance
                    .is_some_and(|tol| s.timestamp - r.timestamp > tol)
                {
                    continue;
                }
                rows.push(Row {
                    t: s.timestamp,
                    left: (li, s.value),
                    right: Some((ri, r.value)),
                });
            }
            if rows.len() == before {
                // ASOF JOIN keeps unmatched left rows, with nulls on the right.
                rows.push(Row {
                    t: s.timestamp,
                    left: (li, s.value),
                    right: None,
                });
            }
        }
    }
    rows
}

/// Sorted label names of a side's series (`SELECT *`), the metric name excluded.
fn label_names(series: &[Series]) -> Vec<String> {
    let names: BTreeSet<&str> = series
        .iter()
        .flat_map(|(k, _)| k.labels.iter().map(|l| l.name.as_str()))
        .collect();
    names.into_iter().map(str::to_string).collect()
}

fn column_layout(
    plan: &SelectPlan,
    left: &[Series],
    right: &[Series],
) -> (Vec<String>, Vec<usize>) {
    let mut names = Vec::new();
    let mut starts = Vec::new();
    for c in &plan.columns {
        starts.push(names.len());
        match &c.column {
            Column::AllLabels(Side::Left) => names.extend(label_names(left)),
            Column::AllLabels(Side::Right) => {
                let prefix = plan.join.as_ref().map_or("", |j| j.metric.as_str());
                names.extend(
                    label_names(right)
                        .into_iter()
                        .map(|l| format!("{prefix}.{l}")),
                )
            }
            _ => names.push(c.name.clone()),
        }
    }
    (names, starts)
}

fn project_raw(plan: &SelectPlan, rows: &[Row], left: &[Series], right: &[Series]) -> Building {
    let (columns, starts) = column_layout(plan, left, right);
    let left_names = label_names(left);
    let right_names = label_names(right);
    let text = |v: Option<&str>| v.map_or(Cell::Null, |s| Cell::Text(s.to_string()));
    let out = rows
        .iter()
        .map(|r| {
            let view = RowRef {
                row: r,
                left,
                right,
            };
            let mut cells = Vec::with_capacity(columns.len());
            for c in &plan.columns {
                match &c.column {
                    Column::Time => cells.push(Cell::Int(r.t)),
                    Column::Value(side) => {
                        cells.push(view.value(*side).map_or(Cell::Null, Cell::Number))
                    }
                    Column::Label(side, l) => cells.push(text(view.label(*side, l))),
                    Column::AllLabels(side) => {
                        let names = if *side == Side::Left {
                            &left_names
                        } else {
                            &right_names
                        };
                        cells.extend(names.iter().map(|l| text(view.label(*side, l))));
                    }
                    Column::Aggregate(..) => cells.push(Cell::Null),
                }
            }
            cells
        })
        .collect();
    Building {
        columns,
        starts,
        rows: out,
    }
}

/// Group label values, in `plan.group_by` order (`None`: the series lacks it).
type GroupKey = Vec<Option<String>>;

/// One aggregate column's state in one window of one group.
#[derive(Default, Clone)]
struct AggState {
    partial: Partial,
    /// Per series, for rate.
    counters: HashMap<usize, CounterWindow>,
}

fn aggregate_rows(
    plan: &SelectPlan,
    rows: &[Row],
    left: &[Series],
    start: i64,
    end: i64,
    max_rows: usize,
) -> Result<Building, QueryError> {
    let aggs: Vec<(AggregateFunction, Side)> = plan
        .columns
        .iter()
        .filter_map(|c| match c.column {
            Column::Aggregate(f, s) => Some((f, s)),
            _ => None,
        })
        .collect();
    let origin = window_origin(plan, start, rows.iter().map(|r| r.t).min());
    let mut groups: BTreeMap<GroupKey, BTreeMap<i64, Vec<AggState>>> = BTreeMap::new();
    let group_cache: Vec<GroupKey> = left
        .iter()
        .map(|(k, _)| {
            plan.group_by
                .iter()
                .map(|l| label_of(k, l).map(str::to_string))
                .collect()
        })
        .collect();
    for r in rows {
        let w = window_of(plan, origin, r.t);
        let states = groups
            .entry(group_cache[r.left.0].clone())
            .or_default()
            .entry(w)
            .or_insert_with(|| vec![AggState::default(); aggs.len()]);
        for (state, (f, side)) in states.iter_mut().zip(&aggs) {
            let (series, v) = match side {
                Side::Left => (r.left.0, r.left.1),
                Side::Right => match r.right {
                    Some((i, v)) => (left.len() + i, v),
                    None => continue,
                },
            };
            let sample = Sample::new(r.t, v);
            if *f == AggregateFunction::Rate {
                state.counters.entry(series).or_default().push(sample);
            } else {
                state
                    .partial
                    .push(sample, matches!(f, AggregateFunction::Percentile(_)));
            }
        }
    }
    let finished = groups
        .into_iter()
        .map(|(g, windows)| {
            let windows = windows
                .into_iter()
                .map(|(w, states)| {
                    let values = states
                        .into_iter()
                        .zip(&aggs)
                        .map(|(mut st, (f, _))| {
                            if *f == AggregateFunction::Rate {
                                for c in st.counters.values() {
                                    if let Some(r) = c.rate() {
                                        st.partial.rate += r;
                                        st.partial.rate_series += 1;
                                    }
                                }
                            }
                            st.partial.finish(*f)
                        })
                        .collect();
                    (w, values)
                })
                .collect();
            (g, windows)
        })
        .collect();
    grouped_rows(plan, finished, origin, start, end, aggs.len(), max_rows)
}

/// The time windows are counted from.
fn window_origin(plan: &SelectPlan, start: i64, first_sample: Option<i64>) -> i64 {
    match plan.window.map(|w| w.align) {
        Some(Alignment::Start) if start != i64::MIN => start,
        Some(Alignment::Start | Alignment::FirstSample) => first_sample.unwrap_or(0),
        Some(Alignment::Epoch(offset)) => offset,
        None => 0,
    }
}

/// The start of the window holding `t` (`i64::MIN` without windows: one bucket).
fn window_of(plan: &SelectPlan, origin: i64, t: i64) -> i64 {
    match plan.window {
        Some(w) => window_start(t.saturating_sub(origin), w.width).saturating_add(origin),
        None => i64::MIN,
    }
}

/// Per group, per window start: one value (or none) per aggregate column.
type Finished = BTreeMap<GroupKey, BTreeMap<i64, Vec<Option<f64>>>>;

fn pushed_down(
    source: &dyn DataSource,
    plan: &SelectPlan,
    matchers: &[Matcher],
    start: i64,
    end: i64,
    max_rows: usize,
) -> Result<Building, QueryError> {
    let mut aggs: Vec<AggregateFunction> = plan
        .columns
        .iter()
        .filter_map(|c| match c.column {
            Column::Aggregate(f, _) => Some(f),
            _ => None,
        })
        .collect();
    let n_aggs = aggs.len();
    // Shards leave out windows whose value they cannot give (stddev of one
    // sample, a rate without two): with GAP_FILL a count says which windows had
    // samples, so those stay null instead of being filled, as computed here.
    if plan.gap_fill.is_some() {
        aggs.push(AggregateFunction::Count);
    }
    let window = plan.window.map_or(0, |w| w.width);
    let mut finished: Finished = BTreeMap::new();
    // One request per distinct function; each shard answers with partials.
    let mut done: Vec<(AggregateFunction, Vec<chronicle_storage::AggregateSeries>)> = Vec::new();
    for (i, f) in aggs.iter().enumerate() {
        let answer = match done.iter().find(|(g, _)| g == f) {
            Some((_, a)) => a.clone(),
            None => {
                let a = source.aggregate(&AggregateRequest {
                    matchers: matchers.to_vec(),
                    start,
                    end,
                    window,
                    function: *f,
                    group_by: GroupBy::Labels(plan.group_by.clone()),
                })?;
                done.push((*f, a.clone()));
                a
            }
        };
        for s in answer {
            let key: GroupKey = plan
                .group_by
                .iter()
                .map(|l| {
                    s.group
                        .iter()
                        .find(|g| &g.name == l)
                        .map(|g| g.value.clone())
                })
                .collect();
            let windows = finished.entry(key).or_default();
            for p in s.points {
                let w = if window == 0 { i64::MIN } else { p.timestamp };
                let values = windows.entry(w).or_insert_with(|| vec![None; n_aggs]);
                if i < n_aggs {
                    values[i] = Some(p.value);
                }
            }
        }
    }
    grouped_rows(plan, finished, 0, start, end, n_aggs, max_rows)
}

/// Gap filling and projection of finished groups into rows (group order, then time).
fn grouped_rows(
    plan: &SelectPlan,
    mut finished: Finished,
    origin: i64,
    start: i64,
    end: i64,
    n_aggs: usize,
    max_rows: usize,
) -> Result<Building, QueryError> {
    if let (Some(fill), Some(w)) = (plan.gap_fill, plan.window) {
        if finished.is_empty() && plan.group_by.is_empty() && start != i64::MIN && end != i64::MAX {
            finished.insert(Vec::new(), BTreeMap::new());
        }
        // From the query's start to its end; where the range is open, from the
        // group's own first or to its own last window.
        let bounds: Vec<Option<(i64, i64)>> = finished
            .values()
            .map(|windows| {
                let first = if start != i64::MIN {
                    Some(window_of(plan, origin, start))
                } else {
                    windows.keys().next().copied()
                };
                let last = if end != i64::MAX {
                    Some(window_of(plan, origin, end - 1))
                } else {
                    windows.keys().next_back().copied()
                };
                first.zip(last)
            })
            .collect();
        // Count before making anything: a window of 1 ns over years is a
        // query mistake, not a reason to run out of memory.
        let total: i128 = bounds
            .iter()
            .flatten()
            .map(|(first, last)| (i128::from(*last) - i128::from(*first)) / i128::from(w.width) + 1)
            .sum();
        let cap = (max_rows as i128).min(i128::from(MAX_WINDOWS));
        if total > cap {
            return Err(QueryError::TooLarge(format!(
                "GAP_FILL would make {total} rows, over the limit of {cap}; narrow the time range or widen the window"
            )));
        }
        for (windows, bound) in finished.values_mut().zip(bounds) {
            if let Some((first, last)) = bound {
                fill_gaps(windows, fill, first, last, w.width, n_aggs);
            }
        }
    }
    let (columns, starts) = column_layout(plan, &[], &[]);
    let mut rows = Vec::new();
    for (group, windows) in finished {
        for (w, values) in windows {
            if values.iter().all(Option::is_none) && plan.gap_fill.is_none() {
                continue;
            }
            let mut cells = Vec::with_capacity(columns.len());
            let mut agg = 0;
            for c in &plan.columns {
                match &c.column {
                    Column::Time => cells.push(match w {
                        i64::MIN if start == i64::MIN => Cell::Null,
                        i64::MIN => Cell::Int(start),
                        w => Cell::Int(w),
                    }),
                    Column::Label(_, l) => {
                        let i = plan.group_by.iter().position(|g| g == l);
                        cells.push(
                            i.and_then(|i| group[i].clone())
                                .map_or(Cell::Null, Cell::Text),
                        );
                    }
                    Column::Aggregate(..) => {
                        cells.push(values[agg].map_or(Cell::Null, Cell::Number));
                        agg += 1;
                    }
                    Column::Value(_) | Column::AllLabels(_) => cells.push(Cell::Null),
                }
            }
            rows.push(cells);
        }
    }
    Ok(Building {
        columns,
        starts,
        rows,
    })
}

fn fill_gaps(
    windows: &mut BTreeMap<i64, Vec<Option<f64>>>,
    fill: GapFill,
    first: i64,
    last: i64,
    width: i64,
    n_aggs: usize,
) {
    // The windows that had samples; fills look up their neighbours here.
    let known = windows.clone();
    let mut w = first;
    while w <= last {
        if let std::collections::btree_map::Entry::Vacant(slot) = windows.entry(w) {
            let values = (0..n_aggs)
                .map(|i| {
                    let before = || known.range(..w).rev().find(|(_, v)| v[i].is_some());
                    let after = || known.range(w..).find(|(_, v)| v[i].is_some());
                    match fill {
                        GapFill::Null => None,
                        GapFill::Value(v) => Some(v),
                        GapFill::Previous => before().and_then(|(_, v)| v[i]),
                        GapFill::Linear => match (before(), after()) {
                            (Some((t0, v0)), Some((t1, v1))) => {
                                let (a, b) = (v0[i].unwrap_or(0.0), v1[i].unwrap_or(0.0));
                                Some(a + (b - a) * (w - t0) as f64 / (t1 - t0) as f64)
                            }
                            _ => None,
                        },
                    }
                })
                .collect();
            slot.insert(values);
        }
        match w.checked_add(width) {
            Some(next) => w = next,
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SeriesRead;
    use chronicle_engine::{cql, sql};
    use chronicle_storage::Label;

    /// Series in memory, answering both reads the executor makes (the aggregate
    /// one the way a shard does: partials over the selected samples).
    struct Memory(Vec<Series>);

    impl chronicle_engine::source::SeriesSource for Memory {
        fn select(
            &self,
            _: &[Matcher],
            _: i64,
            _: i64,
            _: usize,
        ) -> chronicle_engine::Result<Vec<chronicle_engine::RangeSeries>> {
            unreachable!("SQL reads through DataSource")
        }
    }

    impl DataSource for Memory {
        fn series(
            &self,
            m: &[Matcher],
            start: i64,
            end: i64,
            limit: ReadLimit,
        ) -> Result<SeriesRead, QueryError> {
            let series: Vec<Series> = self
                .0
                .iter()
                .filter(|(k, _)| m.iter().all(|m| m.matches(k.label(&m.name).unwrap_or(""))))
                .map(|(k, s)| {
                    (
                        k.clone(),
                        s.iter()
                            .filter(|x| x.timestamp >= start && x.timestamp < end)
                            .copied()
                            .collect(),
                    )
                })
                .collect();
            match limit {
                ReadLimit::AtMost(max) if series.iter().map(|s| s.1.len()).sum::<usize>() > max => {
                    Err(crate::source::too_many_samples(max))
                }
                _ => Ok(SeriesRead {
                    series,
                    truncated: false,
                }),
            }
        }

        fn aggregate(
            &self,
            req: &AggregateRequest,
        ) -> Result<Vec<chronicle_storage::AggregateSeries>, QueryError> {
            let dir = tempfile::tempdir().unwrap();
            let shard = chronicle_storage::Shard::open(dir.path(), Default::default()).unwrap();
            let mut points = Vec::new();
            for (k, samples) in &self.0 {
                for s in samples {
                    points.push(chronicle_storage::Point {
                        metric: k.metric.clone(),
                        labels: k.labels.clone(),
                        timestamp: s.timestamp,
                        value: s.value,
                    });
                }
            }
            shard.write_batch(&points).unwrap();
            Ok(shard.aggregate(req).unwrap())
        }

        fn series_keys(
            &self,
            _: &[Matcher],
            _: i64,
            _: i64,
            _: usize,
        ) -> Result<Option<Vec<SeriesKey>>, QueryError> {
            unreachable!()
        }
    }

    const S: i64 = 1_000_000_000;

    fn data() -> Memory {
        let key = |host: &str, dc: &str| {
            SeriesKey::new("cpu", vec![Label::new("host", host), Label::new("dc", dc)])
        };
        let series = |vals: &[(i64, f64)]| -> Vec<Sample> {
            vals.iter().map(|(t, v)| Sample::new(t * S, *v)).collect()
        };
        Memory(vec![
            (
                key("a", "eu"),
                series(&[(0, 1.0), (10, 2.0), (20, 3.0), (70, 4.0)]),
            ),
            (key("b", "us"), series(&[(5, 10.0), (65, 20.0)])),
            (
                SeriesKey::new("mem", vec![Label::new("host", "a")]),
                series(&[(0, 100.0), (60, 200.0)]),
            ),
        ])
    }

    fn run(text: &str, cql_text: bool) -> Table {
        let plan = if cql_text {
            cql::parse(text).unwrap().plan
        } else {
            sql::parse(text).unwrap().plan
        };
        run_select(
            &data(),
            &plan,
            1_000 * S,
            1000,
            usize::MAX,
            &Budget::unbounded(),
        )
        .unwrap()
    }

    fn nums(t: &Table, col: &str) -> Vec<Option<f64>> {
        let i = t.columns.iter().position(|c| c == col).unwrap();
        t.rows
            .iter()
            .map(|r| match &r[i] {
                Cell::Number(v) => Some(*v),
                Cell::Int(v) => Some(*v as f64),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn raw_rows_and_star() {
        let t = run("SELECT * FROM cpu WHERE host = 'a'", false);
        assert_eq!(t.columns, ["time", "dc", "host", "value"]);
        assert_eq!(t.rows.len(), 4);
        assert_eq!(t.rows[0][1], Cell::Text("eu".into()));
        let t = run(
            "SELECT value FROM cpu WHERE value >= 3 OR host = 'b' ORDER BY value DESC LIMIT 2",
            false,
        );
        assert_eq!(nums(&t, "value"), [Some(20.0), Some(10.0)]);
    }

    #[test]
    fn windows_groups_and_pushdown_agree() {
        let sql = "SELECT sum(value), count(value), max(value) FROM cpu WHERE time >= 0 AND time < 120000000000 GROUP BY time(1m), host";
        let plan = sql::parse(sql).unwrap().plan;
        assert!(plan.pushdown());
        let pushed = run_select(&data(), &plan, 0, 100, usize::MAX, &Budget::unbounded()).unwrap();
        // The same query with a value condition that keeps everything goes the local way.
        let local_sql = sql.replace("WHERE", "WHERE value > -1e9 AND");
        let local = sql::parse(&local_sql).unwrap().plan;
        assert!(!local.pushdown());
        let computed =
            run_select(&data(), &local, 0, 100, usize::MAX, &Budget::unbounded()).unwrap();
        assert_eq!(pushed, computed);
        assert_eq!(pushed.columns, ["time", "host", "sum", "count", "max"]);
        assert_eq!(
            nums(&pushed, "sum"),
            [Some(6.0), Some(4.0), Some(10.0), Some(20.0)]
        );
    }

    #[test]
    fn gap_fill_methods() {
        let base = "SELECT mean(value) FROM cpu WHERE host = 'a' AND time >= 0 AND time < 80000000000 WINDOW 20s";
        let t = run(base, true);
        assert_eq!(nums(&t, "mean"), [Some(1.5), Some(3.0), Some(4.0)]);
        let t = run(&format!("{base} GAP_FILL"), true);
        assert_eq!(nums(&t, "mean"), [Some(1.5), Some(3.0), None, Some(4.0)]);
        let t = run(&format!("{base} GAP_FILL previous"), true);
        assert_eq!(
            nums(&t, "mean"),
            [Some(1.5), Some(3.0), Some(3.0), Some(4.0)]
        );
        let t = run(&format!("{base} GAP_FILL linear"), true);
        assert_eq!(
            nums(&t, "mean"),
            [Some(1.5), Some(3.0), Some(3.5), Some(4.0)]
        );
        let t = run(&format!("{base} GAP_FILL 0"), true);
        assert_eq!(
            nums(&t, "mean"),
            [Some(1.5), Some(3.0), Some(0.0), Some(4.0)]
        );
    }

    #[test]
    fn gap_fill_agrees_across_paths_and_is_bounded() {
        // Host b has one sample per minute: stddev is null there, and those
        // windows had samples, so GAP_FILL leaves them null on both paths.
        let q = "SELECT stddev(value) FROM cpu WHERE host = 'b' AND time >= 0 AND time < 120000000000 WINDOW 1m GAP_FILL 0";
        let pushed = run(q, true);
        let local = run(&q.replace("WHERE", "WHERE value > -1e300 AND"), true);
        assert_eq!(pushed, local);
        assert_eq!(nums(&pushed, "stddev"), [None, None]);
        // Billions of windows are refused before any is made.
        let plan = cql::parse(
            "SELECT count(*) FROM cpu WHERE time >= -9000000000000000000 AND time < 9000000000000000000 WINDOW 1ns GAP_FILL",
        )
        .unwrap()
        .plan;
        assert!(matches!(
            run_select(&data(), &plan, 0, 1000, usize::MAX, &Budget::unbounded()),
            Err(QueryError::TooLarge(_))
        ));
        // An open range fills each group between its own first and last window.
        // Host a's samples over 2 are at 20 s and 70 s: windows 20..60 s, three
        // rows; host b's at 5 s and 65 s: windows 0..60 s, four rows.
        let t = run(
            "SELECT count(*) FROM cpu WHERE value > 2 GROUP BY host WINDOW 20s GAP_FILL",
            true,
        );
        let rows = |h: &str| {
            t.rows
                .iter()
                .filter(|r| r[1] == Cell::Text(h.into()))
                .count()
        };
        assert_eq!((rows("a"), rows("b")), (3, 4), "{t:?}");
    }

    #[test]
    fn joined_conditions_apply_after_the_join() {
        let t = run(
            "SELECT time, a.host, b.value FROM cpu AS a ASOF JOIN mem AS b WHERE b.host != 'a'",
            true,
        );
        // Rows joined to host a's mem samples are removed; host b's rows had no
        // partner and stay, with nulls.
        let hosts: Vec<&Cell> = t.rows.iter().map(|r| &r[1]).collect();
        assert_eq!(hosts, [&Cell::Text("b".into()), &Cell::Text("b".into())]);
    }

    #[test]
    fn align_moves_windows() {
        let q = "SELECT count(*) FROM cpu WHERE host = 'a' AND time >= 5000000000 AND time < 80000000000 WINDOW 20s";
        let epoch = run(q, true);
        assert_eq!(nums(&epoch, "time"), [Some(0.0), Some(20e9), Some(60e9)]);
        let start = run(&format!("{q} ALIGN start"), true);
        assert_eq!(nums(&start, "time"), [Some(5e9), Some(65e9)]);
        assert_eq!(nums(&start, "count"), [Some(2.0), Some(1.0)]);
    }

    #[test]
    fn asof_join_takes_the_latest_right_sample() {
        let t = run(
            "SELECT a.value, b.value, a.host FROM cpu AS a ASOF JOIN mem AS b TOLERANCE 30s ORDER BY time",
            true,
        );
        // host b has no mem series: nulls. host a at 70s: mem at 60s (10s old).
        // Host a's samples at 0, 10 and 20 s take mem's 0 s sample (at most 20 s
        // old), the one at 70 s takes mem's 60 s one; host b has no mem series.
        let matched: Vec<(Cell, Option<f64>)> = t
            .rows
            .iter()
            .map(|r| r[2].clone())
            .zip(nums(&t, "b.value"))
            .collect();
        let expected = |h: &str, v: Option<f64>| (Cell::Text(h.into()), v);
        assert_eq!(
            matched,
            [
                expected("a", Some(100.0)),
                expected("b", None),
                expected("a", Some(100.0)),
                expected("a", Some(100.0)),
                expected("b", None),
                expected("a", Some(200.0)),
            ]
        );
        let t = run(
            "SELECT a.value, b.value FROM cpu AS a ASOF JOIN mem AS b TOLERANCE 5s WHERE a.host = 'a'",
            true,
        );
        assert_eq!(nums(&t, "b.value"), [Some(100.0), None, None, None]);
    }
}

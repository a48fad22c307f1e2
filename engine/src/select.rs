//! The tabular plan SQL and CQL compile into (ADR 0004).
//!
//! PromQL's [`crate::plan::Plan`] answers with series evaluated at instants (a
//! lookback window, staleness). SQL and CQL answer with rows: raw samples, or
//! aggregates of every sample in a time window per group of label values. A
//! [`SelectPlan`] says which series and samples a query reads (a [`Predicate`]),
//! which columns it returns, how it windows, groups, fills gaps, orders and cuts.
//! Times are nanoseconds since the epoch, like storage's.
//!
//! The executor (the query actor) pushes a plan's aggregation down to the shards
//! as mergeable partials when [`SelectPlan::pushdown`] allows it, and otherwise
//! reads samples and aggregates them itself, with the same functions.

use std::fmt;

use chronicle_storage::model::METRIC_LABEL;
use chronicle_storage::{AggregateFunction, MatchOp, Matcher};

use crate::{EngineError, Result};

/// Which of the joined measurements a column or condition refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The measurement after FROM (the only one without a join).
    Left,
    /// The measurement after ASOF JOIN.
    Right,
}

/// A point in time as a query writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// Nanoseconds since the epoch.
    Absolute(i64),
    /// `now()` plus this many nanoseconds (negative: in the past).
    FromNow(i64),
}

impl Time {
    pub fn resolve(self, now: i64) -> i64 {
        match self {
            Time::Absolute(t) => t,
            Time::FromNow(d) => now.saturating_add(d),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    pub fn holds<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }

    /// The comparison with its operands swapped (`5 < x` is `x > 5`).
    pub fn flipped(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            other => other,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

/// A WHERE clause: conditions on labels, on the sample time and on the value.
#[derive(Debug, Clone)]
pub enum Predicate {
    True,
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
    /// A label matcher (absent labels are the empty string, as in PromQL).
    Label {
        side: Side,
        matcher: Matcher,
    },
    /// A condition on the sample's time.
    Time {
        cmp: Cmp,
        at: Time,
    },
    /// A condition on the sample's value.
    Value {
        side: Side,
        cmp: Cmp,
        value: f64,
    },
}

/// What a row's predicate and columns read.
pub trait RowView {
    fn time(&self) -> i64;
    /// `None` when the side has no sample (an ASOF JOIN without a match).
    fn value(&self, side: Side) -> Option<f64>;
    /// The label's value; absent labels (and a side without a match) are `None`.
    fn label(&self, side: Side, name: &str) -> Option<&str>;
}

impl Predicate {
    /// Conjunction that flattens and drops `True`.
    pub fn and(parts: Vec<Predicate>) -> Predicate {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Predicate::True => {}
                Predicate::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Predicate::True,
            1 => out.pop().expect("one element"),
            _ => Predicate::And(out),
        }
    }

    /// Whether a row satisfies the condition. A side without a sample makes its
    /// value comparisons false (SQL's NULL), its labels read as empty.
    pub fn eval(&self, row: &dyn RowView, now: i64) -> bool {
        match self {
            Predicate::True => true,
            Predicate::And(ps) => ps.iter().all(|p| p.eval(row, now)),
            Predicate::Or(ps) => ps.iter().any(|p| p.eval(row, now)),
            Predicate::Not(p) => !p.eval(row, now),
            Predicate::Label { side, matcher } => {
                matcher.matches(row.label(*side, &matcher.name).unwrap_or(""))
            }
            Predicate::Time { cmp, at } => cmp.holds(row.time(), at.resolve(now)),
            Predicate::Value { side, cmp, value } => {
                row.value(*side).is_some_and(|v| cmp.holds(v, *value))
            }
        }
    }

    fn conjuncts(&self) -> Vec<&Predicate> {
        match self {
            Predicate::True => Vec::new(),
            Predicate::And(ps) => ps.iter().collect(),
            other => vec![other],
        }
    }

    fn mentions(&self, f: &dyn Fn(&Predicate) -> bool) -> bool {
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => ps.iter().any(|p| p.mentions(f)),
            Predicate::Not(p) => p.mentions(f),
            other => f(other),
        }
    }

    /// The narrowest `[start, end)` the top-level time conditions allow.
    pub fn time_bounds(&self, now: i64) -> (i64, i64) {
        let (mut start, mut end) = (i64::MIN, i64::MAX);
        for c in self.conjuncts() {
            if let Predicate::Time { cmp, at } = c {
                let t = at.resolve(now);
                match cmp {
                    Cmp::Gt => start = start.max(t.saturating_add(1)),
                    Cmp::Ge => start = start.max(t),
                    Cmp::Lt => end = end.min(t),
                    Cmp::Le => end = end.min(t.saturating_add(1)),
                    Cmp::Eq => {
                        start = start.max(t);
                        end = end.min(t.saturating_add(1));
                    }
                    Cmp::Ne => {}
                }
            }
        }
        (start, end)
    }

    /// Label matcher sets (OR of ANDs) selecting a superset of the series of
    /// `side` that can satisfy the condition; conditions on time, values and the
    /// other side count as true. `exact` is false when the sets are a strict
    /// superset (too many alternatives to expand).
    pub fn series_selection(&self, side: Side) -> (Vec<Vec<Matcher>>, bool) {
        match dnf(&nnf(self, side, false)) {
            Some(sets) => (sets, true),
            None => (vec![Vec::new()], false),
        }
    }

    /// True when the selection of [`Self::series_selection`] and the window of
    /// [`Self::time_bounds`] are exactly the rows the condition keeps, so rows need
    /// no further check: every condition other than a top-level time bound is on
    /// the left side's labels, and time bounds are not `!=`.
    pub fn is_selection_only(&self) -> bool {
        let rest: Vec<&Predicate> = self
            .conjuncts()
            .into_iter()
            .filter(|c| !matches!(c, Predicate::Time { cmp, .. } if *cmp != Cmp::Ne))
            .collect();
        let labels_only = rest.iter().all(|c| {
            !c.mentions(&|p| {
                !matches!(
                    p,
                    Predicate::Label {
                        side: Side::Left,
                        ..
                    } | Predicate::True
                )
            })
        });
        labels_only && self.series_selection(Side::Left).1
    }
}

/// Most matcher sets a WHERE clause expands into before the executor gives up
/// on exact selection and filters rows instead.
const MAX_MATCHER_SETS: usize = 64;

/// Most matchers all the sets may hold together (a long AND of labels times
/// a few ORs would otherwise copy quadratically many).
const MAX_EXPANDED_MATCHERS: usize = 4096;

/// Negation normal form over one side's label conditions; anything else is true.
fn nnf(p: &Predicate, side: Side, negated: bool) -> Predicate {
    match p {
        Predicate::And(ps) | Predicate::Or(ps) => {
            let parts = ps.iter().map(|q| nnf(q, side, negated)).collect();
            let is_and = matches!(p, Predicate::And(_)) != negated;
            if is_and {
                Predicate::And(parts)
            } else {
                Predicate::Or(parts)
            }
        }
        Predicate::Not(q) => nnf(q, side, !negated),
        Predicate::Label { side: s, matcher } if *s == side => {
            if negated {
                Predicate::Label {
                    side,
                    matcher: negate(matcher),
                }
            } else {
                p.clone()
            }
        }
        _ => Predicate::True,
    }
}

fn negate(m: &Matcher) -> Matcher {
    let op = match m.op {
        MatchOp::Equal => MatchOp::NotEqual,
        MatchOp::NotEqual => MatchOp::Equal,
        MatchOp::Regex => MatchOp::NotRegex,
        MatchOp::NotRegex => MatchOp::Regex,
    };
    Matcher::new(op, &m.name, &m.value).expect("the regex compiled once already")
}

/// Disjunctive normal form of an NNF predicate; `None` past [`MAX_MATCHER_SETS`].
fn dnf(p: &Predicate) -> Option<Vec<Vec<Matcher>>> {
    match p {
        Predicate::True => Some(vec![Vec::new()]),
        Predicate::Label { matcher, .. } => Some(vec![vec![matcher.clone()]]),
        Predicate::Or(ps) => {
            let mut out = Vec::new();
            for q in ps {
                let sets = dnf(q)?;
                // A branch that selects everything makes the whole OR do so.
                if sets.iter().any(Vec::is_empty) {
                    return Some(vec![Vec::new()]);
                }
                out.extend(sets);
                if out.len() > MAX_MATCHER_SETS {
                    return None;
                }
            }
            Some(out)
        }
        Predicate::And(ps) => {
            let mut acc: Vec<Vec<Matcher>> = vec![Vec::new()];
            for q in ps {
                let sets = dnf(q)?;
                let mut next = Vec::with_capacity(acc.len() * sets.len());
                for a in &acc {
                    for s in &sets {
                        let mut both = a.clone();
                        both.extend(s.iter().cloned());
                        next.push(both);
                    }
                }
                let matchers: usize = next.iter().map(Vec::len).sum();
                if next.len() > MAX_MATCHER_SETS || matchers > MAX_EXPANDED_MATCHERS {
                    return None;
                }
                acc = next;
            }
            Some(acc)
        }
        // nnf leaves no Not, Time or Value nodes.
        _ => Some(vec![Vec::new()]),
    }
}

/// One output column.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// The sample's time, or the window's start when aggregating.
    Time,
    Value(Side),
    Label(Side, String),
    /// Every label of the side, one column each (`SELECT *`).
    AllLabels(Side),
    /// An aggregate of the side's values over each window and group.
    Aggregate(AggregateFunction, Side),
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputColumn {
    pub column: Column,
    /// The column's name in the answer.
    pub name: String,
    /// Computed only to sort by (ORDER BY a column not selected).
    pub hidden: bool,
}

/// Where windows start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// At multiples of the width since the epoch, shifted by this offset (ns).
    Epoch(i64),
    /// At the query's start time.
    Start,
    /// At the first sample the query reads.
    FirstSample,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Nanoseconds, positive.
    pub width: i64,
    pub align: Alignment,
}

/// How windows without samples are filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GapFill {
    /// A row whose aggregates are null.
    Null,
    /// The group's previous window's values.
    Previous,
    /// Interpolated between the neighbouring windows (null at the edges).
    Linear,
    /// A constant.
    Value(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    /// Index into [`SelectPlan::columns`].
    pub column: usize,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AsofJoin {
    pub metric: String,
    /// Each left row takes the right sample at or before its time, at most this
    /// old (ns); `None`: any age.
    pub tolerance: Option<i64>,
}

/// A SELECT, whichever language it was written in.
#[derive(Debug, Clone)]
pub struct SelectPlan {
    pub metric: String,
    pub join: Option<AsofJoin>,
    pub columns: Vec<OutputColumn>,
    pub filter: Predicate,
    pub window: Option<Window>,
    /// Left-side labels to group by.
    pub group_by: Vec<String>,
    pub gap_fill: Option<GapFill>,
    pub order_by: Vec<OrderKey>,
    pub limit: Option<usize>,
    pub offset: usize,
}

impl SelectPlan {
    /// A plan reading `metric` with no conditions, columns or clauses yet.
    pub fn new(metric: impl Into<String>) -> Self {
        Self {
            metric: metric.into(),
            join: None,
            columns: Vec::new(),
            filter: Predicate::True,
            window: None,
            group_by: Vec::new(),
            gap_fill: None,
            order_by: Vec::new(),
            limit: None,
            offset: 0,
        }
    }

    pub fn is_aggregate(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c.column, Column::Aggregate(..)))
    }

    /// The full condition on left-side series, the metric's name included.
    pub fn left_filter(&self) -> Predicate {
        Predicate::and(vec![
            Predicate::Label {
                side: Side::Left,
                matcher: Matcher::equal(METRIC_LABEL, &self.metric),
            },
            self.filter.clone(),
        ])
    }

    /// Checks the rules both languages share; parsers call it last.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(EngineError::Invalid(m));
        if self.columns.iter().all(|c| c.hidden) {
            return invalid("select at least one column".into());
        }
        let mentions_right = self.columns.iter().any(|c| match &c.column {
            Column::Value(s) | Column::Label(s, _) | Column::AllLabels(s) => *s == Side::Right,
            Column::Aggregate(_, s) => *s == Side::Right,
            Column::Time => false,
        }) || self.filter.mentions(&|p| {
            matches!(
                p,
                Predicate::Label {
                    side: Side::Right,
                    ..
                } | Predicate::Value {
                    side: Side::Right,
                    ..
                }
            )
        });
        if mentions_right && self.join.is_none() {
            return invalid(
                "a column or condition names a second measurement, but there is no ASOF JOIN"
                    .into(),
            );
        }
        let aggregating = self.is_aggregate();
        if aggregating {
            for c in &self.columns {
                match &c.column {
                    Column::Aggregate(f, _) => {
                        f.validate().map_err(|e| EngineError::Invalid(e.to_string()))?
                    }
                    Column::Time => {}
                    Column::Label(Side::Left, l) if self.group_by.contains(l) => {}
                    Column::Label(_, l) => {
                        return invalid(format!(
                            "column {l:?} must be in GROUP BY or inside an aggregate function"
                        ))
                    }
                    Column::Value(_) | Column::AllLabels(_) => {
                        return invalid(format!(
                            "column {:?} must be inside an aggregate function when the query aggregates",
                            c.name
                        ))
                    }
                }
            }
        } else {
            if self.window.is_some() || !self.group_by.is_empty() {
                return invalid(
                    "GROUP BY and WINDOW need an aggregate function in the select list".into(),
                );
            }
            if self.gap_fill.is_some() {
                return invalid("GAP_FILL needs windowed aggregates".into());
            }
        }
        if self.gap_fill.is_some() && self.window.is_none() {
            return invalid("GAP_FILL needs a window (GROUP BY time(...) or WINDOW)".into());
        }
        if let Some(w) = &self.window {
            if w.width <= 0 {
                return invalid("the window must be positive".into());
            }
        }
        if let Some(j) = &self.join {
            if aggregating && self.window.is_none() && self.group_by.is_empty() {
                // fine: one row over everything
            }
            if j.tolerance.is_some_and(|t| t < 0) {
                return invalid("TOLERANCE must not be negative".into());
            }
        }
        for k in &self.order_by {
            if k.column >= self.columns.len() {
                return invalid("ORDER BY names a column that does not exist".into());
            }
        }
        Ok(())
    }

    /// The label matcher sets that select the left side's series: the WHERE
    /// clause's label conditions expanded, or, when that expansion gives up, the
    /// metric alone (rows are then filtered one by one).
    pub fn left_selection(&self) -> (Vec<Vec<Matcher>>, bool) {
        let (sets, exact) = self.left_filter().series_selection(Side::Left);
        if exact {
            (sets, true)
        } else {
            (
                vec![vec![Matcher::equal(METRIC_LABEL, &self.metric)]],
                false,
            )
        }
    }

    /// The plan column a 1-based ORDER BY position names. Refused when `*`
    /// comes first: its width (one column per label) is known only when the
    /// data is read.
    pub fn column_at_position(&self, position: usize) -> Result<usize> {
        let visible: Vec<usize> = (0..self.columns.len())
            .filter(|i| !self.columns[*i].hidden)
            .collect();
        let index = position
            .checked_sub(1)
            .and_then(|i| visible.get(i).copied())
            .ok_or_else(|| {
                EngineError::Invalid(format!("ORDER BY {position}: no such column position"))
            })?;
        if self.columns[..index]
            .iter()
            .any(|c| matches!(c.column, Column::AllLabels(_)))
        {
            return Err(EngineError::Invalid(format!(
                "ORDER BY {position}: positions after * are ambiguous; order by a column name"
            )));
        }
        Ok(index)
    }

    /// Whether the shards can compute every aggregate themselves (mergeable
    /// partials): no join, conditions only on labels (one matcher set) and
    /// top-level time bounds, windows aligned to the epoch, every column an
    /// aggregate, the window start or a group label.
    pub fn pushdown(&self) -> bool {
        let (sets, exact) = self.left_filter().series_selection(Side::Left);
        self.is_aggregate()
            && self.join.is_none()
            && exact
            // Several sets may select one series twice; partials would count it twice.
            && sets.len() == 1
            && self.filter.is_selection_only()
            && self.window.is_none_or(|w| w.align == Alignment::Epoch(0))
            && self
                .columns
                .iter()
                .all(|c| !matches!(c.column, Column::Value(_) | Column::AllLabels(_)))
    }
}

impl SelectPlan {
    /// Appends a column, named by `alias` or after what it computes; a name
    /// already taken gets `_2`, `_3`, ...
    pub fn add_column(&mut self, column: Column, alias: Option<String>) {
        let base = alias.unwrap_or_else(|| match &column {
            Column::Time => "time".into(),
            Column::Value(Side::Left) => "value".into(),
            Column::Value(Side::Right) => "joined_value".into(),
            Column::Label(_, l) => l.clone(),
            Column::AllLabels(_) => "*".into(),
            Column::Aggregate(f, _) => match f {
                AggregateFunction::Percentile(p) if *p == 50.0 => "median".into(),
                AggregateFunction::Percentile(_) => "percentile".into(),
                other => other.name(),
            },
        });
        let mut name = base.clone();
        let mut n = 1;
        while self.columns.iter().any(|c| c.name == name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.columns.push(OutputColumn {
            column,
            name,
            hidden: false,
        });
    }

    /// With windows, the window start comes first, as in InfluxQL; grouped
    /// labels that were not selected follow it, so each row says its group.
    pub fn add_implicit_columns(&mut self) {
        if !self.is_aggregate() {
            return;
        }
        let mut front = Vec::new();
        if self.window.is_some() && !self.columns.iter().any(|c| c.column == Column::Time) {
            front.push(OutputColumn {
                column: Column::Time,
                name: "time".into(),
                hidden: false,
            });
        }
        for l in &self.group_by {
            let col = Column::Label(Side::Left, l.clone());
            if !self.columns.iter().any(|c| c.column == col) {
                front.push(OutputColumn {
                    column: col,
                    name: l.clone(),
                    hidden: false,
                });
            }
        }
        if !front.is_empty() {
            front.append(&mut self.columns);
            self.columns = front;
        }
    }

    /// The index of a column to sort by, adding it hidden when not selected.
    pub fn sort_column(&mut self, column: Column) -> usize {
        if let Some(i) = self.columns.iter().position(|c| c.column == column) {
            return i;
        }
        let name = format!("#sort{}", self.columns.len());
        self.columns.push(OutputColumn {
            column,
            name,
            hidden: true,
        });
        self.columns.len() - 1
    }
}

/// An aggregate function by the name queries call it.
pub fn aggregate_by_name(name: &str, param: Option<f64>) -> Result<AggregateFunction> {
    let f = match (name.to_ascii_lowercase().as_str(), param) {
        ("count", None) => AggregateFunction::Count,
        ("sum", None) => AggregateFunction::Sum,
        ("mean" | "avg", None) => AggregateFunction::Mean,
        ("min", None) => AggregateFunction::Min,
        ("max", None) => AggregateFunction::Max,
        ("first", None) => AggregateFunction::First,
        ("last", None) => AggregateFunction::Last,
        ("stddev", None) => AggregateFunction::Stddev,
        ("median", None) => AggregateFunction::Percentile(50.0),
        ("rate", None) => AggregateFunction::Rate,
        ("percentile", Some(p)) => AggregateFunction::Percentile(p),
        ("percentile", None) => {
            return Err(EngineError::Invalid(
                "percentile takes the value and a percentile, e.g. percentile(value, 99)".into(),
            ))
        }
        (n, Some(_)) if AGGREGATES.contains(&n) => {
            return Err(EngineError::Invalid(format!("{n} takes one argument")))
        }
        (n, _) => {
            return Err(EngineError::Invalid(format!(
                "unknown function {n:?} (aggregates: {})",
                AGGREGATES.join(", ")
            )))
        }
    };
    f.validate()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    Ok(f)
}

/// The aggregate functions both languages know.
pub const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "mean",
    "avg",
    "min",
    "max",
    "first",
    "last",
    "stddev",
    "median",
    "percentile",
    "rate",
];

/// An RFC 3339 time (`2024-01-01T00:00:00Z`, fractions allowed) in nanoseconds.
pub fn parse_time_literal(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

fn side_prefix(side: Side) -> &'static str {
    match side {
        Side::Left => "",
        Side::Right => "joined.",
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Column::Time => write!(f, "time"),
            Column::Value(s) => write!(f, "{}value", side_prefix(*s)),
            Column::Label(s, l) => write!(f, "{}{l}", side_prefix(*s)),
            Column::AllLabels(s) => write!(f, "{}*labels", side_prefix(*s)),
            Column::Aggregate(func, s) => write!(f, "{}({}value)", func.name(), side_prefix(*s)),
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, ps: &[Predicate], op: &str| {
            write!(f, "(")?;
            for (i, p) in ps.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "{p}")?;
            }
            write!(f, ")")
        };
        match self {
            Predicate::True => write!(f, "true"),
            Predicate::And(ps) => join(f, ps, "AND"),
            Predicate::Or(ps) => join(f, ps, "OR"),
            Predicate::Not(p) => write!(f, "NOT {p}"),
            Predicate::Label { side, matcher } => {
                let op = match matcher.op {
                    MatchOp::Equal => "=",
                    MatchOp::NotEqual => "!=",
                    MatchOp::Regex => "=~",
                    MatchOp::NotRegex => "!~",
                };
                write!(
                    f,
                    "{}{}{op}{:?}",
                    side_prefix(*side),
                    matcher.name,
                    matcher.value
                )
            }
            Predicate::Time { cmp, at } => match at {
                Time::Absolute(t) => write!(f, "time {} {t}", cmp.symbol()),
                Time::FromNow(d) => write!(f, "time {} now(){d:+}ns", cmp.symbol()),
            },
            Predicate::Value { side, cmp, value } => {
                write!(f, "{}value {} {value}", side_prefix(*side), cmp.symbol())
            }
        }
    }
}

/// Plan text for EXPLAIN: one step per line, in the order they run.
pub fn explain(plan: &SelectPlan, now: i64) -> String {
    let mut out = String::new();
    let (start, end) = plan.filter.time_bounds(now);
    let bound = |t: i64| match t {
        i64::MIN => "-inf".to_string(),
        i64::MAX => "+inf".to_string(),
        t => t.to_string(),
    };
    let (sets, exact) = plan.left_selection();
    out.push_str(&format!(
        "Scan {} series matching {} over [{}, {})\n",
        plan.metric,
        sets.iter()
            .map(|set| format!(
                "{{{}}}",
                set.iter()
                    .map(|m| Predicate::Label {
                        side: Side::Left,
                        matcher: m.clone()
                    }
                    .to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .collect::<Vec<_>>()
            .join(" OR "),
        bound(start),
        bound(end)
    ));
    if let Some(j) = &plan.join {
        out.push_str(&format!(
            "AsofJoin {} on shared labels, tolerance {}\n",
            j.metric,
            j.tolerance
                .map_or("unbounded".to_string(), |t| format!("{t}ns"))
        ));
    }
    if !plan.filter.is_selection_only() || !exact {
        out.push_str(&format!("Filter rows {}\n", plan.filter));
    }
    if plan.is_aggregate() {
        let aggs: Vec<String> = plan
            .columns
            .iter()
            .filter(|c| matches!(c.column, Column::Aggregate(..)))
            .map(|c| c.column.to_string())
            .collect();
        let window = plan.window.map_or("whole range".to_string(), |w| {
            format!("windows of {}ns aligned {:?}", w.width, w.align)
        });
        out.push_str(&format!(
            "Aggregate {} by [{}] over {}{}\n",
            aggs.join(", "),
            plan.group_by.join(", "),
            window,
            if plan.pushdown() {
                " (partials computed in each shard, merged here)"
            } else {
                " (computed here from the samples read)"
            }
        ));
        if let Some(g) = plan.gap_fill {
            out.push_str(&format!("GapFill {g:?}\n"));
        }
    }
    if !plan.order_by.is_empty() {
        let keys: Vec<String> = plan
            .order_by
            .iter()
            .map(|k| {
                format!(
                    "{} {}",
                    plan.columns[k.column].name,
                    if k.descending { "DESC" } else { "ASC" }
                )
            })
            .collect();
        out.push_str(&format!("Sort {}\n", keys.join(", ")));
    }
    if plan.offset > 0 || plan.limit.is_some() {
        out.push_str(&format!(
            "Limit {} offset {}\n",
            plan.limit.map_or("none".to_string(), |l| l.to_string()),
            plan.offset
        ));
    }
    let visible: Vec<&str> = plan
        .columns
        .iter()
        .filter(|c| !c.hidden)
        .map(|c| c.name.as_str())
        .collect();
    out.push_str(&format!("Project {}\n", visible.join(", ")));
    out
}

/// A regex (for a matcher) equal to SQL LIKE's pattern: `%` any run, `_` one
/// character, `\` escapes the next one.
pub fn like_to_regex(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push_str(&regex::escape(&n.to_string()));
                }
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out
}

/// A regex matching exactly one of `values`.
pub fn any_of_regex(values: &[String]) -> String {
    values
        .iter()
        .map(|v| regex::escape(v))
        .collect::<Vec<_>>()
        .join("|")
}

/// Parses a duration as queries write it: `5m`, `1h30m`, `250ms`, `1.5h`, `2 days`.
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(d) = humantime::parse_duration(t) {
        return i64::try_from(d.as_nanos()).ok();
    }
    // One fractional number and one unit (`1.5h`), which humantime does not take.
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    if !unit.trim().chars().all(char::is_alphabetic) {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let unit_ns = humantime::parse_duration(&format!("1{}", unit.trim()))
        .ok()?
        .as_nanos() as f64;
    let ns = n * unit_ns;
    (ns.is_finite() && ns < i64::MAX as f64).then_some(ns as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, op: MatchOp, value: &str) -> Predicate {
        Predicate::Label {
            side: Side::Left,
            matcher: Matcher::new(op, name, value).unwrap(),
        }
    }

    #[test]
    fn or_of_labels_expands_into_matcher_sets() {
        let p = Predicate::And(vec![
            Predicate::Or(vec![
                label("host", MatchOp::Equal, "a"),
                label("dc", MatchOp::Equal, "x"),
            ]),
            Predicate::Not(Box::new(label("env", MatchOp::Equal, "prod"))),
        ]);
        let (sets, exact) = p.series_selection(Side::Left);
        assert!(exact);
        assert_eq!(sets.len(), 2);
        assert!(sets.iter().all(|s| s
            .iter()
            .any(|m| m.name == "env" && m.op == MatchOp::NotEqual)));
        assert!(p.is_selection_only());
    }

    #[test]
    fn value_and_time_conditions_need_row_filtering() {
        let p = Predicate::And(vec![
            label("host", MatchOp::Equal, "a"),
            Predicate::Time {
                cmp: Cmp::Ge,
                at: Time::Absolute(10),
            },
        ]);
        assert!(p.is_selection_only());
        assert_eq!(p.time_bounds(0), (10, i64::MAX));
        let q = Predicate::Or(vec![
            label("host", MatchOp::Equal, "a"),
            Predicate::Value {
                side: Side::Left,
                cmp: Cmp::Gt,
                value: 1.0,
            },
        ]);
        assert!(!q.is_selection_only());
        // The value branch may select any series.
        let (sets, _) = q.series_selection(Side::Left);
        assert!(sets.len() == 1 && sets[0].is_empty());
    }

    #[test]
    fn too_many_alternatives_fall_back_to_filtering() {
        let ors: Vec<Predicate> = (0..9)
            .map(|i| {
                Predicate::Or(vec![
                    label(&format!("a{i}"), MatchOp::Equal, "x"),
                    label(&format!("b{i}"), MatchOp::Equal, "y"),
                ])
            })
            .collect();
        let p = Predicate::And(ors);
        let (sets, exact) = p.series_selection(Side::Left);
        assert!(!exact);
        assert!(sets.len() == 1 && sets[0].is_empty());
        assert!(!p.is_selection_only());
    }

    #[test]
    fn like_and_in_become_anchored_regexes() {
        let m = Matcher::new(MatchOp::Regex, "h", like_to_regex("us-%_1")).unwrap();
        assert!(m.matches("us-east1"));
        assert!(!m.matches("eu-east1"));
        assert!(!m.matches("us-1"));
        let m = Matcher::new(MatchOp::Regex, "h", like_to_regex("a.b%")).unwrap();
        assert!(m.matches("a.bc"));
        assert!(!m.matches("axbc"));
        let m = Matcher::new(
            MatchOp::Regex,
            "r",
            any_of_regex(&["us".into(), "e.u".into()]),
        )
        .unwrap();
        assert!(m.matches("us") && m.matches("e.u") && !m.matches("eau") && !m.matches("usa"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ns("5m"), Some(300_000_000_000));
        assert_eq!(parse_duration_ns("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration_ns("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration_ns("250ms"), Some(250_000_000));
        assert_eq!(parse_duration_ns("soon"), None);
    }
}

//! The logical plan every query language compiles into.
//!
//! It is PromQL's data model made explicit: instant vectors (one value per series
//! per evaluation step), range vectors (a window of samples per series per step),
//! scalars and strings. SQL and CQL lower their SELECT/WHERE/GROUP BY into the
//! same nodes (a selector, range functions over windows, aggregations by labels,
//! arithmetic).

use chronicle_storage::Matcher;

use crate::annotations::Pos;

/// Where a selector or subquery is pinned in time (`@`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum At {
    /// A fixed time, milliseconds.
    Time(i64),
    /// The query's start.
    Start,
    /// The query's end.
    End,
}

/// Series selection: label matchers (alternatives are OR-ed), shifted and pinned.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Each inner list is AND-ed; a series matching any list is selected.
    pub matcher_sets: Vec<Vec<Matcher>>,
    /// Look this far into the past (milliseconds; negative looks ahead).
    pub offset: i64,
    pub at: Option<At>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Quantile,
    CountValues,
    Group,
    LimitK,
    LimitRatio,
}

/// Which labels an aggregation keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Grouping {
    /// `by (labels)`; empty means one group.
    By(Vec<String>),
    /// `without (labels)` (the metric name is dropped too).
    Without(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Gt | BinaryOp::Lt | BinaryOp::Ge | BinaryOp::Le
        )
    }

    pub fn is_set(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Unless)
    }
}

/// How two instant vectors pair their elements.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorMatching {
    /// `on (labels)` when true, else `ignoring (labels)`.
    pub on: bool,
    pub labels: Vec<String>,
    pub cardinality: Cardinality,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cardinality {
    OneToOne,
    /// `group_left (extra labels from the right)`.
    ManyToOne(Vec<String>),
    /// `group_right (extra labels from the left)`.
    OneToMany(Vec<String>),
    ManyToMany,
}

/// The value type a node produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Scalar,
    String,
    Vector,
    Matrix,
}

#[derive(Debug, Clone)]
pub enum Plan {
    Number(f64),
    String(String),
    /// An instant vector: the latest sample within the lookback window per series.
    Vector(Selector),
    /// A range vector: the samples in `(t - range, t]` per series.
    Matrix {
        selector: Selector,
        range: i64,
    },
    /// An inner instant-vector expression evaluated every `step` over `range`.
    Subquery {
        expr: Box<Plan>,
        range: i64,
        /// None: the query's step (or the default resolution).
        step: Option<i64>,
        offset: i64,
        at: Option<At>,
    },
    Call {
        function: String,
        args: Vec<Plan>,
        /// Where the call and each argument start in the query text, for
        /// annotations (`None`/empty when the plan was not made from text).
        pos: Option<Pos>,
        arg_pos: Vec<Pos>,
    },
    Aggregate {
        op: AggregateOp,
        expr: Box<Plan>,
        param: Option<Box<Plan>>,
        grouping: Grouping,
        /// Where the parameter starts in the query text.
        param_pos: Option<Pos>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Plan>,
        rhs: Box<Plan>,
        /// Only when both sides are vectors.
        matching: Option<VectorMatching>,
        /// Comparisons return 0/1 instead of filtering.
        return_bool: bool,
    },
    Negate(Box<Plan>),
}

impl Plan {
    pub fn kind(&self) -> ValueKind {
        match self {
            Plan::Number(_) => ValueKind::Scalar,
            Plan::String(_) => ValueKind::String,
            Plan::Vector(_) | Plan::Aggregate { .. } => ValueKind::Vector,
            Plan::Matrix { .. } | Plan::Subquery { .. } => ValueKind::Matrix,
            Plan::Call { function, args, .. } => crate::functions::return_kind(function, args),
            Plan::Binary { lhs, rhs, .. } => {
                if lhs.kind() == ValueKind::Scalar && rhs.kind() == ValueKind::Scalar {
                    ValueKind::Scalar
                } else {
                    ValueKind::Vector
                }
            }
            Plan::Negate(e) => e.kind(),
        }
    }
}

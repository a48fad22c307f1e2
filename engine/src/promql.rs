//! PromQL → plan, parsed with the promql-parser crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chronicle_storage::{MatchOp, Matcher};
use promql_parser::label::{MatchOp as PromMatchOp, Matcher as PromMatcher};
use promql_parser::parser::{
    self, AtModifier, BinModifier, Expr, LabelModifier, Offset, VectorMatchCardinality,
    VectorSelector,
};

use crate::plan::{
    AggregateOp, At, BinaryOp, Cardinality, Grouping, Plan, Selector, VectorMatching,
};
use crate::value::METRIC_NAME;
use crate::{EngineError, Result};

/// Parses PromQL text into a plan.
pub fn parse(query: &str) -> Result<Plan> {
    let expr = parser::parse(query).map_err(EngineError::Parse)?;
    lower(&expr)
}

/// Plans of recently parsed queries. Dashboards send the same expressions
/// again and again with new time ranges, and the LR parser costs tens of
/// microseconds, a tenth of a small query; cloning a plan costs far less.
static PLANS: std::sync::LazyLock<quick_cache::sync::Cache<String, Plan>> =
    std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(1024));

/// [`parse`], answered from a cache of recent plans when it can be.
pub fn parse_cached(query: &str) -> Result<Plan> {
    if let Some(plan) = PLANS.get(query) {
        return Ok(plan);
    }
    let plan = parse(query)?;
    PLANS.insert(query.to_string(), plan.clone());
    Ok(plan)
}

fn ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
    }
}

fn at(a: &Option<AtModifier>) -> Option<At> {
    a.as_ref().map(|a| match a {
        AtModifier::Start => At::Start,
        AtModifier::End => At::End,
        AtModifier::At(t) => At::Time(system_time_ms(*t)),
    })
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => ms(&d),
        Err(e) => -ms(&e.duration()),
    }
}

fn matcher(m: &PromMatcher) -> Result<Matcher> {
    let op = match m.op {
        PromMatchOp::Equal => MatchOp::Equal,
        PromMatchOp::NotEqual => MatchOp::NotEqual,
        PromMatchOp::Re(_) => MatchOp::Regex,
        PromMatchOp::NotRe(_) => MatchOp::NotRegex,
    };
    Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| EngineError::Parse(e.to_string()))
}

fn selector(vs: &VectorSelector) -> Result<Selector> {
    let name_matcher = vs
        .name
        .as_ref()
        .map(|n| Matcher::equal(METRIC_NAME, n.clone()));
    let mut base: Vec<Matcher> = vs
        .matchers
        .matchers
        .iter()
        .map(matcher)
        .collect::<Result<_>>()?;
    let mut matcher_sets = Vec::new();
    if vs.matchers.or_matchers.is_empty() {
        base.extend(name_matcher.clone());
        matcher_sets.push(base);
    } else {
        for alternative in &vs.matchers.or_matchers {
            let mut set: Vec<Matcher> = alternative.iter().map(matcher).collect::<Result<_>>()?;
            set.extend(base.iter().cloned());
            set.extend(name_matcher.clone());
            matcher_sets.push(set);
        }
    }
    Ok(Selector {
        matcher_sets,
        offset: offset_ms(&vs.offset),
        at: at(&vs.at),
    })
}

fn labels(l: &promql_parser::label::Labels) -> Vec<String> {
    l.labels.iter().map(|s| s.to_string()).collect()
}

fn lower(expr: &Expr) -> Result<Plan> {
    Ok(match expr {
        Expr::NumberLiteral(n) => Plan::Number(n.val),
        Expr::StringLiteral(s) => Plan::String(s.val.clone()),
        Expr::Paren(p) => lower(&p.expr)?,
        Expr::Unary(u) => Plan::Negate(Box::new(lower(&u.expr)?)),
        Expr::VectorSelector(vs) => Plan::Vector(selector(vs)?),
        Expr::MatrixSelector(m) => Plan::Matrix {
            selector: selector(&m.vs)?,
            range: ms(&m.range),
        },
        Expr::Subquery(s) => Plan::Subquery {
            expr: Box::new(lower(&s.expr)?),
            range: ms(&s.range),
            step: s.step.as_ref().map(ms),
            offset: offset_ms(&s.offset),
            at: at(&s.at),
        },
        Expr::Call(c) => Plan::Call {
            function: c.func.name.to_string(),
            args: c
                .args
                .args
                .iter()
                .map(|a| lower(a))
                .collect::<Result<_>>()?,
        },
        Expr::Aggregate(a) => {
            let op = match a.op.to_string().as_str() {
                "sum" => AggregateOp::Sum,
                "avg" => AggregateOp::Avg,
                "min" => AggregateOp::Min,
                "max" => AggregateOp::Max,
                "count" => AggregateOp::Count,
                "stddev" => AggregateOp::Stddev,
                "stdvar" => AggregateOp::Stdvar,
                "topk" => AggregateOp::Topk,
                "bottomk" => AggregateOp::Bottomk,
                "quantile" => AggregateOp::Quantile,
                "count_values" => AggregateOp::CountValues,
                "group" => AggregateOp::Group,
                "limitk" => AggregateOp::LimitK,
                "limit_ratio" => AggregateOp::LimitRatio,
                other => return Err(EngineError::Invalid(format!("unknown aggregation {other}"))),
            };
            let grouping = match &a.modifier {
                None => Grouping::By(Vec::new()),
                Some(LabelModifier::Include(l)) => Grouping::By(labels(l)),
                Some(LabelModifier::Exclude(l)) => Grouping::Without(labels(l)),
            };
            Plan::Aggregate {
                op,
                expr: Box::new(lower(&a.expr)?),
                param: a
                    .param
                    .as_ref()
                    .map(|p| lower(p).map(Box::new))
                    .transpose()?,
                grouping,
            }
        }
        Expr::Binary(b) => {
            let op = match b.op.to_string().as_str() {
                "+" => BinaryOp::Add,
                "-" => BinaryOp::Sub,
                "*" => BinaryOp::Mul,
                "/" => BinaryOp::Div,
                "%" => BinaryOp::Mod,
                "^" => BinaryOp::Pow,
                "atan2" => BinaryOp::Atan2,
                "==" => BinaryOp::Eq,
                "!=" => BinaryOp::Ne,
                ">" => BinaryOp::Gt,
                "<" => BinaryOp::Lt,
                ">=" => BinaryOp::Ge,
                "<=" => BinaryOp::Le,
                "and" => BinaryOp::And,
                "or" => BinaryOp::Or,
                "unless" => BinaryOp::Unless,
                other => return Err(EngineError::Invalid(format!("unknown operator {other}"))),
            };
            let lhs = lower(&b.lhs)?;
            let rhs = lower(&b.rhs)?;
            let both_vectors = lhs.kind() == crate::plan::ValueKind::Vector
                && rhs.kind() == crate::plan::ValueKind::Vector;
            let matching = both_vectors.then(|| vector_matching(op, b.modifier.as_ref()));
            Plan::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
                matching,
                return_bool: b.modifier.as_ref().is_some_and(|m| m.return_bool),
            }
        }
        Expr::Extension(_) => {
            return Err(EngineError::Invalid(
                "extension expressions are not supported".into(),
            ))
        }
    })
}

fn vector_matching(op: BinaryOp, modifier: Option<&BinModifier>) -> VectorMatching {
    let (on, labels_list) = match modifier.and_then(|m| m.matching.as_ref()) {
        Some(LabelModifier::Include(l)) => (true, labels(l)),
        Some(LabelModifier::Exclude(l)) => (false, labels(l)),
        None => (false, Vec::new()),
    };
    let cardinality = if op.is_set() {
        Cardinality::ManyToMany
    } else {
        match modifier.map(|m| &m.card) {
            Some(VectorMatchCardinality::ManyToOne(l)) => Cardinality::ManyToOne(labels(l)),
            Some(VectorMatchCardinality::OneToMany(l)) => Cardinality::OneToMany(labels(l)),
            Some(VectorMatchCardinality::ManyToMany) => Cardinality::ManyToMany,
            _ => Cardinality::OneToOne,
        }
    };
    VectorMatching {
        on,
        labels: labels_list,
        cardinality,
    }
}

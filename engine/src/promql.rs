//! PromQL → plan, parsed with the promql-parser crate.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chronicle_storage::{MatchOp, Matcher};
use promql_parser::label::{MatchOp as PromMatchOp, Matcher as PromMatcher};
use promql_parser::parser::{
    self, AtModifier, BinModifier, Expr, LabelModifier, Offset, VectorMatchCardinality,
    VectorSelector,
};

use crate::annotations::Pos;
use crate::plan::{
    AggregateOp, At, BinaryOp, Cardinality, Grouping, Plan, Selector, VectorMatching,
};
use crate::value::METRIC_NAME;
use crate::{EngineError, Result};

/// Parses PromQL text into a plan.
pub fn parse(query: &str) -> Result<Plan> {
    let tokens = tokens(query);
    reject_unrepresentable_durations(query, &tokens)?;
    // promql-parser panics on some inputs (found by fuzzing; see
    // `reject_unrepresentable_durations`). A client's query must never take a
    // thread down, so any other such panic becomes a parse error too.
    let expr = std::panic::catch_unwind(|| parser::parse(query))
        .map_err(|_| EngineError::Parse("the PromQL parser failed on this query".into()))?
        .map_err(|e| EngineError::Parse(prometheus_wording(e)))?;
    let mut positions = Positions::scan(query, &tokens, &expr);
    lower(&expr, &mut positions)
}

/// promql-parser words an unknown function as Prometheus does but quotes its
/// name in single quotes; clients match Prometheus's double quotes.
fn prometheus_wording(message: String) -> String {
    match message
        .strip_prefix("unknown function with name '")
        .and_then(|rest| rest.strip_suffix('\''))
    {
        Some(name) => format!("unknown function with name {name:?}"),
        None => message,
    }
}

/// promql-parser 0.11 turns a duration written as a number of seconds
/// (`x[1e400]`, `x offset 1e30`) into a `Duration` with `from_secs_f64`, which
/// panics when the number does not fit. Such numbers (inside `[...]` or after
/// `offset`) are refused here first, with the error Prometheus would give.
fn reject_unrepresentable_durations(query: &str, tokens: &[Token]) -> Result<()> {
    use promql_parser::parser::token::{T_LEFT_BRACKET, T_NUMBER, T_OFFSET, T_RIGHT_BRACKET};
    let (mut in_brackets, mut after_offset) = (false, false);
    for t in tokens {
        let (id, text) = (t.id, &query[t.start..t.end]);
        if id == T_NUMBER && (in_brackets || after_offset) {
            let seconds = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16)
                    .map(|v| v as f64)
                    .unwrap_or(f64::INFINITY),
                None => text.parse::<f64>().unwrap_or(f64::INFINITY),
            };
            // `Duration::from_secs_f64` takes up to 2^64 seconds, exclusive.
            if seconds.is_nan() || seconds.abs() >= 1.8e19 {
                return Err(EngineError::Parse(format!(
                    "duration {text} is out of range"
                )));
            }
        }
        match id {
            T_LEFT_BRACKET => in_brackets = true,
            T_RIGHT_BRACKET => in_brackets = false,
            _ => {}
        }
        after_offset = id == T_OFFSET || (after_offset && text == "-");
    }
    Ok(())
}

/// One token of promql-parser's own lexer: its id and byte span.
struct Token {
    id: u16,
    start: usize,
    end: usize,
}

/// The query's tokens, lexed once for the checks and positions below (none
/// when it does not lex; the parser then reports the error).
fn tokens(query: &str) -> Vec<Token> {
    use lrpar::{Lexeme, Lexer};
    let Ok(lexer) = parser::lex::lexer(query) else {
        return Vec::new();
    };
    lexer
        .iter()
        .filter_map(|l| l.ok())
        .map(|l| Token {
            id: l.tok_id(),
            start: l.span().start(),
            end: l.span().end(),
        })
        .collect()
}

/// Where calls and aggregation parameters start in the query text, in source
/// order. promql-parser's AST carries no positions, so they come from its
/// lexer's tokens; lowering visits calls and aggregations in source order and
/// takes them one by one.
#[derive(Default)]
struct Positions {
    /// (call, each argument) per function call.
    calls: VecDeque<(Pos, Vec<Pos>)>,
    /// The parameter's start per aggregation (None without a parameter).
    aggregates: VecDeque<Option<Pos>>,
}

impl Positions {
    fn scan(query: &str, tokens: &[Token], expr: &Expr) -> Self {
        use promql_parser::parser::token::{
            T_AGGREGATORS_END, T_AGGREGATORS_START, T_BY, T_COMMA, T_IDENTIFIER, T_LEFT_BRACE,
            T_LEFT_PAREN, T_RIGHT_BRACE, T_RIGHT_PAREN, T_WITHOUT,
        };
        let kind = |i: usize| tokens.get(i).map(|t| t.id);
        let pos = |i: usize| tokens.get(i).map(|t| Pos::at(query, t.start));
        let mut out = Self::default();
        for i in 0..tokens.len() {
            let id = tokens[i].id;
            if id == T_IDENTIFIER && kind(i + 1) == Some(T_LEFT_PAREN) {
                // Each argument starts after the `(` or after a comma at depth one.
                // Commas inside label braces separate matchers, not arguments.
                let mut args = Vec::new();
                let (mut depth, mut braces) = (0usize, 0usize);
                let mut j = i + 1;
                while let Some(k) = kind(j) {
                    match k {
                        T_LEFT_PAREN => depth += 1,
                        T_RIGHT_PAREN => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                break;
                            }
                        }
                        T_LEFT_BRACE => braces += 1,
                        T_RIGHT_BRACE => braces = braces.saturating_sub(1),
                        _ => {}
                    }
                    let opens_arg =
                        depth == 1 && braces == 0 && (k == T_LEFT_PAREN || k == T_COMMA);
                    if opens_arg && kind(j + 1) != Some(T_RIGHT_PAREN) {
                        args.extend(pos(j + 1));
                    }
                    j += 1;
                }
                out.calls.push_back((Pos::at(query, tokens[i].start), args));
            } else if id > T_AGGREGATORS_START && id < T_AGGREGATORS_END {
                // `op by (a, b) (param, expr)` or `op (param, expr) by (a, b)`.
                let mut j = i + 1;
                if matches!(kind(j), Some(T_BY) | Some(T_WITHOUT)) {
                    while j < tokens.len() && kind(j) != Some(T_RIGHT_PAREN) {
                        j += 1;
                    }
                    j += 1;
                }
                out.aggregates.push_back(pos(j + 1));
            }
        }
        // Trust the positions only if they line up with the tree one to one.
        let (mut calls, mut aggregates) = (0, 0);
        count_nodes(expr, &mut calls, &mut aggregates);
        if calls != out.calls.len() || aggregates != out.aggregates.len() {
            return Self::default();
        }
        out
    }
}

fn count_nodes(expr: &Expr, calls: &mut usize, aggregates: &mut usize) {
    match expr {
        Expr::Call(c) => {
            *calls += 1;
            for a in &c.args.args {
                count_nodes(a, calls, aggregates);
            }
        }
        Expr::Aggregate(a) => {
            *aggregates += 1;
            if let Some(p) = &a.param {
                count_nodes(p, calls, aggregates);
            }
            count_nodes(&a.expr, calls, aggregates);
        }
        Expr::Paren(p) => count_nodes(&p.expr, calls, aggregates),
        Expr::Unary(u) => count_nodes(&u.expr, calls, aggregates),
        Expr::Subquery(s) => count_nodes(&s.expr, calls, aggregates),
        Expr::Binary(b) => {
            count_nodes(&b.lhs, calls, aggregates);
            count_nodes(&b.rhs, calls, aggregates);
        }
        _ => {}
    }
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

fn lower(expr: &Expr, positions: &mut Positions) -> Result<Plan> {
    Ok(match expr {
        Expr::NumberLiteral(n) => Plan::Number(n.val),
        Expr::StringLiteral(s) => Plan::String(s.val.clone()),
        Expr::Paren(p) => lower(&p.expr, positions)?,
        Expr::Unary(u) => Plan::Negate(Box::new(lower(&u.expr, positions)?)),
        Expr::VectorSelector(vs) => Plan::Vector(selector(vs)?),
        Expr::MatrixSelector(m) => Plan::Matrix {
            selector: selector(&m.vs)?,
            range: ms(&m.range),
        },
        Expr::Subquery(s) => Plan::Subquery {
            expr: Box::new(lower(&s.expr, positions)?),
            range: ms(&s.range),
            step: s.step.as_ref().map(ms),
            offset: offset_ms(&s.offset),
            at: at(&s.at),
        },
        Expr::Call(c) => {
            let (pos, arg_pos) = match positions.calls.pop_front() {
                Some((call, args)) => (Some(call), args),
                None => (None, Vec::new()),
            };
            Plan::Call {
                function: c.func.name.to_string(),
                args: c
                    .args
                    .args
                    .iter()
                    .map(|a| lower(a, positions))
                    .collect::<Result<_>>()?,
                pos,
                arg_pos,
            }
        }
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
            let param_pos = positions.aggregates.pop_front().flatten();
            // The parameter comes first in the text: lower it first.
            let param = a
                .param
                .as_ref()
                .map(|p| lower(p, positions).map(Box::new))
                .transpose()?;
            Plan::Aggregate {
                op,
                expr: Box::new(lower(&a.expr, positions)?),
                param,
                grouping,
                param_pos,
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
            let lhs = lower(&b.lhs, positions)?;
            let rhs = lower(&b.rhs, positions)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_functions_are_named_as_prometheus_names_them() {
        for (query, name) in [
            ("foo(up)", "foo"),
            ("sum(rate(up[5m])) / bar_baz()", "bar_baz"),
            ("holt_winters(x[5m], 0.5, 0.5)", "holt_winters"),
        ] {
            let e = parse(query).unwrap_err();
            let message = format!("unknown function with name \"{name}\"");
            assert_eq!(e, EngineError::Parse(message.clone()), "{query}");
            assert_eq!(e.to_string(), format!("parse error: {message}"));
        }
        // A real syntax error inside an unknown call is still that error.
        assert!(parse("foo(up +)").is_err());
    }
}

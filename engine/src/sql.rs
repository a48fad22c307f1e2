//! SQL, parsed by the sqlparser crate and lowered into a [`SelectPlan`].
//!
//! `SELECT <aggregates or columns> FROM <metric> [WHERE ...] [GROUP BY time(<dur>
//! [, <offset>]), <labels>] [ORDER BY ...] [LIMIT n] [OFFSET n]` (or MySQL's
//! `LIMIT offset, n`), plus `EXPLAIN`.
//! Columns: `time`, `value`, any label by name, `*`; aggregates over `value`:
//! count (also `count(*)`), sum, mean/avg, min, max, first, last, stddev, median,
//! percentile(value, p), rate. Durations are written `5m` or `INTERVAL '5 minutes'`.
//! docs/sql.md has the grammar and examples.

use sqlparser::ast::{
    self, BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    InTarget, LimitClause, ObjectNamePart, OrderByKind, OrderBySort, SelectItem, SetExpr, Spanned,
    Statement, TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::Dialect;
use sqlparser::parser::{Parser, ParserError};

use chronicle_storage::{MatchOp, Matcher};

use crate::select::{
    aggregate_by_name, any_of_regex, like_to_regex, parse_duration_ns, parse_time_literal,
    Alignment, Cmp, Column, OrderKey, Predicate, SelectPlan, Side, Time, Window,
};
use crate::{EngineError, Result};

/// A parsed SQL statement.
#[derive(Debug, Clone)]
pub struct SqlQuery {
    pub plan: SelectPlan,
    /// `EXPLAIN SELECT ...`: show the plan instead of running it.
    pub explain: bool,
}

/// The generic dialect, with identifiers that may start with digits so that
/// durations (`5m`, `1h30m`) read as one token, as in InfluxQL.
#[derive(Debug)]
struct ChronicleDialect;

impl Dialect for ChronicleDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch == '_'
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_alphanumeric() || ch == '_' || ch == ':'
    }

    fn supports_numeric_prefix(&self) -> bool {
        true
    }

    /// MySQL's `LIMIT offset, n`, which docs/sql.md offers.
    fn supports_limit_comma(&self) -> bool {
        true
    }
}

/// Most operators (AND, OR, NOT, comparisons, + and -) a query may hold. The
/// AST nests once per operator in a chain, and walking or dropping it recurses:
/// the bound keeps any query's depth far from the stack's end.
const MAX_OPERATORS: usize = 1000;

/// Parses one SQL statement.
pub fn parse(text: &str) -> Result<SqlQuery> {
    use sqlparser::keywords::Keyword;
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&ChronicleDialect, text)
        .tokenize()
        .map_err(|e| syntax_error(ParserError::TokenizerError(e.to_string())))?;
    let operators = tokens
        .iter()
        .filter(|t| match t {
            Token::Word(w) => matches!(w.keyword, Keyword::AND | Keyword::OR | Keyword::NOT),
            Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Plus
            | Token::Minus => true,
            _ => false,
        })
        .count();
    if operators > MAX_OPERATORS {
        return Err(EngineError::Invalid(format!(
            "the query has {operators} operators; at most {MAX_OPERATORS} are accepted \
             (use IN (...) or a regex for long lists of alternatives)"
        )));
    }
    let statements = Parser::parse_sql(&ChronicleDialect, text).map_err(syntax_error)?;
    let [statement] = <[Statement; 1]>::try_from(statements).map_err(|v| {
        EngineError::Invalid(format!("give exactly one statement (got {})", v.len()))
    })?;
    let (statement, explain) = match statement {
        Statement::Explain { statement, .. } => (*statement, true),
        other => (other, false),
    };
    let Statement::Query(query) = statement else {
        return Err(EngineError::Invalid(
            "only SELECT statements are supported".into(),
        ));
    };
    Ok(SqlQuery {
        plan: lower_query(&query)?,
        explain,
    })
}

/// sqlparser's message ends "at Line: L, Column: C"; keep both as numbers.
fn syntax_error(e: ParserError) -> EngineError {
    let text = match &e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "the query nests too deeply".into(),
    };
    let position = text.rfind(" at Line: ").and_then(|i| {
        let rest = &text[i + " at Line: ".len()..];
        let (line, col) = rest.split_once(", Column: ")?;
        let col: String = col.chars().take_while(char::is_ascii_digit).collect();
        Some((
            i,
            line.trim().parse::<u64>().ok()?,
            col.parse::<u64>().ok()?,
        ))
    });
    match position {
        Some((i, line, column)) => EngineError::Syntax {
            line,
            column,
            message: text[..i].to_string(),
        },
        None => EngineError::Parse(text),
    }
}

/// An error about a part of the query, with where it starts.
fn at(node: &impl Spanned, message: impl Into<String>) -> EngineError {
    let start = node.span().start;
    if start.line == 0 {
        return EngineError::Invalid(message.into());
    }
    EngineError::Syntax {
        line: start.line,
        column: start.column,
        message: message.into(),
    }
}

fn lower_query(query: &ast::Query) -> Result<SelectPlan> {
    if query.with.is_some() || query.fetch.is_some() || !query.locks.is_empty() {
        return Err(at(
            query,
            "WITH, FETCH and locking clauses are not supported",
        ));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(at(
            query,
            "only a plain SELECT is supported (no UNION, VALUES or subqueries)",
        ));
    };
    if select.distinct.is_some() || select.top.is_some() || select.into.is_some() {
        return Err(at(
            select.as_ref(),
            "DISTINCT, TOP and INTO are not supported",
        ));
    }
    if select.having.is_some() || select.qualify.is_some() {
        return Err(at(select.as_ref(), "HAVING and QUALIFY are not supported"));
    }
    let [from] = select.from.as_slice() else {
        return Err(at(
            select.as_ref(),
            "FROM names exactly one metric (CQL's ASOF JOIN joins two)",
        ));
    };
    if !from.joins.is_empty() {
        return Err(at(
            &from.joins[0],
            "SQL joins are not supported; CQL has ASOF JOIN",
        ));
    }
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return Err(at(&from.relation, "FROM names a metric"));
    };
    let [ObjectNamePart::Identifier(metric)] = name.0.as_slice() else {
        return Err(at(name, "FROM names one metric (quote names with dots)"));
    };
    let names = Names {
        metric: metric.value.clone(),
        alias: alias.as_ref().map(|a| a.name.value.clone()),
    };
    let mut plan = SelectPlan::new(&metric.value);

    if let Some(selection) = &select.selection {
        plan.filter = names.predicate(selection)?;
    }

    match &select.group_by {
        GroupByExpr::All(_) => return Err(at(select.as_ref(), "GROUP BY ALL is not supported")),
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() {
                return Err(at(select.as_ref(), "GROUP BY modifiers are not supported"));
            }
            for e in exprs {
                names.group_item(e, &mut plan)?;
            }
        }
    }

    for item in &select.projection {
        match item {
            SelectItem::Wildcard(_) => {
                for column in [
                    Column::Time,
                    Column::AllLabels(Side::Left),
                    Column::Value(Side::Left),
                ] {
                    plan.add_column(column, None);
                }
            }
            SelectItem::UnnamedExpr(e) => {
                let column = names.column(e)?;
                plan.add_column(column, None);
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                let column = names.column(expr)?;
                plan.add_column(column, Some(alias.value.clone()));
            }
            other => return Err(at(other, "unsupported select item")),
        }
    }
    plan.add_implicit_columns();

    if let Some(order_by) = &query.order_by {
        let OrderByKind::Expressions(keys) = &order_by.kind else {
            return Err(at(query, "ORDER BY ALL is not supported"));
        };
        for key in keys {
            let descending = match &key.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => {
                    return Err(at(&key.expr, "ORDER BY ... USING is not supported"))
                }
            };
            let column = names.order_target(&key.expr, &mut plan)?;
            plan.order_by.push(OrderKey { column, descending });
        }
    }

    match &query.limit_clause {
        None => {}
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(at(query, "LIMIT BY is not supported"));
            }
            if let Some(l) = limit {
                plan.limit = Some(count(l, "LIMIT")?);
            }
            if let Some(o) = offset {
                plan.offset = count(&o.value, "OFFSET")?;
            }
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            plan.offset = count(offset, "OFFSET")?;
            plan.limit = Some(count(limit, "LIMIT")?);
        }
    }
    plan.validate()?;
    Ok(plan)
}

fn count(e: &Expr, what: &str) -> Result<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<usize>()
                .map_err(|_| at(e, format!("{what} takes a whole number, not {n}"))),
            _ => Err(at(e, format!("{what} takes a whole number"))),
        },
        _ => Err(at(e, format!("{what} takes a whole number"))),
    }
}

/// The names a query may use for its measurement.
struct Names {
    metric: String,
    alias: Option<String>,
}

/// A literal on the other side of a comparison.
enum Literal {
    Text(String),
    Number(f64, String),
    /// A time expression (`now() - 1h`), which only `time` compares with.
    Time,
}

impl Names {
    /// `x` or `cpu.x` / `alias.x` as a column name.
    fn column_name(&self, e: &Expr) -> Option<String> {
        match e {
            Expr::Identifier(id) => Some(id.value.clone()),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, col] if q.value == self.metric || Some(&q.value) == self.alias.as_ref() => {
                    Some(col.value.clone())
                }
                _ => None,
            },
            Expr::Nested(inner) => self.column_name(inner),
            _ => None,
        }
    }

    fn column(&self, e: &Expr) -> Result<Column> {
        if let Expr::Function(f) = e {
            return self.aggregate(e, f);
        }
        match self.column_name(e).as_deref() {
            Some("time") => Ok(Column::Time),
            Some("value") => Ok(Column::Value(Side::Left)),
            Some(label) => Ok(Column::Label(Side::Left, label.to_string())),
            None => Err(at(
                e,
                "select time, value, a label, * or an aggregate of value",
            )),
        }
    }

    fn aggregate(&self, e: &Expr, f: &ast::Function) -> Result<Column> {
        let name = function_name(f).ok_or_else(|| at(e, "unknown function"))?;
        let args = function_args(e, f)?;
        let (target, param) = match args.as_slice() {
            [a] => (*a, None),
            [a, p] => (*a, Some(number(p)?)),
            _ => {
                return Err(at(
                    e,
                    format!("{name}() takes value (and a parameter for percentile)"),
                ))
            }
        };
        match target {
            FunctionArgExpr::Wildcard if name == "count" => {}
            FunctionArgExpr::Expr(x) if self.column_name(x).as_deref() == Some("value") => {}
            _ => {
                return Err(at(
                    e,
                    format!("{name}() aggregates value (write {name}(value))"),
                ))
            }
        }
        let function = aggregate_by_name(&name, param).map_err(|m| at(e, m.to_string()))?;
        Ok(Column::Aggregate(function, Side::Left))
    }

    fn group_item(&self, e: &Expr, plan: &mut SelectPlan) -> Result<()> {
        if let Expr::Function(f) = e {
            if function_name(f).as_deref() == Some("time") {
                if plan.window.is_some() {
                    return Err(at(e, "GROUP BY has one time(...)"));
                }
                let args = function_args(e, f)?;
                let width = match args.first() {
                    Some(FunctionArgExpr::Expr(d)) => duration(d)?,
                    _ => return Err(at(e, "time() takes a window such as 5m")),
                };
                let offset = match args.get(1) {
                    None => 0,
                    Some(FunctionArgExpr::Expr(d)) => duration(d)?,
                    Some(_) => return Err(at(e, "time()'s offset is a duration")),
                };
                if width <= 0 {
                    return Err(at(e, "the window must be positive"));
                }
                plan.window = Some(Window {
                    width,
                    align: Alignment::Epoch(offset.rem_euclid(width)),
                });
                return Ok(());
            }
        }
        match self.column_name(e) {
            Some(l) if l != "time" && l != "value" => {
                if !plan.group_by.contains(&l) {
                    plan.group_by.push(l);
                }
                Ok(())
            }
            _ => Err(at(e, "GROUP BY takes time(<window>) and label names")),
        }
    }

    fn order_target(&self, e: &Expr, plan: &mut SelectPlan) -> Result<usize> {
        if let Expr::Value(v) = e {
            if let Value::Number(n, _) = &v.value {
                let position = n
                    .parse::<usize>()
                    .map_err(|_| at(e, format!("ORDER BY {n}: no such column position")))?;
                return plan
                    .column_at_position(position)
                    .map_err(|m| at(e, m.to_string()));
            }
        }
        if let Some(name) = self.column_name(e) {
            if let Some(i) = plan.columns.iter().position(|c| c.name == name) {
                return Ok(i);
            }
        }
        let column = self.column(e)?;
        Ok(plan.sort_column(column))
    }

    fn predicate(&self, e: &Expr) -> Result<Predicate> {
        match e {
            Expr::Nested(inner) => self.predicate(inner),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(Predicate::Not(Box::new(self.predicate(expr)?))),
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => Ok(Predicate::and(vec![
                    self.predicate(left)?,
                    self.predicate(right)?,
                ])),
                BinaryOperator::Or => Ok(Predicate::Or(vec![
                    self.predicate(left)?,
                    self.predicate(right)?,
                ])),
                BinaryOperator::PGRegexMatch
                | BinaryOperator::PGRegexNotMatch
                | BinaryOperator::PGRegexIMatch
                | BinaryOperator::PGRegexNotIMatch => {
                    let negated = matches!(
                        op,
                        BinaryOperator::PGRegexNotMatch | BinaryOperator::PGRegexNotIMatch
                    );
                    let insensitive = matches!(
                        op,
                        BinaryOperator::PGRegexIMatch | BinaryOperator::PGRegexNotIMatch
                    );
                    self.regex(e, left, right, negated, insensitive)
                }
                _ => {
                    let cmp = match op {
                        BinaryOperator::Eq => Cmp::Eq,
                        BinaryOperator::NotEq => Cmp::Ne,
                        BinaryOperator::Lt => Cmp::Lt,
                        BinaryOperator::LtEq => Cmp::Le,
                        BinaryOperator::Gt => Cmp::Gt,
                        BinaryOperator::GtEq => Cmp::Ge,
                        _ => return Err(at(e, format!("unsupported operator {op} in WHERE"))),
                    };
                    self.comparison(e, left, cmp, right)
                }
            },
            Expr::In {
                expr,
                target,
                negated,
                global: _,
            } => {
                let InTarget::List(list) = target else {
                    return Err(at(e, "IN takes a list of label values"));
                };
                let label = self.label_name(expr)?;
                let values = list
                    .iter()
                    .map(|v| match literal(v)? {
                        Literal::Text(s) | Literal::Number(_, s) => Ok(s),
                        Literal::Time => Err(at(v, "IN lists label values")),
                    })
                    .collect::<Result<Vec<String>>>()?;
                let op = if *negated {
                    MatchOp::NotRegex
                } else {
                    MatchOp::Regex
                };
                label_predicate(e, op, &label, any_of_regex(&values))
            }
            Expr::Like {
                negated,
                expr,
                pattern,
                escape_char,
                any,
            }
            | Expr::ILike {
                negated,
                expr,
                pattern,
                escape_char,
                any,
            } => {
                if escape_char.is_some() || *any {
                    return Err(at(e, "LIKE ... ESCAPE and LIKE ANY are not supported"));
                }
                let label = self.label_name(expr)?;
                let Literal::Text(p) = literal(pattern)? else {
                    return Err(at(pattern.as_ref(), "LIKE takes a quoted pattern"));
                };
                let mut re = like_to_regex(&p);
                if matches!(e, Expr::ILike { .. }) {
                    re = format!("(?i:{re})");
                }
                let op = if *negated {
                    MatchOp::NotRegex
                } else {
                    MatchOp::Regex
                };
                label_predicate(e, op, &label, re)
            }
            Expr::RLike {
                negated,
                expr,
                pattern,
                ..
            } => self.regex(e, expr, pattern, *negated, false),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let both = Predicate::and(vec![
                    self.comparison(e, expr, Cmp::Ge, low)?,
                    self.comparison(e, expr, Cmp::Le, high)?,
                ]);
                Ok(if *negated {
                    Predicate::Not(Box::new(both))
                } else {
                    both
                })
            }
            _ => Err(at(
                e,
                "WHERE takes comparisons of time, value and labels joined by AND, OR, NOT",
            )),
        }
    }

    fn label_name(&self, e: &Expr) -> Result<String> {
        match self.column_name(e) {
            Some(n) if n != "time" && n != "value" => Ok(n),
            _ => Err(at(e, "expected a label name")),
        }
    }

    /// `label ~ 're'`: SQL regexes match anywhere in the value (PostgreSQL's rule),
    /// so the anchored matcher gets `.*` on both sides.
    fn regex(
        &self,
        e: &Expr,
        left: &Expr,
        right: &Expr,
        negated: bool,
        insensitive: bool,
    ) -> Result<Predicate> {
        let label = self.label_name(left)?;
        let Literal::Text(re) = literal(right)? else {
            return Err(at(right, "a regex is a quoted string"));
        };
        let flags = if insensitive { "(?i)" } else { "" };
        let op = if negated {
            MatchOp::NotRegex
        } else {
            MatchOp::Regex
        };
        label_predicate(e, op, &label, format!("{flags}.*(?:{re}).*"))
    }

    fn comparison(&self, e: &Expr, left: &Expr, cmp: Cmp, right: &Expr) -> Result<Predicate> {
        // Columns may stand on either side (`5 < value`).
        let (column, cmp, other) = match (self.column_name(left), self.column_name(right)) {
            (Some(c), _) if !is_duration_ident(left) => (c, cmp, right),
            (_, Some(c)) if !is_duration_ident(right) => (c, cmp.flipped(), left),
            _ => {
                return Err(at(
                    e,
                    "compare a column (time, value or a label) with a literal",
                ))
            }
        };
        match column.as_str() {
            "time" => Ok(Predicate::Time {
                cmp,
                at: time_value(other)?,
            }),
            "value" => match literal(other)? {
                Literal::Number(v, _) => Ok(Predicate::Value {
                    side: Side::Left,
                    cmp,
                    value: v,
                }),
                _ => Err(at(other, "value compares with a number")),
            },
            label => {
                let text = match literal(other)? {
                    Literal::Text(s) | Literal::Number(_, s) => s,
                    Literal::Time => return Err(at(other, "labels compare with text")),
                };
                let op = match cmp {
                    Cmp::Eq => MatchOp::Equal,
                    Cmp::Ne => MatchOp::NotEqual,
                    _ => {
                        return Err(at(
                            e,
                            "labels compare with =, !=, IN, LIKE or a regex (~, !~, REGEXP)",
                        ))
                    }
                };
                label_predicate(e, op, label, text)
            }
        }
    }
}

fn label_predicate(e: &Expr, op: MatchOp, label: &str, value: String) -> Result<Predicate> {
    let matcher = Matcher::new(op, label, value).map_err(|m| at(e, m.to_string()))?;
    Ok(Predicate::Label {
        side: Side::Left,
        matcher,
    })
}

fn is_duration_ident(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(id) if id.quote_style.is_none()
        && id.value.starts_with(|c: char| c.is_ascii_digit()))
}

fn function_name(f: &ast::Function) -> Option<String> {
    match f.name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(id.value.to_ascii_lowercase()),
        _ => None,
    }
}

fn function_args<'a>(e: &Expr, f: &'a ast::Function) -> Result<Vec<&'a FunctionArgExpr>> {
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() {
        return Err(at(e, "FILTER, OVER and WITHIN GROUP are not supported"));
    }
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::Subquery(_) => Err(at(e, "subqueries are not supported")),
        FunctionArguments::List(list) => {
            if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                return Err(at(
                    e,
                    "DISTINCT and clauses inside a call are not supported",
                ));
            }
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(x) => Ok(x),
                    _ => Err(at(e, "named arguments are not supported")),
                })
                .collect()
        }
    }
}

fn number(arg: &FunctionArgExpr) -> Result<f64> {
    match arg {
        FunctionArgExpr::Expr(e) => match literal(e)? {
            Literal::Number(v, _) => Ok(v),
            _ => Err(at(e, "expected a number")),
        },
        _ => Err(EngineError::Invalid("expected a number".into())),
    }
}

fn literal(e: &Expr) -> Result<Literal> {
    match e {
        Expr::Nested(inner) => literal(inner),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Ok(Literal::Text(s.clone()))
            }
            Value::Number(n, _) => n
                .parse::<f64>()
                .map(|v| Literal::Number(v, n.clone()))
                .map_err(|_| at(e, format!("bad number {n}"))),
            Value::Boolean(b) => Ok(Literal::Number(f64::from(u8::from(*b)), b.to_string())),
            _ => Err(at(e, "unsupported literal")),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Literal::Number(v, s) => Ok(Literal::Number(-v, format!("-{s}"))),
            _ => Err(at(e, "only numbers negate")),
        },
        Expr::Function(_) | Expr::BinaryOp { .. } => time_value(e).map(|_| Literal::Time),
        _ => Err(at(e, "expected a literal")),
    }
}

/// `now()`, `now() - 1h`, `now() - INTERVAL '1 hour'`, an RFC 3339 string or
/// epoch nanoseconds.
fn time_value(e: &Expr) -> Result<Time> {
    match e {
        Expr::Nested(inner) => time_value(inner),
        Expr::Function(f) if function_name(f).as_deref() == Some("now") => {
            let args = function_args(e, f)?;
            if !args.is_empty() {
                return Err(at(e, "now() takes no arguments"));
            }
            Ok(Time::FromNow(0))
        }
        Expr::BinaryOp { left, op, right } => {
            let sign = match op {
                BinaryOperator::Plus => 1,
                BinaryOperator::Minus => -1,
                _ => return Err(at(e, "times add or subtract a duration")),
            };
            let d = duration(right)?.saturating_mul(sign);
            Ok(match time_value(left)? {
                Time::FromNow(x) => Time::FromNow(x.saturating_add(d)),
                Time::Absolute(x) => Time::Absolute(x.saturating_add(d)),
            })
        }
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<i64>()
                .map(Time::Absolute)
                .map_err(|_| at(e, "epoch times are whole nanoseconds")),
            Value::SingleQuotedString(s) => parse_time_literal(s)
                .map(Time::Absolute)
                .ok_or_else(|| at(e, format!("{s:?} is not an RFC 3339 time"))),
            _ => Err(at(e, "expected a time")),
        },
        _ => Err(at(
            e,
            "expected a time: now(), now() - 1h, an RFC 3339 string or epoch nanoseconds",
        )),
    }
}

/// `5m`, `'5m'`, `INTERVAL '5 minutes'`, `INTERVAL '5' MINUTE`.
fn duration(e: &Expr) -> Result<i64> {
    let bad = || {
        at(
            e,
            "expected a duration such as 5m, 1h30m or INTERVAL '5 minutes'",
        )
    };
    match e {
        Expr::Identifier(id) => parse_duration_ns(&id.value).ok_or_else(bad),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => parse_duration_ns(s).ok_or_else(bad),
            _ => Err(bad()),
        },
        Expr::Interval(i) => {
            let text = match i.value.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            };
            let text = match &i.leading_field {
                Some(unit) => format!("{text} {}", unit.to_string().to_ascii_lowercase()),
                None => text,
            };
            parse_duration_ns(&text).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::GapFill;
    use chronicle_storage::AggregateFunction;

    fn plan(text: &str) -> SelectPlan {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).plan
    }

    #[test]
    fn spec_examples_parse() {
        let p = plan("SELECT * FROM cpu WHERE host = 'server1'");
        assert_eq!(p.metric, "cpu");
        assert!(!p.is_aggregate());
        let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["time", "*", "value"]);

        let p = plan(
            "SELECT mean(value) FROM cpu WHERE host != 'a' AND region IN ('us','eu') \
             GROUP BY time(5m), host LIMIT 1000",
        );
        assert_eq!(p.window.unwrap().width, 300_000_000_000);
        assert_eq!(p.group_by, ["host"]);
        assert_eq!(p.limit, Some(1000));
        let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["time", "host", "mean"]);
        assert!(p.pushdown());
        assert!(p.filter.is_selection_only());
    }

    #[test]
    fn time_conditions_resolve() {
        let p = plan(
            "SELECT count(*) FROM m WHERE time >= now() - INTERVAL '1 hour' AND time < now() - 5m",
        );
        assert_eq!(
            p.filter.time_bounds(10_000_000_000_000),
            (
                10_000_000_000_000 - 3_600_000_000_000,
                10_000_000_000_000 - 300_000_000_000
            )
        );
        let p = plan("SELECT value FROM m WHERE time > '2024-01-01T00:00:00Z' AND time <= 1704067260000000000");
        assert_eq!(
            p.filter.time_bounds(0),
            (1_704_067_200_000_000_001, 1_704_067_260_000_000_001)
        );
        let p = plan("SELECT value FROM m WHERE time BETWEEN 10 AND 20");
        assert_eq!(p.filter.time_bounds(0), (10, 21));
    }

    #[test]
    fn several_aggregates_and_order() {
        let p = plan(
            "SELECT max(value) AS peak, percentile(value, 99), median(value) FROM m \
             GROUP BY time(1m, 15s), dc ORDER BY peak DESC, dc OFFSET 5",
        );
        assert_eq!(p.offset, 5);
        assert_eq!(p.window.unwrap().align, Alignment::Epoch(15_000_000_000));
        let aggs: Vec<&Column> = p.columns.iter().map(|c| &c.column).collect();
        assert!(aggs.contains(&&Column::Aggregate(
            AggregateFunction::Percentile(99.0),
            Side::Left
        )));
        assert!(aggs.contains(&&Column::Aggregate(
            AggregateFunction::Percentile(50.0),
            Side::Left
        )));
        assert_eq!(p.order_by.len(), 2);
        assert!(p.order_by[0].descending && !p.order_by[1].descending);
        assert_eq!(p.columns[p.order_by[0].column].name, "peak");
        assert!(p.gap_fill.is_none() || p.gap_fill == Some(GapFill::Null));
        // Epoch alignment with an offset is computed here, not in the shards.
        assert!(!p.pushdown());
    }

    #[test]
    fn or_not_like_and_regex() {
        let p = plan(
            "SELECT value FROM m WHERE (host = 'a' OR NOT dc LIKE 'eu-%') AND host ~ 'x$' AND value > 3",
        );
        assert!(!p.filter.is_selection_only());
        let p = plan("SELECT value FROM m WHERE host = 'a' OR dc <> 'b'");
        let (sets, exact) = p.left_filter().series_selection(Side::Left);
        assert!(exact);
        assert_eq!(sets.len(), 2);
    }

    #[test]
    fn errors_point_at_line_and_column() {
        match parse("SELECT mean(value)\nFROM cpu\nWHERE host = = 'a'") {
            Err(EngineError::Syntax { line, column, .. }) => assert_eq!((line, column), (3, 14)),
            other => panic!("{other:?}"),
        }
        match parse("SELECT mean(value) FROM cpu WHERE host > 'a'") {
            Err(EngineError::Syntax {
                line,
                column,
                message,
            }) => {
                assert_eq!((line, column), (1, 35), "{message}");
                assert!(message.contains("labels compare with"));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "SELECT value, mean(value) FROM cpu",
            "SELECT host, mean(value) FROM cpu",
            "SELECT value FROM cpu GROUP BY host",
            "SELECT mean(value) FROM a, b",
            "DELETE FROM cpu",
            "SELECT percentile(value, 101) FROM cpu",
            "SELECT median(host) FROM cpu",
            "SELECT value FROM cpu ORDER BY 3",
            "SELECT value FROM cpu LIMIT -1",
            "SELECT value FROM cpu WHERE time > 'yesterday'",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn long_conditions_are_bounded() {
        let ors = vec!["host = 'a'"; 2_000].join(" OR ");
        assert!(parse(&format!("SELECT value FROM m WHERE {ors}")).is_err());
        let ors = vec!["host = 'a'"; 300].join(" OR ");
        assert!(parse(&format!("SELECT value FROM m WHERE {ors}")).is_ok());
        // Fractions count once per unit.
        assert_eq!(
            crate::select::parse_duration_ns("1.5h30m"),
            Some(7_200_000_000_000)
        );
        assert_eq!(
            crate::select::parse_duration_ns("2.5m"),
            Some(150_000_000_000)
        );
        // Several label alternatives: the executor cannot push partials down.
        assert!(!plan("SELECT sum(value) FROM m WHERE host = 'a' OR host = 'b'").pushdown());
    }

    #[test]
    fn limit_comma_is_offset_then_count() {
        // MySQL's `LIMIT offset, n`, which docs/sql.md offers.
        let comma = plan("SELECT value FROM m ORDER BY time LIMIT 3, 7");
        let keywords = plan("SELECT value FROM m ORDER BY time LIMIT 7 OFFSET 3");
        assert_eq!((comma.offset, comma.limit), (3, Some(7)));
        assert_eq!(format!("{comma:?}"), format!("{keywords:?}"));
        assert!(parse("SELECT value FROM m LIMIT -1, 2").is_err());
        assert!(parse("SELECT value FROM m LIMIT 1, 2 OFFSET 3").is_err());
    }

    #[test]
    fn explain_prefix() {
        let q = parse("EXPLAIN SELECT sum(value) FROM m GROUP BY time(10s)").unwrap();
        assert!(q.explain);
        let text = crate::select::explain(&q.plan, 0);
        assert!(text.contains("partials computed in each shard"), "{text}");
    }
}

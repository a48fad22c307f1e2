//! CQL, the Chronicle Query Language, lowered into a [`SelectPlan`].
//!
//! ```text
//! [EXPLAIN] SELECT col {, col} FROM m [AS a]
//!   [ASOF JOIN m2 [AS b] [TOLERANCE dur]]
//!   [WHERE expr] [LAST dur] [GROUP BY expr {, expr}] [WINDOW dur]
//!   [GAP_FILL [NULL | PREVIOUS | LINEAR | ZERO | number]]
//!   [ALIGN [START | FIRST | EPOCH | dur]]
//!   [ORDER BY expr [ASC | DESC] {, ...}] [LIMIT n] [OFFSET n]
//! ```
//!
//! docs/cql.md gives each clause's meaning with examples a test runs. The
//! grammar is CQL's own (no SQL parser reads `LAST 1h` or `GAP_FILL`), so this
//! module holds a small lexer and a recursive-descent parser; every error
//! names the line and column where it was found.

use chronicle_storage::{MatchOp, Matcher};

use crate::select::{
    aggregate_by_name, parse_duration_ns, parse_time_literal, Alignment, AsofJoin, Cmp, Column,
    GapFill, OrderKey, Predicate, SelectPlan, Side, Time, Window,
};
use crate::{EngineError, Result};

/// A parsed CQL query.
#[derive(Debug, Clone)]
pub struct CqlQuery {
    pub plan: SelectPlan,
    /// `EXPLAIN SELECT ...`.
    pub explain: bool,
}

/// Parses and checks one CQL query.
pub fn parse(text: &str) -> Result<CqlQuery> {
    let tokens = lex(text)?;
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let ast = p.query()?;
    p.expect_end()?;
    Ok(CqlQuery {
        explain: ast.explain,
        plan: lower(ast)?,
    })
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word: keyword or identifier (keywords are matched case-insensitively).
    Word(String),
    /// A double-quoted identifier (never a keyword).
    Quoted(String),
    Str(String),
    Number(f64, String),
    /// A number with a unit: `5m`, `1h30m`, `250ms`; nanoseconds.
    Duration(i64, String),
    Sym(&'static str),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: u64,
    column: u64,
}

fn syntax(line: u64, column: u64, message: impl Into<String>) -> EngineError {
    EngineError::Syntax {
        line,
        column,
        message: message.into(),
    }
}

const SYMBOLS: &[&str] = &[
    "<=", ">=", "!=", "<>", "=~", "!~", "(", ")", ",", ".", "*", "=", "<", ">", "+", "-", ";",
];

fn lex(text: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1u64, 1u64);
    let advance = |i: &mut usize, line: &mut u64, col: &mut u64, n: usize| {
        for _ in 0..n {
            if chars[*i] == '\n' {
                *line += 1;
                *col = 1;
            } else {
                *col += 1;
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let (l, cl) = (line, col);
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut col, 1);
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                advance(&mut i, &mut line, &mut col, 1);
            }
            continue;
        }
        if c == '\'' || c == '"' {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return Err(syntax(l, cl, "unterminated string")),
                    Some(&q) if q == c => {
                        // A doubled quote stands for itself.
                        if chars.get(j + 1) == Some(&c) {
                            s.push(c);
                            j += 2;
                        } else {
                            j += 1;
                            break;
                        }
                    }
                    Some(&other) => {
                        s.push(other);
                        j += 1;
                    }
                }
            }
            let n = j - i;
            advance(&mut i, &mut line, &mut col, n);
            let tok = if c == '\'' {
                Tok::Str(s)
            } else {
                Tok::Quoted(s)
            };
            out.push(Token {
                tok,
                line: l,
                column: cl,
            });
            continue;
        }
        if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                // An exponent's sign belongs to the number (`1e-3`).
                j += 1;
                if (chars[j - 1] == 'e' || chars[j - 1] == 'E')
                    && matches!(chars.get(j), Some('+' | '-'))
                    && chars[i..j - 1]
                        .iter()
                        .all(|c| c.is_ascii_digit() || *c == '.')
                {
                    j += 1;
                }
            }
            let word: String = chars[i..j].iter().collect();
            let tok = if let Ok(v) = word.parse::<f64>() {
                Tok::Number(v, word.clone())
            } else if let Some(d) = parse_duration_ns(&word) {
                Tok::Duration(d, word.clone())
            } else {
                return Err(syntax(
                    l,
                    cl,
                    format!("{word:?} is neither a number nor a duration"),
                ));
            };
            let n = j - i;
            advance(&mut i, &mut line, &mut col, n);
            out.push(Token {
                tok,
                line: l,
                column: cl,
            });
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == ':')
            {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            let n = j - i;
            advance(&mut i, &mut line, &mut col, n);
            out.push(Token {
                tok: Tok::Word(word),
                line: l,
                column: cl,
            });
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) else {
            return Err(syntax(l, cl, format!("unexpected character {c:?}")));
        };
        advance(&mut i, &mut line, &mut col, sym.chars().count());
        out.push(Token {
            tok: Tok::Sym(sym),
            line: l,
            column: cl,
        });
    }
    out.push(Token {
        tok: Tok::End,
        line,
        column: col,
    });
    Ok(out)
}

// ---------------------------------------------------------------------------
// Syntax tree

#[derive(Debug, Clone)]
struct Pos {
    line: u64,
    column: u64,
}

#[derive(Debug, Clone)]
enum Expr {
    /// Two or more alternatives (n-ary, so a long chain does not nest).
    Or(Vec<Expr>, Pos),
    /// Two or more conditions.
    And(Vec<Expr>, Pos),
    Not(Box<Expr>, Pos),
    Compare(Box<Expr>, &'static str, Box<Expr>, Pos),
    /// `a + b`, `a - b` (time arithmetic).
    Arith(Box<Expr>, char, Box<Expr>, Pos),
    /// The value and the text as written (exact epoch times, label values).
    Number(f64, String, Pos),
    Duration(i64, Pos),
    Str(String, Pos),
    Star(Pos),
    Now(Pos),
    /// `a`, `a.b`.
    Name(Vec<String>, Pos),
    Call(String, Vec<Expr>, Pos),
}

impl Expr {
    fn pos(&self) -> &Pos {
        match self {
            Expr::Or(.., p)
            | Expr::And(.., p)
            | Expr::Not(_, p)
            | Expr::Compare(.., p)
            | Expr::Arith(.., p)
            | Expr::Number(_, _, p)
            | Expr::Duration(_, p)
            | Expr::Str(_, p)
            | Expr::Star(p)
            | Expr::Now(p)
            | Expr::Name(_, p)
            | Expr::Call(_, _, p) => p,
        }
    }

    fn error(&self, message: impl Into<String>) -> EngineError {
        let p = self.pos();
        syntax(p.line, p.column, message)
    }
}

#[derive(Debug, Clone)]
enum FillMethod {
    Null,
    Previous,
    Linear,
    Value(f64),
}

#[derive(Debug, Clone)]
enum AlignTo {
    Start,
    First,
    Epoch(i64),
}

#[derive(Debug)]
struct Ast {
    explain: bool,
    columns: Vec<(Expr, Option<String>)>,
    from: (String, Option<String>),
    join: Option<(String, Option<String>, Option<i64>)>,
    filter: Option<Expr>,
    last: Option<i64>,
    group_by: Vec<Expr>,
    window: Option<(i64, Pos)>,
    gap_fill: Option<(FillMethod, Pos)>,
    align: Option<(AlignTo, Pos)>,
    order_by: Vec<(Expr, bool)>,
    limit: Option<usize>,
    offset: Option<usize>,
}

// ---------------------------------------------------------------------------
// Parser

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// How deeply expressions nest now; bounded so that no query can exhaust
    /// the stack (parsing and lowering recurse once per level).
    depth: usize,
}

/// Deepest expression nesting accepted (sqlparser's limit is 50 too).
const MAX_DEPTH: usize = 50;

/// Words that end an expression or a name.
const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "as",
    "asof",
    "join",
    "tolerance",
    "where",
    "last",
    "group",
    "by",
    "window",
    "gap_fill",
    "align",
    "order",
    "asc",
    "desc",
    "limit",
    "offset",
    "and",
    "or",
    "not",
    "explain",
];

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at]
    }

    fn pos(&self) -> Pos {
        let t = self.peek();
        Pos {
            line: t.line,
            column: t.column,
        }
    }

    fn next(&mut self) -> Token {
        let t = self.tokens[self.at].clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn error(&self, message: impl Into<String>) -> EngineError {
        let t = self.peek();
        let found = match &t.tok {
            Tok::Word(w) | Tok::Quoted(w) => format!("{w:?}"),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Number(_, s) | Tok::Duration(_, s) => s.clone(),
            Tok::Sym(s) => format!("{s:?}"),
            Tok::End => "the end of the query".into(),
        };
        syntax(
            t.line,
            t.column,
            format!("{}, found {found}", message.into()),
        )
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.is_keyword(kw) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<()> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(self.error(format!("expected {}", kw.to_ascii_uppercase())))
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(&self.peek().tok, Tok::Sym(s) if *s == sym) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<()> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.error(format!("expected {sym:?}")))
        }
    }

    fn expect_end(&mut self) -> Result<()> {
        self.eat_sym(";");
        if self.peek().tok == Tok::End {
            Ok(())
        } else {
            Err(self.error("expected the end of the query"))
        }
    }

    fn ident(&mut self, what: &str) -> Result<String> {
        match &self.peek().tok {
            Tok::Word(w) if !KEYWORDS.contains(&w.to_ascii_lowercase().as_str()) => {
                let w = w.clone();
                self.next();
                Ok(w)
            }
            Tok::Quoted(w) => {
                let w = w.clone();
                self.next();
                Ok(w)
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    fn duration(&mut self, what: &str) -> Result<i64> {
        match self.peek().tok {
            Tok::Duration(d, _) => {
                self.next();
                Ok(d)
            }
            _ => Err(self.error(format!("{what} takes a duration such as 5m"))),
        }
    }

    fn whole_number(&mut self, what: &str) -> Result<usize> {
        match &self.peek().tok {
            Tok::Number(v, _) if *v >= 0.0 && v.fract() == 0.0 && *v <= usize::MAX as f64 => {
                let n = *v as usize;
                self.next();
                Ok(n)
            }
            _ => Err(self.error(format!("{what} takes a whole number"))),
        }
    }

    fn query(&mut self) -> Result<Ast> {
        let explain = self.eat_keyword("explain");
        self.expect_keyword("select")?;
        let mut columns = Vec::new();
        loop {
            let e = self.expr()?;
            let alias = if self.eat_keyword("as") {
                Some(self.ident("a column name after AS")?)
            } else {
                None
            };
            columns.push((e, alias));
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_keyword("from")?;
        let from = self.source()?;
        let join = if self.eat_keyword("asof") {
            self.expect_keyword("join")?;
            let (m, alias) = self.source()?;
            let tolerance = if self.eat_keyword("tolerance") {
                Some(self.duration("TOLERANCE")?)
            } else {
                None
            };
            Some((m, alias, tolerance))
        } else {
            None
        };
        let filter = if self.eat_keyword("where") {
            Some(self.expr()?)
        } else {
            None
        };
        let last = if self.eat_keyword("last") {
            Some(self.duration("LAST")?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        if self.eat_keyword("group") {
            self.expect_keyword("by")?;
            loop {
                group_by.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let window = if self.is_keyword("window") {
            let pos = self.pos();
            self.next();
            let d = self.duration("WINDOW")?;
            if d <= 0 {
                return Err(syntax(pos.line, pos.column, "the window must be positive"));
            }
            Some((d, pos))
        } else {
            None
        };
        let gap_fill = if self.is_keyword("gap_fill") {
            let pos = self.pos();
            self.next();
            let method = match &self.peek().tok {
                Tok::Word(w) if w.eq_ignore_ascii_case("null") => FillMethod::Null,
                Tok::Word(w) if w.eq_ignore_ascii_case("previous") => FillMethod::Previous,
                Tok::Word(w) if w.eq_ignore_ascii_case("linear") => FillMethod::Linear,
                Tok::Word(w) if w.eq_ignore_ascii_case("zero") => FillMethod::Value(0.0),
                Tok::Number(v, _) => FillMethod::Value(*v),
                Tok::Sym("-") => {
                    self.next();
                    match self.peek().tok {
                        Tok::Number(v, _) => FillMethod::Value(-v),
                        _ => return Err(self.error("expected a number after -")),
                    }
                }
                _ => {
                    // Bare GAP_FILL: null rows.
                    return self.rest(RestStart {
                        explain,
                        columns,
                        from,
                        join,
                        filter,
                        last,
                        group_by,
                        window,
                        gap_fill: Some((FillMethod::Null, pos)),
                    });
                }
            };
            self.next();
            Some((method, pos))
        } else {
            None
        };
        self.rest(RestStart {
            explain,
            columns,
            from,
            join,
            filter,
            last,
            group_by,
            window,
            gap_fill,
        })
    }

    /// ALIGN, ORDER BY, LIMIT, OFFSET.
    fn rest(&mut self, s: RestStart) -> Result<Ast> {
        let align = if self.is_keyword("align") {
            let pos = self.pos();
            self.next();
            let to = match &self.peek().tok {
                Tok::Word(w) if w.eq_ignore_ascii_case("start") => {
                    self.next();
                    AlignTo::Start
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("first") => {
                    self.next();
                    AlignTo::First
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("epoch") => {
                    self.next();
                    AlignTo::Epoch(0)
                }
                Tok::Duration(d, _) => {
                    let d = *d;
                    self.next();
                    AlignTo::Epoch(d)
                }
                _ => AlignTo::Start,
            };
            Some((to, pos))
        } else {
            None
        };
        let mut order_by = Vec::new();
        if self.eat_keyword("order") {
            self.expect_keyword("by")?;
            loop {
                let e = self.expr()?;
                let desc = if self.eat_keyword("desc") {
                    true
                } else {
                    self.eat_keyword("asc");
                    false
                };
                order_by.push((e, desc));
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let limit = if self.eat_keyword("limit") {
            Some(self.whole_number("LIMIT")?)
        } else {
            None
        };
        let offset = if self.eat_keyword("offset") {
            Some(self.whole_number("OFFSET")?)
        } else {
            None
        };
        Ok(Ast {
            explain: s.explain,
            columns: s.columns,
            from: s.from,
            join: s.join,
            filter: s.filter,
            last: s.last,
            group_by: s.group_by,
            window: s.window,
            gap_fill: s.gap_fill,
            align,
            order_by,
            limit,
            offset,
        })
    }

    fn source(&mut self) -> Result<(String, Option<String>)> {
        let m = self.ident("a measurement name")?;
        let alias = if self.eat_keyword("as") {
            Some(self.ident("an alias after AS")?)
        } else {
            None
        };
        Ok((m, alias))
    }

    fn expr(&mut self) -> Result<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("expressions nest deeper than {MAX_DEPTH} levels")));
        }
        let e = self.or();
        self.depth -= 1;
        e
    }

    fn or(&mut self) -> Result<Expr> {
        self.chain("or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr> {
        self.chain("and", Self::not, Expr::And)
    }

    /// Operands joined by `keyword`, as one n-ary node (a lone operand as itself).
    fn chain(
        &mut self,
        keyword: &str,
        operand: fn(&mut Self) -> Result<Expr>,
        node: fn(Vec<Expr>, Pos) -> Expr,
    ) -> Result<Expr> {
        let pos = self.pos();
        let mut parts = vec![operand(self)?];
        while self.eat_keyword(keyword) {
            parts.push(operand(self)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            node(parts, pos)
        })
    }

    fn not(&mut self) -> Result<Expr> {
        if self.is_keyword("not") {
            let pos = self.pos();
            self.next();
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(format!("expressions nest deeper than {MAX_DEPTH} levels")));
            }
            let inner = self.not();
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner?), pos));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr> {
        let left = self.additive()?;
        for op in ["<=", ">=", "!=", "<>", "=~", "!~", "=", "<", ">"] {
            if matches!(&self.peek().tok, Tok::Sym(s) if *s == op) {
                let pos = self.pos();
                self.next();
                let right = self.additive()?;
                let op = SYMBOLS.iter().find(|s| **s == op).expect("listed");
                return Ok(Expr::Compare(Box::new(left), op, Box::new(right), pos));
            }
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Expr> {
        let mut left = self.primary()?;
        // Time arithmetic lowers recursively: keep chains short.
        for _ in 0..MAX_DEPTH {
            let op = match &self.peek().tok {
                Tok::Sym("+") => '+',
                Tok::Sym("-") => '-',
                _ => break,
            };
            let pos = self.pos();
            self.next();
            let right = self.primary()?;
            left = Expr::Arith(Box::new(left), op, Box::new(right), pos);
        }
        if matches!(self.peek().tok, Tok::Sym("+" | "-")) {
            return Err(self.error(format!("more than {MAX_DEPTH} terms added or subtracted")));
        }
        Ok(left)
    }

    /// A call's arguments after its `(`, through the closing `)`.
    fn call_args(&mut self) -> Result<Vec<Expr>> {
        let mut args = Vec::new();
        if !self.eat_sym(")") {
            loop {
                args.push(self.expr()?);
                if !self.eat_sym(",") {
                    break;
                }
            }
            self.expect_sym(")")?;
        }
        Ok(args)
    }

    fn primary(&mut self) -> Result<Expr> {
        let pos = self.pos();
        match self.peek().tok.clone() {
            Tok::Number(v, text) => {
                self.next();
                Ok(Expr::Number(v, text, pos))
            }
            Tok::Duration(d, _) => {
                self.next();
                Ok(Expr::Duration(d, pos))
            }
            Tok::Str(s) => {
                self.next();
                Ok(Expr::Str(s, pos))
            }
            Tok::Sym("*") => {
                self.next();
                Ok(Expr::Star(pos))
            }
            Tok::Sym("-") => {
                self.next();
                match &self.peek().tok {
                    Tok::Number(v, text) => {
                        let e = Expr::Number(-v, format!("-{text}"), pos);
                        self.next();
                        Ok(e)
                    }
                    _ => Err(self.error("only numbers can be negated")),
                }
            }
            Tok::Sym("(") => {
                self.next();
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("now") => {
                self.next();
                if self.eat_sym("(") {
                    self.expect_sym(")")?;
                }
                Ok(Expr::Now(pos))
            }
            // A function call may borrow a keyword's name (`last(value)`).
            Tok::Word(w)
                if matches!(
                    self.tokens.get(self.at + 1).map(|t| &t.tok),
                    Some(Tok::Sym("("))
                ) =>
            {
                self.next();
                self.next();
                let args = self.call_args()?;
                Ok(Expr::Call(w.to_ascii_lowercase(), args, pos))
            }
            Tok::Word(_) | Tok::Quoted(_) => {
                let first = self.ident("a name")?;
                if self.eat_sym("(") {
                    let args = self.call_args()?;
                    return Ok(Expr::Call(first.to_ascii_lowercase(), args, pos));
                }
                let mut parts = vec![first];
                while self.eat_sym(".") {
                    if self.eat_sym("*") {
                        parts.push("*".into());
                        break;
                    }
                    parts.push(self.ident("a name after '.'")?);
                }
                Ok(Expr::Name(parts, pos))
            }
            _ => Err(self.error("expected an expression")),
        }
    }
}

/// What [`Parser::query`] read before ALIGN.
struct RestStart {
    explain: bool,
    columns: Vec<(Expr, Option<String>)>,
    from: (String, Option<String>),
    join: Option<(String, Option<String>, Option<i64>)>,
    filter: Option<Expr>,
    last: Option<i64>,
    group_by: Vec<Expr>,
    window: Option<(i64, Pos)>,
    gap_fill: Option<(FillMethod, Pos)>,
}

// ---------------------------------------------------------------------------
// Lowering

struct Scope {
    left: Vec<String>,
    right: Vec<String>,
}

impl Scope {
    /// A column reference: `(side, column name)`.
    fn resolve(&self, e: &Expr) -> Result<Option<(Side, String)>> {
        let Expr::Name(parts, _) = e else {
            return Ok(None);
        };
        match parts.as_slice() {
            [col] => Ok(Some((Side::Left, col.clone()))),
            [q, col] => {
                if self.left.contains(q) {
                    Ok(Some((Side::Left, col.clone())))
                } else if self.right.contains(q) {
                    Ok(Some((Side::Right, col.clone())))
                } else {
                    Err(e.error(format!("{q:?} names no measurement of this query")))
                }
            }
            _ => Err(e.error("names have at most one qualifier (alias.column)")),
        }
    }
}

fn lower(ast: Ast) -> Result<SelectPlan> {
    // An aliased measurement is named by its alias only (as in SQL), so a
    // measurement can be joined with itself.
    let (metric, alias) = ast.from;
    let mut scope = Scope {
        left: vec![alias.unwrap_or_else(|| metric.clone())],
        right: Vec::new(),
    };
    let mut plan = SelectPlan::new(&metric);
    if let Some((m, alias, tolerance)) = ast.join {
        scope.right.push(alias.unwrap_or_else(|| m.clone()));
        if scope.right.iter().any(|n| scope.left.contains(n)) {
            return Err(EngineError::Invalid(
                "the joined measurements need different names; give one an alias (AS b)".into(),
            ));
        }
        plan.join = Some(AsofJoin {
            metric: m,
            tolerance,
        });
    }

    let mut filter = Vec::new();
    if let Some(w) = &ast.filter {
        filter.push(predicate(&scope, w)?);
    }
    if let Some(d) = ast.last {
        filter.push(Predicate::Time {
            cmp: Cmp::Ge,
            at: Time::FromNow(d.saturating_neg()),
        });
    }
    plan.filter = Predicate::and(filter);

    for g in &ast.group_by {
        match g {
            Expr::Call(name, args, _) if name == "time" => {
                let [Expr::Duration(d, _)] = args.as_slice() else {
                    return Err(g.error("time() takes a window such as 5m"));
                };
                if *d <= 0 {
                    return Err(g.error("the window must be positive"));
                }
                if ast.window.is_some() || plan.window.is_some() {
                    return Err(g.error("give the window once (GROUP BY time(...) or WINDOW)"));
                }
                plan.window = Some(Window {
                    width: *d,
                    align: Alignment::Epoch(0),
                });
            }
            _ => match scope.resolve(g)? {
                Some((Side::Left, l)) if l != "time" && l != "value" && l != "*" => {
                    if !plan.group_by.contains(&l) {
                        plan.group_by.push(l)
                    }
                }
                Some((Side::Right, _)) => {
                    return Err(g.error("GROUP BY takes labels of the FROM measurement"))
                }
                _ => return Err(g.error("GROUP BY takes label names and time(<window>)")),
            },
        }
    }
    if let Some((w, _)) = ast.window {
        plan.window = Some(Window {
            width: w,
            align: Alignment::Epoch(0),
        });
    }
    if let Some((to, pos)) = ast.align {
        let Some(w) = plan.window.as_mut() else {
            return Err(syntax(
                pos.line,
                pos.column,
                "ALIGN needs a window (WINDOW or GROUP BY time(...))",
            ));
        };
        w.align = match to {
            AlignTo::Start => Alignment::Start,
            AlignTo::First => Alignment::FirstSample,
            AlignTo::Epoch(offset) => Alignment::Epoch(offset.rem_euclid(w.width)),
        };
    }
    if let Some((method, pos)) = ast.gap_fill {
        if plan.window.is_none() {
            return Err(syntax(
                pos.line,
                pos.column,
                "GAP_FILL needs a window (WINDOW or GROUP BY time(...))",
            ));
        }
        plan.gap_fill = Some(match method {
            FillMethod::Null => GapFill::Null,
            FillMethod::Previous => GapFill::Previous,
            FillMethod::Linear => GapFill::Linear,
            FillMethod::Value(v) => GapFill::Value(v),
        });
    }

    for (e, alias) in &ast.columns {
        if let Expr::Star(_) = e {
            plan.add_column(Column::Time, None);
            plan.add_column(Column::AllLabels(Side::Left), None);
            plan.add_column(Column::Value(Side::Left), None);
            if plan.join.is_some() {
                plan.add_column(Column::AllLabels(Side::Right), None);
                plan.add_column(Column::Value(Side::Right), None);
            }
            continue;
        }
        let column = column(&scope, e)?;
        let alias = alias.clone().or_else(|| match (e, &column) {
            // `b.value` is named as written.
            (Expr::Name(parts, _), Column::Value(Side::Right) | Column::Label(Side::Right, _)) => {
                Some(parts.join("."))
            }
            (Expr::Call(..), Column::Aggregate(_, Side::Right)) => Some(text_of(e)),
            _ => None,
        });
        plan.add_column(column, alias);
    }
    plan.add_implicit_columns();

    for (e, desc) in &ast.order_by {
        let index = match e {
            Expr::Number(_, text, _) => {
                let position = text
                    .parse::<usize>()
                    .map_err(|_| e.error(format!("ORDER BY {text}: no such column position")))?;
                plan.column_at_position(position)
                    .map_err(|m| e.error(m.to_string()))?
            }
            Expr::Name(parts, _)
                if parts.len() == 1 && plan.columns.iter().any(|c| c.name == parts[0]) =>
            {
                plan.columns
                    .iter()
                    .position(|c| c.name == parts[0])
                    .expect("checked")
            }
            _ => {
                let c = column(&scope, e)?;
                plan.sort_column(c)
            }
        };
        plan.order_by.push(OrderKey {
            column: index,
            descending: *desc,
        });
    }
    plan.limit = ast.limit;
    plan.offset = ast.offset.unwrap_or(0);
    plan.validate()?;
    Ok(plan)
}

fn text_of(e: &Expr) -> String {
    match e {
        Expr::Name(parts, _) => parts.join("."),
        Expr::Call(name, args, _) => format!(
            "{name}({})",
            args.iter().map(text_of).collect::<Vec<_>>().join(", ")
        ),
        Expr::Number(_, text, _) => text.clone(),
        Expr::Star(_) => "*".into(),
        _ => "?".into(),
    }
}

fn column(scope: &Scope, e: &Expr) -> Result<Column> {
    if let Expr::Call(name, args, _) = e {
        let (target, param) = match args.as_slice() {
            [t] => (t, None),
            [t, Expr::Number(p, _, _)] => (t, Some(*p)),
            _ => {
                return Err(e.error(format!(
                    "{name}() takes value (and a parameter for percentile)"
                )))
            }
        };
        let side = match target {
            Expr::Star(_) if name == "count" => Side::Left,
            _ => match scope.resolve(target)? {
                Some((side, c)) if c == "value" => side,
                _ => {
                    return Err(e.error(format!(
                        "{name}() aggregates a value column (write {name}(value))"
                    )))
                }
            },
        };
        let f = aggregate_by_name(name, param).map_err(|m| e.error(m.to_string()))?;
        return Ok(Column::Aggregate(f, side));
    }
    match scope.resolve(e)? {
        Some((_, c)) if c == "time" => Ok(Column::Time),
        Some((side, c)) if c == "value" => Ok(Column::Value(side)),
        Some((side, c)) if c == "*" => Ok(Column::AllLabels(side)),
        Some((side, c)) => Ok(Column::Label(side, c)),
        None => Err(e.error("select time, value, a label, *, or an aggregate of value")),
    }
}

enum Literal {
    Text(String),
    /// The value and its text as written.
    Number(f64, String),
    /// A time expression (`now() - 1h`), which only `time` compares with.
    Time,
}

fn literal(e: &Expr) -> Result<Literal> {
    match e {
        Expr::Str(s, _) => Ok(Literal::Text(s.clone())),
        Expr::Number(v, text, _) => Ok(Literal::Number(*v, text.clone())),
        Expr::Now(_) | Expr::Arith(..) => time_value(e).map(|_| Literal::Time),
        _ => Err(e.error("expected a literal (a string, a number or a time)")),
    }
}

fn time_value(e: &Expr) -> Result<Time> {
    match e {
        Expr::Now(_) => Ok(Time::FromNow(0)),
        // Parsed from the text: an f64 would round epoch nanoseconds.
        Expr::Number(_, text, _) => text
            .parse::<i64>()
            .map(Time::Absolute)
            .map_err(|_| e.error("epoch times are whole nanoseconds")),
        Expr::Str(s, _) => parse_time_literal(s)
            .map(Time::Absolute)
            .ok_or_else(|| e.error(format!("{s:?} is not an RFC 3339 time"))),
        Expr::Arith(l, op, r, _) => {
            let Expr::Duration(d, _) = r.as_ref() else {
                return Err(r.error("times add or subtract a duration such as 1h"));
            };
            let d = if *op == '-' { d.saturating_neg() } else { *d };
            Ok(match time_value(l)? {
                Time::FromNow(x) => Time::FromNow(x.saturating_add(d)),
                Time::Absolute(x) => Time::Absolute(x.saturating_add(d)),
            })
        }
        _ => {
            Err(e.error("expected a time: NOW, NOW - 1h, an RFC 3339 string or epoch nanoseconds"))
        }
    }
}

fn predicate(scope: &Scope, e: &Expr) -> Result<Predicate> {
    match e {
        Expr::Or(parts, _) => Ok(Predicate::Or(
            parts
                .iter()
                .map(|p| predicate(scope, p))
                .collect::<Result<_>>()?,
        )),
        Expr::And(parts, _) => Ok(Predicate::and(
            parts
                .iter()
                .map(|p| predicate(scope, p))
                .collect::<Result<_>>()?,
        )),
        Expr::Not(a, _) => Ok(Predicate::Not(Box::new(predicate(scope, a)?))),
        Expr::Compare(l, op, r, _) => {
            let (column, other, flip) = match (scope.resolve(l)?, scope.resolve(r)?) {
                (Some(c), _) => (c, r.as_ref(), false),
                (None, Some(c)) => (c, l.as_ref(), true),
                _ => {
                    return Err(e.error("compare a column (time, value or a label) with a literal"))
                }
            };
            let cmp = match *op {
                "=" => Some(Cmp::Eq),
                "!=" | "<>" => Some(Cmp::Ne),
                "<" => Some(Cmp::Lt),
                "<=" => Some(Cmp::Le),
                ">" => Some(Cmp::Gt),
                ">=" => Some(Cmp::Ge),
                _ => None,
            }
            .map(|c| if flip { c.flipped() } else { c });
            let (side, name) = column;
            match (name.as_str(), cmp) {
                ("time", Some(cmp)) => {
                    if side == Side::Right {
                        return Err(e.error("time is the row's time; compare it unqualified"));
                    }
                    Ok(Predicate::Time {
                        cmp,
                        at: time_value(other)?,
                    })
                }
                ("value", Some(cmp)) => match literal(other)? {
                    Literal::Number(v, _) => Ok(Predicate::Value {
                        side,
                        cmp,
                        value: v,
                    }),
                    _ => Err(other.error("value compares with a number")),
                },
                ("time" | "value", None) => Err(e.error(format!("{name} does not take {op}"))),
                (label, _) => {
                    let text = match literal(other)? {
                        Literal::Text(s) => s,
                        Literal::Number(_, text) => text,
                        Literal::Time => return Err(other.error("labels compare with text")),
                    };
                    let mop = match *op {
                        "=" => MatchOp::Equal,
                        "!=" | "<>" => MatchOp::NotEqual,
                        "=~" => MatchOp::Regex,
                        "!~" => MatchOp::NotRegex,
                        _ => return Err(e.error("labels compare with =, !=, =~ or !~")),
                    };
                    let matcher =
                        Matcher::new(mop, label, text).map_err(|m| e.error(m.to_string()))?;
                    Ok(Predicate::Label { side, matcher })
                }
            }
        }
        _ => Err(e.error("expected a condition: comparisons joined by AND, OR, NOT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_storage::AggregateFunction;

    fn plan(text: &str) -> SelectPlan {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).plan
    }

    #[test]
    fn every_clause_parses() {
        let p = plan(
            "SELECT mean(a.value) AS m, last(b.value), a.host FROM cpu AS a \
             ASOF JOIN mem AS b TOLERANCE 30s \
             WHERE a.host != 'x' AND (b.dc = 'eu' OR NOT a.value > 5) \
             LAST 1h GROUP BY a.host WINDOW 5m GAP_FILL previous ALIGN start \
             ORDER BY m DESC, host LIMIT 10 OFFSET 2",
        );
        assert_eq!(plan_names(&p), ["time", "m", "last(b.value)", "host"]);
        assert_eq!(p.join.as_ref().unwrap().tolerance, Some(30_000_000_000));
        assert_eq!(p.window.unwrap().align, Alignment::Start);
        assert_eq!(p.gap_fill, Some(GapFill::Previous));
        assert_eq!((p.limit, p.offset), (Some(10), 2));
        assert_eq!(p.order_by.len(), 2);
        assert!(p.order_by[0].descending);
        assert!(matches!(
            p.columns[2].column,
            Column::Aggregate(AggregateFunction::Last, Side::Right)
        ));
        // LAST 1h is a lower time bound.
        assert_eq!(
            p.filter.time_bounds(10_000_000_000_000).0,
            10_000_000_000_000 - 3_600_000_000_000
        );
    }

    fn plan_names(p: &SelectPlan) -> Vec<&str> {
        p.columns
            .iter()
            .filter(|c| !c.hidden)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn or_and_not_equal_are_kept() {
        // The Go original treated OR as AND and dropped !=.
        let p = plan("SELECT value FROM m WHERE host = 'a' OR host != 'b'");
        let Predicate::Or(parts) = &p.filter else {
            panic!("{:?}", p.filter)
        };
        assert!(
            matches!(&parts[1], Predicate::Label { matcher, .. } if matcher.op == MatchOp::NotEqual)
        );
    }

    #[test]
    fn defaults_of_bare_clauses() {
        let p = plan("SELECT count(*) FROM m WINDOW 1m GAP_FILL ALIGN");
        assert_eq!(p.gap_fill, Some(GapFill::Null));
        assert_eq!(p.window.unwrap().align, Alignment::Start);
        let p = plan("SELECT sum(value) FROM m GROUP BY time(1m) GAP_FILL -1 ALIGN 15s");
        assert_eq!(p.gap_fill, Some(GapFill::Value(-1.0)));
        assert_eq!(p.window.unwrap().align, Alignment::Epoch(15_000_000_000));
    }

    #[test]
    fn review_findings_stay_fixed() {
        // A zero window is an error, not a division by zero.
        for q in [
            "SELECT count(*) FROM m WINDOW 0s ALIGN EPOCH",
            "SELECT count(*) FROM m GROUP BY time(0s) ALIGN 5s",
        ] {
            assert!(parse(q).is_err(), "{q}");
        }
        // Deep nesting and long chains are refused, not a stack overflow.
        let deep = format!(
            "SELECT value FROM m WHERE {}host = 'a'{}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(matches!(parse(&deep), Err(EngineError::Syntax { .. })));
        let nots = format!(
            "SELECT value FROM m WHERE {}host = 'a'",
            "NOT ".repeat(10_000)
        );
        assert!(parse(&nots).is_err());
        let sum = format!(
            "SELECT value FROM m WHERE time > NOW{}",
            " - 1s".repeat(10_000)
        );
        assert!(parse(&sum).is_err());
        // A long OR chain is flat, so it is fine.
        let ors = vec!["host = 'a'"; 5_000].join(" OR ");
        assert!(parse(&format!("SELECT value FROM m WHERE {ors}")).is_ok());
        // Epoch nanoseconds are exact; numeric label values keep their text.
        let p = plan("SELECT value FROM m WHERE time <= 1700000000123456789 AND ver = 1.10");
        assert_eq!(p.filter.time_bounds(0).1, 1_700_000_000_123_456_790);
        assert!(
            p.filter.to_string().contains("ver=\"1.10\""),
            "{}",
            p.filter
        );
        // An aliased measurement joins itself.
        let p = plan("SELECT a.value, b.value FROM cpu AS a ASOF JOIN cpu AS b");
        assert_eq!(p.join.unwrap().metric, "cpu");
        // ORDER BY a position after * is ambiguous.
        assert!(parse("SELECT * FROM m ORDER BY 3").is_err());
        assert!(parse("SELECT time, * FROM m ORDER BY 1").is_ok());
    }

    #[test]
    fn errors_name_line_and_column() {
        let cases = [
            ("SELECT value FROM", (1, 18)),
            ("SELECT value\nFROM m\nWHERE host = ", (3, 14)),
            ("SELECT value FROM m LAST soon", (1, 26)),
            ("SELECT value FROM m GAP_FILL", (1, 21)),
            ("SELECT mean(value) FROM m WHERE host > 'a'", (1, 38)),
            ("SELECT value FROM m WHERE x.host = 'a'", (1, 27)),
            ("SELECT value FROM m ALIGN start", (1, 21)),
            ("SELECT value FROM m LIMIT 1.5", (1, 27)),
            ("SELECT value FROM m @", (1, 21)),
        ];
        for (text, (line, column)) in cases {
            match parse(text) {
                Err(EngineError::Syntax {
                    line: l,
                    column: c,
                    message,
                }) => {
                    assert_eq!((l, c), (line, column), "{text}: {message}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        for bad in [
            "SELECT value, mean(value) FROM m",
            "SELECT b.value FROM m",
            "SELECT value FROM m GROUP BY host",
            "SELECT mean(value) FROM m AS x ASOF JOIN x",
            "SELECT median(value, 3) FROM m",
            "SELECT value FROM m extra",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }
}

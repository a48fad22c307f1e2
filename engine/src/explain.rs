//! EXPLAIN for PromQL: the logical plan as an indented tree, one node per line.

use std::fmt::Write;

use chronicle_storage::MatchOp;

use crate::plan::{At, Grouping, Plan, Selector};

/// The plan a PromQL expression lowered into.
pub fn explain(plan: &Plan) -> String {
    let mut out = String::new();
    node(plan, 0, &mut out);
    out
}

fn selector(s: &Selector) -> String {
    let sets: Vec<String> = s
        .matcher_sets
        .iter()
        .map(|set| {
            let ms: Vec<String> = set
                .iter()
                .map(|m| {
                    let op = match m.op {
                        MatchOp::Equal => "=",
                        MatchOp::NotEqual => "!=",
                        MatchOp::Regex => "=~",
                        MatchOp::NotRegex => "!~",
                    };
                    format!("{}{op}{:?}", m.name, m.value)
                })
                .collect();
            format!("{{{}}}", ms.join(", "))
        })
        .collect();
    let mut text = sets.join(" or ");
    if s.offset != 0 {
        let _ = write!(text, " offset {}ms", s.offset);
    }
    if let Some(at) = s.at {
        let _ = write!(text, " @ {}", at_text(at));
    }
    text
}

fn at_text(at: At) -> String {
    match at {
        At::Time(t) => format!("{t}ms"),
        At::Start => "start()".into(),
        At::End => "end()".into(),
    }
}

fn node(plan: &Plan, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match plan {
        Plan::Number(v) => {
            let _ = writeln!(out, "{pad}Number {v}");
        }
        Plan::String(s) => {
            let _ = writeln!(out, "{pad}String {s:?}");
        }
        Plan::Vector(s) => {
            let _ = writeln!(
                out,
                "{pad}InstantSelector {} (latest sample within the lookback)",
                selector(s)
            );
        }
        Plan::Matrix { selector: s, range } => {
            let _ = writeln!(out, "{pad}RangeSelector {} [{range}ms]", selector(s));
        }
        Plan::Subquery {
            expr,
            range,
            step,
            offset,
            at,
        } => {
            let _ = writeln!(
                out,
                "{pad}Subquery [{range}ms:{}] offset {offset}ms{}",
                step.map_or("default".to_string(), |s| format!("{s}ms")),
                at.map_or(String::new(), |a| format!(" @ {}", at_text(a)))
            );
            node(expr, depth + 1, out);
        }
        Plan::Call { function, args, .. } => {
            let _ = writeln!(out, "{pad}Call {function}");
            for a in args {
                node(a, depth + 1, out);
            }
        }
        Plan::Aggregate {
            op,
            expr,
            param,
            grouping,
            ..
        } => {
            let g = match grouping {
                Grouping::By(l) => format!("by ({})", l.join(", ")),
                Grouping::Without(l) => format!("without ({})", l.join(", ")),
            };
            let _ = writeln!(out, "{pad}Aggregate {op:?} {g}");
            if let Some(p) = param {
                let _ = writeln!(out, "{pad}  parameter:");
                node(p, depth + 2, out);
            }
            node(expr, depth + 1, out);
        }
        Plan::Binary {
            op,
            lhs,
            rhs,
            matching,
            return_bool,
        } => {
            let m = matching.as_ref().map_or(String::new(), |m| {
                format!(
                    " {} ({}) {:?}",
                    if m.on { "on" } else { "ignoring" },
                    m.labels.join(", "),
                    m.cardinality
                )
            });
            let _ = writeln!(
                out,
                "{pad}Binary {op:?}{}{m}",
                if *return_bool { " bool" } else { "" }
            );
            node(lhs, depth + 1, out);
            node(rhs, depth + 1, out);
        }
        Plan::Negate(e) => {
            let _ = writeln!(out, "{pad}Negate");
            node(e, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tree_shows_every_node() {
        let plan =
            crate::promql::parse("sum by (job) (rate(http_requests_total{code=~\"5..\"}[5m])) / 2")
                .unwrap();
        let text = super::explain(&plan);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Binary Div");
        assert_eq!(lines[1], "  Aggregate Sum by (job)");
        assert_eq!(lines[2], "    Call rate");
        assert!(lines[3].starts_with("      RangeSelector {"), "{text}");
        assert!(lines[3].contains("code=~\"5..\"") && lines[3].ends_with("[300000ms]"));
        assert_eq!(lines[4], "  Number 2");
    }
}

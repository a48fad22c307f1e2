//! The examples in docs/cql.md and docs/sql.md are run: each ```cql or ```sql
//! block is executed on the documents' data set (the ```lp block) and its answer
//! must equal the markdown table that follows it.
//!
//! `CHRONICLE_PRINT_DOC_ANSWERS=1` prints every answer instead of comparing,
//! for writing new examples (check each by hand before pasting).

use std::time::Duration;

use chronicle_ingest::{parse_line_protocol, Precision};
use chronicle_query::{execute, Budget, Cell, PromqlLimits, QueryRequest};
use chronicle_storage::{Limits, Shard, ShardConfig};

/// `now()` in the examples: 100 s after the epoch.
const NOW: i64 = 100_000_000_000;

struct Example {
    language: String,
    query: String,
    expected: String,
    line: usize,
}

fn blocks(doc: &str) -> (String, Vec<Example>) {
    let lines: Vec<&str> = doc.lines().collect();
    let mut data = String::new();
    let mut examples = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim();
        if let Some(lang) = fence.strip_prefix("```") {
            let lang = lang.trim().to_string();
            let start = i + 1;
            let mut j = start;
            while j < lines.len() && lines[j].trim() != "```" {
                j += 1;
            }
            let body = lines[start..j].join("\n");
            match lang.as_str() {
                "lp" => data.push_str(&(body + "\n")),
                "cql" | "sql" => {
                    // The answer table follows, after blank lines or prose-free.
                    let mut k = j + 1;
                    while k < lines.len() && lines[k].trim().is_empty() {
                        k += 1;
                    }
                    let mut table = Vec::new();
                    while k < lines.len() && lines[k].trim_start().starts_with('|') {
                        table.push(lines[k].trim());
                        k += 1;
                    }
                    if !table.is_empty() {
                        examples.push(Example {
                            language: lang,
                            query: body,
                            expected: table.join("\n"),
                            line: start,
                        });
                    }
                }
                _ => {}
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    (data, examples)
}

fn markdown(columns: &[String], rows: &[Vec<Cell>]) -> String {
    let mut out = vec![
        format!("| {} |", columns.join(" | ")),
        format!("|{}", "---|".repeat(columns.len())),
    ];
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .map(|c| match c {
                Cell::Null => "null".to_string(),
                Cell::Int(i) => i.to_string(),
                Cell::Number(v) => v.to_string(),
                Cell::Text(t) => t.clone(),
            })
            .collect();
        out.push(format!("| {} |", cells.join(" | ")));
    }
    out.join("\n")
}

fn run_doc(path: &str) {
    let doc = std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let (data, examples) = blocks(&doc);
    assert!(!data.is_empty(), "{path} has no ```lp data block");
    assert!(
        examples.len() >= 5,
        "{path}: only {} examples",
        examples.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), ShardConfig::default()).unwrap();
    let points = parse_line_protocol(&data, Precision::Seconds, 0, &Limits::default()).unwrap();
    shard.write_view(points.view()).unwrap();
    let print = std::env::var_os("CHRONICLE_PRINT_DOC_ANSWERS").is_some();
    let mut failures = Vec::new();
    for ex in &examples {
        let request = QueryRequest {
            sql: (ex.language == "sql").then(|| ex.query.clone()),
            cql: (ex.language == "cql").then(|| ex.query.clone()),
            ..Default::default()
        };
        let budget = Budget::new(Duration::ZERO, Duration::from_secs(60), None);
        let answer = match execute(
            &shard,
            &request,
            NOW,
            10_000,
            &PromqlLimits::default(),
            &budget,
        ) {
            Ok(r) => markdown(
                r.columns.as_deref().unwrap_or(&[]),
                r.rows.as_deref().unwrap_or(&[]),
            ),
            Err(e) => format!("error: {e}"),
        };
        if print {
            println!(
                "--- {path}:{} {}\n{}\n{answer}\n",
                ex.line, ex.language, ex.query
            );
        } else if answer != ex.expected {
            failures.push(format!(
                "{path}:{}: {}\nexpected:\n{}\ngot:\n{answer}",
                ex.line, ex.query, ex.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn cql_examples_answer_as_documented() {
    run_doc("docs/cql.md");
}

#[test]
fn sql_examples_answer_as_documented() {
    run_doc("docs/sql.md");
}

//! `chronicle write` and `chronicle query`: the operator CLI's client side, over
//! HTTP or NATS.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use chronicle_bus::{Bus, Message, NatsBus, NatsOptions};
use chronicle_query::request::{AggregationSpec, MatcherSpec, TimeSpec};
use chronicle_query::{QueryRequest, QueryResult};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

type Error = Box<dyn std::error::Error>;

const DEFAULT_HTTP: &str = "http://127.0.0.1:8086";

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Node HTTP URL (default http://127.0.0.1:8086 unless --nats-url is given).
    #[arg(long, env = "CHRONICLE_HTTP", conflicts_with = "nats_url")]
    pub http: Option<String>,
    /// Publish over NATS instead (request/reply on `<prefix>.ingest.cli`).
    #[arg(long, env = "CHRONICLE_NATS_URL")]
    pub nats_url: Option<String>,
    /// The node's subject prefix (with --nats-url).
    #[arg(long, env = "CHRONICLE_SUBJECT_PREFIX", default_value = "chronicle")]
    pub subject_prefix: String,
    /// Timestamp unit of the input: ns, us, ms or s.
    #[arg(long, default_value = "ns")]
    pub precision: String,
    /// Lines per request.
    #[arg(long, default_value_t = 5000)]
    pub batch_lines: usize,
    /// Line protocol file, or `-` (the default) for standard input.
    #[arg(default_value = "-")]
    pub input: PathBuf,
}

enum Sender {
    Http {
        agent: ureq::Agent,
        url: String,
    },
    Nats {
        runtime: tokio::runtime::Runtime,
        bus: Arc<NatsBus>,
    },
}

impl Sender {
    fn connect(http: Option<String>, nats_url: Option<String>) -> Result<Self, Error> {
        Ok(match nats_url {
            Some(url) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let bus = runtime.block_on(NatsBus::connect(NatsOptions {
                    urls: vec![url],
                    name: Some("chronicle-cli".into()),
                    ..nats_credentials_from_env()?
                }))?;
                Sender::Nats {
                    runtime,
                    bus: Arc::new(bus),
                }
            }
            None => Sender::Http {
                agent: crate::http_client::agent(Duration::from_secs(120))?,
                url: http
                    .unwrap_or_else(|| DEFAULT_HTTP.into())
                    .trim_end_matches('/')
                    .to_string(),
            },
        })
    }

    /// Sends `body` to `path` (HTTP) or `subject` (NATS); the reply body.
    /// POSTs to `path` over HTTP, or requests on `subject` over NATS; the
    /// precision travels in the path's query string or as a `Precision` header.
    fn send(
        &self,
        path: &str,
        subject: &str,
        body: Vec<u8>,
        json: bool,
        precision: Option<&str>,
    ) -> Result<Vec<u8>, Error> {
        match self {
            Sender::Http { agent, url } => {
                let mut response = agent
                    .post(format!("{url}{path}"))
                    .content_type(if json {
                        "application/json"
                    } else {
                        "text/plain"
                    })
                    .send(&body[..])
                    .map_err(|e| format!("{url}{path}: {e}"))?;
                let status = response.status();
                if let Some(n) = response.headers().get("x-chronicle-points-written") {
                    // /write answers 204 with the count in a header.
                    let n = n.to_str().unwrap_or("0");
                    return Ok(format!("{{\"written\":{n}}}").into_bytes());
                }
                let text = response.body_mut().read_to_vec().unwrap_or_default();
                if !status.is_success() {
                    return Err(describe_error(&text, &format!("HTTP {status}")).into());
                }
                Ok(text)
            }
            Sender::Nats { runtime, bus } => {
                let mut msg = Message::new(subject, Bytes::from(body));
                if json {
                    msg = msg.with_header("Content-Type", "application/json");
                }
                if let Some(p) = precision {
                    msg = msg.with_header("Precision", p);
                }
                let reply = runtime.block_on(bus.request(msg, Duration::from_secs(60)))?;
                if reply.payload.starts_with(b"{\"error\"") {
                    return Err(describe_error(&reply.payload, "error").into());
                }
                Ok(reply.payload.to_vec())
            }
        }
    }
}

/// The message of a JSON error body, or the raw text.
/// NATS credentials for client commands, from the variables `serve` reads
/// too (`CHRONICLE_NATS_USER`, `_PASSWORD`, `_TOKEN`, `_CREDS`,
/// `_NKEY_FILE`, `_CA`, `_TLS`); half a user/password pair is an error.
fn nats_credentials_from_env() -> Result<NatsOptions, Error> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (user, password) = (var("CHRONICLE_NATS_USER"), var("CHRONICLE_NATS_PASSWORD"));
    if user.is_some() != password.is_some() {
        return Err("CHRONICLE_NATS_USER and CHRONICLE_NATS_PASSWORD go together".into());
    }
    let nkey_seed = match var("CHRONICLE_NATS_NKEY_FILE") {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("CHRONICLE_NATS_NKEY_FILE {path}: {e}"))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let ca = var("CHRONICLE_NATS_CA").map(std::path::PathBuf::from);
    Ok(NatsOptions {
        user,
        password,
        token: var("CHRONICLE_NATS_TOKEN"),
        credentials_file: var("CHRONICLE_NATS_CREDS").map(std::path::PathBuf::from),
        nkey_seed,
        require_tls: ca.is_some() || var("CHRONICLE_NATS_TLS").is_some_and(|v| v != "false"),
        tls_ca_file: ca,
        ..Default::default()
    })
}

fn describe_error(body: &[u8], fallback: &str) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{} ({})",
                e.get("message")?.as_str()?,
                e.get("code")?.as_str()?
            ))
        })
        .unwrap_or_else(|| format!("{fallback}: {}", String::from_utf8_lossy(body)))
}

pub fn write(args: WriteArgs) -> Result<(), Error> {
    let sender = Sender::connect(args.http, args.nats_url)?;
    let (reader, total): (Box<dyn Read>, Option<u64>) = if args.input.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = std::fs::File::open(&args.input)
            .map_err(|e| format!("{}: {e}", args.input.display()))?;
        let len = file.metadata().ok().map(|m| m.len());
        (Box::new(file), len)
    };
    let progress = match total {
        Some(len) if len > 1 << 20 => {
            let bar = ProgressBar::new(len);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} (eta {eta})")
                    .expect("static template"),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    };
    let started = Instant::now();
    let path = format!("/write?precision={}", args.precision);
    let subject = format!("{}.ingest.cli", args.subject_prefix);
    let (mut lines, mut points, mut batch, mut first_line) = (0usize, 0usize, Vec::new(), 1usize);
    let mut in_batch = 0usize;
    let flush = |batch: &mut Vec<u8>, first_line: usize| -> Result<usize, Error> {
        if batch.is_empty() {
            return Ok(0);
        }
        let body = std::mem::take(batch);
        let reply = sender
            .send(&path, &subject, body, false, Some(&args.precision))
            .map_err(|e| format!("batch starting at input line {first_line}: {e}"))?;
        Ok(written_count(&reply))
    };
    for line in BufReader::new(reader).lines() {
        let line = line?;
        lines += 1;
        progress.inc(line.len() as u64 + 1);
        batch.extend_from_slice(line.as_bytes());
        batch.push(b'\n');
        in_batch += 1;
        if in_batch >= args.batch_lines.max(1) {
            points += flush(&mut batch, first_line)?;
            first_line = lines + 1;
            in_batch = 0;
            progress.set_message(format!("{points} points"));
        }
    }
    points += flush(&mut batch, first_line)?;
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {points} points from {lines} lines in {secs:.2} s ({:.0} points/s)",
        points as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// HTTP answers 204 with no body; NATS answers {"written": n}.
fn written_count(reply: &[u8]) -> usize {
    serde_json::from_slice::<serde_json::Value>(reply)
        .ok()
        .and_then(|v| v.get("written")?.as_u64())
        .unwrap_or(0) as usize
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Node HTTP URL (default http://127.0.0.1:8086 unless --nats-url is given).
    #[arg(long, env = "CHRONICLE_HTTP", conflicts_with = "nats_url")]
    pub http: Option<String>,
    /// Ask over NATS instead (request/reply on `<prefix>.query`).
    #[arg(long, env = "CHRONICLE_NATS_URL")]
    pub nats_url: Option<String>,
    /// The node's subject prefix (with --nats-url).
    #[arg(long, env = "CHRONICLE_SUBJECT_PREFIX", default_value = "chronicle")]
    pub subject_prefix: String,
    /// Metric name.
    #[arg(long)]
    pub metric: Option<String>,
    /// Exact label match, `name=value` (repeatable).
    #[arg(long = "tag", value_name = "NAME=VALUE")]
    pub tags: Vec<String>,
    /// Label matcher `name=value`, `name!=value`, `name=~regex`, `name!~regex` (repeatable).
    #[arg(long = "match", value_name = "MATCHER")]
    pub matchers: Vec<String>,
    /// Start: ns, RFC 3339, `now` or `now-<duration>`.
    #[arg(long, default_value = "now-1h")]
    pub start: String,
    /// End, same forms.
    #[arg(long, default_value = "now")]
    pub end: String,
    /// Aggregate function: count, sum, mean, min, max, first, last, stddev, rate, pNN.
    #[arg(long)]
    pub agg: Option<String>,
    /// Aggregation window (`30s`, `5m`); default one window over the range.
    #[arg(long)]
    pub window: Option<String>,
    /// Group an aggregation by these labels (repeatable; `*` keeps series apart).
    #[arg(long = "group-by")]
    pub group_by: Vec<String>,
    /// At most this many points.
    #[arg(long)]
    pub limit: Option<usize>,
    /// A PromQL expression instead of --metric/--tag/--match/--agg: an instant
    /// query at --end, or a range query from --start with --step.
    #[arg(long, conflicts_with_all = ["metric", "tags", "matchers", "agg", "window", "group_by"])]
    pub promql: Option<String>,
    /// Resolution of a PromQL range query (`15s`, `1m`).
    #[arg(long, requires = "promql")]
    pub step: Option<String>,
    /// A SQL SELECT (docs/sql.md), e.g. "SELECT mean(value) FROM cpu WHERE time >
    /// now() - 1h GROUP BY time(5m), host". It carries its own time range.
    #[arg(long, conflicts_with_all = ["metric", "tags", "matchers", "agg", "window", "group_by", "promql", "step", "limit"])]
    pub sql: Option<String>,
    /// A CQL query (docs/cql.md), e.g. "SELECT max(value) FROM cpu LAST 1h WINDOW
    /// 5m GAP_FILL previous".
    #[arg(long, conflicts_with_all = ["metric", "tags", "matchers", "agg", "window", "group_by", "promql", "step", "limit", "sql"])]
    pub cql: Option<String>,
    /// Print the plan of the --promql, --sql or --cql query instead of running it.
    #[arg(long)]
    pub explain: bool,
    /// Print the JSON result instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the query open over a WebSocket (`/api/v1/live`) and print a new
    /// result each time writes reach what it reads (--promql, --sql or
    /// --cql; over HTTP). Ctrl-C stops.
    #[arg(long, conflicts_with_all = ["nats_url", "explain"])]
    pub follow: bool,
}

fn parse_matcher(s: &str) -> Result<MatcherSpec, Error> {
    for op in ["!~", "=~", "!=", "="] {
        if let Some((name, value)) = s.split_once(op) {
            return Ok(MatcherSpec {
                name: name.to_string(),
                op: op.to_string(),
                value: value.to_string(),
            });
        }
    }
    Err(format!("matcher {s:?}: expected name=value, name!=value, name=~re or name!~re").into())
}

fn time_spec(s: &str) -> TimeSpec {
    s.parse::<i64>()
        .map(TimeSpec::Nanos)
        .unwrap_or_else(|_| TimeSpec::Text(s.to_string()))
}

pub fn query(args: QueryArgs) -> Result<(), Error> {
    if args.follow {
        let (lang, text) = match (&args.promql, &args.sql, &args.cql) {
            (Some(q), _, _) => ("promql", q),
            (_, Some(q), _) => ("sql", q),
            (_, _, Some(q)) => ("cql", q),
            _ => return Err("--follow needs --promql, --sql or --cql".into()),
        };
        let http = args.http.as_deref().unwrap_or(DEFAULT_HTTP);
        let promql = lang == "promql";
        return crate::follow::follow(crate::follow::Follow {
            http,
            lang,
            query: text,
            // A range query slides: its start and end are re-read at each run.
            start: (promql && args.step.is_some()).then_some(args.start.as_str()),
            end: (promql && args.end != "now").then_some(args.end.as_str()),
            step: args.step.as_deref(),
            json: args.json,
        });
    }
    let mut request = if args.sql.is_some() || args.cql.is_some() {
        QueryRequest {
            sql: args.sql.clone(),
            cql: args.cql.clone(),
            ..Default::default()
        }
    } else if let Some(promql) = args.promql.clone() {
        QueryRequest {
            promql: Some(promql),
            start: args.step.as_ref().map(|_| time_spec(&args.start)),
            end: Some(time_spec(&args.end)),
            step: args.step.clone(),
            limit: args.limit,
            ..Default::default()
        }
    } else {
        QueryRequest {
            metric: args.metric,
            start: Some(time_spec(&args.start)),
            end: Some(time_spec(&args.end)),
            group_by: args.group_by,
            limit: args.limit,
            ..Default::default()
        }
    };
    for t in &args.tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("tag {t:?}: expected name=value"))?;
        request.tags.insert(k.to_string(), v.to_string());
    }
    for m in &args.matchers {
        request.matchers.push(parse_matcher(m)?);
    }
    if let Some(f) = args.agg {
        let (function, percentile) = match f.strip_prefix('p').map(str::parse::<f64>) {
            Some(Ok(p)) => ("percentile".to_string(), Some(p)),
            _ => (f, None),
        };
        request.aggregation = Some(AggregationSpec {
            function,
            window: args.window,
            percentile,
        });
    }
    if args.explain {
        if request.promql.is_none() && request.sql.is_none() && request.cql.is_none() {
            return Err("--explain applies to --promql, --sql and --cql".into());
        }
        request.explain = true;
    }
    let sender = Sender::connect(args.http, args.nats_url)?;
    let body = serde_json::to_vec(&request)?;
    let subject = format!("{}.query", args.subject_prefix);
    let reply = sender.send("/query", &subject, body, true, None)?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&reply));
        return Ok(());
    }
    let result: QueryResult = serde_json::from_slice(&reply)?;
    print_result(&result);
    Ok(())
}

/// A result as a table (rows, series, or the plan).
pub(crate) fn print_result(result: &QueryResult) {
    if let Some(plan) = &result.explain {
        print!("{plan}");
    } else if let (Some(columns), Some(rows)) = (&result.columns, &result.rows) {
        print_rows(columns, rows);
    } else {
        print_table(result);
    }
}

/// A SQL/CQL answer as aligned columns; times stay nanoseconds (exact).
fn print_rows(columns: &[String], rows: &[Vec<chronicle_query::Cell>]) {
    use chronicle_query::Cell;
    let text: Vec<Vec<String>> =
        std::iter::once(columns.iter().map(|c| c.to_uppercase()).collect())
            .chain(rows.iter().map(|r| {
                r.iter()
                    .map(|c| match c {
                        Cell::Null => "null".to_string(),
                        Cell::Int(i) => i.to_string(),
                        Cell::Number(v) => v.to_string(),
                        Cell::Text(t) => t.clone(),
                    })
                    .collect()
            }))
            .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            text.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &text {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    eprintln!("{} rows", rows.len());
}

fn print_table(result: &QueryResult) {
    let mut rows = vec![(
        "SERIES".to_string(),
        "TIME".to_string(),
        "VALUE".to_string(),
    )];
    for s in &result.series {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let name = format!(
            "{}{{{}}}",
            s.metric.as_deref().unwrap_or(""),
            labels.join(",")
        );
        for p in &s.points {
            let time = u64::try_from(p.0)
                .map(|ns| {
                    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns))
                        .to_string()
                })
                .unwrap_or_else(|_| p.0.to_string());
            rows.push((name.clone(), time, p.1.to_string()));
        }
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (a, b, c) in &rows {
        println!("{a:<w0$}  {b:<w1$}  {c}");
    }
    let points: usize = result.series.iter().map(|s| s.points.len()).sum();
    eprintln!(
        "{} series, {points} points{}",
        result.series.len(),
        if result.truncated {
            " (truncated by limit)"
        } else {
            ""
        }
    );
}

//! What the operator CLIs of the node and its features share: the HTTP
//! client (it sends the operator's token, `--token` / `CHRONICLE_TOKEN`, and
//! trusts `--ca-file` for HTTPS), the node address and `--json` flags, calls
//! that turn a node's JSON error into one line, and aligned tables.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// A CLI command's error: printed as `error: <it>` and exit status 1.
pub type Error = Box<dyn std::error::Error>;

/// How the CLI authenticates to a node, set once from its flags.
#[derive(Debug, Default, Clone)]
pub struct ClientAuth {
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

static CLIENT_AUTH: OnceLock<ClientAuth> = OnceLock::new();

/// Records the credentials for every later request (the first call wins).
pub fn set_client_auth(auth: ClientAuth) {
    let _ = CLIENT_AUTH.set(auth);
}

/// The operator's token, if any.
pub fn token() -> Option<String> {
    CLIENT_AUTH.get().and_then(|a| a.token.clone())
}

/// The certificates to trust for `https://` and `wss://`: `--ca-file`'s, else
/// the Mozilla roots.
pub fn root_store() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match CLIENT_AUTH.get().and_then(|a| a.ca_file.clone()) {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// An agent that answers every status (the caller reads the JSON error),
/// gives up after `timeout`, and carries the token.
pub fn agent(timeout: Duration) -> Result<ureq::Agent, String> {
    let auth = CLIENT_AUTH.get().cloned().unwrap_or_default();
    let mut builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout));
    if let Some(path) = &auth.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            ));
        }
        builder = builder.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                .build(),
        );
    }
    if let Some(token) = auth.token {
        let value = format!("Bearer {token}");
        builder = builder.middleware(
            move |mut request: ureq::http::Request<ureq::SendBody>,
                  next: ureq::middleware::MiddlewareNext| {
                if let Ok(v) = ureq::http::HeaderValue::from_str(&value) {
                    request
                        .headers_mut()
                        .insert(ureq::http::header::AUTHORIZATION, v);
                }
                next.handle(request)
            },
        );
    }
    Ok(builder.build().into())
}

#[derive(Debug, Args)]
pub struct Target {
    /// Node HTTP URL (any member).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
    /// Print the node's JSON answer (pretty) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub enum Call<'a> {
    Get,
    Post(&'a Value),
    Delete,
}

/// The node's JSON answer (`Null` when it has none, as for a 204), or its
/// error as `<METHOD> <path>: HTTP <status>: <message>`.
pub fn call(at: &Target, how: Call<'_>, path: &str) -> Result<Value, Error> {
    let url = format!("{}{path}", at.http.trim_end_matches('/'));
    // Approving runs the action before answering (a webhook, a scale).
    let agent = agent(Duration::from_secs(60))?;
    let (method, response) = match how {
        Call::Get => ("GET", agent.get(&url).call()),
        Call::Post(body) => (
            "POST",
            agent
                .post(&url)
                .content_type("application/json")
                .send(serde_json::to_vec(body)?),
        ),
        Call::Delete => ("DELETE", agent.delete(&url).call()),
    };
    let mut response = response.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
    if !(200..300).contains(&status) {
        return Err(refusal(&what, status, &bytes).into());
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{what}: HTTP {status}: the answer is not JSON ({e})").into())
}

/// The error line for a non-2xx answer: the node's message when the body
/// is its JSON error, else the body's text (a proxy's page, say).
pub fn refusal(what: &str, status: u16, body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = value["error"]["message"]
        .as_str()
        .or_else(|| value["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let said = String::from_utf8_lossy(body).trim().to_string();
            if said.is_empty() {
                "no reason given".to_string()
            } else {
                fit(&said, 200)
            }
        });
    format!("{what}: HTTP {status}: {message}")
}

/// Bytes a path segment keeps as they are (RFC 3986's unreserved ones), so
/// an id with `/` or `?` cannot reach another route.
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `path?k=v&...` with the given parameters form-encoded (the node refuses
/// unknown ones, so absent ones are left out rather than sent empty).
pub fn with_query(path: &str, params: &[(&str, Option<String>)]) -> Result<String, Error> {
    let given: Vec<(&str, &str)> = params
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if given.is_empty() {
        return Ok(path.to_string());
    }
    Ok(format!("{path}?{}", serde_urlencoded::to_string(&given)?))
}

/// Milliseconds since the epoch `ago` before `now` (never before the epoch).
pub fn since_ms(now: SystemTime, ago: Duration) -> i64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    i64::try_from(now.saturating_sub(ago.as_millis())).unwrap_or(i64::MAX)
}

pub fn since_param(ago: Duration) -> Option<String> {
    Some(since_ms(SystemTime::now(), ago).to_string())
}

/// A JSON object from a file or standard input, checked here so a typo is
/// reported with the file's name rather than as the node's 400.
pub fn read_json(file: &Path) -> Result<Value, Error> {
    let (name, bytes) = if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        ("standard input".to_string(), bytes)
    } else {
        let name = file.display().to_string();
        let bytes = std::fs::read(file).map_err(|e| format!("{name}: {e}"))?;
        (name, bytes)
    };
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("{name}: a JSON object is expected").into());
    }
    Ok(value)
}

pub fn print_json(v: &Value) -> Result<(), Error> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The list under `key` (or a bare list); an answer of another shape lists
/// nothing, with a word on stderr (`--json` shows it whole).
pub fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    match v
        .get(key)
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
    {
        Some(list) => list.as_slice(),
        None => {
            eprintln!("note: the node's answer has no {key:?} list; --json shows it");
            &[]
        }
    }
}

/// Lists are capped by --limit (or the node's default); say so rather than
/// let a partial list pass for the whole.
pub fn note_more(v: &Value) {
    if v["more"].as_bool() == Some(true) {
        eprintln!("(more match than shown: raise --limit or narrow --since and the filters)");
    }
}

/// Longest cell in a table; longer ones end in `…` (`--json` has them whole).
pub const MAX_CELL: usize = 48;

/// `cell` on one line, at most `max` characters.
pub fn fit(cell: &str, max: usize) -> String {
    // A newline or tab inside a cell would break the alignment.
    let flat: String = cell
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Aligned columns two spaces apart, the header first; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut lines: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    lines.extend(
        rows.iter()
            .map(|r| r.iter().map(|c| fit(c, MAX_CELL)).collect()),
    );
    let mut widths = vec![0usize; headers.len()];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut row = String::new();
        for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                row.push_str("  ");
            }
            row.push_str(c);
            row.extend(std::iter::repeat_n(' ', w - c.chars().count()));
        }
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

pub fn print_table(headers: &[&str], rows: &[Vec<String>], none: &str) {
    if rows.is_empty() {
        eprintln!("{none}");
    } else {
        print!("{}", table(headers, rows));
    }
}

/// A JSON value as a cell: strings bare, lists comma-joined, nothing as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
pub fn time_text(v: &Value) -> String {
    match v.as_i64() {
        // humantime cannot write years past 9999 (its Display fails).
        Some(ms) if (0..253_402_300_800_000).contains(&ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64))
                .to_string()
        }
        Some(ms) => ms.to_string(),
        None => "-".into(),
    }
}

/// `metric{k="v",...}`, the series as PromQL would name it.
pub fn series(metric: &Value, labels: &Value) -> String {
    let mut s = metric.as_str().unwrap_or("?").to_string();
    if let Some(labels) = labels.as_object().filter(|l| !l.is_empty()) {
        let pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}=\"{s}\""),
                None => format!("{k}=\"{v}\""),
            })
            .collect();
        s.push('{');
        s.push_str(&pairs.join(","));
        s.push('}');
    }
    s
}

pub fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// `key: value` lines, objects indented under their key.
pub fn key_values(out: &mut String, indent: usize, key: &str, v: &Value) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(fields) if !fields.is_empty() => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (k, child) in fields {
                key_values(out, indent + 1, k, child);
            }
        }
        Value::Array(list) if list.iter().any(|i| i.is_object() || i.is_array()) => {
            out.push_str(&format!("{pad}{key}:\n"));
            for (i, child) in list.iter().enumerate() {
                key_values(out, indent + 1, &format!("[{i}]"), child);
            }
        }
        _ => out.push_str(&format!("{pad}{key}: {}\n", text(v))),
    }
}

/// An SVG (a feature's chart) rasterised to PNG, with the system's fonts
/// for its text where there are any.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, Error> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &options).map_err(|e| format!("svg: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("an empty picture")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap.encode_png().map_err(|e| format!("png: {e}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_cut_long_cells() {
        let rows = vec![
            vec!["a".to_string(), "x".to_string(), "last".to_string()],
            vec!["longer".to_string(), "y\tz".to_string(), "-".to_string()],
        ];
        assert_eq!(
            table(&["ID", "COL", "END"], &rows),
            "ID      COL  END\n\
             a       x    last\n\
             longer  y z  -\n"
        );
        let long = "m".repeat(60);
        let cut = table(&["M"], &[vec![long]]);
        let cell = cut.lines().nth(1).unwrap();
        assert_eq!(cell.chars().count(), MAX_CELL);
        assert!(cell.ends_with('…'), "{cell}");
        assert_eq!(fit("short", MAX_CELL), "short");
    }

    #[test]
    fn ids_and_query_parameters_are_encoded() {
        assert_eq!(
            segment("1700000000000-00ab_c.d~e"),
            "1700000000000-00ab_c.d~e"
        );
        assert_eq!(segment("a/b?c d%"), "a%2Fb%3Fc%20d%25");
        assert_eq!(
            with_query(
                "/api/anomalies",
                &[
                    ("since", Some("5".into())),
                    ("metric", Some("cpu_*{host=\"a&b\"}".into())),
                    ("type", None),
                    ("state", Some("open".into())),
                ],
            )
            .unwrap(),
            "/api/anomalies?since=5&metric=cpu_*%7Bhost%3D%22a%26b%22%7D&state=open"
        );
        assert_eq!(with_query("/p", &[("x", None)]).unwrap(), "/p");
    }

    #[test]
    fn since_counts_back_from_now() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        assert_eq!(
            since_ms(now, humantime::parse_duration("1h").unwrap()),
            1_700_000_000_000 - 3_600_000
        );
        assert_eq!(since_ms(now, Duration::ZERO), 1_700_000_000_000);
        assert_eq!(since_ms(now, Duration::from_secs(u64::MAX)), 0);
    }

    #[test]
    fn cells_and_times_read_well() {
        assert_eq!(time_text(&json!(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            time_text(&json!(1_700_000_000_123i64)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(time_text(&Value::Null), "-");
        assert_eq!(text(&json!(["cpu_*", "mem"])), "cpu_*,mem");
        assert_eq!(
            series(&json!("cpu"), &json!({"dc": "x", "host": "a"})),
            "cpu{dc=\"x\",host=\"a\"}"
        );
        assert_eq!(
            refusal(
                "GET /api/anomalies/x",
                404,
                br#"{"error":{"code":"not_found","message":"no anomaly x"}}"#
            ),
            "GET /api/anomalies/x: HTTP 404: no anomaly x"
        );
    }
}

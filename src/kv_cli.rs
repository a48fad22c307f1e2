//! `chronicle kv ...`: the replicated state for operators, over a node's
//! HTTP API (`POST /api/v1/kv/<op>`, an admin API: the node needs
//! `--enable-admin-api`).

use std::io::Read;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

#[derive(Subcommand)]
pub enum KvCommand {
    /// Print a key's value (and its revision on stderr).
    Get {
        #[command(flatten)]
        at: Target,
        key: String,
    },
    /// Set a key; prints the new revision. The value is the argument, or
    /// standard input with `-`.
    Put {
        #[command(flatten)]
        at: Target,
        key: String,
        value: String,
        /// Only if the key is at this revision (0: only if it does not exist).
        #[arg(long)]
        revision: Option<u64>,
        /// Expire the key this long after the write (e.g. `30s`, `10m`);
        /// writing it again renews or ends the lease.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Delete a key; prints the revision of the deletion.
    Del {
        #[command(flatten)]
        at: Target,
        key: String,
        /// Only if the key is at this revision.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// List keys under a prefix with their revisions (every page).
    Ls {
        #[command(flatten)]
        at: Target,
        #[arg(default_value = "")]
        prefix: String,
        /// Also print the values.
        #[arg(long)]
        values: bool,
    },
    /// Store a file (or standard input with `-`) as a blob: chunked under
    /// one key with a SHA-256, up to 1 GiB (docs/state.md, Blobs).
    PutBlob {
        #[command(flatten)]
        at: Target,
        key: String,
        file: std::path::PathBuf,
    },
    /// Write a blob to a file (or standard output with `-`), checked
    /// against its size and SHA-256.
    GetBlob {
        #[command(flatten)]
        at: Target,
        key: String,
        #[arg(default_value = "-")]
        file: std::path::PathBuf,
    },
    /// Delete a blob and its chunks.
    DelBlob {
        #[command(flatten)]
        at: Target,
        key: String,
    },
    /// Print every change under a prefix as JSON lines, from a revision on,
    /// until interrupted.
    Watch {
        #[command(flatten)]
        at: Target,
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this revision (0: the whole history kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// The namespace (a feature's name).
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Node HTTP URL (any member).
    #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
    pub http: String,
}

fn post(at: &Target, op: &str, body: Value, timeout: Duration) -> Result<(u16, Value), Error> {
    let url = format!("{}/api/v1/kv/{op}", at.http.trim_end_matches('/'));
    let agent = crate::http_client::agent(timeout)?;
    let mut response = agent
        .post(&url)
        .content_type("application/json")
        .send(serde_json::to_vec(&body)?)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes), "code": status }));
    Ok((status, value))
}

/// The answer, or the node's error as this command's.
fn expect(at: &Target, op: &str, body: Value) -> Result<Value, Error> {
    let (status, value) = post(at, op, body, Duration::from_secs(60))?;
    if status == 200 {
        return Ok(value);
    }
    let why = value["error"].as_str().unwrap_or("no reason given");
    let current = match value.get("current") {
        Some(c) => format!(" (current revision {c})"),
        None => String::new(),
    };
    Err(format!("{op}: HTTP {status}: {why}{current}").into())
}

fn value_text(v: &Value) -> String {
    match (v["value"].as_str(), v["value_base64"].as_str()) {
        (Some(s), _) => s.to_string(),
        (None, Some(b)) => format!("base64:{b}"),
        _ => String::new(),
    }
}

fn blob_url(at: &Target, key: &str) -> Result<String, Error> {
    Ok(format!(
        "{}/api/v1/kv/blob?{}",
        at.http.trim_end_matches('/'),
        serde_urlencoded::to_string([("namespace", at.namespace.as_str()), ("key", key)])?
    ))
}

/// The node's error message from a JSON error body.
fn refusal(url: &str, status: u16, body: &[u8]) -> Error {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let why = value["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    format!("{url}: HTTP {status}: {why}").into()
}

/// Counts bytes as they pass and reports progress on stderr every 16 MiB.
struct Progress<R> {
    inner: R,
    done: u64,
    reported: u64,
    verb: &'static str,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= 16 << 20 {
            self.reported = self.done;
            eprintln!("{} {} MiB", self.verb, self.done >> 20);
        }
        Ok(n)
    }
}

fn put_blob(at: &Target, key: &str, file: &std::path::Path) -> Result<(), Error> {
    let url = blob_url(at, key)?;
    let source: Box<dyn Read + Send> = if file == std::path::Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?)
    };
    let mut body = Progress {
        inner: source,
        done: 0,
        reported: 0,
        verb: "sent",
    };
    let agent = crate::http_client::agent(Duration::from_secs(3600))?;
    let mut response = agent
        .put(&url)
        .content_type("application/octet-stream")
        .send(ureq::SendBody::from_reader(&mut body))
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    if status != 200 {
        return Err(refusal(&url, status, &bytes));
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    println!(
        "{} bytes in {} chunks, sha256 {}",
        v["size"],
        v["chunks"],
        v["sha256"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn get_blob(at: &Target, key: &str, file: &std::path::Path) -> Result<(), Error> {
    use sha2_hex::Hasher;
    let url = blob_url(at, key)?;
    let agent = crate::http_client::agent(Duration::from_secs(3600))?;
    let mut response = agent.get(&url).call().map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        let bytes = response.body_mut().read_to_vec()?;
        return Err(refusal(&url, status, &bytes));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let (want_sha, want_size) = (
        header("x-chronicle-blob-sha256"),
        header("x-chronicle-blob-size"),
    );
    let mut out: Box<dyn std::io::Write> = if file == std::path::Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?)
    };
    let mut reader = Progress {
        inner: response.body_mut().with_config().limit(u64::MAX).reader(),
        done: 0,
        reported: 0,
        verb: "received",
    };
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    let (got_sha, got_size) = (hasher.finish(), reader.done.to_string());
    if got_sha != want_sha || got_size != want_size {
        return Err(format!(
            "{url}: received {got_size} bytes with sha256 {got_sha}; the blob is {want_size} bytes with sha256 {want_sha}"
        )
        .into());
    }
    eprintln!("{got_size} bytes, sha256 {got_sha} (checked)");
    Ok(())
}

/// SHA-256 in hex (the CLI checks what it received against the node's).
mod sha2_hex {
    use sha2::Digest;

    #[derive(Default)]
    pub struct Hasher(sha2::Sha256);

    impl Hasher {
        pub fn update(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }

        pub fn finish(self) -> String {
            self.0
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
    }
}

pub fn run(command: KvCommand) -> Result<(), Error> {
    match command {
        KvCommand::PutBlob { at, key, file } => put_blob(&at, &key, &file)?,
        KvCommand::GetBlob { at, key, file } => get_blob(&at, &key, &file)?,
        KvCommand::DelBlob { at, key } => {
            let url = blob_url(&at, &key)?;
            let agent = crate::http_client::agent(Duration::from_secs(600))?;
            let mut response = agent
                .delete(&url)
                .call()
                .map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let bytes = response.body_mut().read_to_vec()?;
            if status != 200 {
                return Err(refusal(&url, status, &bytes));
            }
            println!("deleted {key}");
        }
        KvCommand::Get { at, key } => {
            let v = expect(&at, "get", json!({ "namespace": at.namespace, "key": key }))?;
            eprintln!("revision {} (created {})", v["revision"], v["created"]);
            println!("{}", value_text(&v));
        }
        KvCommand::Put {
            at,
            key,
            value,
            revision,
            ttl,
        } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes)?;
                bytes
            } else {
                value.into_bytes()
            };
            let mut body = json!({ "namespace": at.namespace, "key": key });
            let (field, value) = chronicle_kv::value_json(&value);
            body[field] = value;
            if let Some(r) = revision {
                body["revision"] = json!(r);
            }
            if let Some(ttl) = ttl {
                body["ttl_ms"] = json!(ttl.as_millis().max(1) as u64);
            }
            let v = expect(&at, "put", body)?;
            println!("{}", v["revision"]);
        }
        KvCommand::Del { at, key, revision } => {
            let mut body = json!({ "namespace": at.namespace, "key": key });
            if let Some(r) = revision {
                body["revision"] = json!(r);
            }
            let v = expect(&at, "del", body)?;
            println!("{}", v["revision"]);
        }
        KvCommand::Ls { at, prefix, values } => {
            let mut after: Option<String> = None;
            loop {
                let mut body =
                    json!({ "namespace": at.namespace, "prefix": prefix, "limit": 1000 });
                if let Some(a) = &after {
                    body["after"] = json!(a);
                }
                let v = expect(&at, "ls", body)?;
                let entries = v["entries"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    let key = e["key"].as_str().unwrap_or_default();
                    if values {
                        println!("{key}\t{}\t{}", e["revision"], value_text(e));
                    } else {
                        println!("{key}\t{}", e["revision"]);
                    }
                }
                after = entries
                    .last()
                    .and_then(|e| e["key"].as_str())
                    .map(str::to_string);
                if v["more"] != json!(true) || after.is_none() {
                    break;
                }
            }
        }
        KvCommand::Watch { at, prefix, after } => {
            let mut after = after;
            loop {
                let body = json!({
                    "namespace": at.namespace, "prefix": prefix, "after": after,
                    "wait_ms": 10_000,
                });
                match post(&at, "watch", body, Duration::from_secs(40)) {
                    Ok((200, v)) => {
                        for c in v["changes"].as_array().into_iter().flatten() {
                            println!("{c}");
                            after = c["revision"].as_u64().unwrap_or(after);
                        }
                        after = after.max(v["revision"].as_u64().unwrap_or(after));
                    }
                    Ok((status, v)) if status < 500 => {
                        let why = v["error"].as_str().unwrap_or("no reason given");
                        return Err(format!("watch: HTTP {status}: {why}").into());
                    }
                    // A node restarting or a leader changing: ask again.
                    Ok((status, v)) => {
                        eprintln!("watch: HTTP {status}: {}; retrying", v["error"]);
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => {
                        eprintln!("watch: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        }
    }
    Ok(())
}

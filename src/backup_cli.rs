//! `chronicle backup take|verify|restore` (docs/operations.md, "Back up and
//! restore").
//!
//! * take: asks each node given for a checkpoint of the shards it leads
//!   (crate::features::backup), downloads every file into `--out`, checks it
//!   against the node's SHA-256, deletes the node's copy, and writes
//!   `backup.json` last: a directory without it is not a backup.
//! * verify: checks every file of a backup against `backup.json`.
//! * restore: verifies, then opens each shard's checkpoint in a scratch copy
//!   and writes its points (`POST /write`, JSON points) and its state
//!   (`POST /api/v1/kv/txn`) into a cluster of any size and shard count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::features::backup::{hex, sha256_file, NodeBackup, ShardBackup};

type Error = Box<dyn std::error::Error>;

/// The backup's own description, written last.
pub const BACKUP_MANIFEST: &str = "backup.json";
const FORMAT: u32 = 1;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back the cluster up into a new directory: every shard from its leader.
    /// Give the address of every node that leads a shard (`chronicle cluster
    /// status` shows the leaders); a one-node cluster needs only its own.
    Take {
        /// Node HTTP URLs, comma-separated or with --http repeated.
        #[arg(
            long = "http",
            env = "CHRONICLE_HTTP",
            value_delimiter = ',',
            default_value = "http://127.0.0.1:8086"
        )]
        http: Vec<String>,
        /// Directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Leave each node's copy under <data-dir>/backups too.
        #[arg(long)]
        keep_on_node: bool,
    },
    /// Check every file of a backup against its SHA-256 in backup.json.
    Verify {
        /// The backup directory.
        dir: PathBuf,
    },
    /// Write a backup's points and state into a cluster (any size, any shard
    /// count) through its write and state APIs. Writing the same backup twice
    /// is harmless: a sample at a timestamp the series has replaces it, and a
    /// key is put again.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// Node HTTP URL of the cluster to restore into.
        #[arg(long, env = "CHRONICLE_HTTP", default_value = "http://127.0.0.1:8086")]
        http: String,
        /// Points per write request.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_points: u32,
        /// Restore the points only, not the replicated state (tokens, feature data).
        #[arg(long)]
        skip_state: bool,
    },
}

/// A backup directory's description.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub created_unix_ms: u64,
    pub sources: Vec<String>,
    pub shards_total: u32,
    pub chunk_range_ns: u64,
    pub shards: Vec<ShardBackup>,
}

/// Shards a backup may hold (far above any cluster's shard count).
const MAX_SHARDS: u32 = 65_536;

impl BackupManifest {
    /// Reads and checks a `backup.json`: a backup is a file that travels, so
    /// nothing in it is trusted until checked (names stay inside their
    /// directory, shards are distinct and within the count, the chunk range
    /// is one a shard can be read with).
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let manifest: Self = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if manifest.format != FORMAT {
            return Err(format!(
                "format {}, this chronicle reads format {FORMAT}",
                manifest.format
            ));
        }
        if manifest.shards_total == 0 || manifest.shards_total > MAX_SHARDS {
            return Err(format!(
                "shards_total {}: 1 to {MAX_SHARDS}",
                manifest.shards_total
            ));
        }
        let range = Duration::from_nanos(manifest.chunk_range_ns);
        if range < Duration::from_secs(1) || range > Duration::from_secs(366 * 86_400) {
            return Err(format!(
                "chunk_range_ns {}: 1 s to 366 days",
                manifest.chunk_range_ns
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for shard in &manifest.shards {
            if shard.shard >= manifest.shards_total || !seen.insert(shard.shard) {
                return Err(format!(
                    "shard {} is out of range or listed twice",
                    shard.shard
                ));
            }
            let mut names = std::collections::BTreeSet::new();
            for f in &shard.files {
                if !chronicle_cluster::snapshot::safe_name(&f.name) || !names.insert(&f.name) {
                    return Err(format!(
                        "shard {}: file name {:?} is not allowed or listed twice",
                        shard.shard, f.name
                    ));
                }
                if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "shard {}: file {}: sha256 is not 64 hex digits",
                        shard.shard, f.name
                    ));
                }
            }
        }
        Ok(manifest)
    }
}

pub fn run(command: BackupCommand) -> Result<(), Error> {
    match command {
        BackupCommand::Take {
            http,
            out,
            keep_on_node,
        } => take(&http, &out, keep_on_node),
        BackupCommand::Verify { dir } => {
            let manifest = verify(&dir)?;
            println!(
                "{}: {} shards, {} files, {} bytes, all match",
                dir.display(),
                manifest.shards.len(),
                manifest.shards.iter().map(|s| s.files.len()).sum::<usize>(),
                total_bytes(&manifest.shards)
            );
            Ok(())
        }
        BackupCommand::Restore {
            from,
            http,
            batch_points,
            skip_state,
        } => restore(&from, &http, batch_points as usize, skip_state),
    }
}

fn total_bytes(shards: &[ShardBackup]) -> u64 {
    shards.iter().flat_map(|s| &s.files).map(|f| f.size).sum()
}

/// The JSON answer of a request, or the node's error as this command's.
fn answer(url: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Value, Error> {
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let why = value["error"].as_str().unwrap_or("no reason given");
    Err(format!("{url}: HTTP {status}: {why}").into())
}

fn take(nodes: &[String], out: &Path, keep_on_node: bool) -> Result<(), Error> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        return Err(format!("{} exists and is not empty", out.display()).into());
    }
    std::fs::create_dir_all(out)?;
    let result = take_into(nodes, out, keep_on_node);
    if result.is_err() {
        // Half a backup is not one.
        let _ = std::fs::remove_dir_all(out);
    }
    result
}

fn take_into(nodes: &[String], out: &Path, keep_on_node: bool) -> Result<(), Error> {
    let agent = crate::http_client::agent(Duration::from_secs(600))?;
    let started = Instant::now();
    let mut taken: Vec<ShardBackup> = Vec::new();
    let mut layout: Option<(u32, u64)> = None;
    for base in nodes {
        let base = base.trim_end_matches('/');
        let url = format!("{base}/api/v1/admin/backups");
        let response = agent
            .post(&url)
            .send_empty()
            .map_err(|e| format!("{url}: {e}"))?;
        let node: NodeBackup = serde_json::from_value(answer(&url, response)?)?;
        match layout {
            None => layout = Some((node.shards_total, node.chunk_range_ns)),
            Some(l) if l != (node.shards_total, node.chunk_range_ns) => {
                return Err(format!(
                    "{base} has {} shards and a chunk range of {} ns, the nodes before it {} and {}: not one cluster",
                    node.shards_total, node.chunk_range_ns, l.0, l.1
                )
                .into())
            }
            Some(_) => {}
        }
        for shard in &node.shards {
            if taken.iter().any(|t| t.shard == shard.shard) {
                continue;
            }
            let dir = out.join(format!("shard-{}", shard.shard));
            std::fs::create_dir_all(&dir)?;
            for f in &shard.files {
                let url = format!(
                    "{base}/api/v1/admin/backups/{}/{}/{}",
                    node.name, shard.shard, f.name
                );
                download(&agent, &url, &dir.join(&f.name), f.size, &f.sha256)?;
            }
            eprintln!(
                "shard {}: {} files, {} bytes from node {} (log index {})",
                shard.shard,
                shard.files.len(),
                shard.files.iter().map(|f| f.size).sum::<u64>(),
                node.node,
                shard.applied_index
            );
            taken.push(shard.clone());
        }
        if !keep_on_node {
            let url = format!("{base}/api/v1/admin/backups/{}", node.name);
            let response = agent
                .delete(&url)
                .call()
                .map_err(|e| format!("{url}: {e}"))?;
            answer(&url, response)?;
        }
    }
    let (shards_total, chunk_range_ns) = layout.ok_or("no node given")?;
    let missing: Vec<u32> = (0..shards_total)
        .filter(|s| !taken.iter().any(|t| t.shard == *s))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shards {missing:?} are not led by any node given: add the nodes that lead them with --http (`chronicle cluster status` names the leaders)"
        )
        .into());
    }
    taken.sort_by_key(|s| s.shard);
    let manifest = BackupManifest {
        format: FORMAT,
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        sources: nodes.to_vec(),
        shards_total,
        chunk_range_ns,
        shards: taken,
    };
    let path = out.join(BACKUP_MANIFEST);
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    file.sync_all()?;
    println!(
        "backup of {} shards ({} bytes) in {} ({:.1} s)",
        manifest.shards.len(),
        total_bytes(&manifest.shards),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Streams `url` into `path`, checking its size and SHA-256.
fn download(
    agent: &ureq::Agent,
    url: &str,
    path: &Path,
    size: u64,
    sha256: &str,
) -> Result<(), Error> {
    let mut response = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return answer(url, response).map(|_| ());
    }
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(size.saturating_add(1))
        .reader();
    let mut file = std::fs::File::create(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| format!("{url}: {e}"))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
    }
    file.sync_all()?;
    let digest = hex(&hasher.finalize());
    if got != size || digest != sha256 {
        return Err(format!(
            "{url}: received {got} bytes with SHA-256 {digest}, the node announced {size} bytes with {sha256}"
        )
        .into());
    }
    Ok(())
}

/// Reads `backup.json` and checks every file it names.
pub fn verify(dir: &Path) -> Result<BackupManifest, Error> {
    let path = dir.join(BACKUP_MANIFEST);
    let text = std::fs::read(&path).map_err(|e| {
        format!(
            "{}: {e} (a backup directory has it; an interrupted take does not)",
            path.display()
        )
    })?;
    let manifest = BackupManifest::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for shard in &manifest.shards {
        let shard_dir = dir.join(format!("shard-{}", shard.shard));
        for f in &shard.files {
            let file = shard_dir.join(&f.name);
            let (size, sha256) =
                sha256_file(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            if size != f.size || sha256 != f.sha256 {
                return Err(format!(
                    "{}: {size} bytes with SHA-256 {sha256}, backup.json says {} bytes with {}",
                    file.display(),
                    f.size,
                    f.sha256
                )
                .into());
            }
        }
    }
    Ok(manifest)
}

/// Sends requests to the cluster being restored into.
struct Target {
    agent: ureq::Agent,
    base: String,
}

impl Target {
    fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .post(&url)
            .content_type("application/json")
            .send(serde_json::to_vec(body)?)
            .map_err(|e| format!("{url}: {e}"))?;
        answer(&url, response)
    }
}

/// A JSON point value: a number, or Prometheus's spelling of a non-finite one.
fn json_value(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v == f64::INFINITY {
        json!("+Inf")
    } else if v == f64::NEG_INFINITY {
        json!("-Inf")
    } else {
        json!(v)
    }
}

#[derive(Default)]
struct Restored {
    series: u64,
    points: u64,
    keys: u64,
    expired: u64,
    reserved: u64,
}

fn restore(from: &Path, http: &str, batch_points: usize, skip_state: bool) -> Result<(), Error> {
    let started = Instant::now();
    let manifest = verify(from)?;
    eprintln!(
        "{}: {} shards verified ({} bytes)",
        from.display(),
        manifest.shards.len(),
        total_bytes(&manifest.shards)
    );
    let target = Target {
        agent: crate::http_client::agent(Duration::from_secs(120))?,
        base: http.trim_end_matches('/').to_string(),
    };
    let config = chronicle_storage::ShardConfig {
        chunk_range: Duration::from_nanos(manifest.chunk_range_ns),
        // A scratch copy: nothing needs to survive a power cut.
        sync_writes: false,
        ..Default::default()
    };
    let scratch = tempfile::tempdir()?;
    let mut total = Restored::default();
    for shard in &manifest.shards {
        let copy = scratch.path().join(format!("shard-{}", shard.shard));
        let opened = chronicle_storage::Shard::restore(
            from.join(format!("shard-{}", shard.shard)),
            &copy,
            config.clone(),
        )?;
        let before = (total.points, total.series, total.keys);
        restore_points(&opened, &target, batch_points, &mut total)
            .map_err(|e| format!("shard {}: {e}", shard.shard))?;
        if !skip_state {
            restore_state(&opened, &target, &mut total)
                .map_err(|e| format!("shard {}: {e}", shard.shard))?;
        }
        drop(opened);
        let _ = std::fs::remove_dir_all(&copy);
        eprintln!(
            "shard {}: {} points of {} series, {} keys",
            shard.shard,
            total.points - before.0,
            total.series - before.1,
            total.keys - before.2
        );
    }
    println!(
        "restored {} points of {} series and {} keys into {http} ({} expired keys skipped) in {:.1} s",
        total.points,
        total.series,
        total.keys,
        total.expired,
        started.elapsed().as_secs_f64()
    );
    if total.reserved > 0 {
        println!(
            "not restored: {} API token records (tokens stay with the cluster that issued them; create new ones with `chronicle token create`)",
            total.reserved
        );
    }
    Ok(())
}

fn restore_points(
    shard: &chronicle_storage::Shard,
    target: &Target,
    batch_points: usize,
    total: &mut Restored,
) -> Result<(), Error> {
    use chronicle_storage::{MatchOp, Matcher};
    let every = Matcher::new(MatchOp::Regex, "__name__", ".+")?;
    let mut batch: Vec<Value> = Vec::with_capacity(batch_points);
    let flush = |batch: &mut Vec<Value>| -> Result<(), Error> {
        if !batch.is_empty() {
            target.post("/write", &json!({ "points": batch }))?;
            batch.clear();
        }
        Ok(())
    };
    for (id, key) in shard.select(&[every])? {
        let labels: serde_json::Map<String, Value> = key
            .labels
            .iter()
            .map(|l| (l.name.clone(), json!(l.value)))
            .collect();
        total.series += 1;
        for sample in shard.scan(id, i64::MIN, i64::MAX)? {
            let sample = sample?;
            batch.push(json!({
                "metric": key.metric,
                "labels": labels,
                "value": json_value(sample.value),
                "timestamp": sample.timestamp,
            }));
            total.points += 1;
            if batch.len() >= batch_points {
                flush(&mut batch)?;
            }
        }
    }
    flush(&mut batch)
}

/// Bytes of values one state request carries at most (the API takes 2 MiB
/// of JSON; base64 grows values by a third).
const STATE_REQUEST_BYTES: usize = 1 << 20;

fn restore_state(
    shard: &chronicle_storage::Shard,
    target: &Target,
    total: &mut Restored,
) -> Result<(), Error> {
    let now = chronicle_query::request::now_ns();
    let mut after: Option<(String, String)> = None;
    let mut pending: Option<(String, Vec<Value>, usize)> = None;
    let send = |pending: &mut Option<(String, Vec<Value>, usize)>| -> Result<(), Error> {
        if let Some((namespace, txns, _)) = pending.take() {
            let answer = target.post(
                "/api/v1/kv/txn",
                &json!({ "namespace": namespace, "txns": txns }),
            )?;
            // Every transaction is a put without a check: one that did not
            // commit means the cluster refused it.
            if let Some(failed) = answer["outcomes"]
                .as_array()
                .and_then(|r| r.iter().find(|o| o.get("committed").is_none()))
            {
                return Err(format!("namespace {namespace}: a put was refused: {failed}").into());
            }
        }
        Ok(())
    };
    loop {
        let (entries, more) =
            shard.state_scan_all(after.as_ref().map(|(n, k)| (n.as_str(), k.as_str())), 1000)?;
        for (ns, entry) in &entries {
            if chronicle_kv::service::RESERVED_NAMESPACES.contains(&ns.as_str()) {
                // API tokens stay with the cluster that issued them: a backup
                // file must not be a way to mint credentials elsewhere.
                total.reserved += 1;
                continue;
            }
            if entry.expires != 0 && entry.expires <= now {
                total.expired += 1;
                continue;
            }
            let ttl_ms = if entry.expires == 0 {
                0
            } else {
                ((entry.expires - now) as u64).div_ceil(1_000_000)
            };
            let (field, value) = chronicle_kv::value_json(&entry.value);
            let mut op = json!({ "key": entry.key, "ttl_ms": ttl_ms });
            op[field] = value;
            let size = entry.key.len() + entry.value.len() * 4 / 3 + 64;
            let same_ns = pending
                .as_ref()
                .is_some_and(|(n, _, bytes)| n == ns && bytes + size <= STATE_REQUEST_BYTES);
            if !same_ns {
                send(&mut pending)?;
                pending = Some((ns.clone(), Vec::new(), 0));
            }
            if let Some((_, txns, bytes)) = pending.as_mut() {
                txns.push(json!({ "ops": [{ "put": op }] }));
                *bytes += size;
            }
            total.keys += 1;
        }
        match (more, entries.last()) {
            (true, Some((ns, e))) => after = Some((ns.clone(), e.key.clone())),
            _ => break,
        }
    }
    send(&mut pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(shards: Value, total: u32, range: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "format": 1, "created_unix_ms": 0, "sources": [], "shards_total": total,
            "chunk_range_ns": range, "shards": shards,
        }))
        .unwrap()
    }

    fn shard(id: u32, name: &str) -> Value {
        json!({"shard": id, "node": 1, "applied_index": 1, "term": 1,
               "files": [{"name": name, "size": 1, "sha256": "ab".repeat(32)}]})
    }

    #[test]
    fn hostile_manifests_are_refused_before_any_file_is_read() {
        let two_hours = 7_200_000_000_000;
        assert!(
            BackupManifest::parse(&manifest(json!([shard(0, "CURRENT")]), 1, two_hours)).is_ok()
        );
        for (bad, why) in [
            (
                manifest(json!([shard(0, "../x")]), 1, two_hours),
                "not allowed",
            ),
            (
                manifest(json!([shard(0, ".hidden")]), 1, two_hours),
                "not allowed",
            ),
            (
                manifest(json!([shard(0, "a/b")]), 1, two_hours),
                "not allowed",
            ),
            (
                manifest(json!([shard(1, "CURRENT")]), 1, two_hours),
                "out of range",
            ),
            (
                manifest(json!([shard(0, "A"), shard(0, "B")]), 2, two_hours),
                "twice",
            ),
            (manifest(json!([]), 0, two_hours), "shards_total"),
            (manifest(json!([]), 1, 0), "chunk_range_ns"),
            (manifest(json!([]), 1, u64::MAX), "chunk_range_ns"),
            (b"{\"format\": 2}".to_vec(), "missing field"),
            (b"not json".to_vec(), "expected"),
        ] {
            let e = BackupManifest::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut odd = shard(0, "CURRENT");
        odd["files"][0]["sha256"] = json!("zz");
        assert!(BackupManifest::parse(&manifest(json!([odd]), 1, two_hours)).is_err());
    }
}

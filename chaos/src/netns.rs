//! Real network cuts: each node in a network namespace of its own, joined
//! by veth pairs to a bridge in a hub namespace where nats-server and the
//! harness's workload clients live. Every namespace, link and address is
//! the harness's own (10.77.0.0/24 inside them), so nothing touches the
//! machine's network. Faults are iptables rules (and `tc netem` where the
//! kernel has it) inside a node's namespace. Needs root and `ip`.

use std::process::Command;

use crate::ChaosError;

/// The hub's address (nats-server listens here).
pub const HUB_ADDR: &str = "10.77.0.1";

/// Node `id`'s address.
pub fn node_addr(id: u64) -> String {
    format!("10.77.0.{}", 10 + id)
}

/// The namespaces of one run.
pub struct Netns {
    prefix: String,
    nodes: Vec<u64>,
    /// This process's namespace before it moved into the hub.
    home: Option<std::fs::File>,
    /// Only what this run made is deleted.
    hub_made: bool,
}

fn run(args: &[&str]) -> Result<String, ChaosError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| ChaosError::Process(format!("{}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(ChaosError::Process(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why real network cuts cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("real network cuts need root (ip netns, iptables)".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return Some(format!(
                "real network cuts need `{tool}` (Debian: iproute2, iptables)"
            ));
        }
    }
    None
}

impl Netns {
    /// Makes the hub and one namespace per node, and moves this thread
    /// (and so every thread and process it starts from now on) into the
    /// hub. Call it before starting any other thread.
    pub fn create(nodes: &[u64]) -> Result<Netns, ChaosError> {
        if let Some(why) = unavailable() {
            return Err(ChaosError::Plan(why));
        }
        let prefix = format!("chr{}", std::process::id());
        let home = std::fs::File::open("/proc/self/ns/net")
            .map_err(|e| ChaosError::Process(format!("/proc/self/ns/net: {e}")))?;
        let mut ns = Netns {
            prefix,
            nodes: Vec::new(),
            home: Some(home),
            hub_made: false,
        };
        let hub = ns.hub();
        run(&["ip", "netns", "add", &hub])?;
        ns.hub_made = true;
        run(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_ADDR}/24"),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for &id in nodes {
            let name = ns.node(id);
            run(&["ip", "netns", "add", &name])?;
            ns.nodes.push(id);
            run(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
            let (hub_end, node_end) = (format!("vh{id}"), format!("vn{id}"));
            run(&[
                "ip", "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name",
                &node_end, "netns", &name,
            ])?;
            run(&[
                "ip", "-n", &hub, "link", "set", &hub_end, "master", "br0", "up",
            ])?;
            run(&[
                "ip",
                "-n",
                &name,
                "addr",
                "add",
                &format!("{}/24", node_addr(id)),
                "dev",
                &node_end,
            ])?;
            run(&["ip", "-n", &name, "link", "set", &node_end, "up"])?;
        }
        ns.enter(&hub)?;
        Ok(ns)
    }

    pub fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Node `id`'s namespace.
    pub fn node(&self, id: u64) -> String {
        format!("{}n{id}", self.prefix)
    }

    fn enter(&self, name: &str) -> Result<(), ChaosError> {
        let path = format!("/var/run/netns/{name}");
        let f =
            std::fs::File::open(&path).map_err(|e| ChaosError::Process(format!("{path}: {e}")))?;
        set_ns(&f)
    }

    /// Runs `args` in node `id`'s namespace.
    fn in_node(&self, id: u64, args: &[&str]) -> Result<String, ChaosError> {
        let name = self.node(id);
        let mut full = vec!["ip", "netns", "exec", &name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Cuts node `id` off from nats-server (and so from every other node):
    /// inbound only when `one_way`, else both ways.
    pub fn cut(&self, id: u64, one_way: bool) -> Result<(), ChaosError> {
        self.in_node(
            id,
            &["iptables", "-A", "INPUT", "-s", HUB_ADDR, "-j", "DROP"],
        )?;
        if !one_way {
            self.in_node(
                id,
                &["iptables", "-A", "OUTPUT", "-d", HUB_ADDR, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Node `id` loses this share of the packets it sends to nats-server.
    pub fn loss(&self, id: u64, probability: f64) -> Result<(), ChaosError> {
        let p = format!("{probability:.4}");
        self.in_node(
            id,
            &[
                "iptables",
                "-A",
                "OUTPUT",
                "-d",
                HUB_ADDR,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )?;
        Ok(())
    }

    /// `tc netem` on node `id`'s link (`delay 300ms`, `duplicate 50%`).
    pub fn netem(&self, id: u64, what: &[&str]) -> Result<(), ChaosError> {
        let dev = format!("vn{id}");
        let mut args = vec!["tc", "qdisc", "add", "dev", &dev, "root", "netem"];
        args.extend_from_slice(what);
        self.in_node(id, &args).map(|_| ()).map_err(|e| {
            ChaosError::Plan(format!(
                "tc netem failed ({e}); this kernel may lack netem (sch_netem): use via = \"bus\" for delay and duplication"
            ))
        })
    }

    /// Takes every rule and qdisc off node `id`'s namespace.
    pub fn heal(&self, id: u64) -> Result<(), ChaosError> {
        self.in_node(id, &["iptables", "-F"])?;
        let dev = format!("vn{id}");
        // No qdisc to delete is fine.
        let _ = self.in_node(id, &["tc", "qdisc", "del", "dev", &dev, "root"]);
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let _ = set_ns(&home);
        }
        for &id in &self.nodes {
            let _ = run(&["ip", "netns", "del", &self.node(id)]);
        }
        if self.hub_made {
            let _ = run(&["ip", "netns", "del", &self.hub()]);
        }
    }
}

fn set_ns(f: &std::fs::File) -> Result<(), ChaosError> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on an open namespace file; it moves only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(ChaosError::Process(format!(
            "setns: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

//! Fault plans: what a chaos run starts, which workloads it runs, and the
//! faults its nemesis draws from, written in TOML (docs/chaos.md) or taken
//! from the built-in suite (`builtin:smoke`, `builtin:crashes`,
//! `builtin:partitions`, `builtin:netns`, `builtin:disk`, `builtin:clock`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ChaosError;

/// A whole plan as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_nodes")]
    pub nodes: u64,
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// How long the workloads run under faults (`"60s"`, `"5m"`).
    #[serde(default = "default_duration")]
    pub duration: String,
    /// Time between one fault's heal and the next fault.
    #[serde(default = "default_gap")]
    pub interval: String,
    /// How long a fault lasts.
    #[serde(default = "default_gap")]
    pub hold: String,
    #[serde(default)]
    pub workload: WorkloadPlan,
    /// What the nemesis draws from: every fault once per round, in an order
    /// the seed shuffles.
    #[serde(rename = "fault")]
    pub faults: Vec<FaultSpec>,
    /// Faults Chaos Mesh repeats on a cron schedule for the whole run, beside
    /// the nemesis's (Kubernetes only: a Schedule resource each).
    #[serde(default, rename = "recurring")]
    pub recurring: Vec<Recurring>,
}

/// A fault that recurs on a schedule (Kubernetes only).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recurring {
    /// A cron expression or `@every 2m`, as Chaos Mesh's Schedule takes it.
    pub cron: String,
    pub fault: FaultSpec,
}

/// The workloads and their size.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPlan {
    /// Reads, writes and compare-and-sets on the replicated state.
    #[serde(default = "yes")]
    pub register: bool,
    /// Unique points appended to series, read whole.
    #[serde(default = "yes")]
    pub series: bool,
    /// Client threads of each workload.
    #[serde(default = "default_clients")]
    pub clients: usize,
    /// Keys (register) and series (series) each workload spreads over.
    #[serde(default = "default_keys")]
    pub keys: usize,
}

impl Default for WorkloadPlan {
    fn default() -> Self {
        Self {
            register: true,
            series: true,
            clients: default_clients(),
            keys: default_keys(),
        }
    }
}

/// One fault the nemesis may inject. Each acts on nodes it draws at random
/// (one node, or a split of them) and is healed after the plan's `hold`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultSpec {
    /// SIGKILL a node; restart it on heal.
    Kill {},
    /// SIGTERM a node (it must exit 0 within 30 s); restart it on heal.
    Terminate {},
    /// SIGSTOP a node; SIGCONT on heal.
    Pause {},
    /// Kill nats-server; start it again on the same port on heal.
    NatsRestart {},
    /// Cut nodes off from each other (both ways unless one-way).
    Partition {
        split: Split,
        #[serde(default)]
        via: Via,
    },
    /// One node loses this share of the messages it sends.
    Loss {
        probability: f64,
        #[serde(default)]
        via: Via,
    },
    /// One node's messages arrive `ms` late.
    Delay {
        ms: u64,
        #[serde(default)]
        via: Via,
    },
    /// One node's messages arrive twice.
    Duplicate {
        #[serde(default)]
        via: Via,
    },
    /// A failpoint on one node's disk path.
    Disk {
        point: DiskPoint,
        error: DiskError,
        /// For `slow`: the delay of each call.
        #[serde(default)]
        ms: u64,
    },
    /// A node's cluster clock runs ahead or behind by up to `offset`.
    Clock { offset: String },
    /// A node's whole process sees its wall clock move by up to `offset`
    /// (libfaketime preloaded): every clock read, libraries' included.
    Faketime { offset: String },
    /// A power cut: SIGKILL, then every write not fsynced is dropped (the
    /// nodes run with the powercut library preloaded); `scope = "node"`
    /// cuts one node, `"cluster"` all at once.
    PowerCut {
        #[serde(default)]
        scope: Scope,
    },
    /// One node's traffic is limited to `rate` (`"1mbps"`, Chaos Mesh's
    /// NetworkChaos bandwidth; Kubernetes only).
    Bandwidth { rate: String },
    /// CPU and memory stressors in one node's container (Chaos Mesh's
    /// StressChaos; Kubernetes only).
    Stress {
        /// stress-ng CPU workers (0: none).
        #[serde(default)]
        cpu_workers: u32,
        /// Percent load per CPU worker.
        #[serde(default = "full_load")]
        cpu_load: u32,
        /// Memory a worker holds, `"256MB"` or `"30%"` (none: no memory stress).
        #[serde(default)]
        memory: Option<String>,
    },
}

fn full_load() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    #[default]
    Node,
    Cluster,
}

/// Where a network fault acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The bus fault wrapper inside each node.
    #[default]
    Bus,
    /// Real cuts: each node in its own network namespace, iptables and
    /// `tc netem` there (needs root).
    Netns,
}

/// How a partition splits the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// One node against the rest.
    Isolate,
    /// A random minority against the majority.
    Majority,
    /// Two sides that cannot hear each other, and one node both hear.
    Bridge,
    /// Each node hears only its two neighbours in a ring (5 or more nodes
    /// make this differ from no partition).
    Ring,
    /// One node stops hearing the others; they still hear it.
    OneWay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskPoint {
    /// Every Raft log append.
    RaftLog,
    /// Every write of a shard (applied points, chunks, state, metadata).
    StorageWrite,
    /// Every sample and state read of a shard.
    StorageRead,
}

impl DiskPoint {
    /// The failpoint's name in the node.
    pub fn failpoint(self) -> &'static str {
        match self {
            DiskPoint::RaftLog => "raft::log::write",
            DiskPoint::StorageWrite => "storage::write",
            DiskPoint::StorageRead => "storage::read",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskError {
    /// The write's fsync fails.
    Fsync,
    /// The disk is full.
    Enospc,
    /// The device fails.
    Eio,
    /// Every call takes `ms` longer.
    Slow,
    /// Every write, create and fsync fails with EROFS, as on a file system
    /// remounted read-only (Chaos Mesh's IOChaos; Kubernetes only).
    ReadOnly,
    /// The files' permissions read 0444 (IOChaos attrOverride): files opened
    /// afterwards cannot be written, files already open still can
    /// (Kubernetes only).
    Permissions,
}

impl DiskError {
    pub fn name(self) -> &'static str {
        match self {
            DiskError::Fsync => "fsync",
            DiskError::Enospc => "enospc",
            DiskError::Eio => "eio",
            DiskError::Slow => "slow",
            DiskError::ReadOnly => "read-only",
            DiskError::Permissions => "permissions",
        }
    }
}

/// A plan with its durations parsed and checked.
#[derive(Debug, Clone)]
pub struct CheckedPlan {
    pub plan: Plan,
    pub duration: Duration,
    pub interval: Duration,
    pub hold: Duration,
}

impl Plan {
    /// Whether the nodes must run in network namespaces of their own.
    pub fn needs_netns(&self) -> bool {
        self.faults.iter().any(|f| {
            matches!(
                f,
                FaultSpec::Partition {
                    via: Via::Netns,
                    ..
                } | FaultSpec::Loss {
                    via: Via::Netns,
                    ..
                } | FaultSpec::Delay {
                    via: Via::Netns,
                    ..
                } | FaultSpec::Duplicate { via: Via::Netns }
            )
        })
    }

    /// Why the plan cannot run on local processes (faults only Chaos Mesh
    /// injects), if it cannot.
    pub fn kubernetes_only(&self) -> Option<String> {
        if !self.recurring.is_empty() {
            return Some("[[recurring]] faults need Chaos Mesh's Schedule (--kubernetes)".into());
        }
        self.faults.iter().find_map(|f| match f {
            FaultSpec::Bandwidth { .. } => {
                Some("bandwidth faults need Chaos Mesh (--kubernetes)".to_string())
            }
            FaultSpec::Stress { .. } => {
                Some("stress faults need Chaos Mesh (--kubernetes)".to_string())
            }
            FaultSpec::Disk {
                error: DiskError::ReadOnly | DiskError::Permissions,
                ..
            } => Some(
                "read-only and permissions disk faults need Chaos Mesh's IOChaos (--kubernetes)"
                    .to_string(),
            ),
            _ => None,
        })
    }

    /// Whether a fault of the plan needs libfaketime.
    pub fn needs_faketime(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, FaultSpec::Faketime { .. }))
    }

    /// Whether a fault of the plan needs the powercut library.
    pub fn needs_powercut(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, FaultSpec::PowerCut { .. }))
    }

    /// Reads `builtin:<name>` or a TOML file.
    pub fn load(source: &str) -> Result<Plan, ChaosError> {
        if let Some(name) = source.strip_prefix("builtin:") {
            return builtin(name);
        }
        let text = std::fs::read_to_string(source)
            .map_err(|e| ChaosError::Plan(format!("{source}: {e}")))?;
        Plan::parse(&text).map_err(|e| ChaosError::Plan(format!("{source}: {e}")))
    }

    pub fn parse(text: &str) -> Result<Plan, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Parses the durations and checks every value is one a run can use.
    pub fn check(self) -> Result<CheckedPlan, ChaosError> {
        let parse = |what: &str, s: &str| {
            humantime::parse_duration(s).map_err(|e| ChaosError::Plan(format!("{what} {s:?}: {e}")))
        };
        let duration = parse("duration", &self.duration)?;
        let interval = parse("interval", &self.interval)?;
        let hold = parse("hold", &self.hold)?;
        if self.nodes < 3 {
            return Err(ChaosError::Plan(
                "nodes must be 3 or more (one node down must leave a majority)".into(),
            ));
        }
        if self.nodes > 9 || self.shards == 0 || self.shards > 64 {
            return Err(ChaosError::Plan(
                "nodes must be at most 9 and shards 1..=64 on one machine".into(),
            ));
        }
        if self.faults.is_empty() {
            return Err(ChaosError::Plan("no [[fault]] to inject".into()));
        }
        if !self.workload.register && !self.workload.series {
            return Err(ChaosError::Plan("no workload is on".into()));
        }
        if !(1..=64).contains(&self.workload.clients) || !(1..=1024).contains(&self.workload.keys) {
            return Err(ChaosError::Plan(
                "workload.clients must be 1..=64 and workload.keys 1..=1024".into(),
            ));
        }
        if interval.is_zero() || hold.is_zero() {
            return Err(ChaosError::Plan("interval and hold must be above 0".into()));
        }
        for recurring in &self.recurring {
            let cron = recurring.cron.trim();
            if cron.is_empty() || cron.len() > 100 {
                return Err(ChaosError::Plan(
                    "a recurring fault needs a cron of 1..=100 characters".into(),
                ));
            }
            if matches!(recurring.fault, FaultSpec::PowerCut { .. }) {
                return Err(ChaosError::Plan("a power cut cannot recur".into()));
            }
        }
        for fault in self
            .faults
            .iter()
            .chain(self.recurring.iter().map(|r| &r.fault))
        {
            match fault {
                FaultSpec::Bandwidth { rate } if !valid_rate(rate) => {
                    return Err(ChaosError::Plan(format!(
                        "bandwidth rate {rate:?} is not a number with bit, kbit, mbit, gbit, bps, kbps, mbps or gbps"
                    )))
                }
                FaultSpec::Stress {
                    cpu_workers,
                    cpu_load,
                    memory,
                } => {
                    if *cpu_workers > 64 || *cpu_load > 100 {
                        return Err(ChaosError::Plan(
                            "stress cpu_workers must be at most 64 and cpu_load at most 100".into(),
                        ));
                    }
                    if *cpu_workers == 0 && memory.is_none() {
                        return Err(ChaosError::Plan(
                            "a stress fault needs cpu_workers or memory".into(),
                        ));
                    }
                    if let Some(m) = memory {
                        if !valid_size(m) {
                            return Err(ChaosError::Plan(format!(
                                "stress memory {m:?} is not a size like 256MB or a share like 30%"
                            )));
                        }
                    }
                }
                FaultSpec::Partition {
                    split: Split::Ring, ..
                } if self.nodes < 5 => {
                    return Err(ChaosError::Plan(
                        "a ring partition needs 5 or more nodes (with fewer every node hears every other)".into(),
                    ))
                }
                FaultSpec::Partition {
                    split: Split::Bridge | Split::Ring,
                    via: Via::Netns,
                } => {
                    return Err(ChaosError::Plan(
                        "bridge and ring partitions need the bus (via = \"bus\"): with one nats-server a node cut from it is cut from every node".into(),
                    ))
                }
                FaultSpec::Loss { probability, .. } if !(0.0..=1.0).contains(probability) => {
                    return Err(ChaosError::Plan(format!(
                        "loss probability {probability} is not within 0..=1"
                    )))
                }
                FaultSpec::Delay { ms, .. } if *ms == 0 || *ms > 60_000 => {
                    return Err(ChaosError::Plan("delay ms must be 1..=60000".into()))
                }
                FaultSpec::Disk {
                    error: DiskError::Slow,
                    ms,
                    ..
                } if *ms == 0 || *ms > 60_000 => {
                    return Err(ChaosError::Plan("a slow disk needs ms in 1..=60000".into()))
                }
                FaultSpec::Clock { offset } | FaultSpec::Faketime { offset } => {
                    let d = parse("clock offset", offset)?;
                    if d.is_zero() || d > Duration::from_secs(10 * 366 * 86_400) {
                        return Err(ChaosError::Plan(
                            "clock offset must be above 0 and at most ten years".into(),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(CheckedPlan {
            plan: self,
            duration,
            interval,
            hold,
        })
    }
}

/// `1mbit`: digits, then a unit tc understands (tc's `mbps` is megabytes
/// per second, `mbit` megabits).
fn valid_rate(rate: &str) -> bool {
    let digits = rate.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &rate[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["bit", "kbit", "mbit", "gbit", "bps", "kbps", "mbps", "gbps"].contains(&unit)
}

/// `256MB` or `30%`, as stress-ng takes a size.
fn valid_size(size: &str) -> bool {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%');
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["B", "KB", "MB", "GB", "%"].contains(&unit)
}

/// The names `builtin:<name>` accepts.
pub const BUILTINS: [&str; 6] = ["smoke", "crashes", "partitions", "netns", "disk", "clock"];

/// A built-in plan.
pub fn builtin(name: &str) -> Result<Plan, ChaosError> {
    let text = match name {
        // One fault of every class, briefly: what CI runs on every change.
        "smoke" => {
            r#"
            name = "smoke"
            duration = "30s"
            interval = "1s"
            hold = "2s"
            [[fault]]
            kind = "kill"
            [[fault]]
            kind = "nats-restart"
            [[fault]]
            kind = "partition"
            split = "isolate"
            [[fault]]
            kind = "disk"
            point = "raft-log"
            error = "fsync"
            [[fault]]
            kind = "clock"
            offset = "1h"
            [[fault]]
            kind = "power-cut"
            "#
        }
        "crashes" => {
            r#"
            name = "crashes"
            duration = "60s"
            [[fault]]
            kind = "kill"
            [[fault]]
            kind = "terminate"
            [[fault]]
            kind = "pause"
            [[fault]]
            kind = "nats-restart"
            "#
        }
        "partitions" => {
            r#"
            name = "partitions"
            duration = "60s"
            [[fault]]
            kind = "partition"
            split = "isolate"
            [[fault]]
            kind = "partition"
            split = "majority"
            [[fault]]
            kind = "partition"
            split = "bridge"
            [[fault]]
            kind = "partition"
            split = "one-way"
            [[fault]]
            kind = "loss"
            probability = 0.3
            [[fault]]
            kind = "delay"
            ms = 300
            [[fault]]
            kind = "duplicate"
            "#
        }
        // The same faults as real cuts between network namespaces (root only).
        "netns" => {
            r#"
            name = "netns"
            duration = "40s"
            [[fault]]
            kind = "partition"
            split = "isolate"
            via = "netns"
            [[fault]]
            kind = "partition"
            split = "majority"
            via = "netns"
            [[fault]]
            kind = "loss"
            probability = 0.3
            via = "netns"
            "#
        }
        "disk" => {
            r#"
            name = "disk"
            duration = "60s"
            [[fault]]
            kind = "disk"
            point = "raft-log"
            error = "fsync"
            [[fault]]
            kind = "disk"
            point = "storage-write"
            error = "enospc"
            [[fault]]
            kind = "disk"
            point = "storage-read"
            error = "eio"
            [[fault]]
            kind = "disk"
            point = "raft-log"
            error = "slow"
            ms = 300
            [[fault]]
            kind = "power-cut"
            [[fault]]
            kind = "power-cut"
            scope = "cluster"
            "#
        }
        "clock" => {
            r#"
            name = "clock"
            duration = "40s"
            [[fault]]
            kind = "clock"
            offset = "10m"
            [[fault]]
            kind = "clock"
            offset = "30d"
            [[fault]]
            kind = "faketime"
            offset = "2h"
            "#
        }
        other => {
            return Err(ChaosError::Plan(format!(
                "no built-in plan {other:?} (one of {})",
                BUILTINS.join(", ")
            )))
        }
    };
    Plan::parse(text).map_err(|e| ChaosError::Plan(format!("builtin:{name}: {e}")))
}

fn default_name() -> String {
    "custom".into()
}
fn default_nodes() -> u64 {
    3
}
fn default_shards() -> u32 {
    2
}
fn default_duration() -> String {
    "60s".into()
}
fn default_gap() -> String {
    "3s".into()
}
fn default_clients() -> usize {
    4
}
fn default_keys() -> usize {
    4
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses_and_checks() {
        for name in BUILTINS {
            let plan = builtin(name).unwrap().check().unwrap();
            assert!(!plan.plan.faults.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_plan_file_names_its_faults_and_bad_values_are_refused() {
        let plan = Plan::parse(
            r#"
            nodes = 5
            duration = "2m"
            [workload]
            series = false
            [[fault]]
            kind = "partition"
            split = "ring"
            [[fault]]
            kind = "disk"
            point = "storage-write"
            error = "slow"
            ms = 50
            "#,
        )
        .unwrap();
        assert_eq!(plan.nodes, 5);
        assert_eq!(
            plan.faults[0],
            FaultSpec::Partition {
                split: Split::Ring,
                via: Via::Bus
            }
        );
        let checked = plan.check().unwrap();
        assert_eq!(checked.duration, Duration::from_secs(120));
        assert!(!checked.plan.workload.series);

        for bad in [
            "[[fault]]\nkind = \"meteor\"",
            "[[fault]]\nkind = \"loss\"\nprobability = 2.0",
            "nodes = 2\n[[fault]]\nkind = \"kill\"",
            "duration = \"soon\"\n[[fault]]\nkind = \"kill\"",
            "[[fault]]\nkind = \"kill\"\nextra = 1",
            "faults = []",
        ] {
            let refused = Plan::parse(bad)
                .map_err(ChaosError::Plan)
                .and_then(Plan::check);
            assert!(refused.is_err(), "{bad}");
        }
        assert!(Plan::load("builtin:nothing").is_err());
    }
}

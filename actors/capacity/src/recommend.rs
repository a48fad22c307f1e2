//! Recommendations from forecasts: what to change before a resource runs
//! out, the exact change, and what it is expected to do, computed from the
//! forecast. Pure: the service gathers the inputs and applies the changes.

use std::time::Duration;

use serde::Serialize;

/// Disk or memory is planned to stay under this share of its limit.
pub const TARGET_SHARE: f64 = 0.8;

/// What one resource's forecast says at the horizon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlook {
    pub current: f64,
    pub limit: f64,
    /// The expected value at the horizon, and the interval's upper edge.
    pub mean: f64,
    pub upper: f64,
    /// When the expected path, and the upper edge, reach the limit (ms).
    pub exhausted_ms: Option<i64>,
    pub earliest_exhausted_ms: Option<i64>,
}

/// What recommendations are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub horizon: Duration,
    pub disk: Option<Outlook>,
    pub memory: Option<Outlook>,
    /// The raw retention in effect (`None`: raw data is kept forever).
    pub raw_retention: Option<Duration>,
    /// The shortest raw retention a recommendation may propose.
    pub min_raw_retention: Duration,
    /// Bytes each shard may keep of decoded chunks, and the shards here.
    pub decoded_cache_bytes: u64,
    pub local_shards: usize,
    /// The cluster: members, shards (fixed when it was created) and the
    /// replicas per shard asked for.
    pub nodes: usize,
    pub shards: u32,
    pub replication: usize,
    /// What re-encoding a sample of this node's newest chunks measured
    /// (`None`: no chunks yet).
    pub chunks: Option<ChunkProfile>,
}

/// Bytes one sample takes in a series' head (timestamp and value).
pub const HEAD_SAMPLE_BYTES: f64 = 16.0;

/// A compression level is proposed only when it saves at least this share.
const MIN_COMPRESSION_SAVING: f64 = 0.05;
/// A compression level whose encoding is at most this many times slower
/// may apply itself (auto-tuning).
const LOW_RISK_SLOWDOWN: f64 = 4.0;
/// A smaller chunk size is low risk when chunks grow at most this much.
const LOW_RISK_DISK_COST: f64 = 1.10;

/// What the node's stored chunks measure: the newest chunks of its
/// replicas, decoded and encoded again under each candidate setting, and
/// its series' heads. Measured, not modelled: the codec picks the smallest
/// of several encodings per chunk, so only trying says what a setting does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkProfile {
    pub chunks: usize,
    pub samples: usize,
    /// Bytes a sample takes in the sampled chunks as stored.
    pub stored_bytes_per_sample: f64,
    /// Bytes of chunks on this node, in SST files and memtables (the rest
    /// of its disk is indexes, the Raft log and snapshots).
    pub chunk_bytes: u64,
    /// The compression level and chunk size in effect.
    pub compression_level: i32,
    pub max_chunk_samples: usize,
    /// The sampled chunks encoded at each level (the one in effect too).
    pub levels: Vec<LevelTrial>,
    /// The sampled chunks cut at each smaller chunk size, at the level in
    /// effect.
    pub sizes: Vec<SizeTrial>,
    /// Series with samples in their heads, and those samples.
    pub head_series: usize,
    pub head_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelTrial {
    pub level: i32,
    pub bytes_per_sample: f64,
    /// CPU seconds to encode a million samples at this level.
    pub encode_seconds_per_million: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeTrial {
    pub max_chunk_samples: usize,
    pub bytes_per_sample: f64,
    /// Head samples beyond this size now: what cutting at it frees at once.
    pub head_samples_over: u64,
}

impl ChunkProfile {
    fn at_level_in_effect(&self) -> Option<&LevelTrial> {
        self.levels
            .iter()
            .find(|t| t.level == self.compression_level)
    }
}

/// The exact change a recommendation makes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// A run-time setting (`/api/config`) `apply` sets, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Whether `apply` can make it (a run-time setting) or an operator must.
    pub applicable: bool,
    /// The change as an operator makes it: a command or a configuration line.
    pub how: String,
}

/// What the change is expected to do, from the forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effect {
    pub resource: &'static str,
    /// Expected value at the horizon without and with the change.
    pub at_horizon_before: f64,
    pub at_horizon_after: f64,
    pub limit: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// Stable for the same kind and change, so `apply` names what was shown.
    pub id: String,
    /// `retention`, `compression`, `chunk_size`, `memory_budget`,
    /// `add_node`, `shard_count` or `disk_size`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `high`: the expected path runs out within the horizon; `medium`: the
    /// interval's upper edge does, or the expected path passes the target.
    pub priority: &'static str,
    /// `low` changes may apply themselves (auto-tuning); `high` ones wait
    /// for an operator.
    pub risk: &'static str,
    pub description: String,
    pub effect: Effect,
    pub change: Change,
}

fn priority(o: &Outlook) -> Option<&'static str> {
    if o.exhausted_ms.is_some() {
        Some("high")
    } else if o.earliest_exhausted_ms.is_some() || o.mean > TARGET_SHARE * o.limit {
        Some("medium")
    } else {
        None
    }
}

/// `30d`, `36h`, `90m`: the largest whole unit (retention is at least 1 h).
pub fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s.div_ceil(60))
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// Rounds down to whole hours (what retention works in), at least 1 h.
fn whole_hours(secs: f64) -> Duration {
    Duration::from_secs(((secs / 3600.0).floor().max(1.0) as u64) * 3600)
}

/// Every recommendation the inputs call for, most urgent first.
pub fn recommend(inputs: &Inputs) -> Vec<Recommendation> {
    let mut out = Vec::new();
    if let Some(disk) = &inputs.disk {
        disk_recommendations(inputs, disk, &mut out);
    }
    if let Some(memory) = &inputs.memory {
        memory_recommendations(inputs, memory, &mut out);
    }
    if let Some(profile) = &inputs.chunks {
        if let Some(disk) = &inputs.disk {
            compression_recommendation(inputs, disk, profile, &mut out);
        }
        if let Some(memory) = &inputs.memory {
            chunk_size_recommendation(inputs, memory, profile, &mut out);
        }
    }
    out.sort_by_key(|r| (r.priority != "high", r.risk != "low"));
    out
}

fn disk_recommendations(inputs: &Inputs, disk: &Outlook, out: &mut Vec<Recommendation>) {
    let Some(priority) = priority(disk) else {
        return;
    };
    let target = TARGET_SHARE * disk.limit;
    let horizon = inputs.horizon.as_secs_f64();
    let growth = (disk.mean - disk.current) / horizon;
    // The retention that keeps the expected path at the target. With a
    // retention in effect, disk is taken to scale with it; without one, the
    // node keeps what it ingests, and a retention R holds about growth × R.
    let (proposed, basis) = match inputs.raw_retention {
        Some(r) => (
            r.as_secs_f64() * target / disk.mean,
            format!(
                "disk held scales with retention: {} × {:.2}",
                duration_text(r),
                target / disk.mean
            ),
        ),
        None if growth > 0.0 => (
            target / growth,
            format!(
                "raw data is kept forever and disk grows {}/day: a retention R holds about growth × R",
                gib(growth * 86_400.0)
            ),
        ),
        None => {
            // Full but not growing, with nothing to delete by age: only
            // more disk helps.
            out.push(more_disk(
                inputs,
                priority,
                disk,
                format!(
                    "disk is at {} of {} and raw data is kept forever without growing, so no retention follows from growth",
                    gib(disk.current),
                    gib(disk.limit)
                ),
            ));
            return;
        }
    };
    let floor = inputs.min_raw_retention;
    let proposed = whole_hours(proposed).max(floor);
    let current_secs = inputs.raw_retention.map(|r| r.as_secs_f64());
    if current_secs.is_some_and(|c| proposed.as_secs_f64() >= c) {
        // Retention is at its floor already: only more disk helps.
        out.push(more_disk(
            inputs,
            priority,
            disk,
            format!(
                "disk is forecast to reach {} of {} within {}, and raw retention is at its floor ({})",
                gib(disk.mean),
                gib(disk.limit),
                duration_text(inputs.horizon),
                duration_text(floor)
            ),
        ));
        return;
    }
    let after = match current_secs {
        Some(c) => disk.mean * proposed.as_secs_f64() / c,
        None => disk.mean.min(growth * proposed.as_secs_f64()),
    };
    let cut = current_secs.map_or(1.0, |c| proposed.as_secs_f64() / c);
    let to = duration_text(proposed);
    let from = inputs
        .raw_retention
        .map_or_else(|| "none".to_string(), duration_text);
    out.push(Recommendation {
        id: format!("retention-raw-{to}"),
        kind: "retention",
        priority,
        // Halving retention or more, or setting one where data was kept
        // forever, deletes data an operator may want: theirs to decide.
        risk: if current_secs.is_some() && cut >= 0.5 {
            "low"
        } else {
            "high"
        },
        description: format!(
            "disk is forecast at {} of {} in {}; raw retention {to} (now {from}) keeps it near {} ({basis}). Data older than {to} is deleted.",
            gib(disk.mean),
            gib(disk.limit),
            duration_text(inputs.horizon),
            gib(after),
        ),
        effect: Effect {
            resource: "disk",
            at_horizon_before: disk.mean,
            at_horizon_after: after,
            limit: disk.limit,
        },
        change: Change {
            setting: Some("retention.raw"),
            from: Some(from),
            to: Some(to.clone()),
            applicable: true,
            how: format!(
                "chronicle capacity apply <id>, or PUT /api/config/retention.raw {{\"value\": \"{to}\"}}"
            ),
        },
    });
    if after > target && proposed == floor {
        out.push(more_disk(
            inputs,
            priority,
            disk,
            format!(
                "even at the shortest raw retention allowed ({}) disk is forecast near {} of {}",
                duration_text(floor),
                gib(after),
                gib(disk.limit)
            ),
        ));
    }
}

/// The share of the data one node holds with `shards` shards of
/// `replication` replicas spread evenly over `nodes` nodes: the busiest
/// node holds ⌈shards × replicas / nodes⌉ shard replicas.
pub fn per_node_share(shards: u32, replication: usize, nodes: usize) -> f64 {
    let nodes = nodes.max(1) as u64;
    let shards = u64::from(shards.max(1));
    let replicas = (replication.max(1) as u64).min(nodes);
    (shards * replicas).div_ceil(nodes) as f64 / shards as f64
}

/// Largest cluster a recommendation proposes growing to in one step.
const MAX_NODES_ADDED: usize = 8;
const MAX_SHARDS: u32 = 64;

/// More disk for this node's data: another node if the shards spread onto
/// it (they cannot when every node already holds a replica of every shard
/// it could), else a cluster with more shards (fixed when a cluster is
/// created: a new cluster and a restore), else a larger volume.
fn more_disk(inputs: &Inputs, priority: &'static str, o: &Outlook, why: String) -> Recommendation {
    let (s, r, n) = (
        inputs.shards.max(1),
        inputs.replication,
        inputs.nodes.max(1),
    );
    let now = per_node_share(s, r, n);
    let effect = |share: f64| Effect {
        resource: "disk",
        at_horizon_before: o.mean,
        at_horizon_after: o.mean * share / now,
        limit: o.limit,
    };
    let layout = format!(
        "{s} shard{} × {} replica{} on {n} node{}",
        if s == 1 { "" } else { "s" },
        r.min(n),
        if r.min(n) == 1 { "" } else { "s" },
        if n == 1 { "" } else { "s" }
    );
    if let Some(k) = (1..=MAX_NODES_ADDED).find(|k| per_node_share(s, r, n + k) < now - 1e-9) {
        let share = per_node_share(s, r, n + k);
        return Recommendation {
            id: format!("add-node-{k}"),
            kind: "add_node",
            priority,
            risk: "high",
            description: format!(
                "{why}: {} node{} ({layout} now) leave{} this node {:.0} % of the data it holds (about {} at the horizon)",
                k,
                if k == 1 { "" } else { "s" },
                if k == 1 { "s" } else { "" },
                100.0 * share / now,
                gib(o.mean * share / now)
            ),
            effect: effect(share),
            change: Change {
                setting: None,
                from: Some(n.to_string()),
                to: Some((n + k).to_string()),
                applicable: false,
                how: format!(
                    "start {k} node{} with --join, then `chronicle cluster add-node <id>` for each (Kubernetes: helm upgrade --reuse-values --set replicas={})",
                    if k == 1 { "" } else { "s" },
                    n + k
                ),
            },
        };
    }
    let grown = (1..=MAX_NODES_ADDED).find_map(|k| {
        (s + 1..=MAX_SHARDS.max(s))
            .find(|&s2| per_node_share(s2, r, n + k) < now - 1e-9)
            .map(|s2| (k, s2))
    });
    if let Some((k, s2)) = grown {
        let share = per_node_share(s2, r, n + k);
        return Recommendation {
            id: format!("shard-count-{s2}"),
            kind: "shard_count",
            priority,
            risk: "high",
            description: format!(
                "{why}. Another node would not help: with {layout} every node holds a replica of every shard it can. A cluster of {} nodes with {s2} shards leaves each node {:.0} % of what this one holds (about {} at the horizon); the shard count is fixed when a cluster is created, so it means a new cluster and a restore",
                n + k,
                100.0 * share / now,
                gib(o.mean * share / now)
            ),
            effect: effect(share),
            change: Change {
                setting: None,
                from: Some(s.to_string()),
                to: Some(s2.to_string()),
                applicable: false,
                how: format!(
                    "chronicle backup take --http <every shard leader, from chronicle cluster status> --out <dir>; start {} nodes with --shards {s2} --initial-nodes <ids> (Kubernetes: a new release with --set cluster.shards={s2},replicas={},initialMembers={}); chronicle backup restore --from <dir> --http <new cluster>",
                    n + k,
                    n + k,
                    n + k
                ),
            },
        };
    }
    Recommendation {
        id: "disk-size".into(),
        kind: "disk_size",
        priority,
        risk: "high",
        description: format!(
            "{why}. With {layout} and replication {r}, every node holds every shard however many nodes join: give the data directory a larger volume"
        ),
        effect: Effect {
            resource: "disk",
            at_horizon_before: o.mean,
            at_horizon_after: o.mean,
            limit: o.limit,
        },
        change: Change {
            setting: None,
            from: Some(format!("{:.0}", o.limit)),
            to: Some(format!("{:.0}", o.mean / TARGET_SHARE)),
            applicable: false,
            how: "grow the data directory's volume to at least the `to` bytes (Kubernetes: the PersistentVolumeClaim's storage request)".into(),
        },
    }
}

/// A stronger compression level when the disk fills and the node's own
/// chunks, encoded again at that level, come out smaller.
fn compression_recommendation(
    inputs: &Inputs,
    disk: &Outlook,
    profile: &ChunkProfile,
    out: &mut Vec<Recommendation>,
) {
    let (Some(priority), Some(base)) = (priority(disk), profile.at_level_in_effect()) else {
        return;
    };
    let Some(best) = profile
        .levels
        .iter()
        .filter(|t| t.level != profile.compression_level)
        .min_by(|a, b| a.bytes_per_sample.total_cmp(&b.bytes_per_sample))
    else {
        return;
    };
    if base.bytes_per_sample <= 0.0 {
        return;
    }
    let ratio = best.bytes_per_sample / base.bytes_per_sample;
    if ratio > 1.0 - MIN_COMPRESSION_SAVING {
        return;
    }
    // Only chunks cut from now on shrink: the growth to the horizon, in
    // the share of it that is chunks.
    let share = if disk.current > 0.0 {
        (profile.chunk_bytes as f64 / disk.current).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let growth = (disk.mean - disk.current).max(0.0);
    let after = disk.current + growth * (share * ratio + 1.0 - share);
    let slowdown = if base.encode_seconds_per_million > 0.0 {
        best.encode_seconds_per_million / base.encode_seconds_per_million
    } else {
        1.0
    };
    out.push(Recommendation {
        id: format!("compression-level-{}", best.level),
        kind: "compression",
        priority,
        risk: if slowdown <= LOW_RISK_SLOWDOWN {
            "low"
        } else {
            "high"
        },
        description: format!(
            "disk is forecast at {} of {} in {}; this node's newest {} chunks encoded at level {} take {:.3} bytes a sample against {:.3} at {} ({:.0} % less), encoding {:.1}× as long ({:.2} s a million samples). Chunks cut from now on shrink; the disk reaches about {} at the horizon",
            gib(disk.mean),
            gib(disk.limit),
            duration_text(inputs.horizon),
            profile.chunks,
            best.level,
            best.bytes_per_sample,
            base.bytes_per_sample,
            profile.compression_level,
            100.0 * (1.0 - ratio),
            slowdown,
            best.encode_seconds_per_million,
            gib(after)
        ),
        effect: Effect {
            resource: "disk",
            at_horizon_before: disk.mean,
            at_horizon_after: after,
            limit: disk.limit,
        },
        change: Change {
            setting: Some("storage.compression_level"),
            from: Some(profile.compression_level.to_string()),
            to: Some(best.level.to_string()),
            applicable: true,
            how: format!(
                "chronicle capacity apply <id>, or PUT /api/config/storage.compression_level {{\"value\": \"{}\"}}",
                best.level
            ),
        },
    });
}

/// Smaller chunks when memory runs short and series' heads hold much of
/// it: a head is cut into a chunk at the chunk size, so a smaller size
/// frees the head samples beyond it, at the cost the trial measured in
/// bytes a sample on disk.
fn chunk_size_recommendation(
    inputs: &Inputs,
    memory: &Outlook,
    profile: &ChunkProfile,
    out: &mut Vec<Recommendation>,
) {
    let disk_tight = inputs.disk.as_ref().and_then(priority).is_some();
    let (Some(priority), Some(base)) = (priority(memory), profile.at_level_in_effect()) else {
        return;
    };
    let need = (memory.mean - TARGET_SHARE * memory.limit)
        .max(memory.upper - memory.limit)
        .max(0.0);
    let freed = |t: &SizeTrial| t.head_samples_over as f64 * HEAD_SAMPLE_BYTES;
    let mut trials: Vec<&SizeTrial> = profile
        .sizes
        .iter()
        .filter(|t| t.max_chunk_samples < profile.max_chunk_samples)
        .collect();
    trials.sort_by_key(|t| std::cmp::Reverse(t.max_chunk_samples));
    // The largest size that frees enough, else the one that frees most.
    let Some(pick) = trials
        .iter()
        .find(|t| freed(t) >= need)
        .or_else(|| trials.iter().max_by(|a, b| freed(a).total_cmp(&freed(b))))
    else {
        return;
    };
    let saved = freed(pick);
    // Heads are not where the memory goes: a smaller size would not help.
    if saved < (0.01 * memory.limit).max(16.0 * (1 << 20) as f64) {
        return;
    }
    let cost = if base.bytes_per_sample > 0.0 {
        pick.bytes_per_sample / base.bytes_per_sample
    } else {
        1.0
    };
    let after = memory.mean - saved;
    let to = pick.max_chunk_samples;
    out.push(Recommendation {
        id: format!("chunk-size-{to}"),
        kind: "chunk_size",
        priority,
        risk: if cost <= LOW_RISK_DISK_COST && !disk_tight {
            "low"
        } else {
            "high"
        },
        description: format!(
            "memory is forecast at {} of {} in {}; {} series hold {} samples in their heads, and cutting chunks at {to} samples (now {}) frees at least {} at once. This node's newest {} chunks cut at {to} take {:.3} bytes a sample against {:.3} ({:+.0} % on disk for chunks cut from now on)",
            gib(memory.mean),
            gib(memory.limit),
            duration_text(inputs.horizon),
            profile.head_series,
            profile.head_samples,
            profile.max_chunk_samples,
            gib(saved),
            profile.chunks,
            pick.bytes_per_sample,
            base.bytes_per_sample,
            100.0 * (cost - 1.0)
        ),
        effect: Effect {
            resource: "memory",
            at_horizon_before: memory.mean,
            at_horizon_after: after,
            limit: memory.limit,
        },
        change: Change {
            setting: Some("storage.max_chunk_samples"),
            from: Some(profile.max_chunk_samples.to_string()),
            to: Some(to.to_string()),
            applicable: true,
            how: format!(
                "chronicle capacity apply <id>, or PUT /api/config/storage.max_chunk_samples {{\"value\": \"{to}\"}}"
            ),
        },
    });
}

fn memory_recommendations(inputs: &Inputs, memory: &Outlook, out: &mut Vec<Recommendation>) {
    let Some(priority) = priority(memory) else {
        return;
    };
    let target = TARGET_SHARE * memory.limit;
    let excess = memory.mean - target;
    // The configuration's `decoded_cache_bytes` is the node's, split
    // evenly over its shard replicas.
    let caches = inputs.decoded_cache_bytes as f64 * inputs.local_shards.max(1) as f64;
    if inputs.decoded_cache_bytes > 0 && excess > 0.0 && excess < caches {
        // Whole MiB.
        let budget = (((caches - excess).max(0.0) as u64) >> 20) << 20;
        let now = caches as u64;
        out.push(Recommendation {
            id: format!("memory-budget-{}m", budget >> 20),
            kind: "memory_budget",
            priority,
            risk: "high",
            description: format!(
                "memory is forecast at {} of {} in {}; a decoded-chunk cache of {} MiB for the node (now {} MiB over {} shard replicas) gives back about {} (queries decode more often)",
                gib(memory.mean),
                gib(memory.limit),
                duration_text(inputs.horizon),
                budget >> 20,
                now >> 20,
                inputs.local_shards,
                gib(excess)
            ),
            effect: Effect {
                resource: "memory",
                at_horizon_before: memory.mean,
                at_horizon_after: target,
                limit: memory.limit,
            },
            change: Change {
                setting: None,
                from: Some(now.to_string()),
                to: Some(budget.to_string()),
                applicable: false,
                how: format!(
                    "decoded_cache_bytes = {budget} in the node's configuration file, then restart the node"
                ),
            },
        });
    } else {
        out.push(Recommendation {
            id: "memory-limit".into(),
            kind: "memory_budget",
            priority,
            risk: "high",
            description: format!(
                "memory is forecast at {} of {} in {}, more than the decoded-chunk caches give back: raise the node's memory limit or add a node",
                gib(memory.mean),
                gib(memory.limit),
                duration_text(inputs.horizon)
            ),
            effect: Effect {
                resource: "memory",
                at_horizon_before: memory.mean,
                at_horizon_after: memory.mean,
                limit: memory.limit,
            },
            change: Change {
                setting: None,
                from: Some(format!("{:.0}", memory.limit)),
                to: Some(format!("{:.0}", memory.mean / TARGET_SHARE)),
                applicable: false,
                how: "raise the container's memory limit (Kubernetes: resources.limits.memory) to at least the `to` bytes".into(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = (1u64 << 30) as f64;
    const DAY: u64 = 86_400;

    fn inputs(disk: Option<Outlook>, retention: Option<u64>) -> Inputs {
        Inputs {
            horizon: Duration::from_secs(7 * DAY),
            disk,
            memory: None,
            raw_retention: retention.map(|d| Duration::from_secs(d * DAY)),
            min_raw_retention: Duration::from_secs(DAY),
            decoded_cache_bytes: 256 << 20,
            local_shards: 4,
            nodes: 1,
            shards: 4,
            replication: 1,
            chunks: None,
        }
    }

    /// Chunks of 2048 samples at level 9 taking 1.0 bytes a sample.
    fn profile(levels: &[(i32, f64, f64)], sizes: &[(usize, f64, u64)]) -> ChunkProfile {
        ChunkProfile {
            chunks: 500,
            samples: 1_000_000,
            stored_bytes_per_sample: 1.0,
            chunk_bytes: 50 << 30,
            compression_level: 9,
            max_chunk_samples: 2048,
            levels: levels
                .iter()
                .map(
                    |&(level, bytes_per_sample, encode_seconds_per_million)| LevelTrial {
                        level,
                        bytes_per_sample,
                        encode_seconds_per_million,
                    },
                )
                .collect(),
            sizes: sizes
                .iter()
                .map(
                    |&(max_chunk_samples, bytes_per_sample, head_samples_over)| SizeTrial {
                        max_chunk_samples,
                        bytes_per_sample,
                        head_samples_over,
                    },
                )
                .collect(),
            head_series: 100_000,
            head_samples: 150_000_000,
        }
    }

    fn filling(current: f64, mean: f64, limit: f64) -> Outlook {
        Outlook {
            current,
            limit,
            mean,
            upper: mean * 1.1,
            exhausted_ms: (mean >= limit).then_some(1),
            earliest_exhausted_ms: (mean * 1.1 >= limit).then_some(1),
        }
    }

    #[test]
    fn a_disk_that_stays_under_its_target_needs_nothing() {
        assert!(recommend(&inputs(
            Some(filling(10.0 * GIB, 20.0 * GIB, 100.0 * GIB)),
            Some(30)
        ))
        .is_empty());
    }

    #[test]
    fn a_filling_disk_gets_a_shorter_retention_scaled_to_the_target() {
        let r = recommend(&inputs(
            Some(filling(60.0 * GIB, 120.0 * GIB, 100.0 * GIB)),
            Some(30),
        ));
        assert_eq!(r.len(), 1, "{r:#?}");
        let r = &r[0];
        assert_eq!((r.kind, r.priority), ("retention", "high"));
        // 30 d × 80 / 120 = 20 d.
        assert_eq!(r.change.to.as_deref(), Some("20d"));
        assert_eq!(r.change.from.as_deref(), Some("30d"));
        assert_eq!(r.change.setting, Some("retention.raw"));
        assert!((r.effect.at_horizon_after - 80.0 * GIB).abs() < 1e-6 * GIB);
        // 20/30 is a moderate cut: auto-tuning may make it.
        assert_eq!(r.risk, "low");
    }

    #[test]
    fn data_kept_forever_gets_a_retention_from_the_growth_rate_and_an_operator_decides() {
        // 70 GiB a week: 10 GiB/day; 80 GiB of target holds 8 days.
        let r = recommend(&inputs(
            Some(filling(30.0 * GIB, 100.0 * GIB, 100.0 * GIB)),
            None,
        ));
        let r = &r[0];
        assert_eq!(r.change.to.as_deref(), Some("8d"));
        assert_eq!(r.change.from.as_deref(), Some("none"));
        assert_eq!(r.risk, "high");
    }

    #[test]
    fn at_the_floor_only_a_node_helps() {
        let r = recommend(&inputs(
            Some(filling(90.0 * GIB, 150.0 * GIB, 100.0 * GIB)),
            Some(1),
        ));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, "add_node");
        assert!(!r[0].change.applicable);
        // A deep cut clamps at the floor and also asks for a node.
        let r = recommend(&inputs(
            Some(filling(90.0 * GIB, 1000.0 * GIB, 100.0 * GIB)),
            Some(3),
        ));
        let kinds: Vec<_> = r.iter().map(|r| (r.kind, r.change.to.clone())).collect();
        assert_eq!(
            kinds,
            [
                ("retention", Some("1d".into())),
                ("add_node", Some("2".into()))
            ]
        );
        assert_eq!(r[0].risk, "high");
    }

    #[test]
    fn a_full_disk_that_does_not_grow_with_data_kept_forever_needs_more_disk() {
        let r = recommend(&inputs(
            Some(filling(95.0 * GIB, 95.0 * GIB, 100.0 * GIB)),
            None,
        ));
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].kind, "add_node");
        assert_eq!(r[0].priority, "medium");
    }

    #[test]
    fn the_busiest_node_holds_its_share_of_shard_replicas() {
        assert_eq!(per_node_share(1, 3, 1), 1.0);
        // Three replicas on three nodes: everyone holds everything.
        assert_eq!(per_node_share(4, 3, 3), 1.0);
        assert_eq!(per_node_share(4, 3, 4), 0.75);
        // 4 × 1 over 3 nodes: one node holds two shards.
        assert_eq!(per_node_share(4, 1, 3), 0.5);
        assert_eq!(per_node_share(1, 1, 5), 1.0);
    }

    #[test]
    fn a_node_is_proposed_only_where_shards_can_spread_onto_it() {
        let at_floor = |nodes, shards, replication| {
            let mut i = inputs(Some(filling(90.0 * GIB, 150.0 * GIB, 100.0 * GIB)), Some(1));
            (i.nodes, i.shards, i.replication) = (nodes, shards, replication);
            let r = recommend(&i);
            assert_eq!(r.len(), 1, "{r:#?}");
            r.into_iter().next().unwrap()
        };
        // Four single-replica shards on one node: a second takes half.
        let r = at_floor(1, 4, 1);
        assert_eq!((r.kind, r.change.to.as_deref()), ("add_node", Some("2")));
        assert!((r.effect.at_horizon_after - 75.0 * GIB).abs() < 1e-6 * GIB);
        // Three replicas of four shards on three nodes: a fourth node
        // leaves each three of the four shards.
        let r = at_floor(3, 4, 3);
        assert_eq!((r.kind, r.change.to.as_deref()), ("add_node", Some("4")));
        assert!((r.effect.at_horizon_after - 112.5 * GIB).abs() < 1e-6 * GIB);
        // One shard: every node would hold all of it. Only a cluster with
        // more shards (a new one) spreads the data.
        let r = at_floor(1, 1, 1);
        assert_eq!((r.kind, r.change.to.as_deref()), ("shard_count", Some("2")));
        assert!(r.change.how.contains("--shards 2"), "{}", r.change.how);
        assert!(r.change.how.contains("backup restore"), "{}", r.change.how);
        assert!(!r.change.applicable);
        // The default one-node cluster: one shard, three replicas asked
        // for. Up to three nodes each holds everything; four nodes with
        // four shards hold three quarters each.
        let r = at_floor(1, 1, 3);
        assert_eq!(r.kind, "shard_count");
        assert_eq!(r.change.to.as_deref(), Some("4"));
        assert!(r.change.how.contains("start 4 nodes"), "{}", r.change.how);
        assert!((r.effect.at_horizon_after - 112.5 * GIB).abs() < 1e-6 * GIB);
        // Replication beyond any cluster this grows to: only a larger volume.
        let r = at_floor(1, 4, 20);
        assert_eq!(r.kind, "disk_size");
    }

    #[test]
    fn a_stronger_compression_level_is_proposed_when_the_trial_shows_it_saves() {
        // 60 -> 120 GiB in the horizon, half of the disk is chunks.
        let mut i = inputs(Some(filling(100.0 * GIB, 120.0 * GIB, 140.0 * GIB)), None);
        // No retention to shorten: only compression is proposed.
        i.disk = Some(filling(60.0 * GIB, 120.0 * GIB, 140.0 * GIB));
        i.raw_retention = Some(Duration::from_secs(DAY));
        i.chunks = Some(profile(&[(9, 1.0, 0.5), (19, 0.8, 1.5)], &[]));
        let r = recommend(&i);
        let c = r.iter().find(|r| r.kind == "compression").unwrap();
        assert_eq!(c.change.setting, Some("storage.compression_level"));
        assert_eq!(
            (c.change.from.as_deref(), c.change.to.as_deref()),
            (Some("9"), Some("19"))
        );
        // Chunks are 50 of 60 GiB; the 60 GiB of growth shrinks by 20 %
        // in that share: 60 + 60 × (5/6 × 0.8 + 1/6) = 110 GiB.
        assert!(
            (c.effect.at_horizon_after - 110.0 * GIB).abs() < 1e-6 * GIB,
            "{}",
            c.effect.at_horizon_after / GIB
        );
        assert_eq!(c.risk, "low");
        // Too slow to encode: an operator decides.
        i.chunks = Some(profile(&[(9, 1.0, 0.5), (19, 0.8, 5.0)], &[]));
        let r = recommend(&i);
        assert_eq!(
            r.iter().find(|r| r.kind == "compression").unwrap().risk,
            "high"
        );
        // What the codec usually measures: levels barely matter. Nothing.
        i.chunks = Some(profile(&[(9, 1.0, 0.5), (19, 0.99, 1.5)], &[]));
        assert!(!recommend(&i).iter().any(|r| r.kind == "compression"));
        // A disk that is fine needs no trial's advice.
        i.disk = Some(filling(10.0 * GIB, 20.0 * GIB, 140.0 * GIB));
        i.chunks = Some(profile(&[(9, 1.0, 0.5), (19, 0.5, 1.5)], &[]));
        assert!(recommend(&i).is_empty());
    }

    #[test]
    fn smaller_chunks_are_proposed_when_heads_hold_the_memory_short() {
        let mut i = inputs(None, Some(30));
        i.decoded_cache_bytes = 0;
        // 3.5 of 4 GiB: 0.3 GiB over the 80 % target.
        i.memory = Some(filling(3.0 * GIB, 3.5 * GIB, 4.0 * GIB));
        let sizes = [
            // 10 M head samples over 1024 (160 MB): not enough.
            (1024, 1.02, 10_000_000),
            // 25 M over 512: 400 MB, enough.
            (512, 1.06, 25_000_000),
            (256, 1.2, 60_000_000),
        ];
        i.chunks = Some(profile(&[(9, 1.0, 0.5)], &sizes));
        let r = recommend(&i);
        let c = r.iter().find(|r| r.kind == "chunk_size").unwrap();
        assert_eq!(c.change.setting, Some("storage.max_chunk_samples"));
        assert_eq!(c.change.to.as_deref(), Some("512"));
        assert_eq!(c.effect.resource, "memory");
        assert!((c.effect.at_horizon_after - (3.5 * GIB - 400e6)).abs() < 1.0);
        // 6 % more bytes a sample, disk not short: low risk.
        assert_eq!(c.risk, "low");
        // Far over: the size that frees most, and its disk cost needs an operator.
        i.memory = Some(filling(3.0 * GIB, 6.0 * GIB, 4.0 * GIB));
        let r = recommend(&i);
        let c = r.iter().find(|r| r.kind == "chunk_size").unwrap();
        assert_eq!((c.change.to.as_deref(), c.risk), (Some("256"), "high"));
        // Heads that hold little: not the way to memory.
        i.chunks = Some(profile(&[(9, 1.0, 0.5)], &[(512, 1.06, 1000)]));
        assert!(!recommend(&i).iter().any(|r| r.kind == "chunk_size"));
    }

    #[test]
    fn memory_over_its_target_gives_back_decoded_cache_first() {
        let mut i = inputs(None, Some(30));
        i.memory = Some(filling(3.0 * GIB, 3.5 * GIB, 4.0 * GIB));
        let r = recommend(&i);
        assert_eq!(r[0].kind, "memory_budget");
        // 3.5 - 3.2 = 0.3 GiB over, from the node's 4 × 256 MiB of caches:
        // 716 MiB for the node (the configuration's value is the node's).
        assert_eq!(
            r[0].change.to.as_deref(),
            Some(&*((716u64 << 20).to_string()))
        );
        assert_eq!(
            r[0].change.from.as_deref(),
            Some(&*((1u64 << 30).to_string()))
        );
        assert!(
            r[0].change
                .how
                .starts_with("decoded_cache_bytes = 750780416 "),
            "{}",
            r[0].change.how
        );
        assert!(!r[0].change.applicable);
        i.memory = Some(filling(3.0 * GIB, 6.0 * GIB, 4.0 * GIB));
        assert_eq!(recommend(&i)[0].id, "memory-limit");
    }
}

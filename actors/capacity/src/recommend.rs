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
    /// `retention`, `memory_budget` or `add_node`.
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
        None => return,
    };
    let floor = inputs.min_raw_retention;
    let proposed = whole_hours(proposed).max(floor);
    let current_secs = inputs.raw_retention.map(|r| r.as_secs_f64());
    if current_secs.is_some_and(|c| proposed.as_secs_f64() >= c) {
        // Retention is at its floor already: only more disk helps.
        out.push(add_node(
            priority,
            disk,
            format!(
                "disk is forecast to reach {} of {} within {}, and raw retention is at its floor ({}): add a node so shards spread over more disk",
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
        out.push(add_node(
            priority,
            disk,
            format!(
                "even at the shortest raw retention allowed ({}) disk is forecast near {} of {}: add a node",
                duration_text(floor),
                gib(after),
                gib(disk.limit)
            ),
        ));
    }
}

fn add_node(priority: &'static str, o: &Outlook, description: String) -> Recommendation {
    Recommendation {
        id: "add-node".into(),
        kind: "add_node",
        priority,
        risk: "high",
        description,
        effect: Effect {
            resource: "disk",
            at_horizon_before: o.mean,
            // Shards move to the new node: with N nodes each holds about
            // N/(N+1) of what it did; stated for the smallest cluster (1 -> 2).
            at_horizon_after: o.mean / 2.0,
            limit: o.limit,
        },
        change: Change {
            setting: None,
            from: None,
            to: None,
            applicable: false,
            how: "start a node with --join, then `chronicle cluster add-node <id>` (Kubernetes: helm upgrade --set replicaCount=<n+1>)".into(),
        },
    }
}

fn memory_recommendations(inputs: &Inputs, memory: &Outlook, out: &mut Vec<Recommendation>) {
    let Some(priority) = priority(memory) else {
        return;
    };
    let target = TARGET_SHARE * memory.limit;
    let excess = memory.mean - target;
    let caches = inputs.decoded_cache_bytes as f64 * inputs.local_shards.max(1) as f64;
    if inputs.decoded_cache_bytes > 0 && excess > 0.0 && excess < caches {
        let per_shard = ((caches - excess) / inputs.local_shards.max(1) as f64).max(0.0);
        // Whole MiB.
        let per_shard = ((per_shard as u64) >> 20) << 20;
        out.push(Recommendation {
            id: format!("memory-budget-{}m", per_shard >> 20),
            kind: "memory_budget",
            priority,
            risk: "high",
            description: format!(
                "memory is forecast at {} of {} in {}; a decoded-chunk cache of {} MiB per shard (now {} MiB, {} shards here) gives back about {} (queries decode more often)",
                gib(memory.mean),
                gib(memory.limit),
                duration_text(inputs.horizon),
                per_shard >> 20,
                inputs.decoded_cache_bytes >> 20,
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
                from: Some(inputs.decoded_cache_bytes.to_string()),
                to: Some(per_shard.to_string()),
                applicable: false,
                how: format!(
                    "decoded_cache_bytes = {per_shard} in the node's configuration file (or --decoded-cache-bytes {per_shard}), then restart the node"
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
            [("retention", Some("1d".into())), ("add_node", None)]
        );
        assert_eq!(r[0].risk, "high");
    }

    #[test]
    fn memory_over_its_target_gives_back_decoded_cache_first() {
        let mut i = inputs(None, Some(30));
        i.memory = Some(filling(3.0 * GIB, 3.5 * GIB, 4.0 * GIB));
        let r = recommend(&i);
        assert_eq!(r[0].kind, "memory_budget");
        // 3.5 - 3.2 = 0.3 GiB over, from 4 × 256 MiB of caches: 179 MiB each.
        assert_eq!(
            r[0].change.to.as_deref(),
            Some(&*((179u64 << 20).to_string()))
        );
        assert!(!r[0].change.applicable);
        i.memory = Some(filling(3.0 * GIB, 6.0 * GIB, 4.0 * GIB));
        assert_eq!(recommend(&i)[0].id, "memory-limit");
    }
}

//! The nemesis: injects one fault of a plan into a [`LocalCluster`] and
//! heals it. Process faults act on the processes; network, disk and clock
//! faults go through each node's `/debug/faults` routes (the node runs with
//! fault injection on): bus partitions and message rules, disk failpoints,
//! and the cluster clock's offset.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::local::LocalCluster;
use crate::plan::{DiskError, FaultSpec, Scope, Split, Via};
use crate::ChaosError;

/// A fault as injected: what, on which nodes, in words.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub spec: FaultSpec,
    /// The nodes it acts on (empty: nats-server).
    pub nodes: Vec<u64>,
    pub description: String,
    /// For a terminate: the node's exit code (`None`: it had to be killed).
    pub exit_code: Option<i32>,
    /// Whether `exit_code` was observed (on Kubernetes the pod may be gone
    /// before its exit code is seen).
    pub exit_observed: bool,
}

/// The class a fault belongs to (for the report).
pub fn class(spec: &FaultSpec) -> &'static str {
    match spec {
        FaultSpec::Kill {}
        | FaultSpec::Terminate {}
        | FaultSpec::Pause {}
        | FaultSpec::NatsRestart {} => "process",
        FaultSpec::Partition { .. }
        | FaultSpec::Loss { .. }
        | FaultSpec::Delay { .. }
        | FaultSpec::Duplicate { .. }
        | FaultSpec::Bandwidth { .. } => "network",
        FaultSpec::Stress { .. } => "resource",
        FaultSpec::Disk { .. } | FaultSpec::PowerCut { .. } => "disk",
        FaultSpec::Clock { .. } | FaultSpec::Faketime { .. } => "clock",
    }
}

/// Injects `spec`, choosing its nodes with `rng`.
pub fn inject(
    cluster: &mut LocalCluster,
    spec: &FaultSpec,
    rng: &mut impl Rng,
) -> Result<Injected, ChaosError> {
    let ids = cluster.node_ids();
    let one = ids[rng.random_range(0..ids.len())];
    let mut exit_code = None;
    let (nodes, description) = match spec {
        FaultSpec::Kill {} => {
            cluster.kill(one);
            (vec![one], format!("kill -9 node {one}"))
        }
        FaultSpec::Terminate {} => {
            exit_code = cluster.terminate(one, Duration::from_secs(30));
            (vec![one], format!("SIGTERM node {one}"))
        }
        FaultSpec::Pause {} => {
            cluster.pause(one);
            (vec![one], format!("SIGSTOP node {one}"))
        }
        FaultSpec::NatsRestart {} => {
            cluster.stop_nats();
            (Vec::new(), "nats-server down".to_string())
        }
        FaultSpec::Partition {
            split,
            via: Via::Netns,
        } => {
            let ns = netns_of(cluster)?;
            let targets = match split {
                Split::Majority => {
                    let mut shuffled = ids.clone();
                    shuffled.shuffle(rng);
                    let k = rng.random_range(1..=(ids.len() - 1) / 2);
                    shuffled[..k].to_vec()
                }
                _ => vec![one],
            };
            for &id in &targets {
                ns.cut(id, *split == Split::OneWay)?;
            }
            (
                targets.clone(),
                format!(
                    "real cut ({split:?}): node {targets:?} {} nats-server",
                    if *split == Split::OneWay {
                        "stops hearing"
                    } else {
                        "cut from"
                    }
                ),
            )
        }
        FaultSpec::Loss {
            probability,
            via: Via::Netns,
        } => {
            netns_of(cluster)?.loss(one, *probability)?;
            (
                vec![one],
                format!(
                    "real loss: node {one} drops {:.0} % of its packets",
                    probability * 100.0
                ),
            )
        }
        FaultSpec::Delay {
            ms,
            via: Via::Netns,
        } => {
            netns_of(cluster)?.netem(one, &["delay", &format!("{ms}ms")])?;
            (
                vec![one],
                format!("real delay: node {one}'s packets {ms} ms late"),
            )
        }
        FaultSpec::Duplicate { via: Via::Netns } => {
            netns_of(cluster)?.netem(one, &["duplicate", "50%"])?;
            (
                vec![one],
                format!("real duplication: half of node {one}'s packets twice"),
            )
        }
        FaultSpec::Partition { split, .. } => {
            let cuts = split_nodes(*split, &ids, rng);
            for (node, deaf_to) in &cuts {
                let from: Vec<String> = deaf_to.iter().map(u64::to_string).collect();
                cluster.post(
                    *node,
                    &format!("/debug/faults/partition?from={}", from.join(",")),
                )?;
            }
            let words: Vec<String> = cuts.iter().map(|(n, d)| format!("{n}x{d:?}")).collect();
            (
                cuts.iter().map(|(n, _)| *n).collect(),
                format!("partition {split:?}: {}", words.join(" ")),
            )
        }
        FaultSpec::Loss { probability, .. } => {
            cluster.post(
                one,
                &format!("/debug/faults/rule?subject=%3E&drop={probability}"),
            )?;
            (
                vec![one],
                format!(
                    "node {one} loses {:.0} % of what it sends",
                    probability * 100.0
                ),
            )
        }
        FaultSpec::Delay { ms, .. } => {
            cluster.post(
                one,
                &format!("/debug/faults/rule?subject=%3E&delay_ms={ms}"),
            )?;
            (vec![one], format!("node {one}'s messages {ms} ms late"))
        }
        FaultSpec::Duplicate { .. } => {
            cluster.post(one, "/debug/faults/rule?subject=%3E&duplicate=true")?;
            (vec![one], format!("node {one}'s messages doubled"))
        }
        FaultSpec::Bandwidth { .. }
        | FaultSpec::Stress { .. }
        | FaultSpec::Disk {
            error: DiskError::ReadOnly | DiskError::Permissions,
            ..
        } => {
            return Err(ChaosError::Plan(format!(
                "{spec:?} runs only on Kubernetes, through Chaos Mesh (--kubernetes)"
            )))
        }
        FaultSpec::Disk { point, error, ms } => {
            let mut path = format!(
                "/debug/faults/disk?point={}&fault={}",
                point.failpoint(),
                error.name()
            );
            if *error == DiskError::Slow {
                path.push_str(&format!("&ms={ms}"));
            }
            cluster.post(one, &path)?;
            (
                vec![one],
                format!("node {one}: {} on {}", error.name(), point.failpoint()),
            )
        }
        FaultSpec::PowerCut { scope } => {
            let nodes = match scope {
                Scope::Node => vec![one],
                Scope::Cluster => ids.clone(),
            };
            let mut dropped = crate::powercut::CutReport::default();
            for &id in &nodes {
                let r = cluster.power_cut(id)?;
                dropped.files_truncated += r.files_truncated;
                dropped.files_deleted += r.files_deleted;
                dropped.bytes_dropped += r.bytes_dropped;
            }
            let description = format!(
                "power cut of node {nodes:?}: {} unsynced bytes dropped ({} files cut, {} deleted)",
                dropped.bytes_dropped, dropped.files_truncated, dropped.files_deleted
            );
            (nodes, description)
        }
        FaultSpec::Faketime { offset } => {
            let offset_s = draw_offset_ms(offset, rng)? / 1000;
            cluster.fake_time(one, offset_s)?;
            (
                vec![one],
                format!("node {one}'s process clock {offset_s:+} s (libfaketime)"),
            )
        }
        FaultSpec::Clock { offset } => {
            let offset_ms = draw_offset_ms(offset, rng)?;
            cluster.post(one, &format!("/debug/faults/clock?offset_ms={offset_ms}"))?;
            (
                vec![one],
                format!("node {one}'s clock {:+.1} s", offset_ms as f64 / 1e3),
            )
        }
    };
    Ok(Injected {
        spec: spec.clone(),
        nodes,
        description,
        exit_code,
        exit_observed: matches!(spec, FaultSpec::Terminate {}),
    })
}

fn netns_of(cluster: &LocalCluster) -> Result<&crate::netns::Netns, ChaosError> {
    cluster.netns().ok_or_else(|| {
        ChaosError::Plan("a via = \"netns\" fault needs the nodes in namespaces".into())
    })
}

/// At least half of `offset`, ahead or behind, in ms.
fn draw_offset_ms(offset: &str, rng: &mut impl Rng) -> Result<i64, ChaosError> {
    let max = humantime::parse_duration(offset)
        .map_err(|e| ChaosError::Plan(format!("clock offset {offset:?}: {e}")))?
        .as_millis() as i64;
    let magnitude = rng.random_range(max / 2..=max.max(1));
    Ok(if rng.random_bool(0.5) {
        magnitude
    } else {
        -magnitude
    })
}

/// Undoes `injected` and waits (at most `limit`) until every node is ready.
pub fn heal(
    cluster: &mut LocalCluster,
    injected: &Injected,
    limit: Duration,
) -> Result<(), ChaosError> {
    match injected.spec {
        FaultSpec::Kill {}
        | FaultSpec::Terminate {}
        | FaultSpec::Pause {}
        | FaultSpec::NatsRestart {}
        | FaultSpec::PowerCut { .. }
        | FaultSpec::Bandwidth { .. }
        | FaultSpec::Stress { .. } => {}
        FaultSpec::Faketime { .. } => {
            for &id in &injected.nodes {
                cluster.fake_time(id, 0)?;
            }
        }
        FaultSpec::Partition {
            via: Via::Netns, ..
        }
        | FaultSpec::Loss {
            via: Via::Netns, ..
        }
        | FaultSpec::Delay {
            via: Via::Netns, ..
        }
        | FaultSpec::Duplicate { via: Via::Netns } => {
            let ns = netns_of(cluster)?;
            for &id in &injected.nodes {
                ns.heal(id)?;
            }
        }
        _ => {
            for &id in &injected.nodes {
                cluster.post(id, "/debug/faults/heal")?;
            }
        }
    }
    cluster.heal(limit)
}

/// For a partition: each node that is told to stop hearing others, and whom.
pub fn split_nodes(split: Split, ids: &[u64], rng: &mut impl Rng) -> Vec<(u64, Vec<u64>)> {
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(rng);
    let n = shuffled.len();
    let both_ways = |a: &[u64], b: &[u64]| {
        let mut cuts: Vec<(u64, Vec<u64>)> = a.iter().map(|&x| (x, b.to_vec())).collect();
        cuts.extend(b.iter().map(|&x| (x, a.to_vec())));
        cuts
    };
    match split {
        Split::Isolate => both_ways(&shuffled[..1], &shuffled[1..]),
        Split::Majority => {
            let minority = rng.random_range(1..=(n - 1) / 2);
            both_ways(&shuffled[..minority], &shuffled[minority..])
        }
        Split::Bridge => {
            // shuffled[0] is the bridge; the rest split in two halves.
            let rest = &shuffled[1..];
            let half = rest.len() / 2;
            both_ways(&rest[..half], &rest[half..])
        }
        Split::Ring => (0..n)
            .map(|i| {
                let (prev, next) = (shuffled[(i + n - 1) % n], shuffled[(i + 1) % n]);
                let deaf: Vec<u64> = shuffled
                    .iter()
                    .copied()
                    .filter(|&x| x != shuffled[i] && x != prev && x != next)
                    .collect();
                (shuffled[i], deaf)
            })
            .filter(|(_, deaf)| !deaf.is_empty())
            .collect(),
        Split::OneWay => vec![(shuffled[0], shuffled[1..].to_vec())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    /// Whether `a` hears `b` under `cuts`.
    fn hears(cuts: &[(u64, Vec<u64>)], a: u64, b: u64) -> bool {
        !cuts.iter().any(|(n, deaf)| *n == a && deaf.contains(&b))
    }

    #[test]
    fn splits_cut_what_they_say() {
        let ids = [1, 2, 3, 4, 5];
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..20 {
            let cuts = split_nodes(Split::Isolate, &ids, &mut rng);
            let lone = ids
                .iter()
                .copied()
                .find(|&x| ids.iter().all(|&y| y == x || !hears(&cuts, x, y)))
                .expect("one node hears nobody");
            for &y in &ids {
                if y != lone {
                    assert!(!hears(&cuts, y, lone));
                }
            }

            let cuts = split_nodes(Split::Majority, &ids, &mut rng);
            // Components by mutual hearing: a majority side exists.
            let side_of = |x: u64| -> BTreeSet<u64> {
                ids.iter()
                    .copied()
                    .filter(|&y| hears(&cuts, x, y))
                    .collect()
            };
            assert!(ids.iter().any(|&x| side_of(x).len() >= 3));
            assert!(ids.iter().any(|&x| side_of(x).len() <= 2));

            let cuts = split_nodes(Split::Bridge, &ids, &mut rng);
            let bridge = ids
                .iter()
                .copied()
                .find(|&x| {
                    ids.iter()
                        .all(|&y| hears(&cuts, x, y) && hears(&cuts, y, x))
                })
                .expect("a bridge hears and is heard by all");
            assert!(!cuts.is_empty() && cuts.iter().all(|(n, _)| *n != bridge));

            let cuts = split_nodes(Split::Ring, &ids, &mut rng);
            for &x in &ids {
                let heard = ids
                    .iter()
                    .filter(|&&y| y != x && hears(&cuts, x, y))
                    .count();
                assert_eq!(heard, 2, "a ring node hears its two neighbours");
            }

            let cuts = split_nodes(Split::OneWay, &ids, &mut rng);
            assert_eq!(cuts.len(), 1);
            let (deaf, _) = &cuts[0];
            assert!(ids.iter().all(|&y| hears(&cuts, y, *deaf)));
        }
    }
}

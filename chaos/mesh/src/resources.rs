//! Fault plans as Chaos Mesh resources: which custom resource each fault
//! becomes, on which pods, and what it asks Chaos Mesh to do. Pure
//! translation (JSON), so every resource a plan can produce is validated
//! against the CRDs' OpenAPI schemas in tests without an API server.

use std::time::Duration;

use chronicle_chaos::plan::{DiskError, DiskPoint, FaultSpec, Scope, Split};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::MeshError;

/// Chaos Mesh's API group and version.
pub const GROUP: &str = "chaos-mesh.org";
pub const VERSION: &str = "v1alpha1";

/// The label every resource of one run carries, so all of them can be found
/// and deleted together (after a crash of the harness too).
pub const RUN_LABEL: &str = "chronicle.io/chaos-run";

/// The custom resources the harness creates. Plurals are given, not
/// guessed: Chaos Mesh's CRDs say `podchaos`, not `podchaoses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    PodChaos,
    NetworkChaos,
    IoChaos,
    TimeChaos,
    StressChaos,
    Schedule,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::PodChaos,
        Kind::NetworkChaos,
        Kind::IoChaos,
        Kind::TimeChaos,
        Kind::StressChaos,
        Kind::Schedule,
    ];

    pub fn kind(self) -> &'static str {
        match self {
            Kind::PodChaos => "PodChaos",
            Kind::NetworkChaos => "NetworkChaos",
            Kind::IoChaos => "IOChaos",
            Kind::TimeChaos => "TimeChaos",
            Kind::StressChaos => "StressChaos",
            Kind::Schedule => "Schedule",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::PodChaos => "podchaos",
            Kind::NetworkChaos => "networkchaos",
            Kind::IoChaos => "iochaos",
            Kind::TimeChaos => "timechaos",
            Kind::StressChaos => "stresschaos",
            Kind::Schedule => "schedules",
        }
    }

    /// The field of a Schedule's spec that holds a chaos of this kind.
    fn schedule_field(self) -> &'static str {
        match self {
            Kind::PodChaos => "podChaos",
            Kind::NetworkChaos => "networkChaos",
            Kind::IoChaos => "ioChaos",
            Kind::TimeChaos => "timeChaos",
            Kind::StressChaos => "stressChaos",
            Kind::Schedule => "schedule",
        }
    }
}

/// One resource to create.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosObject {
    pub kind: Kind,
    pub name: String,
    /// The whole object: apiVersion, kind, metadata and spec.
    pub body: Value,
}

/// Where the faults land: the release's pods in its namespace.
#[derive(Debug, Clone)]
pub struct Scene {
    pub namespace: String,
    /// This run's id (the value of [`RUN_LABEL`]; part of every name).
    pub run: String,
    /// Chronicle's pods, by node id (pod ordinal + 1).
    pub pods: Vec<(u64, String)>,
    /// How NATS is reached: its pods, or hosts outside the cluster.
    pub nats: NatsPeer,
    /// The Service name nodes connect to NATS through (`<release>-nats.<ns>.svc`).
    /// Traffic-shaping faults match packets in the node's pod, where their
    /// destination is still this Service's address, not a NATS pod's: they
    /// name it in `externalTargets` (Chaos Mesh resolves it) rather than the
    /// NATS pods.
    pub nats_service: Option<String>,
    /// The data volume's mount path in Chronicle's container.
    pub data_path: String,
    /// Chronicle's container name (IOChaos, StressChaos and TimeChaos act
    /// on it, not on sidecars).
    pub container: String,
}

/// NATS, which every message between nodes crosses.
#[derive(Debug, Clone)]
pub enum NatsPeer {
    /// Pods matching these labels in the namespace.
    Pods(Vec<(String, String)>),
    /// Hosts (names or CIDRs) outside Kubernetes.
    External(Vec<String>),
}

/// A fault, drawn and translated: its resources and what it does in words.
#[derive(Debug, Clone)]
pub struct Translated {
    pub objects: Vec<ChaosObject>,
    pub nodes: Vec<u64>,
    pub description: String,
}

impl Scene {
    fn ids(&self) -> Vec<u64> {
        self.pods.iter().map(|(id, _)| *id).collect()
    }

    fn pod(&self, id: u64) -> &str {
        self.pods
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.as_str())
            .unwrap_or_default()
    }

    /// A selector of exactly these nodes' pods.
    fn select(&self, ids: &[u64]) -> Value {
        let names: Vec<&str> = ids.iter().map(|&id| self.pod(id)).collect();
        json!({ "namespaces": [self.namespace], "pods": { self.namespace.clone(): names } })
    }

    fn nats_selector(&self) -> Option<Value> {
        match &self.nats {
            NatsPeer::Pods(labels) => {
                let labels: serde_json::Map<String, Value> = labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                Some(json!({ "namespaces": [self.namespace], "labelSelectors": labels }))
            }
            NatsPeer::External(_) => None,
        }
    }

    /// The far side of a network fault: NATS, whichever way it is reached.
    /// A partition cuts both ends (Chaos Mesh also puts rules in the NATS
    /// pods), so it names the pods; traffic shaping acts in the node's pod
    /// only, so it names the Service the node dials.
    fn toward_nats(&self, spec: &mut serde_json::Map<String, Value>, shaping: bool) {
        match &self.nats {
            NatsPeer::Pods(_) if shaping && self.nats_service.is_some() => {
                spec.insert("externalTargets".into(), json!([self.nats_service]));
            }
            NatsPeer::Pods(_) => {
                spec.insert(
                    "target".into(),
                    json!({ "mode": "all", "selector": self.nats_selector() }),
                );
            }
            NatsPeer::External(hosts) => {
                spec.insert("externalTargets".into(), json!(hosts));
            }
        }
    }

    fn object(&self, kind: Kind, serial: usize, tag: &str, spec: Value) -> ChaosObject {
        let name = object_name(&self.run, serial, tag);
        ChaosObject {
            kind,
            body: json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": kind.kind(),
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "labels": {
                        RUN_LABEL: self.run,
                        "app.kubernetes.io/managed-by": "chronicle-chaos",
                    },
                },
                "spec": spec,
            }),
            name,
        }
    }
}

/// `chronicle-<run>-<serial>-<tag>`, cut to a DNS label's 63 characters.
fn object_name(run: &str, serial: usize, tag: &str) -> String {
    let mut name = format!("chronicle-{run}-{serial}-{tag}");
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// A Go duration Chaos Mesh parses (`"1500ms"`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Draws a signed offset of up to `offset`, never zero in magnitude below a
/// tenth of it (the local nemesis's rule).
fn draw_offset(offset: &str, rng: &mut impl Rng) -> Result<i64, MeshError> {
    let max = humantime::parse_duration(offset)
        .map_err(|e| MeshError::Plan(format!("clock offset {offset:?}: {e}")))?
        .as_millis()
        .min(i64::MAX as u128) as i64;
    let magnitude = rng.random_range((max / 10).max(1)..=max.max(1));
    Ok(if rng.random_bool(0.5) {
        magnitude
    } else {
        -magnitude
    })
}

/// Translates one fault of a plan into resources, choosing its pods with
/// `rng`; `serial` numbers the fault within the run (it names the
/// resources), `hold` bounds it (Chaos Mesh ends it by itself even if the
/// harness dies before deleting it).
pub fn translate(
    scene: &Scene,
    spec: &FaultSpec,
    serial: usize,
    hold: Duration,
    rng: &mut impl Rng,
) -> Result<Translated, MeshError> {
    let ids = scene.ids();
    if ids.len() < 3 {
        return Err(MeshError::Plan(format!(
            "found {} Chronicle pods; a chaos run needs 3 or more",
            ids.len()
        )));
    }
    let one = ids[rng.random_range(0..ids.len())];
    let duration = go_duration(hold);
    let mut objects = Vec::new();
    let (nodes, description) = match spec {
        FaultSpec::Kill {} => {
            objects.push(scene.object(
                Kind::PodChaos,
                serial,
                "kill",
                json!({ "action": "container-kill", "mode": "all", "selector": scene.select(&[one]), "containerNames": [scene.container] }),
            ));
            // SIGKILL of the container, restarted in place on the same pod
            // and volume (pod-kill would let a replacement start before the
            // old process is gone).
            (
                vec![one],
                format!("container-kill of node {one} (SIGKILL, restarted in place)"),
            )
        }
        FaultSpec::Terminate {} => {
            objects.push(scene.object(
                Kind::PodChaos,
                serial,
                "terminate",
                // No gracePeriod: the pod's own (the chart's 60 s) covers
                // the graceful handover.
                json!({ "action": "pod-kill", "mode": "all", "selector": scene.select(&[one]) }),
            ));
            (
                vec![one],
                format!("pod-kill of node {one} (SIGTERM, the pod's grace period)"),
            )
        }
        FaultSpec::Pause {} => {
            objects.push(scene.object(
                Kind::PodChaos,
                serial,
                "pause",
                json!({ "action": "pod-failure", "mode": "all", "selector": scene.select(&[one]), "duration": duration }),
            ));
            (
                vec![one],
                format!("pod-failure of node {one} (its container runs a pause image until the fault ends: stopped and restarted, not frozen)"),
            )
        }
        FaultSpec::NatsRestart {} => {
            let Some(selector) = scene.nats_selector() else {
                return Err(MeshError::Plan(
                    "nats-restart needs NATS pods in the namespace (NATS is external here)".into(),
                ));
            };
            objects.push(scene.object(
                Kind::PodChaos,
                serial,
                "nats-restart",
                json!({ "action": "pod-kill", "mode": "all", "selector": selector, "gracePeriod": 0 }),
            ));
            (Vec::new(), "pod-kill of every NATS pod".into())
        }
        FaultSpec::Partition { split, .. } => {
            // Nodes talk only through NATS: cutting a group of nodes off
            // from NATS cuts it off from every other node.
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let (cut, direction, what) = match split {
                Split::Isolate => (vec![shuffled[0]], "both", "cut off from NATS"),
                Split::Majority => {
                    let minority = rng.random_range(1..=(ids.len() - 1) / 2);
                    (shuffled[..minority].to_vec(), "both", "cut off from NATS (the minority)")
                }
                // Chaos Mesh's "from": packets from the target (NATS) to
                // the pod are dropped: the node stops hearing the others,
                // they still hear it.
                Split::OneWay => (
                    vec![shuffled[0]],
                    "from",
                    "hears nothing from NATS (one way; over TCP, lost acknowledgements soon stall its sending too)",
                ),
                Split::Bridge | Split::Ring => {
                    return Err(MeshError::Plan(
                        "bridge and ring partitions need links between nodes; on Kubernetes every message crosses NATS, so only isolate, majority and one-way are expressible".into(),
                    ))
                }
            };
            let mut s = serde_json::Map::new();
            s.insert("action".into(), json!("partition"));
            s.insert("mode".into(), json!("all"));
            s.insert("selector".into(), scene.select(&cut));
            s.insert("direction".into(), json!(direction));
            s.insert("duration".into(), json!(duration));
            scene.toward_nats(&mut s, false);
            objects.push(scene.object(Kind::NetworkChaos, serial, "partition", Value::Object(s)));
            let description = format!("node {cut:?} {what}");
            (cut, description)
        }
        FaultSpec::Loss { probability, .. } => {
            let percent = format!("{}", (probability * 100.0).round() as u32);
            objects.push(network(
                scene,
                serial,
                "loss",
                one,
                &duration,
                "loss",
                json!({ "loss": percent, "correlation": "0" }),
            ));
            (
                vec![one],
                format!("node {one} loses {percent} % of its packets to NATS"),
            )
        }
        FaultSpec::Delay { ms, .. } => {
            objects.push(network(
                scene,
                serial,
                "delay",
                one,
                &duration,
                "delay",
                json!({ "latency": format!("{ms}ms"), "jitter": "0ms", "correlation": "0" }),
            ));
            (
                vec![one],
                format!("node {one}'s packets to NATS {ms} ms late"),
            )
        }
        FaultSpec::Duplicate { .. } => {
            objects.push(network(
                scene,
                serial,
                "duplicate",
                one,
                &duration,
                "duplicate",
                json!({ "duplicate": "100", "correlation": "0" }),
            ));
            (vec![one], format!("node {one}'s packets to NATS doubled"))
        }
        FaultSpec::Bandwidth { rate } => {
            objects.push(network(
                scene,
                serial,
                "bandwidth",
                one,
                &duration,
                "bandwidth",
                json!({ "rate": rate, "limit": 20_971_520, "buffer": 10_000 }),
            ));
            (
                vec![one],
                format!("node {one}'s traffic to NATS limited to {rate}"),
            )
        }
        FaultSpec::Disk { point, error, ms } => {
            let data = scene.data_path.trim_end_matches('/');
            let path = match point {
                DiskPoint::RaftLog => format!("{data}/**/raft-log/**"),
                DiskPoint::StorageWrite | DiskPoint::StorageRead => format!("{data}/**/state/**"),
            };
            // toda's method names (an fdatasync reaches FUSE as fsync).
            let writes = ["write", "flush", "fsync", "create"];
            let methods: Vec<&str> = match (point, error) {
                (_, DiskError::Fsync) => vec!["fsync"],
                (DiskPoint::StorageRead, _) => vec!["read"],
                _ => writes.to_vec(),
            };
            let mut s = json!({
                "mode": "all",
                "selector": scene.select(&[one]),
                "containerNames": [scene.container],
                "volumePath": data,
                "path": path,
                "percent": 100,
                "duration": duration,
            });
            let fields = s.as_object_mut().expect("an object");
            match error {
                DiskError::Slow => {
                    fields.insert("action".into(), json!("latency"));
                    fields.insert("delay".into(), json!(format!("{ms}ms")));
                    fields.insert("methods".into(), json!(methods));
                }
                DiskError::Permissions => {
                    // Attributes only: a file opened after this is refused
                    // writing; files already open keep working.
                    fields.insert("action".into(), json!("attrOverride"));
                    fields.insert("attr".into(), json!({ "perm": 0o444 }));
                }
                DiskError::Fsync | DiskError::Eio | DiskError::Enospc | DiskError::ReadOnly => {
                    let errno = match error {
                        DiskError::Enospc => 28,
                        DiskError::ReadOnly => 30,
                        _ => 5,
                    };
                    fields.insert("action".into(), json!("fault"));
                    fields.insert("errno".into(), json!(errno));
                    fields.insert("methods".into(), json!(methods));
                }
            }
            objects.push(scene.object(Kind::IoChaos, serial, "disk", s));
            (
                vec![one],
                format!("node {one}: {} on {}", error.name(), point.failpoint()),
            )
        }
        FaultSpec::Clock { offset } | FaultSpec::Faketime { offset } => {
            let ms = draw_offset(offset, rng)?;
            let offset = if ms < 0 {
                format!("-{}ms", -ms)
            } else {
                format!("{ms}ms")
            };
            objects.push(scene.object(
                Kind::TimeChaos,
                serial,
                "clock",
                json!({
                    "mode": "all",
                    "selector": scene.select(&[one]),
                    "containerNames": [scene.container],
                    "timeOffset": offset,
                    "duration": duration,
                }),
            ));
            (
                vec![one],
                format!("node {one}'s clock {:+.1} s (TimeChaos)", ms as f64 / 1e3),
            )
        }
        FaultSpec::Stress {
            cpu_workers,
            cpu_load,
            memory,
        } => {
            let mut stressors = serde_json::Map::new();
            if *cpu_workers > 0 {
                stressors.insert(
                    "cpu".into(),
                    json!({ "workers": cpu_workers, "load": cpu_load }),
                );
            }
            if let Some(size) = memory {
                stressors.insert("memory".into(), json!({ "workers": 1, "size": size }));
            }
            objects.push(scene.object(
                Kind::StressChaos,
                serial,
                "stress",
                json!({
                    "mode": "all",
                    "selector": scene.select(&[one]),
                    "containerNames": [scene.container],
                    "stressors": stressors,
                    "duration": duration,
                }),
            ));
            (
                vec![one],
                format!("node {one} under stress ({cpu_workers} CPU workers, memory {memory:?})"),
            )
        }
        FaultSpec::PowerCut { scope } => {
            let what = match scope {
                Scope::Node => "node",
                Scope::Cluster => "cluster",
            };
            return Err(MeshError::Plan(format!(
                "a {what} power cut is not expressible in Chaos Mesh (pod-kill keeps the node's page cache, so it proves nothing about fsync); run power cuts locally"
            )));
        }
    };
    Ok(Translated {
        objects,
        nodes,
        description,
    })
}

fn network(
    scene: &Scene,
    serial: usize,
    tag: &str,
    node: u64,
    duration: &str,
    action: &str,
    detail: Value,
) -> ChaosObject {
    let mut s = serde_json::Map::new();
    s.insert("action".into(), json!(action));
    s.insert("mode".into(), json!("all"));
    s.insert("selector".into(), scene.select(&[node]));
    s.insert("direction".into(), json!("to"));
    s.insert("duration".into(), json!(duration));
    s.insert(action.into(), detail);
    scene.toward_nats(&mut s, true);
    scene.object(Kind::NetworkChaos, serial, tag, Value::Object(s))
}

/// A recurring fault as a Schedule: Chaos Mesh creates the fault's resource
/// on `cron`, each lasting `hold`. The pods are drawn once, here.
pub fn schedule(
    scene: &Scene,
    cron: &str,
    spec: &FaultSpec,
    serial: usize,
    hold: Duration,
    rng: &mut impl Rng,
) -> Result<ChaosObject, MeshError> {
    let inner = translate(scene, spec, serial, hold, rng)?;
    let [object] = inner.objects.as_slice() else {
        return Err(MeshError::Plan(format!(
            "{spec:?} makes {} resources; a Schedule holds one",
            inner.objects.len()
        )));
    };
    let mut chaos = object.body["spec"].clone();
    // Schedule checks that a scheduled chaos has a duration.
    if chaos.get("duration").is_none() {
        chaos["duration"] = json!(go_duration(hold));
    }
    let mut s = serde_json::Map::new();
    s.insert("schedule".into(), json!(cron));
    s.insert("type".into(), json!(object.kind.kind()));
    s.insert("historyLimit".into(), json!(5));
    s.insert("concurrencyPolicy".into(), json!("Forbid"));
    s.insert(object.kind.schedule_field().into(), chaos);
    Ok(scene.object(Kind::Schedule, serial, "recurring", Value::Object(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        let long = "x".repeat(80);
        let name = object_name(&long, 7, "partition");
        assert!(name.len() <= 63);
        assert!(!name.ends_with('-'));
        assert_eq!(object_name("r1", 3, "kill"), "chronicle-r1-3-kill");
    }

    #[test]
    fn durations_are_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(5)), "5000ms");
        assert_eq!(go_duration(Duration::ZERO), "1ms");
    }
}

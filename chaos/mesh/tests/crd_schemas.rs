//! Every Chaos Mesh resource a plan can produce is valid against the CRDs'
//! OpenAPI v3 schemas (../shared/conformance/chaos-mesh, Chaos Mesh's own
//! config/crd/bases), checked as an API server with strict field validation
//! would: the schema itself, and no field the schema does not know (the
//! server would drop it silently, and the fault would not be what the plan
//! says).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chronicle_chaos::plan::{builtin, Plan, BUILTINS};
use chronicle_chaos_mesh::resources::{schedule, translate, Kind, NatsPeer, Scene};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::Value;

fn crd_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // chaos/mesh -> the repository -> its parent holds shared/.
    let dir = here.join("../../../shared/conformance/chaos-mesh");
    assert!(
        dir.join("podchaos.yaml").exists(),
        "the Chaos Mesh CRDs are not at {}",
        dir.display()
    );
    dir
}

/// Each kind's openAPIV3Schema, read from its CRD.
fn schemas() -> HashMap<&'static str, Value> {
    let mut out = HashMap::new();
    for kind in Kind::ALL {
        let file = crd_dir().join(format!("{}.yaml", kind.plural()));
        let text = std::fs::read_to_string(&file).unwrap();
        let crd: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            crd["spec"]["names"]["plural"],
            kind.plural(),
            "{}",
            file.display()
        );
        assert_eq!(crd["spec"]["names"]["kind"], kind.kind());
        let version = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "v1alpha1")
            .expect("v1alpha1");
        out.insert(kind.kind(), version["schema"]["openAPIV3Schema"].clone());
    }
    out
}

/// Fields of `instance` that `schema` does not declare (where it declares
/// its fields and keeps no unknown ones), as JSON paths.
fn unknown_fields(schema: &Value, instance: &Value, path: &str, out: &mut Vec<String>) {
    match instance {
        Value::Object(fields) => {
            if schema["x-kubernetes-preserve-unknown-fields"] == true {
                return;
            }
            let declared = schema["properties"].as_object();
            let extra = &schema["additionalProperties"];
            for (key, value) in fields {
                if let Some(sub) = declared.and_then(|d| d.get(key)) {
                    unknown_fields(sub, value, &format!("{path}.{key}"), out);
                } else if extra.is_object() {
                    unknown_fields(extra, value, &format!("{path}.{key}"), out);
                } else if declared.is_some() {
                    out.push(format!("{path}.{key}"));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                unknown_fields(&schema["items"], item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Validates `object` as the API server would; the errors.
fn validate(schemas: &HashMap<&'static str, Value>, object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let schema = &schemas[kind];
    let validator = jsonschema::draft4::new(schema).expect("the CRD's schema compiles");
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    let mut extra = Vec::new();
    // metadata is the API server's (ObjectMeta), not the CRD's.
    unknown_fields(
        &schema["properties"]["spec"],
        &object["spec"],
        "spec",
        &mut extra,
    );
    errors.extend(extra.into_iter().map(|p| format!("{p}: not in the schema")));
    errors
}

fn scene(nats: NatsPeer) -> Scene {
    Scene {
        namespace: "chaos-test".into(),
        run: "t1".into(),
        pods: (0..5)
            .map(|i| (i + 1, format!("db-chronicle-{i}")))
            .collect(),
        nats,
        data_path: "/var/lib/chronicle".into(),
        container: "chronicle".into(),
        nats_service: Some("db-nats.chaos-test.svc".into()),
    }
}

/// Every fault kind, every option: what a plan can express.
const EVERY_FAULT: &str = r#"
    name = "every-fault"
    nodes = 5
    [[fault]]
    kind = "kill"
    [[fault]]
    kind = "terminate"
    [[fault]]
    kind = "pause"
    [[fault]]
    kind = "nats-restart"
    [[fault]]
    kind = "partition"
    split = "isolate"
    [[fault]]
    kind = "partition"
    split = "majority"
    [[fault]]
    kind = "partition"
    split = "one-way"
    [[fault]]
    kind = "loss"
    probability = 0.25
    [[fault]]
    kind = "delay"
    ms = 300
    [[fault]]
    kind = "duplicate"
    [[fault]]
    kind = "bandwidth"
    rate = "1mbps"
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
    ms = 200
    [[fault]]
    kind = "disk"
    point = "storage-write"
    error = "read-only"
    [[fault]]
    kind = "disk"
    point = "raft-log"
    error = "permissions"
    [[fault]]
    kind = "clock"
    offset = "1h"
    [[fault]]
    kind = "faketime"
    offset = "10m"
    [[fault]]
    kind = "stress"
    cpu_workers = 2
    cpu_load = 80
    memory = "256MB"
    [[fault]]
    kind = "stress"
    memory = "30%"
    [[recurring]]
    cron = "@every 2m"
    fault = { kind = "kill" }
    [[recurring]]
    cron = "*/5 * * * *"
    fault = { kind = "delay", ms = 100 }
    [[recurring]]
    cron = "@every 10m"
    fault = { kind = "disk", point = "raft-log", error = "slow", ms = 50 }
    [[recurring]]
    cron = "@every 1h"
    fault = { kind = "clock", offset = "30s" }
    [[recurring]]
    cron = "@every 15m"
    fault = { kind = "stress", cpu_workers = 1 }
"#;

#[test]
fn every_fault_a_plan_can_express_validates_against_the_chaos_mesh_crds() {
    let schemas = schemas();
    let plan = Plan::parse(EVERY_FAULT).unwrap().check().unwrap();
    let mut seen_kinds = std::collections::BTreeSet::new();
    let mut checked = 0;
    for nats in [
        NatsPeer::Pods(vec![
            ("app.kubernetes.io/name".into(), "nats".into()),
            ("app.kubernetes.io/instance".into(), "db".into()),
        ]),
        NatsPeer::External(vec!["nats.example.com".into(), "10.0.0.0/24".into()]),
    ] {
        let external = matches!(nats, NatsPeer::External(_));
        let scene = scene(nats);
        for seed in 0..8 {
            let mut rng = SmallRng::seed_from_u64(seed);
            for (i, fault) in plan.plan.faults.iter().enumerate() {
                let translated = match translate(&scene, fault, i + 1, plan.hold, &mut rng) {
                    Ok(t) => t,
                    Err(e) => {
                        // Only restarting NATS needs NATS pods.
                        assert!(
                            external && format!("{e}").contains("nats-restart"),
                            "{fault:?}: {e}"
                        );
                        continue;
                    }
                };
                assert!(!translated.objects.is_empty());
                for object in &translated.objects {
                    let errors = validate(&schemas, &object.body);
                    assert!(
                        errors.is_empty(),
                        "{fault:?} -> {}:\n{}",
                        object.body,
                        errors.join("\n")
                    );
                    seen_kinds.insert(object.kind.kind());
                    checked += 1;
                }
            }
            for (i, r) in plan.plan.recurring.iter().enumerate() {
                let object =
                    schedule(&scene, &r.cron, &r.fault, 100 + i, plan.hold, &mut rng).unwrap();
                let errors = validate(&schemas, &object.body);
                assert!(
                    errors.is_empty(),
                    "{r:?} -> {}:\n{}",
                    object.body,
                    errors.join("\n")
                );
                seen_kinds.insert(object.kind.kind());
                checked += 1;
            }
        }
    }
    assert_eq!(
        seen_kinds.len(),
        Kind::ALL.len(),
        "every kind is produced: {seen_kinds:?}"
    );
    eprintln!("{checked} resources valid");
}

#[test]
fn every_builtin_plan_translates_or_says_why_it_cannot() {
    let schemas = schemas();
    for name in BUILTINS {
        let plan = builtin(name).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let scene = scene(NatsPeer::Pods(vec![("app".into(), "nats".into())]));
        for (i, fault) in plan.faults.iter().enumerate() {
            match translate(&scene, fault, i, Duration::from_secs(5), &mut rng) {
                Ok(t) => {
                    for o in t.objects {
                        let errors = validate(&schemas, &o.body);
                        assert!(
                            errors.is_empty(),
                            "{name}: {}\n{}",
                            o.body,
                            errors.join("\n")
                        );
                    }
                }
                // Power cuts and bridge/ring partitions have no Chaos Mesh form.
                Err(e) => {
                    let why = e.to_string();
                    assert!(
                        why.contains("power cut") || why.contains("bridge and ring"),
                        "{name}: {fault:?}: {why}"
                    );
                }
            }
        }
    }
}

/// The checks catch what they should: a resource with a missing required
/// field, a wrong enum value, a malformed duration, or a field the schema
/// does not know is refused.
#[test]
fn the_validation_refuses_broken_resources() {
    let schemas = schemas();
    let scene = scene(NatsPeer::Pods(vec![("app".into(), "nats".into())]));
    let mut rng = SmallRng::seed_from_u64(1);
    let delay = chronicle_chaos::plan::FaultSpec::Delay {
        ms: 100,
        via: Default::default(),
    };
    let good = translate(&scene, &delay, 1, Duration::from_secs(5), &mut rng)
        .unwrap()
        .objects
        .remove(0)
        .body;
    assert!(validate(&schemas, &good).is_empty());
    type Break = Box<dyn Fn(&mut Value)>;
    let broken: Vec<(&str, Break)> = vec![
        (
            "no selector",
            Box::new(|v| {
                v["spec"].as_object_mut().unwrap().remove("selector");
            }),
        ),
        (
            "bad action",
            Box::new(|v| v["spec"]["action"] = "explode".into()),
        ),
        ("bad mode", Box::new(|v| v["spec"]["mode"] = "most".into())),
        (
            "bad latency",
            Box::new(|v| v["spec"]["delay"]["latency"] = "100 millis".into()),
        ),
        (
            "unknown field",
            Box::new(|v| v["spec"]["delay"]["latencyy"] = "1ms".into()),
        ),
        (
            "wrong type",
            Box::new(|v| v["spec"]["direction"] = 3.into()),
        ),
    ];
    for (what, breaks) in broken {
        let mut v = good.clone();
        breaks(&mut v);
        assert!(
            !validate(&schemas, &v).is_empty(),
            "{what} was accepted: {v}"
        );
    }
}

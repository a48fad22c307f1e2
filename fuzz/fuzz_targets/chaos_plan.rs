//! Fault plans (`chronicle chaos run --plan FILE`, local or --kubernetes):
//! never a panic in parsing, checking, or translating a checked plan's
//! faults into Chaos Mesh resources; every resource has a kind, a DNS-label
//! name and a spec.
#![no_main]

use std::time::Duration;

use chronicle_chaos::plan::Plan;
use chronicle_chaos_mesh::resources::{schedule, translate, NatsPeer, Scene};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = Plan::parse(text) else {
        return;
    };
    let Ok(plan) = plan.check() else {
        return;
    };
    let scene = Scene {
        namespace: "fuzz".into(),
        run: "f".into(),
        pods: (0..plan.plan.nodes)
            .map(|i| (i + 1, format!("c-{i}")))
            .collect(),
        nats: NatsPeer::Pods(vec![("app".into(), "nats".into())]),
        data_path: "/var/lib/chronicle".into(),
        container: "chronicle".into(),
        nats_service: Some("db-nats.chaos-test.svc".into()),
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(data.len() as u64);
    let hold = plan.hold.min(Duration::from_secs(86_400));
    for (i, fault) in plan.plan.faults.iter().enumerate() {
        if let Ok(t) = translate(&scene, fault, i, hold, &mut rng) {
            for o in t.objects {
                assert!(!o.name.is_empty() && o.name.len() <= 63);
                assert!(o.body["spec"].is_object());
            }
        }
    }
    for (i, r) in plan.plan.recurring.iter().enumerate() {
        if let Ok(o) = schedule(&scene, &r.cron, &r.fault, i, hold, &mut rng) {
            assert!(o.body["spec"]["schedule"].is_string());
        }
    }
});

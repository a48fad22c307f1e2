//! The checker reproduces Porcupine's verdicts on every history of the
//! shared conformance data (chaos/tests/porcupine/README.md lists them;
//! a copy of shared/conformance/porcupine).

use std::path::PathBuf;

use chronicle_chaos::linearizability::{check, check_partitioned, Verdict};
use chronicle_chaos::model::Register;
use chronicle_chaos::model::{KvString, PerKey};
use chronicle_chaos::porcupine::{jepsen_etcd, porcupine_kv};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/porcupine")
}

const STEPS: u64 = 50_000_000;

#[test]
fn every_etcd_log_gets_porcupines_verdict() {
    let linearizable = [
        2, 5, 7, 18, 25, 31, 38, 45, 48, 49, 51, 53, 56, 67, 75, 76, 80, 87, 92, 98, 100, 101, 102,
    ];
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(data().join("jepsen"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let n: u32 = name.trim_start_matches("etcd_").parse().unwrap();
        let history = jepsen_etcd(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let (verdict, steps) = check(&Register, &history, STEPS);
        let want = if linearizable.contains(&n) {
            Verdict::Linearizable
        } else {
            Verdict::NotLinearizable
        };
        eprintln!(
            "{name}: {} ops, {verdict:?} in {steps} steps, {:?}",
            history.len(),
            started.elapsed()
        );
        assert_eq!(verdict, want, "{name}");
        seen += 1;
    }
    assert_eq!(seen, 16, "every kept log was checked");
}

#[test]
fn every_kv_history_gets_porcupines_verdict() {
    for clients in ["c01", "c10", "c50"] {
        for (suffix, want) in [
            ("ok", Verdict::Linearizable),
            ("bad", Verdict::NotLinearizable),
        ] {
            let name = format!("{clients}-{suffix}");
            let text = std::fs::read_to_string(data().join(format!("kv/{name}.txt"))).unwrap();
            let history = porcupine_kv(&text).unwrap();
            let started = std::time::Instant::now();
            let result = check_partitioned(
                &PerKey(KvString),
                &history,
                |op| op.input.key.clone(),
                STEPS,
            );
            eprintln!(
                "{name}: {} ops, {:?} in {} steps, {:?}",
                history.len(),
                result.verdict,
                result.steps,
                started.elapsed()
            );
            assert_eq!(result.verdict, want, "{name}");
            if want == Verdict::NotLinearizable {
                // The minimal history fails, and fails for a reason: any
                // one operation less and it passes.
                assert!(!result.minimal.is_empty());
                assert_eq!(
                    check(&PerKey(KvString), &result.minimal, STEPS).0,
                    Verdict::NotLinearizable
                );
                for i in 0..result.minimal.len() {
                    let mut fewer = result.minimal.clone();
                    fewer.remove(i);
                    assert_eq!(
                        check(&PerKey(KvString), &fewer, STEPS).0,
                        Verdict::Linearizable,
                        "{name}: not minimal"
                    );
                }
                eprintln!("{}", chronicle_chaos::history::draw(&result.minimal));
            }
        }
    }
}

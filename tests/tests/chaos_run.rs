//! `chronicle chaos run` end to end, short and with a fixed seed: three node
//! processes over a real nats-server, the register workload on the
//! replicated state through every node, one node at a time killed, stopped
//! with SIGTERM or paused; the history must be linearizable and every stop
//! exit 0. Bounded: 15 s of faults.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_chronicle-under-test");

#[test]
fn a_short_fixed_seed_chaos_run_finds_no_violation() {
    let report = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args([
            "chaos",
            "run",
            "--seed",
            "11",
            "--duration",
            "15s",
            "--interval",
            "2s",
            "--hold",
            "2s",
            "--faults",
            "kill,terminate,pause",
            "--report",
        ])
        .arg(report.path())
        .env("NATS_SERVER", chronicle_tests::nats_server_binary())
        .output()
        .expect("chronicle chaos run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("replay with --seed 11"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["verdict"], "linearizable", "{json}");
    assert_eq!(json["violations"].as_array().unwrap().len(), 0, "{json}");
    assert!(json["faults"].as_array().unwrap().len() >= 3, "{json}");
    assert!(
        json["ok"].as_u64().unwrap() > 100,
        "too few operations answered: {json}"
    );
    assert!(std::fs::read_to_string(report.path().join("summary.txt"))
        .unwrap()
        .contains("no violations"));
}

#[test]
fn a_chaos_run_refuses_what_it_cannot_do() {
    for (args, why) in [
        (&["--nodes", "2"][..], "3 or more"),
        (&["--faults", "meteor"][..], "unknown fault"),
    ] {
        let output = Command::new(BIN)
            .args(["chaos", "run", "--duration", "1s"])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

//! Prometheus's PromQL test scripts (tests/conformance/promql) against
//! Chronicle's engine over a real shard, each script twice: its samples in
//! the shard's head, and flushed into chunks. Passed / failed / skipped per file is
//! printed. Every float case passes, so any failure fails the test; and the
//! pass count of each file may not drop below the one recorded in
//! tests/conformance/promql-passing.txt, so a case cannot quietly move from
//! passed to skipped either.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chronicle_tests::promqltest::{run_script, run_script_stored};

fn scripts_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CHRONICLE_PROMQL_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("conformance/promql"))
}

fn recorded() -> BTreeMap<String, usize> {
    let text = include_str!("../conformance/promql-passing.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (file, n) = l.split_once(char::is_whitespace)?;
            Some((file.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn promql_conformance_scripts() {
    let dir = scripts_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance scripts at {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());
    let floor = recorded();
    let verbose = std::env::var_os("CHRONICLE_PROMQL_VERBOSE").is_some();
    let mut regressions = Vec::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    println!(
        "{:<24} {:>7} {:>7} {:>8}",
        "file", "passed", "failed", "skipped"
    );
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let tally = run_script(&text);
        println!(
            "{name:<24} {:>7} {:>7} {:>8}",
            tally.passed, tally.failed, tally.skipped
        );
        if verbose || tally.failed > 0 {
            for f in &tally.failures {
                println!("    {f}");
            }
        }
        passed += tally.passed;
        failed += tally.failed;
        skipped += tally.skipped;
        // The same script with every load cut into chunks: reads that decode,
        // and instant selectors answered from the newest flushed samples,
        // must give the same answers.
        let stored = run_script_stored(&text, true);
        if stored.failed > 0 || stored.passed != tally.passed {
            for f in &stored.failures {
                println!("    flushed: {f}");
            }
            regressions.push(format!(
                "{name}: flushed into chunks, {} passed and {} failed (in the head, {} passed)",
                stored.passed, stored.failed, tally.passed
            ));
        }
        let want = floor.get(&name).copied().unwrap_or(0);
        if tally.passed < want {
            regressions.push(format!("{name}: {} passed, {want} recorded", tally.passed));
        }
    }
    println!("{:<24} {passed:>7} {failed:>7} {skipped:>8}", "total");
    assert_eq!(failed, 0, "PromQL conformance cases failed (listed above)");
    assert!(
        regressions.is_empty(),
        "PromQL conformance dropped: {}",
        regressions.join("; ")
    );
}

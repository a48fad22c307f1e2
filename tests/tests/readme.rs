//! The README's first command, run exactly as written in a shell, as a newcomer
//! runs it: it must start a node, run the demo, say where the node listens, and
//! stop cleanly (exit 0) on SIGTERM.
//!
//! Three environment variables keep it off the developer's own node and build:
//! a data directory and a free port (read by `chronicle serve`), and
//! `CHRONICLE_BUILD_PROFILE=debug` so the script reuses the test build instead
//! of building the release binary (CI would otherwise build RocksDB twice).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chronicle_tests::free_port;

/// The first command of the README's quick start: the first line of its first
/// ```sh block.
fn first_command(readme: &str) -> String {
    let start = readme
        .find("## Quick start")
        .expect("a quick start section");
    let block = readme[start..].find("```sh\n").expect("a sh block") + start + 6;
    readme[block..]
        .lines()
        .next()
        .expect("a command")
        .trim()
        .to_string()
}

#[test]
fn the_readme_first_command_starts_a_node_and_runs_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let command = first_command(&readme);
    assert!(
        command.contains("--demo"),
        "the first command runs the demo: {command}"
    );
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&command)
        .current_dir(root)
        .env("CHRONICLE_DATA_DIR", data.path())
        .env("CHRONICLE_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("CHRONICLE_BUILD_PROFILE", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: the stop below reaches whatever it started.
        .process_group(0)
        .spawn()
        .expect("bash runs the README's command");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Bounded: building is already done by the test build; the node starts in
    // seconds. SIGTERM goes as soon as the node says it serves, while the demo
    // still runs: the node must finish it and then stop gracefully, not die.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut signalled = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if !signalled && line.starts_with("chronicle node serving") {
                    // SAFETY: kill(2) on the group we created.
                    unsafe {
                        libc::kill(-(child.id() as i32), libc::SIGTERM);
                    }
                    signalled = true;
                }
                seen.push(line);
            }
            // The output ended: the process is gone or going.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the node did not finish within 180 s; got {seen:#?}");
            }
        }
    }
    let status = child.wait().expect("the node's exit status");
    let all = seen.join("\n");
    assert!(signalled, "the node never said it serves: {all}");
    assert!(all.contains(&format!("http://127.0.0.1:{port}")), "{all}");
    assert!(all.contains(r#"{"written":3}"#), "{all}");
    assert!(all.contains("demo: reply:"), "{all}");
    assert!(all.contains("demo: try"), "{all}");
    assert!(
        status.success(),
        "the node exits 0 on SIGTERM, got {status}\n{all}"
    );
}

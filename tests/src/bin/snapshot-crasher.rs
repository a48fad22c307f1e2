//! Builds or installs a snapshot with one failpoint set to crash the process
//! there (a panic that aborts), for tests/tests/snapshot_crash.rs.
//!
//! `snapshot-crasher build <failpoint> <group dir> <from> <to>`: opens the
//! state machine, applies entries `from..=to`, makes them durable, builds.
//! `snapshot-crasher install <failpoint> <source dir> <target dir>`: installs
//! the source's current snapshot into the target.
//! Exits 3 if the failpoint was never reached.

use chronicle_cluster::ShardStateMachine;
use chronicle_tests::snapshot_fixture::{config, entries};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, point, rest @ ..] = args.as_slice() else {
        eprintln!("usage: snapshot-crasher build|install <failpoint> <dirs...>");
        std::process::exit(2);
    };
    // A panic at the failpoint is a crash: no unwinding, no cleanup, no flush.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("crashing: {info}");
        std::process::abort();
    }));
    fail::cfg(point.as_str(), "panic").expect("failpoint configures");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        match (mode.as_str(), rest) {
            ("build", [dir, from, to]) => {
                let mut sm = ShardStateMachine::open(dir, config()).expect("opens");
                let (from, to) = (from.parse().unwrap(), to.parse().unwrap());
                sm.apply(entries(from, to)).await.expect("applies");
                sm.shard().current().flush().expect("flushes");
                sm.get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .expect("builds");
            }
            ("install", [source, target]) => {
                let mut source = ShardStateMachine::open(source, config()).expect("opens");
                let snapshot = source
                    .get_current_snapshot()
                    .await
                    .expect("reads")
                    .expect("the source has a snapshot");
                let mut target = ShardStateMachine::open(target, config()).expect("opens");
                target
                    .install_snapshot(&snapshot.meta, snapshot.snapshot)
                    .await
                    .expect("installs");
            }
            _ => {
                eprintln!("bad arguments: {args:?}");
                std::process::exit(2);
            }
        }
    });
    std::process::exit(3);
}

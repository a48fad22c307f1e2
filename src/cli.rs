//! The `chronicle` command line: argument parsing and the `serve` loop.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{bench, client, Node, ServeArgs};

/// Chronicle, a distributed time-series database.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    // `token` and `ca_file` are read from the matches in `main`, before a
    // feature's own command may run.
    /// API token for a node started with --auth (client commands).
    #[arg(long, global = true, env = "CHRONICLE_TOKEN", hide_env_values = true)]
    #[allow(dead_code)]
    token: Option<String>,
    /// PEM CA certificate to trust for https:// node addresses.
    #[arg(long, global = true, env = "CHRONICLE_CA_FILE")]
    #[allow(dead_code)]
    ca_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node: in-process bus and RocksDB under ./data by default, HTTP on
    /// 127.0.0.1:8086; --nats-url joins NATS. Stops cleanly on Ctrl-C / SIGTERM.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// After starting, write a few points over the bus, query them back and
        /// print both (shows the node working), then keep serving.
        #[arg(long)]
        demo: bool,
    },
    /// Write line protocol from a file or standard input.
    Write(client::WriteArgs),
    /// Query a node; prints a table (or --json).
    Query(client::QueryArgs),
    /// Inspect the cluster through a node.
    #[command(subcommand)]
    Cluster(crate::cluster_cli::ClusterCommand),
    /// Read and change the replicated state (feature key-value data) through
    /// a node started with --enable-admin-api.
    #[command(subcommand)]
    Kv(crate::kv_cli::KvCommand),
    /// Create, list and revoke API tokens (needs an admin token).
    #[command(subcommand)]
    Token(crate::token_cli::TokenCommand),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Break a local cluster on purpose and check every answer it gave.
    #[command(subcommand)]
    Chaos(crate::chaos_cli::ChaosCommand),
}

/// Logs go to stderr, filtered by `CHRONICLE_LOG` (e.g. `debug`,
/// `chronicle_ingest=debug`); the default is `default_filter`.
fn init_tracing(default_filter: &str) {
    let _ = init_tracing_with(default_filter, None);
}

/// As [`init_tracing`], and with `otlp` (endpoint, this node's name) the
/// spans the filter lets through are exported as traces too.
fn init_tracing_with(default_filter: &str, otlp: Option<(String, String)>) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter =
        EnvFilter::try_from_env("CHRONICLE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let provider = match otlp {
        Some((endpoint, instance)) => Some(crate::traces::provider(&endpoint, &instance)?),
        None => None,
    };
    // Spans are exported by their own filter (`CHRONICLE_TRACE_FILTER`,
    // default `info,openraft=warn`), whatever the logs show.
    let traces = provider.as_ref().map(|p| {
        let filter = EnvFilter::try_from_env("CHRONICLE_TRACE_FILTER")
            .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
        crate::traces::layer(p).with_filter(filter)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces)
        .try_init();
    if let Some(p) = provider {
        crate::traces::keep(p);
    }
    Ok(())
}

/// The command line: the built-in commands and each feature's subcommand.
pub fn command(features: &[Box<dyn chronicle_platform::Feature>]) -> clap::Command {
    let mut command = Cli::command();
    for f in features {
        if let Some(mut sub) = f.command() {
            if sub.get_about().is_none() {
                sub = sub.about(f.describe());
            }
            command = command.subcommand(sub);
        }
    }
    command
}

/// Runs the `chronicle` command line with the process's arguments.
pub fn main() -> ExitCode {
    let features = crate::features::registry(&crate::NodeConfig::default());
    let matches = command(&features).get_matches();
    crate::http_client::set_client_auth(crate::http_client::ClientAuth {
        token: matches.get_one::<String>("token").cloned(),
        ca_file: matches.get_one::<std::path::PathBuf>("ca_file").cloned(),
    });
    // A feature's own subcommand (a client of a node).
    if let Some((name, sub)) = matches.subcommand() {
        // By the command's name: `chronicle search` is the semantic feature's.
        if let Some(f) = features
            .iter()
            .find(|f| f.command().is_some_and(|c| c.get_name() == name))
        {
            {
                init_tracing("warn");
                return match f.run_command(sub) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
        }
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // A node logs what it does; client commands and benchmarks only warnings.
    // A node logs what it does (and exports its spans when asked to);
    // client commands and benchmarks log only warnings.
    let traced = match &cli.command {
        Command::Serve { args, .. } => init_tracing_with(
            "info,openraft=warn",
            args.otlp_endpoint().map(|e| {
                let name = args.node_id.map_or_else(
                    || format!("pid-{}", std::process::id()),
                    |id| id.to_string(),
                );
                (e, name)
            }),
        ),
        _ => {
            init_tracing("warn");
            Ok(())
        }
    };
    if let Err(e) = traced {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Serve { args, demo } => serve(args, demo),
        Command::Write(args) => client::write(args),
        Command::Query(args) => client::query(args),
        Command::Cluster(cmd) => crate::cluster_cli::run(cmd),
        Command::Kv(cmd) => crate::kv_cli::run(cmd),
        Command::Token(cmd) => crate::token_cli::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Chaos(cmd) => crate::chaos_cli::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, demo: bool) -> Result<(), Box<dyn std::error::Error>> {
    let config = args.resolve()?;
    let system = actix::System::new();
    system.block_on(async move {
        let mut stop = StopSignals::install()?;
        let scheme = if config.tls.cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        let auth = if config.auth.enabled {
            "tokens"
        } else {
            "off (loopback only)"
        };
        let node = Node::start(config).await?;
        println!(
            "chronicle node serving: HTTP {scheme}://{}  bus {}  auth {auth}  (Ctrl-C stops)",
            node.http_addr, node.bus_kind
        );
        if demo {
            if let Err(e) = run_demo(&node).await {
                eprintln!("demo failed: {e}");
            }
        }
        stop.recv().await;
        let stopped = node.shutdown().await;
        // The last spans, before a possible _exit below.
        crate::traces::shutdown();
        if !stopped {
            // RocksDB's threads are still running: exit now, as a crash would
            // (the Raft log, fsynced, replays what the shards had not made
            // durable), rather than run C++ static destructors under them.
            // SAFETY: _exit ends the process; nothing after it runs.
            unsafe { libc::_exit(0) };
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}

/// Publishes three points on `chronicle.ingest.demo` and asks `chronicle.query`
/// for them, over the node's own bus, exactly as another service would.
async fn run_demo(node: &Node) -> Result<(), Box<dyn std::error::Error>> {
    use chronicle_bus::Message;
    let now = chronicle_query::request::now_ns();
    let lines = format!(
        "demo_temperature,room=kitchen value=21.5 {}\n\
         demo_temperature,room=kitchen value=21.7 {}\n\
         demo_temperature,room=attic value=17.25 {}\n",
        now - 2_000_000_000,
        now - 1_000_000_000,
        now - 1_000_000_000
    );
    let ingest = format!("{}.ingest.demo", node.subject_prefix);
    let query_subject = format!("{}.query", node.subject_prefix);
    print!("demo: published 3 points on {ingest} -> ");
    let ack = node
        .bus
        .request(Message::new(ingest, lines), Duration::from_secs(5))
        .await?;
    println!("{}", String::from_utf8_lossy(&ack.payload));
    let query = r#"{"metric":"demo_temperature","start":"now-1m","aggregation":{"function":"mean"},"group_by":["room"]}"#;
    println!("demo: request on {query_subject}: {query}");
    let reply = node
        .bus
        .request(Message::new(query_subject, query), Duration::from_secs(5))
        .await?;
    println!("demo: reply: {}", String::from_utf8_lossy(&reply.payload));
    println!(
        "demo: try  curl -s -XPOST http://{}/query -d '{{\"metric\":\"demo_temperature\",\"start\":\"now-1h\"}}'",
        node.http_addr
    );
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment the process starts
/// serving: one that arrives while the node starts or runs its demo is
/// answered with the graceful stop afterwards, not with the default action
/// (an abrupt exit).
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod feature_command_tests {
    use super::*;
    use chronicle_platform::{Feature, FeatureError, Planned};

    struct WithCommand;

    impl Feature for WithCommand {
        fn name(&self) -> &'static str {
            "twin"
        }
        fn describe(&self) -> &'static str {
            "a feature with a command"
        }
        fn configure(&self, _: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
            Err(FeatureError::Registry("not started here".into()))
        }
        fn command(&self) -> Option<clap::Command> {
            Some(clap::Command::new("twin").arg(clap::Arg::new("id").long("id").required(true)))
        }
    }

    #[test]
    fn feature_commands_join_the_built_in_ones() {
        let features: Vec<Box<dyn Feature>> = vec![Box::new(WithCommand)];
        let m = command(&features)
            .try_get_matches_from(["chronicle", "--token", "t", "twin", "--id", "7"])
            .unwrap();
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(name, "twin");
        assert_eq!(sub.get_one::<String>("id").unwrap(), "7");
        assert_eq!(m.get_one::<String>("token").unwrap(), "t");
        // Built-in commands still parse into the derived enum.
        let m = command(&features)
            .try_get_matches_from(["chronicle", "token", "list"])
            .unwrap();
        assert!(matches!(
            Cli::from_arg_matches(&m).unwrap().command,
            Command::Token(_)
        ));
        let help = command(&features).render_long_help().to_string();
        assert!(help.contains("a feature with a command"), "{help}");
        assert!(command(&features)
            .try_get_matches_from(["chronicle", "twin"])
            .is_err());
    }
}

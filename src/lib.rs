//! The Chronicle node (bus, storage, supervised actors, HTTP) and the operator CLI's
//! commands, as a library so the `chronicle` binary and the cross-process tests in
//! `tests/` share them.

pub mod backup_cli;
pub mod bench;
mod bench_capacity;
mod bench_cluster;
mod bench_collab;
mod bench_dataset;
mod bench_detect;
mod bench_failover;
mod bench_ingest;
mod bench_kv;
mod bench_query;
mod bench_recommend;
mod bench_semantic;
mod blob_http;
pub mod chaos_cli;
pub mod cli;
pub mod client;
pub mod cluster_cli;
mod cluster_io;
pub mod config;
pub mod features;
mod follow;
pub mod http;
pub mod http_client;
pub mod kv_cli;
pub mod metrics;
pub mod node;
mod prom_api;
pub mod token_cli;
mod tokens;
pub mod traces;

pub use config::{NodeConfig, ServeArgs};
pub use node::{Node, NodeError};

//! The one place the node names its features. `Node::start`, the HTTP
//! server, readiness, shutdown and the CLI walk this list; adding a feature
//! is adding its crate and one line here (docs/architecture.md, "Adding a
//! feature").

pub mod backup;
mod ingest;
mod kv;
mod query;
mod settings;

use chronicle_platform::Feature;

use crate::config::NodeConfig;

/// Every feature this build has, in start order (later ones may use what
/// earlier ones published in the context's services).
pub fn registry(config: &NodeConfig) -> Vec<Box<dyn Feature>> {
    vec![
        Box::new(ingest::IngestFeature::new(config)),
        Box::new(query::QueryFeature::new(config)),
        Box::new(kv::KvFeature::new(config)),
        Box::new(settings::SettingsFeature::new(config)),
        Box::new(chronicle_live::LiveFeature),
        Box::new(backup::BackupFeature),
        Box::new(chronicle_collab::CollabFeature),
        Box::new(chronicle_detect::DetectFeature),
        Box::new(chronicle_remediation::RemediationFeature),
        Box::new(chronicle_capacity::CapacityFeature),
        Box::new(chronicle_semantic::SemanticFeature),
    ]
}

/// A core feature configured by its own top-level section (`[ingest]`,
/// `[query]`): a `[features.<name>]` section would be silently second.
fn no_section(
    name: &'static str,
    section: Option<&toml::Value>,
) -> Result<(), chronicle_platform::FeatureError> {
    match section {
        None => Ok(()),
        Some(_) => Err(chronicle_platform::FeatureError::Config {
            feature: name,
            message: format!("configure {name} in its top-level [{name}] section"),
        }),
    }
}

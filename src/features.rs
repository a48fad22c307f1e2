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

#[cfg(test)]
mod tests {
    use actix_web::http::Method;
    use chronicle_auth::Access::{self, Admin, Public, Read, Write};

    use super::*;

    /// The table the node builds from its own rules and the registry's
    /// answers for every route family as docs/security.md says.
    #[test]
    fn the_access_table_from_the_registry_reads_as_documented() {
        let table = crate::http::access_table(&registry(&NodeConfig::default())).unwrap();
        let cases: &[(Method, &str, Access, &str)] = &[
            (Method::GET, "/health", Public, "health"),
            (Method::GET, "/health/ready", Public, "health"),
            (Method::POST, "/write", Write, "ingest"),
            (Method::POST, "/api/v1/write", Write, "ingest"),
            (Method::POST, "/v1/metrics", Write, "ingest"),
            (Method::POST, "/query", Read, "query"),
            (Method::POST, "/api/v1/cql/explain", Read, "query"),
            (Method::GET, "/api/v1/query_range", Read, "query"),
            (
                Method::POST,
                "/api/v1/admin/tsdb/delete_series",
                Admin,
                "query",
            ),
            (Method::POST, "/api/v1/admin/backups", Admin, "backup"),
            (Method::GET, "/metrics", Read, "metrics"),
            (Method::GET, "/api/v1/cluster/status", Read, "cluster"),
            (Method::POST, "/api/v1/cluster/status", Admin, "cluster"),
            (Method::POST, "/api/v1/cluster/add-node", Admin, "cluster"),
            (Method::GET, "/api/v1/live", Read, "live"),
            (Method::POST, "/api/collab/sessions/create", Write, "collab"),
            (Method::POST, "/api/collab/sessions/join", Read, "collab"),
            (Method::GET, "/api/anomalies", Read, "detect"),
            (Method::GET, "/api/anomalies/7", Read, "detect"),
            (Method::GET, "/api/remediation/rules", Read, "remediation"),
            (
                Method::POST,
                "/api/remediation/approve",
                Admin,
                "remediation",
            ),
            (Method::GET, "/api/config", Read, "config"),
            (Method::GET, "/api/config/history", Read, "config"),
            (Method::GET, "/api/config/retention.raw", Admin, "config"),
            (Method::PUT, "/api/config/retention.raw", Admin, "config"),
            (Method::GET, "/api/capacity/forecasts", Read, "capacity"),
            (Method::POST, "/api/capacity/apply", Admin, "capacity"),
            (Method::POST, "/api/semantic/reindex", Admin, "semantic"),
            (Method::POST, "/api/semantic/patterns", Write, "semantic"),
            (Method::GET, "/api/semantic/patterns", Read, "semantic"),
            (Method::POST, "/api/semantic/search", Read, "semantic"),
            (Method::POST, "/api/v1/kv/get", Admin, "kv"),
            (Method::POST, "/api/v1/auth/tokens", Admin, "auth"),
            (Method::GET, "/debug/pprof", Admin, "debug"),
            (Method::GET, "/nowhere", Admin, "unknown"),
        ];
        for (method, path, access, scope) in cases {
            assert_eq!(table.of(method, path), (*access, *scope), "{method} {path}");
        }
    }
}

#[cfg(test)]
mod subject_tests {
    use super::*;

    /// No two owners serve overlapping subjects, and docs/subjects.md names
    /// every one (up to its first wildcard, with `<prefix>` for the prefix).
    #[test]
    fn every_subject_is_served_once_and_documented() {
        let subjects = crate::http::subject_table(&registry(&NodeConfig::default()), "chronicle")
            .expect("no overlap");
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/subjects.md"))
            .unwrap();
        for (subject, owner) in &subjects {
            let stem = subject
                .replacen("chronicle", "<prefix>", 1)
                .split('.')
                .take_while(|t| *t != "*" && *t != ">")
                .collect::<Vec<_>>()
                .join(".");
            assert!(
                doc.contains(&format!("`{stem}")),
                "docs/subjects.md does not name {owner}'s {subject} (looked for `{stem})"
            );
        }
    }
}

//! Who may call which route: each feature states the access its routes need
//! ([`crate::Feature::access`]), the node adds its own (health, metrics,
//! cluster, auth, debug) and authorizes every request against the table
//! before any handler runs.

use actix_web::http::Method;
use chronicle_auth::Access;

use crate::FeatureError;

/// The paths a rule covers (without a trailing `/`, which requests may have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePath {
    Exact(&'static str),
    /// Every path that starts with this string.
    Prefix(&'static str),
}

/// The methods a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Methods {
    Any,
    Get,
    /// Every method but GET (what changes something).
    NotGet,
}

impl Methods {
    fn covers(self, method: &Method) -> bool {
        match self {
            Methods::Any => true,
            Methods::Get => method == Method::GET,
            Methods::NotGet => method != Method::GET,
        }
    }

    fn overlaps(self, other: Methods) -> bool {
        !matches!(
            (self, other),
            (Methods::Get, Methods::NotGet) | (Methods::NotGet, Methods::Get)
        )
    }
}

/// The access one route (or a family of them) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAccess {
    pub path: RoutePath,
    pub methods: Methods,
    pub access: Access,
}

impl RouteAccess {
    pub const fn exact(path: &'static str, access: Access) -> Self {
        Self {
            path: RoutePath::Exact(path),
            methods: Methods::Any,
            access,
        }
    }

    pub const fn prefix(path: &'static str, access: Access) -> Self {
        Self {
            path: RoutePath::Prefix(path),
            methods: Methods::Any,
            access,
        }
    }

    /// The same rule for these methods only.
    pub const fn methods(mut self, methods: Methods) -> Self {
        self.methods = methods;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        let path_matches = match self.path {
            RoutePath::Exact(p) => path == p,
            // `/api/v1/kv` is under the prefix `/api/v1/kv/` too.
            RoutePath::Prefix(p) => path.starts_with(p) || p.strip_suffix('/') == Some(path),
        };
        path_matches && self.methods.covers(method)
    }

    /// Most specific first: a longer path, then an exact path over a prefix
    /// of the same length, then a rule for some methods over one for all.
    fn specificity(&self) -> (usize, bool, bool) {
        let (len, exact) = match self.path {
            RoutePath::Exact(p) => (p.len(), true),
            RoutePath::Prefix(p) => (p.len(), false),
        };
        (len, exact, self.methods != Methods::Any)
    }
}

/// Every rule of the node, most specific first. A request takes the first
/// rule that matches it: so `/api/v1/live` (the live feature's) wins over
/// `/api/v1/` (the Prometheus API's), whatever order the features were
/// registered in. A path no rule covers needs admin.
#[derive(Debug, Clone)]
pub struct AccessTable {
    rules: Vec<(RouteAccess, &'static str)>,
}

/// The scope of a path no rule covers.
pub const UNKNOWN_SCOPE: &str = "unknown";

impl AccessTable {
    /// Rules with the feature (the scope a token may be limited to) each
    /// belongs to. Two rules for the same path and overlapping methods are
    /// an error, so no feature can quietly change another's access.
    pub fn new(
        rules: impl IntoIterator<Item = (RouteAccess, &'static str)>,
    ) -> Result<Self, FeatureError> {
        let mut rules: Vec<(RouteAccess, &'static str)> = rules.into_iter().collect();
        for (i, (a, owner_a)) in rules.iter().enumerate() {
            for (b, owner_b) in &rules[i + 1..] {
                if a.path == b.path && a.methods.overlaps(b.methods) {
                    return Err(FeatureError::Registry(format!(
                        "{owner_a} and {owner_b} both state the access of {:?} ({:?} and {:?})",
                        a.path, a.methods, b.methods
                    )));
                }
            }
        }
        // Stable: equal specificity keeps the given order (it cannot matter,
        // since equal paths with overlapping methods were refused).
        rules.sort_by_key(|(r, _)| std::cmp::Reverse(r.specificity()));
        Ok(Self { rules })
    }

    /// The access a request needs and the scope it falls in.
    pub fn of(&self, method: &Method, path: &str) -> (Access, &'static str) {
        let path = path.trim_end_matches('/');
        self.rules
            .iter()
            .find(|(r, _)| r.matches(method, path))
            .map_or((Access::Admin, UNKNOWN_SCOPE), |(r, owner)| {
                (r.access, owner)
            })
    }

    pub fn rules(&self) -> impl Iterator<Item = &(RouteAccess, &'static str)> {
        self.rules.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> AccessTable {
        AccessTable::new([
            (RouteAccess::prefix("/api/v1/", Access::Read), "query"),
            (RouteAccess::exact("/api/v1/live", Access::Read), "live"),
            (RouteAccess::prefix("/api/v1/kv/", Access::Admin), "kv"),
            (
                RouteAccess::prefix("/api/things/", Access::Read).methods(Methods::Get),
                "things",
            ),
            (
                RouteAccess::prefix("/api/things/", Access::Admin).methods(Methods::NotGet),
                "things",
            ),
            (RouteAccess::exact("/health", Access::Public), "health"),
        ])
        .unwrap()
    }

    #[test]
    fn the_most_specific_rule_wins_whatever_the_order() {
        let t = table();
        assert_eq!(t.of(&Method::GET, "/api/v1/live"), (Access::Read, "live"));
        assert_eq!(t.of(&Method::GET, "/api/v1/query"), (Access::Read, "query"));
        assert_eq!(t.of(&Method::GET, "/api/v1/kv/a/b"), (Access::Admin, "kv"));
        // Without its slash, still the kv rule, not the Prometheus API's.
        assert_eq!(t.of(&Method::GET, "/api/v1/kv"), (Access::Admin, "kv"));
        assert_eq!(
            t.of(&Method::GET, "/api/things/1"),
            (Access::Read, "things")
        );
        assert_eq!(
            t.of(&Method::POST, "/api/things/1"),
            (Access::Admin, "things")
        );
        assert_eq!(t.of(&Method::GET, "/health/"), (Access::Public, "health"));
        // Unknown paths need admin.
        assert_eq!(
            t.of(&Method::GET, "/nowhere"),
            (Access::Admin, UNKNOWN_SCOPE)
        );
        assert_eq!(
            t.of(&Method::GET, "/healthz"),
            (Access::Admin, UNKNOWN_SCOPE)
        );
    }

    #[test]
    fn two_rules_for_one_path_are_refused() {
        let clash = AccessTable::new([
            (RouteAccess::prefix("/api/x/", Access::Read), "a"),
            (
                RouteAccess::prefix("/api/x/", Access::Write).methods(Methods::NotGet),
                "b",
            ),
        ]);
        assert!(clash.unwrap_err().to_string().contains("both state"));
        // GET and not-GET split one path between them.
        assert!(AccessTable::new([
            (
                RouteAccess::prefix("/api/x/", Access::Read).methods(Methods::Get),
                "a"
            ),
            (
                RouteAccess::prefix("/api/x/", Access::Write).methods(Methods::NotGet),
                "a"
            ),
        ])
        .is_ok());
    }
}

/// Whether some subject matches both NATS subject patterns (`*` one token,
/// `>` one or more at the end).
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => continue,
            _ => return false,
        }
    }
}

/// Checks that no two owners (the node, each feature) serve overlapping
/// subjects: a message must have one meaning.
pub fn check_subjects(subjects: &[(String, &'static str)]) -> Result<(), FeatureError> {
    for (i, (a, owner_a)) in subjects.iter().enumerate() {
        for (b, owner_b) in &subjects[i + 1..] {
            if owner_a != owner_b && subjects_overlap(a, b) {
                return Err(FeatureError::Registry(format!(
                    "{owner_a}'s subject {a} overlaps {owner_b}'s {b}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod subject_tests {
    use super::*;

    #[test]
    fn overlap_follows_nats_wildcards() {
        assert!(subjects_overlap("c.ingest.>", "c.ingest.cpu"));
        assert!(subjects_overlap("c.kv.*", "c.*.get"));
        assert!(subjects_overlap("c.>", "c.query"));
        assert!(!subjects_overlap("c.ingest.>", "c.ingest"));
        assert!(!subjects_overlap("c.kv.*", "c.kv.a.b"));
        assert!(!subjects_overlap("c.query", "c.queries"));
        assert!(!subjects_overlap("c.semantic.search", "c.semantic.shard.*"));
        let owned = |s: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
            s.iter().map(|(a, o)| (a.to_string(), *o)).collect()
        };
        assert!(check_subjects(&owned(&[("c.ingest.>", "ingest"), ("c.query", "query")])).is_ok());
        let err =
            check_subjects(&owned(&[("c.ingest.>", "ingest"), ("c.ingest.x", "x")])).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
    }
}

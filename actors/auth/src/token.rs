//! API tokens: their format, how they are kept (hashed), roles and scopes,
//! and reading a credential from an `Authorization` header.
//!
//! A token is `chr_<id>_<secret>`: `id` is 16 lowercase hex digits (public:
//! it names the token in lists, logs and revocations), `secret` is 32 random
//! bytes in unpadded base64url. Only the SHA-256 of the secret is stored. A
//! fast hash is enough here (unlike for passwords): 256 random bits cannot
//! be guessed, so a stolen hash does not lead back to the token.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AuthError;

/// Every token starts with this (secret scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "chr_";

/// Longest `Authorization` header value looked at, bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 4096;

/// Shortest bootstrap token accepted, bytes.
pub const MIN_BOOTSTRAP_BYTES: usize = 16;

/// What a role may do. Roles nest: a writer may also read, an admin may do
/// everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub fn permits(self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Read => self >= Role::Reader,
            Access::Write => self >= Role::Writer,
            Access::Admin => self == Role::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, AuthError> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            other => Err(AuthError::Invalid(format!(
                "unknown role {other:?}: reader, writer or admin"
            ))),
        }
    }
}

/// What a route or subject needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health probes: no credential.
    Public,
    Read,
    Write,
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

/// Narrower rights than the role alone: empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scopes {
    /// The features (route and subject families: `ingest`, `query`, `kv`,
    /// `cluster`, `auth`, ...) the token may use.
    pub features: Vec<String>,
    /// Metric name prefixes the token may write. A token limited to metric
    /// prefixes cannot read (queries are not filtered by metric name yet, so
    /// reading would show everything).
    pub metric_prefixes: Vec<String>,
}

impl Scopes {
    pub fn is_empty(&self) -> bool {
        self.features.is_empty() && self.metric_prefixes.is_empty()
    }
}

/// A token as stored in the replicated state (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    /// What the operator called it.
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Scopes::is_empty")]
    pub scopes: Scopes,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
    /// Milliseconds since the epoch; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// Lowercase hex SHA-256 of the secret part.
    pub secret_sha256: String,
}

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (`bootstrap` for the configured bootstrap token,
    /// `anonymous` when authentication is off).
    pub id: String,
    pub name: String,
    pub role: Role,
    pub scopes: Scopes,
}

impl Principal {
    /// Who everyone is while authentication is off (loopback only).
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            name: "anonymous".into(),
            role: Role::Admin,
            scopes: Scopes::default(),
        }
    }

    /// Whether this principal may use `feature` with `access`.
    pub fn authorize(&self, access: Access, feature: &str) -> Result<(), AuthError> {
        if !self.role.permits(access) {
            return Err(AuthError::Forbidden(format!(
                "token {} has role {}; this needs {}",
                self.id,
                self.role.as_str(),
                match access {
                    Access::Admin => "admin",
                    Access::Write => "writer or admin",
                    _ => "reader, writer or admin",
                }
            )));
        }
        if !self.scopes.features.is_empty() && !self.scopes.features.iter().any(|f| f == feature) {
            return Err(AuthError::Forbidden(format!(
                "token {} is limited to features {:?}, not {feature}",
                self.id, self.scopes.features
            )));
        }
        if access == Access::Read && !self.scopes.metric_prefixes.is_empty() {
            return Err(AuthError::Forbidden(format!(
                "token {} is limited to metric prefixes and may only write",
                self.id
            )));
        }
        Ok(())
    }

    /// Whether this principal may write a point of metric `name`.
    pub fn may_write_metric(&self, name: &str) -> bool {
        self.scopes.metric_prefixes.is_empty()
            || self
                .scopes
                .metric_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
    }
}

/// A newly made token: the only moment its secret exists in the clear.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// `chr_<id>_<secret>`: give this to the client.
    pub token: String,
    pub record: TokenRecord,
}

/// Hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether `secret` hashes to `expected_hex`, in constant time.
pub fn secret_matches(secret: &[u8], expected_hex: &str) -> bool {
    sha256_hex(secret)
        .as_bytes()
        .ct_eq(expected_hex.as_bytes())
        .into()
}

/// Makes a token from the operating system's random source.
pub fn issue(
    name: &str,
    role: Role,
    scopes: Scopes,
    now_ms: i64,
    expires_ms: Option<i64>,
) -> Result<IssuedToken, AuthError> {
    let mut random = [0u8; 40];
    getrandom::fill(&mut random)
        .map_err(|e| AuthError::Internal(format!("no random source: {e}")))?;
    let (id_bytes, secret_bytes) = random.split_at(8);
    let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    Ok(IssuedToken {
        token: format!("{TOKEN_PREFIX}{id}_{secret}"),
        record: TokenRecord {
            id,
            name: name.to_string(),
            role,
            scopes,
            created_ms: now_ms,
            expires_ms,
            secret_sha256: sha256_hex(secret.as_bytes()),
        },
    })
}

/// A token split into its id and secret; `None` when it is not one of ours.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// The token in an `Authorization` header value: `Bearer <token>`, or
/// `Basic base64(<user>:<token>)` (what Grafana's Prometheus data source and
/// Prometheus's remote write send; the user name is ignored). Scheme names
/// are case-insensitive.
pub fn credential_from_header(value: &[u8]) -> Result<String, AuthError> {
    if value.len() > MAX_CREDENTIAL_BYTES {
        return Err(AuthError::Malformed("the Authorization header is too long"));
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| AuthError::Malformed("Authorization is not UTF-8"))?;
    let (scheme, rest) = text.trim().split_once(' ').ok_or(AuthError::Malformed(
        "Authorization needs a scheme and a credential",
    ))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(AuthError::Malformed("an empty bearer token"));
        }
        Ok(rest.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Malformed("Basic credentials are not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| AuthError::Malformed("Basic credentials are not UTF-8"))?;
        let (_, password) = decoded
            .split_once(':')
            .ok_or(AuthError::Malformed("Basic credentials need user:password"))?;
        if password.is_empty() {
            return Err(AuthError::Malformed("Basic credentials without a password"));
        }
        Ok(password.to_string())
    } else {
        Err(AuthError::Malformed(
            "unsupported Authorization scheme: use Bearer or Basic",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn issued_tokens_split_and_match_only_their_own_hash() {
        let a = issue("ci", Role::Writer, Scopes::default(), 1, None).unwrap();
        let b = issue("ci", Role::Writer, Scopes::default(), 1, None).unwrap();
        assert_ne!(a.token, b.token);
        let (id, secret) = split_token(&a.token).unwrap();
        assert_eq!(id, a.record.id);
        assert!(secret_matches(secret.as_bytes(), &a.record.secret_sha256));
        assert!(!secret_matches(secret.as_bytes(), &b.record.secret_sha256));
        assert!(!a.token.contains(&a.record.secret_sha256));
        // The record serializes without the secret.
        let json = serde_json::to_string(&a.record).unwrap();
        assert!(!json.contains(secret), "{json}");
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        let t = "chr_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            credential_from_header(format!("Bearer {t}").as_bytes()).unwrap(),
            t
        );
        assert_eq!(
            credential_from_header(format!("bearer  {t} ").as_bytes()).unwrap(),
            t
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("grafana:{t}"));
        assert_eq!(
            credential_from_header(format!("Basic {basic}").as_bytes()).unwrap(),
            t
        );
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Token x",
            "Basic %%%",
            "Basic Z3JhZmFuYQ==",
        ] {
            assert!(credential_from_header(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(credential_from_header(&vec![b'a'; MAX_CREDENTIAL_BYTES + 1]).is_err());
        assert!(split_token("chr_0123456789abcdef_short").is_none());
        assert!(
            split_token("chr_0123456789ABCDEF_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .is_none()
        );
    }

    #[test]
    fn roles_nest_and_scopes_narrow() {
        let mut p = Principal {
            id: "x".into(),
            name: "x".into(),
            role: Role::Writer,
            scopes: Scopes::default(),
        };
        assert!(p.authorize(Access::Read, "query").is_ok());
        assert!(p.authorize(Access::Write, "ingest").is_ok());
        assert!(matches!(
            p.authorize(Access::Admin, "kv"),
            Err(AuthError::Forbidden(_))
        ));
        p.role = Role::Reader;
        assert!(p.authorize(Access::Write, "ingest").is_err());
        p.role = Role::Admin;
        p.scopes.features = vec!["ingest".into()];
        assert!(p.authorize(Access::Write, "ingest").is_ok());
        assert!(p.authorize(Access::Admin, "kv").is_err());
        p.scopes = Scopes {
            features: vec![],
            metric_prefixes: vec!["app_".into()],
        };
        assert!(p.may_write_metric("app_requests_total"));
        assert!(!p.may_write_metric("node_cpu"));
        assert!(p.authorize(Access::Read, "query").is_err());
    }

    proptest! {
        #[test]
        fn any_header_is_parsed_or_refused_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = credential_from_header(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = split_token(s);
            }
        }
    }
}

//! Authentication and authorization for Chronicle: API tokens with roles
//! (reader, writer, admin) and optional scopes, stored hashed in the
//! cluster's replicated state and followed by every node through its watch,
//! so a token created or revoked on one node counts on all within a moment.
//!
//! [`token`] is the format and the credential parser (no cluster needed);
//! [`Authenticator`] (feature `service`) is the registry a node checks
//! requests against.

#[cfg(feature = "service")]
mod registry;
pub mod token;

#[cfg(feature = "service")]
pub use registry::{Authenticator, NAMESPACE};
pub use token::{Access, IssuedToken, Principal, Role, Scopes, TokenRecord};

/// Why a request was not let through, or a token operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("unknown, revoked or wrong token")]
    Unauthenticated,
    #[error("token {0} has expired")]
    Expired(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the token registry has not loaded yet; retry")]
    NotReady,
    #[error("token store: {0}")]
    Store(String),
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    /// The HTTP status that says this.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::Unauthenticated
            | AuthError::Expired(_) => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::Invalid(_) => 400,
            AuthError::NotReady | AuthError::Store(_) => 503,
            AuthError::Internal(_) => 500,
        }
    }

    /// A short machine-readable code for JSON errors.
    pub fn code(&self) -> &'static str {
        match self.status() {
            401 => "unauthorized",
            403 => "forbidden",
            400 => "bad_request",
            503 => "unavailable",
            _ => "internal",
        }
    }
}

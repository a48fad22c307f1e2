//! The HTTP client every CLI command uses (the platform's, shared with the
//! features' commands): it sends the operator's token (`--token` /
//! `CHRONICLE_TOKEN`) and trusts `--ca-file` for HTTPS.

pub use chronicle_platform::client::{agent, root_store, set_client_auth, token, ClientAuth};

//! The HTTP client every CLI command uses: it sends the operator's token
//! (`--token` / `CHRONICLE_TOKEN`) and trusts `--ca-file` for HTTPS.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How the CLI authenticates to a node, set once from its flags.
#[derive(Debug, Default, Clone)]
pub struct ClientAuth {
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

static CLIENT_AUTH: OnceLock<ClientAuth> = OnceLock::new();

/// Records the credentials for every later request (the first call wins).
pub fn set_client_auth(auth: ClientAuth) {
    let _ = CLIENT_AUTH.set(auth);
}

/// The operator's token, if any.
pub fn token() -> Option<String> {
    CLIENT_AUTH.get().and_then(|a| a.token.clone())
}

/// The certificates to trust for `https://` and `wss://`: `--ca-file`'s, else
/// the Mozilla roots.
pub fn root_store() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match CLIENT_AUTH.get().and_then(|a| a.ca_file.clone()) {
        Some(path) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// An agent that answers every status (the caller reads the JSON error),
/// gives up after `timeout`, and carries the token.
pub fn agent(timeout: Duration) -> Result<ureq::Agent, String> {
    let auth = CLIENT_AUTH.get().cloned().unwrap_or_default();
    let mut builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout));
    if let Some(path) = &auth.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            ));
        }
        builder = builder.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                .build(),
        );
    }
    if let Some(token) = auth.token {
        let value = format!("Bearer {token}");
        builder = builder.middleware(
            move |mut request: ureq::http::Request<ureq::SendBody>,
                  next: ureq::middleware::MiddlewareNext| {
                if let Ok(v) = ureq::http::HeaderValue::from_str(&value) {
                    request
                        .headers_mut()
                        .insert(ureq::http::header::AUTHORIZATION, v);
                }
                next.handle(request)
            },
        );
    }
    Ok(builder.build().into())
}

//! `chronicle query --follow`: a live query over the node's WebSocket
//! (`/api/v1/live`), printing the result and each update until Ctrl-C or
//! until the node closes the session.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

type Error = Box<dyn std::error::Error>;

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// What to follow: the query and how it is asked.
pub struct Follow<'a> {
    /// The node's `http://` or `https://` URL.
    pub http: &'a str,
    pub lang: &'a str,
    pub query: &'a str,
    pub start: Option<&'a str>,
    pub end: Option<&'a str>,
    pub step: Option<&'a str>,
    pub json: bool,
}

/// `host:port` and whether TLS is used, from the node's URL.
fn endpoint(http: &str) -> Result<(bool, String, String), Error> {
    let (tls, rest) = if let Some(r) = http.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = http.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{http:?}: the node's URL starts with http:// or https://").into());
    };
    let authority = rest.split('/').next().unwrap_or(rest).to_string();
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => authority.clone(),
    };
    let address = if authority.contains(':') {
        authority
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    Ok((tls, host.trim_matches(['[', ']']).to_string(), address))
}

fn connect(tls: bool, host: &str, address: &str) -> Result<Box<dyn Stream>, Error> {
    let tcp = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    if !tls {
        return Ok(Box::new(tcp));
    }
    let roots = crate::http_client::root_store()?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    Ok(Box::new(rustls::StreamOwned::new(connection, tcp)))
}

pub fn follow(f: Follow<'_>) -> Result<(), Error> {
    let (tls, host, address) = endpoint(f.http)?;
    let mut params = vec![("query", f.query), ("lang", f.lang)];
    for (k, v) in [("start", f.start), ("end", f.end), ("step", f.step)] {
        if let Some(v) = v {
            params.push((k, v));
        }
    }
    let url = format!(
        "{}://{address}/api/v1/live?{}",
        if tls { "wss" } else { "ws" },
        serde_urlencoded::to_string(&params)?
    );
    let mut request = url.as_str().into_client_request()?;
    if let Some(token) = crate::http_client::token() {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse()?);
    }
    let stream = connect(tls, &host, &address)?;
    let (mut socket, _) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            format!("{url}: HTTP {}: {body}", response.status())
        }
        other => format!("{url}: {other}"),
    })?;
    eprintln!("following (Ctrl-C stops)...");
    loop {
        match socket.read()? {
            Message::Text(text) => {
                if f.json {
                    println!("{text}");
                } else {
                    print_message(&text);
                }
                std::io::stdout().flush()?;
            }
            Message::Close(frame) => {
                if let Some(frame) = frame {
                    if !frame.reason.is_empty() {
                        return Err(
                            format!("the node closed the live query: {}", frame.reason).into()
                        );
                    }
                }
                return Ok(());
            }
            // Pings are answered by tungstenite on the next read.
            _ => {}
        }
    }
}

fn print_message(text: &str) {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        println!("{text}");
        return;
    };
    let kind = value["type"].as_str().unwrap_or("?");
    if kind == "error" {
        eprintln!("error: {}", value["error"].as_str().unwrap_or("?"));
        return;
    }
    println!(
        "-- {kind} at {} --",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    match serde_json::from_value::<chronicle_query::QueryResult>(value["result"].clone()) {
        Ok(result) => crate::client::print_result(&result),
        Err(_) => println!("{}", value["result"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_become_endpoints() {
        let e = endpoint("http://127.0.0.1:8086").unwrap();
        assert_eq!(e, (false, "127.0.0.1".into(), "127.0.0.1:8086".into()));
        let e = endpoint("https://chronicle.example/").unwrap();
        assert_eq!(
            e,
            (
                true,
                "chronicle.example".into(),
                "chronicle.example:443".into()
            )
        );
        assert!(endpoint("ftp://x").is_err());
    }
}

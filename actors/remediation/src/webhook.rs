//! Webhook deliveries: an HTTP POST of JSON, signed with HMAC-SHA256, with
//! a timeout and retries with backoff, only to hosts the operator allows,
//! and never to link-local or cloud metadata addresses unless allowed.

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::RemediationError;

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Chronicle-Signature";

/// Where webhooks may go (`[features.remediation.webhooks]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookPolicy {
    /// Hosts (names or addresses, optionally `host:port`) a webhook may
    /// call; empty: any host but link-local and metadata addresses.
    pub allowed_hosts: Vec<String>,
    /// Lets webhooks reach link-local addresses (169.254.0.0/16, fe80::/10:
    /// where cloud metadata services answer).
    pub allow_link_local: bool,
    /// Tries per delivery (the first and the retries).
    pub attempts: u32,
    /// Per try.
    #[serde(with = "secs")]
    pub timeout: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allow_link_local: false,
            attempts: 3,
            timeout: Duration::from_secs(5),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// A URL a webhook may name: http or https, with a host.
pub fn check_url(url: &str) -> Result<http::Uri, RemediationError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| RemediationError::Invalid(format!("url {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(RemediationError::Invalid(format!(
                "url {url:?}: http or https"
            )))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(RemediationError::Invalid(format!("url {url:?}: no host")));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(RemediationError::Invalid(format!(
            "url {url:?}: credentials in the URL are refused (use a secret)"
        )));
    }
    Ok(uri)
}

/// Addresses no webhook reaches unless allowed: link-local, where cloud
/// metadata services answer (169.254.169.254, fd00:ec2::254).
fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

impl WebhookPolicy {
    /// Whether `url` may be called now: its host on the allow-list (if
    /// any), and none of the addresses it resolves to link-local unless
    /// allowed. (Resolved again by the client when it connects: a name
    /// whose answers change in between is the allow-list's to prevent.)
    pub fn permits(&self, url: &str) -> Result<(), RemediationError> {
        let uri = check_url(url)?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        if !self.allowed_hosts.is_empty() {
            let listed = self.allowed_hosts.iter().any(|h| {
                let h = h.trim_matches(['[', ']']);
                h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(&format!("{host}:{port}"))
            });
            if !listed {
                return Err(RemediationError::Forbidden(format!(
                    "webhook host {host} is not on the allow-list"
                )));
            }
        }
        if !self.allow_link_local {
            let addrs = (host, port)
                .to_socket_addrs()
                .map_err(|e| RemediationError::Action(format!("resolving {host}: {e}")))?;
            for a in addrs {
                if link_local(a.ip()) {
                    return Err(RemediationError::Forbidden(format!(
                        "webhook host {host} is a link-local address ({}): metadata services answer there",
                        a.ip()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `sha256=<hex>` of the body under the secret.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How a delivery went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The last answer's status, if any came.
    pub status: Option<u16>,
    pub attempts: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// POSTs `body` (JSON) to `url`, signed with `secret` when given: retried
/// with backoff (200 ms, doubling) on a connection error, a timeout, 429
/// or 5xx; a 2xx is success, another 4xx fails at once. Blocking (run it on
/// the blocking pool).
pub fn deliver(
    policy: &WebhookPolicy,
    url: &str,
    body: &[u8],
    secret: Option<&[u8]>,
) -> Result<Delivery, RemediationError> {
    policy.permits(url)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(policy.timeout))
        .max_redirects(0)
        .build()
        .into();
    let attempts = policy.attempts.clamp(1, 10);
    let mut delivery = Delivery {
        status: None,
        attempts: 0,
        ok: false,
        error: None,
    };
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << (attempt - 1).min(6)));
        }
        delivery.attempts = attempt + 1;
        let mut request = agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "chronicle-remediation");
        if let Some(s) = secret {
            request = request.header(SIGNATURE_HEADER, sign(s, body));
        }
        match request.send(body) {
            Ok(response) => {
                let status = response.status().as_u16();
                delivery.status = Some(status);
                if (200..300).contains(&status) {
                    delivery.ok = true;
                    delivery.error = None;
                    return Ok(delivery);
                }
                delivery.error = Some(format!("answered {status}"));
                if status != 429 && status < 500 {
                    return Ok(delivery);
                }
            }
            Err(e) => delivery.error = Some(e.to_string()),
        }
    }
    Ok(delivery)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the local server received: (headers, body) per request.
    type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A local server answering each request with the next status of
    /// `statuses` (the last one repeats), recording what it got.
    fn server(statuses: Vec<u16>) -> (String, Received) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    headers.push_str(&line);
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.lock().unwrap().push((headers, body));
                let status = statuses[i.min(statuses.len() - 1)];
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        (url, got)
    }

    #[test]
    fn a_delivery_is_signed_and_retried_on_5xx_until_it_succeeds() {
        let (url, got) = server(vec![503, 500, 204]);
        let policy = WebhookPolicy::default();
        let body = br#"{"anomaly":"x"}"#;
        let d = deliver(&policy, &url, body, Some(b"s3cret")).unwrap();
        assert_eq!(d.attempts, 3);
        assert!(d.ok);
        assert_eq!(d.status, Some(204));
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 3);
        let (headers, received) = &got[2];
        assert_eq!(received, body);
        let want = format!(
            "{}: {}",
            SIGNATURE_HEADER.to_ascii_lowercase(),
            sign(b"s3cret", body)
        );
        assert!(
            headers.to_ascii_lowercase().contains(&want),
            "{headers} lacks {want}"
        );
    }

    #[test]
    fn a_4xx_is_not_retried_and_retries_stop_at_the_limit() {
        let (url, got) = server(vec![400]);
        let d = deliver(&WebhookPolicy::default(), &url, b"{}", None).unwrap();
        assert_eq!((d.ok, d.attempts, d.status), (false, 1, Some(400)));
        assert_eq!(got.lock().unwrap().len(), 1);
        let (url, got) = server(vec![502]);
        let policy = WebhookPolicy {
            attempts: 2,
            ..WebhookPolicy::default()
        };
        let d = deliver(&policy, &url, b"{}", None).unwrap();
        assert_eq!((d.ok, d.attempts, d.status), (false, 2, Some(502)));
        assert_eq!(got.lock().unwrap().len(), 2);
    }

    #[test]
    fn the_allow_list_and_link_local_addresses_are_enforced() {
        let (url, got) = server(vec![200]);
        let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
        let listed = WebhookPolicy {
            allowed_hosts: vec!["hooks.example.com".into()],
            ..WebhookPolicy::default()
        };
        assert!(matches!(
            deliver(&listed, &url, b"{}", None),
            Err(RemediationError::Forbidden(_))
        ));
        let listed = WebhookPolicy {
            allowed_hosts: vec![format!("127.0.0.1:{port}")],
            ..WebhookPolicy::default()
        };
        assert!(deliver(&listed, &url, b"{}", None).unwrap().ok);
        assert_eq!(got.lock().unwrap().len(), 1);
        for metadata in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://[fd00:ec2::254]/x",
            "http://[::ffff:169.254.169.254]/x",
        ] {
            assert!(
                matches!(
                    WebhookPolicy::default().permits(metadata),
                    Err(RemediationError::Forbidden(_))
                ),
                "{metadata}"
            );
        }
        let allowed = WebhookPolicy {
            allow_link_local: true,
            ..WebhookPolicy::default()
        };
        assert!(allowed.permits("http://169.254.169.254/").is_ok());
        for bad in ["ftp://x/", "http:///x", "http://user:pw@host/", "not a url"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}

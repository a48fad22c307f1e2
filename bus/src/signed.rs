//! Authenticated node-to-node traffic: every message a [`SignedBus`] sends
//! carries an HMAC-SHA256 tag over its subject and payload,
//! keyed by the cluster secret, and every message it delivers must carry a
//! valid one. A client that may publish on the cluster's subjects, but does
//! not hold the secret, cannot forge a Raft RPC, a snapshot chunk, a
//! membership change or a replica release: its messages are dropped and
//! counted.
//!
//! What the tag does not give: secrecy (payloads travel in clear unless the
//! NATS connection uses TLS) and replay protection (a party that can
//! subscribe to cluster subjects can record and resend a signed message;
//! NATS permissions keep clients from subscribing to them, see
//! docs/security.md, "Separating cluster traffic from clients on NATS").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::warn;

use crate::{Bus, BusError, Message, Result, Subscription};

/// The header holding the tag (lowercase hex).
pub const MAC_HEADER: &str = "Chronicle-Mac";

/// Shortest cluster secret accepted, bytes: the tag is only as strong as it.
pub const MIN_SECRET_BYTES: usize = 16;

/// Wraps a bus so that what it sends is signed and what it delivers was.
pub struct SignedBus {
    inner: Arc<dyn Bus>,
    key: Hmac<Sha256>,
    rejected: Arc<AtomicU64>,
}

impl SignedBus {
    /// `secret` must hold at least [`MIN_SECRET_BYTES`] bytes.
    pub fn new(inner: Arc<dyn Bus>, secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(BusError::Unauthenticated(format!(
                "the cluster secret has {} bytes; it needs at least {MIN_SECRET_BYTES}",
                secret.len()
            )));
        }
        let key = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| BusError::Unauthenticated(e.to_string()))?;
        Ok(Self {
            inner,
            key,
            rejected: Arc::default(),
        })
    }

    /// How many delivered messages were dropped for a missing or bad tag.
    pub fn rejected(&self) -> Arc<AtomicU64> {
        self.rejected.clone()
    }

    fn sign(&self, mut message: Message) -> Message {
        let tag = tag_of(&self.key, &message).finalize().into_bytes();
        message.headers.insert(MAC_HEADER, to_hex(&tag));
        message
    }
}

/// The MAC over what a message means: each part length-prefixed, so no two
/// different messages feed it the same bytes. The reply subject is left out:
/// the transport picks a request's inbox after the message is signed.
fn tag_of(key: &Hmac<Sha256>, message: &Message) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(b"chronicle-bus-mac-v1");
    for part in [message.subject.as_bytes(), &message.payload] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn verified(key: &Hmac<Sha256>, message: &Message) -> bool {
    let Some(tag) = message.headers.get(MAC_HEADER).and_then(from_hex) else {
        return false;
    };
    // Constant-time comparison.
    tag_of(key, message).verify_slice(&tag).is_ok()
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn reject(rejected: &AtomicU64, message: &Message) {
    let count = rejected.fetch_add(1, Ordering::Relaxed) + 1;
    // Logged at powers of two: a forger cannot flood the log.
    if count.is_power_of_two() {
        warn!(
            subject = %message.subject,
            rejected = count,
            "dropped a node-to-node message without a valid cluster MAC"
        );
    }
}

#[async_trait]
impl Bus for SignedBus {
    async fn publish(&self, message: Message) -> Result<()> {
        self.inner.publish(self.sign(message)).await
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        let subscription = self.inner.subscribe(subject, queue_group).await?;
        let (key, rejected) = (self.key.clone(), self.rejected.clone());
        Ok(subscription.map_stream(move |stream| {
            stream.filter(move |m| {
                let ok = verified(&key, m);
                if !ok {
                    reject(&rejected, m);
                }
                std::future::ready(ok)
            })
        }))
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message> {
        let reply = self.inner.request(self.sign(message), timeout).await?;
        if verified(&self.key, &reply) {
            Ok(reply)
        } else {
            reject(&self.rejected, &reply);
            Err(BusError::Unauthenticated(format!(
                "the reply on {} carries no valid cluster MAC",
                reply.subject
            )))
        }
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn drain(&self) -> Result<()> {
        self.inner.drain().await
    }

    fn new_inbox(&self) -> String {
        self.inner.new_inbox()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BusExt, LocalBus};
    use bytes::Bytes;

    const SECRET: &[u8] = b"a cluster secret of some length";

    #[tokio::test]
    async fn unsigned_forged_and_tampered_messages_are_dropped_and_counted() {
        let raw: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let signed = SignedBus::new(raw.clone(), SECRET).unwrap();
        let other_key = SignedBus::new(raw.clone(), b"another secret, not the cluster's").unwrap();
        let mut sub = signed.subscribe("c.raft.>", None).await.unwrap();

        // No tag, a tag under another key, a valid tag moved to another
        // payload or subject: none is delivered.
        raw.publish_bytes("c.raft.1.2", Bytes::from_static(b"forged"))
            .await
            .unwrap();
        other_key
            .publish_bytes("c.raft.1.2", Bytes::from_static(b"wrong key"))
            .await
            .unwrap();
        let good = signed.sign(Message::new("c.raft.1.2", Bytes::from_static(b"vote")));
        let mut tampered = good.clone();
        tampered.payload = Bytes::from_static(b"vote for me");
        raw.publish(tampered).await.unwrap();
        let mut moved = good.clone();
        moved.subject = "c.raft.1.3".into();
        raw.publish(moved).await.unwrap();
        let mut garbage = good.clone();
        garbage.headers.insert(MAC_HEADER, "zz".repeat(32));
        raw.publish(garbage).await.unwrap();
        // The signed one is.
        signed
            .publish_bytes("c.raft.1.2", Bytes::from_static(b"vote"))
            .await
            .unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&delivered.payload[..], b"vote");
        assert_eq!(signed.rejected().load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn requests_and_replies_are_both_checked() {
        let raw: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let signed = Arc::new(SignedBus::new(raw.clone(), SECRET).unwrap());
        let mut sub = signed.subscribe("c.node.1", None).await.unwrap();
        let responder = signed.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                responder
                    .respond(&m, Bytes::from_static(b"signed answer"))
                    .await
                    .unwrap();
            }
        });
        let reply = signed
            .request(
                Message::new("c.node.1", Bytes::new()),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&reply.payload[..], b"signed answer");

        // An unsigned request is never seen by the responder: it times out.
        let unsigned = raw
            .request(
                Message::new("c.node.1", Bytes::new()),
                Duration::from_millis(200),
            )
            .await;
        assert!(
            matches!(unsigned, Err(BusError::Timeout { .. })),
            "{unsigned:?}"
        );

        // A forged answer to a signed request is refused.
        let mut forger = raw.subscribe("c.node.2", None).await.unwrap();
        let raw_responder = raw.clone();
        tokio::spawn(async move {
            while let Some(m) = forger.next().await {
                let _ = raw_responder
                    .respond(&m, Bytes::from_static(b"forged"))
                    .await;
            }
        });
        let forged = signed
            .request(
                Message::new("c.node.2", Bytes::new()),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(forged, Err(BusError::Unauthenticated(_))),
            "{forged:?}"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        let raw: Arc<dyn Bus> = Arc::new(LocalBus::default());
        assert!(SignedBus::new(raw, b"short").is_err());
    }
}

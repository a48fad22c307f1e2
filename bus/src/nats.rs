//! The bus over a NATS cluster (async-nats).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{ConnectOptions, Event, HeaderMap};
use async_trait::async_trait;
use futures_util::StreamExt;
use tracing::{info, warn};

use crate::message::DrainHandle;
use crate::subject::{validate_publish, validate_queue_group, validate_subscribe};
use crate::{Bus, BusError, Headers, Message, Result, Subscription};

/// The subscriber as a stream that, once drained, has the server stop
/// delivering (NATS's subscription drain: UNSUB, then what is in flight still
/// arrives) and ends after the messages it holds; the connection stays open.
fn draining_subscriber(
    subscriber: async_nats::Subscriber,
    drain: DrainHandle,
) -> impl futures_util::Stream<Item = Message> + Send + 'static {
    futures_util::stream::unfold(
        (subscriber, drain, false),
        |(mut sub, drain, draining)| async move {
            if draining {
                return sub.next().await.map(|m| (from_nats(m), (sub, drain, true)));
            }
            tokio::select! {
                m = sub.next() => m.map(|m| (from_nats(m), (sub, drain, false))),
                () = drain.requested() => {
                    if let Err(e) = sub.drain().await {
                        warn!(error = %e, "subscription drain failed; it ends now");
                        return None;
                    }
                    sub.next().await.map(|m| (from_nats(m), (sub, drain, true)))
                }
            }
        },
    )
}

/// How long a flush waits for its round trip through the server.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach and authenticate with NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// One or more server URLs (`nats://host:4222`, `tls://...`).
    pub urls: Vec<String>,
    /// Client name shown in the server's monitoring.
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// Require TLS even when the URL does not say `tls://`.
    pub require_tls: bool,
    /// PEM file of CA certificates to trust in addition to the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Messages buffered per subscription before NATS's slow-consumer rule drops.
    pub subscription_capacity: Option<usize>,
}

/// Connection state, as seen by the client (also exported as a metric by the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionState {
    Connected = 0,
    Disconnected = 1,
    Closed = 2,
}

/// [`Bus`] over async-nats: reconnects with capped exponential backoff, logs state
/// changes, counts slow-consumer events.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    state: Arc<AtomicU8>,
    slow_consumer: Arc<AtomicU64>,
    urls: String,
}

impl NatsBus {
    pub async fn connect(options: NatsOptions) -> Result<Self> {
        let urls = options.urls.join(",");
        let connect_err = |reason: String| BusError::Connect {
            urls: urls.clone(),
            reason,
        };
        if options.urls.is_empty() {
            return Err(connect_err("no server URL given".into()));
        }
        let state = Arc::new(AtomicU8::new(ConnectionState::Disconnected as u8));
        let slow_consumer = Arc::new(AtomicU64::new(0));
        let mut opts = ConnectOptions::new();
        if let Some(path) = &options.credentials_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| connect_err(format!("credentials file {}: {e}", path.display())))?;
        }
        if let (Some(user), Some(password)) = (&options.user, &options.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &options.token {
            opts = opts.token(token.clone());
        }
        if let Some(seed) = &options.nkey_seed {
            opts = opts.nkey(seed.clone());
        }
        if options.require_tls {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &options.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &options.tls_client_cert {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(n) = options.subscription_capacity {
            opts = opts.subscription_capacity(n);
        }
        if let Some(name) = &options.name {
            opts = opts.name(name);
        }
        let events = state.clone();
        let slow_events = slow_consumer.clone();
        let opts = opts
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(backoff)
            .event_callback(move |event| {
                let state = events.clone();
                let slow = slow_events.clone();
                async move {
                    match &event {
                        Event::Connected => {
                            state.store(ConnectionState::Connected as u8, Ordering::Relaxed);
                            info!("NATS connected");
                        }
                        Event::Disconnected => {
                            state.store(ConnectionState::Disconnected as u8, Ordering::Relaxed);
                            warn!("NATS disconnected; reconnecting");
                        }
                        Event::Closed => {
                            state.store(ConnectionState::Closed as u8, Ordering::Relaxed);
                            info!("NATS connection closed");
                        }
                        Event::SlowConsumer(sid) => {
                            // One event per dropped message: log the 1st, 2nd, 4th, ...
                            let n = slow.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_power_of_two() {
                                warn!(
                                    sid,
                                    total = n,
                                    "NATS slow consumer: messages dropped for a subscription"
                                )
                            }
                        }
                        Event::Draining => info!("NATS connection draining"),
                        other => warn!(event = %other, "NATS event"),
                    }
                }
            });
        let client = opts
            .connect(options.urls.as_slice())
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        state.store(ConnectionState::Connected as u8, Ordering::Relaxed);
        Ok(Self {
            client,
            state,
            slow_consumer,
            urls,
        })
    }

    pub fn state(&self) -> ConnectionState {
        match self.state.load(Ordering::Relaxed) {
            0 => ConnectionState::Connected,
            1 => ConnectionState::Disconnected,
            _ => ConnectionState::Closed,
        }
    }

    /// Messages dropped so far because a subscription's buffer was full.
    pub fn slow_consumer_events(&self) -> u64 {
        self.slow_consumer.load(Ordering::Relaxed)
    }

    pub fn urls(&self) -> &str {
        &self.urls
    }

    /// The underlying client, for features the trait does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

/// Reconnect delay: 100 ms doubling to a 5 s cap.
fn backoff(attempts: usize) -> Duration {
    let exp = attempts.min(6) as u32;
    Duration::from_millis((100u64 << exp).min(5_000))
}

fn to_nats_headers(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        map.append(name, value);
    }
    map
}

fn from_nats(message: async_nats::Message) -> Message {
    let mut headers = Headers::new();
    if let Some(map) = &message.headers {
        for (name, values) in map.iter() {
            for v in values {
                headers.append(name.to_string(), v.as_str());
            }
        }
    }
    Message {
        subject: message.subject.to_string(),
        reply: message.reply.map(|r| r.to_string()),
        headers,
        payload: message.payload,
    }
}

fn nats_err(operation: &'static str) -> impl Fn(String) -> BusError {
    move |reason| BusError::Nats { operation, reason }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: Message) -> Result<()> {
        validate_publish(&message.subject)?;
        let err = nats_err("publish");
        let headers = to_nats_headers(&message.headers);
        match message.reply {
            Some(reply) => {
                validate_publish(&reply)?;
                self.client
                    .publish_with_reply_and_headers(
                        message.subject,
                        reply,
                        headers,
                        message.payload,
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(message.subject, headers, message.payload)
                    .await
            }
        }
        .map_err(|e| err(e.to_string()))
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        validate_subscribe(subject)?;
        let err = nats_err("subscribe");
        let subscriber = match queue_group {
            Some(q) => {
                validate_queue_group(q)?;
                self.client
                    .queue_subscribe(subject.to_string(), q.to_string())
                    .await
            }
            None => self.client.subscribe(subject.to_string()).await,
        }
        .map_err(|e| err(e.to_string()))?;
        let drain = DrainHandle::default();
        Ok(Subscription::new(
            subject,
            draining_subscriber(subscriber, drain.clone()),
            drain,
        ))
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message> {
        validate_publish(&message.subject)?;
        let subject = message.subject.clone();
        let request = async_nats::Request::new()
            .payload(message.payload)
            .headers(to_nats_headers(&message.headers))
            .timeout(Some(timeout));
        match self.client.send_request(message.subject, request).await {
            Ok(reply) => Ok(from_nats(reply)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                RequestErrorKind::TimedOut => BusError::Timeout { subject, timeout },
                _ => nats_err("request")(e.to_string()),
            }),
        }
    }

    async fn flush(&self) -> Result<()> {
        // async-nats's flush only empties the socket buffer. A message to
        // ourselves through the server proves the server has processed
        // everything sent before it, subscriptions included.
        let err = nats_err("flush");
        let inbox = self.client.new_inbox();
        let mut echo = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| err(e.to_string()))?;
        self.client
            .publish(inbox, bytes::Bytes::new())
            .await
            .map_err(|e| err(e.to_string()))?;
        self.client.flush().await.map_err(|e| err(e.to_string()))?;
        match tokio::time::timeout(FLUSH_TIMEOUT, echo.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(err("connection closed".into())),
            Err(_) => Err(err(format!("no round trip within {FLUSH_TIMEOUT:?}"))),
        }
    }

    async fn drain(&self) -> Result<()> {
        self.client
            .drain()
            .await
            .map_err(|e| nats_err("drain")(e.to_string()))
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Connected
    }
}

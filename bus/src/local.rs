//! The in-process bus: NATS semantics without a server, the embedded default.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tracing::warn;

use crate::message::DrainHandle;
use crate::subject::{matches, validate_publish, validate_queue_group, validate_subscribe};
use crate::{Bus, BusError, Message, Result, Subscription};

/// Settings of a [`LocalBus`].
#[derive(Debug, Clone)]
pub struct LocalBusOptions {
    /// Messages buffered per subscription before publishers wait.
    pub subscription_capacity: usize,
    /// How long a publisher waits on a full subscription before the message is
    /// dropped for that subscriber (NATS's slow-consumer rule; it is counted).
    pub slow_consumer_timeout: Duration,
    /// Largest payload accepted (NATS's default `max_payload` is 1 MiB; ours is the
    /// same so code that works here works against a default server).
    pub max_payload: usize,
}

impl Default for LocalBusOptions {
    fn default() -> Self {
        Self {
            subscription_capacity: 1024,
            slow_consumer_timeout: Duration::from_secs(10),
            max_payload: 1 << 20,
        }
    }
}

/// In-process bus with the same semantics as [`crate::NatsBus`]: subject validation,
/// wildcards, queue groups (one member per message), request/reply through inboxes
/// and a no-responders error. Cloning shares the bus.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

struct Inner {
    options: LocalBusOptions,
    subscriptions: RwLock<Vec<Entry>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    closed: AtomicBool,
    inbox_prefix: String,
    slow_consumer_drops: AtomicU64,
}

struct Entry {
    pattern: String,
    queue_group: Option<String>,
    tx: mpsc::Sender<Message>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new(LocalBusOptions::default())
    }
}

impl LocalBus {
    pub fn new(options: LocalBusOptions) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            options,
            subscriptions: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(0),
            round_robin: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            inbox_prefix: format!("_INBOX.{:x}{:x}", std::process::id(), nanos),
            slow_consumer_drops: AtomicU64::new(0),
        });
        Self { inner }
    }

    /// Messages dropped because a subscriber stayed full past the slow-consumer timeout.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.inner.slow_consumer_drops.load(Ordering::Relaxed)
    }

    /// Delivers to every plain subscriber and one member per queue group; returns
    /// how many subscriptions received the message.
    async fn deliver(&self, message: Message) -> Result<usize> {
        validate_publish(&message.subject)?;
        if let Some(reply) = &message.reply {
            validate_publish(reply)?;
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if message.payload.len() > self.inner.options.max_payload {
            return Err(BusError::PayloadTooLarge {
                size: message.payload.len(),
                limit: self.inner.options.max_payload,
            });
        }
        let targets = self.targets(&message.subject);
        let mut delivered = 0;
        let mut saw_closed = false;
        for tx in targets {
            match tx
                .send_timeout(message.clone(), self.inner.options.slow_consumer_timeout)
                .await
            {
                Ok(()) => delivered += 1,
                Err(SendTimeoutError::Timeout(_)) => {
                    self.inner
                        .slow_consumer_drops
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(subject = %message.subject, "slow consumer: message dropped");
                }
                Err(SendTimeoutError::Closed(_)) => saw_closed = true,
            }
        }
        if saw_closed {
            self.inner
                .subscriptions
                .write()
                .retain(|e| !e.tx.is_closed());
        }
        Ok(delivered)
    }

    fn targets(&self, subject: &str) -> Vec<mpsc::Sender<Message>> {
        let subs = self.inner.subscriptions.read();
        let mut out = Vec::new();
        let mut groups: Vec<(&str, Vec<&mpsc::Sender<Message>>)> = Vec::new();
        for e in subs.iter().filter(|e| !e.tx.is_closed()) {
            if !matches(&e.pattern, subject) {
                continue;
            }
            match &e.queue_group {
                None => out.push(e.tx.clone()),
                Some(q) => match groups.iter_mut().find(|(name, _)| name == q) {
                    Some((_, members)) => members.push(&e.tx),
                    None => groups.push((q, vec![&e.tx])),
                },
            }
        }
        let turn = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
        for (_, members) in groups {
            // The member with the most room, ties broken round-robin: spreads load
            // and steers around a busy member instead of queueing behind it.
            let n = members.len();
            let best = (0..n)
                .map(|k| members[(turn + k) % n])
                .max_by_key(|tx| tx.capacity())
                .expect("a group has at least one member");
            out.push(best.clone());
        }
        out
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, message: Message) -> Result<()> {
        self.deliver(message).await.map(|_| ())
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        validate_subscribe(subject)?;
        if let Some(q) = queue_group {
            validate_queue_group(q)?;
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let (tx, rx) = mpsc::channel(self.inner.options.subscription_capacity.max(1));
        let mut subs = self.inner.subscriptions.write();
        subs.retain(|e| !e.tx.is_closed());
        subs.push(Entry {
            pattern: subject.to_string(),
            queue_group: queue_group.map(str::to_string),
            tx,
        });
        let drain = DrainHandle::default();
        Ok(Subscription::new(
            subject,
            draining_stream(rx, drain.clone()),
            drain,
        ))
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Message> {
        let inbox = self.new_inbox();
        let mut replies = self.subscribe(&inbox, None).await?;
        message.reply = Some(inbox);
        let subject = message.subject.clone();
        if self.deliver(message).await? == 0 {
            return Err(BusError::NoResponders(subject));
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout { subject, timeout }),
        }
    }

    async fn flush(&self) -> Result<()> {
        // Deliveries are complete when publish returns.
        Ok(())
    }

    async fn drain(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        // Dropping the senders ends each subscription after its buffered messages.
        self.inner.subscriptions.write().clear();
        Ok(())
    }

    fn new_inbox(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.inner.inbox_prefix)
    }
}

/// The receiver as a stream that, once drained, refuses new messages (senders
/// see it closed) and ends after the buffered ones.
fn draining_stream(
    rx: mpsc::Receiver<Message>,
    drain: DrainHandle,
) -> impl futures_util::Stream<Item = Message> + Send + 'static {
    futures_util::stream::unfold((rx, drain, false), |(mut rx, drain, closed)| async move {
        if closed {
            return rx.recv().await.map(|m| (m, (rx, drain, true)));
        }
        tokio::select! {
            m = rx.recv() => m.map(|m| (m, (rx, drain, false))),
            () = drain.requested() => {
                rx.close();
                rx.recv().await.map(|m| (m, (rx, drain, true)))
            }
        }
    })
}

//! A fault-injecting wrapper around any [`Bus`], driven at run time by a shared
//! [`FaultController`]: drop, delay or duplicate messages by subject pattern, and
//! partition named nodes from each other.
//!
//! Every message a [`FaultyBus`] sends carries its node name in the `Chronicle-From`
//! header; a node's subscriptions discard messages from nodes it is partitioned from,
//! so a partition cuts requests and their replies alike, over NATS or in process.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

use crate::subject::{matches, validate_subscribe};
use crate::{Bus, BusError, Message, Result, Subscription};

/// The header naming the sending node.
pub const FROM_HEADER: &str = "Chronicle-From";

/// What happens to a message whose subject matches a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Lost with this probability (0..=1).
    Drop { probability: f64 },
    /// Delivered late (later messages may overtake it).
    Delay(Duration),
    /// Delivered twice (a request: its responder gets it twice, the
    /// requester hears the first answer).
    Duplicate,
}

/// Identifies a rule for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

/// Faults shared by every [`FaultyBus`] of a test or a chaos run.
pub struct FaultController {
    rules: RwLock<Vec<(RuleId, String, Fault)>>,
    /// Unordered pairs of node names that cannot hear each other.
    cut: RwLock<HashSet<(String, String)>>,
    next_rule: AtomicU64,
    rng: Mutex<SmallRng>,
    injected: AtomicU64,
}

impl FaultController {
    /// A controller with no faults; `seed` makes probabilistic drops reproducible.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            rules: RwLock::new(Vec::new()),
            cut: RwLock::new(HashSet::new()),
            next_rule: AtomicU64::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            injected: AtomicU64::new(0),
        })
    }

    /// Applies `fault` to messages whose subject matches `pattern` (NATS wildcards).
    pub fn add_rule(&self, pattern: &str, fault: Fault) -> Result<RuleId> {
        validate_subscribe(pattern)?;
        if let Fault::Drop { probability } = fault {
            if !(0.0..=1.0).contains(&probability) {
                return Err(BusError::InvalidSubject {
                    subject: pattern.to_string(),
                    reason: "drop probability must be within 0..=1",
                });
            }
        }
        let id = RuleId(self.next_rule.fetch_add(1, Ordering::Relaxed));
        self.rules.write().push((id, pattern.to_string(), fault));
        Ok(id)
    }

    pub fn remove_rule(&self, id: RuleId) {
        self.rules.write().retain(|(r, ..)| *r != id);
    }

    /// Removes every rule and heals every partition.
    pub fn clear(&self) {
        self.rules.write().clear();
        self.cut.write().clear();
    }

    /// Cuts every node in `side_a` off from every node in `side_b`.
    pub fn partition(&self, side_a: &[&str], side_b: &[&str]) {
        let mut cut = self.cut.write();
        for a in side_a {
            for b in side_b {
                cut.insert(pair(a, b));
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) {
        self.cut.write().clear();
    }

    pub fn is_partitioned(&self, a: &str, b: &str) -> bool {
        a != b && self.cut.read().contains(&pair(a, b))
    }

    /// How many messages the controller has dropped, delayed, duplicated or cut.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn faults_for(&self, subject: &str) -> Vec<Fault> {
        self.rules
            .read()
            .iter()
            .filter(|(_, pattern, _)| matches(pattern, subject))
            .map(|(_, _, f)| f.clone())
            .collect()
    }

    fn roll(&self, probability: f64) -> bool {
        self.rng.lock().random::<f64>() < probability
    }

    fn count(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// What the faults decided for one message.
struct Plan {
    drop: bool,
    delay: Duration,
    copies: usize,
}

/// A [`Bus`] seen from node `node` through the faults of a [`FaultController`].
#[derive(Clone)]
pub struct FaultyBus {
    inner: Arc<dyn Bus>,
    node: String,
    faults: Arc<FaultController>,
}

impl FaultyBus {
    pub fn new(inner: Arc<dyn Bus>, node: impl Into<String>, faults: Arc<FaultController>) -> Self {
        Self {
            inner,
            node: node.into(),
            faults,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn plan(&self, subject: &str) -> Plan {
        let mut plan = Plan {
            drop: false,
            delay: Duration::ZERO,
            copies: 1,
        };
        for fault in self.faults.faults_for(subject) {
            match fault {
                Fault::Drop { probability } => plan.drop |= self.faults.roll(probability),
                Fault::Delay(d) => plan.delay = plan.delay.max(d),
                Fault::Duplicate => plan.copies = 2,
            }
        }
        if plan.drop || !plan.delay.is_zero() || plan.copies > 1 {
            self.faults.count();
            debug!(subject, node = %self.node, drop = plan.drop, delay = ?plan.delay, copies = plan.copies, "fault injected");
        }
        plan
    }

    fn stamp(&self, mut message: Message) -> Message {
        message.headers.insert(FROM_HEADER, self.node.clone());
        message
    }
}

#[async_trait]
impl Bus for FaultyBus {
    async fn publish(&self, message: Message) -> Result<()> {
        let message = self.stamp(message);
        let plan = self.plan(&message.subject);
        if plan.drop {
            return Ok(());
        }
        if plan.delay.is_zero() {
            for _ in 0..plan.copies {
                self.inner.publish(message.clone()).await?;
            }
            return Ok(());
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(plan.delay).await;
            for _ in 0..plan.copies {
                if let Err(e) = inner.publish(message.clone()).await {
                    debug!(error = %e, "delayed publish failed");
                }
            }
        });
        Ok(())
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription> {
        let subscription = self.inner.subscribe(subject, queue_group).await?;
        let faults = self.faults.clone();
        let node = self.node.clone();
        Ok(subscription.map_stream(move |stream| {
            stream.filter(move |m| {
                let cut = m
                    .headers
                    .get(FROM_HEADER)
                    .is_some_and(|from| faults.is_partitioned(from, &node));
                if cut {
                    faults.count();
                }
                std::future::ready(!cut)
            })
        }))
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message> {
        let started = Instant::now();
        let message = self.stamp(message);
        let subject = message.subject.clone();
        let plan = self.plan(&subject);
        let timed_out = || BusError::Timeout {
            subject: subject.clone(),
            timeout,
        };
        if plan.drop {
            tokio::time::sleep(timeout).await;
            return Err(timed_out());
        }
        if !plan.delay.is_zero() {
            if plan.delay >= timeout {
                tokio::time::sleep(timeout).await;
                return Err(timed_out());
            }
            tokio::time::sleep(plan.delay).await;
        }
        // A duplicated request reaches the responder again; the requester
        // hears one answer (the copy's goes to an inbox nobody reads).
        for _ in 1..plan.copies {
            let mut copy = message.clone();
            copy.reply = Some(self.inner.new_inbox());
            if let Err(e) = self.inner.publish(copy).await {
                debug!(error = %e, "duplicate request copy failed");
            }
        }
        let left = timeout.saturating_sub(started.elapsed());
        let reply = self.inner.request(message, left).await?;
        let cut = reply
            .headers
            .get(FROM_HEADER)
            .is_some_and(|from| self.faults.is_partitioned(from, &self.node));
        if cut {
            // The reply would never have arrived: behave like the network would.
            self.faults.count();
            tokio::time::sleep(timeout.saturating_sub(started.elapsed())).await;
            return Err(timed_out());
        }
        Ok(reply)
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

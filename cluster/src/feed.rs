//! The change feed: what was written, for live consumers (docs/feed.md).
//!
//! Every replica's state machine hands each point batch it applies to a
//! bounded local channel ([`Applied`]); per group, a task on each node keeps
//! the recent ones and, while the node leads the group, publishes each on
//! `<prefix>.events.write.<metric>` (JSON, one message per metric of the
//! batch). A node that becomes leader publishes again what it applied
//! recently, so a batch the old leader applied but died before publishing is
//! not lost; consumers drop the repeats by (shard, index, part). Every event
//! names the index of the group's previous point batch, so a consumer
//! following all metrics sees a gap instead of missing it silently.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, Message, Subscription};
use chronicle_storage::EncodedPoints;
use openraft::Raft;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::types::TypeConfig;
use crate::ClusterError;

/// A point batch one replica applied.
#[derive(Debug, Clone)]
pub struct Applied {
    pub shard: u32,
    pub index: u64,
    /// The group's previous point batch, if this replica applied it since it
    /// started (every replica applies the same entries, so all agree).
    pub prev: Option<u64>,
    pub points: EncodedPoints,
}

/// Batches a replica's channel holds for its publisher.
pub const LOCAL_CAPACITY: usize = 1024;
/// What a new leader publishes again: its batches of the last few seconds.
const REPUBLISH_WINDOW: Duration = Duration::from_secs(10);
const REPUBLISH_MAX: usize = 4096;
/// Series named in one event at most (the rest are counted).
pub const MAX_SERIES_PER_EVENT: usize = 1000;

/// One event: the points of one metric in one committed batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteEvent {
    pub shard: u32,
    /// The batch's Raft log index in its group.
    pub index: u64,
    /// The group's previous point batch (`null`: the publisher restarted
    /// since and does not know it).
    pub prev: Option<u64>,
    /// This metric's place among the batch's metrics, and their number.
    pub part: u32,
    pub parts: u32,
    pub metric: String,
    pub count: usize,
    /// Oldest and newest timestamp (ns).
    pub start: i64,
    pub end: i64,
    /// The series written, as label sets (up to [`MAX_SERIES_PER_EVENT`]).
    pub series: Vec<BTreeMap<String, String>>,
    pub series_total: usize,
    /// `[series position, timestamp ns, value]` per point, when the node
    /// publishes points (`[cluster] write_event_points`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<(usize, i64, f64)>>,
}

/// The subject a metric's events go to.
pub fn event_subject(prefix: &str, metric: &str) -> String {
    format!("{prefix}.events.write.{metric}")
}

/// A series' labels as a JSON object, borrowed from the batch.
struct SeriesOut<'a>(&'a [chronicle_storage::LabelRef<'a>]);

impl Serialize for SeriesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for l in self.0 {
            map.serialize_entry(l.name, l.value)?;
        }
        map.end()
    }
}

/// [`WriteEvent`] as published: borrowed from the batch, so building one
/// copies no label.
#[derive(Serialize)]
struct EventOut<'a> {
    shard: u32,
    index: u64,
    prev: Option<u64>,
    part: u32,
    parts: u32,
    metric: &'a str,
    count: usize,
    start: i64,
    end: i64,
    series: Vec<SeriesOut<'a>>,
    series_total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    points: Option<Vec<(usize, i64, f64)>>,
}

/// A batch's events as (metric, JSON), one per metric in order of first
/// appearance.
pub fn encode_events(a: &Applied, with_points: bool) -> Vec<(String, Vec<u8>)> {
    let Ok(view) = a.points.view() else {
        return Vec::new();
    };
    let points: Vec<_> = view.iter().collect();
    let mut order: Vec<&str> = Vec::new();
    // Seeded hashing (label sets are clients' bytes); SipHash over every
    // point's labels was a visible share of a node's ingest CPU.
    let mut by_metric: foldhash::HashMap<&str, Vec<usize>> = Default::default();
    for (i, p) in points.iter().enumerate() {
        by_metric
            .entry(p.metric)
            .or_insert_with(|| {
                order.push(p.metric);
                Vec::new()
            })
            .push(i);
    }
    let parts = order.len() as u32;
    let mut out = Vec::with_capacity(order.len());
    for (part, metric) in order.iter().enumerate() {
        let mine = &by_metric[metric];
        let mut position: foldhash::HashMap<&[chronicle_storage::LabelRef<'_>], usize> =
            Default::default();
        let mut series = Vec::new();
        let mut event_points = with_points.then(|| Vec::with_capacity(mine.len()));
        let (mut start, mut end) = (i64::MAX, i64::MIN);
        for &i in mine {
            let p = &points[i];
            start = start.min(p.timestamp);
            end = end.max(p.timestamp);
            let next = position.len();
            let at = *position.entry(p.labels).or_insert(next);
            if at == next && series.len() < MAX_SERIES_PER_EVENT {
                series.push(SeriesOut(p.labels));
            }
            if let Some(ps) = &mut event_points {
                ps.push((at, p.timestamp, p.value));
            }
        }
        let event = EventOut {
            shard: a.shard,
            index: a.index,
            prev: a.prev,
            part: part as u32,
            parts,
            metric,
            count: mine.len(),
            start,
            end,
            series,
            series_total: position.len(),
            points: event_points,
        };
        if let Ok(json) = serde_json::to_vec(&event) {
            out.push((metric.to_string(), json));
        }
    }
    out
}

/// Publishes the group's applied batches while this node leads it (see the
/// module docs). Ends when the group's channel closes.
pub(crate) fn publish_while_leading(
    raft: Raft<TypeConfig>,
    mut applied: tokio::sync::broadcast::Receiver<Arc<Applied>>,
    bus: Arc<dyn Bus>,
    prefix: String,
    with_points: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = raft.metrics().borrow().id;
        let mut recent: VecDeque<(Instant, Arc<Applied>)> = VecDeque::new();
        let mut metrics = raft.metrics();
        let mut leading = false;
        loop {
            tokio::select! {
                got = applied.recv() => match got {
                    Ok(batch) => {
                        while recent.len() >= REPUBLISH_MAX
                            || recent.front().is_some_and(|(t, _)| t.elapsed() > REPUBLISH_WINDOW)
                        {
                            recent.pop_front();
                        }
                        recent.push_back((Instant::now(), batch.clone()));
                        if leading {
                            publish(bus.as_ref(), &prefix, &batch, with_points).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "the change feed publisher fell behind its shard; consumers will see a gap");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = metrics.borrow().current_leader == Some(me);
                    if now && !leading {
                        debug!(batches = recent.len(), "leading: publishing recent batches again");
                        for (_, batch) in &recent {
                            publish(bus.as_ref(), &prefix, batch, with_points).await;
                        }
                    }
                    leading = now;
                }
            }
        }
    })
}

async fn publish(bus: &dyn Bus, prefix: &str, batch: &Applied, with_points: bool) {
    for (metric, payload) in encode_events(batch, with_points) {
        if let Err(e) = bus
            .publish(Message::new(event_subject(prefix, &metric), payload))
            .await
        {
            debug!(error = %e, "write event not published");
        }
    }
}

/// A page of committed point batches ([`crate::ClusterNode::committed_batches`]).
#[derive(Debug, Clone)]
pub struct CommittedBatches {
    /// Oldest first; `prev` links the batches of this page.
    pub batches: Vec<Applied>,
    /// The last index this page covers: read on after it.
    pub next: u64,
    /// Entries up to this index are no longer in the log (compacted into a
    /// snapshot): what they held is for a query to fill.
    pub compacted: Option<u64>,
}

/// What a consumer of the feed receives.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Write(WriteEvent),
    /// Point batches of `shard` with an index between `after` and `before`
    /// (both exclusive) were not seen or seen only in part, and with
    /// `partial` also some metrics of batch `before`: a slow consumer dropped by the bus, or a leader
    /// that died before publishing. Fill it with
    /// [`crate::ClusterNode::committed_batches`] from `after`.
    Gap {
        shard: u32,
        after: u64,
        before: u64,
        partial: bool,
    },
}

/// A consumer of `<prefix>.events.write.>` (every metric): events once each,
/// in each shard's log order as published, with gaps reported.
pub struct WriteFeed {
    subscription: Subscription,
    /// Per shard: the last index seen, the next part expected of it and
    /// its number of parts.
    seen: HashMap<u32, (u64, u32, u32)>,
    /// An event held back while its gap is reported first.
    pending: Option<WriteEvent>,
}

impl WriteFeed {
    /// Subscribes to every metric's events on `bus`. The subscription's
    /// buffer is the bus's (bounded); what a slow consumer loses shows up as
    /// a [`FeedItem::Gap`].
    pub async fn subscribe(bus: &dyn Bus, prefix: &str) -> Result<Self, ClusterError> {
        let subscription = bus
            .subscribe(&format!("{prefix}.events.write.>"), None)
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        Ok(Self {
            subscription,
            seen: HashMap::new(),
            pending: None,
        })
    }

    /// The next event or gap; `None` when the subscription ends.
    pub async fn next(&mut self) -> Option<FeedItem> {
        if let Some(event) = self.pending.take() {
            return Some(FeedItem::Write(event));
        }
        loop {
            let message = self.subscription.next().await?;
            let Ok(event) = serde_json::from_slice::<WriteEvent>(&message.payload) else {
                continue;
            };
            if let Some(item) = self.admit(event) {
                return Some(item);
            }
        }
    }

    /// Drops repeats; reports a gap before the event that reveals it.
    fn admit(&mut self, event: WriteEvent) -> Option<FeedItem> {
        let shard = event.shard;
        // From the bus: any publisher may send any numbers.
        let after_part = event.part.saturating_add(1);
        let Some((last, next_part, parts)) = self.seen.get(&shard).copied() else {
            self.seen
                .insert(shard, (event.index, after_part, event.parts));
            return Some(FeedItem::Write(event));
        };
        if event.index < last || (event.index == last && event.part < next_part) {
            return None;
        }
        self.seen
            .insert(shard, (event.index, after_part, event.parts));
        let new_batch = event.index != last;
        // The last batch's later parts never came.
        let tail_lost = new_batch && next_part < parts;
        let missed_batches = new_batch && event.prev.is_some_and(|p| p > last);
        let partial = (!new_batch && event.part > next_part) || (new_batch && event.part > 0);
        if !missed_batches && !partial && !tail_lost {
            return Some(FeedItem::Write(event));
        }
        let gap = FeedItem::Gap {
            shard,
            // Batch `last` is in the gap when some of it was missed.
            after: if !new_batch || tail_lost {
                last.saturating_sub(1)
            } else {
                last
            },
            before: event.index,
            partial,
        };
        self.pending = Some(event);
        Some(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64, prev: Option<u64>, part: u32, parts: u32) -> WriteEvent {
        WriteEvent {
            shard: 0,
            index,
            prev,
            part,
            parts,
            metric: format!("m{part}"),
            count: 1,
            start: 0,
            end: 0,
            series: Vec::new(),
            series_total: 1,
            points: None,
        }
    }

    #[tokio::test]
    async fn repeats_are_dropped_and_a_skipped_batch_is_a_gap() {
        let bus = chronicle_bus::LocalBus::default();
        let mut feed = WriteFeed {
            subscription: bus.subscribe("unused", None).await.unwrap(),
            seen: HashMap::new(),
            pending: None,
        };
        let mut seen = Vec::new();
        for e in [
            event(5, None, 0, 2),
            event(5, None, 1, 2),
            event(5, None, 0, 2), // a new leader publishing again
            event(5, None, 1, 2),
            event(7, Some(5), 0, 1),
            event(12, Some(9), 0, 1), // 9 was never seen
            event(14, Some(12), 0, 2),
            event(15, Some(14), 0, 1), // 14's second part never came
        ] {
            if let Some(item) = feed.admit(e) {
                seen.push(item);
                if let Some(p) = feed.pending.take() {
                    seen.push(FeedItem::Write(p));
                }
            }
        }
        let indexes: Vec<String> = seen
            .iter()
            .map(|i| match i {
                FeedItem::Write(e) => format!("{}.{}", e.index, e.part),
                FeedItem::Gap { after, before, .. } => format!("gap {after}..{before}"),
            })
            .collect();
        assert_eq!(
            indexes,
            [
                "5.0",
                "5.1",
                "7.0",
                "gap 7..12",
                "12.0",
                "14.0",
                "gap 13..15",
                "15.0"
            ]
        );
    }
}

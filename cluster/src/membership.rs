//! Membership changes: moving a shard's replica from one node to another,
//! adding a node (shards rebalance onto it), removing one (its shards move
//! first), and handing a shard's leadership to a chosen replica.
//!
//! Placement has no store of its own: a shard's replicas are its Raft group's
//! voters, changed through that group's log (openraft's joint consensus), so
//! each shard's placement is exactly as durable and consistent as its data.
//! A move adds the new node as a learner, waits until it has caught up (from
//! a snapshot when the log was purged), then swaps the voters; the node left
//! out sees itself gone from the membership, stops its member and deletes the
//! replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chronicle_bus::Message;
use openraft::Raft;
use rkyv::{Archive, Deserialize, Serialize};
use tracing::{info, warn};

use crate::node::ClusterNode;
use crate::types::TypeConfig;
use crate::ClusterError;

/// How long a leadership transfer waits for its heir to catch up (a heir
/// installing a snapshot of a large shard needs seconds).
const TRANSFER_CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// Requests to a node as a whole, on `<prefix>.node.<id>`, and
/// `Info` to any node on `<prefix>.cluster.info`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireNodeRequest {
    /// Start a member of this shard's group (it will receive the group's
    /// state from the leader).
    Host(u32),
    /// Start an election in this shard's group now.
    Elect(u32),
    /// This node was voted out of the shard's group: check with the group and
    /// delete the replica. (The leader stops replicating to a removed member
    /// as soon as the new membership is in its log, so the member may never
    /// see it.)
    Release(u32),
    Info,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireNodeReply {
    Done,
    Info {
        node: u64,
        shards: u32,
        hosted: Vec<u32>,
    },
    Error(String),
}

fn node_subject(prefix: &str, node: u64) -> String {
    format!("{prefix}.node.{node}")
}

fn info_subject(prefix: &str) -> String {
    format!("{prefix}.cluster.info")
}

/// How long a learner may take to catch up before a move is abandoned.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a member that hears from no leader asks whether it was moved away.
const ORPHAN_CHECK_EVERY: Duration = Duration::from_secs(3);

/// Silence from leaders after which a member starts asking.
const ORPHAN_SILENCE: Duration = Duration::from_secs(2);

/// Serves this node's node-level requests until shutdown (subscribed before
/// it returns; a server that panics is started again, subscribing anew).
pub(crate) async fn serve_node(node: &Arc<ClusterNode>) -> Result<(), ClusterError> {
    let prefix = node.config.prefix.clone();
    for (name, subject, group) in [
        (
            "node request server",
            node_subject(&prefix, node.config.node_id),
            None,
        ),
        ("node info server", info_subject(&prefix), Some("info")),
    ] {
        let sub = node
            .bus
            .subscribe(&subject, group)
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let weak = Arc::downgrade(node);
        let first = parking_lot::Mutex::new(Some(sub));
        let server = {
            let weak = weak.clone();
            move || {
                let (sub, weak, subject) = (first.lock().take(), weak.clone(), subject.clone());
                tokio::spawn(serve_node_subject(weak, subject, group, sub))
            }
        };
        node.add_service(crate::supervise::service(weak, name, server));
    }
    Ok(())
}

/// Answers node requests on `subject` (through `sub`, or a new subscription).
async fn serve_node_subject(
    weak: Weak<ClusterNode>,
    subject: String,
    group: Option<&'static str>,
    sub: Option<chronicle_bus::Subscription>,
) {
    let mut sub = match sub {
        Some(sub) => sub,
        None => loop {
            let Some(node) = weak.upgrade() else { return };
            match node.bus.subscribe(&subject, group).await {
                Ok(sub) => break sub,
                Err(e) => {
                    warn!(subject, error = %e, "cannot subscribe again; retrying");
                    drop(node);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        },
    };
    while let Some(message) = sub.next().await {
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let Some(node) = weak.upgrade() else { break };
        tokio::spawn(async move {
            let reply = match chronicle_bus::envelope::decode::<WireNodeRequest>(&message.payload) {
                Ok(request) => node.answer_node(request).await,
                Err(e) => WireNodeReply::Error(format!("bad node request: {e}")),
            };
            if let Ok(payload) = chronicle_bus::envelope::encode(&reply) {
                let _ = node.bus.publish(Message::new(reply_to, payload)).await;
            }
        });
    }
}

/// Follows one group's membership: keeps the placement hint current, and
/// when this node has been moved out of the group, stops its member and
/// deletes the replica.
pub(crate) fn watch_membership(
    node: Weak<ClusterNode>,
    shard: u32,
    raft: Raft<TypeConfig>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        let mut was_member = false;
        loop {
            let (voters, all): (Vec<u64>, BTreeSet<u64>) = {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                (
                    membership.voter_ids().collect(),
                    membership.nodes().map(|(id, _)| *id).collect(),
                )
            };
            let Some(node) = node.upgrade() else { return };
            if !voters.is_empty() {
                if let Some(slot) = node.placement.write().get_mut(shard as usize) {
                    *slot = voters;
                }
            }
            let me = node.config.node_id;
            if all.contains(&me) {
                was_member = true;
            } else if was_member {
                // Removed: let go of the replica (from another task: stopping
                // the group aborts this one).
                tokio::spawn(async move { node.drop_replica(shard).await });
                return;
            }
            drop(node);
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Reclaims a replica that was moved to other nodes while this node was down.
///
/// Such a replica's own log still counts it a member (the change that removed
/// it never reached it), and no leader contacts it any more, so the
/// membership watcher never sees the removal. While this member hears from no
/// leader, it asks the group's leader for its membership and lets go of the
/// replica only when that leader, in a term at least this member's, reports an
/// applied (so committed) membership without this node. A member cut off by a
/// partition reaches no leader and keeps its replica.
pub(crate) fn reclaim_if_moved_away(
    node: Weak<ClusterNode>,
    shard: u32,
    raft: Raft<TypeConfig>,
    contact: Arc<crate::network::LeaderContact>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ORPHAN_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { return };
            let me = node.config.node_id;
            let (leader, term, listed) = {
                let m = raft.metrics().borrow().clone();
                let listed = m
                    .membership_config
                    .membership()
                    .nodes()
                    .any(|(id, _)| *id == me);
                (m.current_leader, m.current_term, listed)
            };
            // A member its own log does not list is new (started for a move,
            // not yet added as a learner): silence is expected, never asked about.
            if !listed || leader == Some(me) || contact.within(ORPHAN_SILENCE) {
                continue;
            }
            if node.moved_away(shard, term).await {
                warn!(
                    shard,
                    "this replica was moved to other nodes while this node was away: deleting it"
                );
                // From another task: stopping the group aborts this one.
                tokio::spawn(async move { node.drop_replica(shard).await });
                return;
            }
        }
    })
}

impl ClusterNode {
    /// Whether `shard`'s leader reports a committed membership without this
    /// node, in a term at least `term`. Any doubt (no leader reached) is no.
    async fn moved_away(&self, shard: u32, term: u64) -> bool {
        let me = self.config.node_id;
        self.best_status(shard)
            .await
            .filter(|s| s.leader == Some(s.node))
            .is_some_and(|leader| {
                leader.term >= term && leader.membership_committed && !leader.members.contains(&me)
            })
    }

    async fn answer_node(self: &Arc<Self>, request: WireNodeRequest) -> WireNodeReply {
        match request {
            WireNodeRequest::Host(shard) if shard >= self.config.shards => {
                WireNodeReply::Error(format!("no shard {shard}"))
            }
            WireNodeRequest::Host(shard) => match self.host(shard, None).await {
                Ok(()) => WireNodeReply::Done,
                Err(e) => WireNodeReply::Error(e.to_string()),
            },
            WireNodeRequest::Elect(shard) => match self.group(shard) {
                Some(g) => match g.raft.trigger().elect().await {
                    Ok(()) => WireNodeReply::Done,
                    Err(e) => WireNodeReply::Error(e.to_string()),
                },
                None => WireNodeReply::Error(format!(
                    "node {} holds no replica of shard {shard}",
                    self.config.node_id
                )),
            },
            WireNodeRequest::Release(shard) => {
                let status = self.cluster_status().await;
                tracing::debug!(shard, status = ?status.shards.get(shard as usize), "asked to release a replica");
                match status.shards.get(shard as usize) {
                    Some(s) if s.leader.is_some() && !s.replicas.contains(&self.config.node_id) => {
                        let node = self.clone();
                        tokio::spawn(async move { node.drop_replica(shard).await });
                        WireNodeReply::Done
                    }
                    _ => WireNodeReply::Error(format!(
                        "shard {shard} still counts node {} among its replicas",
                        self.config.node_id
                    )),
                }
            }
            WireNodeRequest::Info => WireNodeReply::Info {
                node: self.config.node_id,
                shards: self.config.shards,
                hosted: self.groups.read().keys().copied().collect(),
            },
        }
    }

    async fn ask_node(
        &self,
        node: u64,
        request: &WireNodeRequest,
        timeout: Duration,
    ) -> Result<WireNodeReply, ClusterError> {
        let payload = chronicle_bus::envelope::encode(request)
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let reply = self
            .bus
            .request(
                Message::new(node_subject(&self.config.prefix, node), payload),
                timeout,
            )
            .await
            .map_err(|e| ClusterError::Unavailable(format!("node {node}: {e}")))?;
        match chronicle_bus::envelope::decode::<WireNodeReply>(&reply.payload) {
            Ok(WireNodeReply::Error(e)) => Err(ClusterError::Raft(format!("node {node}: {e}"))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(ClusterError::Bus(e.to_string())),
        }
    }

    /// Stops this node's member of `shard` and deletes its replica.
    async fn drop_replica(&self, shard: u32) {
        let _changing = self.replica_changes.lock().await;
        let Some(group) = self.groups.write().remove(&shard) else {
            return;
        };
        info!(shard, "moved away: stopping this replica");
        group.stop().await;
        info!(shard, "moved away: replica stopped");
        drop(group);
        let dir = self.shard_dir(shard);
        // The state machine's storage closes when its last handle drops;
        // readers of the old shard may still hold one for a moment.
        let removed = tokio::task::spawn_blocking(move || {
            let gone = dir.with_extension("removed");
            // What an earlier deletion, cut short by a crash, left behind.
            if gone.exists() {
                std::fs::remove_dir_all(&gone)?;
            }
            std::fs::rename(&dir, &gone).and_then(|()| std::fs::remove_dir_all(&gone))
        })
        .await;
        match removed {
            Ok(Ok(())) => info!(shard, "moved away: replica deleted"),
            Ok(Err(e)) => warn!(shard, error = %e, "moved away: replica not deleted"),
            Err(e) => warn!(shard, error = %e, "moved away: replica not deleted"),
        }
    }

    /// The shard count and a member, asked of whichever node answers first
    /// (how a node started outside the initial members learns the cluster).
    pub async fn discover(
        bus: &dyn chronicle_bus::Bus,
        prefix: &str,
        timeout: Duration,
    ) -> Result<(u64, u32), ClusterError> {
        let payload = chronicle_bus::envelope::encode(&WireNodeRequest::Info)
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let reply = bus
            .request(Message::new(info_subject(prefix), payload), timeout)
            .await
            .map_err(|e| {
                ClusterError::Unavailable(format!("no cluster member answered on the bus: {e}"))
            })?;
        match chronicle_bus::envelope::decode::<WireNodeReply>(&reply.payload) {
            Ok(WireNodeReply::Info { node, shards, .. }) => Ok((node, shards)),
            Ok(other) => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
            Err(e) => Err(ClusterError::Bus(e.to_string())),
        }
    }

    /// Moves `shard`'s replica on `from` to `to`: `to` starts a member, the
    /// leader adds it as a learner and waits until it has caught up, then
    /// makes it a voter in `from`'s place.
    pub async fn move_replica(
        self: &Arc<Self>,
        shard: u32,
        from: u64,
        to: u64,
    ) -> Result<(), ClusterError> {
        let status = self.cluster_status().await;
        let Some(s) = status.shards.get(shard as usize) else {
            return Err(ClusterError::Config(format!("no shard {shard}")));
        };
        if !s.replicas.contains(&from) {
            return Err(ClusterError::Config(format!(
                "node {from} holds no replica of shard {shard} (replicas {:?})",
                s.replicas
            )));
        }
        if s.replicas.contains(&to) {
            return Err(ClusterError::Config(format!(
                "node {to} already holds a replica of shard {shard}"
            )));
        }
        info!(shard, from, to, "moving a replica");
        self.ask_node(to, &WireNodeRequest::Host(shard), Duration::from_secs(30))
            .await?;
        self.on_leader(
            shard,
            crate::node::LeaderOp::AddLearner(to),
            CATCH_UP_TIMEOUT,
        )
        .await?;
        let voters: Vec<u64> = s
            .replicas
            .iter()
            .map(|&r| if r == from { to } else { r })
            .collect();
        // A leader voted out stops serving before it could finish the
        // change (and its replica is deleted): hand leadership over first.
        let now = self.cluster_status().await;
        if now.shards[shard as usize].leader == Some(from) {
            let heir = s
                .replicas
                .iter()
                .copied()
                .find(|&r| r != from)
                .ok_or_else(|| {
                    ClusterError::Config(format!(
                        "shard {shard} has no other voter to lead it while its replica moves"
                    ))
                })?;
            self.transfer_leader(shard, heir).await?;
        }
        self.on_leader(
            shard,
            crate::node::LeaderOp::SetVoters(voters),
            Duration::from_secs(60),
        )
        .await?;
        if let Err(e) = self
            .ask_node(
                from,
                &WireNodeRequest::Release(shard),
                Duration::from_secs(10),
            )
            .await
        {
            // Not fatal: the data is safe on the new voters; the old copy stays.
            warn!(shard, from, error = %e, "the old replica was not released");
        }
        info!(shard, from, to, "replica moved");
        Ok(())
    }

    /// Adds a running node (started without `--initial-nodes`) and moves
    /// replicas onto it until every node holds within one of the others.
    pub async fn add_node(
        self: &Arc<Self>,
        node: u64,
    ) -> Result<Vec<(u32, u64, u64)>, ClusterError> {
        match self.ask_node(node, &WireNodeRequest::Info, Duration::from_secs(5)).await {
            Ok(WireNodeReply::Info { shards, .. }) if shards != self.config.shards => {
                return Err(ClusterError::Config(format!(
                    "node {node} was started for {shards} shards; this cluster has {}",
                    self.config.shards
                )))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ClusterError::Unavailable(format!(
                    "node {node} does not answer ({e}); start it first with `chronicle serve --node-id {node} --join`"
                )))
            }
        }
        self.rebalance(&[node], &[]).await
    }

    /// Moves every replica off `node` (onto the least loaded others); the node
    /// then holds nothing and can be stopped.
    pub async fn remove_node(
        self: &Arc<Self>,
        node: u64,
    ) -> Result<Vec<(u32, u64, u64)>, ClusterError> {
        self.rebalance(&[], &[node]).await
    }

    /// Moves replicas until none is on a node in `leaving` and the others
    /// (with `joining`) each hold within one of each other. Returns the moves.
    async fn rebalance(
        self: &Arc<Self>,
        joining: &[u64],
        leaving: &[u64],
    ) -> Result<Vec<(u32, u64, u64)>, ClusterError> {
        let mut moves = Vec::new();
        let limit = self.config.shards as usize * 8;
        for _ in 0..limit {
            let status = self.cluster_status().await;
            if let Some(s) = status.shards.iter().find(|s| s.leader.is_none()) {
                return Err(ClusterError::Unavailable(format!(
                    "shard {} has no leader; retry when it has",
                    s.id
                )));
            }
            let mut load: BTreeMap<u64, usize> = BTreeMap::new();
            for n in status.members.iter().chain(joining) {
                load.entry(*n).or_default();
            }
            for s in &status.shards {
                for r in &s.replicas {
                    *load.entry(*r).or_default() += 1;
                }
            }
            let targets: Vec<(u64, usize)> = load
                .iter()
                .filter(|(n, _)| !leaving.contains(n))
                .map(|(n, l)| (*n, *l))
                .collect();
            // The next move: off a leaving node, else from the fullest node
            // to the emptiest, whenever they differ by more than one.
            let next = status.shards.iter().find_map(|s| {
                let from = s.replicas.iter().find(|r| leaving.contains(r))?;
                let to = targets
                    .iter()
                    .filter(|(n, _)| !s.replicas.contains(n))
                    .min_by_key(|(_, l)| *l)?;
                Some((s.id, *from, to.0))
            });
            let next = next.or_else(|| {
                let (empty, low) = *targets.iter().min_by_key(|(_, l)| *l)?;
                let (full, high) = *targets.iter().max_by_key(|(_, l)| *l)?;
                if high <= low + 1 {
                    return None;
                }
                let s = status
                    .shards
                    .iter()
                    .find(|s| s.replicas.contains(&full) && !s.replicas.contains(&empty))?;
                Some((s.id, full, empty))
            });
            match next {
                Some((shard, from, to)) => {
                    self.move_replica(shard, from, to).await?;
                    moves.push((shard, from, to));
                }
                None => {
                    if let Some(s) = status
                        .shards
                        .iter()
                        .find(|s| s.replicas.iter().any(|r| leaving.contains(r)))
                    {
                        return Err(ClusterError::Config(format!(
                            "shard {} cannot leave node(s) {leaving:?}: no other node is free to take its replica (replicas {:?}); add a node first",
                            s.id, s.replicas
                        )));
                    }
                    return Ok(moves);
                }
            }
        }
        Err(ClusterError::Unavailable(format!(
            "rebalancing did not settle after {limit} moves"
        )))
    }

    /// Makes `to` the leader of `shard` (see [`crate::handover`]): the leader
    /// holds new proposals and heartbeats, `to` catches up on every entry and
    /// stands for election, and the old leader, whose log is now no longer
    /// than `to`'s, votes for it. Retried a few times when another replica
    /// wins the race.
    pub async fn transfer_leader(&self, shard: u32, to: u64) -> Result<(), ClusterError> {
        self.move_leadership(shard, to, false).await
    }

    /// [`Self::transfer_leader`]; with `any_other`, done as soon as a replica
    /// other than the current leader leads (what a stopping leader needs: a
    /// retry to reach `to` would hold the new leader's writes too, a second
    /// stall).
    async fn move_leadership(
        &self,
        shard: u32,
        to: u64,
        any_other: bool,
    ) -> Result<(), ClusterError> {
        let lease = Duration::from_millis(self.config.raft.election_timeout_max);
        // A heir still catching up (say, installing a snapshot) is waited
        // for, up to a bound, without spending an election attempt.
        let caught_up_by = tokio::time::Instant::now() + TRANSFER_CATCH_UP_LIMIT;
        let mut attempt = 0;
        while attempt < 5 {
            let status = self.cluster_status().await;
            let Some(s) = status.shards.get(shard as usize) else {
                return Err(ClusterError::Config(format!("no shard {shard}")));
            };
            if !s.replicas.contains(&to) {
                return Err(ClusterError::Config(format!(
                    "node {to} holds no replica of shard {shard} (replicas {:?})",
                    s.replicas
                )));
            }
            if s.leader == Some(to) {
                return Ok(());
            }
            let lag = s.lag.get(&to).copied().unwrap_or(0);
            if lag > 0 {
                if tokio::time::Instant::now() >= caught_up_by {
                    return Err(ClusterError::Unavailable(format!(
                        "node {to} is still {lag} entries behind on shard {shard} after {}s",
                        TRANSFER_CATCH_UP_LIMIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            attempt += 1;
            // Held for at most two leases: if the vote fails, the followers'
            // leases run out meanwhile and a plain election follows.
            let hold = lease * 2;
            self.on_leader(
                shard,
                crate::node::LeaderOp::HoldForTransfer {
                    millis: hold.as_millis() as u64,
                    heir: to,
                },
                Duration::from_secs(5),
            )
            .await?;
            // With nothing new proposed, the entries in flight reach `to`
            // within a few round trips.
            let catch_up = tokio::time::Instant::now() + lease;
            while tokio::time::Instant::now() < catch_up {
                let now = self.cluster_status().await;
                let now = &now.shards[shard as usize];
                if now.leader != s.leader || now.lag.get(&to) == Some(&0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.ask_node(to, &WireNodeRequest::Elect(shard), Duration::from_secs(5))
                .await?;
            let deadline = tokio::time::Instant::now() + hold * 2;
            while tokio::time::Instant::now() < deadline {
                let now = self.cluster_status().await;
                match now.shards[shard as usize].leader {
                    Some(l) if l == to => return Ok(()),
                    Some(l) if any_other && Some(l) != s.leader => return Ok(()),
                    Some(l) if Some(l) != s.leader => break,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            warn!(
                shard,
                to, attempt, "leadership went elsewhere; trying again"
            );
        }
        Err(ClusterError::Unavailable(format!(
            "node {to} did not become the leader of shard {shard} in 5 attempts"
        )))
    }

    /// Hands the leadership of every shard this node leads to its most
    /// caught-up follower, all shards at once (shutdown: the new leaders take
    /// over while this node can still answer, instead of after an election
    /// timeout). Returns the shards handed over and those that could not be
    /// (a one-replica shard, or no follower took it within `within`). From
    /// here on the node no longer stands for election.
    pub async fn hand_over_leadership(&self, within: Duration) -> (Vec<u32>, Vec<u32>) {
        let me = self.node_id();
        self.retiring.set();
        let (_, shards) = self.status();
        let mine: Vec<(u32, u64)> = shards
            .iter()
            .filter(|s| s.leader == Some(me))
            .filter_map(|s| {
                // Least behind first; the lag map is the leader's own.
                let to = s
                    .replicas
                    .iter()
                    .filter(|&&r| r != me)
                    .min_by_key(|r| s.lag.get(r).copied().unwrap_or(u64::MAX))?;
                Some((s.id, *to))
            })
            .collect();
        let unmovable: Vec<u32> = shards
            .iter()
            .filter(|s| s.leader == Some(me) && !mine.iter().any(|(id, _)| *id == s.id))
            .map(|s| s.id)
            .collect();
        let moves = mine.iter().map(|&(shard, to)| async move {
            let moved = tokio::time::timeout(within, self.move_leadership(shard, to, true)).await;
            // Another follower winning is as good: this node no longer leads.
            let leads = self
                .group(shard)
                .and_then(|g| g.raft.metrics().borrow().current_leader)
                == Some(me);
            match moved {
                Ok(Ok(())) => (shard, true),
                _ => (shard, !leads),
            }
        });
        let (mut moved, mut kept) = (Vec::new(), unmovable);
        for (shard, ok) in futures_util::future::join_all(moves).await {
            if ok {
                moved.push(shard);
            } else {
                kept.push(shard);
            }
        }
        info!(?moved, ?kept, "leadership handed over");
        (moved, kept)
    }
}

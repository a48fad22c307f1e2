//! Elections with a pre-vote round. openraft 0.9 has no pre-vote: a member
//! that stops hearing from its leader stands for election with a higher term
//! at once, and a member cut off by a partition keeps raising its term; when
//! the partition heals, that term reaches the healthy leader (in a rejected
//! append's reply) and deposes it. So openraft's own election timer is off,
//! and this task stands for election instead, only after a majority of the
//! voters (itself included) answered a pre-vote: "no leader heard from within
//! the lease, and your log is not behind mine". A cut-off member gets no
//! answers, never raises its term, and rejoins without disruption. A change of
//! the member's vote counts as contact, as granting a vote resets Raft's
//! election timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bus::{Bus, Message};
use openraft::Raft;
use tracing::debug;

use crate::network::{raft_subject, LeaderContact, WireReply, WireRequest};
use crate::types::TypeConfig;

/// How long a member waits for each pre-vote answer.
const PRE_VOTE_TIMEOUT: Duration = Duration::from_millis(250);

/// Watches `raft` (a member of `group` on node `me`) and stands for election
/// when the leader has been silent past the lease plus a random spread.
pub(crate) fn guard_elections(
    raft: Raft<TypeConfig>,
    bus: Arc<dyn Bus>,
    prefix: String,
    group: u64,
    me: u64,
    contact: Arc<LeaderContact>,
    retiring: Arc<crate::handover::Retiring>,
) -> tokio::task::JoinHandle<()> {
    raft.runtime_config().elect(false);
    tokio::spawn(async move {
        let config = raft.config().clone();
        let lease = Duration::from_millis(config.election_timeout_max);
        let spread = config
            .election_timeout_max
            .saturating_sub(config.election_timeout_min);
        // Fine-grained, so the random patience really differs between members.
        let tick = Duration::from_millis((config.heartbeat_interval / 10).max(5));
        let mut patience = lease + jitter(spread, me, group);
        let mut last_stood: Option<Instant> = None;
        let shard_label = group.to_string();
        let mut followed = None;
        loop {
            tokio::time::sleep(tick).await;
            let m = raft.metrics().borrow().clone();
            if m.running_state.is_err() {
                return;
            }
            // A vote given or taken (a new term, a candidate, a leader just
            // elected) counts as hearing from a leader, as granting a vote
            // resets Raft's election timer: without it, a member that voted
            // for the new leader could stand again before its first heartbeat.
            contact.observe_vote(&m.vote);
            if m.current_leader != followed {
                if m.current_leader.is_some() {
                    crate::metrics::LEADER_CHANGES
                        .with_label_values(&[shard_label.as_str()])
                        .inc();
                }
                followed = m.current_leader;
            }
            // A stopping node hands its leaderships over and must not win
            // them back.
            if m.current_leader == Some(me) || retiring.get() {
                continue;
            }
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            if !voters.contains(&me) {
                continue;
            }
            if voters.len() == 1 {
                // Alone: nobody to disrupt or to wait for.
                if last_stood.is_none_or(|t| t.elapsed() >= patience) {
                    crate::metrics::ELECTIONS
                        .with_label_values(&[shard_label.as_str()])
                        .inc();
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                    last_stood = Some(Instant::now());
                }
                continue;
            }
            let silent = contact.elapsed().is_none_or(|e| e >= patience);
            let settled = last_stood.is_none_or(|t| t.elapsed() >= patience);
            if !silent || !settled {
                continue;
            }
            let others: Vec<u64> = voters.iter().copied().filter(|v| *v != me).collect();
            // Stop asking once a majority said yes (a cut-off voter's answer
            // would only arrive as a timeout).
            let mut asks: futures_util::stream::FuturesUnordered<_> = others
                .iter()
                .map(|&v| pre_vote(bus.as_ref(), &prefix, group, v, m.last_log_index))
                .collect();
            let mut granted = 1;
            while granted * 2 <= voters.len() {
                match futures_util::StreamExt::next(&mut asks).await {
                    Some(true) => granted += 1,
                    Some(false) => {}
                    None => break,
                }
            }
            drop(asks);
            // A leader may have been elected while we asked.
            contact.observe_vote(&raft.metrics().borrow().vote);
            let still_silent = contact.elapsed().is_none_or(|e| e >= patience);
            if granted * 2 > voters.len() && still_silent {
                debug!(
                    group,
                    me,
                    granted,
                    voters = voters.len(),
                    "pre-vote won; standing for election"
                );
                crate::metrics::ELECTIONS
                    .with_label_values(&[shard_label.as_str()])
                    .inc();
                if raft.trigger().elect().await.is_err() {
                    return;
                }
                last_stood = Some(Instant::now());
            } else {
                debug!(
                    group,
                    me,
                    granted,
                    voters = voters.len(),
                    "pre-vote lost; not standing"
                );
            }
            patience = lease + jitter(spread, me, group);
        }
    })
}

async fn pre_vote(
    bus: &dyn Bus,
    prefix: &str,
    group: u64,
    voter: u64,
    last_log_index: Option<u64>,
) -> bool {
    let Ok(payload) = chronicle_bus::envelope::encode(&WireRequest::PreVote { last_log_index })
    else {
        return false;
    };
    let subject = raft_subject(prefix, group, voter);
    match bus
        .request(Message::new(subject, payload), PRE_VOTE_TIMEOUT)
        .await
    {
        Ok(reply) => matches!(
            chronicle_bus::envelope::decode::<WireReply>(&reply.payload),
            Ok(WireReply::PreVote(true))
        ),
        Err(_) => false,
    }
}

/// A random share of `spread` milliseconds (different per member and round),
/// so members do not stand at the same moment.
fn jitter(spread: u64, me: u64, group: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut seed = [0u8; 24];
    seed[..8].copy_from_slice(&now.to_le_bytes());
    seed[8..16].copy_from_slice(&me.to_le_bytes());
    seed[16..].copy_from_slice(&group.to_le_bytes());
    Duration::from_millis(xxhash_rust::xxh64::xxh64(&seed, 0) % (spread + 1))
}

//! Raft RPCs over the bus: request/reply on `<prefix>.raft.<group>.<node>`
//! with rkyv payloads. The same code runs over NATS between processes and
//! over the in-process bus.

use std::sync::Arc;
use std::time::Duration;

use chronicle_bus::{Bus, Message};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, Entry, LogId, OptionalSend, Raft, Snapshot, Vote};
use rkyv::{Archive, Deserialize, Serialize};
use tracing::{debug, warn};

use crate::snapshot_transfer::{self, SnapshotReceiver};
use crate::types::TypeConfig;
use crate::wire::{WireEntry, WireLogId, WireVote};

/// Largest Raft RPC sent as one bus message: under NATS's default 1 MiB
/// payload limit with room for headers.
pub const MAX_RPC_BYTES: usize = 960 * 1024;

/// Failpoint: appends that carry entries fail (heartbeats still pass).
pub const APPEND_ENTRIES: &str = "raft::append::entries";

/// The bus's own deadline for a heartbeat, longer than openraft's (one
/// heartbeat interval), so a slow reply ends as openraft's timeout and not as
/// the bus's: the bus's error reads as an unreachable member, and openraft
/// backs off from one for half a second, which starves the follower of
/// heartbeats until it stands for election.
const HEARTBEAT_TTL: Duration = Duration::from_millis(250);

/// How long an append carrying entries may run, past openraft's own deadline
/// of one heartbeat interval (see `BusConnection::in_flight`). A lost reply
/// holds the member's entries back this long (heartbeats still go out).
const APPEND_WITH_ENTRIES_TTL: Duration = Duration::from_secs(2);

/// How long a retry waits for the append in flight before it sends a
/// heartbeat instead: half of openraft's 100 ms deadline, so the member hears
/// from its leader at least that often.
const RETRY_WAIT: Duration = Duration::from_millis(50);

/// The subject node `node` of group `group` answers Raft RPCs on.
pub fn raft_subject(prefix: &str, group: u64, node: u64) -> String {
    format!("{prefix}.raft.{group}.{node}")
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireRequest {
    Append {
        vote: WireVote,
        prev_log_id: Option<WireLogId>,
        entries: Vec<WireEntry>,
        leader_commit: Option<WireLogId>,
    },
    Vote {
        vote: WireVote,
        last_log_id: Option<WireLogId>,
    },
    /// A snapshot on offer: what it covers and its files. The answer names
    /// the files the member lacks (see snapshot_transfer.rs).
    SnapshotOffer {
        vote: WireVote,
        manifest: crate::snapshot::Manifest,
    },
    /// Part of a file of an offered snapshot, in order.
    SnapshotChunk {
        transfer: u64,
        file: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// Every missing file is sent: check them and install the snapshot.
    SnapshotDone { transfer: u64, vote: WireVote },
    /// Would you vote for a candidate with this log, were it to stand?
    /// (Asked before an election, which is not started unless a majority
    /// says yes: a member cut off from its group then never raises its term.)
    PreVote { last_log_index: Option<u64> },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireAppendReply {
    Success,
    PartialSuccess(Option<WireLogId>),
    Conflict,
    HigherVote(WireVote),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WireReply {
    Append(WireAppendReply),
    Vote {
        vote: WireVote,
        granted: bool,
        last_log_id: Option<WireLogId>,
    },
    /// Which files of an offered snapshot to send (indexes into its manifest).
    SnapshotNeed {
        transfer: u64,
        files: Vec<u32>,
    },
    SnapshotChunkStored,
    /// A snapshot installed, or refused for this (higher) vote.
    Snapshot {
        vote: WireVote,
    },
    PreVote(bool),
    /// The remote Raft refused or failed; the sender backs off and retries.
    Error(String),
}

fn id(l: &Option<LogId<u64>>) -> Option<WireLogId> {
    l.as_ref().map(WireLogId::from)
}

/// Opens connections to the members of one group.
#[derive(Clone)]
pub struct BusNetwork {
    bus: Arc<dyn Bus>,
    prefix: String,
    group: u64,
}

impl BusNetwork {
    pub fn new(bus: Arc<dyn Bus>, prefix: impl Into<String>, group: u64) -> Self {
        Self {
            bus,
            prefix: prefix.into(),
            group,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for BusNetwork {
    type Network = BusConnection;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> Self::Network {
        BusConnection {
            bus: self.bus.clone(),
            subject: raft_subject(&self.prefix, self.group, target),
            in_flight: None,
            confirmed: Arc::default(),
        }
    }
}

/// One member, reached by subject.
pub struct BusConnection {
    bus: Arc<dyn Bus>,
    subject: String,
    /// The last append that carried entries, sent on a task of its own.
    /// openraft gives up on an append after one heartbeat interval and
    /// sends the same entries again, while the follower, slowed by a flood,
    /// is still storing the first copy: each retry re-read, re-encoded and
    /// re-sent up to a megabyte, and the copies queued behind each other
    /// until heartbeats were late enough for an election. A retry waits a
    /// little for this one (sending a heartbeat if it is still going), then
    /// sends only what it did not cover.
    in_flight: Option<tokio::task::JoinHandle<AppendOutcome>>,
    /// The newest entry the member acknowledged holding, with the vote it
    /// was sent under. Within one vote the leader's log does not change, so
    /// the member matches it up to there.
    confirmed: Arc<parking_lot::Mutex<Option<Held>>>,
}

/// A member holds the leader's log up to this entry, as acknowledged under this vote.
type Held = (Vote<u64>, LogId<u64>);

type AppendOutcome = Result<WireReply, RPCError<u64, EmptyNode, RaftError<u64>>>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RemoteFailure(String);

impl BusConnection {
    /// Sends `request`; a timeout, no responder or a remote failure is an
    /// `Unreachable` error (openraft backs off and retries), a garbled reply a
    /// network error.
    async fn call<E: std::error::Error>(
        &self,
        request: &WireRequest,
        option: &RPCOption,
    ) -> Result<WireReply, RPCError<u64, EmptyNode, E>> {
        let payload = chronicle_bus::envelope::encode(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(payload, option).await
    }

    async fn send<E: std::error::Error>(
        &self,
        payload: bytes::Bytes,
        option: &RPCOption,
    ) -> Result<WireReply, RPCError<u64, EmptyNode, E>> {
        let reply = self
            .bus
            .request(
                Message::new(self.subject.clone(), payload),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match chronicle_bus::envelope::decode::<WireReply>(&reply.payload) {
            Ok(WireReply::Error(why)) => {
                Err(RPCError::Unreachable(Unreachable::new(&RemoteFailure(why))))
            }
            Ok(reply) => Ok(reply),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl BusConnection {
    /// One request of a snapshot transfer, with its own deadline.
    pub(crate) async fn transfer_call(
        &self,
        request: &WireRequest,
        ttl: Duration,
    ) -> Result<WireReply, StreamingError<TypeConfig, Fatal<u64>>> {
        let payload = chronicle_bus::envelope::encode(request)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        match self.send::<Fatal<u64>>(payload, &RPCOption::new(ttl)).await {
            Ok(reply) => Ok(reply),
            Err(RPCError::Network(e)) => Err(StreamingError::Network(e)),
            Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
        }
    }
}

impl BusConnection {
    /// The reply to a retried append while the earlier copy is still being
    /// stored: a heartbeat (no entries) after what the member acknowledged,
    /// answered as a partial success up to there, so openraft asks again
    /// (and this waits again) until the copy lands.
    async fn heartbeat_while_in_flight(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        let held = match *self.confirmed.lock() {
            Some((vote, held)) if vote == rpc.vote => rpc
                .entries
                .iter()
                .rev()
                .find(|e| e.log_id.index <= held.index)
                .map(|e| e.log_id),
            _ => None,
        };
        let prev = held.or(rpc.prev_log_id);
        let request = WireRequest::Append {
            vote: (&rpc.vote).into(),
            prev_log_id: id(&prev),
            entries: Vec::new(),
            leader_commit: id(&rpc.leader_commit),
        };
        let option = RPCOption::new(option.hard_ttl().max(HEARTBEAT_TTL));
        match self.call(&request, &option).await? {
            WireReply::Append(WireAppendReply::Success) => match prev {
                Some(_) => Ok(AppendEntriesResponse::PartialSuccess(prev)),
                // openraft takes no partial success short of the first entry;
                // an error that is not "unreachable" (no backoff) makes it
                // ask again at its next heartbeat.
                None => Err(RPCError::Network(NetworkError::new(&RemoteFailure(
                    "the member is still storing the previous append".into(),
                )))),
            },
            WireReply::Append(WireAppendReply::Conflict) => {
                *self.confirmed.lock() = None;
                Ok(AppendEntriesResponse::Conflict)
            }
            WireReply::Append(WireAppendReply::HigherVote(v)) => {
                Ok(AppendEntriesResponse::HigherVote(v.into()))
            }
            _ => Err(unexpected("append entries")),
        }
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<u64, EmptyNode, E> {
    RPCError::Network(NetworkError::new(&RemoteFailure(format!(
        "unexpected reply to {what}"
    ))))
}

impl RaftNetwork<TypeConfig> for BusConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        // A bus message must stay under the server's payload limit (NATS's
        // default is 1 MiB): send the longest prefix of the entries that fits
        // and report a partial success, so openraft sends the rest next.
        // Convert entries only until the message is full: openraft hands over
        // up to `max_payload_entries` batches at once, and encoding them all to
        // send the first few burned the CPU a new leader needed (with appends
        // cut at 100 ms and resent, a catch-up re-encoded megabytes of points
        // again and again; see docs/benchmarks.md, Replication).
        // Chaos and tests: appends that carry entries fail (heartbeats pass),
        // so a leader keeps its followers yet commits nothing.
        if !rpc.entries.is_empty() {
            chronicle_storage::faults::check(APPEND_ENTRIES)
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
            // A retry: wait a while for the copy still on its way.
            if let Some(previous) = self.in_flight.as_mut() {
                match tokio::time::timeout(RETRY_WAIT, previous).await {
                    Ok(_) => self.in_flight = None,
                    // Still being stored: the follower hears from its leader
                    // by a heartbeat meanwhile (waiting silently would let it
                    // stand for election against a leader that is fine).
                    Err(_) => return self.heartbeat_while_in_flight(&rpc, option).await,
                }
            }
        }
        // What the member already acknowledged under this vote is not sent
        // again: the append starts after it.
        let confirmed = *self.confirmed.lock();
        let skip = match confirmed {
            Some((vote, held)) if vote == rpc.vote => rpc
                .entries
                .iter()
                .position(|e| e.log_id.index > held.index)
                .unwrap_or(rpc.entries.len()),
            _ => 0,
        };
        let prev_log_id = match skip {
            0 => rpc.prev_log_id,
            k => Some(rpc.entries[k - 1].log_id),
        };
        let rest = &rpc.entries[skip..];
        let mut entries: Vec<WireEntry> = Vec::new();
        let mut budget = MAX_RPC_BYTES;
        for e in rest {
            let wire = WireEntry::from(e);
            let size = wire.payload_len();
            if !entries.is_empty() && size > budget {
                break;
            }
            budget = budget.saturating_sub(size);
            entries.push(wire);
        }
        let mut n = entries.len();
        let payload = loop {
            let request = WireRequest::Append {
                vote: (&rpc.vote).into(),
                prev_log_id: id(&prev_log_id),
                entries: entries[..n].to_vec(),
                leader_commit: id(&rpc.leader_commit),
            };
            let payload = chronicle_bus::envelope::encode(&request)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            if payload.len() <= MAX_RPC_BYTES || n <= 1 {
                break payload;
            }
            n = (n * MAX_RPC_BYTES / payload.len()).clamp(1, n - 1);
        };
        let partial = n < rest.len();
        // The newest entry this message makes the member hold.
        let last_sent = match n {
            0 => prev_log_id,
            n => Some(rest[n - 1].log_id),
        };
        // openraft gives every append the heartbeat interval as its deadline.
        // An append carrying entries can take longer on a loaded machine; it
        // goes on after that deadline (in `in_flight`), and its answer still
        // counts (in `confirmed`).
        let ttl = if n > 0 {
            option.hard_ttl().max(APPEND_WITH_ENTRIES_TTL)
        } else {
            option.hard_ttl().max(HEARTBEAT_TTL)
        };
        let send = {
            let connection = BusConnection {
                bus: self.bus.clone(),
                subject: self.subject.clone(),
                in_flight: None,
                confirmed: self.confirmed.clone(),
            };
            let vote = rpc.vote;
            async move {
                let reply = connection.send(payload, &RPCOption::new(ttl)).await?;
                let mut confirmed = connection.confirmed.lock();
                match (&reply, last_sent) {
                    (WireReply::Append(WireAppendReply::Success), Some(held)) => {
                        let newer = match *confirmed {
                            Some((v, h)) => v != vote || h.index < held.index,
                            None => true,
                        };
                        if newer {
                            *confirmed = Some((vote, held));
                        }
                    }
                    // The member does not hold what it was thought to (it
                    // lost an unsynced tail, say): openraft probes back from
                    // the start, with nothing skipped.
                    (WireReply::Append(WireAppendReply::Conflict), _) => *confirmed = None,
                    _ => {}
                }
                drop(confirmed);
                Ok(reply)
            }
        };
        let reply = if n > 0 {
            let handle = self.in_flight.insert(tokio::spawn(send));
            let reply = handle
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            self.in_flight = None;
            reply?
        } else {
            send.await?
        };
        match reply {
            WireReply::Append(r) => Ok(match r {
                WireAppendReply::Success if partial => {
                    AppendEntriesResponse::PartialSuccess(last_sent)
                }
                WireAppendReply::Success => AppendEntriesResponse::Success,
                WireAppendReply::PartialSuccess(l) => {
                    AppendEntriesResponse::PartialSuccess(l.map(LogId::from))
                }
                WireAppendReply::Conflict => AppendEntriesResponse::Conflict,
                WireAppendReply::HigherVote(v) => AppendEntriesResponse::HigherVote(v.into()),
            }),
            _ => Err(unexpected("append entries")),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        snapshot_transfer::send(self, vote, *snapshot.snapshot, cancel).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        let request = WireRequest::Vote {
            vote: (&rpc.vote).into(),
            last_log_id: id(&rpc.last_log_id),
        };
        match self.call(&request, &option).await? {
            WireReply::Vote {
                vote,
                granted,
                last_log_id,
            } => Ok(VoteResponse {
                vote: vote.into(),
                vote_granted: granted,
                last_log_id: last_log_id.map(LogId::from),
            }),
            _ => Err(unexpected("vote")),
        }
    }
}

/// Answers this member's Raft RPCs from the bus until the subscription ends.
/// Each request is handled in its own task, so a slow snapshot chunk never
/// holds up heartbeats or votes.
pub async fn serve(
    raft: Raft<TypeConfig>,
    snapshots: Arc<SnapshotReceiver>,
    bus: Arc<dyn Bus>,
    prefix: &str,
    group: u64,
    node: u64,
) -> Result<tokio::task::JoinHandle<()>, chronicle_bus::BusError> {
    serve_tracked(raft, snapshots, bus, prefix, group, node, Arc::default()).await
}

/// When a member last heard from a leader: accepted an append or a snapshot
/// chunk, or saw its vote change (a new term, a vote given, itself elected),
/// which resets an election timer as hearing from a leader does.
#[derive(Debug, Default)]
pub struct LeaderContact {
    /// Milliseconds since [`clock_start`] plus one; 0: never.
    at: std::sync::atomic::AtomicU64,
    /// The vote last observed.
    vote: parking_lot::Mutex<Option<Vote<u64>>>,
}

fn clock_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

impl LeaderContact {
    pub fn touch(&self) {
        let now = clock_start().elapsed().as_millis() as u64 + 1;
        self.at.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago; `None` if never.
    pub fn elapsed(&self) -> Option<Duration> {
        match self.at.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            at => Some(
                clock_start()
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1)),
            ),
        }
    }

    /// Counts a change of `vote` since the last observation as contact.
    pub fn observe_vote(&self, vote: &Vote<u64>) {
        let mut last = self.vote.lock();
        if last.as_ref() != Some(vote) {
            *last = Some(*vote);
            self.touch();
        }
    }

    /// Whether a leader was heard within `lease`.
    pub fn within(&self, lease: Duration) -> bool {
        self.elapsed().is_some_and(|e| e < lease)
    }
}

/// [`serve`], recording leader contact in `contact` and answering pre-votes by it.
pub async fn serve_tracked(
    raft: Raft<TypeConfig>,
    snapshots: Arc<SnapshotReceiver>,
    bus: Arc<dyn Bus>,
    prefix: &str,
    group: u64,
    node: u64,
    contact: Arc<LeaderContact>,
) -> Result<tokio::task::JoinHandle<()>, chronicle_bus::BusError> {
    let subject = raft_subject(prefix, group, node);
    let mut subscription = bus.subscribe(&subject, None).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let (raft, bus, contact) = (raft.clone(), bus.clone(), contact.clone());
            let snapshots = snapshots.clone();
            tokio::spawn(async move {
                let reply = match chronicle_bus::envelope::decode::<WireRequest>(&message.payload) {
                    Ok(request) => handle(&raft, &snapshots, &contact, request).await,
                    Err(e) => WireReply::Error(format!("bad raft request: {e}")),
                };
                match chronicle_bus::envelope::encode(&reply) {
                    Ok(payload) => {
                        if let Err(e) = bus.publish(Message::new(reply_to, payload)).await {
                            debug!(error = %e, "raft reply not sent");
                        }
                    }
                    Err(e) => warn!(error = %e, "raft reply not encoded"),
                }
            });
        }
    }))
}

async fn handle(
    raft: &Raft<TypeConfig>,
    snapshots: &SnapshotReceiver,
    contact: &LeaderContact,
    request: WireRequest,
) -> WireReply {
    match request {
        WireRequest::PreVote { last_log_index } => {
            let m = raft.metrics().borrow().clone();
            let lease = Duration::from_millis(raft.config().election_timeout_max);
            contact.observe_vote(&m.vote);
            // Yes only if no leader is known to be alive (not us, nobody heard
            // within the lease) and the candidate's log is not behind ours.
            let leading = m.current_leader == Some(m.id)
                || (m.vote.is_committed() && m.vote.leader_id().voted_for() == Some(m.id));
            let up_to_date = last_log_index >= m.last_log_index;
            WireReply::PreVote(!leading && !contact.within(lease) && up_to_date)
        }
        WireRequest::Append {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        } => {
            let entries = match entries
                .into_iter()
                .map(Entry::try_from)
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(entries) => entries,
                Err(e) => return WireReply::Error(e.to_string()),
            };
            let vote: Vote<u64> = vote.into();
            // Hearing from the leader is the append's arrival, as in Raft,
            // not its completion: under a write flood a follower's appends
            // queue behind log writes and fsyncs for longer than the lease,
            // and counting only completed ones would let it pre-vote
            // against a leader that is alive and sending.
            if vote.is_committed() && vote >= raft.metrics().borrow().vote {
                contact.touch();
            }
            let rpc = AppendEntriesRequest {
                vote,
                prev_log_id: prev_log_id.map(LogId::from),
                entries,
                leader_commit: leader_commit.map(LogId::from),
            };
            let (n, started) = (rpc.entries.len(), std::time::Instant::now());
            let reply = raft.append_entries(rpc).await;
            if started.elapsed() > Duration::from_millis(50) {
                debug!(entries = n, took = ?started.elapsed(), "slow append");
            }
            if matches!(&reply, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                contact.touch();
            }
            match reply {
                Ok(r) => WireReply::Append(match r {
                    AppendEntriesResponse::Success => WireAppendReply::Success,
                    AppendEntriesResponse::PartialSuccess(l) => {
                        WireAppendReply::PartialSuccess(id(&l))
                    }
                    AppendEntriesResponse::Conflict => WireAppendReply::Conflict,
                    AppendEntriesResponse::HigherVote(v) => {
                        WireAppendReply::HigherVote((&v).into())
                    }
                }),
                Err(e) => WireReply::Error(e.to_string()),
            }
        }
        WireRequest::Vote { vote, last_log_id } => {
            let rpc = VoteRequest {
                vote: Vote::from(vote),
                last_log_id: last_log_id.map(LogId::from),
            };
            match raft.vote(rpc).await {
                Ok(r) => WireReply::Vote {
                    vote: (&r.vote).into(),
                    granted: r.vote_granted,
                    last_log_id: id(&r.last_log_id),
                },
                Err(e) => WireReply::Error(e.to_string()),
            }
        }
        WireRequest::SnapshotOffer { vote, manifest } => {
            snapshots.offer(raft, vote.into(), manifest).await
        }
        WireRequest::SnapshotChunk {
            transfer,
            file,
            offset,
            data,
        } => {
            let reply = snapshots.chunk(transfer, file, offset, data).await;
            if matches!(reply, WireReply::SnapshotChunkStored) {
                contact.touch();
            }
            reply
        }
        WireRequest::SnapshotDone { transfer, vote } => {
            let reply = snapshots.done(raft, transfer, vote.into()).await;
            if matches!(reply, WireReply::Snapshot { .. }) {
                contact.touch();
            }
            reply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_bus::LocalBus;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(from: u64, to: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: (from > 1).then(|| blank(from - 1).log_id),
            entries: (from..=to).map(blank).collect(),
            leader_commit: None,
        }
    }

    /// openraft gives up on an append after one heartbeat interval and sends
    /// the entries again. A slow member must not be sent them twice, nor be
    /// left without word from its leader: a retry while the first copy is
    /// stored is a heartbeat, and the one after sends only what it did not
    /// cover.
    #[tokio::test]
    async fn a_retried_append_sends_only_what_the_slow_first_copy_did_not_cover_and_heartbeats_meanwhile(
    ) {
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let mut member = bus.subscribe(&raft_subject("t", 0, 2), None).await.unwrap();
        let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = received.clone();
        let replier = bus.clone();
        tokio::spawn(async move {
            while let Some(message) = member.next().await {
                let Ok(WireRequest::Append {
                    prev_log_id,
                    entries,
                    ..
                }) = chronicle_bus::envelope::decode::<WireRequest>(&message.payload)
                else {
                    continue;
                };
                seen.lock().push((
                    prev_log_id.map(|l| l.index),
                    entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                ));
                // A member slowed by a flood: entries take three heartbeat
                // intervals to store, a heartbeat is answered at once.
                let slow = !entries.is_empty();
                let replier = replier.clone();
                tokio::spawn(async move {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let reply = chronicle_bus::envelope::encode(&WireReply::Append(
                        WireAppendReply::Success,
                    ))
                    .unwrap();
                    replier
                        .publish(Message::new(message.reply.unwrap(), reply))
                        .await
                        .unwrap();
                });
            }
        });
        let mut network = BusNetwork::new(bus.clone(), "t", 0);
        let mut connection = network.new_client(2, &EmptyNode {}).await;
        let deadline = Duration::from_millis(100);
        let option = || RPCOption::new(deadline);
        // openraft's own deadline cuts the first attempt.
        assert!(
            tokio::time::timeout(deadline, connection.append_entries(append(2, 10), option()))
                .await
                .is_err()
        );
        // The retry, while the first copy is still being stored, is a
        // heartbeat: nothing is sent again, nothing claimed beyond what the
        // member acknowledged.
        let retry = connection
            .append_entries(append(2, 12), option())
            .await
            .unwrap();
        assert_eq!(
            retry,
            AppendEntriesResponse::PartialSuccess(Some(blank(1).log_id))
        );
        // The first copy lands; the next retry sends 11 and 12 only.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = connection
            .append_entries(append(2, 12), option())
            .await
            .unwrap();
        assert_eq!(reply, AppendEntriesResponse::Success);
        assert_eq!(
            *received.lock(),
            vec![
                (Some(1), (2..=10).collect()),
                (Some(1), vec![]),
                (Some(10), vec![11, 12])
            ]
        );
        // Under a new vote nothing is assumed: everything is sent.
        let mut newer = append(2, 12);
        newer.vote = Vote::new_committed(3, 1);
        connection.append_entries(newer, option()).await.unwrap();
        assert_eq!(
            received.lock().last().unwrap(),
            &(Some(1), (2..=12).collect())
        );
        // From the very start (no entry to be partly successful up to), a
        // retry during the first copy is an error openraft does not back off
        // from, after the heartbeat.
        let mut fresh = network.new_client(2, &EmptyNode {}).await;
        assert!(
            tokio::time::timeout(deadline, fresh.append_entries(append(1, 3), option()))
                .await
                .is_err()
        );
        assert!(matches!(
            fresh.append_entries(append(1, 3), option()).await,
            Err(RPCError::Network(_))
        ));
        assert_eq!(received.lock().last().unwrap(), &(None, vec![]));
    }
}

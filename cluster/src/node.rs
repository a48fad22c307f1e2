//! One node's part of the cluster: its members of every shard group it
//! replicates, write routing (to the shard's leader, forwarded over the bus
//! when it is elsewhere), linearizable reads through the leader, and status.
//!
//! Placement is deterministic from the initial member list: shard `i` lives on
//! `replication` distinct nodes, `nodes[(i + k) % n]` for `k` in
//! `0..replication`. Every node computes the same map without asking anyone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chronicle_bus::{Bus, Message};
use chronicle_storage::{
    EncodedPoints, Label, Limits, Matcher, Point, PointBatch, SeriesSamples, Shard, ShardConfig,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, Raft};
use rkyv::{Archive, Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::network::BusNetwork;
use crate::read::{merge, ShardAnswer, ShardRead, WireAnswer, WireRead};
use crate::state_machine::{ShardCell, ShardStateMachine};
use crate::types::{KeySpan, KeyedWrite, TypeConfig, WriteBatch};
use crate::{ClusterError, LogStore};

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// The members the cluster was created with (this node included).
    pub initial_nodes: Vec<u64>,
    /// Fixed when the cluster is created: series hash into this many shards.
    pub shards: u32,
    /// Replicas per shard (capped at the number of nodes).
    pub replication: usize,
    pub data_dir: PathBuf,
    /// Subjects are `<prefix>.raft.<shard>.<node>` and `<prefix>.cluster.*`.
    pub prefix: String,
    pub shard: ShardConfig,
    pub raft: Arc<Config>,
    /// Sync every Raft log write (the default); off trades durability for speed.
    pub sync_log: bool,
    /// How long a forwarded write may take, retries included.
    pub request_timeout: Duration,
    /// How long one shard's part of a read may take, retries included.
    pub read_timeout: Duration,
    /// How often the leader of each shard proposes a retention entry (when
    /// `shard` sets a retention) and runs its downsampling rules.
    pub retention_check: Duration,
    /// Test-only known-bad variant: reads answer from the local replica
    /// without a read index, as if a follower's copy were linearizable. The
    /// chaos harness runs with it to show its checkers catch stale reads.
    pub unsafe_stale_reads: bool,
    /// How often a shard's leader deletes state keys whose TTL ran out (by
    /// its clock); until then reads still show them.
    pub lease_check: Duration,
    /// Per-metric raw retention: the raw samples of the series each
    /// selector matches are deleted once older than its duration, in whole
    /// hours (shorter than `shard.retention`, which drops whole windows of
    /// every series).
    pub metric_retention: Vec<(Vec<Matcher>, Duration)>,
    /// A downsampling window is run once it ended this long ago, so samples
    /// arriving a little late are in it.
    pub downsample_delay: Duration,
    /// A member snapshots its shard once this many bytes were appended to its
    /// Raft log since the last snapshot; the log before the snapshot is then
    /// purged (all but a short tail for followers a little behind).
    pub snapshot_log_bytes: u64,
    /// How long an idempotency key is remembered: a write retried with the
    /// same key within this window is not applied again.
    pub idempotency_window: Duration,
    /// How long state changes stay in a namespace's history, for watchers
    /// resuming after a revision.
    pub state_history: Duration,
    /// Whether shard leaders publish the change feed
    /// (`<prefix>.events.write.<metric>`, crate::feed).
    pub write_events: bool,
    /// Whether the feed's events carry the points themselves.
    pub write_event_points: bool,
}

impl ClusterConfig {
    /// Defaults for a member of `initial_nodes`: 4 shards, 3 replicas,
    /// 100 ms heartbeats, a 400 ms leader lease; a member stands for election
    /// after 0.4-0.6 s of silence, once a pre-vote majority agrees.
    pub fn new(node_id: u64, initial_nodes: Vec<u64>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            initial_nodes,
            shards: 4,
            replication: 3,
            data_dir: data_dir.into(),
            prefix: "chronicle".into(),
            shard: ShardConfig::default(),
            raft: Arc::new(
                Config {
                    heartbeat_interval: 100,
                    election_timeout_min: 200,
                    election_timeout_max: 400,
                    // Snapshots are taken by log size (`snapshot_log_bytes`,
                    // `snapshot_by_log_size`), not by a count of entries: an
                    // entry is anything from one point to a whole batch.
                    snapshot_policy: openraft::SnapshotPolicy::Never,
                    // Entries kept after a snapshot, for a follower a little
                    // behind (it would need a snapshot otherwise).
                    max_in_snapshot_log_to_keep: 256,
                    // An entry is a whole batch (up to thousands of points); an
                    // append carries what fits one message anyway (network.rs).
                    max_payload_entries: 64,
                    ..Default::default()
                }
                .validate()
                .expect("static raft config is valid"),
            ),
            sync_log: true,
            request_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            retention_check: Duration::from_secs(60),
            unsafe_stale_reads: false,
            lease_check: Duration::from_secs(1),
            metric_retention: Vec::new(),
            downsample_delay: Duration::from_secs(60),
            snapshot_log_bytes: 64 << 20,
            idempotency_window: Duration::from_secs(600),
            state_history: Duration::from_secs(86_400),
            write_events: true,
            write_event_points: false,
        }
    }
}

/// An entry to propose: its shard, its points, its keyed part if any.
type Entry = (u32, EncodedPoints, Option<KeyedPart>);

/// Consecutive points of one keyed span (or of none) bound for one shard.
/// A run of point indexes of one idempotency span (or none).
type Run = (Option<usize>, Vec<usize>);

/// The longest idempotency key a forwarded write may carry.
const MAX_KEY_BYTES: usize = 256;

/// A keyed part before the leader stamps it with its clock.
#[derive(Debug, Clone)]
struct KeyedPart {
    key: String,
    part: u32,
    nonce: u64,
    window: i64,
}

/// This node's clock, ns since the epoch (stamps made where an entry is proposed).
pub(crate) fn now_ns() -> i64 {
    crate::clock::now_ns()
}

impl KeyedPart {
    /// Stamped now: called where the entry is proposed (on the leader).
    fn stamped(&self) -> KeyedWrite {
        let at = now_ns();
        KeyedWrite {
            key: self.key.clone(),
            part: self.part,
            nonce: self.nonce,
            at,
            window: self.window,
        }
    }
}

/// Which nodes hold each shard.
pub fn placement(nodes: &[u64], shards: u32, replication: usize) -> Vec<Vec<u64>> {
    let mut nodes: Vec<u64> = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return vec![Vec::new(); shards as usize];
    }
    let rf = replication.clamp(1, nodes.len());
    (0..shards as usize)
        .map(|i| (0..rf).map(|k| nodes[(i + k) % nodes.len()]).collect())
        .collect()
}

/// The shard a series belongs to: a stable hash (xxHash64) of its metric and
/// labels, the same on every node and every version.
pub fn shard_of(metric: &str, labels: &[Label], shards: u32) -> u32 {
    // Streamed into the hasher (equal to hashing the concatenation): no key
    // is built, and labels are sorted into a copy only when out of order.
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    h.update(metric.as_bytes());
    let put = |l: &Label| {
        if !l.value.is_empty() {
            h.update(&[0xff]);
            h.update(l.name.as_bytes());
            h.update(&[0xff]);
            h.update(l.value.as_bytes());
        }
    };
    if labels.windows(2).all(|w| w[0] <= w[1]) {
        labels.iter().for_each(put);
    } else {
        let mut sorted: Vec<&Label> = labels.iter().collect();
        sorted.sort();
        sorted.into_iter().for_each(put);
    }
    (h.digest() % u64::from(shards.max(1))) as u32
}

pub(crate) struct Group {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) shard: ShardCell,
    /// Where new proposals wait while this member hands its leadership over.
    pub(crate) gate: Arc<crate::handover::WriteGate>,
    /// The point batches this replica applies (in-process consumers).
    applied: tokio::sync::broadcast::Sender<Arc<crate::feed::Applied>>,
    /// Its Raft RPC server, forwarded-request servers and membership watcher.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Reads the Raft log's size and committed index (metrics).
    log: crate::LogProbe,
    /// Reads committed entries (the change feed's resumable read).
    log_reader: crate::LogStore,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireClusterRequest {
    /// Points in storage's point encoding.
    Write(Vec<u8>),
    /// A read; an answer too large for one message comes in parts, the first
    /// as the reply and the rest published on `inbox`.
    Read { read: WireRead, inbox: String },
    /// This member's view of its group.
    Status,
    /// A membership or leadership operation, for the leader.
    Leader(LeaderOp),
    /// A part of a write with an idempotency key; the leader stamps it.
    WriteKeyed(Box<WireKeyedWrite>),
    /// Delete matching samples in [start, end] (ns, inclusive); the request's id.
    Delete(Box<(Vec<crate::read::WireMatcher>, i64, i64, u64)>),
    /// State transactions for a namespace this shard holds; the leader stamps it.
    StateWrite(Box<crate::state::WireStateBatch>),
    /// A state read, answered after a read index.
    StateRead(Box<crate::state::WireStateRead>),
    /// Committed point batches after a log index (the change feed's
    /// resumable read), from any replica.
    Batches { after: u64 },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct WireKeyedWrite {
    points: Vec<u8>,
    key: String,
    part: u32,
    nonce: u64,
    window: i64,
}

/// What only a shard's leader can do.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum LeaderOp {
    /// Add a learner and return once it has caught up.
    AddLearner(u64),
    /// Make these the voters (joint consensus; removed members leave).
    SetVoters(Vec<u64>),
    /// Hold new proposals and heartbeats for at most `millis` while
    /// leadership moves to `heir` (see [`crate::handover`]).
    HoldForTransfer { millis: u64, heir: u64 },
}

/// Runs `op` on `raft`, which is expected to lead.
async fn run_leader_op(
    raft: &Raft<TypeConfig>,
    gate: &Arc<crate::handover::WriteGate>,
    op: LeaderOp,
) -> WireClusterReply {
    let not_leader = |e: &dyn std::fmt::Display| WireClusterReply::Error(e.to_string());
    match op {
        LeaderOp::AddLearner(node) => {
            match raft.add_learner(node, openraft::EmptyNode {}, true).await {
                Ok(_) => WireClusterReply::Done,
                Err(e) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => {
                    WireClusterReply::NotLeader(raft.metrics().borrow().current_leader)
                }
                Err(e) => not_leader(&e),
            }
        }
        LeaderOp::SetVoters(voters) => {
            let voters: BTreeSet<u64> = voters.into_iter().collect();
            match raft.change_membership(voters, false).await {
                Ok(_) => WireClusterReply::Done,
                Err(e) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => {
                    WireClusterReply::NotLeader(raft.metrics().borrow().current_leader)
                }
                Err(e) => not_leader(&e),
            }
        }
        LeaderOp::HoldForTransfer { millis, heir } => {
            let (me, leader) = {
                let m = raft.metrics().borrow().clone();
                (m.id, m.current_leader)
            };
            if leader != Some(me) {
                return WireClusterReply::NotLeader(leader);
            }
            // Leadership already moved to the heir: nothing to hold.
            if me == heir {
                return WireClusterReply::Done;
            }
            crate::handover::hold_for_transfer(raft, gate.clone(), Duration::from_millis(millis));
            WireClusterReply::Done
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum WireClusterReply {
    Written(u64),
    /// The first part of an encoded [`WireAnswer`] split into `total` parts.
    Answer {
        total: u32,
        first: Vec<u8>,
    },
    /// Not the leader; the leader if known.
    NotLeader(Option<u64>),
    Error(String),
    Status(WireMemberStatus),
    Done,
    StateWritten(Vec<crate::state::WireOutcome>),
    StateAnswer(Box<crate::state::WireStateAnswer>),
    /// Committed point batches: (index, encoded points) each, where the
    /// next read resumes, and what the log no longer holds.
    Batches {
        batches: Vec<(u64, Vec<u8>)>,
        next: u64,
        compacted: Option<u64>,
    },
}

/// One member's view of its shard group.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct WireMemberStatus {
    pub(crate) node: u64,
    pub(crate) leader: Option<u64>,
    pub(crate) term: u64,
    pub(crate) last_log_index: u64,
    pub(crate) applied_index: u64,
    /// Per follower, entries behind (on the leader only).
    pub(crate) lag: Vec<(u64, u64)>,
    /// The group's voters as this member knows them.
    pub(crate) voters: Vec<u64>,
    /// Every member, learners included.
    pub(crate) members: Vec<u64>,
    /// Whether that membership is applied here (so committed, never undone).
    pub(crate) membership_committed: bool,
}

fn member_status(node: u64, raft: &Raft<TypeConfig>) -> WireMemberStatus {
    let m = raft.metrics().borrow().clone();
    let last = m.last_log_index.unwrap_or(0);
    let lag = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != node)
                .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |l| l.index))))
                .collect()
        })
        .unwrap_or_default();
    WireMemberStatus {
        node,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: last,
        applied_index: m.last_applied.map_or(0, |l| l.index),
        lag,
        voters: m.membership_config.membership().voter_ids().collect(),
        members: m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect(),
        membership_committed: m.membership_config.log_id().map_or(0, |l| l.index)
            <= m.last_applied.map_or(0, |l| l.index),
    }
}

/// A later part of an answer: its number, then its bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct WireAnswerPart {
    seq: u32,
    bytes: Vec<u8>,
}

/// Bytes of an answer per message (under the bus's 1 MiB, with room for the envelope).
const ANSWER_PART_BYTES: usize = crate::network::MAX_RPC_BYTES - 4096;

/// Where openraft reports an entry's commit (or why it was not committed).
type CommitReceiver = tokio::sync::oneshot::Receiver<
    Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        ClientWriteError<u64, openraft::EmptyNode>,
    >,
>;

/// A write handed to Raft and not yet known to be committed.
pub struct PendingWrite {
    node: Arc<ClusterNode>,
    submitted: Vec<(u32, EncodedPoints, Option<KeyedPart>, CommitReceiver)>,
    /// Points already committed (forwarded entries).
    written: usize,
    /// The proposals' trace parents, kept until their commits are answered.
    _traced: Vec<crate::trace::Proposed>,
}

impl PendingWrite {
    /// Waits for every entry's commit; the points written.
    pub async fn wait(self) -> Result<usize, ClusterError> {
        let timeout = self.node.config.request_timeout;
        let node = self.node;
        let commits = self.submitted.into_iter().map(|(shard, points, keyed, commit)| {
            let node = node.clone();
            async move {
                match tokio::time::timeout(timeout, commit).await {
                    Ok(Ok(Ok(response))) => Ok(response.data.written),
                    // Leadership moved before the commit: send the entry to
                    // the new leader. Should the old leader's copy commit too,
                    // the points are written twice with the same values (and
                    // may overwrite a newer write of the same point), unless
                    // the write has an idempotency key: the re-sent part is
                    // another submission of it, skipped if the first applied.
                    Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => {
                        let keyed = keyed.map(|k| KeyedPart {
                            nonce: k.nonce ^ inbox_nonce(),
                            ..k
                        });
                        node.write_entry(shard, points, keyed).await
                    }
                    Ok(Ok(Err(e))) => Err(ClusterError::Raft(e.to_string())),
                    Ok(Err(_)) => Err(ClusterError::Raft(format!(
                        "shard {shard}: raft stopped before the commit"
                    ))),
                    Err(_) => Err(ClusterError::Unavailable(format!(
                        "shard {shard}: not committed within {timeout:?}; this node leads it but cannot reach a majority"
                    ))),
                }
            }
        });
        let mut written = self.written;
        for result in futures_util::future::join_all(commits).await {
            written += result?;
        }
        Ok(written)
    }
}

/// A shard's state as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub id: u32,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    /// Entries each follower is behind the leader (known on the leader's node).
    pub lag: BTreeMap<u64, u64>,
    /// The leader's term and last log index (0 when no member answered).
    pub term: u64,
    pub last_log_index: u64,
}

/// The whole cluster as one node gathers it: members, and per shard what its
/// leader (or, failing that, any replica) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    pub members: Vec<u64>,
    pub shards: Vec<ShardStatus>,
}

/// A shard checkpoint taken for a backup by its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupCheckpoint {
    /// The Raft log index of the last entry the checkpoint holds.
    pub applied_index: u64,
    /// The leader's term when it was taken.
    pub term: u64,
}

pub struct ClusterNode {
    pub(crate) config: ClusterConfig,
    pub(crate) bus: Arc<dyn Bus>,
    /// Each shard's voters as last seen (this node's own groups keep theirs
    /// current; others are learned from status replies). Routing hints only:
    /// each group's Raft membership is the truth.
    pub(crate) placement: parking_lot::RwLock<Vec<Vec<u64>>>,
    /// This node's members of shard groups. Groups come (a shard moved here)
    /// and go (moved away) while the node runs.
    pub(crate) groups: parking_lot::RwLock<BTreeMap<u32, Arc<Group>>>,
    /// Held while a replica is started or deleted, so a shard moved back
    /// here while its old replica is being deleted waits for the deletion
    /// instead of opening a directory that is going away.
    pub(crate) replica_changes: tokio::sync::Mutex<()>,
    /// The node-level service (`<prefix>.node.<id>`, `<prefix>.cluster.info`).
    service: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Inboxes for the parts of large answers: `<prefix>.inbox.<node>.<nonce>.<n>`
    /// (the nonce keeps a restarted node from receiving its predecessor's parts).
    inbox_nonce: u64,
    next_inbox: std::sync::atomic::AtomicU64,
    /// What the group supervisor knows (restarts, groups down).
    pub(crate) supervision: crate::supervise::Supervision,
    /// Set once the node hands its leaderships over to stop.
    pub(crate) retiring: Arc<crate::handover::Retiring>,
    /// The raw data's retention set at run time (the config API), in place
    /// of `config.shard.retention`: `Some(None)` keeps raw data forever.
    raw_retention: parking_lot::RwLock<Option<Option<Duration>>>,
    /// Per (shard, per-metric rule): the last cutoff this node had committed.
    metric_cutoffs: parking_lot::Mutex<std::collections::HashMap<(u32, usize), i64>>,
}

/// Points per Raft entry, at most. An entry carries the series its points
/// use, so small entries pay for each series again and again: at 2,000
/// points (a scrape of 1,000 series puts two points of each in an entry)
/// the series were most of every entry's bytes and of its apply.
pub const MAX_ENTRY_POINTS: usize = 10_000;

/// Encoded bytes per Raft entry, at most (about: an entry holds at least
/// one point): with room under a bus message ([`crate::network::MAX_RPC_BYTES`])
/// for the entry's framing and idempotency key.
pub const MAX_ENTRY_BYTES: usize = 768 * 1024;

/// Longest one forwarded request may take before the next replica is tried.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a leader may take to confirm a read (its read index applied).
/// openraft 0.9's `ensure_linearizable` waits without limit for the applied
/// index to reach the read index, which a new leader that cannot commit its
/// first entry never does (chaos finding: a state read hung for minutes).
pub(crate) const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);

/// What a leader's read check found.
pub(crate) enum ReadIndex {
    /// Linearizable: read the local state machine.
    Ready,
    /// Another member leads.
    NotLeader,
}

/// Confirms this member still leads and waits until everything committed
/// before the read began is applied, for at most [`READ_INDEX_TIMEOUT`].
pub(crate) async fn read_index(
    raft: &Raft<TypeConfig>,
    shard: Option<u32>,
) -> Result<ReadIndex, ClusterError> {
    match tokio::time::timeout(READ_INDEX_TIMEOUT, raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok(ReadIndex::Ready),
        Ok(Err(e)) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => {
            Ok(ReadIndex::NotLeader)
        }
        Ok(Err(e)) => Err(ClusterError::Raft(e.to_string())),
        Err(_) => Err(ClusterError::Unavailable(format!(
            "{}this node leads but could not confirm a read within {READ_INDEX_TIMEOUT:?} (no majority acknowledges its entries)",
            shard.map_or(String::new(), |s| format!("shard {s}: "))
        ))),
    }
}

/// Longest a forwarded write may wait for its commit on the leader.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one shard's read may take on one replica before the next is tried.
const READ_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between rounds over a shard's replicas while it has no leader.
const RETRY_PAUSE_MS: u64 = 25;

fn service_subject(prefix: &str, shard: u32, node: u64) -> String {
    format!("{prefix}.cluster.{shard}.{node}")
}

/// Any replica of a shard answers here (a queue group): a way to find a
/// shard's leader without knowing where it lives.
fn any_replica_subject(prefix: &str, shard: u32) -> String {
    format!("{prefix}.cluster.{shard}.any")
}

const ANY_GROUP: &str = "replicas";

/// Written once the initial placement's groups exist: afterwards a node hosts
/// the shards on its disk, not the initial placement.
const CREATED_MARKER: &str = "groups-created";

impl ClusterNode {
    /// Starts this node's members of its shards, serves their Raft RPCs and
    /// forwarded requests, and creates each group it is the first member of.
    ///
    /// On the first start of a member of `initial_nodes`, the shards are the
    /// initial placement's; afterwards they are the ones on disk (shards move
    /// between nodes). A node started outside `initial_nodes` hosts nothing
    /// until a shard is moved to it (`add_node`).
    pub async fn start(
        config: ClusterConfig,
        bus: Arc<dyn Bus>,
    ) -> Result<Arc<Self>, ClusterError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ClusterError::Snapshot {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let created = config.data_dir.join(CREATED_MARKER);
        let initial = if config.initial_nodes.contains(&config.node_id) {
            placement(&config.initial_nodes, config.shards, config.replication)
        } else {
            vec![Vec::new(); config.shards as usize]
        };
        let node = Arc::new(Self {
            placement: parking_lot::RwLock::new(initial.clone()),
            groups: parking_lot::RwLock::new(BTreeMap::new()),
            replica_changes: tokio::sync::Mutex::new(()),
            service: parking_lot::Mutex::new(Vec::new()),
            config,
            bus,
            inbox_nonce: inbox_nonce(),
            next_inbox: std::sync::atomic::AtomicU64::new(0),
            supervision: Default::default(),
            retiring: Default::default(),
            raw_retention: Default::default(),
            metric_cutoffs: Default::default(),
        });
        let mut hosted = node.shards_on_disk()?;
        if !created.exists() {
            for (shard, replicas) in initial.iter().enumerate() {
                if replicas.contains(&node.config.node_id) {
                    hosted.insert(shard as u32);
                }
            }
        }
        for shard in hosted {
            let create = (!created.exists())
                .then(|| initial[shard as usize].clone())
                .filter(|r| r.first() == Some(&node.config.node_id));
            node.host(shard, create).await?;
        }
        std::fs::write(&created, b"").map_err(|source| ClusterError::Snapshot {
            path: created.display().to_string(),
            source,
        })?;
        crate::membership::serve_node(&node).await?;
        let weak = Arc::downgrade(&node);
        node.add_service(crate::supervise::service(
            weak.clone(),
            "group supervisor",
            {
                let weak = weak.clone();
                move || crate::supervise::spawn(weak.clone())
            },
        ));
        // Always: retention may be set at run time.
        node.add_service(crate::supervise::service(weak.clone(), "retention", {
            let weak = weak.clone();
            move || spawn_retention(weak.clone())
        }));
        Ok(node)
    }

    /// Proposes a retention entry on every shard this node leads: the
    /// cutoffs come from its shard settings at `now` (nanoseconds) and travel
    /// in the entry, so every replica deletes the same windows. Returns the
    /// shards whose entry committed, each with the entry's log index (wait
    /// for a replica's [`ClusterNode::applied_index`] to reach it before
    /// reading what retention left there).
    pub async fn propose_retention(&self, now: i64) -> Result<Vec<(u32, u64)>, ClusterError> {
        let me = self.config.node_id;
        let raw = self.raw_retention();
        let led: Vec<(u32, Arc<Group>)> = self
            .groups
            .read()
            .iter()
            .filter(|(_, g)| g.raft.metrics().borrow().current_leader == Some(me))
            .map(|(s, g)| (*s, g.clone()))
            .collect();
        let mut done = Vec::new();
        for (shard, group) in led {
            let cutoffs = group.shard.current().retention_cutoffs_with(now, raw);
            if !cutoffs.is_empty() {
                group.gate.pass().await;
                let written = group
                    .raft
                    .client_write(WriteBatch::retain(cutoffs))
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
                done.push((shard, written.log_id.index));
            }
            for (rule, (matchers, keep)) in self.config.metric_retention.iter().enumerate() {
                let Some(range) = self.metric_retention_due(shard, rule, matchers, *keep, now)
                else {
                    continue;
                };
                let end = range.end;
                group.gate.pass().await;
                let written = group
                    .raft
                    .client_write(WriteBatch::delete(range))
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
                self.metric_cutoffs.lock().insert((shard, rule), end);
                done.push((shard, written.log_id.index));
            }
        }
        Ok(done)
    }

    /// The delete a per-metric retention rule asks of `shard` at `now`:
    /// everything of its series up to the last whole hour before `now -
    /// keep`, unless this node proposed that cutoff already. Replicas agree
    /// whatever their clocks: the cutoff travels in the entry.
    fn metric_retention_due(
        &self,
        shard: u32,
        rule: usize,
        matchers: &[Matcher],
        keep: Duration,
        now: i64,
    ) -> Option<crate::types::DeleteRange> {
        const HOUR: i64 = 3_600_000_000_000;
        let keep = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
        let end = now.saturating_sub(keep).div_euclid(HOUR) * HOUR - 1;
        if self
            .metric_cutoffs
            .lock()
            .get(&(shard, rule))
            .is_some_and(|&done| done >= end)
        {
            return None;
        }
        // The same rule and cutoff always make the same id: proposed again
        // (a new leader), it is applied once.
        let id = xxhash_rust::xxh64::xxh64(format!("{shard}/{rule}/{end}").as_bytes(), 0x7e7e);
        Some(crate::types::DeleteRange {
            matchers: matchers.to_vec(),
            start: i64::MIN,
            end,
            id,
            at: now,
        })
    }

    /// The change feed's resumable read: `shard`'s committed point batches
    /// after log index `after`, oldest first, up to about 512 KiB of points,
    /// from this node's replica or any other. Read again from `next` for
    /// more; `next == after` with no batches: nothing newer yet. Entries the
    /// log no longer holds (compacted into a snapshot) come back as
    /// `compacted`: fill what they held with a query, then resume at it.
    pub async fn committed_batches(
        &self,
        shard: u32,
        after: u64,
    ) -> Result<crate::feed::CommittedBatches, ClusterError> {
        if shard >= self.config.shards {
            return Err(ClusterError::Storage(
                chronicle_storage::StorageError::InvalidRequest(format!(
                    "shard {shard}: the cluster has {} shards",
                    self.config.shards
                )),
            ));
        }
        if let Some(group) = self.group(shard) {
            return local_batches(shard, &group.raft, &group.log_reader, after).await;
        }
        let reply = self
            .ask_leader(
                shard,
                &WireClusterRequest::Batches { after },
                READ_ATTEMPT_TIMEOUT,
                self.config.read_timeout,
            )
            .await?;
        match reply {
            WireClusterReply::Batches {
                batches,
                next,
                compacted,
            } => {
                let mut out = Vec::with_capacity(batches.len());
                let mut prev = None;
                for (index, bytes) in batches {
                    let points =
                        EncodedPoints::from_bytes(bytes).map_err(|e| ClusterError::Corrupt {
                            what: "committed batch",
                            why: e.to_string(),
                        })?;
                    out.push(crate::feed::Applied {
                        shard,
                        index,
                        prev,
                        points,
                    });
                    prev = Some(index);
                }
                Ok(crate::feed::CommittedBatches {
                    batches: out,
                    next,
                    compacted,
                })
            }
            WireClusterReply::Error(e) => Err(ClusterError::Raft(e)),
            other => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sets the raw data's retention at run time (`Some(None)`: keep
    /// forever), or back to the configured one (`None`). The leaders use it
    /// from their next retention entry on; the cutoffs travel in the entry,
    /// so replicas agree whatever they were told.
    pub fn set_raw_retention(&self, raw: Option<Option<Duration>>) {
        *self.raw_retention.write() = raw;
    }

    /// The raw data's retention in effect.
    pub fn raw_retention(&self) -> Option<Duration> {
        (*self.raw_retention.read()).unwrap_or(self.config.shard.retention)
    }

    /// Runs the downsampling rules on every shard this node leads, as
    /// replicated entries: for each rule, the leader proposes the complete
    /// windows ending before `now` (ns) minus the configured delay, a bounded
    /// number per entry and at most `max_entries` entries per rule, so a
    /// long backlog is worked off over several calls. Returns the entries
    /// committed.
    pub async fn propose_downsampling(
        &self,
        now: i64,
        max_entries: usize,
    ) -> Result<usize, ClusterError> {
        /// Points one downsampling entry may write (one per series and window).
        const MAX_POINTS_PER_ENTRY: usize = 200_000;
        let rules = &self.config.shard.downsample;
        if rules.is_empty() {
            return Ok(0);
        }
        let me = self.config.node_id;
        let led: Vec<Arc<Group>> = self
            .groups
            .read()
            .values()
            .filter(|g| g.raft.metrics().borrow().current_leader == Some(me))
            .cloned()
            .collect();
        let delay = i64::try_from(self.config.downsample_delay.as_nanos()).unwrap_or(i64::MAX);
        let until = now.saturating_sub(delay);
        let mut committed = 0;
        for group in led {
            for (i, rule) in rules.iter().enumerate() {
                let tier = (i + 1).min(u8::MAX as usize) as u8;
                for _ in 0..max_entries {
                    // The leader's view of progress: it applied every entry it
                    // committed, so each step starts where the last one ended.
                    let due = group.shard.current().downsample_due(
                        rule,
                        tier,
                        until,
                        MAX_POINTS_PER_ENTRY,
                    )?;
                    let Some(step) = due else { break };
                    group.gate.pass().await;
                    group
                        .raft
                        .client_write(WriteBatch::downsample(step))
                        .await
                        .map_err(|e| ClusterError::Raft(e.to_string()))?;
                    committed += 1;
                }
            }
        }
        Ok(committed)
    }

    /// Deletes the samples of the series matching `matchers` with timestamps
    /// in `[start, end]` (ns, inclusive), in every shard, through each
    /// shard's log: every replica deletes exactly the same samples, and a
    /// read sees a shard before the delete or after it, never in between.
    /// Returns when every shard committed it.
    pub async fn delete_series(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<(), ClusterError> {
        if !matchers.iter().any(|m| !m.matches("")) {
            return Err(ClusterError::Storage(
                chronicle_storage::StorageError::InvalidRequest(
                    "at least one matcher must not match the empty string".into(),
                ),
            ));
        }
        let wire = crate::read::wire_matchers(matchers);
        // One id for the request: an entry sent again (a slow answer, a
        // leader change) is applied once.
        let id = inbox_nonce()
            ^ self
                .next_inbox
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deletes = (0..self.config.shards).map(|shard| {
            let wire = wire.clone();
            let range = crate::types::DeleteRange {
                matchers: matchers.to_vec(),
                start,
                end,
                id,
                at: 0,
            };
            async move {
                let request =
                    || WireClusterRequest::Delete(Box::new((wire.clone(), start, end, id)));
                let reply = self
                    .to_leader(shard, request, |raft| {
                        let mut range = range.clone();
                        range.at = now_ns();
                        let batch = WriteBatch::delete(range);
                        async move { raft.client_write(batch).await.map(|_| 0) }
                    })
                    .await?;
                match reply {
                    WireClusterReply::Written(_) => Ok(()),
                    other => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
                }
            }
        });
        for result in futures_util::future::join_all(deletes).await {
            result?;
        }
        Ok(())
    }

    /// What keeps this node's Raft groups from serving: a group down (its
    /// core stopped and is being restarted from disk) or one that restarted
    /// repeatedly in the last five minutes. Empty when all is well.
    pub fn group_problems(&self) -> Vec<String> {
        self.supervision.problems()
    }

    /// Times `shard`'s group was restarted by the supervisor in the last five minutes.
    pub fn group_restarts(&self, shard: u32) -> usize {
        self.supervision.restarts(shard)
    }

    /// Chaos hook: stops `shard`'s Raft core as a fatal error would, leaving
    /// the group in place for the supervisor to find. Returns false when this
    /// node holds no replica of `shard`.
    pub async fn inject_group_failure(&self, shard: u32) -> bool {
        let Some(group) = self.group(shard) else {
            return false;
        };
        let _ = group.raft.shutdown().await;
        true
    }

    /// The shards with a directory under the data directory.
    fn shards_on_disk(&self) -> Result<BTreeSet<u32>, ClusterError> {
        let mut out = BTreeSet::new();
        let entries =
            std::fs::read_dir(&self.config.data_dir).map_err(|source| ClusterError::Snapshot {
                path: self.config.data_dir.display().to_string(),
                source,
            })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("shard-"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                if id < self.config.shards {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn shard_dir(&self, shard: u32) -> PathBuf {
        self.config.data_dir.join(format!("shard-{shard}"))
    }

    /// Starts this node's member of `shard`'s group (a no-op when it runs).
    /// With `create`, a pristine member creates the group with those voters.
    pub(crate) async fn host(
        self: &Arc<Self>,
        shard: u32,
        create: Option<Vec<u64>>,
    ) -> Result<(), ClusterError> {
        let _changing = self.replica_changes.lock().await;
        if self.groups.read().contains_key(&shard) {
            return Ok(());
        }
        let config = &self.config;
        let dir = self.shard_dir(shard);
        // On the blocking pool: opening replays RocksDB's WAL, and may wait
        // for an earlier instance of this group to let go of the files.
        let (path, sync) = (dir.join("raft-log"), config.sync_log);
        let mut log = tokio::task::spawn_blocking(move || LogStore::open_with(path, sync))
            .await
            .map_err(|e| ClusterError::Raft(format!("opening the log: {e}")))??;
        let log_reader = log.clone();
        // Asked of the store itself: openraft's metrics may not show the
        // stored membership yet right after `Raft::new`.
        let pristine = {
            use openraft::storage::RaftLogStorage;
            let state = log
                .get_log_state()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            let vote = log
                .read_vote()
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            state.last_log_id.is_none() && vote.is_none()
        };
        if log.demote_own_leadership(config.node_id).await? {
            info!(
                shard,
                "restarted as a follower of the term it led; an election follows"
            );
        }
        let mut sm = ShardStateMachine::open(dir.join("state"), config.shard.clone())?;
        let cell = sm.shard();
        // Subscribed before Raft starts applying, so no batch is missed.
        let applied_tx = sm.feed(shard);
        let applied = config.write_events.then(|| applied_tx.subscribe());
        let receiver = Arc::new(crate::SnapshotReceiver::new(sm.layout()));
        let appended = log.appended_bytes();
        let log_probe = log.probe();
        let network = BusNetwork::new(self.bus.clone(), config.prefix.clone(), u64::from(shard));
        let raft = Raft::new(config.node_id, config.raft.clone(), network, log, sm)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let contact = Arc::new(crate::network::LeaderContact::default());
        // Each task watched: a panic in one restarts the group (supervise.rs).
        let watch = |name: &'static str, task: tokio::task::JoinHandle<()>| {
            crate::supervise::group_task(Arc::downgrade(self), shard, name, task)
        };
        let mut tasks = vec![watch(
            "Raft RPC server",
            crate::network::serve_tracked(
                raft.clone(),
                receiver,
                self.bus.clone(),
                &config.prefix,
                u64::from(shard),
                config.node_id,
                contact.clone(),
            )
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?,
        )];
        tasks.push(watch(
            "election guard",
            crate::election::guard_elections(
                raft.clone(),
                self.bus.clone(),
                config.prefix.clone(),
                u64::from(shard),
                config.node_id,
                contact.clone(),
                self.retiring.clone(),
            ),
        ));
        tasks.push(watch(
            "moved-away watcher",
            crate::membership::reclaim_if_moved_away(
                Arc::downgrade(self),
                shard,
                raft.clone(),
                contact,
            ),
        ));
        let gate = Arc::new(crate::handover::WriteGate::default());
        for group in [None, Some(ANY_GROUP)] {
            tasks.push(watch(
                "request server",
                serve_requests(
                    Served {
                        raft: raft.clone(),
                        shard: cell.clone(),
                        gate: gate.clone(),
                        log: log_reader.clone(),
                    },
                    self.bus.clone(),
                    &config.prefix,
                    shard,
                    config.node_id,
                    group,
                )
                .await?,
            ));
        }
        if let Some(applied) = applied {
            tasks.push(watch(
                "write-event publisher",
                crate::feed::publish_while_leading(
                    raft.clone(),
                    applied,
                    self.bus.clone(),
                    config.prefix.clone(),
                    config.write_event_points,
                ),
            ));
        }
        tasks.push(watch(
            "lease expiry",
            crate::state::expire_leases(Arc::downgrade(self), shard, raft.clone(), cell.clone()),
        ));
        tasks.push(watch(
            "snapshot trigger",
            snapshot_by_log_size(raft.clone(), appended, config.snapshot_log_bytes),
        ));
        tasks.push(watch(
            "membership watcher",
            crate::membership::watch_membership(Arc::downgrade(self), shard, raft.clone()),
        ));
        if let Some(voters) = create.filter(|_| pristine) {
            let members: BTreeSet<u64> = voters.iter().copied().collect();
            match raft.initialize(members).await {
                Ok(()) => info!(shard, ?voters, "created shard group"),
                Err(e) => debug!(shard, error = %e, "group already initialized"),
            }
        }
        self.groups.write().insert(
            shard,
            Arc::new(Group {
                raft,
                shard: cell,
                gate,
                applied: applied_tx,
                tasks,
                log: log_probe,
                log_reader,
            }),
        );
        Ok(())
    }

    /// The point batches this node's replica of `shard` applies from now on,
    /// with their points (in process; nothing crosses the bus). Every replica
    /// applies every batch: a consumer that must handle each batch once in
    /// the cluster handles those of the shards it [leads](Self::leads). A
    /// receiver that falls more than 1,024 batches behind is told how many
    /// it missed. `None` when this node holds no replica of `shard`.
    pub fn applied_batches(
        &self,
        shard: u32,
    ) -> Option<tokio::sync::broadcast::Receiver<Arc<crate::feed::Applied>>> {
        Some(self.group(shard)?.applied.subscribe())
    }

    /// Whether this node leads `shard`'s group now (as its Raft metrics say:
    /// a leader that lost its quorum learns it at its next heartbeat).
    pub fn leads(&self, shard: u32) -> bool {
        self.group(shard).is_some_and(|g| {
            let m = g.raft.metrics();
            let m = m.borrow();
            m.current_leader == Some(m.id)
        })
    }

    /// A consumer of the change feed: every metric's write events, each once,
    /// gaps reported (crate::feed).
    pub async fn write_feed(&self) -> Result<crate::feed::WriteFeed, ClusterError> {
        crate::feed::WriteFeed::subscribe(self.bus.as_ref(), &self.config.prefix).await
    }

    /// This node's member of `shard`, if it has one.
    pub(crate) fn group(&self, shard: u32) -> Option<Arc<Group>> {
        self.groups.read().get(&shard).cloned()
    }

    /// Where this node keeps its groups' data.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// The settings every replica on this node opens its shard with.
    pub fn shard_config(&self) -> &ShardConfig {
        &self.config.shard
    }

    /// Replicas per shard asked for (a shard has fewer while the cluster
    /// has fewer nodes).
    pub fn replication(&self) -> usize {
        self.config.replication
    }

    pub fn shards(&self) -> u32 {
        self.config.shards
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Writes `points`, each to its shard's leader, acknowledged after commit
    /// in every shard touched. Returns the points written.
    pub async fn write(self: &Arc<Self>, points: &[Point]) -> Result<usize, ClusterError> {
        self.write_batch(PointBatch::from_points(points.to_vec()))
            .await
    }

    /// [`Self::write`] of points the caller gives up.
    pub async fn write_owned(self: &Arc<Self>, points: Vec<Point>) -> Result<usize, ClusterError> {
        self.write_batch(PointBatch::from_points(points)).await
    }

    /// [`Self::write`] of a batch with a series table (what the parsers build).
    pub async fn write_batch(self: &Arc<Self>, points: PointBatch) -> Result<usize, ClusterError> {
        self.submit(points).await?.wait().await
    }

    /// Puts `points` into their shards' logs, in order, and returns what to
    /// wait on for the commit: entries of groups this node leads are handed
    /// to Raft (after every earlier submission to the same group), entries
    /// led elsewhere are forwarded and waited for here. So a caller may submit
    /// the next batch while this one commits, and a later write of a point
    /// still lands after an earlier one.
    pub async fn submit(
        self: &Arc<Self>,
        points: PointBatch,
    ) -> Result<PendingWrite, ClusterError> {
        self.submit_keyed(points, &[]).await
    }

    /// [`Self::submit`] where `keys` name spans of `points` written with an
    /// idempotency key: each span, in each shard, is split into entries of its
    /// own (numbered parts, split the same way whenever the same write is
    /// sent), and a part already applied under its key by an earlier
    /// submission within `idempotency_window` is not applied again.
    pub async fn submit_keyed(
        self: &Arc<Self>,
        points: PointBatch,
        keys: &[KeySpan],
    ) -> Result<PendingWrite, ClusterError> {
        // A committed entry must apply on every replica: refuse bad points
        // before they reach the log (all or nothing, as a shard's own write).
        // A batch's labels are sorted as its series are added.
        points
            .view()
            .validate(&self.config.shard.limits)
            .map_err(|(index, problem)| {
                ClusterError::Storage(chronicle_storage::StorageError::InvalidPoint {
                    index,
                    problem,
                })
            })?;
        // Routed per series, not per point: a series' samples share its shard.
        let shard_of_series: Vec<u32> = points
            .series_iter()
            .map(|(_, metric, labels)| {
                if self.config.shards <= 1 {
                    0
                } else {
                    shard_of(metric, labels, self.config.shards)
                }
            })
            .collect();
        let mut entries: Vec<Entry> = Vec::new();
        if keys.is_empty() {
            let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            if self.config.shards <= 1 {
                // One shard (a node alone): every point, in order.
                by_shard.insert(0, (0..points.len()).collect());
            } else {
                for (i, (series, _, _)) in points.samples().enumerate() {
                    by_shard
                        .entry(shard_of_series[series.index()])
                        .or_default()
                        .push(i);
                }
            }
            // Entries of at most MAX_ENTRY_POINTS points and MAX_ENTRY_BYTES
            // (an entry must fit in one bus message), all in flight at once,
            // in every shard, so openraft logs and replicates them together.
            // Each is encoded here, once, with the series it uses.
            for (shard, indexes) in by_shard {
                for part in points.split_for_encoding(&indexes, MAX_ENTRY_POINTS, MAX_ENTRY_BYTES) {
                    entries.push((shard, points.encode_points(part.iter().copied()), None));
                }
            }
        } else {
            entries = self.keyed_entries(&points, &shard_of_series, keys)?;
        }
        let mut pending = PendingWrite {
            node: self.clone(),
            submitted: Vec::new(),
            written: 0,
            _traced: Vec::new(),
        };
        let mut forwarded = Vec::new();
        for (shard, points, keyed) in entries {
            if let Some(group) = self.group(shard) {
                group.gate.pass().await;
                if group.raft.metrics().borrow().current_leader == Some(self.config.node_id) {
                    let mut batch = WriteBatch::new(points.clone());
                    batch.keyed = keyed.as_ref().map(|k| Box::new(k.stamped()));
                    pending._traced.push(crate::trace::proposing(&batch.points));
                    let commit = group
                        .raft
                        .client_write_ff(batch)
                        .await
                        .map_err(|e| ClusterError::Raft(e.to_string()))?;
                    pending.submitted.push((shard, points, keyed, commit));
                    continue;
                }
            }
            forwarded.push((shard, points, keyed));
        }
        let writes = forwarded
            .into_iter()
            .map(|(shard, points, keyed)| async move {
                crate::metrics::FORWARDED_WRITES
                    .with_label_values(&[shard.to_string().as_str()])
                    .inc();
                let started = std::time::Instant::now();
                let written = tracing::Instrument::instrument(
                    self.write_entry(shard, points, keyed),
                    tracing::info_span!("cluster_forward", shard),
                )
                .await;
                crate::metrics::FORWARDED_WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
                written
            });
        for result in futures_util::future::join_all(writes).await {
            pending.written += result?;
        }
        Ok(pending)
    }

    /// The entries of a write with keyed spans: unkeyed points as usual; each
    /// keyed span, per shard, in parts of its own of at most
    /// `MAX_ENTRY_POINTS` points and `MAX_ENTRY_BYTES`, numbered in order.
    fn keyed_entries(
        &self,
        points: &PointBatch,
        shard_of_series: &[u32],
        keys: &[KeySpan],
    ) -> Result<Vec<Entry>, ClusterError> {
        let nonce = inbox_nonce()
            ^ self
                .next_inbox
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let window = i64::try_from(self.config.idempotency_window.as_nanos()).unwrap_or(i64::MAX);
        // Which span each point is in (None: unkeyed).
        let mut span_of = vec![None; points.len()];
        for (i, k) in keys.iter().enumerate() {
            let end = k.start.checked_add(k.len).filter(|&e| e <= points.len());
            let Some(end) = end else {
                return Err(ClusterError::Config(format!(
                    "idempotency span {}..+{} outside a write of {} points",
                    k.start,
                    k.len,
                    points.len()
                )));
            };
            for slot in &mut span_of[k.start..end] {
                *slot = Some(i);
            }
        }
        // Per shard, runs of points of one span (or unkeyed), in order.
        let mut by_shard: BTreeMap<u32, Vec<Run>> = BTreeMap::new();
        for (i, ((series, _, _), span)) in points.samples().zip(span_of).enumerate() {
            let runs = by_shard.entry(shard_of_series[series.index()]).or_default();
            match runs.last_mut() {
                Some((s, run)) if *s == span => run.push(i),
                _ => runs.push((span, vec![i])),
            }
        }
        let mut entries = Vec::new();
        for (shard, runs) in by_shard {
            let mut parts = vec![0u32; keys.len()];
            for (span, run) in runs {
                for chunk in points.split_for_encoding(&run, MAX_ENTRY_POINTS, MAX_ENTRY_BYTES) {
                    let keyed = span.map(|i| {
                        parts[i] += 1;
                        KeyedPart {
                            key: keys[i].key.clone(),
                            part: parts[i] - 1,
                            nonce,
                            window,
                        }
                    });
                    entries.push((shard, points.encode_points(chunk.iter().copied()), keyed));
                }
            }
        }
        Ok(entries)
    }

    async fn write_entry(
        &self,
        shard: u32,
        points: EncodedPoints,
        keyed: Option<KeyedPart>,
    ) -> Result<usize, ClusterError> {
        // A forwarded entry is sent again to the next leader when an attempt
        // gets no answer, and the leader that gave none (killed, say) may
        // have committed it first: without a key it would apply twice. One
        // of its own (with a space, so no client's key can be it) makes the
        // second copy a retry that applies nothing.
        let keyed = keyed.unwrap_or_else(|| {
            let nonce = inbox_nonce()
                ^ self
                    .next_inbox
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            KeyedPart {
                key: format!("forwarded {}/{nonce:016x}", self.config.node_id),
                part: 0,
                nonce,
                window: i64::try_from(self.config.idempotency_window.as_nanos())
                    .unwrap_or(i64::MAX),
            }
        });
        // The wire form is built only if the write has to be forwarded.
        let request = || {
            WireClusterRequest::WriteKeyed(Box::new(WireKeyedWrite {
                points: points.as_bytes().to_vec(),
                key: keyed.key.clone(),
                part: keyed.part,
                nonce: keyed.nonce,
                window: keyed.window,
            }))
        };
        let reply = self
            .to_leader(shard, request, |raft| {
                let mut batch = WriteBatch::new(points.clone());
                batch.keyed = Some(Box::new(keyed.stamped()));
                async move {
                    raft.client_write(batch)
                        .await
                        .map(|r| r.data.written as u64)
                }
            })
            .await?;
        match reply {
            WireClusterReply::Written(n) => Ok(n as usize),
            other => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Reads a selection from `shard` linearizably: on its leader, after the
    /// leader confirmed it still leads (read index) and applied up to it.
    pub async fn read(
        &self,
        shard: u32,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, ClusterError> {
        let read = ShardRead::all_series(matchers, start, end);
        into_series(self.read_shard(shard, &read).await?)
    }

    /// Reads every shard (in parallel) and merges the series.
    pub async fn read_all(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Result<Vec<SeriesSamples>, ClusterError> {
        let read = ShardRead::all_series(matchers, start, end);
        into_series(self.query(&read).await?)
    }

    /// Asks every shard (concurrently, each linearizably through its leader)
    /// and merges their answers.
    pub async fn query(&self, read: &ShardRead) -> Result<ShardAnswer, ClusterError> {
        read.validate()?;
        let parts = (0..self.config.shards).map(|s| self.read_shard(s, read));
        let mut answers = Vec::with_capacity(self.config.shards as usize);
        for answer in futures_util::future::join_all(parts).await {
            answers.push(answer?);
        }
        merge(read, answers)
    }

    /// [`Self::query`] for a caller on a thread it may block: a blocking-pool
    /// thread driving this future with `Handle::block_on`, as the query
    /// actor's reads do. One shard this node leads is read on the calling
    /// thread; the other shards' reads are started first (remote ones before
    /// the local read-index checks, as in `query`) and run as `query` runs
    /// them. On a small read, handing it to the runtime's blocking pool and
    /// back costs as much as the read itself (two thread wake-ups). As with
    /// `query`, every shard's read has finished when this returns, and the
    /// error answered is the lowest shard's. Never call it from an async
    /// worker: the local read would block that worker.
    pub async fn query_on_blocking_thread(
        self: &Arc<Self>,
        read: &ShardRead,
    ) -> Result<ShardAnswer, ClusterError> {
        read.validate()?;
        let shards = self.config.shards as usize;
        let mut results: Vec<Option<Result<ShardAnswer, ClusterError>>> =
            (0..shards).map(|_| None).collect();
        let mut started = Vec::with_capacity(shards);
        let remote = |shard: usize| {
            let (node, read) = (self.clone(), read.clone());
            tokio::spawn(async move { node.read_remote(shard as u32, &read).await })
        };
        // Shards led elsewhere go to their leaders at once.
        let mut here = Vec::new();
        for shard in 0..shards {
            if self.may_read_here(shard as u32) {
                here.push(shard);
            } else {
                started.push((shard, remote(shard)));
            }
        }
        let checked = futures_util::future::join_all(
            here.iter().map(|&s| self.local_replica_for_read(s as u32)),
        )
        .await;
        let mut inline = None;
        for (shard, replica) in here.into_iter().zip(checked) {
            match replica {
                Err(e) => results[shard] = Some(Err(e)),
                Ok(Some(replica)) if inline.is_none() => inline = Some((shard, replica)),
                Ok(Some(replica)) => started.push((shard, spawn_local_read(replica, read.clone()))),
                Ok(None) => started.push((shard, remote(shard))),
            }
        }
        if let Some((shard, replica)) = inline {
            // A panic is this read's failure, as on the blocking pool.
            let answer =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read.run(&replica)))
                    .map_err(|_| ClusterError::Raft("read task failed: it panicked".into()))
                    .and_then(|r| r.map_err(ClusterError::Storage));
            results[shard] = Some(answer);
        }
        for (shard, task) in started {
            results[shard] = Some(joined(task.await));
        }
        let mut answers = Vec::with_capacity(shards);
        for answer in results {
            answers.push(
                answer.ok_or_else(|| {
                    ClusterError::Raft("a shard's read was never started".into())
                })??,
            );
        }
        merge(read, answers)
    }

    /// Answers `read` from one shard's leader: here when this node leads it
    /// (after a read index confirms it still does), otherwise over the bus.
    pub async fn read_shard(
        &self,
        shard: u32,
        read: &ShardRead,
    ) -> Result<ShardAnswer, ClusterError> {
        match self.local_replica_for_read(shard).await? {
            Some(replica) => run_local(replica, read.clone()).await,
            None => self.read_remote(shard, read).await,
        }
    }

    /// Whether this node may answer a read of `shard` itself (it has a
    /// replica that leads, or stale reads are allowed), before the read
    /// index confirms it.
    fn may_read_here(&self, shard: u32) -> bool {
        self.group(shard).is_some_and(|group| {
            self.config.unsafe_stale_reads
                || group.raft.metrics().borrow().current_leader == Some(self.config.node_id)
        })
    }

    /// This node's replica of `shard` when a read may be answered from it:
    /// it leads the shard and a read index confirmed it still does (or the
    /// node allows stale reads). `None`: ask the leader over the bus.
    async fn local_replica_for_read(&self, shard: u32) -> Result<Option<Arc<Shard>>, ClusterError> {
        let Some(group) = self.group(shard) else {
            return Ok(None);
        };
        if self.config.unsafe_stale_reads {
            return Ok(Some(group.shard.current()));
        }
        if group.raft.metrics().borrow().current_leader == Some(self.config.node_id) {
            if let ReadIndex::Ready = read_index(&group.raft, Some(shard)).await? {
                return Ok(Some(group.shard.current()));
            }
        }
        Ok(None)
    }

    /// Answers `read` from `shard`'s leader elsewhere, over the bus.
    async fn read_remote(&self, shard: u32, read: &ShardRead) -> Result<ShardAnswer, ClusterError> {
        let inbox = format!(
            "{}.inbox.{}.{}.{}",
            self.config.prefix,
            self.config.node_id,
            self.inbox_nonce,
            self.next_inbox
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut parts = self
            .bus
            .subscribe(&inbox, None)
            .await
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let request = WireClusterRequest::Read {
            read: WireRead::from(read),
            inbox,
        };
        let reply = self
            .ask_leader(
                shard,
                &request,
                READ_ATTEMPT_TIMEOUT,
                self.config.read_timeout,
            )
            .await?;
        let WireClusterReply::Answer { total, first } = reply else {
            return Err(ClusterError::Raft(format!("unexpected reply {reply:?}")));
        };
        let mut bytes = first;
        for seq in 1..total {
            let part = tokio::time::timeout(READ_ATTEMPT_TIMEOUT, parts.next())
                .await
                .map_err(|_| {
                    ClusterError::Unavailable(format!(
                        "shard {shard}: part {seq} of {total} of an answer did not arrive"
                    ))
                })?
                .ok_or_else(|| ClusterError::Bus("answer inbox closed".into()))?;
            let part: WireAnswerPart = chronicle_bus::envelope::decode(&part.payload)
                .map_err(|e| ClusterError::Bus(e.to_string()))?;
            if part.seq != seq {
                return Err(ClusterError::Corrupt {
                    what: "answer",
                    why: format!("part {} arrived where {seq} was expected", part.seq),
                });
            }
            bytes.extend_from_slice(&part.bytes);
        }
        let answer: WireAnswer =
            chronicle_bus::envelope::decode(&bytes).map_err(|e| ClusterError::Corrupt {
                what: "answer",
                why: e.to_string(),
            })?;
        Ok(answer.into())
    }

    /// A local leader handles `request` with `local`; otherwise it goes to the
    /// leader over the bus, following "not leader" hints a few times.
    async fn to_leader<F, Fut>(
        &self,
        shard: u32,
        request: impl FnOnce() -> WireClusterRequest,
        local: F,
    ) -> Result<WireClusterReply, ClusterError>
    where
        F: Fn(Raft<TypeConfig>) -> Fut,
        Fut: std::future::Future<
            Output = Result<u64, RaftError<u64, ClientWriteError<u64, openraft::EmptyNode>>>,
        >,
    {
        if let Some(group) = self.group(shard) {
            group.gate.pass().await;
            if group.raft.metrics().borrow().current_leader == Some(self.config.node_id) {
                // A leader cut off from its majority cannot commit, and
                // openraft 0.9 keeps it leader until it hears of a newer term:
                // give up rather than wait for a heal.
                match tokio::time::timeout(self.config.request_timeout, local(group.raft.clone()))
                    .await
                {
                    Ok(Ok(n)) => return Ok(WireClusterReply::Written(n)),
                    Ok(Err(e)) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => {}
                    Ok(Err(e)) => return Err(ClusterError::Raft(e.to_string())),
                    Err(_) => {
                        return Err(ClusterError::Unavailable(format!(
                            "shard {shard}: not committed within {:?}; this node leads it but cannot reach a majority",
                            self.config.request_timeout
                        )))
                    }
                }
            }
        }
        self.ask_leader(
            shard,
            &request(),
            ATTEMPT_TIMEOUT,
            self.config.request_timeout,
        )
        .await
    }

    /// Sends `request` to the shard's leader, giving each attempt at most
    /// `attempt` and all of them `total`.
    pub(crate) async fn ask_leader(
        &self,
        shard: u32,
        request: &WireClusterRequest,
        attempt: Duration,
        total: Duration,
    ) -> Result<WireClusterReply, ClusterError> {
        // Candidates: the replicas as last seen, then any replica at all
        // (`None`: the shard's queue-group subject), for when they moved.
        let mut candidates: Vec<Option<u64>> = self
            .placement
            .read()
            .get(shard as usize)
            .map(|r| r.iter().copied().map(Some).collect())
            .unwrap_or_default();
        candidates.push(None);
        let mut target = self
            .group(shard)
            .and_then(|g| g.raft.metrics().borrow().current_leader)
            .or(candidates[0]);
        let payload = chronicle_bus::envelope::encode(request)
            .map_err(|e| ClusterError::Bus(e.to_string()))?;
        let mut last_error = String::from("no replica answered");
        // Until the request timeout: follow leader hints; while an election is
        // under way (no hint, or the old leader gone) try the replicas in turn.
        let deadline = tokio::time::Instant::now() + total;
        let mut next = 0usize;
        while tokio::time::Instant::now() < deadline {
            let subject = match target {
                Some(node) => service_subject(&self.config.prefix, shard, node),
                None => any_replica_subject(&self.config.prefix, shard),
            };
            let who = target.map_or("any replica".to_string(), |n| format!("node {n}"));
            // A member that died without closing its connection answers nothing:
            // give each attempt a bounded share, not the whole deadline.
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(attempt);
            let reply = self
                .bus
                .request(Message::new(subject, payload.clone()), left)
                .await;
            match reply.map(|m| chronicle_bus::envelope::decode::<WireClusterReply>(&m.payload)) {
                Ok(Ok(WireClusterReply::NotLeader(Some(hint)))) if Some(hint) != target => {
                    target = Some(hint);
                    continue;
                }
                Ok(Ok(WireClusterReply::NotLeader(_))) => {
                    last_error = format!("{who} is not the leader of shard {shard}");
                }
                Ok(Ok(WireClusterReply::Error(e))) => return Err(ClusterError::Raft(e)),
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => return Err(ClusterError::Bus(e.to_string())),
                Err(e) => {
                    debug!(shard, %who, error = %e, "forwarded request failed");
                    last_error = format!("{who}: {e}");
                }
            }
            next += 1;
            target = candidates[next % candidates.len()];
            if next.is_multiple_of(candidates.len()) {
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
        }
        Err(ClusterError::Unavailable(format!(
            "shard {shard}: {last_error}"
        )))
    }

    /// This node's own view, without asking anyone: the members it knows of,
    /// and per shard the replicas as last seen, and leader, term and lag where
    /// it holds a replica.
    pub fn status(&self) -> (Vec<u64>, Vec<ShardStatus>) {
        let placement = self.placement.read().clone();
        let members: BTreeSet<u64> = placement.iter().flatten().copied().collect();
        let shards = placement
            .into_iter()
            .enumerate()
            .map(|(i, replicas)| {
                let local = self
                    .group(i as u32)
                    .map(|g| member_status(self.config.node_id, &g.raft));
                ShardStatus {
                    id: i as u32,
                    leader: local.as_ref().and_then(|m| m.leader),
                    replicas,
                    lag: local
                        .as_ref()
                        .map(|m| m.lag.iter().copied().collect())
                        .unwrap_or_default(),
                    term: local.as_ref().map_or(0, |m| m.term),
                    last_log_index: local.as_ref().map_or(0, |m| m.last_log_index),
                }
            })
            .collect();
        (members.into_iter().collect(), shards)
    }

    /// Every shard's leader, term and followers' lag, asked of the shard's
    /// members over the bus (this node's own replicas answer locally). A shard
    /// none of whose members answers within a second shows no leader.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let shards = (0..self.config.shards).map(|shard| self.shard_status(shard));
        let shards = futures_util::future::join_all(shards).await;
        let members: BTreeSet<u64> = shards.iter().flat_map(|s| s.replicas.clone()).collect();
        ClusterStatus {
            node_id: self.config.node_id,
            members: members.into_iter().collect(),
            shards,
        }
    }

    async fn shard_status(&self, shard: u32) -> ShardStatus {
        let best = self.best_status(shard).await;
        let replicas = self.placement.read()[shard as usize].clone();
        let best = best.unwrap_or(WireMemberStatus {
            node: 0,
            leader: None,
            term: 0,
            last_log_index: 0,
            applied_index: 0,
            lag: Vec::new(),
            voters: Vec::new(),
            members: Vec::new(),
            membership_committed: false,
        });
        ShardStatus {
            id: shard,
            leader: best.leader,
            replicas,
            lag: best.lag.into_iter().collect(),
            term: best.term,
            last_log_index: best.last_log_index,
        }
    }

    /// The leader's view of `shard` if one is reached, else the member view
    /// with the highest term; this node's placement hint follows its voters.
    pub(crate) async fn best_status(&self, shard: u32) -> Option<WireMemberStatus> {
        let replicas = self.placement.read()[shard as usize].clone();
        let mut best: Option<WireMemberStatus> = self
            .group(shard)
            .map(|g| member_status(self.config.node_id, &g.raft));
        // Ask the leader for the lag; if unknown, the replicas (or any
        // replica at all) who the leader is.
        let mut asked = BTreeSet::from([self.config.node_id]);
        let mut asked_any = false;
        for _ in 0..replicas.len() + 3 {
            let next = match &best {
                Some(s) if s.leader == Some(s.node) => break,
                Some(WireMemberStatus {
                    leader: Some(l), ..
                }) if !asked.contains(l) => Some(*l),
                _ => match replicas.iter().find(|r| !asked.contains(r)) {
                    Some(r) => Some(*r),
                    None if !asked_any => None,
                    None => break,
                },
            };
            match next {
                Some(n) => asked.insert(n),
                None => std::mem::replace(&mut asked_any, true),
            };
            if let Some(status) = self.ask_status(shard, next).await {
                asked.insert(status.node);
                if best
                    .as_ref()
                    .is_none_or(|b| status.leader == Some(status.node) || status.term >= b.term)
                {
                    best = Some(status);
                }
            }
        }
        if let Some(b) = best.as_ref().filter(|b| !b.voters.is_empty()) {
            self.placement.write()[shard as usize] = b.voters.clone();
        }
        best
    }

    /// One member's view of `shard` (`None`: whichever replica answers).
    pub(crate) async fn ask_status(
        &self,
        shard: u32,
        node: Option<u64>,
    ) -> Option<WireMemberStatus> {
        let payload = chronicle_bus::envelope::encode(&WireClusterRequest::Status).ok()?;
        let subject = match node {
            Some(node) => service_subject(&self.config.prefix, shard, node),
            None => any_replica_subject(&self.config.prefix, shard),
        };
        let reply = self
            .bus
            .request(Message::new(subject, payload), Duration::from_secs(1))
            .await
            .ok()?;
        match chronicle_bus::envelope::decode::<WireClusterReply>(&reply.payload).ok()? {
            WireClusterReply::Status(status) => Some(status),
            _ => None,
        }
    }

    /// Stops this node's members (as a crash would, minus the lost memory).
    pub async fn shutdown(&self) {
        for task in self.service.lock().drain(..) {
            task.abort();
        }
        let groups: Vec<Arc<Group>> = std::mem::take(&mut *self.groups.write())
            .into_values()
            .collect();
        for g in groups {
            g.stop().await;
        }
    }

    /// The last index this node's replica of `shard` applied (None if it holds none).
    /// Raft publishes it a moment after the apply, so it may trail what the
    /// shard already shows; never read it as "what was just committed".
    pub fn applied_index(&self, shard: u32) -> Option<u64> {
        let g = self.group(shard)?;
        let applied = g
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        Some(applied)
    }

    /// Waits until every shard this node holds knows its leader; false when
    /// `timeout` passed first.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let groups: Vec<Arc<Group>> = self.groups.read().values().cloned().collect();
        for group in groups {
            let mut metrics = group.raft.metrics();
            // Only whether it came: the borrow `wait_for` returns is a read
            // lock on the metrics, not to be kept.
            let led = matches!(
                tokio::time::timeout_at(deadline, metrics.wait_for(|m| m.current_leader.is_some()))
                    .await,
                Ok(Ok(_))
            );
            if !led {
                return false;
            }
        }
        true
    }

    /// Sets the cluster's gauges in the process's Prometheus registry from
    /// this node's groups (called at each scrape of `/metrics`): Raft state
    /// per shard and the shard's RocksDB figures.
    pub fn refresh_metrics(&self) {
        use crate::metrics::*;
        touch();
        reset_gauges();
        let me = self.config.node_id;
        let groups: Vec<(u32, Arc<Group>)> = self
            .groups
            .read()
            .iter()
            .map(|(id, g)| (*id, g.clone()))
            .collect();
        for (id, group) in groups {
            let shard = id.to_string();
            let l = &[shard.as_str()];
            // The shard's counters show from its start, at zero.
            ELECTIONS.with_label_values(l);
            LEADER_CHANGES.with_label_values(l);
            FORWARDED_WRITES.with_label_values(l);
            for kind in ["built", "installed"] {
                SNAPSHOTS.with_label_values(&[shard.as_str(), kind]);
                SNAPSHOT_BYTES.with_label_values(&[shard.as_str(), kind]);
            }
            let m = group.raft.metrics().borrow().clone();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let last = m.last_log_index.unwrap_or(0);
            let committed = group.log.committed().max(applied);
            set(&LEADER, l, u64::from(m.current_leader == Some(me)));
            set(&HAS_LEADER, l, u64::from(m.current_leader.is_some()));
            set(&TERM, l, m.current_term);
            set(&LAST_LOG_INDEX, l, last);
            set(&COMMIT_INDEX, l, committed);
            set(&APPLIED_INDEX, l, applied);
            set(&APPLY_LAG, l, committed.saturating_sub(applied));
            let behind = m.replication.as_ref().map_or(0, |followers| {
                followers
                    .iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(_, matched)| last.saturating_sub(matched.map_or(0, |l| l.index)))
                    .max()
                    .unwrap_or(0)
            });
            set(&REPLICATION_LAG, l, behind);
            let purged = m.purged.map_or(0, |p| p.index);
            let first = if m.purged.is_some() { purged + 1 } else { 0 };
            let entries = if m.last_log_index.is_some() {
                (last + 1).saturating_sub(first)
            } else {
                0
            };
            set(&LOG_ENTRIES, l, entries);
            set(&LOG_BYTES, l, group.log.bytes());
            set(&SNAPSHOT_INDEX, l, m.snapshot.map_or(0, |s| s.index));
            let stats = group.shard.current().engine_stats();
            for cf in &stats.column_families {
                let l = &[shard.as_str(), cf.name];
                set(&ROCKSDB_SST_LIVE, l, cf.live_sst_bytes);
                set(&ROCKSDB_SST_TOTAL, l, cf.total_sst_bytes);
                set(&ROCKSDB_MEMTABLE, l, cf.memtable_bytes);
                set(&ROCKSDB_PENDING_COMPACTION, l, cf.pending_compaction_bytes);
            }
            set(&ROCKSDB_BLOCK_CACHE, l, stats.block_cache_bytes);
            set(&ROCKSDB_WRITE_STOPPED, l, u64::from(stats.write_stopped));
            set(
                &ROCKSDB_WRITE_DELAYED,
                l,
                u64::from(stats.delayed_write_rate > 0),
            );
            set(&DECODED_CACHE, l, stats.decoded_cache_bytes);
            crate::metrics::set_reads(shard.as_str(), &stats.reads);
        }
    }

    /// This node's replicas: shard id and its current storage.
    pub fn local_shards(&self) -> Vec<(u32, Arc<chronicle_storage::Shard>)> {
        self.groups
            .read()
            .iter()
            .map(|(id, g)| (*id, g.shard.current()))
            .collect()
    }

    /// Writes a consistent RocksDB checkpoint of `shard` into `dir` (which
    /// must not exist) when this node leads it, after a read index: the
    /// checkpoint holds every write acknowledged before the call. `None` when
    /// this node does not lead the shard (a follower may lag; back the shard
    /// up from its leader). The checkpoint hard-links the shard's SST files,
    /// so it costs little disk until compactions replace them.
    pub async fn backup_checkpoint(
        &self,
        shard: u32,
        dir: PathBuf,
    ) -> Result<Option<BackupCheckpoint>, ClusterError> {
        let Some(group) = self.group(shard) else {
            return Ok(None);
        };
        let metrics = group.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.config.node_id) {
            return Ok(None);
        }
        if let ReadIndex::NotLeader = read_index(&group.raft, Some(shard)).await? {
            return Ok(None);
        }
        let replica = group.shard.current();
        let applied_index = tokio::task::spawn_blocking(move || {
            // Heads cut into chunks first: a backup has no Raft log to
            // replay what the shard had not made durable yet.
            replica.checkpoint(&dir)?;
            Ok::<_, ClusterError>(replica.last_applied())
        })
        .await
        .map_err(|e| ClusterError::Unavailable(format!("checkpoint task failed: {e}")))??;
        Ok(Some(BackupCheckpoint {
            applied_index,
            term: metrics.current_term,
        }))
    }

    /// The local replica of `shard`, for follower reads (may lag the leader).
    pub fn local_shard(&self, shard: u32) -> Option<ShardCell> {
        self.group(shard).map(|g| g.shard.clone())
    }

    /// Runs `op` on `shard`'s leader (here, or over the bus), allowing it `timeout`.
    pub(crate) async fn on_leader(
        &self,
        shard: u32,
        op: LeaderOp,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        if let Some(group) = self.group(shard) {
            if group.raft.metrics().borrow().current_leader == Some(self.config.node_id) {
                match tokio::time::timeout(
                    timeout,
                    run_leader_op(&group.raft, &group.gate, op.clone()),
                )
                .await
                {
                    Ok(WireClusterReply::Done) => return Ok(()),
                    Ok(WireClusterReply::NotLeader(_)) => {}
                    Ok(WireClusterReply::Error(e)) => return Err(ClusterError::Raft(e)),
                    Ok(other) => {
                        return Err(ClusterError::Raft(format!("unexpected reply {other:?}")))
                    }
                    Err(_) => {
                        return Err(ClusterError::Unavailable(format!(
                            "shard {shard}: {op:?} did not finish within {timeout:?}"
                        )))
                    }
                }
            }
        }
        match self
            .ask_leader(shard, &WireClusterRequest::Leader(op), timeout, timeout)
            .await?
        {
            WireClusterReply::Done => Ok(()),
            other => Err(ClusterError::Raft(format!("unexpected reply {other:?}"))),
        }
    }

    /// Registers a node-level task to stop at shutdown.
    pub(crate) fn add_service(&self, task: tokio::task::JoinHandle<()>) {
        self.service.lock().push(task);
    }
}

impl Group {
    /// Stops the member: its servers, its watcher, then Raft.
    pub(crate) async fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
        // openraft's shutdown waits for its core, which can sit in a log
        // write waiting on a stalled disk: a stop must not hang on it (a
        // stuck core is abandoned; the process or the supervisor goes on).
        match tokio::time::timeout(RAFT_SHUTDOWN_LIMIT, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "raft shutdown"),
            Err(_) => warn!(
                limit = ?RAFT_SHUTDOWN_LIMIT,
                "the raft core did not stop in time; abandoned"
            ),
        }
    }
}

/// Failpoint (tests): set to `panic`, a shard's request server panics on the
/// next request it receives.
pub const REQUEST_SERVER_FAILPOINT: &str = "cluster::request_server";
/// Failpoint (tests): set to `panic`, the retention loop panics when it wakes.
pub const RETENTION_FAILPOINT: &str = "cluster::retention";

/// How long a group's stop waits for openraft's core.
const RAFT_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);
/// Asks `raft` for a snapshot whenever `threshold` bytes were appended to its
/// log since the last one (checked every second; asked again after 30 s if a
/// snapshot did not follow, e.g. because the shard's durable frontier had not
/// moved).
fn snapshot_by_log_size(
    raft: Raft<TypeConfig>,
    appended: Arc<std::sync::atomic::AtomicU64>,
    threshold: u64,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut last = raft.metrics().borrow().snapshot;
        let mut base = 0u64;
        let mut asked: Option<(std::time::Instant, u64)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = appended.load(Ordering::Relaxed);
            let snapshot = raft.metrics().borrow().snapshot;
            if snapshot != last {
                last = snapshot;
                // What the new snapshot covers: at least what was appended
                // when it was asked for (or now, if it came otherwise).
                base = asked.take().map_or(now, |(_, bytes)| bytes);
            }
            let due = now.saturating_sub(base) >= threshold;
            let waiting = asked.is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(30));
            if due && !waiting {
                debug!(since = now - base, "log size reached: snapshot");
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
                asked = Some((std::time::Instant::now(), now));
            }
        }
    })
}

/// Has the leaders among this node's members propose retention and run the
/// downsampling rules every `retention_check`.
fn spawn_retention(node: std::sync::Weak<ClusterNode>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(period) = node.upgrade().map(|n| n.config.retention_check) else {
                return;
            };
            tokio::time::sleep(period).await;
            fail::fail_point!(RETENTION_FAILPOINT);
            let Some(node) = node.upgrade() else { return };
            let now = now_ns();
            // Downsampling first: retention may drop raw data a rule has
            // yet to cover.
            match node.propose_downsampling(now, 64).await {
                Ok(0) => {}
                Ok(entries) => debug!(entries, "downsampling proposed"),
                Err(e) => warn!(error = %e, "downsampling not proposed; trying again next period"),
            }
            match node.propose_retention(now).await {
                Ok(shards) if !shards.is_empty() => debug!(?shards, "retention proposed"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention not proposed; trying again next period"),
            }
        }
    })
}

fn inbox_nonce() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut seed = now.to_le_bytes().to_vec();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    xxhash_rust::xxh64::xxh64(&seed, 0)
}

/// The series of an answer to [`ShardRead::all_series`].
fn into_series(answer: ShardAnswer) -> Result<Vec<SeriesSamples>, ClusterError> {
    match answer {
        ShardAnswer::Series(Some(series)) => Ok(series),
        other => Err(ClusterError::Corrupt {
            what: "answer",
            why: format!("unexpected {other:?}"),
        }),
    }
}

/// Runs a read on this node's replica (on the blocking pool: it reads RocksDB).
async fn run_local(shard: Arc<Shard>, read: ShardRead) -> Result<ShardAnswer, ClusterError> {
    joined(spawn_local_read(shard, read).await)
}

/// Starts a read on this node's replica on the blocking pool.
fn spawn_local_read(
    shard: Arc<Shard>,
    read: ShardRead,
) -> tokio::task::JoinHandle<Result<ShardAnswer, ClusterError>> {
    tokio::task::spawn_blocking(move || read.run(&shard).map_err(ClusterError::Storage))
}

/// A read task's answer, or its failure to finish (a panic) as an error.
fn joined(
    task: Result<Result<ShardAnswer, ClusterError>, tokio::task::JoinError>,
) -> Result<ShardAnswer, ClusterError> {
    task.map_err(|e| ClusterError::Raft(format!("read task failed: {e}")))?
}

/// What a shard's request server answers with: its member's Raft, its
/// replica and its write gate.
#[derive(Clone)]
struct Served {
    raft: Raft<TypeConfig>,
    shard: ShardCell,
    gate: Arc<crate::handover::WriteGate>,
    log: crate::LogStore,
}

/// Point bytes one page of committed batches holds at most (a page is one
/// bus message, under NATS's 1 MiB).
const BATCHES_PAGE_BYTES: usize = 512 * 1024;
/// Entries read from the log per step of a page.
const BATCHES_STEP: u64 = 256;

/// Committed point batches after `after` from this replica's log (see
/// [`ClusterNode::committed_batches`]): up to what it applied.
async fn local_batches(
    shard: u32,
    raft: &Raft<TypeConfig>,
    log: &crate::LogStore,
    after: u64,
) -> Result<crate::feed::CommittedBatches, ClusterError> {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    let read_err = |e: openraft::StorageError<u64>| ClusterError::Raft(e.to_string());
    let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    let mut reader = log.clone();
    let purged = reader
        .get_log_state()
        .await
        .map_err(read_err)?
        .last_purged_log_id
        .map_or(0, |l| l.index);
    let mut out = crate::feed::CommittedBatches {
        batches: Vec::new(),
        next: after,
        compacted: None,
    };
    if after < purged {
        out.next = purged;
        out.compacted = Some(purged);
        return Ok(out);
    }
    let mut bytes = 0;
    let mut prev = None;
    while out.next < applied && bytes < BATCHES_PAGE_BYTES {
        let end = applied.min(out.next.saturating_add(BATCHES_STEP));
        let entries = reader
            .try_get_log_entries(out.next + 1..=end)
            .await
            .map_err(read_err)?;
        // Purged while reading: what is gone is compacted.
        if entries.first().map(|e| e.log_id.index) != Some(out.next + 1) {
            out.compacted = Some(end);
            out.next = end;
            return Ok(out);
        }
        for entry in entries {
            let index = entry.log_id.index;
            if let openraft::EntryPayload::Normal(batch) = entry.payload {
                // Retention, delete, state and downsampling entries hold no points.
                if !batch.points.is_empty() {
                    bytes += batch.points.as_bytes().len();
                    out.batches.push(crate::feed::Applied {
                        shard,
                        index,
                        prev,
                        points: batch.points,
                    });
                    prev = Some(index);
                }
            }
            out.next = index;
            if bytes >= BATCHES_PAGE_BYTES {
                break;
            }
        }
    }
    Ok(out)
}

/// A remote replica's answer to [`WireClusterRequest::Batches`].
async fn batches_reply(
    shard: u32,
    raft: &Raft<TypeConfig>,
    log: &crate::LogStore,
    after: u64,
) -> WireClusterReply {
    match local_batches(shard, raft, log, after).await {
        Ok(page) => WireClusterReply::Batches {
            batches: page
                .batches
                .into_iter()
                .map(|a| (a.index, a.points.as_bytes().to_vec()))
                .collect(),
            next: page.next,
            compacted: page.compacted,
        },
        Err(e) => WireClusterReply::Error(e.to_string()),
    }
}

/// Answers forwarded writes and reads for one shard on this node.
async fn serve_requests(
    served: Served,
    bus: Arc<dyn Bus>,
    prefix: &str,
    shard_id: u32,
    node: u64,
    any_group: Option<&str>,
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let subject = match any_group {
        None => service_subject(prefix, shard_id, node),
        Some(_) => any_replica_subject(prefix, shard_id),
    };
    let mut sub = bus
        .subscribe(&subject, any_group)
        .await
        .map_err(|e| ClusterError::Bus(e.to_string()))?;
    Ok(tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            fail::fail_point!(REQUEST_SERVER_FAILPOINT);
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let (
                Served {
                    raft,
                    shard,
                    gate,
                    log,
                },
                bus,
            ) = (served.clone(), bus.clone());
            // Traced only as part of a request's trace (Raft's and status
            // traffic would be a root trace per message otherwise).
            let span = if message.headers.get("traceparent").is_some() {
                let span = tracing::info_span!("cluster_serve", shard = shard_id, node);
                chronicle_bus::trace::adopt(&message.headers, &span);
                span
            } else {
                tracing::Span::none()
            };
            let handle = async move {
                let (reply, later) =
                    match chronicle_bus::envelope::decode::<WireClusterRequest>(&message.payload) {
                        Ok(WireClusterRequest::Batches { after }) => (
                            batches_reply(shard_id, &raft, &log, after).await,
                            Vec::new(),
                        ),
                        Ok(request) => answer(node, &raft, &shard, &gate, request).await,
                        Err(e) => (
                            WireClusterReply::Error(format!("bad cluster request: {e}")),
                            Vec::new(),
                        ),
                    };
                if let Ok(payload) = chronicle_bus::envelope::encode(&reply) {
                    let _ = bus.publish(Message::new(reply_to, payload)).await;
                }
                for part in later {
                    if bus.publish(part).await.is_err() {
                        break;
                    }
                }
            };
            tokio::spawn(tracing::Instrument::instrument(handle, span));
        }
    }))
}

/// Proposes `batch` on this member (the leader a forwarded request reached)
/// and answers with `done` of what applying it returned; "not the leader"
/// sends the requester on, and a commit that does not come within
/// `COMMIT_TIMEOUT` is an error.
async fn commit(
    raft: &Raft<TypeConfig>,
    batch: WriteBatch,
    done: impl FnOnce(crate::types::Applied) -> WireClusterReply,
) -> WireClusterReply {
    let _traced = crate::trace::proposing(&batch.points);
    match tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(batch)).await {
        Ok(Ok(r)) => done(r.data),
        Ok(Err(e)) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => {
            WireClusterReply::NotLeader(raft.metrics().borrow().current_leader)
        }
        Ok(Err(e)) => WireClusterReply::Error(e.to_string()),
        Err(_) => WireClusterReply::Error(format!(
            "not committed within {COMMIT_TIMEOUT:?}: the leader cannot reach a majority"
        )),
    }
}

/// A forwarded batch, if it decodes and every point is valid.
fn checked_batch(bytes: Vec<u8>, limits: &Limits) -> Result<WriteBatch, String> {
    let points = EncodedPoints::from_bytes(bytes).map_err(|e| e.to_string())?;
    let mut view = points.view().map_err(|e| e.to_string())?;
    view.sort_labels();
    view.validate(limits)
        .map_err(|(index, problem)| format!("point {index}: {problem}"))?;
    Ok(WriteBatch::new(points))
}

/// The reply to `request`, and the messages that follow it (the later parts
/// of a large answer).
async fn answer(
    node: u64,
    raft: &Raft<TypeConfig>,
    shard: &ShardCell,
    gate: &Arc<crate::handover::WriteGate>,
    request: WireClusterRequest,
) -> (WireClusterReply, Vec<Message>) {
    let not_leader = || WireClusterReply::NotLeader(raft.metrics().borrow().current_leader);
    match request {
        WireClusterRequest::Write(_) | WireClusterRequest::WriteKeyed(_) => {
            let (points, keyed) = match request {
                WireClusterRequest::WriteKeyed(k) => {
                    let k = *k;
                    const MAX_WINDOW: i64 = 30 * 86_400 * 1_000_000_000;
                    if !(1..=MAX_WINDOW).contains(&k.window) {
                        let reply = WireClusterReply::Error(format!(
                            "an idempotency window is 1 ns to 30 days, not {} ns",
                            k.window
                        ));
                        return (reply, Vec::new());
                    }
                    if k.key.is_empty() || k.key.len() > MAX_KEY_BYTES {
                        let reply = WireClusterReply::Error(format!(
                            "an idempotency key is 1 to {MAX_KEY_BYTES} bytes"
                        ));
                        return (reply, Vec::new());
                    }
                    let part = KeyedPart {
                        key: k.key,
                        part: k.part,
                        nonce: k.nonce,
                        window: k.window,
                    };
                    (k.points, Some(part))
                }
                WireClusterRequest::Write(points) => (points, None),
                _ => unreachable!("matched above"),
            };
            // From any bus client: checked as a local write is before it
            // reaches the log, since a committed entry must apply everywhere.
            let batch = match checked_batch(points, &shard.current().config().limits) {
                Ok(mut batch) => {
                    batch.keyed = keyed.map(|k| Box::new(k.stamped()));
                    batch
                }
                Err(why) => {
                    let reply = WireClusterReply::Error(format!("bad forwarded points: {why}"));
                    return (reply, Vec::new());
                }
            };
            gate.pass().await;
            let _traced = crate::trace::proposing(&batch.points);
            let started = std::time::Instant::now();
            let Ok(result) = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(batch)).await
            else {
                let reply = WireClusterReply::Error(format!(
                    "not committed within {COMMIT_TIMEOUT:?}: the leader cannot reach a majority"
                ));
                return (reply, Vec::new());
            };
            if started.elapsed() > Duration::from_secs(1) {
                debug!(
                    took = ?started.elapsed(),
                    ok = result.is_ok(),
                    "slow forwarded write"
                );
            }
            let reply = match result {
                Ok(r) => WireClusterReply::Written(r.data.written as u64),
                Err(e) if e.forward_to_leader::<openraft::EmptyNode>().is_some() => not_leader(),
                Err(e) => WireClusterReply::Error(e.to_string()),
            };
            (reply, Vec::new())
        }
        WireClusterRequest::Delete(d) => {
            let (matchers, start, end, id) = *d;
            let matchers = match crate::read::matchers_from(matchers) {
                Ok(m) if m.iter().any(|m| !m.matches("")) => m,
                Ok(_) => {
                    let why = "at least one matcher must not match the empty string";
                    return (WireClusterReply::Error(why.into()), Vec::new());
                }
                Err(why) => return (WireClusterReply::Error(why), Vec::new()),
            };
            let batch = WriteBatch::delete(crate::types::DeleteRange {
                matchers,
                start,
                end,
                id,
                at: now_ns(),
            });
            gate.pass().await;
            let reply = commit(raft, batch, |_| WireClusterReply::Written(0)).await;
            (reply, Vec::new())
        }
        WireClusterRequest::Leader(op) => (run_leader_op(raft, gate, op).await, Vec::new()),
        // Answered by the request server, which holds the log.
        WireClusterRequest::Batches { .. } => (
            WireClusterReply::Error("committed batches are not read here".into()),
            Vec::new(),
        ),
        WireClusterRequest::StateWrite(batch) => {
            let mut batch = chronicle_storage::state::StateBatch::from(*batch);
            if let Err(e) = batch.validate() {
                return (WireClusterReply::Error(e.to_string()), Vec::new());
            }
            let expected = batch.txns.len();
            gate.pass().await;
            batch.at = now_ns();
            let reply = commit(raft, WriteBatch::state(batch), |applied| {
                if applied.state.len() == expected {
                    WireClusterReply::StateWritten(applied.state.iter().map(Into::into).collect())
                } else {
                    WireClusterReply::Error("state entry applied without outcomes".into())
                }
            })
            .await;
            (reply, Vec::new())
        }
        WireClusterRequest::StateRead(read) => {
            match read_index(raft, None).await {
                Ok(ReadIndex::Ready) => {}
                Ok(ReadIndex::NotLeader) => return (not_leader(), Vec::new()),
                Err(e) => return (WireClusterReply::Error(e.to_string()), Vec::new()),
            }
            let reply = match crate::state::answer_read(raft, shard, *read).await {
                Ok(answer) => WireClusterReply::StateAnswer(Box::new(answer)),
                Err(e) => WireClusterReply::Error(e.to_string()),
            };
            (reply, Vec::new())
        }
        WireClusterRequest::Status => (
            WireClusterReply::Status(member_status(node, raft)),
            Vec::new(),
        ),
        WireClusterRequest::Read { read, inbox } => {
            match read_index(raft, None).await {
                Ok(ReadIndex::Ready) => {}
                Ok(ReadIndex::NotLeader) => return (not_leader(), Vec::new()),
                Err(e) => return (WireClusterReply::Error(e.to_string()), Vec::new()),
            }
            let read = match ShardRead::try_from(read) {
                Ok(read) => read,
                Err(e) => return (WireClusterReply::Error(e), Vec::new()),
            };
            let answer = match run_local(shard.current(), read).await {
                Ok(answer) => answer,
                Err(e) => return (WireClusterReply::Error(e.to_string()), Vec::new()),
            };
            let bytes = match chronicle_bus::envelope::encode(&WireAnswer::from(&answer)) {
                Ok(bytes) => bytes,
                Err(e) => return (WireClusterReply::Error(e.to_string()), Vec::new()),
            };
            let mut chunks = bytes.chunks(ANSWER_PART_BYTES);
            let first = chunks.next().unwrap_or_default().to_vec();
            let mut later = Vec::new();
            for (seq, chunk) in chunks.enumerate() {
                let part = WireAnswerPart {
                    seq: seq as u32 + 1,
                    bytes: chunk.to_vec(),
                };
                match chronicle_bus::envelope::encode(&part) {
                    Ok(payload) => later.push(Message::new(inbox.clone(), payload)),
                    Err(e) => return (WireClusterReply::Error(e.to_string()), Vec::new()),
                }
            }
            let reply = WireClusterReply::Answer {
                total: later.len() as u32 + 1,
                first,
            };
            (reply, later)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_batches_are_checked_before_they_reach_the_log() {
        let limits = Limits::default();
        let good = vec![Point::new(
            "cpu",
            vec![Label::new("mode", "idle"), Label::new("host", "a")],
            1.0,
            1,
        )];
        let batch = checked_batch(chronicle_storage::model::encode_points(&good), &limits);
        assert_eq!(batch.map(|b| b.points.len()), Ok(1));

        // A committed entry that fails to apply would stop every replica's
        // state machine: bad names and undecodable bytes are refused here.
        let bad = vec![
            good[0].clone(),
            Point::new("cpu", vec![Label::new("__name__", "x")], 1.0, 1),
        ];
        let err =
            checked_batch(chronicle_storage::model::encode_points(&bad), &limits).unwrap_err();
        assert!(err.starts_with("point 1:"), "{err}");
        let mut cut = chronicle_storage::model::encode_points(&good);
        cut.pop();
        assert!(checked_batch(cut, &limits).is_err());
    }
}

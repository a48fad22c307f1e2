//! rkyv encodings of Raft data, for the log on disk and RPCs on the bus.
//! openraft's own types are not rkyv types: these mirror them, and convert.

use std::collections::{BTreeMap, BTreeSet};

use chronicle_storage::EncodedPoints;
use openraft::{
    CommittedLeaderId, EmptyNode, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};
use rkyv::{Archive, Deserialize, Serialize};

use crate::types::{TypeConfig, WriteBatch};
use crate::ClusterError;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLogId {
    pub term: u64,
    pub node: u64,
    pub index: u64,
}

impl From<&LogId<u64>> for WireLogId {
    fn from(id: &LogId<u64>) -> Self {
        Self {
            term: id.leader_id.term,
            node: id.leader_id.node_id,
            index: id.index,
        }
    }
}

impl From<WireLogId> for LogId<u64> {
    fn from(w: WireLogId) -> Self {
        LogId::new(CommittedLeaderId::new(w.term, w.node), w.index)
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireVote {
    pub term: u64,
    pub node: u64,
    pub committed: bool,
}

impl From<&Vote<u64>> for WireVote {
    fn from(v: &Vote<u64>) -> Self {
        Self {
            term: v.leader_id.term,
            node: v.leader_id.node_id,
            committed: v.committed,
        }
    }
}

impl From<WireVote> for Vote<u64> {
    fn from(w: WireVote) -> Self {
        if w.committed {
            Vote::new_committed(w.term, w.node)
        } else {
            Vote::new(w.term, w.node)
        }
    }
}

/// Voter sets (one, or two during a joint change) and every member, learners included.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireMembership {
    pub configs: Vec<Vec<u64>>,
    pub nodes: Vec<u64>,
}

impl From<&Membership<u64, EmptyNode>> for WireMembership {
    fn from(m: &Membership<u64, EmptyNode>) -> Self {
        Self {
            configs: m
                .get_joint_config()
                .iter()
                .map(|c| c.iter().copied().collect())
                .collect(),
            nodes: m.nodes().map(|(id, _)| *id).collect(),
        }
    }
}

impl From<WireMembership> for Membership<u64, EmptyNode> {
    fn from(w: WireMembership) -> Self {
        let configs: Vec<BTreeSet<u64>> = w
            .configs
            .into_iter()
            .map(|c| c.into_iter().collect())
            .collect();
        let nodes: BTreeMap<u64, EmptyNode> =
            w.nodes.into_iter().map(|id| (id, EmptyNode {})).collect();
        Membership::new(configs, nodes)
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum WirePayload {
    Blank,
    /// A batch in storage's point encoding (`encode_points`): written as
    /// bytes, without a structure per point.
    Points(Vec<u8>),
    Membership(WireMembership),
    /// A retention entry: (tier, cutoff in nanoseconds) pairs.
    Retain(Vec<(u8, i64)>),
    /// Points of a write with an idempotency key (boxed: the enum's other
    /// variants keep their size).
    KeyedPoints(Box<WireKeyedPoints>),
    /// A delete: matchers, start, end (ns, inclusive), its id and stamp.
    Delete(Box<(Vec<crate::read::WireMatcher>, i64, i64, u64, i64)>),
    /// State transactions (feature key-value data).
    State(Box<crate::state::WireStateBatch>),
    /// One run of a downsampling rule.
    Downsample(Box<WireDownsample>),
}

/// A downsampling entry (`chronicle_storage::DownsampleStep`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireDownsample {
    pub window_ns: i64,
    /// The function's code, and the percentile for code 8.
    pub function: (u8, f64),
    pub matchers: Vec<crate::read::WireMatcher>,
    pub tier: u8,
    pub to: i64,
    pub max_windows: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireKeyedPoints {
    pub points: Vec<u8>,
    pub key: String,
    pub part: u32,
    pub nonce: u64,
    pub at: i64,
    pub window: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireEntry {
    pub log_id: WireLogId,
    pub payload: WirePayload,
}

impl WireEntry {
    /// Bytes its payload adds to a message (near enough to budget by).
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            WirePayload::Points(bytes) => bytes.len(),
            WirePayload::KeyedPoints(k) => k.points.len() + k.key.len() + 64,
            WirePayload::State(s) => {
                s.txns
                    .iter()
                    .flat_map(|t| &t.ops)
                    .map(|o| match o {
                        crate::state::WireStateOp::Put(k, v, _) => k.len() + v.len() + 24,
                        crate::state::WireStateOp::Delete(k) => k.len() + 16,
                    })
                    .sum::<usize>()
                    + 64
            }
            WirePayload::Blank
            | WirePayload::Membership(_)
            | WirePayload::Retain(_)
            | WirePayload::Delete(_)
            | WirePayload::Downsample(_) => 64,
        }
    }
}

impl From<&Entry<TypeConfig>> for WireEntry {
    fn from(e: &Entry<TypeConfig>) -> Self {
        let payload = match &e.payload {
            EntryPayload::Blank => WirePayload::Blank,
            EntryPayload::Normal(batch) if !batch.retain.is_empty() => {
                WirePayload::Retain(batch.retain.clone())
            }
            EntryPayload::Normal(batch) if batch.delete.is_some() => {
                let d = batch.delete.as_deref().expect("checked");
                WirePayload::Delete(Box::new((
                    crate::read::wire_matchers(&d.matchers),
                    d.start,
                    d.end,
                    d.id,
                    d.at,
                )))
            }
            EntryPayload::Normal(batch) if batch.state.is_some() => {
                let s = batch.state.as_deref().expect("checked");
                WirePayload::State(Box::new(s.into()))
            }
            EntryPayload::Normal(batch) if batch.downsample.is_some() => {
                let d = batch.downsample.as_deref().expect("checked");
                WirePayload::Downsample(Box::new(WireDownsample {
                    window_ns: i64::try_from(d.rule.window.as_nanos()).unwrap_or(i64::MAX),
                    function: crate::read::function_code(d.rule.function),
                    matchers: crate::read::wire_matchers(&d.rule.matchers),
                    tier: d.tier,
                    to: d.to,
                    max_windows: d.max_windows,
                }))
            }
            EntryPayload::Normal(batch) if batch.keyed.is_some() => {
                let k = batch.keyed.as_deref().expect("checked");
                WirePayload::KeyedPoints(Box::new(WireKeyedPoints {
                    points: batch.points.as_bytes().to_vec(),
                    key: k.key.clone(),
                    part: k.part,
                    nonce: k.nonce,
                    at: k.at,
                    window: k.window,
                }))
            }
            EntryPayload::Normal(batch) => WirePayload::Points(batch.points.as_bytes().to_vec()),
            EntryPayload::Membership(m) => WirePayload::Membership(m.into()),
        };
        Self {
            log_id: (&e.log_id).into(),
            payload,
        }
    }
}

impl TryFrom<WireEntry> for Entry<TypeConfig> {
    type Error = ClusterError;

    fn try_from(w: WireEntry) -> Result<Self, ClusterError> {
        let payload = match w.payload {
            WirePayload::Blank => EntryPayload::Blank,
            WirePayload::Points(bytes) => {
                let points =
                    EncodedPoints::from_bytes(bytes).map_err(|e| ClusterError::Corrupt {
                        what: "entry points",
                        why: e.to_string(),
                    })?;
                EntryPayload::Normal(WriteBatch::new(points))
            }
            WirePayload::Membership(m) => EntryPayload::Membership(m.into()),
            WirePayload::Retain(cutoffs) => EntryPayload::Normal(WriteBatch::retain(cutoffs)),
            WirePayload::Delete(d) => {
                let (matchers, start, end, id, at) = *d;
                let matchers =
                    crate::read::matchers_from(matchers).map_err(|why| ClusterError::Corrupt {
                        what: "delete entry",
                        why,
                    })?;
                EntryPayload::Normal(WriteBatch::delete(crate::types::DeleteRange {
                    matchers,
                    start,
                    end,
                    id,
                    at,
                }))
            }
            WirePayload::State(s) => EntryPayload::Normal(WriteBatch::state((*s).into())),
            WirePayload::Downsample(d) => {
                let corrupt = |why: String| ClusterError::Corrupt {
                    what: "downsampling entry",
                    why,
                };
                let function = crate::read::function_from(d.function).map_err(corrupt)?;
                let matchers = crate::read::matchers_from(d.matchers).map_err(corrupt)?;
                EntryPayload::Normal(WriteBatch::downsample(chronicle_storage::DownsampleStep {
                    rule: chronicle_storage::DownsampleRule {
                        window: std::time::Duration::from_nanos(d.window_ns.max(0) as u64),
                        function,
                        retention: None,
                        matchers,
                    },
                    tier: d.tier,
                    to: d.to,
                    max_windows: d.max_windows,
                }))
            }
            WirePayload::KeyedPoints(k) => {
                let k = *k;
                let points =
                    EncodedPoints::from_bytes(k.points).map_err(|e| ClusterError::Corrupt {
                        what: "entry points",
                        why: e.to_string(),
                    })?;
                let mut batch = WriteBatch::new(points);
                batch.keyed = Some(Box::new(crate::types::KeyedWrite {
                    key: k.key,
                    part: k.part,
                    nonce: k.nonce,
                    at: k.at,
                    window: k.window,
                }));
                EntryPayload::Normal(batch)
            }
        };
        Ok(Entry {
            log_id: w.log_id.into(),
            payload,
        })
    }
}

/// What a snapshot covers (beside the snapshot file, and in install RPCs).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WireSnapshotMeta {
    pub last_log_id: Option<WireLogId>,
    pub membership_log_id: Option<WireLogId>,
    pub membership: WireMembership,
    pub snapshot_id: String,
}

impl WireSnapshotMeta {
    pub fn from_meta(m: &SnapshotMeta<u64, EmptyNode>) -> Self {
        Self {
            last_log_id: m.last_log_id.as_ref().map(WireLogId::from),
            membership_log_id: m.last_membership.log_id().as_ref().map(WireLogId::from),
            membership: m.last_membership.membership().into(),
            snapshot_id: m.snapshot_id.clone(),
        }
    }

    pub fn to_meta(&self) -> SnapshotMeta<u64, EmptyNode> {
        SnapshotMeta {
            last_log_id: self.last_log_id.map(LogId::from),
            last_membership: StoredMembership::new(
                self.membership_log_id.map(LogId::from),
                self.membership.clone().into(),
            ),
            snapshot_id: self.snapshot_id.clone(),
        }
    }
}

/// Marks a log value compressed with zstd (an envelope starts with its
/// version byte, 1, so the two never meet).
const COMPRESSED: u8 = 0xFD;
/// Entries smaller than this are stored as they are.
const COMPRESS_FROM: usize = 512;
/// The largest entry a compressed value may expand to (an entry fits one bus
/// message; this leaves a wide margin and bounds what a corrupt header asks).
const MAX_ENTRY_BYTES: usize = 64 << 20;

/// An entry as stored in the log: a versioned, validated rkyv envelope,
/// compressed with zstd (level 1) when that makes it smaller. Points repeat
/// their label names and most of their values from one series to the next,
/// which is what zstd removes: the log shrinks about fivefold.
pub fn encode_entry(e: &Entry<TypeConfig>) -> Result<Vec<u8>, ClusterError> {
    let plain = chronicle_bus::envelope::encode(&WireEntry::from(e)).map_err(|e| {
        ClusterError::Corrupt {
            what: "entry",
            why: e.to_string(),
        }
    })?;
    if plain.len() >= COMPRESS_FROM {
        if let Ok(packed) = zstd::bulk::compress(&plain, 1) {
            if packed.len() + 5 < plain.len() {
                let mut out = Vec::with_capacity(packed.len() + 5);
                out.push(COMPRESSED);
                out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
                out.extend_from_slice(&packed);
                return Ok(out);
            }
        }
    }
    Ok(plain.to_vec())
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, ClusterError> {
    let corrupt = |why: String| ClusterError::Corrupt {
        what: "log entry",
        why,
    };
    let unpacked;
    let plain = match bytes.split_first() {
        Some((&COMPRESSED, rest)) => {
            let (len, body) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("compressed entry without its length".into()))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_ENTRY_BYTES {
                return Err(corrupt(format!("compressed entry claims {len} bytes")));
            }
            unpacked = zstd::bulk::decompress(body, len)
                .map_err(|e| corrupt(format!("decompress: {e}")))?;
            if unpacked.len() != len {
                return Err(corrupt(format!(
                    "decompressed {} bytes, the header says {len}",
                    unpacked.len()
                )));
            }
            &unpacked[..]
        }
        _ => bytes,
    };
    chronicle_bus::envelope::decode::<WireEntry>(plain)
        .map_err(|e| corrupt(e.to_string()))?
        .try_into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_storage::{Label, Point};
    use openraft::CommittedLeaderId;

    fn entry(points: usize) -> Entry<TypeConfig> {
        let points: Vec<Point> = (0..points)
            .map(|i| {
                Point::new(
                    "node_cpu_seconds_total",
                    vec![
                        Label::new("cpu", (i % 8).to_string()),
                        Label::new("instance", format!("host-{:03}:9100", i / 8)),
                        Label::new("job", "node"),
                        Label::new("mode", "user"),
                    ],
                    i as f64 * 0.25,
                    1_767_225_600_000_000_000 + i as i64,
                )
            })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(WriteBatch::encode(&points)),
        }
    }

    #[test]
    fn log_entries_are_compressed_and_read_back_exactly() {
        let e = entry(2_000);
        let stored = encode_entry(&e).unwrap();
        let plain = chronicle_bus::envelope::encode(&WireEntry::from(&e)).unwrap();
        assert_eq!(stored[0], COMPRESSED);
        assert!(
            stored.len() * 4 < plain.len(),
            "{} bytes stored for {} plain",
            stored.len(),
            plain.len()
        );
        assert_eq!(decode_entry(&stored).unwrap(), e);
        // Entries written before compression (plain envelopes) still read.
        assert_eq!(decode_entry(&plain).unwrap(), e);
        // A small entry is stored as it is.
        let small = entry(1);
        assert_eq!(
            encode_entry(&small).unwrap()[0],
            chronicle_bus::envelope::ENVELOPE_VERSION
        );
    }

    #[test]
    fn a_corrupt_compressed_entry_is_an_error_not_a_panic() {
        let stored = encode_entry(&entry(500)).unwrap();
        let mut huge = stored.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(&huge).is_err());
        assert!(decode_entry(&stored[..stored.len() / 2]).is_err());
        assert!(decode_entry(&[COMPRESSED, 1, 0]).is_err());
        let mut wrong_len = stored.clone();
        wrong_len[1] ^= 1;
        assert!(decode_entry(&wrong_len).is_err());
        // Random damage anywhere: an error or an entry, never a panic.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20_000 {
            let mut damaged = stored.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % damaged.len();
                damaged[at] = (state >> 32) as u8;
            }
            let cut = (state >> 40) as usize % (damaged.len() + 1);
            let _ = decode_entry(&damaged[..cut.max(1)]);
        }
    }
}

//! The y-protocols wire format (what y-websocket clients send), decoded with
//! bounds before yrs sees a byte.
//!
//! yrs's decoders size some allocations by counts read from the input (a
//! state vector's length, a delete set's ranges, an `Any` array or map) and
//! recurse into nested `Any` values: a 20-byte hostile frame could ask for
//! tens of gigabytes, which aborts the process. So every frame is first
//! walked here, without allocating by any count: each count must fit in the
//! bytes that follow (every element takes at least one byte), nesting is
//! limited, and content Chronicle's documents never hold (sub-documents,
//! weak links) is refused. Only a frame that passes is handed to yrs, whose
//! allocations are then bounded by the frame's size.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::block::ClientID;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::StateVector;

/// y-protocols message types.
pub const MSG_SYNC: u64 = 0;
pub const MSG_AWARENESS: u64 = 1;
pub const MSG_AUTH: u64 = 2;
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync message types.
pub const SYNC_STEP_1: u64 = 0;
pub const SYNC_STEP_2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// Deepest nesting of `Any` values (arrays and maps) an update may carry.
pub const MAX_ANY_DEPTH: usize = 32;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame ends inside {0}")]
    Truncated(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("message type {0} is not part of the protocol")]
    Unsupported(u64),
}

fn invalid(why: impl Into<String>) -> WireError {
    WireError::Invalid(why.into())
}

/// Bounds on what one frame may carry.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Awareness states one message may carry (a client announces itself; a
    /// reconnecting one may relay a few others).
    pub max_awareness_states: usize,
    /// Longest awareness state (JSON), bytes.
    pub max_awareness_json: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_awareness_states: 64,
            max_awareness_json: 4096,
        }
    }
}

/// One message of a client frame, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// The client's state vector: answer with what it lacks.
    SyncStep1(StateVector),
    /// What the client has that the server lacked (a v1 update, checked).
    SyncStep2(Vec<u8>),
    /// A change (a v1 update, checked).
    Update(Vec<u8>),
    Awareness(AwarenessUpdate),
    QueryAwareness,
    /// Clients have nothing to say about permissions: ignored.
    Auth,
}

/// A read position in a frame.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::Truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated(what));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// An unsigned lib0 varint (7 bits a byte, at most 64 bits).
    pub fn var(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(invalid(format!("{what}: a varint over 64 bits")));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid(format!("{what}: a varint over 10 bytes")))
    }

    fn var_u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        u32::try_from(self.var(what)?).map_err(|_| invalid(format!("{what}: over 32 bits")))
    }

    /// A lib0 signed varint: skipped, only its length matters here.
    fn signed_var(&mut self, what: &'static str) -> Result<(), WireError> {
        for _ in 0..10 {
            if self.u8(what)? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(invalid(format!("{what}: a varint over 10 bytes")))
    }

    /// A count of elements that follow, each at least `min_bytes` long: one
    /// that cannot fit in what is left is refused before anything is sized by it.
    fn count(&mut self, min_bytes: usize, what: &'static str) -> Result<usize, WireError> {
        let n = self.var(what)?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes) <= self.remaining() => Ok(n),
            _ => Err(invalid(format!(
                "{what}: {n} elements cannot fit in the {} bytes left",
                self.remaining()
            ))),
        }
    }

    /// A length-prefixed byte string.
    pub fn buf(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.var_u32(what)? as usize;
        self.skip(n, what)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.buf(what)?).map_err(|_| invalid(format!("{what}: not UTF-8")))
    }

    /// A client id: Yjs's are 53 bits (JavaScript's safe integers); yrs
    /// folds larger ones onto others.
    fn client(&mut self, what: &'static str) -> Result<u64, WireError> {
        let id = self.var(what)?;
        if id >> 53 != 0 {
            return Err(invalid(format!("{what}: a client id over 53 bits")));
        }
        Ok(id)
    }

    fn id(&mut self) -> Result<(u64, u32), WireError> {
        let client = self.client("client id")?;
        let clock = self.var_u32("clock")?;
        Ok((client, clock))
    }
}

/// Checks that `bytes` is a well-formed v1 update from a participant,
/// within the bounds above; nothing is allocated by a count read from it.
pub fn check_update(bytes: &[u8]) -> Result<(), WireError> {
    check_update_with(bytes, true).map(|_| ())
}

/// What a participant's update builds on, to check against the document
/// before it is applied ([`Dependencies::missing`]).
#[derive(Debug, Default)]
pub struct Dependencies {
    /// Blocks it carries: (client, first clock, end).
    provided: Vec<(u64, u64, u64)>,
    /// Characters it names as neighbours or parents: (client, clock).
    named: Vec<(u64, u64)>,
    /// Ranges it deletes: (client, first clock, end).
    deleted: Vec<(u64, u64, u64)>,
}

/// Checks a participant's update as [`check_update`] does, and tells what
/// it builds on.
pub fn dependencies(bytes: &[u8]) -> Result<Dependencies, WireError> {
    check_update_with(bytes, true)
}

/// [`dependencies`] of an update the node made from a participant's (its
/// part that is new here): the bounds, without the rule on neighbours
/// inside one block (yrs's encoding of a split block may name one).
pub fn own_dependencies(bytes: &[u8]) -> Result<Dependencies, WireError> {
    check_update_with(bytes, false)
}

impl Dependencies {
    /// The Yjs client ids whose blocks the update carries.
    pub fn clients(&self) -> std::collections::BTreeSet<u64> {
        self.provided.iter().map(|&(client, _, _)| client).collect()
    }

    /// Whether it carries nothing: no block, no deletion.
    pub fn is_empty(&self) -> bool {
        self.provided.is_empty() && self.deleted.iter().all(|&(_, start, end)| end <= start)
    }

    /// Why the update cannot apply fully to a document at `sv`, if it
    /// cannot: a block starting past what the document has of its client,
    /// or a neighbour, parent or deleted character neither has. yrs would
    /// keep such an update pending until the rest comes, and a participant
    /// could send the rest in another form than the one it announced
    /// (equivocating): replicas that saw the two in another order would
    /// disagree, and the node's own copy would not reload to what it shows.
    /// A y-websocket client never sends one: it syncs first, and builds
    /// only on what the node sent it.
    pub fn missing(&self, sv: &StateVector) -> Option<String> {
        let have = |client: u64| u64::from(sv.get(&ClientID::new(client)));
        // Per client, where the document plus this update's blocks reach.
        let mut reach: HashMap<u64, u64> = HashMap::new();
        let mut provided = self.provided.clone();
        provided.sort_unstable();
        for &(client, start, end) in &provided {
            let at = *reach.entry(client).or_insert_with(|| have(client));
            if start > at {
                return Some(format!(
                    "it starts client {client} at clock {start}, and only {at} came before"
                ));
            }
            reach.insert(client, at.max(end));
        }
        let known = |client: u64, clock: u64| {
            clock < reach.get(&client).copied().unwrap_or_else(|| have(client))
        };
        if let Some((c, k)) = self.named.iter().find(|(c, k)| !known(*c, *k)) {
            return Some(format!("it builds on ({c}, {k}), which never came"));
        }
        if let Some((c, start, _)) = self
            .deleted
            .iter()
            .find(|(c, _, end)| *end > 0 && !known(*c, end - 1))
        {
            return Some(format!("it deletes from ({c}, {start}), which never came"));
        }
        None
    }
}

/// As [`check_update`], for updates a node made itself (its document's
/// state, a merged batch, a diff for another node): the bounds, without the
/// rule on neighbours inside one block, which yrs's own encoding of a
/// document that once took a crafted item can break (refusing it would
/// make the session impossible to open).
pub fn check_stored_update(bytes: &[u8]) -> Result<(), WireError> {
    check_update_with(bytes, false).map(|_| ())
}

fn check_update_with(bytes: &[u8], from_participant: bool) -> Result<Dependencies, WireError> {
    let mut deps = Dependencies::default();
    let mut r = Reader::new(bytes);
    // Item blocks as (client, first clock, end), and items' neighbours:
    // at most one each per byte of the update.
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    type Id = (u64, u32);
    let mut pairs: Vec<(Id, Id)> = Vec::new();
    let mut seen_clients: Vec<u64> = Vec::new();
    // Structs: per client, its blocks.
    let clients = r.count(3, "clients")?;
    for _ in 0..clients {
        let blocks = r.var_u32("blocks")? as usize;
        let client = r.client("client")?;
        if from_participant {
            // Yjs writes each client once, with its blocks: yrs panics
            // (a subtraction overflow) on a client listed twice whose
            // ranges meet (the collab_frame fuzz target's sixth find).
            if blocks == 0 || seen_clients.contains(&client) {
                return Err(invalid(format!(
                    "client {client} is listed twice or without blocks"
                )));
            }
            seen_clients.push(client);
        }
        // Each block takes its length in clock ticks: the client's clock
        // must not pass 2^32 (yrs computes ranges in u32).
        let mut clock = u64::from(r.var_u32("clock")?);
        if blocks > r.remaining() {
            return Err(invalid(format!(
                "{blocks} blocks cannot fit in the {} bytes left",
                r.remaining()
            )));
        }
        for _ in 0..blocks {
            let block = check_block(&mut r, (client, clock))?;
            if block.skip && from_participant {
                // Yjs makes skips only when merging updates: a client's own
                // update has none, and a gap is not something to build on.
                return Err(invalid("a skipped range in a participant's update"));
            }
            if block.item {
                runs.push((client, clock, clock + block.len));
            }
            if !block.skip {
                deps.provided.push((client, clock, clock + block.len));
            }
            deps.named
                .extend(block.named.iter().map(|&(c, k)| (c, u64::from(k))));
            if let Some(pair) = block.origins {
                pairs.push(pair);
            }
            clock += block.len;
            if clock > u64::from(u32::MAX) {
                return Err(invalid("a client's clock passes 2^32"));
            }
        }
    }
    // An item sits between its neighbours; a run of characters that is one
    // block here had nothing between its characters when it was encoded.
    // So an item of the same update whose two neighbours fall inside one
    // block was not made by Yjs: yrs integrates such an item (crossed
    // neighbours, the right one left of the left one) differently live and
    // when the document is reloaded (the collab_frame fuzz target's fifth
    // find).
    runs.sort_unstable();
    if !from_participant {
        pairs.clear();
    }
    for ((lc, lk), (rc, rk)) in pairs {
        if lc != rc {
            continue;
        }
        let (lk, rk) = (u64::from(lk), u64::from(rk));
        let at = runs.partition_point(|&(c, start, _)| (c, start) <= (lc, lk));
        if let Some(&(c, start, end)) = at.checked_sub(1).map(|i| &runs[i]) {
            if c == lc && (start..end).contains(&lk) && (start..end).contains(&rk) {
                return Err(invalid(
                    "an item's neighbours are inside one block of the same update",
                ));
            }
        }
    }
    // The delete set: per client, ranges of (clock, length).
    let clients = r.count(2, "delete set clients")?;
    for _ in 0..clients {
        let client = r.client("client")?;
        let ranges = r.count(2, "delete ranges")?;
        for _ in 0..ranges {
            let clock = r.var_u32("deleted clock")?;
            let len = r.var_u32("deleted length")?;
            if len == 0 || clock.checked_add(len).is_none() {
                return Err(invalid("a deleted range is empty or passes 2^32"));
            }
            deps.deleted
                .push((client, u64::from(clock), u64::from(clock) + u64::from(len)));
        }
    }
    Ok(deps)
}

const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;

/// What [`check_block`] learnt of a block.
struct Block {
    /// Its length in clock ticks (never 0: Yjs makes no empty block, and
    /// yrs's range arithmetic underflows on one).
    len: u64,
    /// An item (not GC or skip).
    item: bool,
    /// Its left and right neighbours, when it names both.
    origins: Option<((u64, u32), (u64, u32))>,
    /// A skip (a range the update does not carry).
    skip: bool,
    /// The characters it names: neighbours and parent item.
    named: Vec<(u64, u32)>,
}

/// Checks one block, which starts at `at` (client, clock).
fn check_block(r: &mut Reader, at: (u64, u64)) -> Result<Block, WireError> {
    let info = r.u8("block")?;
    if let 0 | 10 = info {
        // GC and skip: a length.
        return Ok(Block {
            len: positive(r.var_u32("block length")?)?,
            item: false,
            origins: None,
            skip: info == 10,
            named: Vec::new(),
        });
    }
    // An item's neighbours existed when it was made: two different
    // characters, both older than the item when they are its author's.
    // yrs integrates an item that breaks this differently live and when the
    // document is reloaded (the collab_frame fuzz target's fourth find), so
    // replicas would disagree.
    let mut origins = [None, None];
    if info & HAS_ORIGIN != 0 {
        origins[0] = Some(r.id()?);
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        origins[1] = Some(r.id()?);
    }
    for (client, clock) in origins.iter().flatten() {
        if *client == at.0 && u64::from(*clock) >= at.1 {
            return Err(invalid("an item's neighbour is not older than the item"));
        }
    }
    if let [Some(left), Some(right)] = origins {
        if left == right {
            return Err(invalid("an item's left and right neighbours are the same"));
        }
    }
    let mut named: Vec<(u64, u32)> = origins.iter().flatten().copied().collect();
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if r.var_u32("parent info")? == 1 {
            r.string("root name")?;
        } else {
            named.push(r.id()?);
        }
        if info & HAS_PARENT_SUB != 0 {
            r.string("map key")?;
        }
    }
    let len = match info & 0b1111 {
        // Deleted: a length.
        1 => u64::from(r.var_u32("deleted length")?),
        // Legacy JSON content (Yjs writes `Any` content instead): yrs's
        // decoder reads one string more than the count it reads, so what it
        // re-encodes does not decode to the same thing (the collab_frame
        // fuzz target's third find). Nothing of ours makes it.
        2 => return Err(invalid("legacy JSON content is not supported")),
        3 => {
            r.buf("binary")?;
            1
        }
        // Text counts in UTF-16 code units, as Yjs does.
        4 => r.string("text")?.encode_utf16().count() as u64,
        5 => {
            check_json(r.string("embed")?)?;
            1
        }
        6 => {
            r.string("format key")?;
            check_json(r.string("format value")?)?;
            1
        }
        7 => {
            match r.u8("type")? {
                0 | 1 | 2 | 4 | 5 | 6 | 15 => {}
                3 => {
                    r.string("element name")?;
                }
                other => return Err(invalid(format!("shared type {other} is not supported"))),
            }
            1
        }
        8 => {
            let n = r.count(1, "values")?;
            for _ in 0..n {
                check_any(r, 0)?;
            }
            n as u64
        }
        other => return Err(invalid(format!("content type {other} is not supported"))),
    };
    if len == 0 || len > u64::from(u32::MAX) {
        return Err(invalid("an empty block"));
    }
    Ok(Block {
        len,
        item: true,
        origins: match origins {
            [Some(left), Some(right)] => Some((left, right)),
            _ => None,
        },
        skip: false,
        named,
    })
}

fn positive(len: u32) -> Result<u64, WireError> {
    if len == 0 {
        Err(invalid("an empty block"))
    } else {
        Ok(u64::from(len))
    }
}

fn check_any(r: &mut Reader, depth: usize) -> Result<(), WireError> {
    if depth > MAX_ANY_DEPTH {
        return Err(invalid(format!(
            "values nested deeper than {MAX_ANY_DEPTH}"
        )));
    }
    match r.u8("value")? {
        127 | 126 | 121 | 120 => {}
        125 => r.signed_var("integer")?,
        124 => {
            r.skip(4, "float32")?;
        }
        123 | 122 => {
            r.skip(8, "float64")?;
        }
        119 => {
            r.string("string")?;
        }
        118 => {
            let n = r.count(2, "map entries")?;
            for _ in 0..n {
                r.string("map key")?;
                check_any(r, depth + 1)?;
            }
        }
        117 => {
            let n = r.count(1, "array values")?;
            for _ in 0..n {
                check_any(r, depth + 1)?;
            }
        }
        116 => {
            r.buf("buffer")?;
        }
        other => return Err(invalid(format!("value type {other} is unknown"))),
    }
    Ok(())
}

/// JSON content is parsed by yrs; serde_json limits its nesting to 128.
fn check_json(text: &str) -> Result<(), WireError> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| invalid(format!("JSON content: {e}")))
}

/// Decodes a v1 state vector, checked as frames are.
pub fn check_state_vector(bytes: &[u8]) -> Result<StateVector, WireError> {
    let mut r = Reader::new(bytes);
    let n = r.count(2, "state vector")?;
    for _ in 0..n {
        r.client("client")?;
        r.var_u32("clock")?;
    }
    StateVector::decode_v1(bytes).map_err(|e| invalid(format!("state vector: {e}")))
}

/// Decodes an awareness update without yrs (whose decoder sizes a map by
/// the count it reads), keeping each state's JSON as text.
fn awareness(bytes: &[u8], limits: &FrameLimits) -> Result<AwarenessUpdate, WireError> {
    let mut r = Reader::new(bytes);
    let n = r.count(3, "awareness states")?;
    if n > limits.max_awareness_states {
        return Err(invalid(format!(
            "{n} awareness states in one message; at most {}",
            limits.max_awareness_states
        )));
    }
    let mut clients = HashMap::with_capacity(n);
    for _ in 0..n {
        let client = r.client("awareness client")?;
        let clock = r.var_u32("awareness clock")?;
        let json = r.string("awareness state")?;
        if json.len() > limits.max_awareness_json {
            return Err(invalid(format!(
                "an awareness state of {} bytes; at most {}",
                json.len(),
                limits.max_awareness_json
            )));
        }
        check_json(json)?;
        clients.insert(
            ClientID::new(client),
            AwarenessUpdateEntry {
                clock,
                json: Arc::from(json),
            },
        );
    }
    Ok(AwarenessUpdate { clients })
}

/// Decodes every message of a client frame (y-protocols allows several
/// back to back), each checked.
pub fn decode_frame(frame: &[u8], limits: &FrameLimits) -> Result<Vec<ClientMessage>, WireError> {
    let mut r = Reader::new(frame);
    let mut out = Vec::new();
    while !r.is_empty() {
        let message = match r.var("message type")? {
            MSG_SYNC => match r.var("sync message type")? {
                SYNC_STEP_1 => {
                    ClientMessage::SyncStep1(check_state_vector(r.buf("state vector")?)?)
                }
                kind @ (SYNC_STEP_2 | SYNC_UPDATE) => {
                    let update = r.buf("update")?;
                    check_update(update)?;
                    if kind == SYNC_STEP_2 {
                        ClientMessage::SyncStep2(update.to_vec())
                    } else {
                        ClientMessage::Update(update.to_vec())
                    }
                }
                other => return Err(invalid(format!("sync message type {other} is unknown"))),
            },
            MSG_AWARENESS => ClientMessage::Awareness(awareness(r.buf("awareness")?, limits)?),
            MSG_AUTH => {
                if r.var("permission")? == 0 {
                    r.string("reason")?;
                }
                ClientMessage::Auth
            }
            MSG_QUERY_AWARENESS => ClientMessage::QueryAwareness,
            other => return Err(WireError::Unsupported(other)),
        };
        out.push(message);
    }
    Ok(out)
}

/// Writers for the server's messages.
pub mod encode {
    use yrs::sync::awareness::AwarenessUpdate;
    use yrs::updates::encoder::Encode;
    use yrs::StateVector;

    fn var(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn buf(out: &mut Vec<u8>, bytes: &[u8]) {
        var(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    pub fn sync_step1(sv: &StateVector) -> Vec<u8> {
        let mut out = vec![0, 0];
        buf(&mut out, &sv.encode_v1());
        out
    }

    pub fn sync_step2(update: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 1];
        buf(&mut out, update);
        out
    }

    pub fn update(update: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 2];
        buf(&mut out, update);
        out
    }

    pub fn awareness(update: &AwarenessUpdate) -> Vec<u8> {
        let mut out = vec![1];
        buf(&mut out, &update.encode_v1());
        out
    }

    /// A message of an application-defined type (y-protocols' custom
    /// messages: the type, then a length-prefixed buffer).
    pub fn custom(kind: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 8);
        var(&mut out, kind);
        buf(&mut out, bytes);
        out
    }

    /// y-websocket shows the reason through its `permissionDeniedHandler`.
    pub fn permission_denied(reason: &str) -> Vec<u8> {
        let mut out = vec![2, 0];
        buf(&mut out, reason.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text, Transact};

    fn an_update() -> Vec<u8> {
        let doc = yrs::Doc::with_client_id(7);
        let text = doc.get_or_insert_text("query");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "rate(http_requests_total[5m])");
        txn.encode_update_v1()
    }

    #[test]
    fn frames_from_yrs_decode_and_apply() {
        let u = an_update();
        check_update(&u).unwrap();
        let frame = [
            encode::update(&u),
            encode::sync_step1(&StateVector::default()),
        ]
        .concat();
        let messages = decode_frame(&frame, &FrameLimits::default()).unwrap();
        assert_eq!(messages.len(), 2);
        let ClientMessage::Update(bytes) = &messages[0] else {
            panic!("{messages:?}")
        };
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("query");
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(bytes).unwrap())
            .unwrap();
        assert_eq!(
            text.get_string(&doc.transact()),
            "rate(http_requests_total[5m])"
        );
    }

    #[test]
    fn counts_that_cannot_fit_are_refused_before_anything_is_sized_by_them() {
        // A state vector claiming 2^32 - 1 clients in 7 bytes.
        let frame = [0u8, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_frame(&frame, &FrameLimits::default()).is_err());
        // An update with no structs whose delete set claims 2^32 - 1
        // ranges for one client.
        let u = [0u8, 1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(check_update(&u)
            .unwrap_err()
            .to_string()
            .contains("cannot fit"));
        // One client claiming 2^32 - 1 blocks.
        let u = [1u8, 0xff, 0xff, 0xff, 0xff, 0x0f, 5, 0];
        assert!(check_update(&u)
            .unwrap_err()
            .to_string()
            .contains("cannot fit"));
        // A map of 2^60 entries.
        let any = [118u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(check_any(&mut Reader::new(&any), 0).is_err());
        // Arrays nested 40 deep.
        let mut nested = [117u8, 1].repeat(40);
        nested.push(126);
        assert!(check_any(&mut Reader::new(&nested), 0).is_err());
        let mut shallow = [117u8, 1].repeat(10);
        shallow.push(126);
        assert!(check_any(&mut Reader::new(&shallow), 0).is_ok());
    }

    #[test]
    fn awareness_is_bounded_and_must_be_json() {
        let limits = FrameLimits::default();
        let one = |json: &str| {
            let mut body = vec![1u8, 9, 1];
            encode_string(&mut body, json);
            let mut frame = vec![1u8];
            frame.push(body.len() as u8);
            frame.extend_from_slice(&body);
            frame
        };
        assert!(decode_frame(&one(r#"{"user":{"name":"ada"}}"#), &limits).is_ok());
        assert!(decode_frame(&one("null"), &limits).is_ok());
        assert!(decode_frame(&one("{not json"), &limits).is_err());
        // 65 states where 64 are allowed.
        let mut body = vec![65u8];
        for i in 0..65u8 {
            body.extend_from_slice(&[i, 1]);
            encode_string(&mut body, "{}");
        }
        let mut frame = vec![1u8];
        frame.extend_from_slice(&[(body.len() as u8) | 0x80, (body.len() >> 7) as u8]);
        frame.extend_from_slice(&body);
        assert!(decode_frame(&frame, &limits).is_err());
    }

    fn encode_string(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn empty_blocks_and_clocks_past_2_32_are_refused() {
        // The fuzzer's first find: a GC block of length 0 (yrs's range
        // arithmetic underflows on it when the state is encoded).
        let frame = [
            0u8, 2, 20, 1, 1, 0xeb, 0x99, 0x17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x9f, 0xc6, 4, 0x30, 1,
            0x6b, 0, 0,
        ];
        assert!(decode_frame(&frame, &FrameLimits::default()).is_err());
        // A skip block starting at 2^32 - 2, 5 long.
        let u = [1u8, 1, 5, 0xfe, 0xff, 0xff, 0xff, 0x0f, 10, 5, 0];
        assert!(check_stored_update(&u)
            .unwrap_err()
            .to_string()
            .contains("2^32"));
        // From a participant a skip is refused at all.
        assert!(check_update(&u)
            .unwrap_err()
            .to_string()
            .contains("skipped"));
        // An empty delete range.
        let u = [0u8, 1, 5, 1, 3, 0];
        assert!(check_update(&u).is_err());
    }

    #[test]
    fn legacy_json_content_is_refused() {
        // The fuzzer's third find: JSON content, which yrs decodes with one
        // string more than it encodes.
        let u = [
            1u8, 1, 0xeb, 0x99, 0x9f, 0xc6, 4, 0x2f, 0x22, 1, 4, b'm', b'e', b'T', b'a', 4, b'b',
            b'l', b'o', b'k', 0, 0, 0,
        ];
        assert!(check_update(&u)
            .unwrap_err()
            .to_string()
            .contains("legacy JSON"));
    }

    #[test]
    fn client_ids_over_53_bits_are_refused() {
        // The fuzzer's second find: a state vector with a client id of 2^60
        // (yrs asserts 53 bits in debug builds and folds ids in release).
        let mut sv = vec![1u8];
        sv.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 1]);
        let mut frame = vec![0u8, 0, sv.len() as u8];
        frame.extend_from_slice(&sv);
        assert!(decode_frame(&frame, &FrameLimits::default())
            .unwrap_err()
            .to_string()
            .contains("53 bits"));
    }

    #[test]
    fn items_whose_neighbours_are_one_character_or_not_older_are_refused() {
        // Client 5 types "a" at the root "q", then an item after it.
        let update = |second: &[u8]| {
            let mut u = vec![1u8, 2, 5, 0, 4, 1, 1, b'q', 1, b'a'];
            u.extend_from_slice(second);
            u.push(0);
            u
        };
        // "b" after "a": fine.
        assert_eq!(check_update(&update(&[0x84, 5, 0, 1, b'b'])), Ok(()));
        // The fuzzer's fourth find: left and right neighbour both (5, 0).
        let same = update(&[0xc4, 5, 0, 5, 0, 1, b'b']);
        assert!(check_update(&same)
            .unwrap_err()
            .to_string()
            .contains("the same"));
        // "b" (clock 1) placed after itself.
        let own = update(&[0x84, 5, 1, 1, b'b']);
        assert!(check_update(&own)
            .unwrap_err()
            .to_string()
            .contains("not older"));
        // The reproducer the fuzzer kept.
        let frame = include_bytes!("../../../fuzz/regressions/collab_frame/divergent-reload.bin");
        assert!(decode_frame(frame, &FrameLimits::default()).is_err());
    }

    #[test]
    fn an_update_that_builds_on_what_never_came_is_found_before_it_applies() {
        let empty = StateVector::default();
        // Client 5 types "abc" at the root: complete on an empty document.
        let abc = [1u8, 1, 5, 0, 4, 1, 1, b'q', 3, b'a', b'b', b'c', 0];
        assert_eq!(dependencies(&abc).unwrap().missing(&empty), None);
        // "x" after (7, 3), which the document never had.
        let after_unknown = [1u8, 1, 5, 0, 0x84, 7, 3, 1, b'x', 0];
        assert!(dependencies(&after_unknown)
            .unwrap()
            .missing(&empty)
            .unwrap()
            .contains("never came"));
        // Client 5's clock 3 before its 0..3 came.
        let gap = [1u8, 1, 5, 3, 0x84, 5, 2, 1, b'x', 0];
        assert!(dependencies(&gap).unwrap().missing(&empty).is_some());
        let mut sv = StateVector::default();
        sv.set_max(ClientID::new(5), 3);
        assert_eq!(dependencies(&gap).unwrap().missing(&sv), None);
        // Deleting (9, 0..2), unknown.
        let delete = [0u8, 1, 9, 1, 0, 2];
        assert!(dependencies(&delete).unwrap().missing(&sv).is_some());
    }

    #[test]
    fn items_whose_neighbours_lie_inside_one_block_of_the_update_are_refused() {
        // Client 5 types "abc" as one block; then an item between (5, 2)
        // and (5, 0): the right neighbour left of the left one.
        let update = |second: &[u8]| {
            let mut u = vec![1u8, 2, 5, 0, 4, 1, 1, b'q', 3, b'a', b'b', b'c'];
            u.extend_from_slice(second);
            u.push(0);
            u
        };
        let crossed = update(&[0xc4, 5, 2, 5, 0, 1, b'x']);
        assert!(check_update(&crossed)
            .unwrap_err()
            .to_string()
            .contains("inside one block"));
        // After "c" with no right neighbour: fine.
        assert_eq!(check_update(&update(&[0x84, 5, 2, 1, b'x'])), Ok(()));
        // The fuzzer's sixth find: client 0 listed several times.
        let frame = include_bytes!("../../../fuzz/regressions/collab_frame/yrs-gc-overflow.bin");
        assert!(decode_frame(frame, &FrameLimits::default())
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        // The fuzzer's fifth find.
        let frame = include_bytes!("../../../fuzz/regressions/collab_frame/crossed-neighbours.bin");
        assert!(decode_frame(frame, &FrameLimits::default()).is_err());
    }

    #[test]
    fn unknown_types_and_sub_documents_are_refused() {
        assert_eq!(
            decode_frame(&[9], &FrameLimits::default()),
            Err(WireError::Unsupported(9))
        );
        // One client, one block of content type 9 (a sub-document).
        let u = [1u8, 1, 5, 0, 9, 1, 1, b'q', 0, 0];
        assert!(check_update(&u)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}

//! One collaborative session: a supervised actix actor holding the shared
//! document, the participants connected to this node and their awareness
//! (cursors, presence).
//!
//! A change from a participant is checked, applied to the document, then
//! written to the replicated state; only once it is durable does it go to
//! the other participants (here, and on other nodes over the bus). So an
//! edit anyone else has seen survives the loss of this node. Changes that
//! arrive while a write is in flight are written together with the next
//! one (one commit per batch, not per keystroke).
//!
//! Relays between nodes are best effort (NATS core: a message published
//! while a node reconnects is gone). So a session that opens, and every
//! few seconds one with participants, or one that received an update whose
//! predecessors it lacks, asks the other nodes hosting it for what it
//! misses: it sends its state vector on `<prefix>.collab.<id>.sync` and the
//! first node to answer sends back only the missing updates. A node answers
//! only when everything its document holds is durable, so catching up never
//! hands out an edit that could still be lost.
//!
//! A Yjs client id belongs to one principal and is written through one node
//! at a time (a claim in the replicated state, see [`crate::store`]). A
//! participant's update is cut to what is new here before it is applied and
//! stored, and blocks of client ids it does not own are dropped: so a
//! participant that sends two nodes different content under the same ids
//! cannot make their copies differ.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use chronicle_actor_runtime::{guarded, Restarts};
use chronicle_bus::{Bus, Message as BusMessage};
use chronicle_query::{QueryActor, QueryRequest, RunQuery};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, warn};
use yrs::block::ClientID;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};

use crate::doc::{Annotation, SessionDoc};
use crate::metrics;
use crate::store::{merge, Claimed, Role, SessionInfo, Store, StoreError};
use crate::wire::{
    check_state_vector, decode_frame, dependencies, encode, own_dependencies, ClientMessage,
    FrameLimits,
};

const ACTOR: &str = "collab_session";

pub type ConnId = u64;

/// Which protocol a participant speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// y-protocols (binary), as y-websocket clients speak it.
    Yjs,
    /// The spec's JSON messages.
    Json,
}

/// What a participant's connection task sends on.
#[derive(Debug)]
pub enum Outbound {
    Binary(Bytes),
    Text(String),
    /// Close with this reason.
    Close(String),
}

/// Bounds on one session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Participants on this node.
    pub max_participants: usize,
    /// The document's size (snapshot and log), bytes: edits beyond it are refused.
    pub max_document_bytes: usize,
    /// Frames queued for one participant; one that falls further behind is
    /// disconnected.
    pub outbound_queue: usize,
    /// A session with no participant stops after this long.
    pub idle_stop: Duration,
    /// Wait after the text changes or a watched metric is written before the
    /// query runs (coalescing what follows).
    pub debounce: Duration,
    /// Largest result message sent to participants, bytes.
    pub max_result_bytes: usize,
    /// The log is folded into a snapshot past this many bytes.
    pub compact_log_bytes: usize,
    /// How often a session with participants asks the other nodes for
    /// updates it missed.
    pub sync_interval: Duration,
    /// How long it waits for an answer.
    pub sync_timeout: Duration,
    pub frame: FrameLimits,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_participants: 256,
            max_document_bytes: 8 << 20,
            outbound_queue: 256,
            idle_stop: Duration::from_secs(30),
            debounce: Duration::from_millis(300),
            max_result_bytes: 1 << 20,
            compact_log_bytes: 256 << 10,
            sync_interval: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(2),
            frame: FrameLimits::default(),
        }
    }
}

struct Conn {
    principal: String,
    name: String,
    role: Role,
    protocol: Protocol,
    tx: mpsc::Sender<Outbound>,
    /// Awareness client ids this connection announced.
    clients: Vec<u64>,
    /// Whether it was told that its edits are refused.
    told_read_only: bool,
    /// Whether it gets live results (JSON participants always do).
    results: bool,
}

/// The session's starting point, loaded from the replicated state.
pub struct Loaded {
    pub info: SessionInfo,
    pub doc: SessionDoc,
    pub log_keys: Vec<String>,
    pub log_bytes: usize,
    pub snapshot_revision: u64,
}

pub struct Session {
    id: String,
    info: SessionInfo,
    doc: SessionDoc,
    store: Arc<Store>,
    bus: Arc<dyn Bus>,
    /// `<prefix>.collab.<id>`: durable updates between nodes (and
    /// `.awareness`, `.sync` under it).
    subject: String,
    node: u64,
    limits: SessionLimits,
    conns: HashMap<ConnId, Conn>,
    /// Awareness states: client id -> (clock, JSON).
    awareness: HashMap<u64, (u32, Arc<str>)>,
    /// Changes applied here, not yet durable.
    pending: Vec<Edit>,
    /// Participants' changes waiting for their client ids' claims (and
    /// everything after them, in order).
    held: VecDeque<Edit>,
    /// Client ids this node may store blocks of: client -> claim revision.
    claims: HashMap<u64, u64>,
    /// Who owns each client id looked up (`None`: a node's own edits).
    owners: HashMap<u64, Option<String>>,
    /// A claim (or the reload after a lost one) is in flight.
    claiming: bool,
    /// The document is being read again from the state: it may hold
    /// changes that will not be stored, so nothing is served from it.
    reloading: bool,
    writing: bool,
    failures: u32,
    log_keys: Vec<String>,
    log_bytes: usize,
    snapshot_bytes: usize,
    snapshot_revision: u64,
    compacting: bool,
    idle_since: Option<Instant>,
    restarts: Restarts,
    bus_task: Option<SpawnHandle>,
    /// Told when the session stops, so the hub forgets it.
    on_stop: OnStop,
    /// Stopping for good (idle, or unable to save): the hub forgets it and
    /// nothing restarts it. Otherwise a stop is a crash, and the
    /// supervisor restarts it while the hub holds its address.
    retiring: bool,
    query: Option<Addr<QueryActor>>,
    writes: broadcast::Sender<Arc<str>>,
    /// Live results: the latest run's number (a run comes due only if no
    /// later one was scheduled), whether one is running, whether another is
    /// due after it, what it ran, the metrics it reads, its message.
    run_generation: u64,
    running: bool,
    rerun: bool,
    ran: Option<(String, String)>,
    watched: Option<std::collections::BTreeSet<String>>,
    last_result: Option<String>,
    /// A catch-up request of ours is in flight.
    syncing: bool,
    /// Other nodes' catch-up requests, answered once nothing is pending.
    sync_waiting: Vec<BusMessage>,
    /// Participants' sync step 1, answered once nothing is pending.
    step1_waiting: Vec<(ConnId, yrs::StateVector)>,
}

/// One change to the document.
struct Edit {
    update: Vec<u8>,
    /// The participant it came from.
    from: Option<ConnId>,
    /// Whose it is: a participant's principal, or `None` for one the node
    /// made for a JSON participant's operation (its own client id).
    principal: Option<String>,
}

/// Participants' updates held while their client ids are claimed.
const MAX_HELD: usize = 1024;
/// Client ids one connection may bring (y-websocket uses one per document).
const MAX_CLIENTS_PER_CONN: usize = 16;

/// A catch-up answer: the missing updates (one v1 update) follow.
const SYNC_DIFF: u8 = 0;
/// A catch-up answer: too much is missing for one message; read the state.
const SYNC_RELOAD: u8 = 1;
/// Largest catch-up answer sent on the bus (NATS's default payload limit
/// is 1 MiB).
const MAX_SYNC_BYTES: usize = 512 << 10;
/// Catch-up requests held while this node has edits in flight.
const MAX_SYNC_WAITING: usize = 16;

/// Called with the session's id when it stops.
/// Called with the session's id when it stops, and whether it retires.
pub type OnStop = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// What every session on a node shares.
#[derive(Clone)]
pub struct SessionEnv {
    pub store: Arc<Store>,
    pub bus: Arc<dyn Bus>,
    /// The subject prefix (`chronicle`).
    pub prefix: String,
    pub node: u64,
    pub limits: SessionLimits,
    /// Runs the session's query (`None`: the query feature is disabled and
    /// sessions have no live results).
    pub query: Option<Addr<QueryActor>>,
    /// Metric names written (from the change feed), `*` when unknown.
    pub writes: broadcast::Sender<Arc<str>>,
}

/// The y-protocols message type of a live result (JSON text) for Yjs
/// participants who asked for results (`?results=1`); y-websocket hands
/// unknown types to `provider.messageHandlers[100]` when an app sets one.
pub const MSG_RESULT: u64 = 100;

impl Session {
    pub fn new(loaded: Loaded, env: SessionEnv, restarts: Restarts, on_stop: OnStop) -> Self {
        let snapshot_bytes = loaded.doc.encode_state().len();
        Self {
            id: loaded.info.id.clone(),
            subject: format!("{}.collab.{}", env.prefix, loaded.info.id),
            info: loaded.info,
            doc: loaded.doc,
            store: env.store,
            bus: env.bus,
            node: env.node,
            limits: env.limits,
            conns: HashMap::new(),
            awareness: HashMap::new(),
            pending: Vec::new(),
            held: VecDeque::new(),
            claims: HashMap::new(),
            owners: HashMap::new(),
            claiming: false,
            reloading: false,
            writing: false,
            failures: 0,
            log_keys: loaded.log_keys,
            log_bytes: loaded.log_bytes,
            snapshot_bytes,
            snapshot_revision: loaded.snapshot_revision,
            compacting: false,
            idle_since: Some(Instant::now()),
            restarts,
            bus_task: None,
            on_stop,
            retiring: false,
            query: env.query,
            writes: env.writes,
            run_generation: 0,
            running: false,
            rerun: false,
            ran: None,
            watched: None,
            last_result: None,
            syncing: false,
            sync_waiting: Vec::new(),
            step1_waiting: Vec::new(),
        }
    }

    fn send(&mut self, conn: ConnId, out: Outbound) {
        let full = match self.conns.get(&conn) {
            Some(c) => c.tx.try_send(out).is_err(),
            None => false,
        };
        if full {
            // A participant that does not read does not hold the others up.
            metrics::DROPPED.with_label_values(&["slow"]).inc();
            self.drop_conn(conn, "too far behind: the node stopped sending to it");
        }
    }

    fn broadcast_binary(&mut self, frame: Bytes, except: Option<ConnId>) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| Some(**id) != except && c.protocol == Protocol::Yjs)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(id, Outbound::Binary(frame.clone()));
        }
    }

    /// The spec's `state_update` for JSON participants.
    fn state_json(&self) -> String {
        let participants: Vec<Value> = self
            .conns
            .values()
            .map(|c| json!({"id": c.principal, "name": c.name, "role": c.role}))
            .collect();
        let annotations = self.doc.annotations();
        let skip = annotations.len().saturating_sub(100);
        json!({
            "type": "state_update",
            "state": {
                "session": self.id,
                "query_text": self.doc.query_text(),
                "language": self.doc.language(),
                "participants": participants,
                "annotations": annotations[skip..],
            }
        })
        .to_string()
    }

    fn broadcast_state(&mut self) {
        let text = self.state_json();
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.protocol == Protocol::Json)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(id, Outbound::Text(text.clone()));
        }
    }

    fn error_to(&mut self, conn: ConnId, code: &str, message: &str) {
        let protocol = self.conns.get(&conn).map(|c| c.protocol);
        match protocol {
            Some(Protocol::Json) => self.send(
                conn,
                Outbound::Text(
                    json!({"type": "error", "error": {"code": code, "message": message}})
                        .to_string(),
                ),
            ),
            Some(Protocol::Yjs) => self.send(
                conn,
                Outbound::Binary(encode::permission_denied(message).into()),
            ),
            None => {}
        }
    }

    fn drop_conn(&mut self, conn: ConnId, reason: &str) {
        if let Some(c) = self.conns.remove(&conn) {
            let _ = c.tx.try_send(Outbound::Close(reason.to_string()));
            self.forget_awareness(&c.clients);
            metrics::PARTICIPANTS.dec();
            if self.conns.is_empty() {
                self.idle_since = Some(Instant::now());
            }
            self.broadcast_state();
        }
    }

    /// Tells everyone that these clients are gone (a `null` state, one
    /// clock later, as y-protocols does).
    fn forget_awareness(&mut self, clients: &[u64]) {
        let mut gone = HashMap::new();
        for c in clients {
            if let Some((clock, _)) = self.awareness.remove(c) {
                gone.insert(
                    ClientID::new(*c),
                    AwarenessUpdateEntry {
                        clock: clock.wrapping_add(1),
                        json: Arc::from("null"),
                    },
                );
            }
        }
        if !gone.is_empty() {
            let update = AwarenessUpdate { clients: gone };
            self.broadcast_binary(encode::awareness(&update).into(), None);
        }
    }

    fn awareness_all(&self) -> Option<Vec<u8>> {
        if self.awareness.is_empty() {
            return None;
        }
        let clients = self
            .awareness
            .iter()
            .map(|(c, (clock, json))| {
                (
                    ClientID::new(*c),
                    AwarenessUpdateEntry {
                        clock: *clock,
                        json: json.clone(),
                    },
                )
            })
            .collect();
        Some(encode::awareness(&AwarenessUpdate { clients }))
    }

    fn document_bytes(&self) -> usize {
        self.snapshot_bytes
            + self.log_bytes
            + self.pending.iter().map(|e| e.update.len()).sum::<usize>()
            + self.held.iter().map(|e| e.update.len()).sum::<usize>()
    }

    /// A participant's change: checked, then integrated in arrival order
    /// once this node holds the claims of the client ids it carries.
    fn edit(&mut self, conn: ConnId, update: Vec<u8>, ctx: &mut Context<Self>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.role.can_edit() {
            metrics::REFUSED.with_label_values(&["viewer"]).inc();
            if !c.told_read_only {
                c.told_read_only = true;
                let role = c.role;
                self.error_to(
                    conn,
                    "forbidden",
                    &format!("permission denied: your role in this session is {role:?}; viewers cannot edit"),
                );
            }
            return;
        }
        let principal = c.principal.clone();
        if self.document_bytes() + update.len() > self.limits.max_document_bytes {
            metrics::REFUSED.with_label_values(&["full"]).inc();
            let max = self.limits.max_document_bytes;
            self.error_to(
                conn,
                "too_large",
                &format!(
                    "the session's document is at its limit of {max} bytes; edits are refused"
                ),
            );
            return;
        }
        if self.held.len() >= MAX_HELD {
            metrics::REFUSED.with_label_values(&["busy"]).inc();
            let message = "too many edits wait on this node; reconnect and sync";
            self.error_to(conn, "unavailable", message);
            self.drop_conn(conn, message);
            return;
        }
        self.held.push_back(Edit {
            update,
            from: Some(conn),
            principal: Some(principal),
        });
        self.process_held(ctx);
    }

    /// Integrates held changes in order until one needs a claim this node
    /// lacks (it asks for it, and carries on when it has it).
    fn process_held(&mut self, ctx: &mut Context<Self>) {
        while !self.claiming {
            let Some(edit) = self.held.front() else {
                return;
            };
            if edit.from.is_some_and(|c| !self.conns.contains_key(&c)) {
                self.held.pop_front();
                continue;
            }
            let clients = match dependencies(&edit.update) {
                Ok(d) => d.clients(),
                Err(e) => {
                    let edit = self.held.pop_front().expect("front");
                    self.refuse(edit.from, "malformed", &format!("malformed update: {e}"));
                    continue;
                }
            };
            let principal = edit.principal.clone();
            let unknown: Vec<u64> = clients
                .iter()
                .copied()
                .filter(|c| {
                    !self.claims.contains_key(c)
                        && self.owners.get(c).is_none_or(|o| *o == principal)
                })
                .collect();
            if !unknown.is_empty() {
                let from = edit.from;
                let theirs = from
                    .and_then(|c| self.conns.get_mut(&c))
                    .map(|c| {
                        for u in &unknown {
                            if !c.clients.contains(u) {
                                c.clients.push(*u);
                            }
                        }
                        c.clients.len()
                    })
                    .unwrap_or(0);
                if theirs > MAX_CLIENTS_PER_CONN {
                    self.held.pop_front();
                    let message = format!(
                        "a connection may bring at most {MAX_CLIENTS_PER_CONN} Yjs client ids"
                    );
                    self.refuse(from, "clients", &message);
                    continue;
                }
                self.claim(unknown, principal, ctx);
                return;
            }
            let edit = self.held.pop_front().expect("front");
            self.integrate(edit, ctx);
        }
    }

    /// Refuses a participant's change: it is told why and disconnected (it
    /// reconnects and syncs, if it is a y-websocket client).
    fn refuse(&mut self, conn: Option<ConnId>, reason: &str, message: &str) {
        metrics::REFUSED.with_label_values(&[reason]).inc();
        if let Some(conn) = conn {
            self.error_to(conn, "bad_request", message);
            self.drop_conn(conn, message);
        }
    }

    /// Whether `principal` may add blocks of `client` here now.
    fn owns(&self, client: u64, principal: &Option<String>) -> bool {
        self.claims.contains_key(&client) && self.owners.get(&client) == Some(principal)
    }

    /// Applies a change whose client ids are settled, and queues it for
    /// writing: cut first to what is new here, without blocks of client ids
    /// its author does not own.
    fn integrate(&mut self, edit: Edit, ctx: &mut Context<Self>) {
        let Edit {
            update,
            from,
            principal,
        } = edit;
        let clients = match dependencies(&update) {
            Ok(d) => d.clients(),
            Err(e) => return self.refuse(from, "malformed", &format!("malformed update: {e}")),
        };
        // Blocks this document has (whatever their content: the first
        // stored wins) and blocks of others' client ids are cut.
        let mut sv = self.doc.state_vector();
        for c in clients {
            if !self.owns(c, &principal) {
                sv.set_max(ClientID::new(c), u32::MAX);
            }
        }
        let sv = yrs::updates::encoder::Encode::encode_v1(&sv);
        let update = match yrs::diff_updates_v1(&update, &sv) {
            Ok(u) => u,
            Err(e) => return self.refuse(from, "malformed", &format!("malformed update: {e}")),
        };
        let lacks = own_dependencies(&update)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                if d.is_empty() {
                    return Ok(false);
                }
                d.missing(&self.doc.state_vector()).map_or(Ok(true), Err)
            });
        match lacks {
            // Nothing new: every block was here already or not theirs.
            Ok(false) => return,
            Ok(true) => {}
            Err(why) => {
                // Not from a y-websocket client (it syncs first, and builds
                // only on what the node sent it); it reconnects and syncs
                // if it was one.
                let message = format!("the update cannot apply to the session: {why}");
                return self.refuse(from, "incomplete", &message);
            }
        }
        // What the document was, to undo an update that does not reload
        // to what it shows (see `SessionDoc::reloads_the_same`).
        let before = self.doc.encode_state();
        let refused = match self.doc.apply(&update) {
            // yrs may have integrated part of it before it stopped.
            Err(e) => Some(("malformed", format!("malformed update: {e}"))),
            Ok(()) if !self.doc.reloads_the_same() => Some((
                "inconsistent",
                "the update integrates differently in a copy of the session: refused".into(),
            )),
            Ok(()) => None,
        };
        if let Some((reason, message)) = refused {
            match SessionDoc::from_state(&before) {
                Ok(doc) => self.doc = doc,
                // Cannot happen (it is the document's own state); if it
                // did, the restart reads the document from the state.
                Err(_) => ctx.stop(),
            }
            return self.refuse(from, reason, &message);
        }
        self.pending.push(Edit {
            update,
            from,
            principal,
        });
        self.write(ctx);
    }

    /// Claims `clients` for `principal` here, then carries on with what
    /// is held (after reading the log, if a claim came from another node).
    fn claim(&mut self, clients: Vec<u64>, principal: Option<String>, ctx: &mut Context<Self>) {
        self.claiming = true;
        let (store, id) = (self.store.clone(), self.id.clone());
        let who = principal.clone();
        let fut = async move {
            let mut out = Vec::with_capacity(clients.len());
            for c in clients {
                out.push((c, store.claim(&id, c, who.as_deref()).await?));
            }
            Ok::<_, StoreError>(out)
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let claimed = match result {
                Ok(claimed) => claimed,
                Err(e) => {
                    act.claiming = false;
                    act.failures += 1;
                    warn!(session = %act.id, error = %e, failures = act.failures, "collab: claiming client ids failed");
                    if act.failures >= 5 {
                        act.give_up(ctx);
                    } else {
                        ctx.run_later(Duration::from_millis(100 << act.failures.min(5)), |act, ctx| {
                            act.process_held(ctx);
                            act.write(ctx);
                        });
                    }
                    return;
                }
            };
            act.failures = 0;
            let sv = act.doc.state_vector();
            let mut load = false;
            for (client, outcome) in claimed {
                match outcome {
                    Claimed::Held {
                        revision,
                        load_first,
                    } => {
                        act.claims.insert(client, revision);
                        act.owners.insert(client, principal.clone());
                        // Blocks of it here already, with no claim on
                        // record: read what the state holds first too.
                        load |= load_first || sv.get(&ClientID::new(client)) > 0;
                    }
                    Claimed::Foreign(owner) => {
                        if principal.is_none() {
                            // A participant took this node's own client id:
                            // the restart makes a document with a new one.
                            warn!(session = %act.id, client, "collab: the node's client id is taken; restarting the session");
                            ctx.stop();
                            return;
                        }
                        act.owners.insert(client, owner);
                    }
                }
            }
            if load {
                act.catch_up_from_state(ctx);
            } else {
                act.claiming = false;
                act.process_held(ctx);
                act.write(ctx);
            }
        }));
    }

    /// After taking a claim over: what the state holds (every block the
    /// previous holder stored) joins the document before a held change.
    fn catch_up_from_state(&mut self, ctx: &mut Context<Self>) {
        let (store, id) = (self.store.clone(), self.id.clone());
        ctx.spawn(async move { store.load(&id).await }.into_actor(self).map(
            |loaded, act, ctx| {
                act.claiming = false;
                match loaded {
                    Ok(loaded) => act.caught_up(&loaded.doc.encode_state(), "state", ctx),
                    Err(e) => {
                        warn!(session = %act.id, error = %e, "collab: reading the session after a claim failed");
                        // Not safe to take the held changes without it.
                        act.claims.clear();
                        act.failures += 1;
                        if act.failures >= 5 {
                            return act.give_up(ctx);
                        }
                    }
                }
                act.process_held(ctx);
                act.write(ctx);
            },
        ));
    }

    /// A claim moved to another node before this one stored a change:
    /// nothing not yet durable is trusted. The document is read again from
    /// the state, and every change not stored goes through the claims again
    /// (the claim comes back here, after the state was read, if its owner
    /// is still connected here).
    fn claim_lost(&mut self, batch: Vec<Edit>, ctx: &mut Context<Self>) {
        metrics::CLAIMS_LOST.inc();
        self.claims.clear();
        let mut again: VecDeque<Edit> = batch.into();
        again.extend(std::mem::take(&mut self.pending));
        again.extend(std::mem::take(&mut self.held));
        self.held = again;
        self.claiming = true;
        self.reloading = true;
        let (store, id) = (self.store.clone(), self.id.clone());
        ctx.spawn(async move { store.load(&id).await }.into_actor(self).map(
            |loaded, act, ctx| {
                act.claiming = false;
                act.reloading = false;
                match loaded {
                    Ok(loaded) => {
                        act.snapshot_bytes = loaded.doc.encode_state().len();
                        act.doc = loaded.doc;
                        act.log_keys = loaded.log_keys;
                        act.log_bytes = loaded.log_bytes;
                        act.snapshot_revision = loaded.snapshot_revision;
                        // Participants here have what was durable before;
                        // the whole state brings them what others stored.
                        let all = encode::update(&act.doc.encode_state());
                        act.broadcast_binary(all.into(), None);
                        act.broadcast_state();
                        act.text_changed(ctx);
                        act.process_held(ctx);
                        act.answer_syncs();
                    }
                    Err(e) => {
                        warn!(session = %act.id, error = %e, "collab: reading the session after a lost claim failed; it restarts");
                        ctx.stop();
                    }
                }
            },
        ));
    }

    /// This node cannot save edits: participants reconnect (to another
    /// node, if this one cannot write) and resend what was not saved.
    fn give_up(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id, "the session cannot save edits on this node; reconnect");
        }
        self.retiring = true;
        ctx.stop();
    }

    /// Writes what is pending, unless a write is in flight (then the next
    /// write takes it).
    fn write(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.claiming || self.pending.is_empty() {
            return;
        }
        // Every client id whose blocks the batch carries must be held here.
        let mut clients = std::collections::BTreeSet::new();
        for e in &self.pending {
            if let Ok(d) = own_dependencies(&e.update) {
                clients.extend(d.clients());
            }
        }
        let own = self.doc.client_id();
        let unheld: Vec<u64> = clients
            .iter()
            .copied()
            .filter(|c| !self.claims.contains_key(c))
            .collect();
        if !unheld.is_empty() {
            if unheld == [own] {
                // The node's own client id (JSON participants' edits).
                return self.claim(unheld, None, ctx);
            }
            let batch = std::mem::take(&mut self.pending);
            return self.claim_lost(batch, ctx);
        }
        let checks: Vec<(u64, u64)> = clients.iter().map(|c| (*c, self.claims[c])).collect();
        self.writing = true;
        let batch = std::mem::take(&mut self.pending);
        let updates: Vec<Vec<u8>> = batch.iter().map(|e| e.update.clone()).collect();
        let (store, id) = (self.store.clone(), self.id.clone());
        let started = Instant::now();
        let fut = async move {
            match merge(&updates) {
                Some(merged) => {
                    let len = merged.len();
                    let key = store.append_claimed(&id, merged.clone(), &checks).await?;
                    Ok::<_, StoreError>((vec![(key, len)], merged))
                }
                None => {
                    let mut keys = Vec::new();
                    for u in &updates {
                        let key = store.append_claimed(&id, u.clone(), &checks).await?;
                        keys.push((key, u.len()));
                    }
                    // Relayed one by one below.
                    Ok((keys, Vec::new()))
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.writing = false;
            match result {
                Ok((keys, merged)) => {
                    act.failures = 0;
                    metrics::WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
                    for (key, len) in keys {
                        act.log_keys.push(key);
                        act.log_bytes += len;
                    }
                    act.relay(&batch, merged);
                    act.text_changed(ctx);
                    act.maybe_compact(ctx);
                }
                Err(StoreError::Conflict) => {
                    // A claim moved (the batch was not stored; with one
                    // append per update, those before it were: they stay).
                    debug!(session = %act.id, "collab: a client id was claimed elsewhere; reloading");
                    return act.claim_lost(batch, ctx);
                }
                Err(e) => {
                    act.failures += 1;
                    warn!(session = %act.id, error = %e, failures = act.failures, "collab: writing edits failed");
                    // Back in front of what came meanwhile, tried again.
                    let later = std::mem::take(&mut act.pending);
                    act.pending = batch;
                    act.pending.extend(later);
                    if act.failures >= 5 {
                        return act.give_up(ctx);
                    }
                    ctx.run_later(Duration::from_millis(100 << act.failures.min(5)), |act, ctx| {
                        act.write(ctx)
                    });
                    return;
                }
            }
            act.write(ctx);
            act.answer_syncs();
        }));
    }

    /// Asks the other nodes hosting the session for what this one lacks
    /// (its state vector out, the missing updates back).
    fn request_sync(&mut self, ctx: &mut Context<Self>) {
        if self.syncing {
            return;
        }
        self.syncing = true;
        let mut payload = self.node.to_be_bytes().to_vec();
        payload.extend_from_slice(&yrs::updates::encoder::Encode::encode_v1(
            &self.doc.state_vector(),
        ));
        let (bus, subject) = (self.bus.clone(), format!("{}.sync", self.subject));
        let timeout = self.limits.sync_timeout;
        let fut = async move {
            bus.request(BusMessage::new(subject, payload), timeout)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|answer, act, ctx| {
            act.syncing = false;
            // No other node hosts it, or none answered in time: the next
            // round asks again.
            let Ok(answer) = answer else { return };
            match answer.payload.split_first() {
                Some((&SYNC_DIFF, diff)) => act.caught_up(diff, "sync", ctx),
                Some((&SYNC_RELOAD, _)) => act.reload(ctx),
                _ => warn!(session = %act.id, "collab: a catch-up answer of an unknown kind"),
            }
        }));
    }

    /// Applies updates another node had durably (from a relay or a
    /// catch-up): no write, they are stored already.
    fn caught_up(&mut self, update: &[u8], via: &'static str, ctx: &mut Context<Self>) {
        match self.doc.apply_changed(update) {
            Ok(changed) => {
                if changed {
                    metrics::REMOTE_UPDATES.with_label_values(&[via]).inc();
                    self.broadcast_binary(encode::update(update).into(), None);
                    self.broadcast_state();
                    self.text_changed(ctx);
                }
                if self.doc.has_missing_updates() {
                    // Something it builds on never arrived: ask now.
                    self.request_sync(ctx);
                }
            }
            Err(e) => {
                warn!(session = %self.id, error = %e, "collab: an update from another node did not apply")
            }
        }
    }

    /// Too much was missing to travel on the bus: read what the state holds.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        let (store, id) = (self.store.clone(), self.id.clone());
        self.syncing = true;
        let fut = async move { store.load(&id).await };
        ctx.spawn(fut.into_actor(self).map(|loaded, act, ctx| {
            act.syncing = false;
            match loaded {
                Ok(loaded) => act.caught_up(&loaded.doc.encode_state(), "sync", ctx),
                Err(e) => warn!(session = %act.id, error = %e, "collab: reading the session to catch up failed"),
            }
        }));
    }

    /// Another node asks what it lacks: answered when everything this
    /// document holds is durable, held (a few) until then.
    fn on_sync_request(&mut self, request: BusMessage) {
        if request.reply.is_none() {
            return;
        }
        if self.sync_waiting.len() >= MAX_SYNC_WAITING {
            // It asks again on its next round.
            self.sync_waiting.remove(0);
        }
        self.sync_waiting.push(request);
        self.answer_syncs();
    }

    /// Whether everything the document holds is durable (so it may be
    /// handed out).
    fn durable(&self) -> bool {
        !self.writing && self.pending.is_empty() && !self.reloading
    }

    fn answer_syncs(&mut self) {
        if !self.durable() {
            return;
        }
        for (conn, sv) in std::mem::take(&mut self.step1_waiting) {
            let diff = self.doc.diff(&sv);
            self.send(conn, Outbound::Binary(encode::sync_step2(&diff).into()));
        }
        if self.sync_waiting.is_empty() {
            return;
        }
        for request in std::mem::take(&mut self.sync_waiting) {
            let Some(body) = request.payload.get(8..) else {
                continue;
            };
            let Ok(sv) = check_state_vector(body) else {
                debug!(session = %self.id, "collab: a malformed catch-up request");
                continue;
            };
            let diff = self.doc.diff(&sv);
            let mut answer = Vec::with_capacity(1 + diff.len());
            if diff.len() > MAX_SYNC_BYTES {
                answer.push(SYNC_RELOAD);
            } else {
                answer.push(SYNC_DIFF);
                answer.extend_from_slice(&diff);
            }
            let Some(reply) = request.reply else { continue };
            let bus = self.bus.clone();
            actix::spawn(async move {
                let _ = bus.publish(BusMessage::new(reply, answer)).await;
            });
        }
    }

    /// Durable changes go to the other participants here and on other nodes.
    fn relay(&mut self, batch: &[Edit], merged: Vec<u8>) {
        for e in batch {
            self.broadcast_binary(encode::update(&e.update).into(), e.from);
        }
        self.broadcast_state();
        let publish = |u: &[u8]| {
            let mut payload = Vec::with_capacity(8 + u.len());
            payload.extend_from_slice(&self.node.to_be_bytes());
            payload.extend_from_slice(u);
            let (bus, subject) = (self.bus.clone(), self.subject.clone());
            actix::spawn(async move {
                if let Err(e) = bus.publish(BusMessage::new(subject, payload)).await {
                    debug!(error = %e, "collab: relay to other nodes failed (they catch up from the state)");
                }
            });
        };
        if merged.is_empty() {
            for e in batch {
                publish(&e.update);
            }
        } else {
            publish(&merged);
        }
    }

    fn maybe_compact(&mut self, ctx: &mut Context<Self>) {
        if self.compacting || self.log_bytes < self.limits.compact_log_bytes {
            return;
        }
        self.compacting = true;
        let state = self.doc.encode_state();
        let keys = self.log_keys.clone();
        let (store, id, revision) = (self.store.clone(), self.id.clone(), self.snapshot_revision);
        let size = state.len();
        let fut = async move {
            store
                .compact(&id, state, revision, &keys)
                .await
                .map(|r| (r, keys))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
            act.compacting = false;
            match result {
                Ok((revision, keys)) => {
                    let folded = keys.len().min(4096);
                    act.log_keys.drain(..folded);
                    act.snapshot_revision = revision;
                    act.snapshot_bytes = size;
                    act.log_bytes = 0;
                    metrics::COMPACTIONS.inc();
                }
                Err(e) => {
                    // Another node compacted first, or the state is busy:
                    // the next write tries again from what is stored.
                    debug!(session = %act.id, error = %e, "collab: compaction skipped");
                    act.snapshot_revision = 0;
                }
            }
        }));
    }

    fn on_frame(&mut self, conn: ConnId, frame: Bytes, ctx: &mut Context<Self>) {
        let messages = match decode_frame(&frame, &self.limits.frame) {
            Ok(m) => m,
            Err(e) => {
                metrics::REFUSED.with_label_values(&["malformed"]).inc();
                self.drop_conn(conn, &format!("malformed message: {e}"));
                return;
            }
        };
        for message in messages {
            match message {
                ClientMessage::SyncStep1(sv) => {
                    // Answered from what is durable only: an edit not yet
                    // stored may still be undone (a lost claim).
                    self.step1_waiting.retain(|(c, _)| *c != conn);
                    self.step1_waiting.push((conn, sv));
                    self.answer_syncs();
                }
                ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                    self.edit(conn, update, ctx)
                }
                ClientMessage::Awareness(update) => self.on_awareness(Some(conn), update),
                ClientMessage::QueryAwareness => {
                    if let Some(all) = self.awareness_all() {
                        self.send(conn, Outbound::Binary(all.into()));
                    }
                }
                ClientMessage::Auth => {}
            }
        }
    }

    fn on_awareness(&mut self, conn: Option<ConnId>, update: AwarenessUpdate) {
        let mut changed = HashMap::new();
        for (client, entry) in update.clients {
            let id = client.get();
            let newer = self
                .awareness
                .get(&id)
                .is_none_or(|(clock, _)| entry.clock > *clock);
            if !newer {
                continue;
            }
            if &*entry.json == "null" {
                self.awareness.remove(&id);
            } else {
                if let Some(c) = conn.and_then(|c| self.conns.get_mut(&c)) {
                    if !c.clients.contains(&id) && c.clients.len() < 16 {
                        c.clients.push(id);
                    }
                }
                self.awareness.insert(id, (entry.clock, entry.json.clone()));
            }
            changed.insert(client, entry);
        }
        if changed.is_empty() {
            return;
        }
        let frame = encode::awareness(&AwarenessUpdate { clients: changed });
        self.broadcast_binary(frame.clone().into(), conn);
        if conn.is_some() {
            let (bus, subject) = (self.bus.clone(), format!("{}.awareness", self.subject));
            let mut payload = self.node.to_be_bytes().to_vec();
            payload.extend_from_slice(&frame);
            actix::spawn(async move {
                let _ = bus.publish(BusMessage::new(subject, payload)).await;
            });
        }
    }

    /// Runs the query again if its text or language changed.
    fn text_changed(&mut self, ctx: &mut Context<Self>) {
        let input = (self.doc.query_text(), self.doc.language());
        if self.ran.as_ref() != Some(&input) {
            self.schedule_run(ctx);
        }
    }

    /// Runs the query after the debounce, unless another run is scheduled
    /// meanwhile (the last one wins).
    fn schedule_run(&mut self, ctx: &mut Context<Self>) {
        if self.query.is_none() || !self.conns.values().any(|c| c.results) {
            return;
        }
        self.run_generation += 1;
        let generation = self.run_generation;
        ctx.run_later(self.limits.debounce, move |act, ctx| {
            if act.run_generation == generation {
                act.run_query(ctx);
            }
        });
    }

    fn run_query(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.rerun = true;
            return;
        }
        let Some(query) = self.query.clone() else {
            return;
        };
        let (text, language) = (self.doc.query_text(), self.doc.language());
        self.ran = Some((text.clone(), language.clone()));
        self.watched = chronicle_query::watched_metrics(&text);
        if text.trim().is_empty() {
            return;
        }
        let mut request = QueryRequest::default();
        match language.as_str() {
            "sql" => request.sql = Some(text.clone()),
            "cql" => request.cql = Some(text.clone()),
            _ => request.promql = Some(text.clone()),
        }
        self.running = true;
        let limit = self.limits.max_result_bytes;
        let started = Instant::now();
        let fut = async move { query.send(RunQuery::new(request)).await };
        ctx.spawn(fut.into_actor(self).map(move |answer, act, ctx| {
            act.running = false;
            metrics::QUERY_SECONDS.observe(started.elapsed().as_secs_f64());
            let message = match answer {
                Ok(Ok(result)) => json!({"type": "result", "query": text, "language": language,
                                         "result": result}),
                // A query that does not parse is a message, never the
                // session's end.
                Ok(Err(e)) => json!({"type": "result_error", "query": text, "language": language,
                                     "error": {"code": e.code(), "message": e.to_string()}}),
                Err(_) => json!({"type": "result_error", "query": text, "language": language,
                                 "error": {"code": "unavailable",
                                           "message": "the query actor is restarting; the next change runs it again"}}),
            }
            .to_string();
            let message = if message.len() > limit {
                json!({"type": "result_error", "query": text, "language": language,
                       "error": {"code": "too_large", "message": format!(
                           "the result is {} bytes; participants get at most {limit}: narrow the query",
                           message.len())}})
                .to_string()
            } else {
                message
            };
            let ids: Vec<ConnId> = act
                .conns
                .iter()
                .filter(|(_, c)| c.results)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                act.send_result(id, &message);
            }
            act.last_result = Some(message);
            if std::mem::take(&mut act.rerun) {
                act.schedule_run(ctx);
            }
        }));
    }

    fn send_result(&mut self, conn: ConnId, message: &str) {
        let out = match self.conns.get(&conn).map(|c| c.protocol) {
            Some(Protocol::Json) => Outbound::Text(message.to_string()),
            Some(Protocol::Yjs) => {
                Outbound::Binary(encode::custom(MSG_RESULT, message.as_bytes()).into())
            }
            None => return,
        };
        self.send(conn, out);
    }

    fn on_json(&mut self, conn: ConnId, text: &[u8], ctx: &mut Context<Self>) {
        let op = match parse_json_op(text) {
            Ok(op) => op,
            Err(e) => {
                metrics::REFUSED.with_label_values(&["malformed"]).inc();
                self.error_to(conn, "bad_request", &e);
                return;
            }
        };
        let (principal, can_edit) = match self.conns.get(&conn) {
            Some(c) => (c.principal.clone(), c.role.can_edit()),
            None => return,
        };
        let updates = match op {
            JsonOp::State => {
                let state = self.state_json();
                self.send(conn, Outbound::Text(state));
                return;
            }
            _ if !can_edit => {
                metrics::REFUSED.with_label_values(&["viewer"]).inc();
                self.error_to(conn, "forbidden", "viewers cannot change the session");
                return;
            }
            JsonOp::UpdateQuery { query, language } => {
                let mut updates = Vec::new();
                if let Some(lang) = language {
                    match self.doc.set_language(&lang) {
                        Ok(u) => updates.extend(u),
                        Err(e) => {
                            self.error_to(conn, "bad_request", &e.to_string());
                            return;
                        }
                    }
                }
                updates.extend(self.doc.set_query(&query));
                updates
            }
            JsonOp::Annotate(mut a) => {
                a.author = principal;
                a.at_ms = (chrono_now_ns() / 1_000_000) as i64;
                vec![self.doc.add_annotation(&a)]
            }
        };
        // Made here from the document itself: applied already, only written.
        for u in updates {
            if self.document_bytes() + u.len() > self.limits.max_document_bytes {
                self.error_to(conn, "too_large", "the session's document is at its limit");
                return;
            }
            self.pending.push(Edit {
                update: u,
                from: Some(conn),
                principal: None,
            });
        }
        self.write(ctx);
    }
}

fn chrono_now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What a JSON participant may send.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonOp {
    /// Replace the query text (a minimal edit), and optionally its language.
    UpdateQuery {
        query: String,
        language: Option<String>,
    },
    Annotate(Annotation),
    /// Send me the state.
    State,
}

/// Longest query text a JSON participant may set, bytes.
pub const MAX_QUERY_BYTES: usize = 64 << 10;

/// Parses `{"type": "operation", "operation": {"type": ..., "data": {...}}}`.
pub fn parse_json_op(text: &[u8]) -> Result<JsonOp, String> {
    let v: Value = serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
    match v["type"].as_str() {
        Some("operation") => {}
        Some("state") => return Ok(JsonOp::State),
        Some(other) => return Err(format!("message type {other:?}: operation or state")),
        None => return Err("a message needs a \"type\"".into()),
    }
    let op = &v["operation"];
    let data = &op["data"];
    match op["type"].as_str() {
        Some("update_query") => {
            let query = data["query"]
                .as_str()
                .ok_or("update_query needs data.query (a string)")?;
            if query.len() > MAX_QUERY_BYTES {
                return Err(format!(
                    "a query of {} bytes; at most {MAX_QUERY_BYTES}",
                    query.len()
                ));
            }
            let language = match &data["language"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return Err("data.language is a string".into()),
            };
            Ok(JsonOp::UpdateQuery {
                query: query.to_string(),
                language,
            })
        }
        Some("annotate") => {
            let a: Annotation =
                serde_json::from_value(data.clone()).map_err(|e| format!("annotate: {e}"))?;
            if a.text.len() > 4096 || a.series.len() > 4096 {
                return Err("an annotation's text and series are at most 4096 bytes each".into());
            }
            if a.end < a.start {
                return Err("an annotation's end is before its start".into());
            }
            Ok(JsonOp::Annotate(a))
        }
        Some(other) => Err(format!("operation {other:?}: update_query or annotate")),
        None => Err("an operation needs a \"type\"".into()),
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::SESSIONS.inc();
        // Other nodes' durable updates and awareness.
        let (bus, subject) = (self.bus.clone(), self.subject.clone());
        // Weak: the session's own tasks must not keep it alive (a strong
        // address left makes the supervisor restart a retiring session).
        let me = ctx.address().downgrade();
        let task = async move {
            let mut updates = match bus.subscribe(&subject, None).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "collab: no relay from other nodes");
                    return;
                }
            };
            let mut aware = match bus.subscribe(&format!("{subject}.awareness"), None).await {
                Ok(s) => s,
                Err(_) => return,
            };
            let mut sync = match bus.subscribe(&format!("{subject}.sync"), None).await {
                Ok(s) => s,
                Err(_) => return,
            };
            // Subscribed: what was relayed before this point (since the
            // session was read from the state) comes from the others.
            if me.upgrade().is_none_or(|me| me.try_send(Catchup).is_err()) {
                return;
            }
            loop {
                let (kind, msg) = tokio::select! {
                    m = updates.next() => (0, m),
                    m = aware.next() => (1, m),
                    m = sync.next() => (2, m),
                };
                let Some(message) = msg else { return };
                if me
                    .upgrade()
                    .is_none_or(|me| me.try_send(Remote { kind, message }).is_err())
                {
                    return;
                }
            }
        };
        self.bus_task = Some(ctx.spawn(task.into_actor(self)));
        // Writes to the metrics the query reads make it run again.
        let mut written = self.writes.subscribe();
        let me = ctx.address().downgrade();
        ctx.spawn(
            async move {
                loop {
                    let metric: Arc<str> = match written.recv().await {
                        Ok(m) => m,
                        Err(broadcast::error::RecvError::Lagged(_)) => "*".into(),
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if me
                        .upgrade()
                        .is_none_or(|me| me.try_send(Written(metric)).is_err())
                    {
                        return;
                    }
                }
            }
            .into_actor(self),
        );
        ctx.run_interval(self.limits.sync_interval, |act, ctx| {
            if !act.conns.is_empty() {
                act.request_sync(ctx);
            }
        });
        let check = self.limits.idle_stop.min(Duration::from_secs(5));
        ctx.run_interval(check, |act, ctx| {
            let idle = act
                .idle_since
                .is_some_and(|t| t.elapsed() >= act.limits.idle_stop);
            if idle && act.pending.is_empty() && act.held.is_empty() && !act.writing {
                act.retiring = true;
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::SESSIONS.dec();
        info!(session = %self.id, retiring = self.retiring, "collab session stopped");
        (self.on_stop)(&self.id, self.retiring);
    }
}

impl Supervised for Session {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // After a panic: participants reconnect and resync (their copies
        // hold every edit; what the node lacks they send again).
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id, "the session restarted; reconnect");
        }
        self.awareness.clear();
        // yrs may have panicked half-way through an update: the copy in
        // memory is not trusted. Edits not yet durable are dropped (their
        // authors were disconnected and send them again when they sync),
        // and the document is read again from the replicated state.
        self.pending.clear();
        self.held.clear();
        self.claims.clear();
        self.sync_waiting.clear();
        self.step1_waiting.clear();
        // What was in flight belonged to the stopped incarnation.
        self.writing = false;
        self.compacting = false;
        self.syncing = false;
        self.claiming = false;
        self.reloading = false;
        self.running = false;
        self.doc = SessionDoc::new();
        self.ran = None;
        self.last_result = None;
        let (store, id) = (self.store.clone(), self.id.clone());
        ctx.spawn(async move { store.load(&id).await }.into_actor(self).map(
            |loaded, act, ctx| match loaded {
                Ok(loaded) => {
                    act.snapshot_bytes = loaded.doc.encode_state().len();
                    act.doc = loaded.doc;
                    act.log_keys = loaded.log_keys;
                    act.log_bytes = loaded.log_bytes;
                    act.snapshot_revision = loaded.snapshot_revision;
                }
                Err(e) => {
                    warn!(session = %act.id, error = %e, "collab: reading the session after a restart failed; it stops");
                    ctx.stop();
                }
            },
        ));
        self.restarts.pause(ctx);
    }
}

/// A participant connects.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Connect {
    pub conn: ConnId,
    pub principal: String,
    /// The most the principal's token allows (a read-only token: viewer).
    pub max_role: Role,
    /// A Yjs participant that asked for live results.
    pub results: bool,
    pub name: String,
    pub protocol: Protocol,
    pub tx: mpsc::Sender<Outbound>,
}

impl Handler<Connect> for Session {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> Self::Result {
        guarded(ACTOR, self, ctx, |act, ctx| {
            if act.conns.len() >= act.limits.max_participants {
                return Err(format!(
                    "the session has {} participants on this node, the most it takes",
                    act.conns.len()
                ));
            }
            let role = act.info.role_of(&msg.principal).min(msg.max_role);
            act.conns.insert(
                msg.conn,
                Conn {
                    principal: msg.principal,
                    name: msg.name,
                    role,
                    protocol: msg.protocol,
                    tx: msg.tx,
                    clients: Vec::new(),
                    told_read_only: false,
                    results: msg.results || msg.protocol == Protocol::Json,
                },
            );
            metrics::PARTICIPANTS.inc();
            act.idle_since = None;
            match msg.protocol {
                Protocol::Yjs => {
                    // As a y-websocket server: our state vector (the client
                    // answers with what we lack) and everyone's awareness.
                    let sv = act.doc.state_vector();
                    act.send(msg.conn, Outbound::Binary(encode::sync_step1(&sv).into()));
                    if let Some(all) = act.awareness_all() {
                        act.send(msg.conn, Outbound::Binary(all.into()));
                    }
                    act.broadcast_state();
                }
                Protocol::Json => act.broadcast_state(),
            }
            if msg.results || msg.protocol == Protocol::Json {
                match act.last_result.clone() {
                    Some(r) => act.send_result(msg.conn, &r),
                    None => act.schedule_run(ctx),
                }
            }
            Ok(())
        })
        .unwrap_or_else(|| Err("the session restarted".into()))
    }
}

/// A frame from a participant.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Frame {
    pub conn: ConnId,
    pub text: bool,
    pub bytes: Bytes,
}

impl Handler<Frame> for Session {
    type Result = ();

    fn handle(&mut self, msg: Frame, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| {
            let protocol = act.conns.get(&msg.conn).map(|c| c.protocol);
            match (protocol, msg.text) {
                (Some(Protocol::Yjs), false) => act.on_frame(msg.conn, msg.bytes, ctx),
                (Some(Protocol::Json), true) => act.on_json(msg.conn, &msg.bytes, ctx),
                (Some(_), _) => act.drop_conn(
                    msg.conn,
                    "wrong frame type: y-protocols is binary, the JSON protocol text",
                ),
                (None, _) => {}
            }
        });
    }
}

/// A participant left (or its connection ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub conn: ConnId,
}

impl Handler<Disconnect> for Session {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, _| act.drop_conn(msg.conn, "left"));
    }
}

/// From another node: 0 a durable update, 1 awareness, 2 a catch-up
/// request; the sender's node id first.
#[derive(Message)]
#[rtype(result = "()")]
struct Remote {
    kind: u8,
    message: BusMessage,
}

impl Handler<Remote> for Session {
    type Result = ();

    fn handle(&mut self, msg: Remote, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| {
            let Some((from, body)) = msg.message.payload.split_first_chunk::<8>() else {
                return;
            };
            if u64::from_be_bytes(*from) == act.node {
                return;
            }
            match msg.kind {
                0 => act.caught_up(body, "relay", ctx),
                2 => act.on_sync_request(msg.message.clone()),
                _ => {
                    if let Ok(messages) = decode_frame(body, &act.limits.frame) {
                        for m in messages {
                            if let ClientMessage::Awareness(u) = m {
                                act.on_awareness(None, u);
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Ask the other nodes for what this one missed.
#[derive(Message)]
#[rtype(result = "()")]
struct Catchup;

impl Handler<Catchup> for Session {
    type Result = ();

    fn handle(&mut self, _: Catchup, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| act.request_sync(ctx));
    }
}

/// A write to `metric` (from the change feed; `*`: any).
#[derive(Message)]
#[rtype(result = "()")]
struct Written(Arc<str>);

impl Handler<Written> for Session {
    type Result = ();

    fn handle(&mut self, msg: Written, ctx: &mut Context<Self>) {
        guarded(ACTOR, self, ctx, |act, ctx| {
            let relevant =
                &*msg.0 == "*" || act.watched.as_ref().is_none_or(|w| w.contains(&*msg.0));
            if relevant && act.ran.is_some() {
                act.schedule_run(ctx);
            }
        });
    }
}

/// The session's figures for `/api/collab/stats` and the hub's list.
#[derive(Message)]
#[rtype(result = "SessionStats")]
pub struct Stats;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionStats {
    pub id: String,
    pub participants: usize,
    pub document_bytes: usize,
    pub log_entries: usize,
    pub query_text_bytes: usize,
}

impl Handler<Stats> for Session {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SessionStats {
            id: self.id.clone(),
            participants: self.conns.len(),
            document_bytes: self.document_bytes(),
            log_entries: self.log_keys.len(),
            query_text_bytes: self.doc.query_text().len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_operations_parse_and_hostile_ones_are_refused() {
        let op = parse_json_op(
            br#"{"type":"operation","operation":{"type":"update_query","data":{"query":"up","language":"promql"}}}"#,
        )
        .unwrap();
        assert_eq!(
            op,
            JsonOp::UpdateQuery {
                query: "up".into(),
                language: Some("promql".into())
            }
        );
        assert_eq!(
            parse_json_op(br#"{"type":"state"}"#).unwrap(),
            JsonOp::State
        );
        for bad in [
            &b"not json"[..],
            br#"{"type":"operation"}"#,
            br#"{"type":"operation","operation":{"type":"update_query","data":{}}}"#,
            br#"{"type":"operation","operation":{"type":"drop_table"}}"#,
            br#"{"type":"operation","operation":{"type":"annotate","data":{"start":5,"end":1,"text":"x"}}}"#,
            br#"{"type":"hello"}"#,
        ] {
            assert!(parse_json_op(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let huge = format!(
            r#"{{"type":"operation","operation":{{"type":"update_query","data":{{"query":"{}"}}}}}}"#,
            "x".repeat(MAX_QUERY_BYTES + 1)
        );
        assert!(parse_json_op(huge.as_bytes()).is_err());
    }
}

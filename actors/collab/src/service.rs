//! The feature: its hub (the sessions open on this node) and its routes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, ArbiterHandle, Supervisor};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use async_trait::async_trait;
use chronicle_auth::Principal;
use chronicle_bus::Bus;
use chronicle_platform::ws::{self, Incoming};
use chronicle_platform::{ArbiterSlot, Feature, FeatureContext, FeatureError, Planned, Running};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};

use crate::session::{
    ConnId, Connect, Disconnect, Frame, Outbound, Protocol, Session, SessionLimits,
};
use crate::store::{valid_id, Role, SessionInfo, Store};

/// Longest frame a participant may send (a paste of a long query fits).
const MAX_FRAME: usize = 1 << 20;
const PING_EVERY: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions a `GET /api/collab/sessions` lists at most.
const MAX_LISTED: usize = 1000;

/// `[features.collab]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollabConfig {
    /// Sessions open on this node at once; more are refused with 503.
    pub max_sessions: usize,
    /// Participants one session takes on this node.
    pub max_participants: usize,
    /// A session's document (snapshot and log), bytes.
    pub max_document_bytes: usize,
    /// Frames a participant may send per second (a burst of twice that).
    pub max_frames_per_second: u32,
    /// Browser origins allowed to connect (empty: any request without an
    /// `Origin` header, and none with one).
    pub allowed_origins: Vec<String>,
    /// A session with no participant on this node closes here after this
    /// many seconds.
    pub idle_stop_secs: u64,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            max_participants: 256,
            max_document_bytes: 8 << 20,
            max_frames_per_second: 200,
            allowed_origins: Vec::new(),
            idle_stop_secs: 30,
        }
    }
}

pub struct CollabFeature;

impl Feature for CollabFeature {
    fn name(&self) -> &'static str {
        "collab"
    }

    fn describe(&self) -> &'static str {
        "collaborative query sessions: a Yjs document edited over WebSocket (y-websocket or JSON)"
    }

    fn access(&self) -> Vec<chronicle_platform::RouteAccess> {
        vec![
            // Creating a session needs a writer; joining, reading and
            // editing are checked against the session's roles (a read-only
            // token is a viewer in every session).
            chronicle_platform::RouteAccess::exact(
                "/api/collab/sessions/create",
                chronicle_platform::Access::Write,
            ),
            chronicle_platform::RouteAccess::prefix(
                "/api/collab/",
                chronicle_platform::Access::Read,
            ),
        ]
    }

    fn configure(&self, section: Option<&toml::Value>) -> Result<Box<dyn Planned>, FeatureError> {
        let config: CollabConfig = chronicle_platform::parse_section("collab", section)?;
        if config.max_sessions == 0
            || config.max_participants == 0
            || config.max_frames_per_second == 0
            || config.idle_stop_secs == 0
            || config.max_document_bytes < 64 << 10
        {
            return Err(FeatureError::Config {
                feature: "collab",
                message: "max_sessions, max_participants, max_frames_per_second and idle_stop_secs must be at least 1, max_document_bytes at least 65536".into(),
            });
        }
        Ok(Box::new(CollabPlan { config }))
    }

    fn subjects(&self, prefix: &str) -> Vec<String> {
        vec![format!("{prefix}.collab.>")]
    }
}

struct CollabPlan {
    config: CollabConfig,
}

#[async_trait(?Send)]
impl Planned for CollabPlan {
    async fn start(self: Box<Self>, cx: &FeatureContext) -> Result<Arc<dyn Running>, FeatureError> {
        crate::metrics::init();
        let state = cx.state("collab")?;
        let arbiter = actix::Arbiter::new();
        // Live results: the query feature's actor (absent when it is
        // disabled), and the change feed, read only while sessions are open.
        let query = cx
            .services
            .get::<Addr<chronicle_query::QueryActor>>()
            .map(|a| (*a).clone());
        let (writes, _) = tokio::sync::broadcast::channel::<Arc<str>>(1024);
        let (open, open_rx) = tokio::sync::watch::channel(0usize);
        let feed = actix::spawn(chronicle_platform::follow_written_metrics(
            cx.bus.clone(),
            cx.prefix.clone(),
            writes.clone(),
            open_rx,
        ));
        let hub = web::Data::new(Hub {
            store: Arc::new(Store::new(state, cx.node_id, cx.cluster_runtime.clone())),
            // Node-to-node: signed under the cluster secret when one is set.
            bus: cx.peers.clone(),
            prefix: cx.prefix.clone(),
            node: cx.node_id,
            arbiter: arbiter.handle(),
            restart_policy: cx.restart_policy,
            auth: cx.auth.clone(),
            sessions: Arc::new(parking_lot::Mutex::new(HashMap::new())),
            open: Arc::new(open),
            query,
            writes,
            opening: tokio::sync::Mutex::new(()),
            next_conn: AtomicU64::new(1),
            stopping: tokio::sync::watch::channel(false).0,
            limits: SessionLimits {
                max_participants: self.config.max_participants,
                max_document_bytes: self.config.max_document_bytes,
                idle_stop: Duration::from_secs(self.config.idle_stop_secs),
                ..SessionLimits::default()
            },
            config: self.config,
        });
        chronicle_actor_runtime::announce("collab_session");
        Ok(Arc::new(RunningCollab {
            hub,
            arbiter: ArbiterSlot::new(arbiter),
            feed: parking_lot::Mutex::new(Some(feed)),
        }))
    }
}

/// The sessions open on this node.
pub struct Hub {
    store: Arc<Store>,
    bus: Arc<dyn Bus>,
    prefix: String,
    node: u64,
    arbiter: ArbiterHandle,
    restart_policy: chronicle_actor_runtime::RestartPolicy,
    /// Connections end when their token is revoked or expires.
    auth: Arc<chronicle_auth::Authenticator>,
    sessions: Arc<parking_lot::Mutex<HashMap<String, Addr<Session>>>>,
    /// How many sessions are open: the change feed is read while some are.
    open: Arc<tokio::sync::watch::Sender<usize>>,
    query: Option<Addr<chronicle_query::QueryActor>>,
    writes: tokio::sync::broadcast::Sender<Arc<str>>,
    /// One session opened at a time (two participants arriving together
    /// must not open it twice).
    opening: tokio::sync::Mutex<()>,
    next_conn: AtomicU64,
    stopping: tokio::sync::watch::Sender<bool>,
    limits: SessionLimits,
    config: CollabConfig,
}

impl Hub {
    /// The session's actor here, opened from the replicated state if needed.
    async fn open(&self, id: &str) -> Result<Addr<Session>, (StatusCode, String)> {
        if let Some(addr) = self.sessions.lock().get(id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        let _one = self.opening.lock().await;
        if let Some(addr) = self.sessions.lock().get(id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        if self.sessions.lock().len() >= self.config.max_sessions {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this node has {} sessions open, the most it holds",
                    self.config.max_sessions
                ),
            ));
        }
        let Some((info, _)) = self.store.info(id).await.map_err(unavailable)? else {
            return Err((StatusCode::NOT_FOUND, format!("no session {id}")));
        };
        let loaded = self.store.load(id).await.map_err(unavailable)?;
        let loaded = crate::session::Loaded {
            info,
            doc: loaded.doc,
            log_keys: loaded.log_keys,
            log_bytes: loaded.log_bytes,
            snapshot_revision: loaded.snapshot_revision,
        };
        let env = crate::session::SessionEnv {
            store: self.store.clone(),
            bus: self.bus.clone(),
            prefix: self.prefix.clone(),
            node: self.node,
            limits: self.limits,
            query: self.query.clone(),
            writes: self.writes.clone(),
        };
        let restarts =
            chronicle_actor_runtime::Restarts::new("collab_session", self.restart_policy);
        let (sessions, open) = (self.sessions.clone(), self.open.clone());
        let on_stop: crate::session::OnStop = Arc::new(move |id, retiring| {
            // Retiring: its address goes, so the supervisor does not start
            // it again (the next participant opens it afresh). A crash
            // keeps it: the supervisor restarts the actor behind it.
            let mut s = sessions.lock();
            if retiring || s.get(id).is_some_and(|a| !a.connected()) {
                s.remove(id);
            }
            open.send_replace(s.len());
        });
        let addr = Supervisor::start_in_arbiter(&self.arbiter, move |_| {
            Session::new(loaded, env, restarts, on_stop)
        });
        let open = {
            let mut s = self.sessions.lock();
            s.insert(id.to_string(), addr.clone());
            s.len()
        };
        self.open.send_replace(open);
        Ok(addr)
    }
}

fn unavailable(e: crate::store::StoreError) -> (StatusCode, String) {
    match e {
        crate::store::StoreError::Conflict => (StatusCode::CONFLICT, e.to_string()),
        other => (StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

struct RunningCollab {
    hub: web::Data<Hub>,
    arbiter: ArbiterSlot,
    feed: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait(?Send)]
impl Running for RunningCollab {
    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.hub.clone())
            .route("/api/collab/sessions", web::get().to(list))
            .route("/api/collab/sessions/create", web::post().to(create))
            .route("/api/collab/sessions/join", web::post().to(join))
            .route("/api/collab/sessions/leave", web::post().to(leave))
            .route("/api/collab/stats", web::get().to(stats))
            .route("/api/collab/ws", web::get().to(socket))
            .route("/api/collab/ws/{session}", web::get().to(socket));
    }

    async fn stop_intake(&self) {
        self.hub.stopping.send_replace(true);
        let feed = self.feed.lock().take();
        if let Some(feed) = feed {
            feed.abort();
        }
    }

    async fn stop(&self) {
        self.arbiter.stop().await;
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        _ => "unavailable",
    }
}

/// Who is asking: the token's principal, or with authentication off the
/// `participant` the client names (loopback only).
fn who(req: &HttpRequest, named: Option<&str>) -> (String, String, bool) {
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous);
    if principal.id == "anonymous" {
        let name = named
            .filter(|n| valid_participant(n))
            .unwrap_or("anonymous");
        (name.to_string(), name.to_string(), true)
    } else {
        let can_write = principal.role.permits(chronicle_auth::Access::Write);
        (principal.id, principal.name, can_write)
    }
}

fn valid_participant(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn body<T: for<'de> Deserialize<'de>>(payload: web::Bytes) -> Result<T, HttpResponse> {
    if payload.len() > 64 << 10 {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "a request body of at most 64 KiB",
        ));
    }
    serde_json::from_slice(&payload).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    /// The role of those who join without being members (default editor).
    #[serde(default)]
    default_role: Option<String>,
    /// Members and roles, by token id (or participant name with auth off).
    #[serde(default)]
    members: std::collections::BTreeMap<String, String>,
    /// With authentication off: who creates it.
    #[serde(default)]
    participant: Option<String>,
}

#[tracing::instrument(name = "collab_create", skip_all)]
async fn create(req: HttpRequest, hub: web::Data<Hub>, payload: web::Bytes) -> HttpResponse {
    let b: CreateBody = match body(payload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (id_of, name, can_write) = who(&req, b.participant.as_deref());
    if !can_write {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "creating a session needs a writer or admin token",
        );
    }
    if b.name.trim().is_empty() || b.name.len() > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name: 1 to 200 bytes",
        );
    }
    if b.members.len() > 1000 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "at most 1000 members",
        );
    }
    let default_role = match b.default_role.as_deref() {
        None => Role::Editor,
        Some(r) => match Role::parse(r) {
            Some(Role::Owner) | None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "default_role: viewer or editor",
                )
            }
            Some(r) => r,
        },
    };
    let mut members = std::collections::BTreeMap::new();
    for (who, role) in &b.members {
        match Role::parse(role) {
            Some(r) if valid_participant(who) || who.len() == 16 => {
                members.insert(who.clone(), r);
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("member {who:?}: role viewer, editor or owner"),
                )
            }
        }
    }
    members.insert(id_of.clone(), Role::Owner);
    let info = SessionInfo {
        id: format!("{:016x}", rand_id()),
        name: b.name,
        owner: id_of,
        created_ms: now_ms(),
        members,
        default_role,
    };
    match hub.store.create(&info).await {
        Ok(()) => {
            tracing::info!(session = %info.id, by = %name, "collab session created");
            HttpResponse::Ok().json(json!({
                "id": info.id, "name": info.name, "owner": info.owner,
                "created_ms": info.created_ms, "ws": format!("/api/collab/ws/{}", info.id),
            }))
        }
        Err(e) => {
            let (status, message) = unavailable(e);
            error(status, code_of(status), message)
        }
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mixed with the time
    // and a counter, ids do not repeat and are not guessable in sequence.
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_i64(now_ms());
    h.finish()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    session: String,
    /// Join: the member whose role the owner sets (default: the caller).
    #[serde(default)]
    member: Option<String>,
    #[serde(default)]
    role: Option<String>,
    /// With authentication off: who asks.
    #[serde(default)]
    participant: Option<String>,
}

/// What join and leave start with: the body, who asks (and whether their
/// token may write), and the session's description at its revision.
async fn session_request(
    req: &HttpRequest,
    hub: &Hub,
    payload: web::Bytes,
) -> Result<(SessionBody, String, bool, SessionInfo, u64), HttpResponse> {
    let b: SessionBody = body(payload).await?;
    if !valid_id(&b.session) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "session: a session id (16 hex digits)",
        ));
    }
    let (me, _, can_write) = who(req, b.participant.as_deref());
    match hub.store.info(&b.session).await {
        Ok(Some((info, revision))) => Ok((b, me, can_write, info, revision)),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session {}", b.session),
        )),
        Err(e) => {
            let (s, m) = unavailable(e);
            Err(error(s, code_of(s), m))
        }
    }
}

/// Join: the caller's role in the session and where to connect; an owner
/// may set another member's role (`member`, `role`).
#[tracing::instrument(name = "collab_join", skip_all)]
async fn join(req: HttpRequest, hub: web::Data<Hub>, payload: web::Bytes) -> HttpResponse {
    let (b, me, can_write, mut info, revision) = match session_request(&req, &hub, payload).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    if let (Some(member), Some(role)) = (&b.member, &b.role) {
        if info.role_of(&me) != Role::Owner {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the session's owner sets roles",
            );
        }
        let Some(role) = Role::parse(role) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "role: viewer, editor or owner",
            );
        };
        if info.members.len() >= 1000 && !info.members.contains_key(member) {
            return error(
                StatusCode::CONFLICT,
                "conflict",
                "the session has 1000 members, the most it keeps",
            );
        }
        info.members.insert(member.clone(), role);
        if let Err(e) = hub.store.update_info(&info, revision).await {
            let (s, m) = unavailable(e);
            return error(s, code_of(s), m);
        }
        return HttpResponse::Ok()
            .json(json!({"session": info.id, "member": member, "role": role}));
    }
    let mut role = info.role_of(&me);
    if !can_write {
        role = Role::Viewer;
    }
    HttpResponse::Ok().json(json!({
        "session": info.id, "name": info.name, "role": role,
        "ws": format!("/api/collab/ws/{}", info.id),
    }))
}

/// Leave: the caller is no longer a member (an owner cannot leave).
#[tracing::instrument(name = "collab_leave", skip_all)]
async fn leave(req: HttpRequest, hub: web::Data<Hub>, payload: web::Bytes) -> HttpResponse {
    let (_, me, _, mut info, revision) = match session_request(&req, &hub, payload).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    if info.owner == me {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            "the owner cannot leave the session",
        );
    }
    if info.members.remove(&me).is_some() {
        if let Err(e) = hub.store.update_info(&info, revision).await {
            let (s, m) = unavailable(e);
            return error(s, code_of(s), m);
        }
    }
    HttpResponse::Ok().json(json!({"session": info.id, "left": true}))
}

async fn list(hub: web::Data<Hub>) -> HttpResponse {
    match hub.store.list(MAX_LISTED).await {
        Ok(sessions) => {
            let open = hub.sessions.lock().clone();
            let sessions: Vec<_> = sessions
                .into_iter()
                .map(|s| {
                    json!({"id": s.id, "name": s.name, "owner": s.owner,
                           "created_ms": s.created_ms, "open_here": open.contains_key(&s.id)})
                })
                .collect();
            HttpResponse::Ok().json(json!({ "sessions": sessions }))
        }
        Err(e) => {
            let (s, m) = unavailable(e);
            error(s, code_of(s), m)
        }
    }
}

async fn stats(hub: web::Data<Hub>) -> HttpResponse {
    let open: Vec<Addr<Session>> = hub.sessions.lock().values().cloned().collect();
    let mut sessions = Vec::new();
    for addr in open {
        if let Ok(s) = addr.send(crate::session::Stats).await {
            sessions.push(s);
        }
    }
    let participants: usize = sessions.iter().map(|s| s.participants).sum();
    HttpResponse::Ok().json(json!({
        "node": hub.node,
        "sessions_open": sessions.len(),
        "participants": participants,
        "sessions": sessions,
    }))
}

#[derive(Deserialize)]
struct SocketParams {
    session: Option<String>,
    participant: Option<String>,
    name: Option<String>,
    /// `json` (the default on /api/collab/ws) or `yjs` (the default on
    /// /api/collab/ws/<session>, where y-websocket connects).
    protocol: Option<String>,
    /// A Yjs participant that wants live results (message type 100): `1`.
    results: Option<String>,
    /// The token, for clients that cannot set a header (browsers); read by
    /// the node's authentication, ignored here.
    #[allow(dead_code)]
    access_token: Option<String>,
}

#[tracing::instrument(name = "collab_ws", skip_all)]
async fn socket(
    req: HttpRequest,
    payload: web::Payload,
    hub: web::Data<Hub>,
    path: Option<web::Path<String>>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let params = SocketParams {
        session: query.get("session").cloned(),
        participant: query.get("participant").cloned(),
        name: query.get("name").cloned(),
        protocol: query.get("protocol").cloned(),
        results: query.get("results").cloned(),
        access_token: None,
    };
    if let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) {
        if !hub.config.allowed_origins.iter().any(|a| a == origin) {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("origin {origin} is not in [features.collab] allowed_origins"),
            );
        }
    }
    let in_path = path.map(|p| p.into_inner());
    let protocol = match (params.protocol.as_deref(), in_path.is_some()) {
        (Some("yjs"), _) | (None, true) => Protocol::Yjs,
        (Some("json"), _) | (None, false) => Protocol::Json,
        (Some(other), _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("protocol {other:?}: yjs or json"),
            )
        }
    };
    let Some(id) = in_path.or(params.session) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "which session? /api/collab/ws/<id> or ?session=<id>",
        );
    };
    if !valid_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "session: a session id (16 hex digits)",
        );
    }
    if *hub.stopping.borrow() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is stopping",
        );
    }
    let (principal, token_name, can_write) = who(&req, params.participant.as_deref());
    let token = req.extensions().get::<Principal>().cloned();
    let name = params
        .name
        .filter(|n| !n.is_empty() && n.len() <= 64)
        .unwrap_or(token_name);
    let mut addr = match hub.open(&id).await {
        Ok(a) => a,
        Err((status, message)) => return error(status, code_of(status), message),
    };
    let (response, sender, receiver) = match ws::upgrade(&req, payload, MAX_FRAME) {
        Ok(parts) => parts,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("not a WebSocket upgrade: {e}"),
            )
        }
    };
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(hub.limits.outbound_queue);
    let connect = || Connect {
        conn,
        principal: principal.clone(),
        // A read-only token joins as a viewer whatever its membership says.
        max_role: if can_write { Role::Owner } else { Role::Viewer },
        results: matches!(params.results.as_deref(), Some("1" | "true")),
        name: name.clone(),
        protocol,
        tx: tx.clone(),
    };
    let mut joined = addr.send(connect()).await;
    if joined.is_err() {
        // It retired (idle) just now: the next open starts it afresh.
        addr = match hub.open(&id).await {
            Ok(a) => a,
            Err((status, message)) => return error(status, code_of(status), message),
        };
        joined = addr.send(connect()).await;
    }
    if let Err(why) = joined.unwrap_or_else(|_| Err("the session stopped".into())) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    }
    let span = info_span!("collab_connection", session = %id, conn);
    // A panic in one connection is logged and counted, not lost.
    actix_web::rt::spawn(chronicle_actor_runtime::guard_future(
        "collab",
        connection(addr, conn, sender, receiver, rx, hub.clone(), token).instrument(span),
    ));
    response
}

/// Moves frames between one participant and its session until either ends.
async fn connection(
    session: Addr<Session>,
    conn: ConnId,
    mut sender: ws::Sender,
    mut receiver: ws::Receiver,
    mut outbound: mpsc::Receiver<Outbound>,
    hub: web::Data<Hub>,
    token: Option<Principal>,
) {
    let frames_per_second = hub.config.max_frames_per_second;
    let mut stopping = hub.stopping.subscribe();
    let mut ping = tokio::time::interval(PING_EVERY);
    // A revoked or expired token ends the connection within a second.
    let mut recheck = tokio::time::interval(Duration::from_secs(1));
    let mut last_heard = tokio::time::Instant::now();
    // A token bucket: a burst of twice the rate, refilled continuously.
    let capacity = f64::from(frames_per_second) * 2.0;
    let mut tokens = capacity;
    let mut refilled = tokio::time::Instant::now();
    let reason: String = loop {
        tokio::select! {
            out = outbound.recv() => {
                let sent = match out {
                    Some(Outbound::Binary(b)) => tokio::time::timeout(SEND_TIMEOUT, sender.binary(b)).await,
                    Some(Outbound::Text(t)) => tokio::time::timeout(SEND_TIMEOUT, sender.text(t)).await,
                    Some(Outbound::Close(why)) => break why,
                    None => break "the session ended".into(),
                };
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break String::new(),
                    Err(_) => {
                        crate::metrics::DROPPED.with_label_values(&["slow"]).inc();
                        break "too slow to read".into();
                    }
                }
            }
            incoming = receiver.next() => {
                last_heard = tokio::time::Instant::now();
                let (text, bytes) = match incoming {
                    Ok(Incoming::Binary(b)) => (false, b),
                    Ok(Incoming::Text(t)) => (true, t),
                    Ok(Incoming::Ping(p)) => {
                        let _ = sender.pong(p).await;
                        continue;
                    }
                    Ok(Incoming::Pong) => continue,
                    Ok(Incoming::Close) => break String::new(),
                    Err(e) => {
                        crate::metrics::DROPPED.with_label_values(&["malformed"]).inc();
                        break format!("protocol error: {e}");
                    }
                };
                let now = tokio::time::Instant::now();
                tokens = (tokens + now.duration_since(refilled).as_secs_f64() * f64::from(frames_per_second)).min(capacity);
                refilled = now;
                if tokens < 1.0 {
                    crate::metrics::DROPPED.with_label_values(&["flood"]).inc();
                    crate::metrics::REFUSED.with_label_values(&["flood"]).inc();
                    break format!("more than {frames_per_second} messages a second");
                }
                tokens -= 1.0;
                if session.send(Frame { conn, text, bytes }).await.is_err() {
                    break "the session stopped".into();
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > CLIENT_TIMEOUT {
                    break "silent for 45 s".into();
                }
                if tokio::time::timeout(SEND_TIMEOUT, sender.ping()).await.is_err() {
                    break "too slow to read".into();
                }
            }
            _ = stopping.changed() => break "the node is stopping".into(),
            _ = recheck.tick() => {
                if let Some(who) = &token {
                    if !hub.auth.still_valid(who) {
                        crate::metrics::DROPPED.with_label_values(&["revoked"]).inc();
                        break "the token was revoked or expired".into();
                    }
                }
            }
        }
    };
    debug!(conn, reason, "collab connection ends");
    session.do_send(Disconnect { conn });
    if !reason.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(1), sender.close(&reason)).await;
    }
}

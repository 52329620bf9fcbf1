//! gavel's MCP gateway (SPEC §1–4): one MCP endpoint, `/mcp` over
//! streamable HTTP, that aggregates the configured upstream MCP servers
//! and gates every tool call, resource read and prompt.
//!
//! Tools and prompts appear as `UPSTREAM__NAME`. `tools/list` shows a
//! principal only the tools policy could let it call, and says which need
//! approval. `tools/call` becomes `Action{mcp.call, resource = upstream,
//! operation = tool, details = {args}}`; `resources/read` and
//! `prompts/get` become `mcp.read`. Allowed → forwarded; denied → a tool
//! error (for reads, a JSON-RPC error) naming the policy; needs approval →
//! held for `approvals.hold`, with progress notifications when the client
//! sent a progress token, then forwarded or refused with the request id
//! and URL. Both sides use the official Rust SDK, `rmcp`.
#![deny(missing_docs)]

mod bridge;
mod forward;
mod link;
mod rounds;
mod session;
mod upstream;
pub mod uri;

pub use bridge::bridge_stdio;
pub use upstream::{Health, Offer, Transport, Upstream};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gavel_config::McpResourceConfig;
use gavel_core::{Gate, Principal, Resource};
use gavel_identity::{AuthError, Authenticator};
use rmcp::transport::StreamableHttpService;
use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The separator between an upstream's name and its tool or prompt name.
pub const SEPARATOR: &str = "__";

/// Who called, as the `/mcp` middleware authenticated them.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub principal: Principal,
    pub source: Option<String>,
}

/// State every MCP session of the gateway shares.
pub(crate) struct Hub {
    pub gate: Gate,
    pub upstreams: Vec<Arc<Upstream>>,
    pub hold: Duration,
    pub public_url: String,
    /// `Mcp-Session-Id` → the principal that opened it and when the
    /// client last sent anything: every request that names a session,
    /// whatever its method, must come from that principal, and a session
    /// whose client is silent past the idle limit, or whose principal
    /// fell, is closed (with its upstream connections).
    session_owners: Mutex<HashMap<String, SessionOwner>>,
    /// Closes sessions; set when the `/mcp` router is built.
    sessions: std::sync::OnceLock<Arc<LocalSessionManager>>,
    /// Idle upstream connections of stateless (2026-07-28) clients: (pool
    /// key, upstream) → connections and when they were put back.
    pool: Mutex<HashMap<(String, String), Vec<PooledLink>>>,
    /// Names two upstreams both show a client (an unprefixed upstream's
    /// tool or prompt that another upstream also offers): withheld from
    /// lists and refused in calls rather than guessed.
    collisions: Mutex<Vec<String>>,
    /// Calls of 2026-07-28 clients between two of their requests.
    pub rounds: rounds::Rounds,
    /// Which lists changed at some upstream, as its supervisor heard:
    /// what `subscriptions/listen` streams (2026-07-28) relay.
    pub lists: tokio::sync::broadcast::Sender<ListKind>,
    /// Open `subscriptions/listen` streams per principal.
    listening: Arc<Mutex<HashMap<String, usize>>>,
    /// Recent calls of stateless clients, per pool key (principal and
    /// capabilities), for reviewers; bounded by [`STATELESS_CLIENTS_KEPT`].
    stateless_recent: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
}

/// Stateless clients whose recent calls are kept; past it, the map starts
/// over (reviewers then see fewer recent calls, never another's).
const STATELESS_CLIENTS_KEPT: usize = 10_000;

/// `subscriptions/listen` streams one principal may hold open.
const LISTEN_STREAMS_PER_PRINCIPAL: usize = 8;

/// One open `subscriptions/listen` stream of a principal; released when
/// dropped.
pub(crate) struct ListenSlot {
    listening: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl Drop for ListenSlot {
    fn drop(&mut self) {
        let mut listening = self.listening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = listening.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                listening.remove(&self.principal);
            }
        }
    }
}

/// One of the lists an upstream offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Tools,
    Resources,
    Prompts,
}

impl Hub {
    /// Adds `line` to the recent calls of the stateless client `key` and
    /// returns the `keep` before it.
    pub(crate) fn remember_stateless(&self, key: &str, line: String, keep: usize) -> Vec<String> {
        let mut all = self
            .stateless_recent
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if all.len() >= STATELESS_CLIENTS_KEPT && !all.contains_key(key) {
            all.clear();
        }
        let recent = all.entry(key.to_owned()).or_default();
        let before: Vec<String> = recent.iter().cloned().collect();
        recent.push_back(line);
        while recent.len() > keep {
            recent.pop_front();
        }
        before
    }

    /// A place for one more `subscriptions/listen` stream of `principal`.
    pub(crate) fn listen_slot(&self, principal: &str) -> Result<ListenSlot, String> {
        let mut listening = self.listening.lock().unwrap_or_else(|p| p.into_inner());
        let held = listening.entry(principal.to_owned()).or_default();
        if *held >= LISTEN_STREAMS_PER_PRINCIPAL {
            return Err(format!(
                "you already hold {held} subscriptions/listen streams (at most {LISTEN_STREAMS_PER_PRINCIPAL}); close one"
            ));
        }
        *held += 1;
        Ok(ListenSlot {
            listening: self.listening.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Compares the names the upstreams offer as clients see them, from
    /// the supervisors' listings, and logs any name two of them claim.
    pub(crate) fn check_names(&self) {
        let offers: Vec<(Arc<Upstream>, Arc<Offer>)> = self
            .upstreams
            .iter()
            .map(|u| (u.clone(), u.offer()))
            .collect();
        let found = colliding_names(offers.iter().map(|(u, o)| (u.as_ref(), o.as_ref())));
        let mut collisions = self.collisions.lock().unwrap_or_else(|p| p.into_inner());
        if *collisions != found {
            for name in found.iter().filter(|n| !collisions.contains(n)) {
                tracing::error!(
                    name = %name,
                    "two MCP upstreams offer {name:?} under the same name: it is withheld from clients; set prefix = true on one of them"
                );
            }
            *collisions = found;
        }
    }

    /// Names withheld because two upstreams claim them.
    pub fn collisions(&self) -> Vec<String> {
        self.collisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An idle connection of a stateless client, and since when it is idle.
type PooledLink = (Arc<link::Link>, std::time::Instant);

/// Who a session belongs to and when its client was last heard from.
struct SessionOwner {
    key: String,
    principal: Principal,
    seen: std::time::Instant,
}

/// The tool and prompt names (as clients see them) that more than one
/// upstream offers.
pub(crate) fn colliding_names<'a>(
    offers: impl Iterator<Item = (&'a Upstream, &'a Offer)>,
) -> Vec<String> {
    let mut owners: HashMap<String, std::collections::BTreeSet<&str>> = HashMap::new();
    for (upstream, offer) in offers {
        let names = offer
            .tools
            .iter()
            .map(|t| t.name.as_ref())
            .chain(offer.prompts.iter().map(|p| p.name.as_str()));
        for name in names {
            owners
                .entry(upstream.exposed(name))
                .or_default()
                .insert(upstream.name.as_str());
        }
    }
    let mut names: Vec<String> = owners
        .into_iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names
}

/// The MCP gateway: upstreams, their supervisors and the `/mcp` service.
#[derive(Clone)]
pub struct McpGateway {
    hub: Arc<Hub>,
}

impl McpGateway {
    /// Builds the gateway over the configured upstreams (not connected
    /// until [`McpGateway::start`]). Fails naming a missing secret.
    pub fn from_config(
        resources: &[McpResourceConfig],
        gate: Gate,
        hold: Duration,
        public_url: &str,
    ) -> Result<McpGateway, String> {
        let mut upstreams = Vec::new();
        for r in resources {
            let transport = Transport::from_config(r)?;
            upstreams.push(Upstream::new(
                r.name.clone(),
                Resource {
                    name: r.name.clone(),
                    kind: "mcp".into(),
                    tags: r.tags.clone(),
                },
                transport,
                r.prefix,
                (r.max_sessions, r.max_sessions_per_principal),
                r.roots.clone(),
            ));
        }
        Ok(McpGateway {
            hub: Arc::new(Hub {
                gate,
                upstreams,
                hold,
                public_url: public_url.trim_end_matches('/').to_owned(),
                session_owners: Mutex::new(HashMap::new()),
                sessions: std::sync::OnceLock::new(),
                pool: Mutex::new(HashMap::new()),
                collisions: Mutex::new(Vec::new()),
                rounds: rounds::Rounds::default(),
                lists: tokio::sync::broadcast::channel(64).0,
                listening: Arc::default(),
                stateless_recent: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether any upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.hub.upstreams.is_empty()
    }

    /// Starts one supervisor per upstream; each connects, and reconnects
    /// with backoff whenever its upstream goes away.
    pub fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = self
            .hub
            .upstreams
            .iter()
            .map(|u| tokio::spawn(u.clone().supervise(Arc::downgrade(&self.hub))))
            .collect();
        tasks.push(tokio::spawn(sweep_sessions(Arc::downgrade(&self.hub))));
        tasks
    }

    /// Each upstream's state, for `/readyz`.
    pub fn health(&self) -> Vec<Health> {
        self.hub.upstreams.iter().map(|u| u.health()).collect()
    }

    /// Tool and prompt names two upstreams both claim (withheld), for
    /// `/readyz`.
    pub fn collisions(&self) -> Vec<String> {
        self.hub.collisions()
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.hub.upstreams
    }

    /// The `/mcp` endpoint (streamable HTTP, MCP sessions with
    /// `Mcp-Session-Id`) behind bearer authentication. `allowed_hosts` are
    /// the `Host` values accepted (DNS-rebinding protection).
    pub fn router(&self, auth: Arc<Authenticator>, allowed_hosts: Vec<String>) -> axum::Router {
        let hub = self.hub.clone();
        let mut config = StreamableHttpServerConfig::default();
        config.allowed_hosts = allowed_hosts;
        // A browser page of another origin must not drive an agent's
        // session (the MCP transport's Origin rule): only gavel's own
        // origin may send one.
        config.allowed_origins = vec![origin_of(&self.hub.public_url)];
        config.sse_keep_alive = Some(Duration::from_secs(15));
        // A stateless (2026-07-28) request that is answered without
        // anything said on the way gets a plain JSON response rather than
        // an event stream (rmcp falls back to the stream when a
        // notification or request comes first).
        config.json_response = true;
        let mut sessions = LocalSessionManager::default();
        // An idle session is closed, and closing cancels its requests; a
        // held call must outlive its hold. (rmcp counts messages to the
        // client as activity too; `sweep_sessions` closes by the client's.)
        sessions.session_config.keep_alive = Some(self.hub.session_idle());
        let sessions = Arc::new(sessions);
        let _ = self.hub.sessions.set(sessions.clone());
        let service = StreamableHttpService::new(
            move || Ok(session::Session::new(hub.clone())),
            sessions,
            config,
        );
        let metadata = ProtectedResource::new(&self.hub.public_url, auth.issuer_urls());
        let protected = axum::Router::new()
            .route_service("/mcp", service)
            .layer(axum::middleware::from_fn(check_json_rpc))
            .layer(axum::middleware::from_fn_with_state(
                (auth, self.hub.clone(), metadata.clone()),
                authenticate,
            ));
        // RFC 9728: where an MCP client learns which authorization server
        // issues tokens for this endpoint (published when one is
        // configured), at the path-suffixed and the root well-known URL.
        match metadata.document() {
            Some(document) => {
                let serve = move || {
                    let document = document.clone();
                    async move { axum::Json(document) }
                };
                protected
                    .route(
                        "/.well-known/oauth-protected-resource/mcp",
                        axum::routing::get(serve.clone()),
                    )
                    .route(
                        "/.well-known/oauth-protected-resource",
                        axum::routing::get(serve),
                    )
            }
            None => protected,
        }
    }
}

/// `scheme://host:port` of a URL, the port always written: rmcp reads an
/// allowed origin without a port as any port.
fn origin_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            _ => u.origin().ascii_serialization(),
        },
        Err(_) => url.trim_end_matches('/').to_owned(),
    }
}

/// The `/mcp` endpoint as an OAuth 2.1 protected resource (the MCP
/// authorization spec): its identifier, and the authorization servers
/// (gavel's configured OpenID Connect issuers) whose tokens it takes.
#[derive(Clone)]
struct ProtectedResource {
    /// `PUBLIC_URL/mcp`: the audience a client asks its token for.
    resource: String,
    metadata_url: String,
    authorization_servers: Vec<String>,
}

impl ProtectedResource {
    fn new(public_url: &str, authorization_servers: Vec<String>) -> ProtectedResource {
        let base = public_url.trim_end_matches('/');
        ProtectedResource {
            resource: format!("{base}/mcp"),
            metadata_url: format!("{base}/.well-known/oauth-protected-resource/mcp"),
            authorization_servers,
        }
    }

    fn document(&self) -> Option<serde_json::Value> {
        if self.authorization_servers.is_empty() {
            return None;
        }
        Some(serde_json::json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "gavel MCP gateway",
        }))
    }

    /// The `WWW-Authenticate` of a 401: where the metadata is, when there
    /// is any, and whether a token was presented and refused.
    fn challenge(&self, refused_token: bool) -> String {
        let mut value = String::from("Bearer realm=\"gavel\"");
        if !self.authorization_servers.is_empty() {
            value.push_str(&format!(", resource_metadata=\"{}\"", self.metadata_url));
        }
        if refused_token {
            value.push_str(", error=\"invalid_token\"");
        }
        value
    }
}

impl Hub {
    /// How long an MCP session may stay idle: well past the longest hold.
    fn session_idle(&self) -> Duration {
        self.hold.max(Duration::from_secs(240)) + Duration::from_secs(60)
    }

    /// Whether `principal` may use session `id`; an unknown id is left to
    /// the SDK (which answers 404).
    fn session_allowed(&self, id: &str, principal: &str) -> bool {
        let mut owners = self
            .session_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match owners.get_mut(id) {
            Some(owner) if owner.key == principal => {
                owner.seen = std::time::Instant::now();
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    fn session_opened(&self, id: String, principal: Principal) {
        let mut owners = self
            .session_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        owners.insert(
            id,
            SessionOwner {
                key: link::session_key(&principal),
                principal,
                seen: std::time::Instant::now(),
            },
        );
    }

    /// A stateless client's idle connection to `upstream`, if one is pooled.
    pub(crate) fn pool_take(&self, key: &str, upstream: &str) -> Option<Arc<link::Link>> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(&(key.to_owned(), upstream.to_owned()))?;
        while let Some((link, _)) = list.pop() {
            if link.is_alive() {
                return Some(link);
            }
        }
        None
    }

    /// Puts a stateless client's connection back for its next request.
    pub(crate) fn pool_put(&self, key: &str, link: Arc<link::Link>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.entry((key.to_owned(), link.upstream.name.clone()))
            .or_default()
            .push((link, std::time::Instant::now()));
    }

    /// Ends pooled connections idle past the limit or of a fallen
    /// principal.
    fn prune_pool(&self) {
        let idle = self.session_idle();
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        for list in pool.values_mut() {
            list.retain(|(link, since)| {
                since.elapsed() < idle
                    && link.is_alive()
                    && self.gate.in_good_standing(&link.client.principal)
            });
        }
        pool.retain(|_, list| !list.is_empty());
    }

    /// Makes room for one more connection of principal `key`: ends its
    /// pooled idle connection to `upstream`, else closes its session heard
    /// from least recently (never `except`, the one asking). Clients that
    /// never end their sessions keep working within their limit. True when
    /// something was ended.
    pub(crate) async fn evict_for(&self, key: &str, upstream: &str, except: Option<&str>) -> bool {
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            for ((_, up), list) in pool.iter_mut() {
                if up != upstream {
                    continue;
                }
                if let Some(i) = list
                    .iter()
                    .position(|(l, _)| link::session_key(&l.client.principal) == key)
                {
                    list.remove(i);
                    return true;
                }
            }
        }
        let oldest = {
            let owners = self
                .session_owners
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            owners
                .iter()
                .filter(|(id, o)| o.key == key && Some(id.as_str()) != except)
                .min_by_key(|(_, o)| o.seen)
                .map(|(id, _)| id.clone())
        };
        let (Some(id), Some(manager)) = (oldest, self.sessions.get().cloned()) else {
            return false;
        };
        use rmcp::transport::streamable_http_server::session::SessionManager as _;
        let session: rmcp::transport::common::server_side_http::SessionId = id.as_str().into();
        let _ = manager.close_session(&session).await;
        self.session_closed(&id);
        tracing::info!(session = %id, "MCP session closed to make room for a newer one of the same principal");
        true
    }

    /// Sessions to close: silent past the idle limit, or of a principal
    /// no longer in good standing.
    fn sessions_to_close(&self) -> Vec<String> {
        let idle = self.session_idle();
        let owners = self
            .session_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        owners
            .iter()
            .filter(|(_, o)| o.seen.elapsed() >= idle || !self.gate.in_good_standing(&o.principal))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn session_closed(&self, id: &str) {
        self.session_owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Authenticates every `/mcp` request by its bearer token; the principal
/// travels to the session in the request's extensions. A request that
/// names a session (`Mcp-Session-Id`), whatever its method (POST, the GET
/// stream, DELETE), must come from the principal that opened it.
async fn authenticate(
    State((auth, hub, protected)): State<(Arc<Authenticator>, Arc<Hub>, ProtectedResource)>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::to_owned);
    let Some(token) = token else {
        return unauthorized(
            &protected.challenge(false),
            "missing bearer token: send Authorization: Bearer <gavel token>",
        );
    };
    // A token the client obtained for this endpoint (audience
    // PUBLIC_URL/mcp) or for gavel as a whole; never passed upstream.
    let principal = match auth
        .authenticate_for_resource(&token, &protected.resource)
        .await
    {
        Ok((p, _)) => p,
        Err(AuthError::Internal(e)) => {
            tracing::error!(error = %e, "authenticating an MCP request failed");
            return (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(jsonrpc_error(-32603, "gavel could not check the token")),
            )
                .into_response();
        }
        Err(e) => return unauthorized(&protected.challenge(true), &e.to_string()),
    };
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let who = link::session_key(&principal);
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &session
        && !hub.session_allowed(id, &who)
    {
        return (
            http::StatusCode::FORBIDDEN,
            axum::Json(jsonrpc_error(
                -32600,
                "gavel: this MCP session belongs to another principal",
            )),
        )
            .into_response();
    }
    let closing = request.method() == http::Method::DELETE;
    request.extensions_mut().insert(Caller {
        principal: principal.clone(),
        source,
    });
    let response = next.run(request).await;
    match (&session, response.headers().get(SESSION_HEADER)) {
        (None, Some(opened)) if response.status().is_success() => {
            if let Ok(id) = opened.to_str() {
                hub.session_opened(id.to_owned(), principal);
            }
        }
        (Some(id), _) if closing && response.status().is_success() => hub.session_closed(id),
        _ => {}
    }
    response
}

pub(crate) const SESSION_HEADER: &str = "mcp-session-id";

/// Every few seconds, closes the sessions whose client went silent past
/// the idle limit or whose principal was revoked or expired: their
/// upstream connections (child processes) end with them.
async fn sweep_sessions(hub: std::sync::Weak<Hub>) {
    use rmcp::transport::streamable_http_server::session::SessionManager as _;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        hub.prune_pool();
        hub.rounds.prune();
        let Some(manager) = hub.sessions.get().cloned() else {
            continue;
        };
        for id in hub.sessions_to_close() {
            let session: rmcp::transport::common::server_side_http::SessionId = id.as_str().into();
            if let Err(e) = manager.close_session(&session).await {
                tracing::debug!(error = %e, "closing an MCP session");
            }
            hub.session_closed(&id);
            tracing::info!(session = %id, "MCP session closed (idle client or principal no longer in good standing)");
        }
    }
}

fn jsonrpc_error(code: i64, message: &str) -> serde_json::Value {
    jsonrpc_error_for(serde_json::Value::Null, code, message)
}

fn jsonrpc_error_for(id: serde_json::Value, code: i64, message: &str) -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    })
}

/// The largest JSON-RPC message `/mcp` accepts (the SDK's own limit).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The requests of the MCP revisions gavel serves; any other method is
/// unknown (-32601), whatever its params.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
];

/// Answers what is not one well-formed JSON-RPC 2.0 message with JSON-RPC's
/// own error codes (-32700 parse error, -32600 invalid request, -32602
/// invalid params), before the SDK sees it: the SDK would answer an HTTP
/// error without a JSON-RPC body.
async fn check_json_rpc(request: Request, next: Next) -> Response {
    if request.method() != http::Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_MESSAGE).await {
        Ok(b) => b,
        Err(_) => {
            return bad_message(
                serde_json::Value::Null,
                -32600,
                &format!(
                    "Invalid Request: the body is unreadable or larger than {MAX_MESSAGE} bytes"
                ),
            );
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return bad_message(
                serde_json::Value::Null,
                -32700,
                &format!("Parse error: {e}"),
            );
        }
    };
    // A key twice in one object is read one way here and possibly another
    // way by a client library or an upstream: refused, not guessed.
    if let Err(e) = serde_json::from_slice::<UniqueKeys>(&bytes) {
        return bad_message(
            serde_json::Value::Null,
            -32600,
            &format!("Invalid Request: {e}"),
        );
    }
    let id = value
        .get("id")
        .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let Some(object) = value.as_object() else {
        return bad_message(
            id,
            -32600,
            "Invalid Request: expected one JSON-RPC 2.0 object (MCP has no batches)",
        );
    };
    if object.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0") {
        return bad_message(id, -32600, "Invalid Request: \"jsonrpc\" must be \"2.0\"");
    }
    if let Some(method) = object.get("method") {
        if !method.is_string() {
            return bad_message(id, -32600, "Invalid Request: \"method\" must be a string");
        }
        if object.contains_key("id") && id.is_null() {
            return bad_message(
                id,
                -32600,
                "Invalid Request: \"id\" must be a string or an integer",
            );
        }
    }
    let method = object.get("method").and_then(|m| m.as_str());
    if let Err(why) = headers_agree(&parts.headers, method, object.get("params")) {
        return bad_message(id, -32020, &format!("Header mismatch: {why}"));
    }
    let stateless = names_stateless_revision(object.get("params"));
    if stateless && parts.headers.contains_key(SESSION_HEADER) {
        return bad_message(
            id,
            -32600,
            "Invalid Request: a request of protocol revision 2026-07-28 has no session; send it without Mcp-Session-Id",
        );
    }
    if let Some(m) = method
        && REMOVED_IN_STATELESS.contains(&m)
        && stateless
    {
        return (
            http::StatusCode::NOT_FOUND,
            axum::Json(jsonrpc_error_for(
                id,
                -32601,
                &format!("Method not found: {m} is not part of protocol revision 2026-07-28"),
            )),
        )
            .into_response();
    }
    match serde_json::from_value::<rmcp::model::ClientJsonRpcMessage>(value.clone()) {
        // The SDK reads a request it cannot type as a custom one: for a
        // method MCP defines, that means its params are wrong.
        Ok(rmcp::model::JsonRpcMessage::Request(r))
            if matches!(r.request, rmcp::model::ClientRequest::CustomRequest(_))
                && method.is_some_and(|m| KNOWN_METHODS.contains(&m)) =>
        {
            return bad_message(id, -32602, "Invalid params for this method");
        }
        Ok(_) => {}
        Err(e) => {
            let (code, what) = match method {
                Some(m) if KNOWN_METHODS.contains(&m) => (-32602, "Invalid params"),
                Some(_) => (-32601, "Method not found"),
                None => (-32600, "Invalid Request"),
            };
            return bad_message(id, code, &format!("{what}: {e}"));
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Methods of the session revisions that the stateless 2026-07-28
/// revision removed: a request of that revision naming one is answered
/// 404 with -32601, as the revision says.
const REMOVED_IN_STATELESS: &[&str] = &[
    "initialize",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Whether a request's own `_meta` names the 2026-07-28 revision or a
/// later one.
fn names_stateless_revision(params: Option<&serde_json::Value>) -> bool {
    params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
        .and_then(|v| v.as_str())
        .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28.as_str())
}

/// Whether the `Mcp-Method` and `Mcp-Name` headers a client supplied (the
/// 2026-07-28 revision has them; a proxy may route on them) say what the
/// body says, whatever protocol revision the request names. gavel judges
/// the body; a header that says otherwise is refused, never believed.
fn headers_agree(
    headers: &http::HeaderMap,
    method: Option<&str>,
    params: Option<&serde_json::Value>,
) -> Result<(), String> {
    let header = |name: &str| -> Result<Option<String>, String> {
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(format!("{name} is sent more than once"));
        }
        let text = first
            .to_str()
            .map_err(|_| format!("{name} is not visible ASCII"))?;
        match text
            .strip_prefix("=?base64?")
            .and_then(|inner| inner.strip_suffix("?="))
        {
            Some(inner) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(inner)
                    .map_err(|_| format!("{name} is not valid Base64"))?;
                String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| format!("{name} is not UTF-8"))
            }
            None => Ok(Some(text.to_owned())),
        }
    };
    if let Some(said) = header("mcp-method")?
        && Some(said.as_str()) != method
    {
        return Err(format!(
            "Mcp-Method says {said:?} but the body's method is {:?}",
            method.unwrap_or("")
        ));
    }
    if let Some(said) = header("mcp-name")? {
        let key = match method {
            Some("tools/call" | "prompts/get") => "name",
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => "uri",
            _ => return Err("Mcp-Name is sent with a method that names nothing".into()),
        };
        let body = params
            .and_then(|p| p.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if said != body {
            return Err(format!(
                "Mcp-Name says {said:?} but the body's {key} is {body:?}"
            ));
        }
    }
    Ok(())
}

fn bad_message(id: serde_json::Value, code: i64, message: &str) -> Response {
    (
        http::StatusCode::BAD_REQUEST,
        axum::Json(jsonrpc_error_for(id, code, message)),
    )
        .into_response()
}

fn unauthorized(challenge: &str, message: &str) -> Response {
    (
        http::StatusCode::UNAUTHORIZED,
        [(http::header::WWW_AUTHENTICATE, challenge.to_owned())],
        axum::Json(jsonrpc_error(-32001, &format!("gavel: {message}"))),
    )
        .into_response()
}

/// A JSON document in which no object has the same key twice: reading one
/// fails on the first duplicate, naming it.
#[derive(Debug)]
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UniqueKeys, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<UniqueKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
        }
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod unique_keys_tests {
    use super::UniqueKeys;

    #[test]
    fn a_key_twice_in_any_object_is_refused() {
        for ok in [
            r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}"#,
            "[1,2]",
            "null",
        ] {
            assert!(serde_json::from_str::<UniqueKeys>(ok).is_ok(), "{ok}");
        }
        for twice in [
            r#"{"method":"tools/call","method":"ping"}"#,
            r#"{"params":{"name":"a","name":"b"}}"#,
            r#"[{"x":{"y":[{"k":1,"k":2}]}}]"#,
        ] {
            let e = serde_json::from_str::<UniqueKeys>(twice).unwrap_err();
            assert!(e.to_string().contains("appears twice"), "{twice}: {e}");
        }
    }
}

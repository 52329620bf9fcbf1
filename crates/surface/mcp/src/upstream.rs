//! One upstream MCP server: how to reach it, a supervisor that keeps a
//! connection of gavel's own up (restarting with backoff) to report its
//! health and what it offers, and the limit on client sessions there.
//! Nothing a client asks travels over the supervisor's connection: each
//! client session has its own (`link.rs`).

use crate::{Hub, ListKind};
use gavel_config::McpResourceConfig;
use gavel_core::Resource;
use rmcp::ClientHandler;
use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, Prompt, ProtocolVersion,
    Resource as McpResource, ResourceTemplate, ServerNotification, SubscriptionFilter, Tool,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer, RoleClient, RunningService,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// Which MCP lifecycle a connection to an upstream asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generation {
    /// `initialize` and a session (2025-11-25).
    Session,
    /// `server/discover` and stateless requests (2026-07-28) when the
    /// upstream offers them, else a session.
    PreferStateless,
}

/// The first pause before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// How long connecting and listing may take before the attempt counts as
/// failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How gavel reaches an upstream. Its `Debug` leaves out environment
/// values and the bearer token.
#[derive(Clone)]
pub enum Transport {
    /// A child process spoken to over stdio.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// The child's whole environment (nothing else is inherited).
        env: Vec<(String, String)>,
        /// Working directory.
        cwd: Option<std::path::PathBuf>,
    },
    /// Streamable HTTP.
    Http {
        /// Endpoint URL.
        url: String,
        /// Bearer token sent upstream (never logged).
        bearer: Option<String>,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Command { argv, env, cwd } => f
                .debug_struct("Command")
                .field("argv", argv)
                .field("env", &env.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .field("cwd", cwd)
                .finish(),
            Transport::Http { url, bearer } => f
                .debug_struct("Http")
                .field("url", url)
                .field("bearer", &bearer.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl Transport {
    /// The transport of a `[[resources.mcp]]` entry, reading the secrets it
    /// names from gavel's environment. Fails naming the missing variable.
    pub fn from_config(c: &McpResourceConfig) -> Result<Transport, String> {
        if let Some(argv) = &c.command {
            let mut env: Vec<(String, String)> = Vec::new();
            for name in &c.inherit_env {
                if let Ok(v) = std::env::var(name) {
                    env.push((name.clone(), v));
                }
            }
            for (child, ours) in &c.env_from {
                let v = std::env::var(ours).map_err(|_| {
                    format!(
                        "resource {}: env_from.{child} names ${ours}, which is not set",
                        c.name
                    )
                })?;
                env.push((child.clone(), v));
            }
            for (k, v) in &c.env {
                env.push((k.clone(), v.clone()));
            }
            return Ok(Transport::Command {
                argv: argv.clone(),
                env,
                cwd: c.cwd.clone(),
            });
        }
        let url = c
            .url
            .clone()
            .ok_or_else(|| format!("resource {}: needs command or url", c.name))?;
        let bearer = match &c.bearer_token_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!(
                    "resource {}: bearer_token_env names ${var}, which is not set",
                    c.name
                )
            })?),
            None => None,
        };
        Ok(Transport::Http { url, bearer })
    }
}

/// One client session's place at an upstream, counted against its limits
/// while it lives.
pub(crate) struct SessionSlot {
    holders: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    principal: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = holders.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                holders.remove(&self.principal);
            }
        }
    }
}

/// What an upstream offers, as last listed.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// Its tools, unprefixed.
    pub tools: Vec<Tool>,
    /// Its resources.
    pub resources: Vec<McpResource>,
    /// Its resource templates.
    pub templates: Vec<ResourceTemplate>,
    /// Its prompts, unprefixed.
    pub prompts: Vec<Prompt>,
}

/// The supervisor's view of an upstream, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// The resource name.
    pub name: String,
    /// Connected and listed.
    pub up: bool,
    /// Connections made so far (1 + restarts).
    pub connects: u64,
    /// Why the last attempt or connection ended, if it did.
    pub last_error: Option<String>,
    /// Client sessions with a connection of their own to it.
    pub sessions: usize,
}

#[derive(Default)]
struct State {
    peer: Option<Peer<RoleClient>>,
    offer: Arc<Offer>,
    connects: u64,
    last_error: Option<String>,
}

/// One upstream MCP server.
pub struct Upstream {
    /// The resource name (the tool and prompt prefix when `prefix`).
    pub name: String,
    /// The resource as policy sees it.
    pub resource: Resource,
    /// Whether its tools and prompts are shown as `NAME__TOOL`.
    pub prefix: bool,
    /// The most client sessions it serves at once.
    pub max_sessions: usize,
    /// The most of them one principal holds.
    pub max_sessions_per_principal: usize,
    /// What gavel answers when it asks for roots (from the configuration).
    pub roots: Vec<String>,
    pub(crate) session_slots: Arc<tokio::sync::Semaphore>,
    /// Principal (qualified id) → connections it holds now.
    holders: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    transport: Transport,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl Upstream {
    /// An upstream that is not connected yet.
    pub fn new(
        name: String,
        resource: Resource,
        transport: Transport,
        prefix: bool,
        limits: (usize, usize),
        roots: Vec<String>,
    ) -> Arc<Upstream> {
        let (max_sessions, max_sessions_per_principal) = limits;
        Arc::new(Upstream {
            name,
            resource,
            prefix,
            max_sessions,
            max_sessions_per_principal,
            roots,
            session_slots: Arc::new(tokio::sync::Semaphore::new(max_sessions)),
            holders: Arc::default(),
            transport,
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Connects `handler` to the upstream as an MCP client: a child
    /// process with its environment (its stderr goes to gavel's log, line
    /// by line), or a streamable HTTP session with the configured bearer.
    /// The supervisor and every client session connect the same way.
    ///
    /// `generation` says which lifecycle to ask for: a client of the
    /// stateless 2026-07-28 revision is served by an upstream connection
    /// of that revision where the upstream offers it (`server/discover`,
    /// falling back to `initialize`), so that what only that revision says
    /// (`input_required` results) reaches it; everyone else gets a session
    /// (`initialize`), over which the upstream's own requests and
    /// notifications travel.
    pub(crate) async fn connect_with<H: ClientHandler + Clone>(
        &self,
        handler: H,
        generation: Generation,
    ) -> Result<RunningService<RoleClient, H>, String> {
        match generation {
            Generation::PreferStateless => {
                let lifecycle = ClientLifecycleMode::Auto {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    legacy_version: Some(ProtocolVersion::V_2025_11_25),
                };
                self.connect_once(handler, lifecycle).await
            }
            // A session where the upstream has one; an upstream that
            // speaks only 2026-07-28 refuses `initialize`, and is then
            // spoken to in its own revision (a new connection).
            Generation::Session => {
                match self
                    .connect_once(handler.clone(), ClientLifecycleMode::Initialize)
                    .await
                {
                    Ok(running) => Ok(running),
                    Err(refused) => {
                        let lifecycle = ClientLifecycleMode::Discover {
                            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                        };
                        self.connect_once(handler, lifecycle)
                            .await
                            .map_err(|_| refused)
                    }
                }
            }
        }
    }

    async fn connect_once<H: ClientHandler>(
        &self,
        handler: H,
        lifecycle: ClientLifecycleMode,
    ) -> Result<RunningService<RoleClient, H>, String> {
        let running = match &self.transport {
            Transport::Command { argv, env, cwd } => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]).env_clear().envs(env.iter().cloned());
                if let Some(dir) = cwd {
                    cmd.current_dir(dir);
                }
                let (child, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start {:?}: {e}", argv[0]))?;
                if let Some(stderr) = stderr {
                    let name = self.name.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::debug!(upstream = %name, "{line}");
                        }
                    });
                }
                handler.serve_with_lifecycle(child, lifecycle).await
            }
            Transport::Http { url, bearer } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(token) = bearer {
                    config = config.auth_header(token.clone());
                }
                handler
                    .serve_with_lifecycle(
                        StreamableHttpClientTransport::from_config(config),
                        lifecycle,
                    )
                    .await
            }
        };
        running.map_err(|e| format!("initialize failed: {e}"))
    }

    /// Connections `principal` holds here now.
    pub(crate) fn held_by(&self, principal: &str) -> usize {
        self.holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(principal)
            .copied()
            .unwrap_or(0)
    }

    /// A slot for one more client session of `principal`, within both
    /// limits; released when the slot is dropped.
    pub(crate) fn take_slot(&self, principal: &str) -> Result<SessionSlot, String> {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        let held = holders.get(principal).copied().unwrap_or(0);
        if held >= self.max_sessions_per_principal {
            return Err(format!(
                "you already hold {held} sessions at upstream {} (at most {} per principal); end one (DELETE your MCP session) or try again later",
                self.name, self.max_sessions_per_principal
            ));
        }
        let permit = self.session_slots.clone().try_acquire_owned().map_err(|_| {
            format!(
                "upstream {} already serves its limit of {} client sessions; try again when one ends",
                self.name, self.max_sessions
            )
        })?;
        holders.insert(principal.to_owned(), held + 1);
        Ok(SessionSlot {
            holders: self.holders.clone(),
            principal: principal.to_owned(),
            _permit: permit,
        })
    }

    /// The name a client sees for one of its tools or prompts.
    pub fn exposed(&self, name: &str) -> String {
        if self.prefix {
            format!("{}{}{name}", self.name, crate::SEPARATOR)
        } else {
            name.to_owned()
        }
    }

    /// The upstream's own name for `exposed`, if `exposed` is one of its
    /// names' form.
    pub fn own_name<'a>(&self, exposed: &'a str) -> Option<&'a str> {
        if self.prefix {
            exposed
                .strip_prefix(self.name.as_str())
                .and_then(|rest| rest.strip_prefix(crate::SEPARATOR))
        } else {
            Some(exposed)
        }
    }

    /// Client sessions connected to it now.
    pub fn sessions(&self) -> usize {
        self.max_sessions - self.session_slots.available_permits()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervisor's live connection, if there is one.
    fn peer(&self) -> Option<Peer<RoleClient>> {
        self.state().peer.clone()
    }

    /// Whether the supervisor's connection is up.
    pub fn is_up(&self) -> bool {
        self.peer().is_some()
    }

    /// What it offers (empty while it is down).
    pub fn offer(&self) -> Arc<Offer> {
        self.state().offer.clone()
    }

    /// For `/readyz`.
    pub fn health(&self) -> Health {
        let s = self.state();
        Health {
            name: self.name.clone(),
            up: s.peer.is_some(),
            connects: s.connects,
            last_error: s.last_error.clone(),
            sessions: self.max_sessions - self.session_slots.available_permits(),
        }
    }

    /// Waits until the upstream is connected or `timeout` passes.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.peer().is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.peer().is_some();
            }
        }
    }

    fn set_down(&self, why: String) {
        let mut s = self.state();
        s.peer = None;
        s.offer = Arc::new(Offer::default());
        s.last_error = Some(why);
        drop(s);
        self.changed.notify_waiters();
    }

    /// Keeps a connection up for as long as the gateway runs: connects,
    /// lists, waits for the connection to end, and starts over with
    /// exponential backoff.
    pub(crate) async fn supervise(self: Arc<Self>, hub: Weak<Hub>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(hub.clone())).await {
                Ok(Ok(running)) => {
                    tracing::info!(upstream = %self.name, "MCP upstream connected");
                    if let Some(hub) = hub.upgrade() {
                        hub.check_names();
                    }
                    let why = match running.waiting().await {
                        Ok(reason) => format!("connection ended: {reason:?}"),
                        Err(e) => format!("connection task failed: {e}"),
                    };
                    tracing::warn!(upstream = %self.name, reason = %why, "MCP upstream went away; restarting");
                    metrics::counter!("gavel_mcp_upstream_restarts_total", "upstream" => self.name.clone()).increment(1);
                    self.set_down(why);
                    if started.elapsed() >= STABLE {
                        backoff = MIN_BACKOFF;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %self.name, error = %e, "cannot connect to MCP upstream");
                    self.set_down(e);
                }
                Err(_) => {
                    let why = format!("no answer within {}s", CONNECT_TIMEOUT.as_secs());
                    tracing::warn!(upstream = %self.name, error = %why, "cannot connect to MCP upstream");
                    self.set_down(why);
                }
            }
            if hub.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(
        self: &Arc<Self>,
        hub: Weak<Hub>,
    ) -> Result<RunningService<RoleClient, Events>, String> {
        let events = Events {
            upstream: Arc::downgrade(self),
            hub,
        };
        // The newest revision the upstream speaks: an upstream that speaks
        // only 2026-07-28 is supervised too, and one that speaks both
        // announces list changes of its stateless side on a
        // `subscriptions/listen` stream.
        let running = self
            .connect_with(events.clone(), Generation::PreferStateless)
            .await?;
        let peer = running.peer().clone();
        let offer = list(&peer).await?;
        if peer
            .peer_info()
            .is_some_and(|i| i.protocol_version >= ProtocolVersion::V_2026_07_28)
        {
            tokio::spawn(listen_for_list_changes(peer.clone(), events));
        }
        {
            let mut s = self.state();
            s.peer = Some(peer);
            s.offer = Arc::new(offer);
            s.connects += 1;
            s.last_error = None;
        }
        self.changed.notify_waiters();
        Ok(running)
    }

    /// Lists again after the upstream said a list changed.
    async fn refresh(&self) -> Result<(), String> {
        let Some(peer) = self.peer() else {
            return Ok(());
        };
        let offer = list(&peer).await?;
        self.state().offer = Arc::new(offer);
        Ok(())
    }
}

pub(crate) async fn list(peer: &Peer<RoleClient>) -> Result<Offer, String> {
    let caps = peer
        .peer_info()
        .map(|i| i.capabilities.clone())
        .unwrap_or_default();
    let mut offer = Offer::default();
    if caps.tools.is_some() {
        offer.tools = peer
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
    }
    if caps.resources.is_some() {
        offer.resources = peer
            .list_all_resources()
            .await
            .map_err(|e| format!("resources/list failed: {e}"))?;
        offer.templates = peer
            .list_all_resource_templates()
            .await
            .map_err(|e| format!("resources/templates/list failed: {e}"))?;
    }
    if caps.prompts.is_some() {
        offer.prompts = peer
            .list_all_prompts()
            .await
            .map_err(|e| format!("prompts/list failed: {e}"))?;
    }
    Ok(offer)
}

/// The supervisor as an MCP client of one upstream: re-lists when the
/// upstream's lists change. It claims no client capabilities: it asks
/// nothing on anyone's behalf.
#[derive(Clone)]
pub(crate) struct Events {
    upstream: Weak<Upstream>,
    hub: Weak<Hub>,
}

/// Relays the list changes a 2026-07-28 upstream announces on its
/// `subscriptions/listen` stream, as a session upstream's notifications
/// are, until the stream or the connection ends.
async fn listen_for_list_changes(peer: Peer<RoleClient>, events: Events) {
    let mut filter = SubscriptionFilter::new();
    filter.tools_list_changed = Some(true);
    filter.resources_list_changed = Some(true);
    filter.prompts_list_changed = Some(true);
    let mut subscription = match peer.listen(filter).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "the upstream offers no subscriptions/listen stream");
            return;
        }
    };
    while let Ok(Some(notification)) = subscription.next().await {
        let kind = match notification {
            ServerNotification::ToolListChangedNotification(_) => ListKind::Tools,
            ServerNotification::ResourceListChangedNotification(_) => ListKind::Resources,
            ServerNotification::PromptListChangedNotification(_) => ListKind::Prompts,
            _ => continue,
        };
        events.relist(kind).await;
    }
}

impl Events {
    async fn relist(&self, changed: ListKind) {
        let (Some(upstream), Some(hub)) = (self.upstream.upgrade(), self.hub.upgrade()) else {
            return;
        };
        if let Err(e) = upstream.refresh().await {
            tracing::warn!(upstream = %upstream.name, error = %e, "re-listing failed");
            return;
        }
        hub.check_names();
        // Nobody listening is normal.
        let _ = hub.lists.send(changed);
    }
}

impl ClientHandler for Events {
    fn get_info(&self) -> ClientConfig {
        // The session lifecycle (initialize, list_changed notifications on
        // the connection) is what gavel relays; the stateless 2026-07-28
        // lifecycle is not negotiated upstream.
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("gavel", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relist(ListKind::Tools).await;
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relist(ListKind::Resources).await;
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relist(ListKind::Prompts).await;
    }
}

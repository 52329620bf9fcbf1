//! A client session's own connections to the upstreams. Every MCP session
//! a client opens at gavel gets, per upstream, a connection of its own
//! (a child process for a command upstream, an MCP session for an HTTP
//! one), so that whatever the upstream keeps per session (log level,
//! subscriptions, roots, pending sampling or elicitation) belongs to
//! exactly one client, and whatever it asks of a client reaches that
//! client and no other.
//!
//! The connection is private to this module and to `forward.rs`: a
//! session reaches it only through a [`Forwarder`], whose calls need the
//! gate's [`Permitted`](gavel_core::Permitted).

// Sampling, roots and logging are deprecated in the 2026-07-28 revision
// but live in the revisions gavel serves; a faithful relay carries them.
#![allow(deprecated)]

use crate::forward::Forwarder;
use crate::upstream::{Generation, Offer, SessionSlot, Upstream, list};
use gavel_core::{Action, ActionClass, Gate, Principal, Resource};
use rmcp::model::{
    CancelledNotificationParam, ClientCapabilities, ClientConfig, ClientResult,
    CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult, ElicitRequest,
    ElicitRequestParams, ElicitResult, GetExtensions, Implementation, ListRootsResult,
    LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, RequestId, ResourceUpdatedNotificationParam, Root, RootsCapabilities,
    ServerRequest, SetLevelRequestParams, SubscribeRequestParams,
};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, OriginatingRequestId, Peer, PeerRequestOptions,
    RequestContext, RoleClient, RoleServer, RunningServiceCancellationToken,
};
use rmcp::{ClientHandler, ErrorData as McpError};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long connecting to an upstream and listing it may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The principal a session belongs to, as one key: who it is and for
/// whom it acts (a delegated agent acting for another human is another
/// session owner).
pub(crate) fn session_key(p: &Principal) -> String {
    match p.on_behalf_of() {
        Some(human) => format!("{} for human:{}", p.qualified_id(), human.0),
        None => p.qualified_id(),
    }
}

/// The client side of one session, as its upstream connections see it.
pub(crate) struct Client {
    /// Where requests and notifications for this client go: the session's
    /// peer, or for a stateless (2026-07-28) client the current request's.
    peer: Mutex<Peer<RoleServer>>,
    /// Who opened the session.
    pub principal: Principal,
    /// What the client said it can do (sampling, elicitation, roots);
    /// each upstream connection claims exactly this.
    pub capabilities: ClientCapabilities,
    pub gate: Gate,
}

impl Client {
    pub(crate) fn new(
        peer: Peer<RoleServer>,
        principal: Principal,
        capabilities: ClientCapabilities,
        gate: Gate,
    ) -> Client {
        Client {
            peer: Mutex::new(peer),
            principal,
            capabilities,
            gate,
        }
    }

    pub(crate) fn peer(&self) -> Peer<RoleServer> {
        lock(&self.peer).clone()
    }

    /// A pooled connection now serves another request of the same client.
    pub(crate) fn set_peer(&self, peer: Peer<RoleServer>) {
        *lock(&self.peer) = peer;
    }

    fn in_good_standing(&self) -> bool {
        self.gate.in_good_standing(&self.principal)
    }
}

/// Calls of this session in flight at one upstream: gavel's request id
/// there → the client's request and progress token.
#[derive(Default)]
pub(crate) struct Calls {
    by_upstream_id: HashMap<RequestId, Call>,
}

#[derive(Clone)]
struct Call {
    /// Progress notifications of this call being relayed right now.
    relaying: Arc<std::sync::atomic::AtomicUsize>,
    client_request: RequestId,
    /// The token rmcp put on the upstream request.
    upstream_token: ProgressToken,
    /// The token the client chose, if it asked for progress.
    client_token: Option<ProgressToken>,
}

/// Removes a call from [`Calls`] when it ends, however it ends.
pub(crate) struct CallGuard {
    calls: Arc<Mutex<Calls>>,
    id: RequestId,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        lock(&self.calls).by_upstream_id.remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session's connection to one upstream.
pub(crate) struct Link {
    pub upstream: Arc<Upstream>,
    /// The client it serves.
    pub client: Arc<Client>,
    peer: Peer<RoleClient>,
    stop: Mutex<Option<RunningServiceCancellationToken>>,
    offer: Arc<Mutex<Arc<Offer>>>,
    calls: Arc<Mutex<Calls>>,
    /// URIs this session subscribed to here: updates of others are not
    /// relayed.
    subscribed: Arc<Mutex<BTreeSet<String>>>,
    /// Counts against the upstream's limits of client sessions.
    _slot: SessionSlot,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the connection (and a command upstream's child process) now
        // rather than whenever the runtime gets to it.
        if let Some(stop) = lock(&self.stop).take() {
            stop.cancel();
        }
    }
}

impl Link {
    /// Connects `client`'s own session to `upstream` and lists what it
    /// offers there. Fails when the upstream has no free slot or cannot be
    /// reached.
    pub(crate) async fn open(
        upstream: Arc<Upstream>,
        client: Arc<Client>,
        level: Option<LoggingLevel>,
        generation: Generation,
    ) -> Result<Arc<Link>, String> {
        let slot = upstream.take_slot(&session_key(&client.principal))?;
        let offer = Arc::new(Mutex::new(Arc::new(Offer::default())));
        let calls = Arc::new(Mutex::new(Calls::default()));
        let subscribed = Arc::new(Mutex::new(BTreeSet::new()));
        let events = LinkEvents {
            upstream: upstream.name.clone(),
            resource: upstream.resource.clone(),
            roots: upstream.roots.clone(),
            client: client.clone(),
            calls: calls.clone(),
            offer: offer.clone(),
            subscribed: subscribed.clone(),
        };
        let running =
            tokio::time::timeout(CONNECT_TIMEOUT, upstream.connect_with(events, generation))
                .await
                .map_err(|_| {
                    format!(
                        "upstream {} did not answer within {}s",
                        upstream.name,
                        CONNECT_TIMEOUT.as_secs()
                    )
                })??;
        let listed = tokio::time::timeout(CONNECT_TIMEOUT, list(running.peer()))
            .await
            .map_err(|_| format!("upstream {} did not list in time", upstream.name))??;
        *lock(&offer) = Arc::new(listed);
        let logs = running
            .peer()
            .peer_info()
            .is_some_and(|i| i.capabilities.logging.is_some());
        if let Some(level) = level
            && logs
        {
            #[allow(deprecated)]
            let set = running
                .peer()
                .set_level(SetLevelRequestParams::new(level))
                .await;
            if let Err(e) = set {
                tracing::debug!(upstream = %upstream.name, error = %e, "logging/setLevel failed");
            }
        }
        let peer = running.peer().clone();
        let stop = running.cancellation_token();
        let events_client = client.clone();
        // When the upstream side ends (a child that died, an HTTP session
        // that expired), the client hears that its lists changed; its next
        // request opens a new connection.
        let name = upstream.name.clone();
        tokio::spawn(async move {
            let reason = running.waiting().await;
            if !matches!(reason, Ok(rmcp::service::QuitReason::Cancelled)) {
                tracing::info!(upstream = %name, ?reason, "a client session's upstream connection ended");
                let _ = client.peer().notify_tool_list_changed().await;
                let _ = client.peer().notify_resource_list_changed().await;
                let _ = client.peer().notify_prompt_list_changed().await;
            }
        });
        Ok(Arc::new(Link {
            upstream,
            client: events_client,
            peer,
            stop: Mutex::new(Some(stop)),
            offer,
            calls,
            subscribed,
            _slot: slot,
        }))
    }

    /// Whether the connection still stands.
    pub(crate) fn is_alive(&self) -> bool {
        !self.peer.is_transport_closed()
    }

    /// What the upstream offers this session, as last listed.
    pub(crate) fn offer(&self) -> Arc<Offer> {
        lock(&self.offer).clone()
    }

    /// The handle a session forwards admitted calls through.
    pub(crate) fn forwarder(&self) -> Forwarder {
        Forwarder::new(self.peer.clone(), self.calls.clone())
    }

    /// Tells the upstream the level of logs this client wants. Not gated:
    /// it changes only what this session hears.
    pub(crate) async fn set_level(&self, level: LoggingLevel) -> Result<(), McpError> {
        #[allow(deprecated)]
        self.peer
            .set_level(SetLevelRequestParams::new(level))
            .await
            .map_err(crate::session::service_error)
    }

    /// Notes a subscription starting or ending; false when that changes
    /// nothing.
    pub(crate) fn note_subscribed(&self, uri: &str, on: bool) -> bool {
        let mut s = lock(&self.subscribed);
        if on {
            s.insert(uri.to_owned())
        } else {
            s.remove(uri)
        }
    }

    /// The URIs this session subscribed to (re-established when the
    /// session reconnects to a restarted upstream).
    pub(crate) fn subscriptions(&self) -> Vec<String> {
        lock(&self.subscribed).iter().cloned().collect()
    }

    /// Re-establishes subscriptions admitted on an earlier connection of
    /// this same session.
    pub(crate) async fn resubscribe(&self, uris: &[String]) {
        for uri in uris {
            #[allow(deprecated)]
            let r = self
                .peer
                .subscribe(SubscribeRequestParams::new(uri.clone()))
                .await;
            match r {
                Ok(()) => {
                    self.note_subscribed(uri, true);
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.upstream.name, %uri, error = %e, "re-subscribing failed")
                }
            }
        }
    }
}

/// Registers a forwarded call so that progress and the upstream's
/// requests during it find their way back to the client.
pub(crate) fn track_call(
    calls: &Arc<Mutex<Calls>>,
    upstream_id: RequestId,
    upstream_token: ProgressToken,
    client_request: RequestId,
    client_token: Option<ProgressToken>,
) -> CallGuard {
    lock(calls).by_upstream_id.insert(
        upstream_id.clone(),
        Call {
            relaying: Arc::default(),
            client_request,
            upstream_token,
            client_token,
        },
    );
    CallGuard {
        calls: calls.clone(),
        id: upstream_id,
    }
}

impl CallGuard {
    /// Waits, briefly, for the progress notifications that arrived before
    /// the call's result to reach the client first: rmcp hands each
    /// notification to a task of its own, so the result can overtake
    /// them, and a client stops listening for a call's progress once it
    /// has the result.
    pub(crate) async fn settle(&self) {
        // Nothing to wait for when the client asked for no progress: the
        // common call pays nothing here.
        let relaying = lock(&self.calls)
            .by_upstream_id
            .get(&self.id)
            .filter(|c| c.client_token.is_some())
            .map(|c| c.relaying.clone());
        let Some(relaying) = relaying else { return };
        // Let the notification tasks spawned before the result start.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
        while relaying.load(std::sync::atomic::Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// gavel as the MCP client of one upstream on behalf of one client
/// session: what the upstream says or asks goes to that client only.
#[derive(Clone)]
struct LinkEvents {
    upstream: String,
    /// The upstream as gavel's resource: what records of relays name.
    resource: Resource,
    /// The roots from the configuration: what the upstream hears when it
    /// asks. The client's own roots never reach it.
    roots: Vec<String>,
    client: Arc<Client>,
    calls: Arc<Mutex<Calls>>,
    offer: Arc<Mutex<Arc<Offer>>>,
    subscribed: Arc<Mutex<BTreeSet<String>>>,
}

impl LinkEvents {
    /// The client request an upstream request belongs to: the call whose
    /// response stream carried it (HTTP upstreams say), else the only call
    /// in flight. None sends it on the client's standalone stream, which
    /// still reaches only this client.
    fn originating(&self, extensions: &rmcp::model::Extensions) -> Option<RequestId> {
        let calls = lock(&self.calls);
        if let Some(InboundStreamOrigin::OutboundRequest(id)) =
            extensions.get::<InboundStreamOrigin>()
            && let Some(call) = calls.by_upstream_id.get(id)
        {
            return Some(call.client_request.clone());
        }
        let mut inflight = calls.by_upstream_id.values();
        match (inflight.next(), inflight.next()) {
            (Some(only), None) => Some(only.client_request.clone()),
            _ => None,
        }
    }

    /// Records, durably, that the upstream asked the client `what` and how
    /// it was answered, before the answer goes back: an answer that cannot
    /// be recorded is not relayed.
    async fn record(&self, what: &str, answered: String) -> Result<(), McpError> {
        record_relayed(
            &self.client,
            &self.resource,
            ActionClass::McpCall,
            what,
            answered,
        )
        .await
    }

    /// Sends an upstream's request to the client, on the stream of the
    /// client request it belongs to, and relays a cancellation of it.
    async fn ask_client(
        &self,
        request: ServerRequest,
        context: &RequestContext<RoleClient>,
    ) -> Result<ClientResult, McpError> {
        let origin = self.originating(&context.extensions);
        ask_client(&self.client, request, origin, &context.ct).await
    }

    async fn relist(
        &self,
        context: &NotificationContext<RoleClient>,
    ) -> Option<(Arc<Offer>, Arc<Offer>)> {
        let before = lock(&self.offer).clone();
        match list(&context.peer).await {
            Ok(after) => {
                let after = Arc::new(after);
                *lock(&self.offer) = after.clone();
                Some((before, after))
            }
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "re-listing failed");
                None
            }
        }
    }
}

impl ClientHandler for LinkEvents {
    fn get_info(&self) -> ClientConfig {
        // The client's sampling and elicitation, but roots only from the
        // configuration: a filesystem server takes a client's roots as its
        // allowed directories, which would let an agent widen them.
        let mut capabilities = self.client.capabilities.clone();
        capabilities.roots = (!self.roots.is_empty()).then(RootsCapabilities::default);
        ClientConfig::new(
            capabilities,
            Implementation::new("gavel", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let asked = question(&params, "/messages/0/content/text");
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match self.ask_client(request, &context).await? {
            ClientResult::CreateMessageResult(r) => {
                self.record(
                    "sampling/createMessage",
                    format!("asked {asked}; {}", crate::rounds::sampling_answer(&r)),
                )
                .await?;
                Ok(*r)
            }
            _ => Err(McpError::internal_error(
                "gavel: the client answered sampling with something else",
                None,
            )),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let asked = question(&params, "/message");
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match self.ask_client(request, &context).await? {
            ClientResult::ElicitResult(r) => {
                self.record(
                    "elicitation/create",
                    format!("asked {asked}; {}", crate::rounds::elicitation_answer(&r)),
                )
                .await?;
                Ok(r)
            }
            _ => Err(McpError::internal_error(
                "gavel: the client answered elicitation with something else",
                None,
            )),
        }
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, McpError> {
        self.record(
            "roots/list",
            format!(
                "answered by gavel with the {} configured root(s), never the client's",
                self.roots.len()
            ),
        )
        .await?;
        Ok(ListRootsResult::new(
            self.roots
                .iter()
                .map(|uri| Root::new(uri.clone()))
                .collect(),
        ))
    }

    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let call = lock(&self.calls)
            .by_upstream_id
            .values()
            .find(|c| c.upstream_token == params.progress_token)
            .cloned();
        let Some(call) = call else { return };
        let Some(theirs) = call.client_token else {
            return;
        };
        if !self.client.in_good_standing() {
            return;
        }
        call.relaying
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        params.progress_token = theirs;
        if let Err(e) = self.client.peer().notify_progress(params).await {
            tracing::debug!(error = %e, "relaying progress failed");
        }
        call.relaying
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    async fn on_cancelled(
        &self,
        params: CancelledNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // rmcp cancels the request it concerns (a sampling or elicitation
        // relayed to the client), which cancels it at the client.
        let _ = params;
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if !self.client.in_good_standing() {
            return;
        }
        let sent = self.client.peer().notify_logging_message(params).await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "relaying a log message failed");
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        // Only what this session subscribed to (an unsubscribe policy
        // refused still ends it here), and nothing for a revoked or
        // expired principal.
        if !lock(&self.subscribed).contains(&params.uri) || !self.client.in_good_standing() {
            return;
        }
        if let Err(e) = self.client.peer().notify_resource_updated(params).await {
            tracing::debug!(error = %e, "relaying a resource update failed");
        }
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        if !self.client.in_good_standing() {
            return;
        }
        if let Some((before, after)) = self.relist(&context).await
            && before.tools != after.tools
        {
            let _ = self.client.peer().notify_tool_list_changed().await;
        }
    }

    async fn on_resource_list_changed(&self, context: NotificationContext<RoleClient>) {
        if !self.client.in_good_standing() {
            return;
        }
        if let Some((before, after)) = self.relist(&context).await
            && (before.resources != after.resources || before.templates != after.templates)
        {
            let _ = self.client.peer().notify_resource_list_changed().await;
        }
    }

    async fn on_prompt_list_changed(&self, context: NotificationContext<RoleClient>) {
        if !self.client.in_good_standing() {
            return;
        }
        if let Some((before, after)) = self.relist(&context).await
            && before.prompts != after.prompts
        {
            let _ = self.client.peer().notify_prompt_list_changed().await;
        }
    }
}

/// The start of what an upstream asks (`pointer` into its request), for a
/// record: enough to say what was asked, never a whole document.
fn question<T: serde::Serialize>(params: &T, pointer: &str) -> String {
    let text = serde_json::to_value(params)
        .ok()
        .and_then(|v| {
            v.pointer(pointer)
                .and_then(|t| t.as_str().map(str::to_owned))
        })
        .unwrap_or_default();
    format!("{:?}", crate::forward::excerpt_of(&text, 120))
}

/// Records what crossed between an upstream and `client` (see
/// [`Gate::record_relayed`]); an error when it cannot be recorded.
pub(crate) async fn record_relayed(
    client: &Client,
    resource: &Resource,
    class: ActionClass,
    what: &str,
    answered: String,
) -> Result<(), McpError> {
    let action = Action {
        principal: client.principal.clone(),
        resource: resource.clone(),
        class,
        operation: what.to_owned(),
        details: serde_json::json!({}),
        intent: String::new(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "mcp".into(),
        source: None,
    };
    client
        .gate
        .record_relayed(&action, answered)
        .await
        .map_err(|e| {
            McpError::internal_error(
                format!("gavel: the answer could not be recorded, so it was not relayed: {e}"),
                None,
            )
        })
}

/// Sends an upstream's request to `client`, on the stream of the client
/// request `origin` (when known), and waits for the answer; `cancelled`
/// withdraws it. Refused for a principal no longer in good standing.
pub(crate) async fn ask_client(
    client: &Client,
    mut request: ServerRequest,
    origin: Option<RequestId>,
    cancelled: &tokio_util::sync::CancellationToken,
) -> Result<ClientResult, McpError> {
    if !client.in_good_standing() {
        return Err(McpError::invalid_request(
            "gavel: the client's principal is no longer in good standing",
            None,
        ));
    }
    if let Some(id) = origin {
        request.extensions_mut().insert(OriginatingRequestId(id));
    }
    let peer = client.peer();
    // A new task: rmcp would otherwise mark the request as coming from
    // the upstream's request id, which means nothing to this client.
    let sent = tokio::spawn(async move {
        peer.send_request_with_option(request, PeerRequestOptions::no_options())
            .await
    })
    .await
    .map_err(|e| McpError::internal_error(format!("gavel: {e}"), None))?
    .map_err(crate::session::service_error)?;
    let mut handle = sent;
    tokio::select! {
        answer = &mut handle.rx => match answer {
            Ok(result) => result.map_err(crate::session::service_error),
            Err(_) => Err(McpError::internal_error("gavel: the client went away", None)),
        },
        _ = cancelled.cancelled() => {
            let _ = handle.cancel(Some("cancelled".into())).await;
            Err(McpError::internal_error("cancelled", None))
        }
    }
}

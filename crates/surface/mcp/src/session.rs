//! One downstream MCP session: the server side a client talks to. Every
//! request is tied to the principal the `/mcp` middleware authenticated,
//! and a session stays with the principal that opened it.

// Logging is deprecated in the 2026-07-28 revision but lives in the
// revisions gavel serves; a faithful relay carries it.
#![allow(deprecated)]

use crate::forward::{self, ClientCall, Forwarded, LaterRound, excerpt};
use crate::link::{Client, Link};
use crate::rounds::{Asked, MAX_INPUT_ROUNDS, Next, Round};
use crate::upstream::{Generation, Offer};
use crate::{Caller, Hub, ListKind, SEPARATOR, Upstream};
use gavel_core::{
    Action, ActionClass, ApprovalRequest, Cancellation, Hold, Outcome, Permitted, Preview, Refusal,
    RequestState,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, ErrorCode, GetPromptRequestParams, GetPromptResponse, Implementation,
    InitializeRequestParams, InitializeResult, InputRequiredResult, JsonObject, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, Reference, RequestMetaObject, ServerCapabilities, ServerConfig,
    ServerNotification, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer, ServiceError, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// JSON-RPC error code of a gavel refusal of a read (server-defined range).
const REFUSED: ErrorCode = ErrorCode(-32050);
/// Recent calls kept per session for reviewers.
const RECENT: usize = 10;

pub(crate) struct Session {
    hub: Arc<Hub>,
    /// The principal that opened the session (qualified id).
    owner: OnceLock<String>,
    links: Arc<Links>,
    recent: Mutex<VecDeque<String>>,
}

/// One upstream and this session's connection to it, or why there is
/// none.
type SessionLink = (Arc<Upstream>, Result<Arc<Link>, String>);

/// This session's own connections to the upstreams, opened when the
/// client initializes (in the background) or at first use, and reopened
/// when one ends.
struct Links {
    client: OnceLock<Arc<Client>>,
    open: tokio::sync::Mutex<HashMap<String, Arc<Link>>>,
    /// The log level the client set, for connections opened later.
    level: Mutex<Option<LoggingLevel>>,
    /// For a stateless client (the 2026-07-28 revision: no MCP session,
    /// one `Session` per request), the key of its pooled connections: they
    /// are taken from the hub's pool and go back to it when the request
    /// ends, so a client's requests reuse its upstream sessions.
    pooled: OnceLock<String>,
    /// This session's `Mcp-Session-Id` (never closed to make room for
    /// itself).
    session_id: OnceLock<String>,
    hub: Arc<Hub>,
}

impl Drop for Links {
    fn drop(&mut self) {
        let Some(key) = self.pooled.get() else { return };
        let open = std::mem::take(self.open.get_mut());
        for link in open.into_values().filter(|l| l.is_alive()) {
            self.hub.pool_put(key, link);
        }
    }
}

impl Links {
    /// The session's connection to each upstream (or why there is none),
    /// in the order of the configuration.
    async fn all(&self, hub: &Hub) -> Vec<SessionLink> {
        let Some(client) = self.client.get().cloned() else {
            let why = "the session has not initialized".to_owned();
            return hub
                .upstreams
                .iter()
                .map(|u| (u.clone(), Err(why.clone())))
                .collect();
        };
        let mut open = self.open.lock().await;
        let level = *self.level.lock().unwrap_or_else(|p| p.into_inner());
        // A principal at its limit at an upstream makes room by ending its
        // own least recently used session there (clients often never end
        // theirs), never another principal's.
        let key = crate::link::session_key(&client.principal);
        for upstream in &hub.upstreams {
            if open.get(&upstream.name).is_some_and(|l| l.is_alive())
                || upstream.held_by(&key) < upstream.max_sessions_per_principal
            {
                continue;
            }
            // Oldest first, until one that held a place here has ended (a
            // session that never used this upstream frees nothing).
            while upstream.held_by(&key) >= upstream.max_sessions_per_principal
                && hub
                    .evict_for(
                        &key,
                        &upstream.name,
                        self.session_id.get().map(String::as_str),
                    )
                    .await
            {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
                while upstream.held_by(&key) >= upstream.max_sessions_per_principal
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let mut opening = tokio::task::JoinSet::new();
        for upstream in &hub.upstreams {
            if let Some(key) = self.pooled.get()
                && !open.get(&upstream.name).is_some_and(|l| l.is_alive())
                && let Some(link) = hub.pool_take(key, &upstream.name)
            {
                link.client.set_peer(client.peer());
                open.insert(upstream.name.clone(), link);
            }
            let current = open.get(&upstream.name);
            if current.is_some_and(|l| l.is_alive()) {
                continue;
            }
            let earlier = current.map(|l| l.subscriptions()).unwrap_or_default();
            let (upstream, client) = (upstream.clone(), client.clone());
            let generation = if self.pooled.get().is_some() {
                Generation::PreferStateless
            } else {
                Generation::Session
            };
            opening.spawn(async move {
                let link = Link::open(upstream.clone(), client, level, generation).await;
                if let Ok(link) = &link {
                    link.resubscribe(&earlier).await;
                }
                (upstream, link)
            });
        }
        let mut failed = HashMap::new();
        while let Some(joined) = opening.join_next().await {
            let Ok((upstream, link)) = joined else {
                continue;
            };
            match link {
                Ok(link) => {
                    open.insert(upstream.name.clone(), link);
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream.name, error = %e, "cannot connect a client session to the MCP upstream");
                    open.remove(&upstream.name);
                    failed.insert(upstream.name.clone(), e);
                }
            }
        }
        hub.upstreams
            .iter()
            .map(|u| {
                let link = match open.get(&u.name) {
                    Some(l) => Ok(l.clone()),
                    None => Err(failed
                        .remove(&u.name)
                        .unwrap_or_else(|| format!("upstream {} is not connected", u.name))),
                };
                (u.clone(), link)
            })
            .collect()
    }

    /// The live connections, without opening any.
    async fn live(&self) -> Vec<Arc<Link>> {
        self.open
            .lock()
            .await
            .values()
            .filter(|l| l.is_alive())
            .cloned()
            .collect()
    }
}

/// The connections that stand, each with what it offers.
fn offers(links: &[SessionLink]) -> Vec<(&Arc<Upstream>, &Arc<Link>, Arc<Offer>)> {
    links
        .iter()
        .filter_map(|(u, l)| l.as_ref().ok().map(|l| (u, l, l.offer())))
        .collect()
}

/// A name a client used and what it means: the upstream, the session's
/// connection there and the upstream's own name.
struct Resolved {
    upstream: Arc<Upstream>,
    link: Arc<Link>,
    own: String,
}

#[derive(Clone, Copy)]
enum Named {
    Tool,
    Prompt,
}

impl Named {
    fn word(self) -> &'static str {
        match self {
            Named::Tool => "tool",
            Named::Prompt => "prompt",
        }
    }
}

/// What `exposed` names among this session's connections: exactly one
/// upstream's tool or prompt, or an error that says why not.
fn resolve(
    links: &[SessionLink],
    exposed: &str,
    kind: Named,
    hub: &Hub,
) -> Result<Resolved, McpError> {
    // A name the supervisors saw two upstreams claim stays refused even
    // when one of them is unreachable for this session.
    if hub.collisions().iter().any(|c| c == exposed) {
        let claimants: Vec<&str> = hub
            .upstreams
            .iter()
            .filter(|u| {
                let offer = u.offer();
                u.own_name(exposed).is_some_and(|own| {
                    offer.tools.iter().any(|t| t.name == own)
                        || offer.prompts.iter().any(|p| p.name == own)
                })
            })
            .map(|u| u.name.as_str())
            .collect();
        return Err(McpError::invalid_params(
            format!(
                "{} {exposed:?} is offered by several upstreams ({}); gavel will not guess. Set prefix = true on one of them.",
                kind.word(),
                claimants.join(", ")
            ),
            None,
        ));
    }
    let mut found = Vec::new();
    for (upstream, link, offer) in offers(links) {
        let Some(own) = upstream.own_name(exposed) else {
            continue;
        };
        let offered = match kind {
            Named::Tool => offer.tools.iter().any(|t| t.name == own),
            Named::Prompt => offer.prompts.iter().any(|p| p.name == own),
        };
        if offered {
            found.push(Resolved {
                upstream: upstream.clone(),
                link: link.clone(),
                own: own.to_owned(),
            });
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            let down: Vec<String> = links
                .iter()
                .filter_map(|(u, l)| l.as_ref().err().map(|e| format!("{}: {e}", u.name)))
                .collect();
            let word = kind.word();
            let mut message = format!("unknown {word} {exposed:?}");
            if !down.is_empty() {
                message.push_str(&format!(
                    " (not reachable now, try again shortly: {})",
                    down.join("; ")
                ));
            }
            Err(McpError::invalid_params(message, None))
        }
        _ => Err(McpError::invalid_params(
            format!(
                "{} {exposed:?} is offered by several upstreams ({}); gavel will not guess. Set prefix = true on one of them.",
                kind.word(),
                found
                    .iter()
                    .map(|r| r.upstream.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        )),
    }
}

/// How an MCP request is held while a human decides: progress
/// notifications name the request (when the client asked for progress),
/// and the client's `notifications/cancelled` withdraws it.
struct McpHold {
    limit: Duration,
    peer: rmcp::service::Peer<RoleServer>,
    progress: Option<rmcp::model::ProgressToken>,
    cancelled: tokio_util::sync::CancellationToken,
}

impl McpHold {
    fn new(hub: &Hub, ctx: &RequestContext<RoleServer>, meta: &RequestMetaObject) -> McpHold {
        McpHold {
            limit: hub.hold,
            peer: ctx.peer.clone(),
            progress: ctx
                .meta
                .get_progress_token()
                .or_else(|| meta.get_progress_token()),
            cancelled: ctx.ct.clone(),
        }
    }

    async fn progress(&self, request: &ApprovalRequest, url: &str, step: u32) {
        let Some(token) = &self.progress else { return };
        let mut p = ProgressNotificationParam::new(token.clone(), f64::from(step));
        p.message = Some(format!(
            "waiting for approval of gavel request {}: {url}",
            request.id
        ));
        if let Err(e) = self.peer.notify_progress(p).await {
            tracing::debug!(error = %e, "progress notification failed");
        }
    }
}

#[async_trait::async_trait]
impl Hold for McpHold {
    fn limit(&self) -> Duration {
        self.limit
    }

    async fn waiting(&mut self, request: &ApprovalRequest, url: &str) {
        self.progress(request, url, 1).await;
    }

    async fn still_waiting(&mut self, request: &ApprovalRequest, url: &str, step: u32) {
        self.progress(request, url, step + 1).await;
    }

    fn cancellation(&mut self) -> Cancellation {
        Box::pin(self.cancelled.clone().cancelled_owned())
    }
}

/// Whether this request is of the stateless 2026-07-28 revision (or a
/// later one), which waits with `input_required` rather than a held
/// connection.
fn speaks_stateless(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str())
}

/// What a waiting 2026-07-28 client may show its user: the request and
/// its page (the `requestState` itself is opaque).
fn waiting_meta(hub: &Hub, request: &ApprovalRequest) -> rmcp::model::MetaObject {
    let mut meta = rmcp::model::MetaObject::new();
    meta.insert(
        "gavel/approval".into(),
        serde_json::json!({
            "request": request.id.to_string(),
            "url": gavel_core::request_url(&hub.public_url, &request.id),
            "state": "pending",
        }),
    );
    meta
}

/// A read or prompt of a 2026-07-28 upstream that asks a session client
/// for input: relayed to 2026-07-28 clients only.
fn input_for_session_reads() -> McpError {
    McpError::invalid_request(
        "gavel: the upstream asks for input before it answers this read or prompt; gavel relays that only to clients of protocol revision 2026-07-28",
        None,
    )
}

/// An upstream's `_meta` without keys in gavel's own namespace, so an
/// upstream cannot pass off, say, an approval link as gavel's.
fn without_gavel_keys(mut meta: rmcp::model::MetaObject) -> rmcp::model::MetaObject {
    meta.0.retain(|key, _| !key.starts_with("gavel/"));
    meta
}

/// A refusal as the text a client reads: for a held call, what to do next.
fn refusal_text(hub: &Hub, refusal: &Refusal) -> String {
    let message = refusal.message(&hub.public_url);
    match refusal {
        Refusal::Pending { .. } => format!(
            "{message} — nothing was run. Once it is approved, repeat the identical call (same arguments) within the grant's lifetime and it passes once."
        ),
        _ => message,
    }
}

/// A client's resource URI as the upstream will read it; refused when
/// that is ambiguous.
fn normal_uri(raw: &str) -> Result<String, String> {
    crate::uri::normalize_uri(raw)
}

pub(crate) fn service_error(e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        other => McpError::internal_error(format!("upstream: {other}"), None),
    }
}

fn tool_error(text: String) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(text)]))
}

impl Session {
    pub(crate) fn new(hub: Arc<Hub>) -> Session {
        Session {
            hub: hub.clone(),
            owner: OnceLock::new(),
            links: Arc::new(Links {
                client: OnceLock::new(),
                open: tokio::sync::Mutex::new(HashMap::new()),
                level: Mutex::new(None),
                pooled: OnceLock::new(),
                session_id: OnceLock::new(),
                hub,
            }),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// The authenticated caller of this request; a session never changes
    /// hands.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        let caller = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::internal_error("request was not authenticated", None))?;
        let id = crate::link::session_key(&caller.principal);
        if self.owner.get_or_init(|| id.clone()) != &id {
            return Err(McpError::invalid_request(
                "this MCP session belongs to another principal",
                None,
            ));
        }
        Ok(caller)
    }

    /// Records who the client is and what it can do; its upstream
    /// connections claim the same.
    fn know_client(
        &self,
        caller: &Caller,
        context: &RequestContext<RoleServer>,
        initializing: bool,
    ) {
        // A stateless request declares them itself, and each may declare
        // others; a session declared them once.
        let capabilities = context
            .meta
            .client_capabilities()
            .or_else(|| context.peer.peer_info().map(|i| i.capabilities.clone()))
            .unwrap_or_default();
        // No MCP session: a stateless (2026-07-28) request, whose upstream
        // connections are pooled per principal and capabilities.
        let session_id = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.headers.get(crate::SESSION_HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // (An initialize carries no session id either, but opens a session.)
        let stateless = !initializing
            && context.extensions.get::<http::request::Parts>().is_some()
            && session_id.is_none();
        if let Some(id) = session_id {
            let _ = self.links.session_id.set(id);
        }
        let capabilities = if stateless {
            // What an upstream may ask of this client, and nothing else:
            // the pool is keyed by it, so a client varying the rest of its
            // claims cannot make every request open new connections.
            let mut asked_of = rmcp::model::ClientCapabilities::default();
            asked_of.sampling = capabilities.sampling;
            asked_of.elicitation = capabilities.elicitation;
            let _ = self.links.pooled.set(format!(
                "{}|{}",
                crate::link::session_key(&caller.principal),
                serde_json::to_string(&asked_of).unwrap_or_default()
            ));
            asked_of
        } else {
            capabilities
        };
        let _ = self.links.client.set(Arc::new(Client::new(
            context.peer.clone(),
            caller.principal.clone(),
            capabilities,
            self.hub.gate.clone(),
        )));
    }

    /// Names withheld from this session's lists: those two of its
    /// upstreams both show, and those the supervisors saw collide.
    fn withheld_names(&self, links: &[SessionLink]) -> Vec<String> {
        let live = offers(links);
        let mut names =
            crate::colliding_names(live.iter().map(|(u, _, o)| (u.as_ref(), o.as_ref())));
        names.extend(self.hub.collisions());
        names
    }

    /// This session's connections, opening what is missing.
    async fn links(
        &self,
        caller: &Caller,
        context: &RequestContext<RoleServer>,
    ) -> Vec<SessionLink> {
        self.know_client(caller, context, false);
        self.links.all(&self.hub).await
    }

    fn visibility(
        &self,
        caller: &Caller,
        upstream: &Upstream,
        class: ActionClass,
        name: &str,
    ) -> Preview {
        let action = self.action(
            caller,
            upstream,
            class,
            name,
            serde_json::Value::Object(Default::default()),
            String::new(),
        );
        self.hub.gate.preview(&action)
    }

    fn action(
        &self,
        caller: &Caller,
        upstream: &Upstream,
        class: ActionClass,
        operation: &str,
        args: serde_json::Value,
        intent: String,
    ) -> Action {
        Action {
            principal: caller.principal.clone(),
            resource: upstream.resource.clone(),
            class,
            operation: operation.to_owned(),
            details: serde_json::json!({ "args": args }),
            intent,
            data_context: serde_json::Value::Null,
            settings: Default::default(),
            surface: "mcp".into(),
            source: caller.source.clone(),
        }
    }

    /// Forwards an admitted call (or its later round, `continuing`) and
    /// answers the client: an upstream's `input_required` keeps the
    /// admission open for the client's next round, behind a handle of
    /// gavel's own, within the call's first deadline and
    /// [`MAX_INPUT_ROUNDS`].
    async fn forward_call(
        &self,
        permitted: Permitted,
        link: &Link,
        client: ClientCall,
        round: LaterRound,
        context: &RequestContext<RoleServer>,
        args: serde_json::Value,
    ) -> Result<CallToolResponse, McpError> {
        if !link.is_alive() {
            let detail = format!("upstream {} is not connected", link.upstream.name);
            permitted.finish(Outcome::Failed {
                detail: detail.clone(),
            });
            return Ok(tool_error(format!("gavel: {detail}; try again shortly")));
        }
        // Every round of the call ends by its first round's deadline.
        let deadline = round
            .expires
            .unwrap_or_else(|| std::time::Instant::now() + crate::rounds::ROUND_LIFETIME);
        let (mut permitted, mut round) = (permitted, round);
        round.expires = Some(deadline);
        loop {
            let (number, expires) = (round.earlier + 1, round.expires);
            let asked = match forward::call_tool(
                permitted,
                &link.forwarder(),
                client.clone(),
                round,
                &context.ct,
            )
            .await
            {
                Forwarded::Answered(result) => return result.map_err(service_error),
                Forwarded::CancelledByClient => {
                    return Err(McpError::internal_error("cancelled by the client", None));
                }
                Forwarded::NeedsInput(asked, p) => {
                    permitted = *p;
                    asked
                }
            };
            if number > MAX_INPUT_ROUNDS {
                let detail = format!(
                    "the upstream asked for input more than {MAX_INPUT_ROUNDS} times in one call"
                );
                permitted.finish(Outcome::Failed {
                    detail: detail.clone(),
                });
                return Ok(tool_error(format!("gavel: {detail}; the call was ended")));
            }
            let (questions, kept) = Asked::split(asked.input_requests);
            if speaks_stateless(context) {
                let target = format!("tool:{}", permitted.action().operation);
                let principal = crate::link::session_key(&permitted.action().principal);
                let handle = self.hub.rounds.park(Round::new(
                    principal,
                    link.upstream.name.clone(),
                    target,
                    &args,
                    Next::Input {
                        permitted: Box::new(permitted),
                        upstream_state: asked.request_state,
                        asked: kept,
                        round: number,
                    },
                    expires,
                ));
                let mut relayed = InputRequiredResult::new(questions, Some(handle));
                relayed.meta = asked.meta.map(without_gavel_keys);
                return Ok(CallToolResponse::InputRequired(relayed));
            }
            // A session client behind an upstream of 2026-07-28: it is
            // asked each question on its call's stream, as a 2025-11-25
            // server would ask it, and the call goes on in the same task.
            let mut from_client = rmcp::model::InputResponses::new();
            for (key, question) in questions.unwrap_or_default() {
                let request = match question {
                    rmcp::model::InputRequest::CreateMessage(r) => {
                        rmcp::model::ServerRequest::CreateMessageRequest(r)
                    }
                    rmcp::model::InputRequest::Elicitation(r) => {
                        rmcp::model::ServerRequest::ElicitRequest(r)
                    }
                    // Roots are answered from the configuration.
                    _ => continue,
                };
                let asked_client = tokio::time::timeout_at(
                    deadline.into(),
                    crate::link::ask_client(
                        &link.client,
                        request,
                        Some(context.id.clone()),
                        &context.ct,
                    ),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(McpError::invalid_request(
                        "gavel: the call's rounds of input ran out of time",
                        None,
                    ))
                });
                let answer = match asked_client {
                    Ok(a) => a,
                    Err(e) => {
                        permitted.finish(Outcome::Failed {
                            detail: format!(
                                "the client could not answer the upstream: {}",
                                e.message
                            ),
                        });
                        return Err(e);
                    }
                };
                from_client.insert(key, serde_json::to_value(answer).unwrap_or_default());
            }
            let answers = match self
                .answer_round(link, ActionClass::McpCall, &kept, Some(from_client))
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    permitted.finish(Outcome::Failed {
                        detail: format!("not continued: {}", e.message),
                    });
                    return Err(e);
                }
            };
            round = LaterRound {
                input_responses: answers,
                upstream_state: asked.request_state,
                earlier: number,
                expires: Some(deadline),
            };
        }
    }

    /// The upstream's answers for one round of a call the client continues:
    /// checked against the questions asked, recorded, roots gavel's own.
    async fn answer_round(
        &self,
        link: &Link,
        class: ActionClass,
        asked: &Asked,
        from_client: Option<rmcp::model::InputResponses>,
    ) -> Result<Option<rmcp::model::InputResponses>, McpError> {
        let (answers, lines) = asked
            .answers(from_client, &link.upstream.roots)
            .map_err(|e| McpError::invalid_params(e, None))?;
        for line in lines {
            crate::link::record_relayed(
                &link.client,
                &link.upstream.resource,
                class,
                &line.method,
                line.summary,
            )
            .await?;
        }
        Ok(answers)
    }

    /// The questions and upstream state of the round a read or prompt
    /// continues (`handle`, gavel's), or none for a first round.
    fn earlier_read_round(
        &self,
        caller: &Caller,
        upstream: &Upstream,
        target: &str,
        args: &serde_json::Value,
        handle: Option<&str>,
    ) -> Result<Option<(Option<String>, Asked)>, McpError> {
        let Some(handle) = handle else {
            return Ok(None);
        };
        let principal = crate::link::session_key(&caller.principal);
        let round = self
            .hub
            .rounds
            .take(handle, &principal, &upstream.name, target, args)
            .map_err(|refused| McpError::invalid_params(refused.message(), None))?;
        let mismatch =
            || McpError::invalid_params(crate::rounds::Refused::Mismatch.message(), None);
        if !matches!(round.next, Next::ReadInput { .. }) {
            round.abandon("the next round was for another call");
            return Err(mismatch());
        }
        match round.next {
            Next::ReadInput {
                upstream_state,
                asked,
            } => Ok(Some((upstream_state, asked))),
            _ => Err(mismatch()),
        }
    }

    /// What a read's later round sends the upstream (its state, and the
    /// client's answers, checked against its questions before anything is
    /// admitted), and the lines to record once it is.
    fn read_round(
        &self,
        link: &Link,
        earlier: Option<(Option<String>, Asked)>,
        from_client: Option<rmcp::model::InputResponses>,
    ) -> Result<(LaterRound, Vec<crate::rounds::Answered>), McpError> {
        let Some((upstream_state, asked)) = earlier else {
            return Ok((LaterRound::default(), Vec::new()));
        };
        let (input_responses, lines) = asked
            .answers(from_client, &link.upstream.roots)
            .map_err(|e| McpError::invalid_params(e, None))?;
        Ok((
            LaterRound {
                input_responses,
                upstream_state,
                ..LaterRound::default()
            },
            lines,
        ))
    }

    /// Records what a read's round answers, once it is admitted.
    async fn record_read_answers(
        &self,
        link: &Link,
        lines: Vec<crate::rounds::Answered>,
    ) -> Result<(), McpError> {
        for line in lines {
            crate::link::record_relayed(
                &link.client,
                &link.upstream.resource,
                ActionClass::McpRead,
                &line.method,
                line.summary,
            )
            .await?;
        }
        Ok(())
    }

    /// Keeps a read's or prompt's `input_required` round and answers the
    /// client with gavel's handle in place of the upstream's state.
    fn park_read_round(
        &self,
        caller: &Caller,
        upstream: &Upstream,
        target: String,
        args: &serde_json::Value,
        asked: InputRequiredResult,
    ) -> InputRequiredResult {
        let (questions, kept) = Asked::split(asked.input_requests);
        let handle = self.hub.rounds.park(Round::new(
            crate::link::session_key(&caller.principal),
            upstream.name.clone(),
            target,
            args,
            Next::ReadInput {
                upstream_state: asked.request_state,
                asked: kept,
            },
            None,
        ));
        let mut relayed = InputRequiredResult::new(questions, Some(handle));
        relayed.meta = asked.meta.map(without_gavel_keys);
        relayed
    }

    /// Adds `line` to the calls a reviewer sees as this client's recent
    /// ones, and returns those before it. A stateless client's requests
    /// are separate `Session`s: its calls are kept per principal in the
    /// hub instead.
    fn remember(&self, line: String) -> Vec<String> {
        if let Some(key) = self.links.pooled.get() {
            return self.hub.remember_stateless(key, line, RECENT);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let before: Vec<String> = recent.iter().cloned().collect();
        recent.push_back(line);
        while recent.len() > RECENT {
            recent.pop_front();
        }
        before
    }

    /// Admits `action`, holding it while a human decides.
    async fn admit(
        &self,
        action: Action,
        context: &RequestContext<RoleServer>,
        meta: &RequestMetaObject,
    ) -> Result<Permitted, Refusal> {
        let mut hold = McpHold::new(&self.hub, context, meta);
        self.hub.gate.admit(action, &mut hold).await
    }

    /// Admits an `mcp.read` (a resource, a prompt, a subscription, a
    /// completion) and returns the proof with the session's connection. A
    /// refusal is a JSON-RPC error; a connection that ended after
    /// admission is recorded as the outcome.
    async fn admit_read(
        &self,
        action: Action,
        link: &Link,
        context: &RequestContext<RoleServer>,
        meta: &RequestMetaObject,
    ) -> Result<(Permitted, forward::Forwarder), McpError> {
        let permitted = self
            .admit(action, context, meta)
            .await
            .map_err(|r| McpError::new(REFUSED, refusal_text(&self.hub, &r), None))?;
        if !link.is_alive() {
            let detail = format!("upstream {} is not connected", link.upstream.name);
            permitted.finish(Outcome::Failed {
                detail: detail.clone(),
            });
            return Err(McpError::internal_error(detail, None));
        }
        Ok((permitted, link.forwarder()))
    }

    /// A client's resource URI as the upstream will read it; refused (and
    /// recorded) when that is ambiguous.
    async fn judgeable_uri(&self, caller: &Caller, raw: &str) -> Result<String, McpError> {
        match normal_uri(raw) {
            Ok(uri) => Ok(uri),
            Err(e) => {
                let action = Action {
                    principal: caller.principal.clone(),
                    resource: gavel_core::Resource {
                        name: "mcp".into(),
                        kind: "mcp".into(),
                        tags: Default::default(),
                    },
                    class: ActionClass::McpRead,
                    operation: raw.to_owned(),
                    details: serde_json::json!({}),
                    intent: String::new(),
                    data_context: serde_json::Value::Null,
                    settings: Default::default(),
                    surface: "mcp".into(),
                    source: caller.source.clone(),
                };
                let reason = format!("resource URI refused: {e}");
                let _ = self.hub.gate.refuse_unjudgeable(action, &reason).await;
                Err(McpError::invalid_params(
                    format!("gavel: resource URI {raw:?} refused: {e}"),
                    None,
                ))
            }
        }
    }
}

/// The one connection whose upstream serves `uri`: the one that listed
/// it, else the one with a template whose fixed prefix it starts with,
/// else the only upstream that offers resources at all. A URI two
/// upstreams claim is refused rather than guessed.
fn resource_owner(
    links: &[SessionLink],
    uri: &str,
) -> Result<(Arc<Upstream>, Arc<Link>), McpError> {
    let live = offers(links);
    let mut owners: Vec<_> = live
        .iter()
        .filter(|(_, _, o)| o.resources.iter().any(|r| r.uri == uri))
        .collect();
    if owners.is_empty() {
        owners = live
            .iter()
            .filter(|(_, _, o)| {
                o.templates.iter().any(|t| {
                    let prefix = t.uri_template.split('{').next().unwrap_or("");
                    !prefix.is_empty() && uri.starts_with(prefix)
                })
            })
            .collect();
    }
    if owners.is_empty() {
        let with_resources: Vec<_> = live
            .iter()
            .filter(|(_, l, _)| {
                l.forwarder()
                    .capabilities()
                    .is_some_and(|c| c.resources.is_some())
            })
            .collect();
        if let [only] = with_resources.as_slice() {
            owners.push(only);
        }
    }
    match owners.as_slice() {
        [(u, l, _)] => Ok(((*u).clone(), (*l).clone())),
        [] => Err(McpError::resource_not_found(
            format!("no upstream offers {uri:?}"),
            None,
        )),
        many => Err(McpError::invalid_params(
            format!(
                "{uri:?} is offered by several upstreams ({}); gavel will not guess",
                many.iter()
                    .map(|(u, _, _)| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        )),
    }
}

/// Takes the agent's intent from `_meta.intent`, else from an `intent`
/// argument, which is removed unless the tool declares it.
fn take_intent(
    meta: &RequestMetaObject,
    args: &mut Option<JsonObject>,
    schema: Option<&JsonObject>,
) -> String {
    if let Some(intent) = meta.get("intent").and_then(|v| v.as_str()) {
        return intent.to_owned();
    }
    let declared = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.as_object())
        .is_some_and(|p| p.contains_key("intent"));
    let Some(map) = args.as_mut() else {
        return String::new();
    };
    match map
        .get("intent")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
    {
        Some(intent) => {
            if !declared {
                map.remove("intent");
            }
            intent
        }
        None => String::new(),
    }
}

/// The request's `_meta`: rmcp moves it into the context.
fn request_meta(
    context: &RequestContext<RoleServer>,
    own: Option<&RequestMetaObject>,
) -> RequestMetaObject {
    let mut meta = own.cloned().unwrap_or_default();
    for (k, v) in context.meta.iter() {
        meta.entry(k.clone()).or_insert_with(|| v.clone());
    }
    meta
}

impl ServerHandler for Session {
    fn get_info(&self) -> ServerConfig {
        let naming = if self.hub.upstreams.iter().all(|u| u.prefix) {
            format!("tools and prompts are named UPSTREAM{SEPARATOR}NAME")
        } else {
            format!(
                "tools and prompts keep their own names or are named UPSTREAM{SEPARATOR}NAME, as configured per upstream"
            )
        };
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_prompts()
                .enable_prompts_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("gavel", env!("CARGO_PKG_VERSION")))
        .with_instructions(format!(
            "gavel gateway: {naming}. Every call is checked against policy; some wait for a human's approval. State why you act in _meta.intent."
        ))
    }

    /// List changes only: a resource's updates are a read of it, which a
    /// 2026-07-28 client makes with `resources/read`.
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed;
        accepted.resources_list_changed = requested.resources_list_changed;
        accepted.prompts_list_changed = requested.prompts_list_changed;
        Some(accepted)
    }

    /// A 2026-07-28 client's `subscriptions/listen`: the list changes the
    /// upstreams' supervisors hear, until the client lets go. A lagging
    /// stream hears that every list changed.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let caller = self.caller(context.request_context())?;
        let _listening = self
            .hub
            .listen_slot(&crate::link::session_key(&caller.principal))
            .map_err(|e| McpError::invalid_request(e, None))?;
        let mut changes = self.hub.lists.subscribe();
        // A principal that falls stops hearing anything.
        let mut standing = tokio::time::interval(Duration::from_secs(2));
        loop {
            let kinds = tokio::select! {
                () = context.cancelled() => return Ok(()),
                _ = standing.tick() => {
                    if !self.hub.gate.in_good_standing(&caller.principal) {
                        return Ok(());
                    }
                    continue;
                }
                change = changes.recv() => match change {
                    Ok(kind) => vec![kind],
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        vec![ListKind::Tools, ListKind::Resources, ListKind::Prompts]
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                },
            };
            for kind in kinds {
                let accepted = context.accepted();
                let notification = match kind {
                    ListKind::Tools if accepted.tools_list_changed == Some(true) => {
                        ServerNotification::ToolListChangedNotification(Default::default())
                    }
                    ListKind::Resources if accepted.resources_list_changed == Some(true) => {
                        ServerNotification::ResourceListChangedNotification(Default::default())
                    }
                    ListKind::Prompts if accepted.prompts_list_changed == Some(true) => {
                        ServerNotification::PromptListChangedNotification(Default::default())
                    }
                    _ => continue,
                };
                if context.sink().send(notification).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        // Sessions (Mcp-Session-Id) with list_changed notifications on
        // them, and no JSON-RPC batches (which 2025-03-26 allowed).
        // and the stateless 2026-07-28 revision (`server/discover`, no
        // session; rmcp serves it one request at a time).
        Cow::Borrowed(&[
            ProtocolVersion::V_2025_06_18,
            ProtocolVersion::V_2025_11_25,
            ProtocolVersion::V_2026_07_28,
        ])
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let caller = self.caller(&context)?;
        context.peer.set_peer_info(request.clone());
        self.know_client(&caller, &context, true);
        // The upstream connections open at the client's first request
        // that needs them, not here: a bare initialize costs no upstream
        // process.
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        let colliding = self.withheld_names(&links);
        let mut tools = Vec::new();
        for (upstream, _, offer) in offers(&links) {
            for tool in &offer.tools {
                let exposed = upstream.exposed(&tool.name);
                if colliding.contains(&exposed) {
                    continue;
                }
                let note = match self.visibility(
                    &caller,
                    upstream,
                    ActionClass::McpCall,
                    &tool.name,
                ) {
                    Preview::Denied => continue,
                    Preview::Allowed => None,
                    Preview::NeedsApproval => {
                        Some("[gavel: needs a human's approval; the call waits for it]")
                    }
                    Preview::DependsOnArguments => Some(
                        "[gavel: allowed only for some arguments; others are refused or need approval]",
                    ),
                };
                let mut tool = tool.clone();
                tool.name = exposed.into();
                if let Some(note) = note {
                    tool.description = Some(
                        match tool.description.as_deref() {
                            Some(d) if !d.is_empty() => format!("{note} {d}"),
                            _ => note.to_owned(),
                        }
                        .into(),
                    );
                }
                tools.push(tool);
            }
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        let Resolved {
            upstream,
            link,
            own: tool_name,
        } = match resolve(&links, &request.name, Named::Tool, &self.hub) {
            Ok(r) => r,
            Err(e) => {
                // A tool of an upstream that is being restarted is a tool
                // error the agent can retry, not a protocol error.
                if e.message.contains("not reachable now") {
                    return Ok(tool_error(format!("gavel: {}", e.message)));
                }
                return Err(e);
            }
        };
        let offer = link.offer();
        let tool = offer
            .tools
            .iter()
            .find(|t| t.name == tool_name.as_str())
            .cloned()
            .ok_or_else(|| {
                McpError::invalid_params(format!("unknown tool {:?}", request.name), None)
            })?;
        let mut args = request.arguments.clone();
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut args, Some(tool.input_schema.as_ref()));
        // Paths as the server will resolve them: policy judges, the grant
        // binds and the upstream receives the same form.
        if let Some(map) = args.as_mut()
            && let Err(e) = crate::uri::normalize_path_arguments(map)
        {
            let raw = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
            let action = self.action(
                &caller,
                &upstream,
                ActionClass::McpCall,
                &tool_name,
                raw,
                intent,
            );
            let reason = format!(
                "{e} (send absolute paths without control characters or surrounding spaces)"
            );
            let refusal = self.hub.gate.refuse_unjudgeable(action, &reason).await;
            return Ok(tool_error(refusal_text(&self.hub, &refusal)));
        }
        let args_json = serde_json::Value::Object(args.clone().unwrap_or_default());
        let client = ClientCall {
            id: context.id.clone(),
            progress: context
                .meta
                .get_progress_token()
                .or_else(|| meta.get_progress_token()),
        };
        let principal = crate::link::session_key(&caller.principal);
        let target = format!("tool:{tool_name}");
        // A later round of a call this gateway answered `input_required`
        // for: continued under its admission, or judged again.
        if let Some(handle) = request.request_state.as_deref() {
            let round = self
                .hub
                .rounds
                .take(handle, &principal, &upstream.name, &target, &args_json)
                .map_err(|refused| McpError::invalid_params(refused.message(), None))?;
            let expires = round.expires;
            match round.next {
                Next::Input {
                    permitted,
                    upstream_state,
                    asked,
                    round: number,
                } => {
                    if !self.hub.gate.in_good_standing(&caller.principal) {
                        let refusal = Refusal::Revoked {
                            principal: caller.principal.qualified_id(),
                        };
                        permitted.finish(Outcome::Failed {
                            detail: "not continued: the principal is no longer in good standing"
                                .into(),
                        });
                        return Ok(tool_error(refusal_text(&self.hub, &refusal)));
                    }
                    let answers = match self
                        .answer_round(
                            &link,
                            ActionClass::McpCall,
                            &asked,
                            request.input_responses.clone(),
                        )
                        .await
                    {
                        Ok(a) => a,
                        Err(e) => {
                            permitted.finish(Outcome::Failed {
                                detail: format!("not continued: {}", e.message),
                            });
                            return Err(e);
                        }
                    };
                    let later = LaterRound {
                        input_responses: answers,
                        upstream_state,
                        earlier: number,
                        expires: Some(expires),
                    };
                    return self
                        .forward_call(*permitted, &link, client, later, &context, args_json)
                        .await;
                }
                Next::ReadInput { .. } => {
                    return Err(McpError::invalid_params(
                        crate::rounds::Refused::Mismatch.message(),
                        None,
                    ));
                }
                // Decided against while the client was away: it hears
                // so, rather than filing the same request again.
                Next::Approval { request: id } => {
                    let decided = self.hub.gate.approvals().get(&id).await.ok().flatten();
                    let refusal = match decided {
                        Some(r) if r.state == RequestState::Denied => Some(Refusal::ReviewDenied {
                            request: Box::new(r),
                        }),
                        Some(r) if r.state == RequestState::Expired => Some(Refusal::Expired {
                            request: Box::new(r),
                        }),
                        _ => None,
                    };
                    if let Some(refusal) = refusal {
                        return Ok(tool_error(refusal_text(&self.hub, &refusal)));
                    }
                }
            }
        }
        let mut action = self.action(
            &caller,
            &upstream,
            ActionClass::McpCall,
            &tool_name,
            args_json.clone(),
            intent,
        );
        let line = format!(
            "{} {}",
            upstream.exposed(&tool_name),
            excerpt(&args_json.to_string())
        );
        action.data_context = serde_json::json!({
            "upstream": upstream.name,
            "tool_description": excerpt(tool.description.as_deref().unwrap_or("")),
            "read_only_hint": tool.annotations.as_ref().and_then(|a| a.read_only_hint),
            "destructive_hint": tool.annotations.as_ref().and_then(|a| a.destructive_hint),
            "recent_calls": self.remember(line),
        });
        let permitted = match self.admit(action, &context, &meta).await {
            Ok(p) => p,
            // A 2026-07-28 client waits the way its revision offers: it
            // hears `input_required` and repeats the call with the handle,
            // which is judged again (finding its request, or the grant).
            Err(Refusal::Pending { request, .. }) if speaks_stateless(&context) => {
                let handle = self.hub.rounds.park(Round::new(
                    principal,
                    upstream.name.clone(),
                    target,
                    &args_json,
                    Next::Approval {
                        request: request.id.clone(),
                    },
                    None,
                ));
                return Ok(CallToolResponse::InputRequired(
                    InputRequiredResult::from_request_state(handle)
                        .with_meta(waiting_meta(&self.hub, &request)),
                ));
            }
            Err(refusal) => return Ok(tool_error(refusal_text(&self.hub, &refusal))),
        };
        self.forward_call(
            permitted,
            &link,
            client,
            LaterRound::default(),
            &context,
            args_json,
        )
        .await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        let mut resources = Vec::new();
        for (upstream, _, offer) in offers(&links) {
            for r in &offer.resources {
                if !matches!(
                    self.visibility(&caller, upstream, ActionClass::McpRead, &r.uri),
                    Preview::Denied
                ) {
                    resources.push(r.clone());
                }
            }
        }
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        let templates = offers(&links)
            .iter()
            .flat_map(|(_, _, o)| o.templates.clone())
            .collect();
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&context)?;
        let uri = self.judgeable_uri(&caller, &request.uri).await?;
        let links = self.links(&caller, &context).await;
        let (upstream, link) = resource_owner(&links, &uri)?;
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let action = self.action(
            &caller,
            &upstream,
            ActionClass::McpRead,
            &uri,
            serde_json::Value::Object(Default::default()),
            intent,
        );
        let target = format!("resource:{uri}");
        let args = serde_json::json!({});
        let earlier = self.earlier_read_round(
            &caller,
            &upstream,
            &target,
            &args,
            request.request_state.as_deref(),
        )?;
        let (round, answered) = self.read_round(&link, earlier, request.input_responses)?;
        let (permitted, forwarder) = self.admit_read(action, &link, &context, &meta).await?;
        self.record_read_answers(&link, answered).await?;
        match forward::read_resource(permitted, &forwarder, round)
            .await
            .map_err(service_error)?
        {
            ReadResourceResponse::InputRequired(_) if !speaks_stateless(&context) => {
                Err(input_for_session_reads())
            }
            ReadResourceResponse::InputRequired(asked) => Ok(ReadResourceResponse::InputRequired(
                self.park_read_round(&caller, &upstream, target, &args, asked),
            )),
            done => Ok(done),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        let uri = self.judgeable_uri(&caller, &request.uri).await?;
        let links = self.links(&caller, &context).await;
        let (upstream, link) = resource_owner(&links, &uri)?;
        let supports = link
            .forwarder()
            .capabilities()
            .and_then(|c| c.resources.as_ref().and_then(|r| r.subscribe))
            .unwrap_or(false);
        if !supports {
            return Err(McpError::invalid_params(
                format!("upstream {} does not offer subscriptions", upstream.name),
                None,
            ));
        }
        // Updates say only that a resource changed; a subscription is
        // gated as a read of it all the same.
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let action = self.action(
            &caller,
            &upstream,
            ActionClass::McpRead,
            &uri,
            serde_json::json!({ "args": {}, "subscription": "start" }),
            intent,
        );
        let (permitted, forwarder) = self.admit_read(action, &link, &context, &meta).await?;
        forward::subscribe(permitted, &forwarder)
            .await
            .map_err(service_error)?;
        link.note_subscribed(&uri, true);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        let uri = self.judgeable_uri(&caller, &request.uri).await?;
        let links = self.links(&caller, &context).await;
        let (upstream, link) = resource_owner(&links, &uri)?;
        // This session stops hearing updates whatever policy says; the
        // upstream hears of it only through an admission.
        if !link.note_subscribed(&uri, false) {
            return Ok(());
        }
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let action = self.action(
            &caller,
            &upstream,
            ActionClass::McpRead,
            &uri,
            serde_json::json!({ "args": {}, "subscription": "end" }),
            intent,
        );
        let (permitted, forwarder) = self.admit_read(action, &link, &context, &meta).await?;
        forward::unsubscribe(permitted, &forwarder)
            .await
            .map_err(service_error)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        let colliding = self.withheld_names(&links);
        let mut prompts = Vec::new();
        for (upstream, _, offer) in offers(&links) {
            for prompt in &offer.prompts {
                let exposed = upstream.exposed(&prompt.name);
                if colliding.contains(&exposed)
                    || matches!(
                        self.visibility(&caller, upstream, ActionClass::McpRead, &prompt.name),
                        Preview::Denied
                    )
                {
                    continue;
                }
                let mut prompt = prompt.clone();
                prompt.name = exposed;
                prompts.push(prompt);
            }
        }
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        let Resolved {
            upstream,
            link,
            own: prompt,
        } = resolve(&links, &request.name, Named::Prompt, &self.hub)?;
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
        let args_for_round = args.clone();
        let action = self.action(
            &caller,
            &upstream,
            ActionClass::McpRead,
            &prompt,
            args,
            intent,
        );
        let target = format!("prompt:{prompt}");
        let earlier = self.earlier_read_round(
            &caller,
            &upstream,
            &target,
            &args_for_round,
            request.request_state.as_deref(),
        )?;
        let (round, answered) = self.read_round(&link, earlier, request.input_responses)?;
        let (permitted, forwarder) = self.admit_read(action, &link, &context, &meta).await?;
        self.record_read_answers(&link, answered).await?;
        match forward::get_prompt(permitted, &forwarder, round)
            .await
            .map_err(service_error)?
        {
            GetPromptResponse::InputRequired(_) if !speaks_stateless(&context) => {
                Err(input_for_session_reads())
            }
            GetPromptResponse::InputRequired(asked) => Ok(GetPromptResponse::InputRequired(
                self.park_read_round(&caller, &upstream, target, &args_for_round, asked),
            )),
            done => Ok(done),
        }
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let caller = self.caller(&context)?;
        let links = self.links(&caller, &context).await;
        // A completion is gated as a read of what it completes: the
        // prompt, or the resource template, in the upstream's own names.
        let mut upstream_params = request.clone();
        let (upstream, link, operation) = match &request.r#ref {
            Reference::Prompt(p) => {
                let r = resolve(&links, &p.name, Named::Prompt, &self.hub)?;
                if let Reference::Prompt(own) = &mut upstream_params.r#ref {
                    own.name = r.own.clone();
                }
                (r.upstream, r.link, r.own)
            }
            Reference::Resource(t) => {
                let owners: Vec<_> = offers(&links)
                    .into_iter()
                    .filter(|(_, _, o)| o.templates.iter().any(|x| x.uri_template == t.uri))
                    .map(|(u, l, _)| (u.clone(), l.clone()))
                    .collect();
                match owners.as_slice() {
                    [(u, l)] => (u.clone(), l.clone(), t.uri.clone()),
                    [] => {
                        return Err(McpError::invalid_params(
                            format!("no upstream offers the resource template {:?}", t.uri),
                            None,
                        ));
                    }
                    _ => {
                        return Err(McpError::invalid_params(
                            format!(
                                "the resource template {:?} is offered by several upstreams; gavel will not guess",
                                t.uri
                            ),
                            None,
                        ));
                    }
                }
            }
            _ => {
                return Err(McpError::invalid_params(
                    "gavel: unknown completion reference type",
                    None,
                ));
            }
        };
        let supports = link
            .forwarder()
            .capabilities()
            .is_some_and(|c| c.completions.is_some());
        if !supports {
            return Ok(CompleteResult::default());
        }
        let meta = request_meta(&context, request.meta.as_ref());
        // Policy sees the arguments already chosen (the completion's
        // context) with the one being completed, as it would see a
        // prompts/get with them.
        let mut args = serde_json::Map::new();
        if let Some(context) = &request.context
            && let Some(known) = &context.arguments
        {
            for (name, value) in known {
                args.insert(name.clone(), serde_json::Value::String(value.clone()));
            }
        }
        args.insert(
            request.argument.name.clone(),
            serde_json::Value::String(request.argument.value.clone()),
        );
        let mut action = self.action(
            &caller,
            &upstream,
            ActionClass::McpRead,
            &operation,
            serde_json::Value::Object(args),
            take_intent(&meta, &mut None, None),
        );
        upstream_params.meta = None;
        action.details["completion"] = serde_json::to_value(&upstream_params)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let (permitted, forwarder) = self.admit_read(action, &link, &context, &meta).await?;
        forward::complete(permitted, &forwarder)
            .await
            .map_err(service_error)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.caller(&context)?;
        *self.links.level.lock().unwrap_or_else(|p| p.into_inner()) = Some(request.level);
        for link in self.links.live().await {
            let supports = link
                .forwarder()
                .capabilities()
                .is_some_and(|c| c.logging.is_some());
            if !supports {
                continue;
            }
            crate::link::record_relayed(
                &link.client,
                &link.upstream.resource,
                ActionClass::McpRead,
                "logging/setLevel",
                format!(
                    "the client asked for logs at level {:?} and above",
                    request.level
                ),
            )
            .await?;
            if let Err(e) = link.set_level(request.level).await {
                tracing::debug!(upstream = %link.upstream.name, error = %e.message, "logging/setLevel failed upstream");
            }
        }
        Ok(())
    }
}

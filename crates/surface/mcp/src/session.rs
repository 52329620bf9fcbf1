//! One downstream MCP session: the server side a client talks to. Every
//! request is tied to the principal the `/mcp` middleware authenticated,
//! and a session stays with the principal that opened it.

use crate::{Caller, Hub, SEPARATOR, Upstream};
use gavel_core::{
    Action, ActionClass, ApprovalRequest, Decision, Outcome, Permit, PolicyVerdict, RequestState,
    Verdict,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
    GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams,
    InitializeResult, JsonObject, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, RequestMetaObject,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer, ServiceError};
use rmcp::{ErrorData as McpError, ServerHandler};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// JSON-RPC error code of a gavel refusal of a read (server-defined range).
const REFUSED: ErrorCode = ErrorCode(-32050);
/// How often a held call with a progress token hears that it still waits.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Recent calls kept per session for reviewers.
const RECENT: usize = 10;
/// The longest text of a tool description or result kept in a record.
const EXCERPT: usize = 500;

pub(crate) struct Session {
    hub: Arc<Hub>,
    /// The principal that opened the session (qualified id).
    owner: OnceLock<String>,
    /// Set once the session's peer is registered for list changes.
    registered: OnceLock<()>,
    /// Tells this session's subscriptions apart from others'.
    id: u64,
    recent: Mutex<VecDeque<String>>,
}

/// What policy lets a principal do with a tool, for `tools/list`.
enum Visibility {
    Hidden,
    Allowed,
    NeedsApproval,
    /// Denied without arguments, but policy reads arguments: some
    /// arguments may be allowed.
    DependsOnArguments,
}

/// Why a held or refused action does not run, for the client.
struct Refusal(String);

fn excerpt(s: &str) -> String {
    if s.len() <= EXCERPT {
        return s.to_owned();
    }
    let mut end = EXCERPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn service_error(e: ServiceError) -> McpError {
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
            hub,
            owner: OnceLock::new(),
            registered: OnceLock::new(),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
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
        let id = caller.principal.qualified_id();
        if self.owner.get_or_init(|| id.clone()) != &id {
            return Err(McpError::invalid_request(
                "this MCP session belongs to another principal",
                None,
            ));
        }
        Ok(caller)
    }

    fn visibility(
        &self,
        caller: &Caller,
        upstream: &Upstream,
        class: ActionClass,
        name: &str,
    ) -> Visibility {
        let action = self.action(
            caller,
            upstream,
            class,
            name,
            serde_json::Value::Object(Default::default()),
            String::new(),
        );
        let policy = self.hub.gate.policy();
        let decision = policy.evaluate(&action);
        match decision.verdict {
            PolicyVerdict::Allow => Visibility::Allowed,
            PolicyVerdict::NeedsApproval { .. } => Visibility::NeedsApproval,
            PolicyVerdict::Deny if policy.denial_depends_on_arguments(&action, &decision) => {
                Visibility::DependsOnArguments
            }
            PolicyVerdict::Deny => Visibility::Hidden,
        }
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
            surface: "mcp".into(),
            source: caller.source.clone(),
        }
    }

    fn remember(&self, line: String) -> Vec<String> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let before: Vec<String> = recent.iter().cloned().collect();
        recent.push_back(line);
        while recent.len() > RECENT {
            recent.pop_front();
        }
        before
    }

    /// The gate's answer for `action`, holding it while a human decides.
    /// `Ok(permit)` means forward.
    async fn decide(
        &self,
        action: Action,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Permit, Refusal> {
        let verdict = match self.hub.gate.check(action.clone()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "gate check failed; refusing (fail closed)");
                return Err(Refusal(
                    "gavel: could not decide (internal error); refused (fail closed)".into(),
                ));
            }
        };
        match verdict {
            Verdict::Allow(permit) => Ok(permit),
            Verdict::Deny { policies, reason } => Err(Refusal(if policies.is_empty() {
                format!("gavel: denied: {reason}")
            } else {
                format!("gavel: denied by policy {}: {reason}", policies.join(", "))
            })),
            Verdict::Pending(request) => self.hold(*request, action, ctx).await,
        }
    }

    async fn hold(
        &self,
        request: ApprovalRequest,
        action: Action,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Permit, Refusal> {
        let id = request.id.clone();
        let url = format!("{}/requests/{}", self.hub.public_url, id);
        let hold = self.hub.hold;
        let approvals = self.hub.gate.approvals().clone();
        let progress = ctx.meta.get_progress_token();
        let wait = approvals.wait(&id, hold);
        tokio::pin!(wait);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let mut step = 0.0;
        let waited = loop {
            tokio::select! {
                r = &mut wait => break r,
                _ = ctx.ct.cancelled() => {
                    // notifications/cancelled: nobody will run the action,
                    // so nobody should approve it.
                    match approvals.withdraw(&id, &action.principal).await {
                        Ok(true) => tracing::info!(request = %id, "held MCP call cancelled; request withdrawn"),
                        Ok(false) => {}
                        Err(e) => tracing::error!(request = %id, error = %e, "withdrawing a cancelled request failed"),
                    }
                    return Err(Refusal(format!("gavel: cancelled by the client; request {id} withdrawn")));
                }
                _ = tick.tick(), if progress.is_some() => {
                    if let Some(token) = &progress {
                        step += 1.0;
                        let mut p = ProgressNotificationParam::new(token.clone(), step);
                        p.message = Some(format!("waiting for approval of gavel request {id}: {url}"));
                        if let Err(e) = ctx.peer.notify_progress(p).await {
                            tracing::debug!(error = %e, "progress notification failed");
                        }
                    }
                }
            }
        };
        let class = action.class;
        let pending = |what: &str| {
            Refusal(format!(
                "gavel: {what}: request {id} needs approval: {url} — nothing was run. Once it is approved, repeat the identical call (same arguments) within the grant's lifetime and it passes once. Classified as {class}."
            ))
        };
        let request = match waited {
            Err(e) => {
                tracing::error!(error = %e, request = %id, "waiting for a decision failed");
                return Err(pending("could not wait for the decision"));
            }
            Ok(None) => return Err(pending("the request vanished")),
            Ok(Some(r)) => r,
        };
        match request.state {
            RequestState::Approved => match self.hub.gate.check(action).await {
                Ok(Verdict::Allow(permit)) => Ok(permit),
                // Another identical call spent the grant first (or policy
                // changed): the gate opened a new request; name that one.
                Ok(Verdict::Pending(new)) => {
                    let new_url = format!("{}/requests/{}", self.hub.public_url, new.id);
                    Err(Refusal(format!(
                        "gavel: the approval of request {id} was used by an identical call first; this call needs request {} approved: {new_url}",
                        new.id
                    )))
                }
                Ok(Verdict::Deny { policies, reason }) => Err(Refusal(format!(
                    "gavel: request {id} was approved, but policy now denies the call ({}): {reason}",
                    policies.join(", ")
                ))),
                Err(_) => Err(pending("could not use the approval")),
            },
            RequestState::Denied => {
                let by = request
                    .reviews
                    .iter()
                    .find(|r| r.decision == Decision::Deny)
                    .map(|r| format!("{}: {}", r.reviewer.0, r.comment))
                    .unwrap_or_default();
                Err(Refusal(format!(
                    "gavel: request {id} was denied by {by} ({url})"
                )))
            }
            RequestState::Expired => Err(Refusal(format!(
                "gavel: request {id} expired without a decision: {url}"
            ))),
            _ => Err(pending(&format!("no decision within {}", humanize(hold)))),
        }
    }

    async fn record(&self, action: &Action, permit: &Permit, outcome: Outcome) {
        match permit.request_id() {
            // A grant was spent: its request moves on with the outcome.
            Some(id) => {
                if let Err(e) = self
                    .hub
                    .gate
                    .record_outcome(action, Some(id), &outcome)
                    .await
                {
                    tracing::error!(error = %e, request = %id, "recording an outcome failed");
                }
            }
            None => self.hub.gate.note_outcome(action, &outcome),
        }
    }

    /// Gates an `mcp.read` (a resource or a prompt) and returns the permit
    /// with the upstream's connection. A refusal is a JSON-RPC error; an
    /// upstream that went away after the permit is recorded as the outcome.
    async fn gate_read(
        &self,
        action: &Action,
        upstream: &Upstream,
        context: &RequestContext<RoleServer>,
    ) -> Result<(Permit, rmcp::service::Peer<rmcp::service::RoleClient>), McpError> {
        let permit = self
            .decide(action.clone(), context)
            .await
            .map_err(|Refusal(text)| McpError::new(REFUSED, text, None))?;
        let Some(peer) = upstream.peer() else {
            let detail = format!("upstream {} is not connected", upstream.name);
            self.record(
                action,
                &permit,
                Outcome::Failed {
                    detail: detail.clone(),
                },
            )
            .await;
            return Err(McpError::internal_error(detail, None));
        };
        Ok((permit, peer))
    }

    fn split<'a>(&self, name: &'a str) -> Result<(&Arc<Upstream>, &'a str), McpError> {
        name.split_once(SEPARATOR)
            .and_then(|(up, rest)| self.hub.upstream(up).map(|u| (u, rest)))
            .ok_or_else(|| {
                McpError::invalid_params(
                    format!("unknown name {name:?}: gavel names are UPSTREAM{SEPARATOR}NAME"),
                    None,
                )
            })
    }

    /// The one upstream that serves `uri`: the one that listed it, else
    /// the one with a template whose fixed prefix it starts with, else the
    /// only upstream that offers resources at all. A URI two upstreams
    /// claim is refused rather than guessed.
    fn resource_owner(&self, uri: &str) -> Result<&Arc<Upstream>, McpError> {
        let ups = &self.hub.upstreams;
        let mut owners: Vec<&Arc<Upstream>> = ups
            .iter()
            .filter(|u| u.offer().resources.iter().any(|r| r.uri == uri))
            .collect();
        if owners.is_empty() {
            owners = ups
                .iter()
                .filter(|u| {
                    u.offer().templates.iter().any(|t| {
                        let prefix = t.uri_template.split('{').next().unwrap_or("");
                        !prefix.is_empty() && uri.starts_with(prefix)
                    })
                })
                .collect();
        }
        if owners.is_empty() {
            let with_resources: Vec<&Arc<Upstream>> = ups
                .iter()
                .filter(|u| {
                    u.peer()
                        .and_then(|p| p.peer_info())
                        .is_some_and(|i| i.capabilities.resources.is_some())
                })
                .collect();
            if let [only] = with_resources.as_slice() {
                owners.push(only);
            }
        }
        match owners.as_slice() {
            [one] => Ok(one),
            [] => Err(McpError::resource_not_found(
                format!("no upstream offers {uri:?}"),
                None,
            )),
            many => Err(McpError::invalid_params(
                format!(
                    "{uri:?} is offered by several upstreams ({}); gavel will not guess",
                    many.iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            )),
        }
    }
}

/// How a forwarded read ended, for the audit log.
fn read_outcome<T>(result: &Result<T, ServiceError>, what: &str) -> Outcome {
    match result {
        Ok(_) => Outcome::Succeeded {
            detail: what.into(),
        },
        Err(e) => Outcome::Failed {
            detail: excerpt(&e.to_string()),
        },
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

/// `_meta` for the upstream: only gavel's own progress token. Nothing of
/// the client's `_meta` passes, since none of it is gated.
fn upstream_meta(progress: Option<&crate::ProgressRelay>) -> Option<RequestMetaObject> {
    let relay = progress?;
    let mut out = RequestMetaObject::default();
    out.set_progress_token(relay.token.clone());
    Some(out)
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
        ServerConfig::new(
            ServerCapabilities::builder()
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
            "gavel gateway: tools and prompts are named UPSTREAM{SEPARATOR}NAME. Every call is checked against policy; some wait for a human's approval. State why you act in _meta.intent."
        ))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        // Sessions (Mcp-Session-Id) with list_changed notifications on
        // them, and no JSON-RPC batches (which 2025-03-26 allowed).
        Cow::Borrowed(&[ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25])
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.caller(&context)?;
        context.peer.set_peer_info(request.clone());
        if self.registered.set(()).is_ok() {
            self.hub.register(context.peer.clone());
        }
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&context)?;
        let mut tools = Vec::new();
        for upstream in &self.hub.upstreams {
            for tool in &upstream.offer().tools {
                let note = match self.visibility(
                    &caller,
                    upstream,
                    ActionClass::McpCall,
                    &tool.name,
                ) {
                    Visibility::Hidden => continue,
                    Visibility::Allowed => None,
                    Visibility::NeedsApproval => {
                        Some("[gavel: needs a human's approval; the call waits for it]")
                    }
                    Visibility::DependsOnArguments => Some(
                        "[gavel: allowed only for some arguments; others are refused or need approval]",
                    ),
                };
                let mut tool = tool.clone();
                tool.name = format!("{}{SEPARATOR}{}", upstream.name, tool.name).into();
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
        let (upstream, tool_name) = self.split(&request.name)?;
        let offer = upstream.offer();
        let Some(tool) = offer.tools.iter().find(|t| t.name == tool_name) else {
            if upstream.peer().is_none() {
                return Ok(tool_error(format!(
                    "gavel: upstream {} is not connected (it is being restarted); try again shortly",
                    upstream.name
                )));
            }
            return Err(McpError::invalid_params(
                format!("unknown tool {:?}", request.name),
                None,
            ));
        };
        let mut args = request.arguments.clone();
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut args, Some(tool.input_schema.as_ref()));
        let args_json = serde_json::Value::Object(args.clone().unwrap_or_default());
        let mut action = self.action(
            &caller,
            upstream,
            ActionClass::McpCall,
            tool_name,
            args_json.clone(),
            intent,
        );
        let line = format!(
            "{}{SEPARATOR}{tool_name} {}",
            upstream.name,
            excerpt(&args_json.to_string())
        );
        action.data_context = serde_json::json!({
            "upstream": upstream.name,
            "tool_description": excerpt(tool.description.as_deref().unwrap_or("")),
            "read_only_hint": tool.annotations.as_ref().and_then(|a| a.read_only_hint),
            "destructive_hint": tool.annotations.as_ref().and_then(|a| a.destructive_hint),
            "recent_calls": self.remember(line),
        });
        let permit = match self.decide(action.clone(), &context).await {
            Ok(p) => p,
            Err(Refusal(text)) => return Ok(tool_error(text)),
        };
        let Some(peer) = upstream.peer() else {
            let detail = format!("upstream {} is not connected", upstream.name);
            self.record(
                &action,
                &permit,
                Outcome::Failed {
                    detail: detail.clone(),
                },
            )
            .await;
            return Ok(tool_error(format!("gavel: {detail}; try again shortly")));
        };
        let relay = context
            .meta
            .get_progress_token()
            .or_else(|| meta.get_progress_token())
            .map(|t| self.hub.progress_relay(context.peer.clone(), t));
        let mut forwarded = CallToolRequestParams::new(tool_name.to_owned());
        forwarded.arguments = args;
        forwarded.meta = upstream_meta(relay.as_ref());
        let result = tokio::select! {
            r = peer.call_tool_once(forwarded) => r,
            _ = context.ct.cancelled() => {
                drop(relay);
                // It was forwarded: the upstream may well have run it.
                self.record(&action, &permit, Outcome::Succeeded {
                    detail: "forwarded; the client cancelled before the result, so the outcome is unknown".into(),
                }).await;
                return Err(McpError::internal_error("cancelled by the client", None));
            }
        };
        drop(relay);
        let outcome = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => Outcome::Failed {
                detail: excerpt(
                    &r.content
                        .iter()
                        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            },
            Ok(CallToolResponse::Complete(r)) => Outcome::Succeeded {
                detail: format!("{} content block(s)", r.content.len()),
            },
            Ok(_) => Outcome::Succeeded {
                detail: "incomplete result (input required or task)".into(),
            },
            Err(e) => Outcome::Failed {
                detail: excerpt(&e.to_string()),
            },
        };
        self.record(&action, &permit, outcome).await;
        result.map_err(service_error)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = self.caller(&context)?;
        let mut resources = Vec::new();
        for upstream in &self.hub.upstreams {
            for r in &upstream.offer().resources {
                if !matches!(
                    self.visibility(&caller, upstream, ActionClass::McpRead, &r.uri),
                    Visibility::Hidden
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
        self.caller(&context)?;
        let templates = self
            .hub
            .upstreams
            .iter()
            .flat_map(|u| u.offer().templates.clone())
            .collect();
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = self.caller(&context)?;
        let upstream = self.resource_owner(&request.uri)?;
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let action = self.action(
            &caller,
            upstream,
            ActionClass::McpRead,
            &request.uri,
            serde_json::Value::Object(Default::default()),
            intent,
        );
        let (permit, peer) = self.gate_read(&action, upstream, &context).await?;
        // Exactly what was gated: the URI, nothing else of the client's.
        let forwarded = ReadResourceRequestParams::new(request.uri.clone());
        let result = peer.read_resource_once(forwarded).await;
        self.record(&action, &permit, read_outcome(&result, "read"))
            .await;
        result.map_err(service_error)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        let upstream = self.resource_owner(&request.uri)?;
        let supports = upstream
            .peer()
            .and_then(|p| p.peer_info())
            .and_then(|i| i.capabilities.resources.as_ref().and_then(|r| r.subscribe))
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
            upstream,
            ActionClass::McpRead,
            &request.uri,
            serde_json::Value::Object(Default::default()),
            intent,
        );
        let permit = self
            .decide(action.clone(), &context)
            .await
            .map_err(|Refusal(text)| McpError::new(REFUSED, text, None))?;
        if self
            .hub
            .subscribe(&upstream.name, &request.uri, self.id, context.peer.clone())
            && let Some(peer) = upstream.peer()
            && let Err(e) = peer
                .subscribe(SubscribeRequestParams::new(request.uri.clone()))
                .await
        {
            self.hub.unsubscribe(&upstream.name, &request.uri, self.id);
            let detail = excerpt(&e.to_string());
            self.record(&action, &permit, Outcome::Failed { detail })
                .await;
            return Err(service_error(e));
        }
        self.record(
            &action,
            &permit,
            Outcome::Succeeded {
                detail: "subscribed".into(),
            },
        )
        .await;
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.caller(&context)?;
        let upstream = self.resource_owner(&request.uri)?;
        if self.hub.unsubscribe(&upstream.name, &request.uri, self.id)
            && let Some(peer) = upstream.peer()
        {
            peer.unsubscribe(UnsubscribeRequestParams::new(request.uri.clone()))
                .await
                .map_err(service_error)?;
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let caller = self.caller(&context)?;
        let mut prompts = Vec::new();
        for upstream in &self.hub.upstreams {
            for prompt in &upstream.offer().prompts {
                if matches!(
                    self.visibility(&caller, upstream, ActionClass::McpRead, &prompt.name),
                    Visibility::Hidden
                ) {
                    continue;
                }
                let mut prompt = prompt.clone();
                prompt.name = format!("{}{SEPARATOR}{}", upstream.name, prompt.name);
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
        let (upstream, prompt) = self.split(&request.name)?;
        if !upstream.offer().prompts.iter().any(|p| p.name == prompt) {
            return Err(McpError::invalid_params(
                format!("unknown prompt {:?}", request.name),
                None,
            ));
        }
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
        let action = self.action(
            &caller,
            upstream,
            ActionClass::McpRead,
            prompt,
            args,
            intent,
        );
        let (permit, peer) = self.gate_read(&action, upstream, &context).await?;
        // Exactly what was gated: the name and the arguments.
        let mut forwarded = GetPromptRequestParams::new(prompt.to_owned());
        forwarded.arguments = request.arguments.clone();
        let result = peer.get_prompt_once(forwarded).await;
        self.record(&action, &permit, read_outcome(&result, "prompt"))
            .await;
        result.map_err(service_error)
    }
}

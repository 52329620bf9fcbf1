//! One downstream MCP session: the server side a client talks to. Every
//! request is tied to the principal the `/mcp` middleware authenticated,
//! and a session stays with the principal that opened it.

use crate::forward::{self, Forwarded, excerpt};
use crate::{Caller, Hub, SEPARATOR, Upstream};
use gavel_core::{
    Action, ActionClass, ApprovalRequest, Cancellation, Hold, Outcome, Permitted, Preview, Refusal,
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
/// Recent calls kept per session for reviewers.
const RECENT: usize = 10;

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

    fn remember(&self, line: String) -> Vec<String> {
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

    /// Admits an `mcp.read` (a resource, a prompt, a subscription) and
    /// returns the proof with the upstream's connection. A refusal is a
    /// JSON-RPC error; an upstream that went away after admission is
    /// recorded as the outcome.
    async fn admit_read(
        &self,
        action: Action,
        upstream: &Upstream,
        context: &RequestContext<RoleServer>,
        meta: &RequestMetaObject,
    ) -> Result<(Permitted, forward::Forwarder), McpError> {
        let permitted = self
            .admit(action, context, meta)
            .await
            .map_err(|r| McpError::new(REFUSED, refusal_text(&self.hub, &r), None))?;
        let Some(peer) = upstream.forwarder() else {
            let detail = format!("upstream {} is not connected", upstream.name);
            permitted.finish(Outcome::Failed {
                detail: detail.clone(),
            });
            return Err(McpError::internal_error(detail, None));
        };
        Ok((permitted, peer))
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
                    u.forwarder()
                        .and_then(|f| f.capabilities())
                        .is_some_and(|c| c.resources.is_some())
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
            if upstream.forwarder().is_none() {
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
        // Paths as the server will resolve them: policy judges, the grant
        // binds and the upstream receives the same form.
        if let Some(map) = args.as_mut()
            && let Err(e) = crate::uri::normalize_path_arguments(map)
        {
            let raw = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
            let action = self.action(
                &caller,
                upstream,
                ActionClass::McpCall,
                tool_name,
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
        let permitted = match self.admit(action, &context, &meta).await {
            Ok(p) => p,
            Err(refusal) => return Ok(tool_error(refusal_text(&self.hub, &refusal))),
        };
        let Some(peer) = upstream.forwarder() else {
            let detail = format!("upstream {} is not connected", upstream.name);
            permitted.finish(Outcome::Failed {
                detail: detail.clone(),
            });
            return Ok(tool_error(format!("gavel: {detail}; try again shortly")));
        };
        let relay = context
            .meta
            .get_progress_token()
            .or_else(|| meta.get_progress_token())
            .map(|t| self.hub.progress_relay(context.peer.clone(), t));
        match forward::call_tool(permitted, &peer, relay.as_ref(), &context.ct).await {
            Forwarded::Answered(result) => result.map_err(service_error),
            Forwarded::CancelledByClient => {
                Err(McpError::internal_error("cancelled by the client", None))
            }
        }
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
        let uri = self.judgeable_uri(&caller, &request.uri).await?;
        let upstream = self.resource_owner(&uri)?;
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let action = self.action(
            &caller,
            upstream,
            ActionClass::McpRead,
            &uri,
            serde_json::Value::Object(Default::default()),
            intent,
        );
        let (permitted, peer) = self.admit_read(action, upstream, &context, &meta).await?;
        forward::read_resource(permitted, &peer)
            .await
            .map_err(service_error)
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        let uri = self.judgeable_uri(&caller, &request.uri).await?;
        let upstream = self.resource_owner(&uri)?;
        let supports = upstream
            .forwarder()
            .and_then(|f| f.capabilities())
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
            upstream,
            ActionClass::McpRead,
            &uri,
            serde_json::json!({ "args": {}, "subscription": "start" }),
            intent,
        );
        let (permitted, peer) = self.admit_read(action, upstream, &context, &meta).await?;
        // One upstream subscription per URI serves every session: only the
        // first subscriber's admission reaches the upstream.
        if !self.hub.subscribe(
            &upstream.name,
            &uri,
            self.id,
            context.peer.clone(),
            caller.principal.clone(),
        ) {
            permitted.finish(Outcome::Succeeded {
                detail: "subscribed (the upstream subscription exists)".into(),
            });
            return Ok(());
        }
        if let Err(e) = forward::subscribe(permitted, &peer).await {
            self.hub.unsubscribe(&upstream.name, &uri, self.id);
            return Err(service_error(e));
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let caller = self.caller(&context)?;
        let uri = self.judgeable_uri(&caller, &request.uri).await?;
        let upstream = self.resource_owner(&uri)?;
        // This session stops hearing updates whatever policy says; the
        // upstream hears of it only through an admission.
        if !self.hub.unsubscribe(&upstream.name, &uri, self.id) {
            return Ok(());
        }
        let meta = request_meta(&context, request.meta.as_ref());
        let intent = take_intent(&meta, &mut None, None);
        let action = self.action(
            &caller,
            upstream,
            ActionClass::McpRead,
            &uri,
            serde_json::json!({ "args": {}, "subscription": "end" }),
            intent,
        );
        let (permitted, peer) = self.admit_read(action, upstream, &context, &meta).await?;
        forward::unsubscribe(permitted, &peer)
            .await
            .map_err(service_error)
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
                    Preview::Denied
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
        let (permitted, peer) = self.admit_read(action, upstream, &context, &meta).await?;
        forward::get_prompt(permitted, &peer)
            .await
            .map_err(service_error)
    }
}

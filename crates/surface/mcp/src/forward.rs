//! The only calls that reach an upstream on a client's behalf. A session
//! reaches an upstream only through a [`Forwarder`] (the connection is
//! private to it), and each of its calls takes the [`Permitted`] the gate
//! gave for exactly that call, builds the upstream request from the
//! admitted action (never from the client's message), sends it, and
//! finishes the admission with the outcome.

use crate::ProgressRelay;
use gavel_core::{Outcome, Permitted};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, GetPromptRequestParams, GetPromptResponse, JsonObject,
    ReadResourceRequestParams, ReadResourceResponse, RequestMetaObject, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
use rmcp::service::{Peer, RoleClient, ServiceError};
use tokio_util::sync::CancellationToken;

/// The longest text of a result kept in a record.
const EXCERPT: usize = 500;

pub(crate) fn excerpt(s: &str) -> String {
    if s.len() <= EXCERPT {
        return s.to_owned();
    }
    let mut end = EXCERPT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The admitted arguments (`details.args`), as an object.
fn admitted_args(p: &Permitted) -> Option<JsonObject> {
    p.action()
        .details
        .get("args")
        .and_then(|a| a.as_object())
        .filter(|a| !a.is_empty())
        .cloned()
}

/// `_meta` for the upstream: only gavel's own progress token. Nothing of
/// the client's `_meta` passes, since none of it is gated.
fn upstream_meta(progress: Option<&ProgressRelay>) -> Option<RequestMetaObject> {
    let relay = progress?;
    let mut out = RequestMetaObject::default();
    out.set_progress_token(relay.token.clone());
    Some(out)
}

/// The outcome of a call that failed on the way, or was answered.
fn result_outcome<T>(result: &Result<T, ServiceError>, what: &str) -> Outcome {
    match result {
        Ok(_) => Outcome::Succeeded {
            detail: what.into(),
        },
        Err(e) => Outcome::Failed {
            detail: excerpt(&e.to_string()),
        },
    }
}

/// A session's handle on an upstream connection: every request it sends
/// needs a [`Permitted`].
pub(crate) struct Forwarder(Peer<RoleClient>);

impl Forwarder {
    /// Wraps the upstream's connection; only `upstream.rs` has one.
    pub(crate) fn new(peer: Peer<RoleClient>) -> Forwarder {
        Forwarder(peer)
    }

    /// What the upstream said it can do when it initialized.
    pub(crate) fn capabilities(&self) -> Option<rmcp::model::ServerCapabilities> {
        self.0.peer_info().map(|i| i.capabilities.clone())
    }
}

/// What the client gets when it cancelled a call already forwarded.
pub(crate) enum Forwarded<T> {
    Answered(Result<T, ServiceError>),
    CancelledByClient,
}

/// `tools/call` of the admitted tool (`operation`) with the admitted
/// arguments.
pub(crate) async fn call_tool(
    permitted: Permitted,
    Forwarder(peer): &Forwarder,
    relay: Option<&ProgressRelay>,
    cancelled: &CancellationToken,
) -> Forwarded<CallToolResponse> {
    let mut request = CallToolRequestParams::new(permitted.action().operation.clone());
    request.arguments = admitted_args(&permitted);
    request.meta = upstream_meta(relay);
    let result = tokio::select! {
        r = peer.call_tool_once(request) => r,
        _ = cancelled.cancelled() => {
            // It was forwarded: the upstream may well have run it.
            permitted.finish(Outcome::Succeeded {
                detail: "forwarded; the client cancelled before the result, so the outcome is unknown".into(),
            });
            return Forwarded::CancelledByClient;
        }
    };
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
    permitted.finish(outcome);
    Forwarded::Answered(result)
}

/// `resources/read` of the admitted URI (`operation`, normalized).
pub(crate) async fn read_resource(
    permitted: Permitted,
    Forwarder(peer): &Forwarder,
) -> Result<ReadResourceResponse, ServiceError> {
    let request = ReadResourceRequestParams::new(permitted.action().operation.clone());
    let result = peer.read_resource_once(request).await;
    permitted.finish(result_outcome(&result, "read"));
    result
}

/// `prompts/get` of the admitted prompt with the admitted arguments.
pub(crate) async fn get_prompt(
    permitted: Permitted,
    Forwarder(peer): &Forwarder,
) -> Result<GetPromptResponse, ServiceError> {
    let mut request = GetPromptRequestParams::new(permitted.action().operation.clone());
    request.arguments = admitted_args(&permitted);
    let result = peer.get_prompt_once(request).await;
    permitted.finish(result_outcome(&result, "prompt"));
    result
}

/// `resources/subscribe` to the admitted URI.
pub(crate) async fn subscribe(
    permitted: Permitted,
    Forwarder(peer): &Forwarder,
) -> Result<(), ServiceError> {
    let request = SubscribeRequestParams::new(permitted.action().operation.clone());
    #[allow(deprecated)]
    let result = peer.subscribe(request).await;
    permitted.finish(result_outcome(&result, "subscribed"));
    result
}

/// `resources/unsubscribe` from the admitted URI.
pub(crate) async fn unsubscribe(
    permitted: Permitted,
    Forwarder(peer): &Forwarder,
) -> Result<(), ServiceError> {
    let request = UnsubscribeRequestParams::new(permitted.action().operation.clone());
    #[allow(deprecated)]
    let result = peer.unsubscribe(request).await;
    permitted.finish(result_outcome(&result, "unsubscribed"));
    result
}

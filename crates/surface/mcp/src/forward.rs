//! The only calls that reach an upstream on a client's behalf. A session
//! reaches an upstream only through a [`Forwarder`] (the connection is
//! private to it), and each of its calls takes the [`Permitted`] the gate
//! gave for exactly that call, builds the upstream request from the
//! admitted action (never from the client's message), sends it, and
//! finishes the admission with the outcome.

use crate::link::{Calls, track_call};
use gavel_core::{Outcome, Permitted};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, ClientRequest, CompleteRequestParams,
    CompleteResult, GetPromptRequestParams, GetPromptResponse, InputRequiredResult, InputResponses,
    JsonObject, ProgressToken, ReadResourceRequestParams, ReadResourceResponse, RequestId,
    ResultType, ServerResult, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient, ServiceError};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The longest text of a result kept in a record.
const EXCERPT: usize = 500;

pub(crate) fn excerpt(s: &str) -> String {
    excerpt_of(s, EXCERPT)
}

/// At most `limit` bytes of `s` (cut at a character boundary, marked …).
pub(crate) fn excerpt_of(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

// Results from an upstream of an older revision carry no `resultType`;
// each is marked complete (what the absent field means) so that a
// 2026-07-28 client, which requires it, reads it. rmcp clears it again for
// clients of older revisions.

/// The admitted arguments (`details.args`), as an object.
fn admitted_args(p: &Permitted) -> Option<JsonObject> {
    p.action()
        .details
        .get("args")
        .and_then(|a| a.as_object())
        .filter(|a| !a.is_empty())
        .cloned()
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

/// A session's handle on its upstream connection: every request it sends
/// needs a [`Permitted`].
pub(crate) struct Forwarder {
    peer: Peer<RoleClient>,
    calls: Arc<Mutex<Calls>>,
}

impl Forwarder {
    /// Wraps a session's upstream connection; only `link.rs` has one.
    pub(crate) fn new(peer: Peer<RoleClient>, calls: Arc<Mutex<Calls>>) -> Forwarder {
        Forwarder { peer, calls }
    }

    /// What the upstream said it can do when it initialized.
    pub(crate) fn capabilities(&self) -> Option<rmcp::model::ServerCapabilities> {
        self.peer.peer_info().map(|i| i.capabilities.clone())
    }
}

/// The client's request a forwarded call answers: progress and the
/// upstream's own requests during the call are relayed to it.
#[derive(Clone)]
pub(crate) struct ClientCall {
    pub id: RequestId,
    pub progress: Option<ProgressToken>,
}

/// A later round of a call the upstream asked input for: the client's
/// answers, and the upstream's own `requestState` (kept by gavel, never
/// seen by the client).
#[derive(Default)]
pub(crate) struct LaterRound {
    pub input_responses: Option<InputResponses>,
    pub upstream_state: Option<String>,
    /// Rounds of input this call took before (0 for a first round), and
    /// the deadline its first round set.
    pub earlier: u32,
    pub expires: Option<std::time::Instant>,
}

/// How a forwarded call ended for now.
pub(crate) enum Forwarded<T> {
    Answered(Result<T, ServiceError>),
    /// The upstream (2026-07-28) asks the client for input before it
    /// completes: the admission stays open for the client's next round.
    NeedsInput(InputRequiredResult, Box<Permitted>),
    /// The client cancelled a call already forwarded.
    CancelledByClient,
}

/// `tools/call` of the admitted tool (`operation`) with the admitted
/// arguments (and, in a later round, the client's answers). The upstream
/// request carries rmcp's own progress token, which is mapped back to the
/// client's.
pub(crate) async fn call_tool(
    permitted: Permitted,
    forwarder: &Forwarder,
    client: ClientCall,
    round: LaterRound,
    cancelled: &CancellationToken,
) -> Forwarded<CallToolResponse> {
    let mut params = CallToolRequestParams::new(permitted.action().operation.clone());
    // Always an object: a tool with an empty input schema still expects
    // `{}` (a missing `arguments` fails its validation).
    params.arguments = Some(admitted_args(&permitted).unwrap_or_default());
    params.input_responses = round.input_responses;
    params.request_state = round.upstream_state;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let mut handle = match forwarder
        .peer
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await
    {
        Ok(h) => h,
        Err(e) => {
            permitted.finish(Outcome::Failed {
                detail: excerpt(&e.to_string()),
            });
            return Forwarded::Answered(Err(e));
        }
    };
    let tracked = track_call(
        &forwarder.calls,
        handle.id.clone(),
        handle.progress_token.clone(),
        client.id,
        client.progress,
    );
    let answer = tokio::select! {
        r = &mut handle.rx => {
            tracked.settle().await;
            r
        }
        _ = cancelled.cancelled() => {
            let _ = handle.cancel(Some("cancelled by the client".into())).await;
            // It was forwarded: the upstream may well have run it.
            permitted.finish(Outcome::Succeeded {
                detail: "forwarded; the client cancelled before the result, so the outcome is unknown".into(),
            });
            return Forwarded::CancelledByClient;
        }
    };
    let result = match answer {
        Err(_) => Err(ServiceError::TransportClosed),
        Ok(Err(e)) => Err(e),
        Ok(Ok(ServerResult::CallToolResult(mut r))) => {
            r.result_type.get_or_insert(ResultType::COMPLETE);
            Ok(CallToolResponse::Complete(r))
        }
        Ok(Ok(ServerResult::InputRequiredResult(r))) => {
            return Forwarded::NeedsInput(r, Box::new(permitted));
        }
        Ok(Ok(ServerResult::CreateTaskResult(r))) => Ok(CallToolResponse::Task(r)),
        Ok(Ok(_)) => Err(ServiceError::UnexpectedResponse),
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
            detail: "the upstream made it a task".into(),
        },
        Err(e) => Outcome::Failed {
            detail: excerpt(&e.to_string()),
        },
    };
    permitted.finish(outcome);
    Forwarded::Answered(result)
}

/// `completion/complete` as admitted (`details.completion`: the
/// reference in the upstream's own names, the argument and its context).
pub(crate) async fn complete(
    permitted: Permitted,
    forwarder: &Forwarder,
) -> Result<CompleteResult, ServiceError> {
    let params = permitted
        .action()
        .details
        .get("completion")
        .cloned()
        .map(serde_json::from_value::<CompleteRequestParams>);
    let params = match params {
        Some(Ok(p)) => p,
        _ => {
            let e = ServiceError::McpError(rmcp::ErrorData::internal_error(
                "gavel: the admitted completion is malformed",
                None,
            ));
            permitted.finish(Outcome::Failed {
                detail: e.to_string(),
            });
            return Err(e);
        }
    };
    let result = forwarder.peer.complete(params).await.map(|mut r| {
        r.result_type.get_or_insert(ResultType::COMPLETE);
        r
    });
    permitted.finish(result_outcome(&result, "completion"));
    result
}

/// `resources/read` of the admitted URI (`operation`, normalized).
///
/// Reads and prompts are judged again in every round, so an upstream's
/// `input_required` and its `requestState` pass to the client as they are
/// and the client's answers come back in `round`.
pub(crate) async fn read_resource(
    permitted: Permitted,
    forwarder: &Forwarder,
    round: LaterRound,
) -> Result<ReadResourceResponse, ServiceError> {
    let mut request = ReadResourceRequestParams::new(permitted.action().operation.clone());
    request.input_responses = round.input_responses;
    request.request_state = round.upstream_state;
    let result = forwarder
        .peer
        .read_resource_once(request)
        .await
        .map(|r| match r {
            ReadResourceResponse::Complete(mut r) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                ReadResourceResponse::Complete(r)
            }
            other => other,
        });
    let what = match &result {
        Ok(ReadResourceResponse::InputRequired(_)) => {
            "not read yet: the upstream asked the client for input"
        }
        _ => "read",
    };
    permitted.finish(result_outcome(&result, what));
    result
}

/// `prompts/get` of the admitted prompt with the admitted arguments.
pub(crate) async fn get_prompt(
    permitted: Permitted,
    forwarder: &Forwarder,
    round: LaterRound,
) -> Result<GetPromptResponse, ServiceError> {
    let mut request = GetPromptRequestParams::new(permitted.action().operation.clone());
    request.arguments = admitted_args(&permitted);
    request.input_responses = round.input_responses;
    request.request_state = round.upstream_state;
    let result = forwarder
        .peer
        .get_prompt_once(request)
        .await
        .map(|r| match r {
            GetPromptResponse::Complete(mut r) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                GetPromptResponse::Complete(r)
            }
            other => other,
        });
    let what = match &result {
        Ok(GetPromptResponse::InputRequired(_)) => {
            "not rendered yet: the upstream asked the client for input"
        }
        _ => "prompt",
    };
    permitted.finish(result_outcome(&result, what));
    result
}

/// `resources/subscribe` to the admitted URI.
pub(crate) async fn subscribe(
    permitted: Permitted,
    forwarder: &Forwarder,
) -> Result<(), ServiceError> {
    let request = SubscribeRequestParams::new(permitted.action().operation.clone());
    #[allow(deprecated)]
    let result = forwarder.peer.subscribe(request).await;
    permitted.finish(result_outcome(&result, "subscribed"));
    result
}

/// `resources/unsubscribe` from the admitted URI.
pub(crate) async fn unsubscribe(
    permitted: Permitted,
    forwarder: &Forwarder,
) -> Result<(), ServiceError> {
    let request = UnsubscribeRequestParams::new(permitted.action().operation.clone());
    #[allow(deprecated)]
    let result = forwarder.peer.unsubscribe(request).await;
    permitted.finish(result_outcome(&result, "unsubscribed"));
    result
}

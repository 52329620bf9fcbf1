//! The JSON shapes of the API. Core types convert into these at the edge.

use gavel_core::{ApprovalRequest, Decision, Principal, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// RFC 3339 in UTC. Clamped to the years 1970–9999 that the format can
/// express, so no stored timestamp can make a view fail.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    const LATEST: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let clamped = Timestamp(t.0.clamp(0, LATEST));
    humantime::format_rfc3339_millis(clamped.to_system_time()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_never_fail_to_format() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Timestamp(i64::MAX)), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(Timestamp(-5)), "1970-01-01T00:00:00.000Z");
    }
}

/// Body of `POST /api/v1/actions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionRequest {
    /// The resource's name (any name is accepted; `[[resources.api]]`
    /// entries give names their kind and tags).
    pub resource: String,
    /// The action class, e.g. `sql.ddl`.
    pub action: String,
    /// The exact operation (statement, tool, `METHOD path`, command).
    pub operation: String,
    /// Why the agent wants to do it; shown to reviewers.
    #[serde(default)]
    pub intent: String,
    /// Facts the decision may depend on (a JSON object): `tables` for SQL,
    /// `tool`, `method`/`path`, `command`, or anything else to bind into
    /// the approval.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub details: Option<serde_json::Value>,
}

/// Body of `POST /api/v1/actions/outcome`: how an action admitted over
/// REST ended.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutcomeReport {
    /// The `admission_id` that `POST /api/v1/actions` answered with its
    /// `allow`. Each admission takes one outcome, from its initiator.
    pub admission_id: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// What happened (rows, status code, error message).
    #[serde(default)]
    pub detail: String,
}

/// Answer of `POST /api/v1/actions/outcome`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OutcomeRecorded {
    /// What the audit log now says of the action, e.g. `succeeded: 42 rows`.
    pub recorded: String,
}

/// Query of `POST /api/v1/actions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// Long-poll a pending verdict for up to this long (e.g. `30s`; capped at
    /// the configured `approvals.hold`).
    pub wait: Option<String>,
}

/// Query of `GET /api/v1/requests/{id}/wait`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TimeoutQuery {
    /// How long to wait for a decision (default 30s, at most 10m).
    pub timeout: Option<String>,
}

/// The gate's answer to `POST /api/v1/actions`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ActionVerdict {
    /// `allow`, `deny` or `pending`.
    pub verdict: &'static str,
    /// The approval request, when one is involved.
    pub request_id: Option<String>,
    /// Its short id, what people type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_id: Option<String>,
    /// Why.
    pub reason: String,
    /// Policies behind the verdict.
    pub policies: Vec<String>,
    /// Where a reviewer decides (pending only).
    pub url: Option<String>,
    /// What a reviewer runs to decide (pending only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_with: Option<String>,
    /// With `allow`: the id under which the agent reports how the action
    /// ended (`POST /api/v1/actions/outcome`), once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission_id: Option<String>,
}

/// Query of `GET /api/v1/requests`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only requests in this state.
    pub state: Option<String>,
    /// Only this initiator (`agent:NAME` or `human:ID`).
    pub initiator: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Body of approve and deny.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    /// The reviewer's comment.
    #[serde(default)]
    pub comment: Option<String>,
    /// The reason (deny; same as comment).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Who initiated a request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PrincipalView {
    /// `human` or `agent`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Id or agent name.
    pub id: String,
    /// The agent's owner.
    pub owner: Option<String>,
    /// The human the agent acts for (delegated tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
}

impl From<&Principal> for PrincipalView {
    fn from(p: &Principal) -> Self {
        PrincipalView {
            kind: p.kind(),
            id: p.id().to_owned(),
            owner: p.owner().map(|o| o.0.clone()),
            on_behalf_of: p.on_behalf_of().map(|h| h.0.clone()),
            groups: p.groups().to_vec(),
        }
    }
}

/// A guarded resource.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResourceView {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// One reviewer decision.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReviewView {
    /// Who.
    pub reviewer: String,
    /// `approve` or `deny`.
    pub decision: &'static str,
    /// Comment.
    pub comment: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A past request, for context.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryItem {
    /// Id.
    pub id: String,
    /// The short id people type (its last 8 hex digits).
    pub short_id: String,
    /// State.
    pub state: String,
    /// Initiator (`agent:NAME`).
    pub initiator: String,
    /// Resource.
    pub resource: String,
    /// Action class.
    pub action: String,
    /// Operation.
    pub operation: String,
    /// Created (RFC 3339).
    pub created_at: String,
}

impl From<&ApprovalRequest> for HistoryItem {
    fn from(r: &ApprovalRequest) -> Self {
        HistoryItem {
            id: r.id.0.clone(),
            short_id: r.id.short().to_owned(),
            state: r.state.as_str().into(),
            initiator: r.action.principal.qualified_id(),
            resource: r.action.resource.name.clone(),
            action: r.action.class.as_str().into(),
            operation: r.action.operation.clone(),
            created_at: rfc3339(r.created_at),
        }
    }
}

/// What a reviewer sees besides the request itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct History {
    /// The initiator's recent requests.
    pub initiator_recent: Vec<HistoryItem>,
    /// Past requests on the same resource, with their outcomes.
    pub resource_recent: Vec<HistoryItem>,
}

/// An approval request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestView {
    /// Id.
    pub id: String,
    /// The short id people type (its last 8 hex digits); any unambiguous
    /// prefix of it, or of `id`, names the request in the API and the CLI.
    pub short_id: String,
    /// `pending`, `approved`, `admitted` (the initiator acts itself and
    /// has not reported), `executed`, `failed`, `denied`, `expired`.
    pub state: &'static str,
    /// Who asked.
    pub initiator: PrincipalView,
    /// What it touches.
    pub resource: ResourceView,
    /// Action class.
    pub action: &'static str,
    /// The exact operation.
    pub operation: String,
    /// The initiator's stated intent.
    pub intent: String,
    /// What the decision was bound to beside the operation (tables, bound
    /// parameters, arguments).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Data context for reviewers from the surface (estimated rows, the
    /// session's recent statements); not part of the approval's binding.
    #[schema(value_type = Object)]
    pub data_context: serde_json::Value,
    /// The session settings the approval is bound to (for SQL:
    /// `DateStyle`, `TimeZone`, `search_path`, …): the same text means
    /// this, and only this, under them.
    pub settings: std::collections::BTreeMap<String, String>,
    /// Which surface; an approval is spent only through it.
    pub surface: String,
    /// Client address.
    pub source: Option<String>,
    /// Policies requiring approval.
    pub policies: Vec<String>,
    /// Policy set version.
    pub policy_version: String,
    /// Who may approve (`group:dba`, `user:alice@example.com`).
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Distinct approvals so far.
    pub approvals: usize,
    /// Decisions so far.
    pub reviews: Vec<ReviewView>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Pending requests expire then.
    pub expires_at: String,
    /// An approval may be used until then.
    pub grant_expires_at: Option<String>,
    /// Last change.
    pub updated_at: String,
    /// The approval page.
    pub url: String,
    /// Context for reviewers (single-request views only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// How the request's notifications reached each channel
    /// (single-request views only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<gavel_core::Delivery>,
}

impl RequestView {
    pub(crate) fn new(r: &ApprovalRequest, public_url: &str) -> RequestView {
        RequestView {
            id: r.id.0.clone(),
            short_id: r.id.short().to_owned(),
            state: r.state.as_str(),
            initiator: (&r.action.principal).into(),
            resource: ResourceView {
                name: r.action.resource.name.clone(),
                kind: r.action.resource.kind.clone(),
                tags: r.action.resource.tags.clone(),
            },
            action: r.action.class.as_str(),
            operation: r.action.operation.clone(),
            intent: r.action.intent.clone(),
            details: r.action.details.clone(),
            data_context: r.action.data_context.clone(),
            settings: r.action.settings.clone(),
            surface: r.action.surface.clone(),
            source: r.action.source.clone(),
            policies: r.policies.clone(),
            policy_version: r.policy_version.clone(),
            approvers: r.route.approvers.iter().map(|a| a.to_string()).collect(),
            quorum: r.route.quorum,
            approvals: r.approvals(),
            reviews: r
                .reviews
                .iter()
                .map(|v| ReviewView {
                    reviewer: v.reviewer.0.clone(),
                    decision: match v.decision {
                        Decision::Approve => "approve",
                        Decision::Deny => "deny",
                    },
                    comment: v.comment.clone(),
                    at: rfc3339(v.at),
                })
                .collect(),
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            grant_expires_at: r.grant_expires_at.map(rfc3339),
            updated_at: rfc3339(r.updated_at),
            url: request_url(public_url, &r.id.0),
            history: None,
            deliveries: Vec::new(),
        }
    }
}

pub(crate) fn request_url(public_url: &str, id: &str) -> String {
    format!("{}/requests/{id}", public_url.trim_end_matches('/'))
}

/// `GET /api/v1/requests` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestView>,
}

/// `GET /api/v1/whoami` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoAmI {
    /// The authenticated principal.
    pub principal: PrincipalView,
}

/// `GET /api/v1/login`: where the CLI signs in.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LoginInfo {
    /// The issuer.
    pub issuer: String,
    /// gavel's client id there.
    pub client_id: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The device authorization endpoint, if the issuer has one.
    pub device_authorization_endpoint: Option<String>,
}

/// `/healthz` and `/readyz` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, `ready`, `degraded` or `unavailable`.
    pub status: &'static str,
    /// Policy set in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyHealth>,
    /// Storage problem, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// Why the audit checkpointer refuses to sign, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_error: Option<String>,
    /// This gateway's id, as its audit records name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// `sqlite` or `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<&'static str>,
    /// Whether this gateway signs the audit log's checkpoints (of several
    /// gateways on one store, exactly one does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_signer: Option<bool>,
    /// The MCP upstreams: connected or not, restarts, last error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mcp_upstreams: Vec<McpUpstreamHealth>,
}

/// One MCP upstream, as its supervisor sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct McpUpstreamHealth {
    /// The resource name.
    pub name: String,
    /// Connected and listed.
    pub up: bool,
    /// Connections made so far (1 + restarts).
    pub connects: u64,
    /// Why the last attempt or connection ended.
    pub last_error: Option<String>,
    /// Client sessions with a connection of their own to it now.
    pub sessions: usize,
    /// Its tool or prompt names that another upstream also shows clients
    /// (withheld until `prefix` tells them apart).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub colliding_names: Vec<String>,
}

/// The live policy set and the last reload error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyHealth {
    /// Version bound into approvals.
    pub version: String,
    /// Number of policies.
    pub policies: usize,
    /// Why the files on disk were rejected (the previous set stays live).
    pub reload_error: Option<String>,
}

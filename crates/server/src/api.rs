//! REST handlers (SPEC §7). Authentication happens once, in [`Caller`].

use crate::Gateway;
use crate::error::ApiError;
use crate::views::*;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gavel_core::{
    Action, ActionClass, AdmissionId, ApprovalRequest, DecideFailure, Decision, OutcomeRefused,
    Permitted, PlainHold, Principal, Refusal, RequestFilter, RequestId, RequestState, Resource,
};
use gavel_identity::AuthError;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::time::Duration;

const MAX_WAIT: Duration = Duration::from_secs(600);

pub(crate) fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/login", get(login_info))
        .route("/api/v1/actions", post(post_action))
        .route("/api/v1/actions/outcome", post(post_outcome))
        .route("/api/v1/requests", get(list_requests))
        .route("/api/v1/requests/{id}", get(get_request))
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/requests/{id}/wait", get(wait))
        .route("/api/v1/audit", get(crate::audit::list))
        .route("/api/v1/audit/checkpoint", get(crate::audit::checkpoint))
        .route("/api/v1/audit/proof/{seq}", get(crate::audit::proof))
        .route("/api/v1/audit/consistency", get(crate::audit::consistency))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /api/v1/openapi.json") })
        .layer(axum::middleware::map_response(errors_as_json))
        .with_state(gw)
}

/// Turns every error response that is not already JSON (axum's own
/// rejections: a bad query string, a wrong method, an oversized body) into
/// the API's JSON error shape, so clients parse one format.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let mut json = ApiError::from_status(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// The authenticated principal of a request.
pub(crate) struct Caller(pub Principal);

impl FromRequestParts<Gateway> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized(AuthError::Missing.to_string()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::unauthorized("malformed Authorization header: expected `Bearer <token>`")
            })?;
        match gw.auth.authenticate(token).await {
            Ok(p) => Ok(Caller(p)),
            Err(AuthError::Internal(e)) => Err(ApiError::from(e)),
            Err(e) => Err(ApiError::unauthorized(e.to_string())),
        }
    }
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_duration(
    name: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ApiError> {
    let Some(v) = value else { return Ok(default) };
    let d = humantime::parse_duration(v).map_err(|e| {
        ApiError::bad_request(format!(
            "{name}={v:?} is not a duration ({e}); write e.g. 30s"
        ))
    })?;
    Ok(d.min(MAX_WAIT))
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        policy: None,
        storage_error: None,
        audit_error: None,
        gateway_id: None,
        storage: None,
        checkpoint_signer: None,
        mcp_upstreams: Vec::new(),
    })
}

/// Ready when storage answers. A policy reload failure is reported as
/// `degraded` with the error (the last good set keeps serving, so the
/// gateway stays in rotation), and in the `gavel_policy_reload_failed`
/// metric.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Health, description = "ready or degraded"),
    (status = 503, body = Health, description = "storage unavailable")))]
pub(crate) async fn readyz(State(gw): State<Gateway>) -> Response {
    let bundle = gw.policy.bundle();
    let reload_error = gw.policy.last_error().map(|e| e.to_string());
    let policy = PolicyHealth {
        version: bundle.version.to_string(),
        policies: bundle.policies.len(),
        reload_error: reload_error.clone(),
    };
    let audit_error = gw.checkpointer.refusal();
    let collisions = gw.mcp.collisions();
    let mcp_upstreams: Vec<McpUpstreamHealth> = gw
        .mcp
        .health()
        .into_iter()
        .map(|h| {
            let colliding_names = gw
                .mcp
                .upstreams()
                .iter()
                .find(|u| u.name == h.name)
                .map(|u| {
                    let offer = u.offer();
                    offer
                        .tools
                        .iter()
                        .map(|t| u.exposed(&t.name))
                        .chain(offer.prompts.iter().map(|p| u.exposed(&p.name)))
                        .filter(|n| collisions.contains(n))
                        .collect()
                })
                .unwrap_or_default();
            McpUpstreamHealth {
                name: h.name,
                up: h.up,
                connects: h.connects,
                last_error: h.last_error,
                sessions: h.sessions,
                colliding_names,
            }
        })
        .collect();
    let upstream_down = mcp_upstreams
        .iter()
        .any(|u| !u.up || !u.colliding_names.is_empty());
    let gateway_id = gw.gate.approvals().config().gateway_id.clone();
    // The store answers a query but the audit writer's last batch failed
    // (a lock held elsewhere, a full disk): not ready either.
    let answered = match gw.store.count_by_state().await {
        Ok(_) if !gavel_core::AuditSink::healthy(&gw.storage) => Err(gavel_core::Error::Audit(
            "the audit writer's last write failed".into(),
        )),
        other => other,
    };
    match answered {
        Ok(_) => Json(Health {
            status: if reload_error.is_some() || audit_error.is_some() || upstream_down {
                "degraded"
            } else {
                "ready"
            },
            policy: Some(policy),
            storage_error: None,
            audit_error,
            gateway_id: Some(gateway_id),
            storage: Some(gw.storage.backend()),
            checkpoint_signer: Some(gw.checkpointer.is_signer()),
            mcp_upstreams,
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness: storage check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable",
                    policy: Some(policy),
                    storage_error: Some(format!(
                        "the {} store does not answer ({}); actions are refused until it does",
                        gw.storage.backend(),
                        storage_failure(&e)
                    )),
                    audit_error,
                    gateway_id: Some(gateway_id),
                    storage: Some(gw.storage.backend()),
                    checkpoint_signer: Some(false),
                    mcp_upstreams,
                }),
            )
                .into_response()
        }
    }
}

pub(crate) async fn metrics(State(gw): State<Gateway>) -> Response {
    match gw.store.count_by_state().await {
        Ok(counts) => {
            for (state, n) in counts {
                metrics::gauge!("gavel_requests", "state" => state.as_str()).set(n as f64);
            }
        }
        Err(e) => tracing::error!(error = %e, "metrics: cannot count requests"),
    }
    match gw.storage.audit_size().await {
        Ok(n) => metrics::gauge!("gavel_audit_records").set(n as f64),
        Err(e) => tracing::error!(error = %e, "metrics: cannot count audit records"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::openapi_json(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/whoami", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn whoami(Caller(p): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: (&p).into(),
    })
}

/// Where `gavel login` signs in: the identity provider configured for
/// browser sign-in and, when it has one, its device authorization endpoint
/// (RFC 8628). Public: it holds nothing secret.
#[utoipa::path(get, path = "/api/v1/login",
    responses((status = 200, body = LoginInfo), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn login_info(State(gw): State<Gateway>) -> Result<Json<LoginInfo>, ApiError> {
    let Some(issuer) = gw.auth.browser_issuers().next() else {
        return Err(ApiError::not_found(
            "no identity provider is configured for sign-in (client_id on an [[identity.oidc]] issuer)",
        ));
    };
    let endpoints = issuer.endpoints().await.map_err(|e| {
        tracing::error!(error = %e, "login info: the identity provider cannot be reached");
        ApiError::internal("the identity provider cannot be reached")
    })?;
    Ok(Json(LoginInfo {
        issuer: issuer.issuer().to_owned(),
        client_id: issuer.client_id().unwrap_or_default().to_owned(),
        token_endpoint: endpoints.token,
        device_authorization_endpoint: endpoints.device_authorization,
    }))
}

/// Records how an action admitted over REST ended, for agents that act
/// themselves: once per admission, by its initiator only. An approved
/// request moves from `admitted` to `executed` or `failed`.
/// The longest `detail` an outcome report may carry: outcomes land in
/// the audit log for good, so an agent must not be able to fill it.
const MAX_OUTCOME_DETAIL: usize = 4096;

#[utoipa::path(post, path = "/api/v1/actions/outcome", security(("bearer" = [])),
    request_body = OutcomeReport,
    responses((status = 200, body = crate::views::OutcomeRecorded), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody, description = "no admission of the caller's awaits an outcome under that id"),
              (status = 409, body = crate::error::ErrorBody, description = "the outcome was recorded already")))]
pub(crate) async fn post_outcome(
    State(gw): State<Gateway>,
    Caller(principal): Caller,
    body: Bytes,
) -> Result<Json<crate::views::OutcomeRecorded>, ApiError> {
    let report: OutcomeReport = parse_json(&body)?;
    if report.detail.len() > MAX_OUTCOME_DETAIL {
        return Err(ApiError::bad_request(format!(
            "detail is {} bytes; an outcome's detail is at most {MAX_OUTCOME_DETAIL} bytes (it goes into the append-only audit log): summarize it",
            report.detail.len()
        )));
    }
    let outcome = match report.status.as_str() {
        "succeeded" => gavel_core::Outcome::Succeeded {
            detail: report.detail,
        },
        "failed" => gavel_core::Outcome::Failed {
            detail: report.detail,
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "status {other:?}: expected \"succeeded\" or \"failed\""
            )));
        }
    };
    let id = AdmissionId(report.admission_id);
    match gw.gate.finish_parked(&id, &principal, &outcome).await {
        Ok(()) => Ok(Json(crate::views::OutcomeRecorded {
            recorded: outcome.text(),
        })),
        Err(e @ OutcomeRefused::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ OutcomeRefused::AlreadyRecorded(_)) => Err(ApiError::conflict(e.to_string())),
        Err(OutcomeRefused::Internal(e)) => Err(e.into()),
    }
}

/// The resource an agent names: a configured one (matched without regard
/// to case, so `Payroll` is `payroll` with its tags), or any other name
/// made only of letters, digits and `._:/@-` (a name with spaces, controls,
/// invisible or look-alike characters could dodge a policy written for
/// the name it resembles).
fn resource_named(gw: &Gateway, name: &str) -> Result<Resource, ApiError> {
    let configured = gw.config.resource(name).or_else(|| {
        gw.config
            .resource_names()
            .find(|n| n.eq_ignore_ascii_case(name))
            .and_then(|n| gw.config.resource(&n))
    });
    if let Some(r) = configured {
        return Ok(Resource {
            name: r.name.clone(),
            kind: r.kind.clone(),
            tags: r.tags.clone(),
        });
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:/@-".contains(c))
    {
        return Err(ApiError::bad_request(format!(
            "resource {:?}: a name that is not configured may hold only letters, digits and ._:/@-",
            gavel_core::display::one_line(name)
        )));
    }
    Ok(Resource {
        name: name.to_owned(),
        kind: "api".into(),
        tags: Default::default(),
    })
}

/// For HTTP classes, the method and path policy judges are the
/// operation's (`METHOD /path`), with the path as a server reads it (dot
/// segments, percent-encoding of unreserved characters; `//`, encoded `/`
/// and the like refused), and the operation says exactly that. Details
/// that name another method or path are refused, never believed.
fn judgeable_operation(
    class: ActionClass,
    resource: &Resource,
    operation: String,
    mut details: serde_json::Value,
) -> Result<(ActionClass, String, serde_json::Value), ApiError> {
    // A database's actions are SQL and an MCP server's are MCP calls: any
    // other class would be judged by rules written for something else.
    let fits = match resource.kind.as_str() {
        "postgres" | "mysql" => class.is_sql(),
        "mcp" => matches!(class, ActionClass::McpCall | ActionClass::McpRead),
        _ => true,
    };
    if !fits {
        return Err(ApiError::bad_request(format!(
            "resource {} is of kind {}: {class} is not one of its actions",
            resource.name, resource.kind
        )));
    }
    if !matches!(class, ActionClass::HttpRead | ActionClass::HttpWrite) {
        return Ok((class, operation, details));
    }
    let bad = |why: String| ApiError::bad_request(format!("operation {operation:?}: {why}"));
    let (method, target) = operation
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("expected `METHOD /path`".into()))?;
    let method = method.to_ascii_uppercase();
    if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(bad("the method must be letters only".into()));
    }
    let target = target.trim();
    if !target.starts_with('/') {
        return Err(bad("the path must start with `/`".into()));
    }
    // Path parameters (`/public/..;/admin`) are read as `..` by some
    // servers and not by others: refused, never guessed.
    let lower = target.to_ascii_lowercase();
    let path_part = lower.split(['?', '#']).next().unwrap_or("");
    if path_part.contains(';') || path_part.contains("%3b") {
        return Err(bad(
            "`;` in a path is read differently by different servers".into(),
        ));
    }
    let normal = gavel_mcp::uri::normalize_uri(&format!("http://gavel.invalid{target}"))
        .map_err(|e| bad(format!("the path is ambiguous: {e}")))?;
    let path = normal
        .strip_prefix("http://gavel.invalid")
        .unwrap_or(&normal)
        .to_owned();
    let map = details
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("details must be a JSON object"))?;
    for (key, value) in [("method", &method), ("path", &path)] {
        match map.get(key).and_then(|v| v.as_str()) {
            None => {}
            Some(given) if given.eq_ignore_ascii_case(value) && key == "method" => {}
            Some(given) if given == value => {}
            Some(given) => {
                return Err(bad(format!(
                    "details.{key} {given:?} is not the operation's ({value:?})"
                )));
            }
        }
        map.insert(key.into(), serde_json::Value::String(value.clone()));
    }
    // The method says what the request does, whatever class was asked for.
    let class = if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        class
    } else {
        ActionClass::HttpWrite
    };
    Ok((class, format!("{method} {path}"), details))
}

/// SQL sent over REST is judged as the PostgreSQL surface judges it: the
/// stricter of the class asked for and the classifier's (a `DELETE` asked
/// as `sql.read` is a `sql.write`), and the tables it names added to those
/// the agent listed. For a database gavel proxies, with that surface's
/// classifier and the server's catalog; for any other, by its text and
/// PostgreSQL's built-ins alone.
async fn classified_sql(
    gw: &Gateway,
    class: ActionClass,
    resource: &Resource,
    operation: &str,
    mut details: serde_json::Value,
) -> (ActionClass, serde_json::Value) {
    use gavel_postgres::classify::{Classifier, NoNames};
    thread_local!(static CLASSIFIER: Classifier = Classifier::default());
    let proxied = gw
        .postgres
        .iter()
        .find(|surface| surface.resource_name() == resource.name);
    let (judged_class, judged_tables) = match proxied {
        Some(surface) => surface.judge_text(operation).await,
        None => CLASSIFIER.with(|c| {
            let judged = c.classify(operation, &NoNames);
            (judged.class, judged.tables)
        }),
    };
    let rank = |c: ActionClass| gavel_postgres::classify::rank(c);
    let class = if rank(judged_class) > rank(class) {
        judged_class
    } else {
        class
    };
    if let Some(map) = details.as_object_mut()
        && map.get("tables").is_none_or(|t| t.is_array())
    {
        let mut tables: Vec<serde_json::Value> = map
            .get("tables")
            .and_then(|t| t.as_array())
            .cloned()
            .unwrap_or_default();
        for t in judged_tables {
            let t = serde_json::Value::String(t);
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        if !tables.is_empty() {
            map.insert("tables".into(), serde_json::Value::Array(tables));
        }
    }
    (class, details)
}

/// Generic action check for agents that act themselves and ask first.
#[utoipa::path(post, path = "/api/v1/actions", security(("bearer" = [])),
    params(WaitQuery), request_body = ActionRequest,
    responses((status = 200, body = ActionVerdict), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody)))]
pub(crate) async fn post_action(
    State(gw): State<Gateway>,
    Caller(principal): Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<WaitQuery>,
    body: Bytes,
) -> Result<Json<ActionVerdict>, ApiError> {
    let body: ActionRequest = parse_json(&body)?;
    // `approvals.hold` is the operator's limit on how long any surface holds
    // an action; the REST surface honours it too.
    let wait = parse_duration("wait", q.wait.as_deref(), Duration::ZERO)?
        .min(gw.config.config.approvals.hold);
    let class: ActionClass = body
        .action
        .parse()
        .map_err(|e: gavel_core::UnknownActionClass| ApiError::bad_request(e.to_string()))?;
    if body.resource.trim().is_empty() {
        return Err(ApiError::bad_request("resource must not be empty"));
    }
    if body.operation.trim().is_empty() {
        return Err(ApiError::bad_request("operation must not be empty"));
    }
    let details = match body.details {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(d @ serde_json::Value::Object(_)) => d,
        Some(_) => return Err(ApiError::bad_request("details must be a JSON object")),
    };
    let resource = resource_named(&gw, &body.resource)?;
    let (class, operation, details) =
        judgeable_operation(class, &resource, body.operation, details)?;
    let (class, details) = if class.is_sql() && resource.kind != "mysql" {
        classified_sql(&gw, class, &resource, &operation, details).await
    } else {
        (class, details)
    };
    let action = Action {
        principal,
        resource,
        class,
        operation,
        details,
        intent: body.intent,
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: gavel_core::SURFACE_INITIATOR_ACTS.into(),
        source: Some(peer.ip().to_string()),
    };
    // Malformed details would only ever deny; say why instead.
    gavel_policy::context_pairs(&action).map_err(ApiError::bad_request)?;

    let public_url = gw.config.config.server.public_url.clone();
    match gw.gate.admit(action, &mut PlainHold(wait)).await {
        Ok(permitted) => {
            let view = allowed_view(&permitted);
            // The agent performs the action itself and reports how it
            // ended under this id, once.
            let admission = permitted.park().await?;
            Ok(Json(ActionVerdict {
                admission_id: Some(admission.0),
                ..view
            }))
        }
        Err(Refusal::Internal(e)) => Err(ApiError::unavailable(e)),
        Err(refusal) => Ok(Json(refusal_view(&public_url, refusal))),
    }
}

fn allowed_view(p: &Permitted) -> ActionVerdict {
    ActionVerdict {
        verdict: "allow",
        request_id: p.request_id().map(|id| id.0.clone()),
        short_id: p.request_id().map(|id| id.short().to_owned()),
        reason: match p.request_id() {
            Some(id) => format!(
                "approved in request {}; this approval is now used",
                id.short()
            ),
            None => format!("permitted by policy {}", p.policies().join(", ")),
        },
        policies: p.policies().to_vec(),
        url: None,
        review_with: None,
        admission_id: None,
    }
}

fn refusal_view(public_url: &str, refusal: Refusal) -> ActionVerdict {
    if let (true, Some(r)) = (refusal.is_pending(), refusal.request()) {
        let url = request_url(public_url, &r.id.0);
        return ActionVerdict {
            verdict: "pending",
            request_id: Some(r.id.0.clone()),
            short_id: Some(r.id.short().to_owned()),
            reason: format!(
                "needs approval by {} ({} of them) under policy {}; request {} at {url}; retry the identical action after approval",
                r.route
                    .approvers
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.route.quorum,
                r.policies.join(", "),
                r.id.short()
            ),
            policies: r.policies.clone(),
            url: Some(url),
            review_with: Some(format!(
                "gavel approve {id}   (or: gavel deny {id} --reason …)",
                id = r.id.short()
            )),
            admission_id: None,
        };
    }
    let short_id = refusal.request().map(|r| r.id.short().to_owned());
    let (request_id, policies, url) = match (&refusal, refusal.request()) {
        (Refusal::Denied { policies, .. }, _) => (None, policies.clone(), None),
        (_, Some(r)) => (
            Some(r.id.0.clone()),
            r.policies.clone(),
            Some(request_url(public_url, &r.id.0)),
        ),
        _ => (None, Vec::new(), None),
    };
    let reason = match (&refusal, refusal.request()) {
        (Refusal::Denied { reason, .. }, _) => reason.clone(),
        (Refusal::ReviewDenied { .. } | Refusal::Expired { .. }, Some(r)) => closing_reason(r),
        _ => refusal
            .message(public_url)
            .trim_start_matches("gavel: ")
            .to_owned(),
    };
    ActionVerdict {
        verdict: "deny",
        request_id,
        short_id,
        reason,
        policies,
        url,
        review_with: None,
        admission_id: None,
    }
}

fn closing_reason(r: &ApprovalRequest) -> String {
    match r.state {
        RequestState::Denied => {
            let by = r.reviews.iter().find(|v| v.decision == Decision::Deny);
            match by {
                Some(v) if !v.comment.is_empty() => {
                    format!(
                        "request {} was denied by {}: {}",
                        r.id, v.reviewer, v.comment
                    )
                }
                Some(v) => format!("request {} was denied by {}", r.id, v.reviewer),
                None => format!("request {} was denied", r.id),
            }
        }
        RequestState::Expired => format!("request {} expired without a decision", r.id),
        s => format!("request {} is {s}", r.id),
    }
}

/// Agents see only their own requests; humans see all (they review them).
fn may_see(p: &Principal, r: &ApprovalRequest) -> bool {
    match p {
        Principal::Human(_) => true,
        Principal::Agent { .. } => r.action.principal.qualified_id() == p.qualified_id(),
    }
}

#[utoipa::path(get, path = "/api/v1/requests", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = RequestList), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn list_requests(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<RequestList>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<RequestState>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let mut initiator = q.initiator;
    if let Principal::Agent { .. } = p {
        let own = p.qualified_id();
        if initiator.as_ref().is_some_and(|i| *i != own) {
            return Err(ApiError::forbidden(
                "agents may list only their own requests",
            ));
        }
        initiator = Some(own);
    }
    let requests = gw
        .gate
        .approvals()
        .list(&RequestFilter {
            state,
            initiator,
            resource: q.resource,
            id_prefix: None,
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    let public_url = &gw.config.config.server.public_url;
    Ok(Json(RequestList {
        requests: requests
            .iter()
            .map(|r| RequestView::new(r, public_url))
            .collect(),
    }))
}

/// The request `given` names for `p`: a full id, or a prefix (at least 4
/// characters) of a short id or a full id that exactly one request `p`
/// may see begins with. An ambiguous prefix is refused with the
/// candidates.
pub(crate) async fn resolve_id(
    gw: &Gateway,
    p: &Principal,
    given: &str,
) -> Result<RequestId, ApiError> {
    if let Some(id) = RequestId::parse_full(given) {
        return Ok(id);
    }
    let wanted = given.trim().to_ascii_lowercase();
    let shown = gavel_core::display::one_line(given);
    if wanted.len() < 4 || !wanted.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(ApiError::not_found(format!(
            "no request with id {shown}: give a request id, its short form (8 hex digits) or at least 4 of its first characters"
        )));
    }
    let initiator = match p {
        Principal::Agent { .. } => Some(p.qualified_id()),
        Principal::Human(_) => None,
    };
    let matches = gw
        .gate
        .approvals()
        .list(&RequestFilter {
            initiator,
            id_prefix: Some(wanted),
            limit: 6,
            ..RequestFilter::default()
        })
        .await?;
    match matches.as_slice() {
        [] => Err(ApiError::not_found(format!("no request matches {shown}"))),
        [one] => Ok(one.id.clone()),
        many => {
            let listed: Vec<String> = many
                .iter()
                .take(5)
                .map(|r| {
                    format!(
                        "{} ({} {} on {})",
                        r.id.short(),
                        r.state,
                        r.action.class,
                        r.action.resource.name
                    )
                })
                .collect();
            Err(ApiError::bad_request(format!(
                "{shown} matches more than one request: {}{}; give more characters",
                listed.join(", "),
                if many.len() > 5 { ", …" } else { "" }
            )))
        }
    }
}

pub(crate) async fn load_visible(
    gw: &Gateway,
    p: &Principal,
    id: &str,
) -> Result<ApprovalRequest, ApiError> {
    let id = resolve_id(gw, p, id).await?;
    match gw.gate.approvals().get(&id).await? {
        Some(r) if may_see(p, &r) => Ok(r),
        _ => Err(ApiError::not_found(format!("no request with id {id}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/requests/{id}", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = RequestView), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn get_request(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let r = load_visible(&gw, &p, &id).await?;
    Ok(Json(
        with_history(&gw, &r, |other| may_see(&p, other)).await?,
    ))
}

/// A request's view with the initiator's and the resource's recent
/// history: only the requests `visible` lets the viewer see (an agent its
/// own, a reviewer on the web pages those it may open).
pub(crate) async fn with_history(
    gw: &Gateway,
    r: &ApprovalRequest,
    visible: impl Fn(&ApprovalRequest) -> bool,
) -> Result<RequestView, ApiError> {
    let related = gw.gate.approvals().related(r, 10).await?;
    let items = |list: &[ApprovalRequest]| {
        list.iter()
            .filter(|other| visible(other))
            .map(HistoryItem::from)
            .collect()
    };
    let mut view = RequestView::new(r, &gw.config.config.server.public_url);
    view.history = Some(History {
        initiator_recent: items(&related.by_initiator),
        resource_recent: items(&related.on_resource),
    });
    view.deliveries = gw.deliveries_of(&r.id.0).await;
    Ok(view)
}

async fn decide(
    gw: &Gateway,
    reviewer: &Principal,
    id: &str,
    decision: Decision,
    comment: &str,
) -> Result<Json<RequestView>, ApiError> {
    let id = resolve_id(gw, reviewer, id).await?;
    match gw
        .gate
        .approvals()
        .decide(&id, reviewer, decision, comment)
        .await
    {
        Ok(r) => Ok(Json(RequestView::new(
            &r,
            &gw.config.config.server.public_url,
        ))),
        Err(DecideFailure::NotFound(id)) => {
            Err(ApiError::not_found(format!("no request with id {id}")))
        }
        Err(DecideFailure::Refused(e)) if e.is_forbidden() => {
            Err(ApiError::forbidden(e.to_string()))
        }
        Err(DecideFailure::Refused(e)) => Err(ApiError::conflict(e.to_string())),
        Err(DecideFailure::Internal(e)) => Err(e.into()),
    }
}

fn decision_body(body: &Bytes) -> Result<DecisionBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    parse_json(body)
}

#[utoipa::path(post, path = "/api/v1/requests/{id}/approve", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")), request_body = DecisionBody,
    responses((status = 200, body = RequestView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn approve(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RequestView>, ApiError> {
    let b = decision_body(&body)?;
    let comment = b.comment.or(b.reason).unwrap_or_default();
    decide(&gw, &p, &id, Decision::Approve, &comment).await
}

#[utoipa::path(post, path = "/api/v1/requests/{id}/deny", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id")), request_body = DecisionBody,
    responses((status = 200, body = RequestView), (status = 400, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)))]
pub(crate) async fn deny(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RequestView>, ApiError> {
    let b = decision_body(&body)?;
    let reason = b.reason.or(b.comment).unwrap_or_default();
    if reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "a denial needs a reason: send {\"reason\": \"…\"}; the initiator sees it",
        ));
    }
    decide(&gw, &p, &id, Decision::Deny, &reason).await
}

#[utoipa::path(get, path = "/api/v1/requests/{id}/wait", security(("bearer" = [])),
    params(("id" = String, Path, description = "Request id"), TimeoutQuery),
    responses((status = 200, body = RequestView, description = "the request once decided, or as it stands at the timeout"),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn wait(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Query(q): Query<TimeoutQuery>,
) -> Result<Json<RequestView>, ApiError> {
    let timeout = parse_duration("timeout", q.timeout.as_deref(), Duration::from_secs(30))?;
    let r = load_visible(&gw, &p, &id).await?;
    let r = gw
        .gate
        .approvals()
        .wait(&r.id, timeout)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no request with id {id}")))?;
    Ok(Json(RequestView::new(
        &r,
        &gw.config.config.server.public_url,
    )))
}

/// What kind of storage failure `e` is, in words safe to show anyone who
/// can reach `/readyz`: no addresses, names or SQL.
fn storage_failure(e: &gavel_core::Error) -> &'static str {
    let text = e.to_string().to_ascii_lowercase();
    if text.contains("audit writer") {
        "the audit log cannot be written"
    } else if text.contains("timed out") || text.contains("pool timed out") {
        "timed out waiting for a connection"
    } else if text.contains("refused") || text.contains("connect") {
        "cannot connect"
    } else if text.contains("shutting down") || text.contains("terminat") {
        "the database is shutting down"
    } else {
        "queries fail"
    }
}

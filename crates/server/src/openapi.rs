//! The OpenAPI document, generated from the handlers and views.

use crate::api;
use crate::error::{ErrorBody, ErrorDetail};
use crate::views::*;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "gavel", description = "Identity-aware gateway with human approval for privileged actions."),
    paths(api::healthz, api::readyz, api::whoami, api::login_info, api::post_action, api::post_outcome, api::list_requests,
          api::get_request, api::approve, api::deny, api::wait,
          crate::audit::list, crate::audit::checkpoint, crate::audit::proof, crate::audit::consistency),
    components(schemas(ErrorBody, ErrorDetail, ActionRequest, ActionVerdict, RequestView,
                       RequestList, PrincipalView, ResourceView, ReviewView, History, HistoryItem,
                       DecisionBody, WhoAmI, Health, PolicyHealth, OutcomeReport, OutcomeRecorded, LoginInfo,
                       McpUpstreamHealth,
                       crate::audit::AuditPage, crate::audit::AuditEntry,
                       crate::audit::InclusionView, crate::audit::ConsistencyView)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

//! `/integrations/slack/interactions`: button presses and modal submissions
//! from Slack. The signature is checked before the body is read.

use crate::Gateway;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gavel_core::{Directory, Human};
use gavel_slack::{Rejected, payload_of};

/// The humans of gavel's configuration, for the chat channels.
pub(crate) struct Humans<'a>(pub(crate) &'a gavel_identity::Authenticator);

impl Directory for Humans<'_> {
    fn human(&self, id: &str) -> Option<Human> {
        self.0.human(id)
    }
}

pub(crate) async fn interactions(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = header("x-slack-request-timestamp");
    let signature = header("x-slack-signature");
    let mut refusal = Rejected::Malformed;
    for slack in &gw.slack {
        match slack.verify(timestamp, signature, &body).await {
            Ok(()) => {
                let Some(payload) = payload_of(&body) else {
                    return (StatusCode::BAD_REQUEST, "no interaction payload").into_response();
                };
                // Slack wants an answer within 3 s: button presses are
                // acknowledged at once and handled after.
                if payload["type"] == "block_actions" {
                    let slack = slack.clone();
                    let gw = gw.clone();
                    tokio::spawn(async move {
                        slack
                            .interaction(&payload, gw.gate.approvals(), &Humans(&gw.auth))
                            .await;
                    });
                    return StatusCode::OK.into_response();
                }
                let answer = slack
                    .interaction(&payload, gw.gate.approvals(), &Humans(&gw.auth))
                    .await;
                return if answer.is_null() {
                    StatusCode::OK.into_response()
                } else {
                    axum::Json(answer).into_response()
                };
            }
            // Another app's secret may still match; keep the most telling
            // reason for the log.
            Err(Rejected::BadSignature) if refusal != Rejected::Malformed => {}
            Err(r) => refusal = r,
        }
    }
    tracing::info!(reason = ?refusal, "Slack interaction refused");
    metrics::counter!("gavel_slack_interactions_refused_total").increment(1);
    if refusal == Rejected::Unavailable {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "gavel cannot check this request now; try again",
        )
            .into_response();
    }
    (StatusCode::UNAUTHORIZED, "request not signed by Slack").into_response()
}

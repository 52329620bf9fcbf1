//! `/integrations/teams/messages`: the Bot Framework messaging endpoint.
//! An activity is read only after its Bot Framework token is verified by a
//! configured bot; only `adaptiveCard/action` invokes do anything.

use crate::Gateway;
use crate::slack::Humans;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The largest activity read; Teams invokes are a few kilobytes.
const MAX_ACTIVITY: usize = 256 * 1024;

pub(crate) async fn messages(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    // The token binds the activity's channelId and serviceUrl, so those
    // two are read before it is checked; nothing acts on them until then.
    let activity: Option<Value> = (body.len() <= MAX_ACTIVITY)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    let Some(activity) = activity.filter(Value::is_object) else {
        return (StatusCode::BAD_REQUEST, "not a Bot Framework activity").into_response();
    };
    let mut refusal = String::from("no Teams bot is configured");
    for teams in gw.teams.iter().filter(|t| t.has_bot()) {
        match teams.authenticate(authorization, &activity).await {
            Ok(()) => {
                let answer = teams
                    .activity(&activity, gw.gate.approvals(), &Humans(&gw.auth))
                    .await;
                return if answer.is_null() {
                    StatusCode::OK.into_response()
                } else {
                    axum::Json(answer).into_response()
                };
            }
            Err(why) => refusal = why.0,
        }
    }
    tracing::info!(reason = %refusal, "Teams activity refused");
    metrics::counter!("gavel_teams_activities_refused_total").increment(1);
    (
        StatusCode::UNAUTHORIZED,
        "not authenticated by Bot Framework",
    )
        .into_response()
}

//! How a statement is held while a human decides, and how a refusal reads
//! in PostgreSQL's protocol. Admission itself is the core's
//! ([`gavel_core::Gate::admit`]); this is the surface's side of it.

use crate::session::{SETTINGS, Session};
use crate::surface::Classified;
use crate::to_server::GavelRead;
use bytes::BytesMut;
use gavel_core::{
    Action, ActionClass, ApprovalRequest, Cancellation, Gate, Hold, Permitted, ReadAudit, Refusal,
    humanize,
};
use std::time::Duration;

/// A PostgreSQL session's side of an admission.
pub(crate) struct PgHold<'a> {
    session: &'a mut Session,
    classified: &'a Classified,
    sql: &'a str,
    has_params: bool,
    /// Statements earlier in the same pipeline that may change settings:
    /// they run after the settings are read and before this statement.
    changed_before: &'a [String],
}

impl Session {
    /// Admits `action` (the statement `sql`, classified as `classified`),
    /// holding it while a human decides.
    pub(crate) async fn admit(
        &mut self,
        action: Action,
        classified: &Classified,
        sql: &str,
        has_params: bool,
        changed_before: &[String],
    ) -> Result<Permitted, Refusal> {
        let gate = self.gate.clone();
        let mut hold = PgHold {
            session: self,
            classified,
            sql,
            has_params,
            changed_before,
        };
        gate.admit(action, &mut hold).await
    }

    /// The session settings that change what a statement means, as the
    /// server holds them now: reported ones as the server last reported
    /// them, the rest read on this backend.
    async fn bound_settings(
        &mut self,
        changed_before: &[String],
    ) -> std::collections::BTreeMap<String, String> {
        let mut settings = std::collections::BTreeMap::new();
        match self.gavel_query(GavelRead::Settings).await {
            Ok(rows) => {
                let row = rows.into_iter().next().unwrap_or_default();
                for (name, value) in SETTINGS.iter().zip(row.iter()) {
                    settings.insert((*name).to_owned(), value.clone().unwrap_or_default());
                }
                if let Some(Some(user)) = row.get(SETTINGS.len()) {
                    settings.insert("current_user".into(), user.clone());
                }
            }
            Err(why) => {
                // What the server reported is all gavel knows: bound as
                // such, and marked, so a grant made now is not one for a
                // session whose settings gavel could read.
                for name in [
                    "DateStyle",
                    "IntervalStyle",
                    "TimeZone",
                    "standard_conforming_strings",
                ] {
                    if let Some(v) = self.reported.get(name) {
                        settings.insert(name.to_owned(), v.clone());
                    }
                }
                settings.insert("unread".into(), why);
            }
        }
        for (i, statement) in changed_before.iter().enumerate() {
            settings.insert(format!("then {}", i + 1), statement.clone());
        }
        settings
    }

    /// What a reviewer sees beside the statement: its classification, the
    /// session's recent statements, and for a plain UPDATE or DELETE the
    /// planner's row estimate.
    async fn data_context(
        &mut self,
        classified: &Classified,
        sql: &str,
        has_params: bool,
    ) -> serde_json::Value {
        let mut context = serde_json::Map::new();
        context.insert("classification".into(), classified.reason.clone().into());
        context.insert(
            "recent_statements".into(),
            serde_json::Value::Array(self.recent.iter().cloned().map(Into::into).collect()),
        );
        // Only a plain write: nothing the classifier saw calls a function
        // with side effects (the planner may fold immutable functions).
        let estimable = classified.class == ActionClass::SqlWrite
            && classified.kinds.len() == 1
            && matches!(classified.kinds[0].as_str(), "UpdateStmt" | "DeleteStmt")
            && !has_params;
        if self.surface.explain && estimable {
            match self.surface.estimate_rows(sql).await {
                Ok(rows) => {
                    context.insert(
                        "estimated_rows".into(),
                        serde_json::json!(rows.round() as u64),
                    );
                }
                Err(e) => {
                    context.insert("estimate_error".into(), e.into());
                }
            }
        }
        serde_json::Value::Object(context)
    }
}

#[async_trait::async_trait]
impl Hold for PgHold<'_> {
    fn limit(&self) -> Duration {
        self.session.surface.hold
    }

    fn reads(&self) -> ReadAudit {
        if self.session.surface.durable_reads {
            ReadAudit::BeforeRelease
        } else {
            ReadAudit::Deferred
        }
    }

    async fn prepare(&mut self, action: &mut Action) {
        action.settings = self.session.bound_settings(self.changed_before).await;
        action.data_context = self
            .session
            .data_context(self.classified, self.sql, self.has_params)
            .await;
    }

    async fn waiting(&mut self, request: &ApprovalRequest, url: &str) {
        // A notice first, so a person at psql knows why it waits.
        let mut notice = BytesMut::new();
        {
            use pgwire::messages::PgWireBackendMessage;
            use pgwire::messages::response::NoticeResponse;
            let fields = vec![
                (b'S', "NOTICE".to_owned()),
                (b'V', "NOTICE".to_owned()),
                (b'C', "01000".to_owned()),
                (
                    b'M',
                    format!(
                        "gavel: waiting up to {} for approval of request {}: {url}",
                        humanize(self.session.surface.hold),
                        request.id
                    ),
                ),
            ];
            let _ = PgWireBackendMessage::NoticeResponse(NoticeResponse::new(fields))
                .encode(&mut notice);
        }
        if let Err(e) = self.session.drain().await {
            tracing::debug!(error = %e, "draining before a hold's notice failed");
            return;
        }
        self.session.cout.extend_from_slice(&notice);
        if let Err(e) = self.session.flush_client().await {
            tracing::debug!(error = %e, "sending a hold's notice failed");
        }
    }

    fn cancellation(&mut self) -> Cancellation {
        let mut cancels = self.session.cancel.hold.subscribe();
        Box::pin(async move {
            // A closed channel means the session is going away: that is a
            // cancel too.
            let _ = cancels.changed().await;
        })
    }
}

/// A refusal as PostgreSQL's ErrorResponse fields.
pub(crate) struct PgRefusal {
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// SQLSTATE and text of a refusal: `42501` (insufficient privilege) for
/// policy and approvals, `57014` for a cancelled hold, `28000` for a revoked
/// principal, `58000` for gavel's own failure.
pub(crate) fn pg_refusal(refusal: &Refusal, classified: &Classified, gate: &Gate) -> PgRefusal {
    let public_url = gate.approvals().config().public_url.clone();
    let message = refusal.message(&public_url);
    let class = classified.class;
    match refusal {
        Refusal::Denied { .. } => PgRefusal {
            code: "42501",
            message,
            detail: Some(format!("classified as {class}: {}", classified.reason)),
            hint: None,
        },
        Refusal::Pending { request, .. } | Refusal::GrantTaken { request, .. } => PgRefusal {
            code: "42501",
            message,
            detail: Some(format!(
                "The statement was not run. Once the request is approved, run the identical statement again within the grant's lifetime and it passes once. Classified as {class}."
            )),
            hint: Some(format!("approve with: gavel approve {}", request.id)),
        },
        Refusal::ReviewDenied { .. } | Refusal::Expired { .. } => PgRefusal {
            code: "42501",
            message,
            detail: None,
            hint: None,
        },
        Refusal::Cancelled { request } => PgRefusal {
            code: "57014",
            message: format!(
                "canceling statement due to user request (gavel request {} withdrawn)",
                request.id
            ),
            detail: None,
            hint: None,
        },
        Refusal::Revoked { .. } => PgRefusal {
            code: "28000",
            message,
            detail: None,
            hint: None,
        },
        Refusal::Internal(_) => PgRefusal {
            code: "58000",
            message,
            detail: None,
            hint: None,
        },
    }
}

//! Admission: the one call every surface makes before it forwards anything.
//!
//! [`Gate::admit`] decides an [`Action`], holds it while a human decides,
//! and refuses it, all in one place. On allow it returns [`Permitted`]: the
//! proof that owns the admitted action. A surface's upstream writer accepts
//! a request only together with the `Permitted` for exactly that request,
//! and [`Permitted::finish`] records how it ended. `Permitted` is neither
//! `Clone` nor constructible outside this crate, so a path to an upstream
//! that skips the gate does not compile.

use crate::action::Action;
use crate::approval::{ApprovalRequest, Decision, RequestId, RequestState};
use crate::audit::{AuditReceipt, AuditRecord};
use crate::error::Error;
use crate::gate::{Gate, Verdict};
use crate::principal::Principal;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How often a held action's client hears that it still waits.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How an allowed read's decision record is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadAudit {
    /// Before admission returns, like every other record.
    #[default]
    Durable,
    /// Queued at admission; the surface awaits [`Permitted::durable`]
    /// before it releases any part of the result, and drops the result if
    /// the write fails. The disk write overlaps the read.
    BeforeRelease,
    /// Written once, with the outcome, by [`Permitted::finish`]
    /// (`audit.read_durability = "buffered"`): a crash can lose it.
    Deferred,
}

/// A future that resolves when the client gives up on a held action.
pub type Cancellation = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The surface's side of an admission: how long it may hold an action, what
/// it adds when an approval is at stake, and how it keeps its client
/// informed while the action waits.
#[async_trait::async_trait]
pub trait Hold: Send {
    /// How long an action that needs approval is held; zero answers at once
    /// with [`Refusal::Pending`].
    fn limit(&self) -> Duration;

    /// How an allowed read's record is made durable.
    fn reads(&self) -> ReadAudit {
        ReadAudit::Durable
    }

    /// Policy asks for approval. Add what binds a grant
    /// ([`Action::settings`]) and what reviewers see
    /// ([`Action::data_context`]); called before the gate looks for a grant
    /// or files a request.
    async fn prepare(&mut self, action: &mut Action) {
        let _ = action;
    }

    /// The action now waits for `request` (its page is `url`): tell the
    /// client why it waits.
    async fn waiting(&mut self, request: &ApprovalRequest, url: &str) {
        let _ = (request, url);
    }

    /// Still waiting, every [`PROGRESS_EVERY`].
    async fn still_waiting(&mut self, request: &ApprovalRequest, url: &str, step: u32) {
        let _ = (request, url, step);
    }

    /// Resolves when the client cancels the held action. Called before
    /// [`Hold::waiting`]: a cancel that arrives any time after this call
    /// must resolve it.
    fn cancellation(&mut self) -> Cancellation {
        Box::pin(std::future::pending())
    }
}

/// A hold of `limit` with nothing to tell the client and nothing to add:
/// for callers that answer at once (`Duration::ZERO`) or only wait.
#[derive(Debug, Clone, Copy)]
pub struct PlainHold(pub Duration);

#[async_trait::async_trait]
impl Hold for PlainHold {
    fn limit(&self) -> Duration {
        self.0
    }
}

/// Why an admitted action does not run. Each surface maps it once to its
/// protocol (SQLSTATE, JSON-RPC error, HTTP status); [`Refusal::message`]
/// is the sentence they all show.
#[derive(Debug)]
pub enum Refusal {
    /// Policy denies it.
    Denied {
        /// The policies behind the refusal (empty for default deny).
        policies: Vec<String>,
        /// Why.
        reason: String,
    },
    /// It needs approval and none came within the hold.
    Pending {
        /// The request it waits on.
        request: Box<ApprovalRequest>,
        /// Whether it was held at all (`false`: the hold was zero).
        held: Option<Duration>,
    },
    /// A reviewer denied the request.
    ReviewDenied {
        /// The request.
        request: Box<ApprovalRequest>,
    },
    /// The request expired or was withdrawn before anyone approved it.
    Expired {
        /// The request.
        request: Box<ApprovalRequest>,
    },
    /// The client cancelled while the action was held; the request was
    /// withdrawn.
    Cancelled {
        /// The request.
        request: Box<ApprovalRequest>,
    },
    /// The approval was spent by an identical action first; this one waits
    /// on a new request.
    GrantTaken {
        /// The approved request whose grant another action used.
        approved: RequestId,
        /// The request this action now needs approved.
        request: Box<ApprovalRequest>,
    },
    /// The initiator was revoked or expired; nothing it asked for runs.
    Revoked {
        /// The principal.
        principal: String,
    },
    /// gavel could not decide (store or audit failure): refused, fail
    /// closed.
    Internal(String),
}

impl Refusal {
    /// The request involved, if any.
    pub fn request(&self) -> Option<&ApprovalRequest> {
        match self {
            Refusal::Pending { request, .. }
            | Refusal::ReviewDenied { request }
            | Refusal::Expired { request }
            | Refusal::Cancelled { request }
            | Refusal::GrantTaken { request, .. } => Some(request),
            _ => None,
        }
    }

    /// Whether the initiator can still get it approved by waiting
    /// (`pending`, as the REST API says), rather than being refused.
    pub fn is_pending(&self) -> bool {
        matches!(self, Refusal::Pending { .. } | Refusal::GrantTaken { .. })
    }

    /// One sentence for the client, naming the request and its page (under
    /// `public_url`) where there is one. Starts with `gavel:`.
    pub fn message(&self, public_url: &str) -> String {
        let url = |id: &RequestId| request_url(public_url, id);
        match self {
            Refusal::Denied { policies, reason } if policies.is_empty() => {
                format!("gavel: denied: {reason}")
            }
            Refusal::Denied { policies, reason } => {
                format!("gavel: denied by policy {}: {reason}", policies.join(", "))
            }
            Refusal::Pending { request, held } => {
                let waited = match held {
                    Some(d) if !d.is_zero() => format!("no decision within {}: ", humanize(*d)),
                    _ => String::new(),
                };
                format!(
                    "gavel: {waited}request {short} needs approval: {} (a reviewer runs `gavel approve {short}`); retry it unchanged once approved",
                    url(&request.id),
                    short = request.id.short(),
                )
            }
            Refusal::ReviewDenied { request } => {
                let by = request
                    .reviews
                    .iter()
                    .find(|r| r.decision == Decision::Deny)
                    .map(|r| {
                        if r.comment.is_empty() {
                            r.reviewer.0.clone()
                        } else {
                            format!("{}: {}", r.reviewer.0, r.comment)
                        }
                    })
                    .unwrap_or_else(|| "a reviewer".into());
                format!(
                    "gavel: request {} was denied by {by} ({})",
                    request.id.short(),
                    url(&request.id)
                )
            }
            Refusal::Expired { request } => format!(
                "gavel: request {} expired or was withdrawn without an approval: {}",
                request.id.short(),
                url(&request.id)
            ),
            Refusal::Cancelled { request } => format!(
                "gavel: cancelled by the client; request {} was withdrawn",
                request.id.short()
            ),
            Refusal::GrantTaken { approved, request } => format!(
                "gavel: the approval of request {} was used by an identical action first; this one needs request {} approved: {}",
                approved.short(),
                request.id.short(),
                url(&request.id)
            ),
            Refusal::Revoked { principal } => {
                format!(
                    "gavel: {principal} has been revoked or has expired; nothing it asks for runs"
                )
            }
            Refusal::Internal(_) => {
                "gavel: could not decide (internal error); refused, nothing was run".into()
            }
        }
    }
}

/// The page of request `id` under `public_url`.
pub fn request_url(public_url: &str, id: &RequestId) -> String {
    format!("{}/requests/{}", public_url.trim_end_matches('/'), id)
}

/// `90s`, `2m`.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{s}s")
    }
}

/// How a forwarded action ended, as the surface saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran; `detail` is e.g. a command tag and row count.
    Succeeded {
        /// What the surface saw.
        detail: String,
    },
    /// It failed downstream; `detail` is the error.
    Failed {
        /// What the surface saw.
        detail: String,
    },
}

impl Outcome {
    /// As the audit log records it: `succeeded: 42 rows`.
    pub fn text(&self) -> String {
        match self {
            Outcome::Succeeded { detail } => format!("succeeded: {detail}"),
            Outcome::Failed { detail } => format!("failed: {detail}"),
        }
    }
}

/// The id of an admission parked for an initiator that acts itself (the
/// REST API), under which it reports the outcome once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdmissionId(pub String);

impl std::fmt::Display for AdmissionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An admitted action whose initiator performs it itself and reports the
/// outcome later ([`Permitted::park`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedAdmission {
    /// Its id.
    pub id: AdmissionId,
    /// The admitted action.
    pub action: Action,
    /// The policies that allowed it.
    pub policies: Vec<String>,
    /// The request whose grant it spent, if any.
    pub request_id: Option<RequestId>,
    /// When it was admitted.
    pub admitted_at: Timestamp,
}

/// Why an outcome report for a parked admission was not taken.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeRefused {
    /// No such admission (or it is another principal's: not told apart).
    #[error("no admission {0} of yours awaits an outcome")]
    NotFound(AdmissionId),
    /// Its outcome was recorded already.
    #[error("the outcome of admission {0} was recorded already")]
    AlreadyRecorded(AdmissionId),
    /// Storage or audit failed.
    #[error(transparent)]
    Internal(#[from] Error),
}

/// Proof that the gate admitted exactly this action. Only the gate makes
/// one; it is not `Clone`. A surface forwards only by handing it to its
/// upstream writer, and ends it with [`Permitted::finish`]. Dropped
/// unfinished, it records that the action was not run.
#[must_use = "an admitted action is forwarded with its Permitted and finished with its outcome"]
pub struct Permitted {
    pub(crate) gate: Gate,
    pub(crate) action: Action,
    pub(crate) policies: Vec<String>,
    pub(crate) request_id: Option<RequestId>,
    pub(crate) receipt: Option<AuditReceipt>,
    pub(crate) deferred: Option<Box<AuditRecord>>,
    pub(crate) finished: bool,
}

impl std::fmt::Debug for Permitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permitted")
            .field("class", &self.action.class)
            .field("operation", &self.action.operation)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl Permitted {
    /// The admitted action.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// The policies that allowed it.
    pub fn policies(&self) -> &[String] {
        &self.policies
    }

    /// The approval request whose grant was spent, if any.
    pub fn request_id(&self) -> Option<&RequestId> {
        self.request_id.as_ref()
    }

    /// Takes the receipt of a read's decision record still being written
    /// ([`ReadAudit::BeforeRelease`]): the surface must await it before it
    /// releases any part of the result.
    pub fn take_receipt(&mut self) -> Option<AuditReceipt> {
        self.receipt.take()
    }

    /// Waits until the decision record is durable (at once unless the
    /// read's record was queued).
    pub async fn durable(&mut self) -> Result<(), Error> {
        match self.receipt.take() {
            Some(r) => r.await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Records how the action ended: the last audit phase (SPEC §1). A
    /// failure after an approval moves the request from `executed` to
    /// `failed`. Does not wait for the disk.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        let gate = self.gate.clone();
        let action = std::mem::replace(&mut self.action, placeholder_action());
        let deferred = self.deferred.take();
        let request_id = self.request_id.take();
        gate.record_outcome_detached(action, request_id, deferred, outcome);
    }

    /// Parks the admission for an initiator that performs the action
    /// itself: it is stored, and the outcome is reported once, by that
    /// initiator, through [`Gate::finish_parked`].
    pub async fn park(mut self) -> Result<AdmissionId, Error> {
        let parked = ParkedAdmission {
            id: AdmissionId(uuid::Uuid::now_v7().to_string()),
            action: self.action.clone(),
            policies: self.policies.clone(),
            request_id: self.request_id.clone(),
            admitted_at: self.gate.now(),
        };
        self.durable().await?;
        self.gate.store().park_admission(&parked).await?;
        self.finished = true;
        Ok(parked.id)
    }
}

impl Drop for Permitted {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let action = std::mem::replace(&mut self.action, placeholder_action());
        self.gate.record_outcome_detached(
            action,
            self.request_id.take(),
            self.deferred.take(),
            Outcome::Failed {
                detail: "not run: gavel dropped the admitted action before forwarding it".into(),
            },
        );
    }
}

fn placeholder_action() -> Action {
    Action {
        principal: Principal::Human(crate::principal::Human {
            id: crate::principal::HumanId(String::new()),
            groups: Vec::new(),
        }),
        resource: crate::action::Resource {
            name: String::new(),
            kind: String::new(),
            tags: Default::default(),
        },
        class: crate::action::ActionClass::SqlUnknown,
        operation: String::new(),
        details: serde_json::Value::Null,
        intent: String::new(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: String::new(),
        source: None,
    }
}

/// Whether principals may still act: revoked or expired agents may not.
#[async_trait::async_trait]
pub trait Standing: Send + Sync {
    /// A fast answer from a view at most about a second old (the hot path).
    fn in_good_standing(&self, principal: &Principal) -> bool;
    /// A fresh answer from the source of truth (before a held action is
    /// forwarded, before a request is approved).
    async fn confirm(&self, principal: &Principal) -> Result<bool, Error>;
}

/// Every principal in good standing (setups without revocable agents, and
/// tests).
#[derive(Debug, Default)]
pub struct AlwaysInGoodStanding;

#[async_trait::async_trait]
impl Standing for AlwaysInGoodStanding {
    fn in_good_standing(&self, _: &Principal) -> bool {
        true
    }
    async fn confirm(&self, _: &Principal) -> Result<bool, Error> {
        Ok(true)
    }
}

impl Gate {
    /// Admits `action` (SPEC §1): policy, grants and audit as in
    /// [`Gate::check`]; an action that needs approval is held up to
    /// `hold.limit()` while the client hears why it waits, and runs if a
    /// human approves in time (the grant is spent then). The initiator's
    /// standing is checked first and again before a held action is
    /// released. Every refusal comes back as a [`Refusal`].
    pub async fn admit(&self, action: Action, hold: &mut dyn Hold) -> Result<Permitted, Refusal> {
        if !self.standing().in_good_standing(&action.principal) {
            return Err(Refusal::Revoked {
                principal: action.principal.qualified_id(),
            });
        }
        let verdict = self.decide_with(action, hold).await.map_err(internal)?;
        let request = match verdict {
            Verdict::Allow(p) => return Ok(*p),
            Verdict::Deny { policies, reason } => return Err(Refusal::Denied { policies, reason }),
            Verdict::Pending(request) => request,
        };
        let limit = hold.limit();
        if limit.is_zero() {
            return Err(Refusal::Pending {
                request,
                held: None,
            });
        }
        // The action as filed (with what `prepare` added), so the retry
        // after approval has the fingerprint of the request.
        let filed = request.action.clone();
        let id = request.id.clone();
        let url = request_url(&self.approvals().config().public_url, &id);
        let approvals = self.approvals().clone();
        let mut cancelled = hold.cancellation();
        hold.waiting(&request, &url).await;
        let wait = approvals.wait(&id, limit);
        tokio::pin!(wait);
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let mut step = 0u32;
        let waited = loop {
            tokio::select! {
                r = &mut wait => break r,
                _ = &mut cancelled => {
                    // Nobody will run the action, so nobody should approve it.
                    if let Err(e) = approvals.withdraw(&id, &filed.principal).await {
                        tracing::error!(request = %id, error = %e, "withdrawing a cancelled request failed");
                    }
                    return Err(Refusal::Cancelled { request });
                }
                _ = tick.tick() => {
                    step += 1;
                    hold.still_waiting(&request, &url, step).await;
                }
            }
        };
        let decided = match waited {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Refusal::Internal(format!("request {id} vanished"))),
            Err(e) => return Err(internal(e)),
        };
        // Revoked while it waited (its request was withdrawn for that).
        if !self.standing().in_good_standing(&filed.principal) {
            return Err(Refusal::Revoked {
                principal: filed.principal.qualified_id(),
            });
        }
        match decided.state {
            RequestState::Pending => Err(Refusal::Pending {
                request: Box::new(decided),
                held: Some(limit),
            }),
            RequestState::Denied => Err(Refusal::ReviewDenied {
                request: Box::new(decided),
            }),
            RequestState::Expired => Err(Refusal::Expired {
                request: Box::new(decided),
            }),
            RequestState::Approved
            | RequestState::Admitted
            | RequestState::Executed
            | RequestState::Failed => {
                // Revoked while it waited: the approval does not make a
                // revoked principal act.
                match self.standing().confirm(&filed.principal).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(Refusal::Revoked {
                            principal: filed.principal.qualified_id(),
                        });
                    }
                    Err(e) => return Err(internal(e)),
                }
                match self.decide_filed(filed, hold.reads()).await {
                    Ok(Verdict::Allow(p)) => Ok(*p),
                    Ok(Verdict::Pending(new)) => Err(Refusal::GrantTaken {
                        approved: decided.id.clone(),
                        request: new,
                    }),
                    Ok(Verdict::Deny { policies, reason }) => {
                        Err(Refusal::Denied { policies, reason })
                    }
                    Err(e) => Err(internal(e)),
                }
            }
        }
    }

    /// Refuses an action the surface cannot put in a form policy can
    /// judge (a path that is not absolute, an ambiguous URI, a name the
    /// upstream would truncate): never forwarded, and recorded like any
    /// denial, durably, with `reason`.
    pub async fn refuse_unjudgeable(&self, action: Action, reason: &str) -> Refusal {
        let shared = &self.approvals().shared;
        let mut record = shared.record(&action, crate::audit::AuditEvent::Decision);
        record.decision = Some("deny".into());
        record.comment = Some(format!("not judgeable: {reason}"));
        if let Err(e) = shared.audit.append(record).await {
            return internal(e);
        }
        metrics::counter!("gavel_decisions_total", "verdict" => "deny").increment(1);
        Refusal::Denied {
            policies: Vec::new(),
            reason: reason.to_owned(),
        }
    }

    /// Records the outcome of a parked admission, once, for its initiator
    /// only.
    pub async fn finish_parked(
        &self,
        id: &AdmissionId,
        reporter: &Principal,
        outcome: &Outcome,
    ) -> Result<(), OutcomeRefused> {
        let store = self.store();
        let Some((parked, finished)) = store.parked_admission(id).await? else {
            return Err(OutcomeRefused::NotFound(id.clone()));
        };
        if parked.action.principal.qualified_id() != reporter.qualified_id() {
            return Err(OutcomeRefused::NotFound(id.clone()));
        }
        if finished || !store.close_admission(id, self.now()).await? {
            return Err(OutcomeRefused::AlreadyRecorded(id.clone()));
        }
        self.record_outcome(&parked.action, parked.request_id.as_ref(), outcome)
            .await?;
        Ok(())
    }
}

fn internal(e: Error) -> Refusal {
    tracing::error!(error = %e, "the gate failed; refusing (fail closed)");
    Refusal::Internal(e.to_string())
}

/// Completes a deferred read record with its outcome.
pub(crate) fn with_outcome(mut record: AuditRecord, outcome: &Outcome) -> AuditRecord {
    record.outcome = Some(outcome.text());
    record
}

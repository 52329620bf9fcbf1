//! gavel's vocabulary and its one decision path, with no I/O.
//!
//! A surface (PostgreSQL proxy, MCP gateway, REST API, …) turns a client
//! operation into an [`Action`] and asks the [`Gate`]. The gate consults a
//! [`PolicyEngine`], looks for a single-use grant in the [`Store`], appends an
//! audit record through the [`AuditSink`] and answers with a [`Verdict`].
//! Only the gate mints the [`Permitted`] a surface needs to forward an
//! action ([`Gate::admit`] decides, holds and refuses in one call), so a
//! path around the gate does not compile.
//!
//! Reviewers act through [`Approvals::decide`], which applies the rules of
//! [`ApprovalRequest::decide`] (never the initiator, never its owner, never an
//! agent, only the approver set, quorum of distinct humans, one deny ends it).
//!
//! Everything that touches the outside world is a trait here and an
//! implementation elsewhere: the store and audit in `gavel-store`, policy in
//! `gavel-policy`, the clock in [`SystemClock`].
#![deny(missing_docs)]

mod action;
mod admission;
mod agent;
mod approval;
mod audit;
mod delivery;
pub mod display;
mod error;
mod fingerprint;
mod gate;
mod principal;
mod time;

pub use action::{Action, ActionClass, Resource, SURFACE_INITIATOR_ACTS, UnknownActionClass};
pub use admission::{
    AdmissionId, AlwaysInGoodStanding, Cancellation, Hold, Outcome, OutcomeRefused, PROGRESS_EVERY,
    ParkedAdmission, Permitted, PlainHold, ReadAudit, Refusal, Standing, humanize, request_url,
};
pub use agent::{AgentRecord, AgentRegistry};
pub use approval::{
    ApprovalRequest, ApprovalRoute, Approver, DecideError, Decision, GrantUse, RequestId,
    RequestState, Review, SHORT_ID_LEN,
};
pub use audit::{AuditEvent, AuditReceipt, AuditRecord, AuditSink};
pub use delivery::{
    AttemptError, ChannelMessages, Deliveries, Delivery, DeliveryRecorder, DeliverySlot,
    DeliveryStatus, MAX_ATTEMPTS, retry_after_seconds,
};
pub use error::{Error, ErrorSource};
pub use fingerprint::{Fingerprint, canonical_json};
pub use gate::{
    Approvals, DecideFailure, Gate, GateConfig, Notifier, PolicyDecision, PolicyEngine,
    PolicyVerdict, Preview, RelatedHistory, RequestFilter, Store, Verdict,
};
pub use principal::{Directory, Human, HumanId, Principal};
pub use time::{Clock, SystemClock, Timestamp};

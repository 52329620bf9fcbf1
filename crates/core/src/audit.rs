use crate::action::ActionClass;
use crate::approval::RequestId;
use crate::error::Error;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// What an audit record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// The gate decided allow or deny from policy alone.
    Decision,
    /// A new approval request was opened (decision: pending).
    RequestCreated,
    /// An identical action arrived while its request was still pending.
    RequestPending,
    /// A reviewer approved without completing the quorum.
    Reviewed,
    /// Quorum reached.
    Approved,
    /// A reviewer denied.
    Denied,
    /// A reviewer's decision was refused (self-approval, outsider, agent, …).
    ReviewRefused,
    /// A pending request or an unused grant ran out of time.
    Expired,
    /// The initiator withdrew its pending request (state: expired).
    Withdrawn,
    /// A grant let an action through (decision: allow).
    GrantUsed,
    /// The surface reported how a forwarded action ended.
    Outcome,
    /// An action let through by a grant failed downstream.
    Failed,
    /// During an admitted action, the upstream asked the initiator's
    /// client something (MCP sampling, elicitation, roots) and the answer
    /// went back, or the client changed what the upstream tells it (MCP
    /// logging level). No decision: it records what crossed.
    Relayed,
}

impl AuditEvent {
    /// The snake_case name used in exports.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Decision => "decision",
            AuditEvent::RequestCreated => "request_created",
            AuditEvent::RequestPending => "request_pending",
            AuditEvent::Reviewed => "reviewed",
            AuditEvent::Approved => "approved",
            AuditEvent::Denied => "denied",
            AuditEvent::ReviewRefused => "review_refused",
            AuditEvent::Expired => "expired",
            AuditEvent::Withdrawn => "withdrawn",
            AuditEvent::GrantUsed => "grant_used",
            AuditEvent::Outcome => "outcome",
            AuditEvent::Failed => "failed",
            AuditEvent::Relayed => "relayed",
        }
    }
}

/// One audit record: the fields of SPEC §5. The sink assigns the sequence
/// number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (UTC).
    pub time: Timestamp,
    /// What happened.
    pub event: AuditEvent,
    /// The initiator, kind-qualified (`agent:deploy-bot`).
    pub initiator: String,
    /// The initiating agent's owner.
    pub owner: Option<String>,
    /// The human the initiating agent acts for, when it acts for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Reviewers involved in this event.
    pub reviewers: Vec<String>,
    /// The reviewer's comment or refusal reason.
    pub comment: Option<String>,
    /// The resource's name.
    pub resource: String,
    /// The action class.
    pub class: ActionClass,
    /// The operation text.
    pub operation: String,
    /// What the decision depended on besides the operation (MCP
    /// arguments, bound parameters, tables, what an `EXECUTE` runs), as
    /// canonical JSON; past [`AuditRecord::MAX_DETAILS`] bytes, its SHA-256
    /// and size instead. Absent when there is nothing.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// The initiator's stated intent.
    pub intent: String,
    /// Policy ids behind the decision.
    pub policies: Vec<String>,
    /// `allow`, `deny` or `pending`, where the event is a decision.
    pub decision: Option<String>,
    /// The request's resulting state or the action's outcome.
    pub outcome: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    /// Which surface.
    pub surface: String,
    /// The approval request, if any.
    pub request_id: Option<RequestId>,
    /// Which gateway wrote it.
    pub gateway_id: String,
}

impl AuditRecord {
    /// The most bytes of details a record carries whole.
    pub const MAX_DETAILS: usize = 8 * 1024;

    /// `details` as a record carries it: `null` when empty, whole when
    /// small, else `{"sha256": …, "bytes": …}` of its canonical JSON.
    pub fn details_of(details: &serde_json::Value) -> serde_json::Value {
        match details {
            serde_json::Value::Null => serde_json::Value::Null,
            serde_json::Value::Object(m) if m.is_empty() => serde_json::Value::Null,
            other => {
                let canonical = crate::fingerprint::canonical_json(other);
                if canonical.len() <= Self::MAX_DETAILS {
                    other.clone()
                } else {
                    use sha2::{Digest, Sha256};
                    serde_json::json!({
                        "sha256": hex::encode(Sha256::digest(&canonical)),
                        "bytes": canonical.len(),
                    })
                }
            }
        }
    }
}

/// A record on its way to disk: resolves to its sequence number once it is
/// durable.
pub type AuditReceipt =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, Error>> + Send + 'static>>;

/// Where audit records go. `append` returns only once the record is durable:
/// the gate forwards nothing before that.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Appends one record durably and returns its sequence number.
    async fn append(&self, record: AuditRecord) -> Result<u64, Error>;

    /// Queues `record` and returns at once; the receipt resolves once the
    /// record is durable. Lets a surface overlap the disk write with work
    /// that releases nothing (a read sent upstream whose result is held
    /// back until the receipt resolves). Dropping the receipt does not
    /// cancel the write. The default runs `append` as a task of its own.
    fn submit(self: std::sync::Arc<Self>, record: AuditRecord) -> AuditReceipt
    where
        Self: 'static,
    {
        let task = tokio::spawn(async move { self.append(record).await });
        Box::pin(async move {
            task.await
                .map_err(|e| Error::Audit(format!("audit append task failed: {e}")))?
        })
    }

    /// Whether the sink's last write succeeded. A read whose record would
    /// be written after it is released (`ReadAudit::Deferred`) is released
    /// only while this holds: while the store fails, every read waits for
    /// its own record, and so is refused, instead of running unrecorded for
    /// as long as the outage lasts.
    fn healthy(&self) -> bool {
        true
    }

    /// Queues `record` with nobody waiting for it (an outcome): the sink may
    /// hold it briefly to write it with others. Written in order with every
    /// other record. The default is [`AuditSink::submit`], receipt dropped.
    fn enqueue(self: std::sync::Arc<Self>, record: AuditRecord)
    where
        Self: 'static,
    {
        drop(self.submit(record));
    }
}

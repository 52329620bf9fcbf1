//! Signed checkpoints and the audit API (SPEC §5).

use crate::Gateway;
use crate::api::Caller;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gavel_audit::{
    Checkpoint, Frontier, NoteSigner, NoteVerifier, consistency_proof, inclusion_proof,
};
use gavel_core::{AuditRecord, Clock, Principal, SystemClock};
use gavel_store::Storage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;
use utoipa::{IntoParams, ToSchema};

/// Signs checkpoints of the audit log as it grows.
///
/// It never signs a log that does not extend what it signed before: the
/// latest checkpoint in the store and the witness file (its own copy of the
/// last checkpoint it signed, outside the database) must both verify with
/// its key and match the records, or it refuses and says why in `/readyz`.
pub struct Checkpointer {
    store: Storage,
    /// This gateway's name in the signer lease: its gateway id, so that
    /// a gateway restarted after a crash takes its own lease back at once
    /// (gateway ids are unique among the gateways sharing a store).
    holder: String,
    /// How long a taken lease lasts; renewed at every attempt, so a
    /// signer that dies is replaced within this and one attempt interval.
    lease_ttl: std::time::Duration,
    /// Whether this process held the signer lease at its last attempt.
    holds_lease: std::sync::atomic::AtomicBool,
    signer: NoteSigner,
    verifier: NoteVerifier,
    witness: PathBuf,
    /// The right edge of the tree as verified so far; extended with new
    /// leaf hashes each time, so a checkpoint costs O(new records).
    frontier: Mutex<Frontier>,
    refusal: std::sync::Mutex<Option<String>>,
}

/// The lease that makes one gateway of those sharing a store the signer.
const SIGNER_LEASE: &str = "audit-signer";

fn audit_error(message: String) -> gavel_core::Error {
    gavel_core::Error::Audit(message)
}

impl Checkpointer {
    pub(crate) fn new(
        store: Storage,
        signer: NoteSigner,
        witness: PathBuf,
        gateway_id: String,
        lease_ttl: std::time::Duration,
    ) -> Arc<Checkpointer> {
        Arc::new(Checkpointer {
            store,
            holder: gateway_id,
            lease_ttl,
            holds_lease: std::sync::atomic::AtomicBool::new(false),
            verifier: signer.verifier(),
            signer,
            witness,
            frontier: Mutex::new(Frontier::default()),
            refusal: std::sync::Mutex::new(None),
        })
    }

    /// The origin line of this log's checkpoints.
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// Why the last attempt refused to sign, while it still refuses.
    pub fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this process was the log's checkpoint signer at its last
    /// attempt (of several gateways on one store, exactly one signs).
    pub fn is_signer(&self) -> bool {
        self.holds_lease.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes or renews the signer lease; false when another live gateway
    /// holds it.
    async fn hold_lease(&self) -> Result<bool, gavel_core::Error> {
        let now = SystemClock.now();
        let until = gavel_core::Timestamp(now.0 + self.lease_ttl.as_millis() as i64);
        let held = self
            .store
            .try_lease(SIGNER_LEASE, &self.holder, now, until)
            .await?;
        let was = self
            .holds_lease
            .swap(held, std::sync::atomic::Ordering::Relaxed);
        if held != was {
            if held {
                tracing::info!(holder = %self.holder, "this gateway now signs the audit log's checkpoints");
            } else {
                tracing::info!("another gateway signs the audit log's checkpoints");
            }
        }
        metrics::gauge!("gavel_audit_checkpoint_signer").set(if held { 1.0 } else { 0.0 });
        Ok(held)
    }

    /// Gives the signer lease up (at shutdown), so another gateway takes
    /// over at its next attempt instead of after the lease runs out.
    pub async fn release(&self) {
        if self.is_signer()
            && let Err(e) = self.store.release_lease(SIGNER_LEASE, &self.holder).await
        {
            tracing::warn!(error = %e, "releasing the checkpoint signer lease failed");
        }
    }

    /// Verifies the log against every checkpoint this gateway and the
    /// store have seen signed (moving this gateway's witness up to the
    /// latest stored one), then, if it holds the signer lease, signs and
    /// stores a checkpoint of what arrived since. Returns the new
    /// checkpoint's size.
    ///
    /// The lease is taken only after the log verified here, and given up
    /// when signing fails: a gateway that cannot sign (another key, an
    /// altered log) never keeps the others from signing.
    pub async fn checkpoint_now(&self) -> Result<Option<u64>, gavel_core::Error> {
        let result = async {
            self.try_checkpoint(false).await?;
            if !self.hold_lease().await? {
                return Ok(None);
            }
            self.try_checkpoint(true).await
        }
        .await;
        if result.is_err() {
            self.release().await;
            self.holds_lease
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        metrics::gauge!("gavel_audit_checkpoint_refused").set(if result.is_err() {
            1.0
        } else {
            0.0
        });
        if let Ok(Some(size)) = result {
            metrics::gauge!("gavel_audit_signed_records").set(size as f64);
        }
        let mut refusal = self.refusal.lock().unwrap_or_else(|e| e.into_inner());
        // `/readyz` shows this to anyone: a store failure in words, its
        // detail (addresses, names) only in the log.
        *refusal = result.as_ref().err().map(|e| match e {
            gavel_core::Error::Store(_) => {
                tracing::warn!(error = %e, "audit checkpoint: the store failed");
                "the store does not answer; no checkpoint was signed (see the gateway log)"
                    .to_owned()
            }
            other => other.to_string(),
        });
        result
    }

    /// The checkpoints this log must extend: the latest stored one (with
    /// its note) and the witness file, each verified with this gateway's
    /// key.
    async fn anchors(&self) -> Result<(Vec<Checkpoint>, Option<(u64, String)>), gavel_core::Error> {
        let mut anchors = Vec::new();
        let mut latest = None;
        if let Some(stored) = self.store.latest_checkpoint().await? {
            let cp = Checkpoint::open(&stored.note, &self.verifier).map_err(|e| {
                audit_error(format!(
                    "the latest stored checkpoint (size {}) does not verify: {e}",
                    stored.size
                ))
            })?;
            anchors.push(cp);
            latest = Some((stored.size, stored.note));
        }
        match std::fs::read_to_string(&self.witness) {
            Ok(note) => anchors.push(Checkpoint::open(&note, &self.verifier).map_err(|e| {
                audit_error(format!(
                    "the witness checkpoint {} does not verify: {e}",
                    self.witness.display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(audit_error(format!(
                    "reading {}: {e}",
                    self.witness.display()
                )));
            }
        }
        anchors.sort_by_key(|a| a.size);
        Ok((anchors, latest))
    }

    /// Verifies the stored log against the anchors; with `sign`, signs
    /// what is new, else moves the witness up to the latest stored
    /// checkpoint once the records under it verified.
    async fn try_checkpoint(&self, sign: bool) -> Result<Option<u64>, gavel_core::Error> {
        let mut frontier = self.frontier.lock().await;
        let size = self.store.audit_size().await?;
        if size < frontier.size() {
            return Err(audit_error(format!(
                "the audit log shrank from {} to {size} records; refusing to sign",
                frontier.size()
            )));
        }
        let (anchors, latest) = self.anchors().await?;
        if let Some(a) = anchors.iter().find(|a| a.size > size) {
            return Err(audit_error(format!(
                "the log holds {size} records but a signed checkpoint covers {}: records were removed; refusing to sign",
                a.size
            )));
        }
        // Extend a copy; keep it only if every anchor on the way matches.
        let mut next = frontier.clone();
        let verified = next.size();
        let mut pending: std::collections::VecDeque<(u64, gavel_audit::Hash)> = anchors
            .iter()
            .filter(|a| a.size > verified)
            .map(|a| (a.size, a.root))
            .collect();
        let leaves = self.store.audit_leaves(verified, size).await?;
        for leaf in leaves {
            next.push(leaf);
            while pending.front().is_some_and(|(at, _)| *at == next.size()) {
                let (at, root) = pending.pop_front().unwrap_or_default();
                if root != next.root() {
                    return Err(audit_error(format!(
                        "the stored records do not match the checkpoint signed at size {at}: the log was altered; refusing to sign"
                    )));
                }
            }
        }
        if next.size() != size {
            return Err(audit_error(format!(
                "the audit log has {} leaves where {size} were expected",
                next.size()
            )));
        }
        *frontier = next;
        let signed = anchors.last().map_or(0, |a| a.size);
        if !sign {
            // Every gateway keeps its own copy of the latest checkpoint it
            // verified, outside the database: if the store later loses or
            // rewrites what that checkpoint covers, this gateway refuses to
            // sign the result, whoever signed before.
            if let Some((stored, note)) = latest
                && stored == signed
                && stored <= size
            {
                self.write_witness(&note)?;
            }
            return Ok(None);
        }
        if size == 0 || size <= signed {
            return Ok(None);
        }
        let cp = Checkpoint {
            origin: self.signer.name().to_owned(),
            size,
            root: frontier.root(),
        };
        let note = self.signer.sign(&cp.body());
        self.store
            .insert_checkpoint(size, &cp.root, &note, SystemClock.now())
            .await?;
        self.write_witness(&note)?;
        Ok(Some(size))
    }

    /// Replaces the witness file with `note` (write, then rename), unless
    /// it already holds exactly that.
    fn write_witness(&self, note: &str) -> Result<(), gavel_core::Error> {
        if std::fs::read_to_string(&self.witness).is_ok_and(|held| held == note) {
            return Ok(());
        }
        let tmp = self.witness.with_extension("tmp");
        std::fs::write(&tmp, note)
            .and_then(|_| std::fs::rename(&tmp, &self.witness))
            .map_err(|e| audit_error(format!("writing {}: {e}", self.witness.display())))
    }
}

fn humans_only(p: &Principal) -> Result<(), ApiError> {
    match p {
        Principal::Human(_) => Ok(()),
        Principal::Agent { .. } => Err(ApiError::forbidden(
            "the audit log is for humans; agents cannot read it",
        )),
    }
}

fn store(gw: &Gateway) -> &Storage {
    &gw.storage
}

/// The latest signed checkpoint, as a C2SP signed note.
#[utoipa::path(get, path = "/api/v1/audit/checkpoint", security(("bearer" = [])),
    responses((status = 200, description = "signed note (text/plain)", body = String),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn checkpoint(
    State(gw): State<Gateway>,
    Caller(p): Caller,
) -> Result<Response, ApiError> {
    humans_only(&p)?;
    // Sign whatever has arrived, so the answer covers every record so far.
    gw.checkpointer
        .checkpoint_now()
        .await
        .map_err(ApiError::internal)?;
    match store(&gw).latest_checkpoint().await? {
        Some(cp) => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            cp.note,
        )
            .into_response()),
        None => Err(ApiError::not_found(
            "the audit log is empty; no checkpoint yet",
        )),
    }
}

/// Query of the proof endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ProofQuery {
    /// Tree size to prove against (default: the latest checkpoint's).
    pub size: Option<u64>,
}

/// An inclusion proof.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InclusionView {
    /// The record's sequence number (leaf index).
    pub seq: u64,
    /// Tree size the proof is for.
    pub tree_size: u64,
    /// The record's canonical bytes (base64): hash them as a leaf to check.
    pub leaf_data: String,
    /// RFC 6962 root hash at `tree_size` (base64).
    pub root: String,
    /// Audit path, leaf to root (base64 hashes).
    pub proof: Vec<String>,
    /// The signed checkpoint for `tree_size`, when one is stored.
    pub checkpoint: Option<String>,
}

async fn proof_size(gw: &Gateway, requested: Option<u64>) -> Result<u64, ApiError> {
    match requested {
        Some(s) => Ok(s),
        None => {
            gw.checkpointer
                .checkpoint_now()
                .await
                .map_err(ApiError::internal)?;
            Ok(store(gw).latest_checkpoint().await?.map_or(0, |c| c.size))
        }
    }
}

async fn checkpoint_note(gw: &Gateway, size: u64) -> Result<Option<String>, ApiError> {
    Ok(store(gw)
        .checkpoints()
        .await?
        .into_iter()
        .find(|c| c.size == size)
        .map(|c| c.note))
}

#[utoipa::path(get, path = "/api/v1/audit/proof/{seq}", security(("bearer" = [])),
    params(("seq" = u64, Path, description = "Record sequence number"), ProofQuery),
    responses((status = 200, body = InclusionView), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn proof(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Path(seq): Path<u64>,
    Query(q): Query<ProofQuery>,
) -> Result<Json<InclusionView>, ApiError> {
    humans_only(&p)?;
    let size = proof_size(&gw, q.size).await?;
    let leaves = store(&gw).audit_leaves(0, size).await?;
    let path =
        inclusion_proof(&leaves, seq, size).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = store(&gw).audit_stored(seq, seq + 1).await?;
    let record = record
        .first()
        .ok_or_else(|| ApiError::not_found(format!("no audit record {seq}")))?;
    Ok(Json(InclusionView {
        seq,
        tree_size: size,
        leaf_data: B64.encode(&record.data),
        root: B64.encode(gavel_audit::root_of(&leaves)),
        proof: path.iter().map(|h| B64.encode(h)).collect(),
        checkpoint: checkpoint_note(&gw, size).await?,
    }))
}

/// Query of the consistency endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsistencyQuery {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size (default: the latest checkpoint's).
    pub to: Option<u64>,
}

/// A consistency proof.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConsistencyView {
    /// Older size.
    pub from: u64,
    /// Newer size.
    pub to: u64,
    /// RFC 6962 consistency proof (base64 hashes).
    pub proof: Vec<String>,
    /// Signed checkpoint for `from`, if stored.
    pub from_checkpoint: Option<String>,
    /// Signed checkpoint for `to`, if stored.
    pub to_checkpoint: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit/consistency", security(("bearer" = [])), params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyView), (status = 400, body = crate::error::ErrorBody)))]
pub(crate) async fn consistency(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyView>, ApiError> {
    humans_only(&p)?;
    let to = proof_size(&gw, q.to).await?;
    let leaves = store(&gw).audit_leaves(0, to).await?;
    let proof =
        consistency_proof(&leaves, q.from, to).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(ConsistencyView {
        from: q.from,
        to,
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
        from_checkpoint: checkpoint_note(&gw, q.from).await?,
        to_checkpoint: checkpoint_note(&gw, to).await?,
    }))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only records after this sequence number (the previous page's `next`).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    pub until: Option<String>,
    /// Only this initiator (`agent:NAME`, `human:ID`).
    pub principal: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Only this approval request.
    pub request_id: Option<String>,
    /// Only this event type (`decision`, `approved`, …).
    pub event: Option<String>,
}

/// One audit record with its position.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditEntry {
    /// Sequence number (leaf index).
    pub seq: u64,
    /// The record.
    #[schema(value_type = Object)]
    pub record: AuditRecord,
}

/// A page of audit records.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// Records in sequence order.
    pub records: Vec<AuditEntry>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<u64>,
}

fn parse_time(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| {
            gavel_core::Timestamp::parse_rfc3339(s)
                .map(|t| t.0)
                .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
        })
        .transpose()
}

#[utoipa::path(get, path = "/api/v1/audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = crate::error::ErrorBody)))]
pub(crate) async fn list(
    State(gw): State<Gateway>,
    Caller(p): Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    humans_only(&p)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = gavel_store::AuditFilter {
        after: q.after,
        since: parse_time("since", &q.since)?,
        until: parse_time("until", &q.until)?,
        initiator: q.principal,
        resource: q.resource,
        request_id: q.request_id,
        event: q.event,
        limit: limit + 1,
    };
    let mut rows = store(&gw).audit_page(&filter).await?;
    let next = (rows.len() > limit).then(|| rows[limit - 1].0);
    rows.truncate(limit);
    Ok(Json(AuditPage {
        records: rows
            .into_iter()
            .map(|(seq, record)| AuditEntry { seq, record })
            .collect(),
        next,
    }))
}

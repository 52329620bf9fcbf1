use crate::action::Action;
use crate::admission::{
    AdmissionId, AlwaysInGoodStanding, Hold, Outcome, ParkedAdmission, Permitted, PlainHold,
    ReadAudit, Standing,
};
use crate::approval::{
    ApprovalRequest, ApprovalRoute, Approver, DecideError, Decision, GrantUse, RequestId,
    RequestState,
};
use crate::audit::{AuditEvent, AuditRecord, AuditSink};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::principal::Principal;
use crate::time::{Clock, Timestamp};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// What policy says about an action, before grants are considered.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyVerdict {
    /// A plain `permit` matched and nothing stricter did.
    Allow,
    /// A `forbid` matched, nothing matched (default deny), or evaluation
    /// failed (fail closed).
    Deny,
    /// One or more `permit` policies with `@approval` matched.
    NeedsApproval {
        /// Union of their approvers.
        approvers: Vec<Approver>,
        /// The largest quorum.
        quorum: u32,
        /// The shortest timeout, if any policy set one.
        timeout: Option<Duration>,
    },
}

/// A policy decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision {
    /// The verdict.
    pub verdict: PolicyVerdict,
    /// Ids of the policies that produced it (empty for default deny).
    pub policies: Vec<String>,
    /// A sentence for humans.
    pub reason: String,
    /// Version of the policy set that decided (bound into fingerprints).
    pub policy_version: Arc<str>,
}

/// Evaluates policy. Implemented by `gavel-policy` over Cedar.
pub trait PolicyEngine: Send + Sync {
    /// Decides `action`. Must never fail open: anything it cannot evaluate
    /// is [`PolicyVerdict::Deny`].
    fn evaluate(&self, action: &Action) -> PolicyDecision;

    /// Whether `denial` of `action` (an MCP call made without arguments)
    /// could turn out otherwise with some arguments: a `forbid` behind it
    /// reads `context.args`, or, for a default deny, a `permit` that could
    /// apply does. When not, the call is denied whatever its arguments and
    /// a gateway may hide the tool. Defaults to the answer that hides
    /// nothing, `true`.
    fn denial_depends_on_arguments(&self, action: &Action, denial: &PolicyDecision) -> bool {
        let _ = (action, denial);
        true
    }
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only this state.
    pub state: Option<RequestState>,
    /// Only this initiator (kind-qualified id, e.g. `agent:bot`).
    pub initiator: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Only requests whose short id or full id begins with this (lower-case
    /// hex digits and `-` only).
    pub id_prefix: Option<String>,
    /// At most this many, newest first (0 means a default of 100).
    pub limit: usize,
}

/// Persistence of approval requests and their reviews (and, through them,
/// grants). Implemented by `gavel-store`.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Persists a new pending request together with `record` (its
    /// `request_created` audit record), atomically. Returns false, storing
    /// nothing, if a pending request with the same fingerprint exists.
    async fn insert_request(
        &self,
        request: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error>;
    /// Loads one request with its reviews.
    async fn get_request(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, Error>;
    /// Pending and approved requests with this fingerprint, oldest first.
    async fn live_requests(&self, fingerprint: &Fingerprint)
    -> Result<Vec<ApprovalRequest>, Error>;
    /// Saves `after`, and appends `record` (the audit record describing the
    /// change) in the same transaction, only if the stored request still
    /// equals `before` in state and number of reviews (optimistic
    /// concurrency: two gateways or two reviewers racing cannot both win).
    /// Returns whether it saved. A state is never durable without its
    /// record, nor a record without its state.
    async fn save_transition(
        &self,
        before: &ApprovalRequest,
        after: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error>;
    /// Requests matching `filter`, newest first.
    async fn list_requests(&self, filter: &RequestFilter) -> Result<Vec<ApprovalRequest>, Error>;
    /// Pending requests past `expires_at` and approved ones past
    /// `grant_expires_at`.
    async fn due_for_expiry(&self, now: Timestamp) -> Result<Vec<ApprovalRequest>, Error>;
    /// How many requests are in each state (for metrics).
    async fn count_by_state(&self) -> Result<Vec<(RequestState, u64)>, Error>;
    /// The message `channel` posted for request `id` (Slack `ts`, Teams
    /// activity id), if it recorded one.
    async fn channel_message(&self, id: &RequestId, channel: &str)
    -> Result<Option<String>, Error>;
    /// Records (`Some`) or forgets (`None`) that message.
    async fn set_channel_message(
        &self,
        id: &RequestId,
        channel: &str,
        reference: Option<&str>,
    ) -> Result<(), Error>;
    /// Stores an admission whose initiator performs the action itself.
    async fn park_admission(&self, admission: &ParkedAdmission) -> Result<(), Error>;
    /// A parked admission and whether its outcome was recorded.
    async fn parked_admission(
        &self,
        id: &AdmissionId,
    ) -> Result<Option<(ParkedAdmission, bool)>, Error>;
    /// Marks a parked admission's outcome recorded; false if it was
    /// already (or does not exist). Guarded: of two reports, one wins.
    async fn close_admission(&self, id: &AdmissionId, now: Timestamp) -> Result<bool, Error>;
    /// Records the first use of the one-time `key` in `scope` (a chat
    /// platform's request signature, say), kept until `until`, and forgets
    /// keys kept past `now`. False when `key` was used before and is still
    /// kept. In the store, so a replay to another gateway on the same
    /// store, or to this one after a restart, is caught.
    async fn use_once(
        &self,
        scope: &str,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error>;
    /// Pending requests of `initiator` (kind-qualified id).
    async fn pending_of(&self, initiator: &str) -> Result<Vec<ApprovalRequest>, Error> {
        self.list_requests(&RequestFilter {
            state: Some(RequestState::Pending),
            initiator: Some(initiator.to_owned()),
            resource: None,
            id_prefix: None,
            limit: 10_000,
        })
        .await
    }
}

/// Told about every new request and every state change: approval channels
/// (Slack, Teams, webhooks) implement this. Must not block: deliver in the
/// background.
pub trait Notifier: Send + Sync {
    /// A request was created or changed state. Returns whether this
    /// channel serves the request (its routes match), so a request that
    /// no channel serves is noticed.
    fn request_changed(&self, request: &ApprovalRequest) -> bool;
}

/// Timing and identity settings of the gate.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Request lifetime when no policy sets `@timeout`.
    pub default_timeout: Duration,
    /// How long an approval may be used.
    pub grant_ttl: Duration,
    /// This gateway's id, written into every audit record.
    pub gateway_id: String,
    /// Where reviewers open requests (`server.public_url`), for the links
    /// refusals and notices carry.
    pub public_url: String,
}

/// The gate's answer without a hold.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it, with this proof.
    Allow(Box<Permitted>),
    /// Refuse it.
    Deny {
        /// The policies behind the refusal (empty for default deny).
        policies: Vec<String>,
        /// Why, for the client.
        reason: String,
    },
    /// Hold it: a human must approve. Retrying the identical action after
    /// approval passes once.
    Pending(Box<ApprovalRequest>),
}

impl Verdict {
    /// `allow`, `deny` or `pending`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow(_) => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::Pending(_) => "pending",
        }
    }
}

/// Shared machinery of the gate and approvals.
pub(crate) struct Shared {
    store: Arc<dyn Store>,
    pub(crate) audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
    config: GateConfig,
    notifiers: Vec<Arc<dyn Notifier>>,
    changes: broadcast::Sender<(RequestId, RequestState)>,
    standing: Arc<dyn Standing>,
}

impl Shared {
    pub(crate) fn record(&self, action: &Action, event: AuditEvent) -> AuditRecord {
        AuditRecord {
            time: self.clock.now(),
            event,
            initiator: action.principal.qualified_id(),
            owner: action.principal.owner().map(|o| o.to_string()),
            on_behalf_of: action.principal.on_behalf_of().map(|h| h.to_string()),
            reviewers: Vec::new(),
            comment: None,
            resource: action.resource.name.clone(),
            class: action.class,
            operation: action.operation.clone(),
            details: AuditRecord::details_of(&action.details),
            intent: action.intent.clone(),
            policies: Vec::new(),
            decision: None,
            outcome: None,
            source: action.source.clone(),
            surface: action.surface.clone(),
            request_id: None,
            gateway_id: self.config.gateway_id.clone(),
        }
    }

    fn request_record(&self, request: &ApprovalRequest, event: AuditEvent) -> AuditRecord {
        let mut r = self.record(&request.action, event);
        r.policies = request.policies.clone();
        r.request_id = Some(request.id.clone());
        r.outcome = Some(request.state.as_str().to_owned());
        r
    }

    fn announce(&self, request: &ApprovalRequest) {
        // No receivers is normal (nobody waiting); the result only says so.
        let _ = self.changes.send((request.id.clone(), request.state));
        let mut served = false;
        for n in &self.notifiers {
            served |= n.request_changed(request);
        }
        // A new request that no configured channel serves reaches its
        // approvers only through the page, the CLI or the API.
        if !served
            && !self.notifiers.is_empty()
            && request.state == RequestState::Pending
            && request.reviews.is_empty()
        {
            metrics::counter!("gavel_requests_unrouted_total").increment(1);
            tracing::warn!(request = %request.id, approvers = ?request.route.approvers.iter().map(ToString::to_string).collect::<Vec<_>>(), "no channel routes this request's approvers; it is only on the approval page and the API");
        }
    }

    /// Persists `before → after` with its audit record; false if another
    /// writer changed the request first.
    async fn commit(
        &self,
        before: &ApprovalRequest,
        after: &ApprovalRequest,
        record: AuditRecord,
    ) -> Result<bool, Error> {
        if !self.store.save_transition(before, after, &record).await? {
            return Ok(false);
        }
        self.announce(after);
        Ok(true)
    }

    async fn expire(&self, request: &ApprovalRequest, now: Timestamp) -> Result<bool, Error> {
        let mut after = request.clone();
        if !after.expire_if_due(now) {
            return Ok(false);
        }
        let record = self.request_record(&after, AuditEvent::Expired);
        self.commit(request, &after, record).await
    }
}

/// The one decision path (SPEC §1). Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    policy: Arc<dyn PolicyEngine>,
    approvals: Approvals,
}

impl Gate {
    /// Builds a gate over its collaborators.
    pub fn new(
        policy: Arc<dyn PolicyEngine>,
        store: Arc<dyn Store>,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
        config: GateConfig,
        notifiers: Vec<Arc<dyn Notifier>>,
    ) -> Gate {
        let (changes, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            store,
            audit,
            clock,
            config,
            notifiers,
            changes,
            standing: Arc::new(AlwaysInGoodStanding),
        });
        Gate {
            policy,
            approvals: Approvals { shared },
        }
    }

    /// The same gate, judging principals' standing (revocation, expiry)
    /// with `standing`. Call before the gate is shared.
    pub fn with_standing(self, standing: Arc<dyn Standing>) -> Gate {
        let old = &self.approvals.shared;
        let shared = Arc::new(Shared {
            store: old.store.clone(),
            audit: old.audit.clone(),
            clock: old.clock.clone(),
            config: old.config.clone(),
            notifiers: old.notifiers.clone(),
            changes: old.changes.clone(),
            standing,
        });
        Gate {
            policy: self.policy,
            approvals: Approvals { shared },
        }
    }

    /// Whether `principal` may still act (a view at most about a second
    /// old): for what a surface sends unprompted, such as subscription
    /// updates.
    pub fn in_good_standing(&self, principal: &Principal) -> bool {
        self.standing().in_good_standing(principal)
    }

    pub(crate) fn standing(&self) -> &Arc<dyn Standing> {
        &self.approvals.shared.standing
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.approvals.shared.store
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.approvals.shared.clock.now()
    }

    /// Whether `action` would be allowed, held or denied by policy alone,
    /// recording nothing: for listings that hide what policy forbids (an
    /// MCP `tools/list`), never for admission.
    pub fn preview(&self, action: &Action) -> Preview {
        let decision = self.policy.evaluate(action);
        match decision.verdict {
            PolicyVerdict::Allow => Preview::Allowed,
            PolicyVerdict::NeedsApproval { .. } => Preview::NeedsApproval,
            PolicyVerdict::Deny if self.policy.denial_depends_on_arguments(action, &decision) => {
                Preview::DependsOnArguments
            }
            PolicyVerdict::Deny => Preview::Denied,
        }
    }

    /// Where reviewers decide and surfaces wait.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// Decides `action` without holding it: policy, then grants, then audit
    /// (before any forwarding), then an approval request if one is needed.
    /// Any internal failure is an `Err`, which callers must treat as deny.
    /// Surfaces call [`Gate::admit`], which also holds.
    pub async fn check(&self, action: Action) -> Result<Verdict, Error> {
        self.decide_with(action, &mut PlainHold(Duration::ZERO))
            .await
    }

    /// Policy, grants, audit and the request, as [`Gate::check`], asking
    /// `hold` to prepare an action that needs approval.
    pub(crate) async fn decide_with(
        &self,
        action: Action,
        hold: &mut dyn Hold,
    ) -> Result<Verdict, Error> {
        let started = std::time::Instant::now();
        let decision = self.policy.evaluate(&action);
        let reads = hold.reads();
        let result = self.decide(action, decision, Some(hold), reads).await;
        observe(started, &result);
        result
    }

    /// Decides an action that was prepared and filed already (the retry
    /// after a held action was approved), without preparing it again.
    pub(crate) async fn decide_filed(
        &self,
        action: Action,
        reads: ReadAudit,
    ) -> Result<Verdict, Error> {
        let started = std::time::Instant::now();
        let decision = self.policy.evaluate(&action);
        let result = self.decide(action, decision, None, reads).await;
        observe(started, &result);
        result
    }

    fn permitted(
        &self,
        action: Action,
        policies: Vec<String>,
        request_id: Option<RequestId>,
    ) -> Permitted {
        Permitted {
            gate: self.clone(),
            action,
            policies,
            request_id,
            receipt: None,
            deferred: None,
            finished: false,
        }
    }

    async fn decide(
        &self,
        mut action: Action,
        decision: PolicyDecision,
        prepare: Option<&mut dyn Hold>,
        reads: ReadAudit,
    ) -> Result<Verdict, Error> {
        let shared = &self.approvals.shared;
        let (approvers, quorum, timeout) = match decision.verdict {
            PolicyVerdict::Allow => {
                let mut record = shared.record(&action, AuditEvent::Decision);
                record.policies = decision.policies.clone();
                record.decision = Some("allow".into());
                let (receipt, deferred) = match reads {
                    _ if !action.class.is_read() => {
                        shared.audit.append(record).await?;
                        (None, None)
                    }
                    ReadAudit::Durable => {
                        shared.audit.append(record).await?;
                        (None, None)
                    }
                    ReadAudit::BeforeRelease => (Some(shared.audit.clone().submit(record)), None),
                    ReadAudit::Deferred if shared.audit.healthy() => (None, Some(Box::new(record))),
                    // The sink is failing: this read is recorded before it
                    // is released, or refused.
                    ReadAudit::Deferred => {
                        shared.audit.append(record).await?;
                        (None, None)
                    }
                };
                let mut permitted = self.permitted(action, decision.policies, None);
                permitted.receipt = receipt;
                permitted.deferred = deferred;
                return Ok(Verdict::Allow(Box::new(permitted)));
            }
            PolicyVerdict::Deny => {
                let mut record = shared.record(&action, AuditEvent::Decision);
                record.policies = decision.policies.clone();
                record.decision = Some("deny".into());
                record.comment = Some(decision.reason.clone());
                shared.audit.append(record).await?;
                return Ok(Verdict::Deny {
                    policies: decision.policies,
                    reason: decision.reason,
                });
            }
            PolicyVerdict::NeedsApproval {
                approvers,
                quorum,
                timeout,
            } => (approvers, quorum, timeout),
        };
        if let Some(hold) = prepare {
            hold.prepare(&mut action).await;
        }

        let route = ApprovalRoute {
            approvers,
            quorum: quorum.max(1),
            timeout: timeout.unwrap_or(shared.config.default_timeout),
        };
        let fingerprint = Fingerprint::of(
            &action,
            &decision.policy_version,
            &decision.policies,
            &route,
        );
        // Two rounds suffice: if our insert loses to a concurrent identical
        // action, the second scan finds the winner's pending request.
        for _ in 0..3 {
            if let Some(verdict) = self.use_live_request(&action, &fingerprint).await? {
                return Ok(verdict);
            }
            let request = ApprovalRequest::new(
                action.clone(),
                fingerprint,
                decision.policies.clone(),
                decision.policy_version.to_string(),
                route.clone(),
                shared.clock.now(),
            );
            let mut record = shared.request_record(&request, AuditEvent::RequestCreated);
            record.decision = Some("pending".into());
            if !shared.store.insert_request(&request, &record).await? {
                continue;
            }
            shared.announce(&request);
            return Ok(Verdict::Pending(Box::new(request)));
        }
        Err(Error::Store(
            "could not open or find the approval request; try again".into(),
        ))
    }

    /// Spends a live grant for `fingerprint`, or finds the pending request
    /// the action is already waiting on.
    async fn use_live_request(
        &self,
        action: &Action,
        fingerprint: &Fingerprint,
    ) -> Result<Option<Verdict>, Error> {
        let shared = &self.approvals.shared;
        let now = shared.clock.now();
        for live in shared.store.live_requests(fingerprint).await? {
            // A request for another principal can never share the
            // fingerprint; checked anyway so a store bug cannot leak a grant.
            if live.action.principal.qualified_id() != action.principal.qualified_id() {
                continue;
            }
            if shared.expire(&live, now).await? {
                continue;
            }
            match live.state {
                RequestState::Approved => {
                    let mut after = live.clone();
                    if after.use_grant(now, action.initiator_acts()) != GrantUse::Used {
                        continue;
                    }
                    let mut record = shared.request_record(&after, AuditEvent::GrantUsed);
                    record.decision = Some("allow".into());
                    record.source = action.source.clone();
                    record.reviewers = after.reviews.iter().map(|r| r.reviewer.0.clone()).collect();
                    if shared.commit(&live, &after, record).await? {
                        let id = after.id.clone();
                        return Ok(Some(Verdict::Allow(Box::new(self.permitted(
                            action.clone(),
                            after.policies,
                            Some(id),
                        )))));
                    }
                    // Another connection spent it first: look further.
                }
                RequestState::Pending => {
                    let mut record = shared.request_record(&live, AuditEvent::RequestPending);
                    record.decision = Some("pending".into());
                    record.source = action.source.clone();
                    shared.audit.append(record).await?;
                    return Ok(Some(Verdict::Pending(Box::new(live))));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// How often a waiter re-reads the store for decisions made elsewhere.
const STORE_POLL: Duration = Duration::from_secs(1);

/// The shortest pause between two reads of a request that should already
/// have expired (another writer may be mid-change); prevents a busy loop.
const MIN_REPOLL: Duration = Duration::from_millis(20);

impl Gate {
    /// Records how an admitted action ended (SPEC §1, last step). When a
    /// grant let it through, the request moves with it: `executed →
    /// failed` on failure, `admitted → executed | failed` on the
    /// initiator's report.
    pub(crate) async fn record_outcome(
        &self,
        action: &Action,
        request_id: Option<&RequestId>,
        outcome: &Outcome,
    ) -> Result<(), Error> {
        let shared = &self.approvals.shared;
        let text = outcome.text();
        let failed = matches!(outcome, Outcome::Failed { .. });
        let moves_request = failed || action.initiator_acts();
        if let (Some(id), true) = (request_id, moves_request) {
            let before = shared
                .store
                .get_request(id)
                .await?
                .ok_or_else(|| Error::Invalid(format!("no request with id {id}")))?;
            let mut after = before.clone();
            if after.record_outcome(shared.clock.now(), failed) {
                let event = if failed {
                    AuditEvent::Failed
                } else {
                    AuditEvent::Outcome
                };
                let mut record = shared.request_record(&after, event);
                if failed {
                    record.comment = Some(text.clone());
                } else {
                    record.outcome = Some(text.clone());
                }
                record.source = action.source.clone();
                if shared.commit(&before, &after, record).await? {
                    return Ok(());
                }
            }
        }
        let mut record = shared.record(action, AuditEvent::Outcome);
        record.outcome = Some(text);
        record.request_id = request_id.cloned();
        shared.audit.append(record).await?;
        Ok(())
    }

    /// Records, durably, what crossed between an upstream and the
    /// initiator's client during an admitted action ([`AuditEvent::Relayed`]):
    /// `what` says what was asked and how it was answered, never the
    /// answer's content. Returns once the record is on disk, so a surface
    /// can relay the answer only after it is recorded.
    pub async fn record_relayed(&self, action: &Action, what: String) -> Result<(), Error> {
        let shared = &self.approvals.shared;
        let mut record = shared.record(action, AuditEvent::Relayed);
        record.outcome = Some(what);
        shared.audit.append(record).await?;
        Ok(())
    }

    /// Records an outcome without waiting: a deferred read record is
    /// completed and queued; an outcome after a spent grant is written by a
    /// task of its own (it may move the request); any other is queued in
    /// order with every record. A crash before its batch is written can
    /// lose an outcome, never a decision.
    pub(crate) fn record_outcome_detached(
        &self,
        action: Action,
        request_id: Option<RequestId>,
        deferred: Option<Box<AuditRecord>>,
        outcome: Outcome,
    ) {
        let shared = &self.approvals.shared;
        if let Some(record) = deferred {
            shared
                .audit
                .clone()
                .enqueue(crate::admission::with_outcome(*record, &outcome));
            return;
        }
        match request_id {
            None => {
                let mut record = shared.record(&action, AuditEvent::Outcome);
                record.outcome = Some(outcome.text());
                shared.audit.clone().enqueue(record);
            }
            Some(id) => {
                let gate = self.clone();
                let task = async move {
                    if let Err(e) = gate.record_outcome(&action, Some(&id), &outcome).await {
                        tracing::error!(error = %e, request = %id, "recording an outcome failed");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(task);
                    }
                    Err(_) => tracing::error!("no runtime to record an outcome on"),
                }
            }
        }
    }
}

fn observe(started: std::time::Instant, result: &Result<Verdict, Error>) {
    let outcome = match result {
        Ok(v) => v.as_str(),
        Err(_) => "error",
    };
    metrics::histogram!("gavel_gate_check_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("gavel_decisions_total", "verdict" => outcome).increment(1);
}

/// What policy alone says of an action, for listings ([`Gate::preview`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preview {
    /// Allowed.
    Allowed,
    /// Held for approval.
    NeedsApproval,
    /// Denied without arguments, but policy reads arguments: some may be
    /// allowed.
    DependsOnArguments,
    /// Denied whatever the arguments.
    Denied,
}

/// Why a decision through [`Approvals::decide`] did not land.
#[derive(Debug, thiserror::Error)]
pub enum DecideFailure {
    /// No such request.
    #[error("no request with id {0}")]
    NotFound(RequestId),
    /// The rules refused it; nothing changed.
    #[error(transparent)]
    Refused(#[from] DecideError),
    /// Storage or audit failed.
    #[error(transparent)]
    Internal(#[from] Error),
}

/// What a reviewer sees of a request's past: see [`Approvals::related`].
#[derive(Debug, Clone, Default)]
pub struct RelatedHistory {
    /// The initiator's other recent requests.
    pub by_initiator: Vec<ApprovalRequest>,
    /// Other recent requests on the same resource.
    pub on_resource: Vec<ApprovalRequest>,
}

impl RelatedHistory {
    /// A few lines for a chat message: counts by state, then the newest
    /// `shown` of each list as `state class on resource: operation`.
    pub fn summary(&self, shown: usize) -> Vec<String> {
        let counts = |items: &[ApprovalRequest]| -> String {
            let mut by_state: Vec<(&str, usize)> = Vec::new();
            for i in items {
                match by_state.iter_mut().find(|(s, _)| *s == i.state.as_str()) {
                    Some((_, n)) => *n += 1,
                    None => by_state.push((i.state.as_str(), 1)),
                }
            }
            by_state
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let item = |i: &ApprovalRequest| {
            let op: String = i.action.operation.chars().take(80).collect();
            format!(
                "{} {} on {}: {op}",
                i.state, i.action.class, i.action.resource.name
            )
        };
        let mut lines = Vec::new();
        if self.by_initiator.is_empty() {
            lines.push("No earlier requests by this initiator.".to_owned());
        } else {
            lines.push(format!(
                "By this initiator, recently: {}",
                counts(&self.by_initiator)
            ));
            lines.extend(self.by_initiator.iter().take(shown).map(item));
        }
        if !self.on_resource.is_empty() {
            lines.push(format!(
                "On this resource, recently: {}",
                counts(&self.on_resource)
            ));
            lines.extend(self.on_resource.iter().take(shown).map(item));
        }
        lines
    }
}

/// Where every channel (REST, CLI, Slack, Teams, web) ends: one function,
/// one set of rules. Cheap to clone.
#[derive(Clone)]
pub struct Approvals {
    pub(crate) shared: Arc<Shared>,
}

impl Approvals {
    /// `reviewer` approves or denies `id` (SPEC §4). Refusals are audited.
    pub async fn decide(
        &self,
        id: &RequestId,
        reviewer: &Principal,
        decision: Decision,
        comment: &str,
    ) -> Result<ApprovalRequest, DecideFailure> {
        let shared = &self.shared;
        // Each lost race means another decision landed; a handful of retries
        // always converges because every landing moves the request forward.
        for _ in 0..8 {
            let before = self.load(id).await?;
            let now = shared.clock.now();
            if shared.expire(&before, now).await? {
                return Err(DecideError::NotPending(RequestState::Expired).into());
            }
            // An approval must not make a revoked principal act: its
            // pending request is withdrawn instead (only for a reviewer who
            // may decide it, so outsiders learn nothing).
            if before.state == RequestState::Pending
                && before.check_reviewer(reviewer).is_ok()
                && !shared.standing.confirm(&before.action.principal).await?
            {
                self.withdraw_fallen(&before.action.principal).await?;
                return Err(DecideError::NotPending(RequestState::Expired).into());
            }
            let mut after = before.clone();
            if let Err(refusal) =
                after.decide(reviewer, decision, comment, now, shared.config.grant_ttl)
            {
                let mut record = shared.request_record(&before, AuditEvent::ReviewRefused);
                record.reviewers = vec![reviewer.qualified_id()];
                record.comment = Some(refusal.to_string());
                shared.audit.append(record).await?;
                return Err(refusal.into());
            }
            let event = match after.state {
                RequestState::Approved => AuditEvent::Approved,
                RequestState::Denied => AuditEvent::Denied,
                _ => AuditEvent::Reviewed,
            };
            let mut record = shared.request_record(&after, event);
            record.reviewers = vec![reviewer.id().to_owned()];
            record.comment = Some(comment.to_owned()).filter(|c| !c.is_empty());
            record.decision = Some(
                match decision {
                    Decision::Approve => "approve",
                    Decision::Deny => "deny",
                }
                .into(),
            );
            if shared.commit(&before, &after, record).await? {
                return Ok(after);
            }
        }
        Err(Error::Store(format!(
            "request {id} is changing too fast to decide; try again"
        ))
        .into())
    }

    /// `initiator` withdraws its pending request `id` (it stopped waiting
    /// for the action). Returns whether the request was withdrawn; a
    /// request that is no longer pending, or another principal's, is left
    /// alone.
    pub async fn withdraw(&self, id: &RequestId, initiator: &Principal) -> Result<bool, Error> {
        let shared = &self.shared;
        for _ in 0..8 {
            let Some(before) = shared.store.get_request(id).await? else {
                return Ok(false);
            };
            let mut after = before.clone();
            if !after.withdraw(initiator, shared.clock.now()) {
                return Ok(false);
            }
            let mut record = shared.request_record(&after, AuditEvent::Withdrawn);
            record.comment = Some("withdrawn by the initiator".into());
            if shared.commit(&before, &after, record).await? {
                return Ok(true);
            }
        }
        Err(Error::Store(format!(
            "request {id} is changing too fast to withdraw; try again"
        )))
    }

    /// Withdraws every pending request of `principal`, which was revoked or
    /// expired: nobody approves what it asked for. Returns how many.
    pub async fn withdraw_fallen(&self, principal: &Principal) -> Result<usize, Error> {
        let shared = &self.shared;
        let mut n = 0;
        for before in shared.store.pending_of(&principal.qualified_id()).await? {
            let mut after = before.clone();
            if !after.withdraw(&before.action.principal, shared.clock.now()) {
                continue;
            }
            let mut record = shared.request_record(&after, AuditEvent::Withdrawn);
            record.comment = Some(format!(
                "withdrawn: {} was revoked or expired",
                principal.qualified_id()
            ));
            if shared.commit(&before, &after, record).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Spends the one-time `key` in `scope` for `keep` (see
    /// [`Store::use_once`]): true the first time.
    pub async fn use_once(
        &self,
        scope: &str,
        key: &str,
        keep: std::time::Duration,
    ) -> Result<bool, Error> {
        let now = self.shared.clock.now();
        let until = Timestamp(now.0 + keep.as_millis() as i64);
        self.shared.store.use_once(scope, key, now, until).await
    }

    /// Loads a request, expiring it first if its time is up.
    pub async fn get(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, Error> {
        let Some(request) = self.shared.store.get_request(id).await? else {
            return Ok(None);
        };
        let mut after = request.clone();
        if after.expire_if_due(self.shared.clock.now()) {
            let record = self.shared.request_record(&after, AuditEvent::Expired);
            if !self.shared.commit(&request, &after, record).await? {
                return self.shared.store.get_request(id).await;
            }
        }
        Ok(Some(after))
    }

    async fn load(&self, id: &RequestId) -> Result<ApprovalRequest, DecideFailure> {
        self.shared
            .store
            .get_request(id)
            .await?
            .ok_or_else(|| DecideFailure::NotFound(id.clone()))
    }

    /// Waits until `id` leaves `pending` or `timeout` passes, then returns
    /// the request as it stands. Wakes the moment a decision lands in this
    /// process.
    pub async fn wait(
        &self,
        id: &RequestId,
        timeout: Duration,
    ) -> Result<Option<ApprovalRequest>, Error> {
        // Subscribe before reading so a decision between the two is not lost.
        let mut changes = self.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(request) = self.get(id).await? else {
                return Ok(None);
            };
            if request.state != RequestState::Pending {
                return Ok(Some(request));
            }
            // Also wake at the request's own expiry, and re-read the store at
            // least every STORE_POLL so a decision made by another process
            // sharing the store (another gateway, the CLI) is seen too.
            let until_expiry = Duration::from_millis(
                (request.expires_at.0 - self.shared.clock.now().0).max(0) as u64,
            );
            let now = tokio::time::Instant::now();
            let wake = deadline
                .min(now + until_expiry.max(MIN_REPOLL))
                .min(now + STORE_POLL);
            loop {
                match tokio::time::timeout_at(wake, changes.recv()).await {
                    Err(_) if wake >= deadline => {
                        return self.get(id).await;
                    }
                    Err(_) => break,
                    Ok(Ok((changed, _))) if changed != *id => continue,
                    Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(Some(request)),
                }
            }
        }
    }

    /// Tells local waiters that `id` changed elsewhere (another gateway).
    pub fn wake(&self, id: RequestId, state: RequestState) {
        let _ = self.shared.changes.send((id, state));
    }

    /// Expires every request whose time is up; returns how many.
    pub async fn expire_due(&self) -> Result<usize, Error> {
        let now = self.shared.clock.now();
        let mut n = 0;
        for request in self.shared.store.due_for_expiry(now).await? {
            if self.shared.expire(&request, now).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Requests matching `filter`.
    pub async fn list(&self, filter: &RequestFilter) -> Result<Vec<ApprovalRequest>, Error> {
        self.shared.store.list_requests(filter).await
    }

    /// The message `channel` posted for request `id`, so a chat channel
    /// recognises its own buttons and updates its own message, also after
    /// a restart.
    pub async fn channel_message(
        &self,
        id: &RequestId,
        channel: &str,
    ) -> Result<Option<String>, Error> {
        self.shared.store.channel_message(id, channel).await
    }

    /// Records (`Some`) or forgets (`None`) the message `channel` posted
    /// for request `id`.
    pub async fn set_channel_message(
        &self,
        id: &RequestId,
        channel: &str,
        reference: Option<&str>,
    ) -> Result<(), Error> {
        self.shared
            .store
            .set_channel_message(id, channel, reference)
            .await
    }

    /// A chat message's few lines of related history for `r` (see
    /// [`RelatedHistory::summary`]); none when the store cannot say.
    pub async fn history_lines(&self, r: &ApprovalRequest) -> Vec<String> {
        match self.related(r, 10).await {
            Ok(h) => h.summary(3),
            Err(e) => {
                tracing::warn!(error = %e, request = %r.id, "related history unavailable for a channel message");
                Vec::new()
            }
        }
    }

    /// The related history a reviewer sees with `r` (SPEC §4): up to
    /// `limit` of the initiator's other recent requests, and of the other
    /// recent requests on the same resource with their outcomes, newest
    /// first.
    pub async fn related(
        &self,
        r: &ApprovalRequest,
        limit: usize,
    ) -> Result<RelatedHistory, Error> {
        let recent = |initiator: Option<String>, resource: Option<String>| RequestFilter {
            state: None,
            initiator,
            resource,
            id_prefix: None,
            limit: limit + 1,
        };
        let others = |items: Vec<ApprovalRequest>| -> Vec<ApprovalRequest> {
            items
                .into_iter()
                .filter(|x| x.id != r.id)
                .take(limit)
                .collect()
        };
        let by_initiator = self
            .list(&recent(Some(r.action.principal.qualified_id()), None))
            .await?;
        let on_resource = self
            .list(&recent(None, Some(r.action.resource.name.clone())))
            .await?;
        Ok(RelatedHistory {
            by_initiator: others(by_initiator),
            on_resource: others(on_resource),
        })
    }

    /// The gate's settings.
    pub fn config(&self) -> &GateConfig {
        &self.shared.config
    }
}

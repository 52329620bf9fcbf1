use crate::action::Action;
use crate::fingerprint::Fingerprint;
use crate::principal::{HumanId, Principal};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// An approval request's id (a UUIDv7, so ids sort by creation time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh, time-ordered id.
    pub fn generate() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string())
    }

    /// `text` as a full request id (a UUID, any case), or `None`.
    pub fn parse_full(text: &str) -> Option<RequestId> {
        uuid::Uuid::try_parse(text.trim())
            .ok()
            .filter(|_| text.trim().len() == 36)
            .map(|u| RequestId(u.to_string()))
    }

    /// The short form people read and type: the last eight hex digits,
    /// which are random in a version 7 UUID (its first digits are the
    /// time, alike for requests made close together). Any unambiguous
    /// prefix of it, or of the full id, finds the request.
    pub fn short(&self) -> &str {
        let tail = self.0.len().saturating_sub(SHORT_ID_LEN);
        self.0.get(tail..).unwrap_or(&self.0)
    }
}

/// Length of [`RequestId::short`].
pub const SHORT_ID_LEN: usize = 8;

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who may approve: a named human or every member of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Approver {
    /// One human, by id.
    User(HumanId),
    /// Any human in the group.
    Group(String),
}

impl Approver {
    /// Whether `id` with `groups` is covered by this approver entry.
    pub fn covers(&self, id: &HumanId, groups: &[String]) -> bool {
        match self {
            Approver::User(u) => u == id,
            Approver::Group(g) => groups.iter().any(|x| x == g),
        }
    }
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approver::User(u) => write!(f, "user:{u}"),
            Approver::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl FromStr for Approver {
    type Err = String;
    /// `group:dba`, `user:alice@example.com`, or a bare id meaning a user.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (kind, name) = match s.split_once(':') {
            Some(("group", n)) => ("group", n.trim()),
            Some(("user", n)) => ("user", n.trim()),
            _ => ("user", s),
        };
        if name.is_empty() {
            return Err(format!("empty approver in {s:?}"));
        }
        Ok(match kind {
            "group" => Approver::Group(name.to_owned()),
            _ => Approver::User(HumanId(name.to_owned())),
        })
    }
}

impl Serialize for Approver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Approver {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Who must approve, how many, and how long they have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRoute {
    /// The union of the matching policies' `@approval` lists.
    pub approvers: Vec<Approver>,
    /// Distinct humans needed (the largest `@quorum`).
    pub quorum: u32,
    /// Request lifetime (the shortest `@timeout`, else the configured default).
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// SPEC §4 states. `pending → approved → executed | failed`,
/// `pending → denied`, `pending → expired`, `approved → expired`; for an
/// initiator that performs the action itself (the REST API),
/// `approved → admitted → executed | failed` as it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for reviewers.
    Pending,
    /// Quorum reached; a single-use grant is live until it expires.
    Approved,
    /// The grant was used by an initiator that performs the action itself
    /// and has not reported how it went.
    Admitted,
    /// The grant was used: the action went through.
    Executed,
    /// The grant was used but the forwarded action failed.
    Failed,
    /// A reviewer denied it.
    Denied,
    /// Nobody decided in time, or the grant went unused.
    Expired,
}

impl RequestState {
    /// Every state.
    pub const ALL: [RequestState; 7] = [
        RequestState::Pending,
        RequestState::Approved,
        RequestState::Admitted,
        RequestState::Executed,
        RequestState::Failed,
        RequestState::Denied,
        RequestState::Expired,
    ];

    /// The lower-case name used in the API and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Admitted => "admitted",
            RequestState::Executed => "executed",
            RequestState::Failed => "failed",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
        }
    }

    /// No transition leaves this state.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            RequestState::Executed
                | RequestState::Failed
                | RequestState::Denied
                | RequestState::Expired
        )
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?} (pending, approved, admitted, executed, failed, denied, expired)"
                )
            })
    }
}

/// A reviewer's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Approve.
    Approve,
    /// Deny.
    Deny,
}

/// One reviewer's recorded decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Who decided.
    pub reviewer: HumanId,
    /// What they decided.
    pub decision: Decision,
    /// Their comment or reason.
    pub comment: String,
    /// When.
    pub at: Timestamp,
}

/// Why a reviewer's decision was refused. Nothing changes when one is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// Agents never decide.
    #[error("agents cannot approve or deny requests; only humans decide")]
    NotHuman,
    /// The initiator never decides its own request.
    #[error("the initiator of a request cannot decide it")]
    Initiator,
    /// The initiating agent's owner never decides its requests.
    #[error("the owner of the initiating agent cannot decide its requests")]
    Owner,
    /// The human the initiating agent acts for never decides its requests.
    #[error("the human the initiating agent acts for cannot decide its requests")]
    Delegator,
    /// The reviewer is not in the approver set.
    #[error("not in this request's approver set ({0})")]
    NotApprover(String),
    /// Each human counts once.
    #[error("this reviewer has already decided this request")]
    AlreadyReviewed,
    /// The request is no longer pending.
    #[error("the request is {0}, no longer pending")]
    NotPending(RequestState),
}

impl DecideError {
    /// Whether the refusal is about the reviewer (403) rather than the
    /// request's state (409).
    pub fn is_forbidden(&self) -> bool {
        !matches!(self, DecideError::NotPending(_))
    }
}

/// Outcome of trying to use a request's grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantUse {
    /// The grant was live and is now spent: the action may proceed once.
    Used,
    /// No live grant: not approved, already used, or expired.
    Unavailable,
}

/// A privileged action waiting for (or holding) human approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Its id.
    pub id: RequestId,
    /// What an approval grants.
    pub fingerprint: Fingerprint,
    /// The action as the initiator presented it.
    pub action: Action,
    /// Ids of the policies that required approval.
    pub policies: Vec<String>,
    /// The policy set version the decision was made under.
    pub policy_version: String,
    /// Who decides, how many, how long.
    pub route: ApprovalRoute,
    /// Where it stands.
    pub state: RequestState,
    /// Decisions so far, in order.
    pub reviews: Vec<Review>,
    /// Creation time.
    pub created_at: Timestamp,
    /// When a pending request expires.
    pub expires_at: Timestamp,
    /// When an approved request's grant expires (set on approval).
    pub grant_expires_at: Option<Timestamp>,
    /// Time of the last state change.
    pub updated_at: Timestamp,
}

impl ApprovalRequest {
    /// Whether a channel with these `routes` (approver sets such as
    /// `group:dba`, as in `@approval`) serves this request: one of its
    /// approvers is listed, or the channel lists none (it serves all).
    pub fn routed_to(&self, routes: &[String]) -> bool {
        routes.is_empty()
            || self
                .route
                .approvers
                .iter()
                .any(|a| routes.contains(&a.to_string()))
    }

    /// A new pending request.
    pub fn new(
        action: Action,
        fingerprint: Fingerprint,
        policies: Vec<String>,
        policy_version: String,
        route: ApprovalRoute,
        now: Timestamp,
    ) -> ApprovalRequest {
        ApprovalRequest {
            id: RequestId::generate(),
            fingerprint,
            expires_at: now.plus(route.timeout),
            action,
            policies,
            policy_version,
            route,
            state: RequestState::Pending,
            reviews: Vec::new(),
            created_at: now,
            grant_expires_at: None,
            updated_at: now,
        }
    }

    /// Moves a request whose time is up to `expired`. Returns whether it did.
    pub fn expire_if_due(&mut self, now: Timestamp) -> bool {
        let due = match self.state {
            RequestState::Pending => now >= self.expires_at,
            RequestState::Approved => self.grant_expires_at.is_none_or(|t| now >= t),
            _ => false,
        };
        if due {
            self.state = RequestState::Expired;
            self.updated_at = now;
        }
        due
    }

    /// The initiator gave up on the action while it was held (an MCP
    /// `notifications/cancelled`): a pending request ends as `expired`, so
    /// nobody approves an action no one will run. Only the initiator may
    /// withdraw; returns whether the request changed.
    pub fn withdraw(&mut self, initiator: &Principal, now: Timestamp) -> bool {
        if self.state != RequestState::Pending
            || self.action.principal.qualified_id() != initiator.qualified_id()
        {
            return false;
        }
        self.state = RequestState::Expired;
        self.updated_at = now;
        true
    }

    /// Checks that `reviewer` may decide this request at all, without
    /// looking at its state.
    pub fn check_reviewer(&self, reviewer: &Principal) -> Result<(), DecideError> {
        let Principal::Human(human) = reviewer else {
            return Err(DecideError::NotHuman);
        };
        match &self.action.principal {
            Principal::Human(initiator) if initiator.id.same_human(&human.id) => {
                return Err(DecideError::Initiator);
            }
            Principal::Agent { owner, .. } if owner.same_human(&human.id) => {
                return Err(DecideError::Owner);
            }
            Principal::Agent {
                on_behalf_of: Some(delegator),
                ..
            } if delegator.same_human(&human.id) => {
                return Err(DecideError::Delegator);
            }
            _ => {}
        }
        if !self
            .route
            .approvers
            .iter()
            .any(|a| a.covers(&human.id, &human.groups))
        {
            let set: Vec<String> = self.route.approvers.iter().map(|a| a.to_string()).collect();
            return Err(DecideError::NotApprover(set.join(", ")));
        }
        Ok(())
    }

    /// Applies one reviewer's decision (SPEC §4). On error nothing changes
    /// (beyond an expiry that was due). Who the reviewer is is checked
    /// before the request's state, so a principal who may never decide
    /// learns nothing about the request from the answer.
    pub fn decide(
        &mut self,
        reviewer: &Principal,
        decision: Decision,
        comment: &str,
        now: Timestamp,
        grant_ttl: Duration,
    ) -> Result<(), DecideError> {
        self.expire_if_due(now);
        self.check_reviewer(reviewer)?;
        if self.state != RequestState::Pending {
            return Err(DecideError::NotPending(self.state));
        }
        let reviewer_id = HumanId(reviewer.id().to_owned());
        if self
            .reviews
            .iter()
            .any(|r| r.reviewer.same_human(&reviewer_id))
        {
            return Err(DecideError::AlreadyReviewed);
        }
        self.reviews.push(Review {
            reviewer: reviewer_id,
            decision,
            comment: comment.to_owned(),
            at: now,
        });
        self.updated_at = now;
        match decision {
            Decision::Deny => self.state = RequestState::Denied,
            Decision::Approve => {
                if self.approvals() >= self.route.quorum.max(1) as usize {
                    self.state = RequestState::Approved;
                    self.grant_expires_at = Some(now.plus(grant_ttl));
                }
            }
        }
        Ok(())
    }

    /// Distinct humans who approved.
    pub fn approvals(&self) -> usize {
        let mut ids: Vec<String> = self
            .reviews
            .iter()
            .filter(|r| r.decision == Decision::Approve)
            .map(|r| r.reviewer.0.to_lowercase())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    /// Spends the grant if it is live: `executed` when gavel forwards the
    /// action itself, `admitted` when the initiator performs it and reports
    /// later (`initiator_acts`).
    pub fn use_grant(&mut self, now: Timestamp, initiator_acts: bool) -> GrantUse {
        self.expire_if_due(now);
        if self.state != RequestState::Approved {
            return GrantUse::Unavailable;
        }
        self.state = if initiator_acts {
            RequestState::Admitted
        } else {
            RequestState::Executed
        };
        self.updated_at = now;
        GrantUse::Used
    }

    /// Records how the action let through by the grant ended:
    /// `executed → failed` on failure, `admitted → executed | failed` when
    /// the initiator reports. Returns whether the state changed.
    pub fn record_outcome(&mut self, now: Timestamp, failed: bool) -> bool {
        let next = match (self.state, failed) {
            (RequestState::Executed | RequestState::Admitted, true) => RequestState::Failed,
            (RequestState::Admitted, false) => RequestState::Executed,
            _ => return false,
        };
        self.state = next;
        self.updated_at = now;
        true
    }
}

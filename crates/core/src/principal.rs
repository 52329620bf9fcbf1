use serde::{Deserialize, Serialize};
use std::fmt;

/// A human's stable id: an email or an identity provider subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HumanId(pub String);

impl HumanId {
    /// Whether two ids name the same human, ignoring case. Used wherever a
    /// match refuses or de-duplicates (initiator, owner, one vote per
    /// human), so `Alice@Example.com` cannot pass for someone other than
    /// `alice@example.com`.
    pub fn same_human(&self, other: &HumanId) -> bool {
        self.0.to_lowercase() == other.0.to_lowercase()
    }
}

impl fmt::Display for HumanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for HumanId {
    fn from(s: &str) -> Self {
        HumanId(s.to_owned())
    }
}

/// A verified human: who may initiate actions and, when routed to, decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Human {
    /// Email or IdP subject.
    pub id: HumanId,
    /// Groups the human belongs to (as named in policies and `@approval`).
    pub groups: Vec<String>,
}

/// Who is acting: a human, or an agent that some human owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Principal {
    /// A person.
    Human(Human),
    /// An automated actor. Every agent has an owner, who may never approve
    /// the agent's requests.
    Agent {
        /// The agent's name (unique in the store).
        id: String,
        /// The human accountable for the agent.
        owner: HumanId,
        /// Groups the agent belongs to.
        groups: Vec<String>,
        /// The human the agent acts for in this session, when its token
        /// says so (an RFC 8693 `act` claim): recorded on every action,
        /// and, like the owner, never an approver of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<HumanId>,
    },
}

impl Principal {
    /// The principal's id (human id or agent name).
    pub fn id(&self) -> &str {
        match self {
            Principal::Human(h) => &h.id.0,
            Principal::Agent { id, .. } => id,
        }
    }

    /// `"human"` or `"agent"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Human(_) => "human",
            Principal::Agent { .. } => "agent",
        }
    }

    /// The owning human, for agents.
    pub fn owner(&self) -> Option<&HumanId> {
        match self {
            Principal::Human(_) => None,
            Principal::Agent { owner, .. } => Some(owner),
        }
    }

    /// The human an agent acts for, when it acts for one.
    pub fn on_behalf_of(&self) -> Option<&HumanId> {
        match self {
            Principal::Human(_) => None,
            Principal::Agent { on_behalf_of, .. } => on_behalf_of.as_ref(),
        }
    }

    /// The principal's groups.
    pub fn groups(&self) -> &[String] {
        match self {
            Principal::Human(h) => &h.groups,
            Principal::Agent { groups, .. } => groups,
        }
    }

    /// `human:alice@example.com` or `agent:deploy-bot`: unambiguous across kinds.
    pub fn qualified_id(&self) -> String {
        format!("{}:{}", self.kind(), self.id())
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Human(h) => write!(f, "{}", h.id),
            Principal::Agent { id, owner, .. } => write!(f, "agent {id} (owner {owner})"),
        }
    }
}

/// Finds the gavel human behind an id a channel mapped a chat user to
/// (Slack, Teams): their configured groups, if gavel knows them.
pub trait Directory: Send + Sync {
    /// The configured human with this id, if any.
    fn human(&self, id: &str) -> Option<Human>;
}

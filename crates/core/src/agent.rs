use crate::error::Error;
use crate::principal::{HumanId, Principal};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// An agent as registered in the store. Its token is kept only as a
/// SHA-256 hash, never in plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Unique name; also its principal id.
    pub name: String,
    /// The accountable human.
    pub owner: HumanId,
    /// Groups for policy and routing.
    pub groups: Vec<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its token stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

impl AgentRecord {
    /// Whether its token authenticates at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    /// The principal it authenticates as.
    pub fn principal(&self) -> Principal {
        Principal::Agent {
            id: self.name.clone(),
            owner: self.owner.clone(),
            groups: self.groups.clone(),
            on_behalf_of: None,
        }
    }
}

/// Where agents and their token hashes live. Implemented by `gavel-store`.
#[async_trait::async_trait]
pub trait AgentRegistry: Send + Sync {
    /// Registers an agent with the hash of its token. Fails with
    /// [`Error::Invalid`] if the name was ever used.
    async fn create_agent(&self, agent: &AgentRecord, token_sha256: &str) -> Result<(), Error>;
    /// Every agent, revoked ones included, by name.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, Error>;
    /// Revokes an agent; false if there is no such active agent.
    async fn revoke_agent(&self, name: &str, now: Timestamp) -> Result<bool, Error>;
    /// The agent whose token hashes to `token_sha256`, active or not.
    async fn agent_by_token(&self, token_sha256: &str) -> Result<Option<AgentRecord>, Error>;
}

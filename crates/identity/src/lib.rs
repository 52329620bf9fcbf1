//! Who is calling: turns a presented token into a [`Principal`].
//!
//! [`Authenticator`] is the one place every surface asks (REST bearer,
//! PostgreSQL password, MCP bearer). It knows human API tokens from
//! `[[identity.humans]]` (stored as SHA-256 hashes in the config), agent
//! tokens from the store (hashed, revocable, with an optional expiry), and
//! JWTs from the `[[identity.oidc]]` issuers ([`oidc`]). Tokens are never
//! logged and never stored in plaintext.
#![deny(missing_docs)]

pub mod oidc;

use gavel_config::{HumanConfig, OidcIssuerConfig};
use gavel_core::{AgentRegistry, Clock, Error, Human, HumanId, Principal};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Prefix of tokens gavel issues to agents, so leaked ones are easy to
/// find with secret scanners.
pub const AGENT_TOKEN_PREFIX: &str = "gvl_agent_";

/// The hex SHA-256 of a token: what gavel stores instead of the token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh agent token: the prefix and 256 random bits.
pub fn generate_agent_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{AGENT_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Nothing was presented.
    #[error("no credentials: send `Authorization: Bearer <token>`")]
    Missing,
    /// The token matches no human or agent.
    #[error("invalid token")]
    Invalid,
    /// The agent's token was revoked.
    #[error("agent {0} has been revoked")]
    Revoked(String),
    /// The agent's token has expired.
    #[error("the token of agent {0} has expired")]
    Expired(String),
    /// An OIDC token was refused (signature, issuer, audience, time, …).
    #[error("{0}")]
    Oidc(String),
    /// An OIDC client-credentials token maps to an agent gavel does not have.
    #[error("the token maps to agent {0}, which does not exist")]
    UnknownAgent(String),
    /// The store could not be asked.
    #[error("cannot check credentials: {0}")]
    Internal(#[from] Error),
}

/// Resolves tokens to principals.
pub struct Authenticator {
    /// Replaced whole when the configuration's humans change.
    humans_by_hash: std::sync::RwLock<Arc<HashMap<String, Human>>>,
    agents: Arc<dyn AgentRegistry>,
    clock: Arc<dyn Clock>,
    issuers: Vec<oidc::Issuer>,
}

impl Authenticator {
    /// Humans from the config; agents from the registry.
    pub fn new(
        humans: &[HumanConfig],
        agents: Arc<dyn AgentRegistry>,
        clock: Arc<dyn Clock>,
    ) -> Authenticator {
        Authenticator {
            humans_by_hash: std::sync::RwLock::new(Arc::new(humans_by_hash(humans))),
            agents,
            clock,
            issuers: Vec::new(),
        }
    }

    /// Replaces the humans (the configuration changed): tokens of humans
    /// removed stop authenticating at once.
    pub fn set_humans(&self, humans: &[HumanConfig]) {
        let fresh = Arc::new(humans_by_hash(humans));
        *self
            .humans_by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    fn humans(&self) -> Arc<HashMap<String, Human>> {
        self.humans_by_hash
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Also accepts JWTs from these OpenID Connect issuers.
    pub fn with_oidc(mut self, issuers: &[OidcIssuerConfig]) -> Authenticator {
        // No redirects: a key set must come from where the issuer says.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        self.issuers = issuers
            .iter()
            .map(|c| oidc::Issuer::new(c.clone(), http.clone()))
            .collect();
        self
    }

    /// The issuers reviewers can sign in with in a browser.
    pub fn browser_issuers(&self) -> impl Iterator<Item = &oidc::Issuer> {
        self.issuers.iter().filter(|i| i.client_id().is_some())
    }

    /// The human a browser sign-in names, with configured groups added.
    pub fn human_from_sign_in(&self, id: String, mut groups: Vec<String>) -> Human {
        if let Some(known) = self.human(&id) {
            for g in &known.groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        Human {
            id: HumanId(id),
            groups,
        }
    }

    async fn authenticate_jwt(
        &self,
        token: &str,
        resource: Option<&str>,
    ) -> Result<(Principal, Option<gavel_core::Timestamp>), AuthError> {
        // The unverified `iss` only picks the issuer whose keys must then
        // verify the whole token, `iss` included.
        let iss = oidc::unverified_issuer(token).ok_or(AuthError::Invalid)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer() == iss)
            .ok_or(AuthError::Invalid)?;
        let (subject, exp) = issuer
            .verify_for(token, resource)
            .await
            .map_err(|e| match e {
                oidc::OidcError::Refused(why) => AuthError::Oidc(why),
                unavailable @ oidc::OidcError::Unavailable { .. } => {
                    tracing::error!(error = %unavailable, "cannot verify an OIDC token");
                    AuthError::Oidc(
                        "the identity provider cannot be reached to verify the token".into(),
                    )
                }
            })?;
        let until = exp.map(|s| gavel_core::Timestamp(s.saturating_mul(1000)));
        match subject {
            oidc::Subject::Human { id, groups } => {
                // Groups configured for the same human add to the token's.
                let mut groups = groups;
                if let Some(known) = self.human(&id) {
                    for g in &known.groups {
                        if !groups.contains(g) {
                            groups.push(g.clone());
                        }
                    }
                }
                Ok((
                    Principal::Human(Human {
                        id: HumanId(id),
                        groups,
                    }),
                    until,
                ))
            }
            oidc::Subject::Agent { name, on_behalf_of } => {
                let agents = self.agents.list_agents().await?;
                let agent = agents
                    .into_iter()
                    .find(|a| a.name == name)
                    .ok_or_else(|| AuthError::UnknownAgent(name.clone()))?;
                if agent.revoked_at.is_some() {
                    return Err(AuthError::Revoked(agent.name));
                }
                if !agent.is_active(self.clock.now()) {
                    return Err(AuthError::Expired(agent.name));
                }
                let mut principal = agent.principal();
                if let Principal::Agent {
                    on_behalf_of: slot, ..
                } = &mut principal
                {
                    *slot = on_behalf_of.map(HumanId);
                }
                let until = match (until, agent.expires_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok((principal, until))
            }
        }
    }

    /// The principal `token` authenticates, if any.
    ///
    /// Lookups are by the token's SHA-256, so comparison time depends on the
    /// hash of what was presented, not on any stored secret.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.authenticate_until(token).await.map(|(p, _)| p)
    }

    /// As [`Authenticator::authenticate`], with when the credential stops
    /// being valid (a JWT's `exp`, an agent token's expiry), for sessions
    /// that outlive one request (a PostgreSQL connection).
    pub async fn authenticate_until(
        &self,
        token: &str,
    ) -> Result<(Principal, Option<gavel_core::Timestamp>), AuthError> {
        self.authenticate_at(token, None).await
    }

    /// As [`Authenticator::authenticate_until`] for one of gavel's
    /// protected resources (the MCP endpoint): a JWT may also carry that
    /// resource's URL as its audience (RFC 8707), the form an MCP client
    /// that logged in by itself obtains.
    pub async fn authenticate_for_resource(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<(Principal, Option<gavel_core::Timestamp>), AuthError> {
        self.authenticate_at(token, Some(resource)).await
    }

    /// The configured OpenID Connect issuers' URLs (the authorization
    /// servers gavel's protected resource metadata names).
    pub fn issuer_urls(&self) -> Vec<String> {
        self.issuers.iter().map(|i| i.issuer().to_owned()).collect()
    }

    async fn authenticate_at(
        &self,
        token: &str,
        resource: Option<&str>,
    ) -> Result<(Principal, Option<gavel_core::Timestamp>), AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if !self.issuers.is_empty() && oidc::looks_like_jwt(token) {
            return self.authenticate_jwt(token, resource).await;
        }
        let hash = token_sha256(token);
        if let Some(human) = self.humans().get(&hash) {
            return Ok((Principal::Human(human.clone()), None));
        }
        let Some(agent) = self.agents.agent_by_token(&hash).await? else {
            return Err(AuthError::Invalid);
        };
        if agent.revoked_at.is_some() {
            return Err(AuthError::Revoked(agent.name));
        }
        if !agent.is_active(self.clock.now()) {
            return Err(AuthError::Expired(agent.name));
        }
        Ok((agent.principal(), agent.expires_at))
    }

    /// The configured human whose static token has this SHA-256, as the
    /// configuration says now.
    pub fn human_by_token_sha256(&self, sha256: &str) -> Option<Human> {
        self.humans().get(sha256).cloned()
    }

    /// The human configured with `id`, for channels that map identities.
    pub fn human(&self, id: &str) -> Option<Human> {
        self.humans().values().find(|h| h.id.0 == id).cloned()
    }
}

/// Whether principals may still act. Agents fall when they are revoked or
/// their token expires; humans from the configuration and identity
/// provider do not fall here (their tokens are checked each time they
/// authenticate).
///
/// The hot path reads a view of the registry refreshed by
/// [`AgentStanding::refresh`] (the gateway calls it every second); a held
/// action and an approval are checked against the registry itself.
pub struct AgentStanding {
    agents: Arc<dyn AgentRegistry>,
    clock: Arc<dyn Clock>,
    view: std::sync::RwLock<StandingView>,
}

#[derive(Default)]
struct StandingView {
    fallen: std::collections::HashSet<String>,
    expiries: HashMap<String, gavel_core::Timestamp>,
}

impl AgentStanding {
    /// Over the agent registry.
    pub fn new(agents: Arc<dyn AgentRegistry>, clock: Arc<dyn Clock>) -> AgentStanding {
        AgentStanding {
            agents,
            clock,
            view: std::sync::RwLock::new(StandingView::default()),
        }
    }

    /// Re-reads the registry. Returns the agents that fell since the last
    /// refresh (all fallen ones on the first), whose pending requests the
    /// caller withdraws.
    pub async fn refresh(&self) -> Result<Vec<Principal>, Error> {
        let now = self.clock.now();
        let agents = self.agents.list_agents().await?;
        let mut view = StandingView::default();
        for a in &agents {
            if a.is_active(now) {
                if let Some(e) = a.expires_at {
                    view.expiries.insert(a.name.clone(), e);
                }
            } else {
                view.fallen.insert(a.name.clone());
            }
        }
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        let newly: Vec<Principal> = agents
            .iter()
            .filter(|a| view.fallen.contains(&a.name) && !guard.fallen.contains(&a.name))
            .map(|a| a.principal())
            .collect();
        *guard = view;
        Ok(newly)
    }
}

#[async_trait::async_trait]
impl gavel_core::Standing for AgentStanding {
    fn in_good_standing(&self, principal: &Principal) -> bool {
        let Principal::Agent { id, .. } = principal else {
            return true;
        };
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        !view.fallen.contains(id) && view.expiries.get(id).is_none_or(|e| self.clock.now() < *e)
    }

    async fn confirm(&self, principal: &Principal) -> Result<bool, Error> {
        let Principal::Agent { id, .. } = principal else {
            return Ok(true);
        };
        let now = self.clock.now();
        Ok(self
            .agents
            .list_agents()
            .await?
            .iter()
            .any(|a| &a.name == id && a.is_active(now)))
    }
}

fn humans_by_hash(humans: &[HumanConfig]) -> HashMap<String, Human> {
    humans
        .iter()
        .map(|h| {
            (
                h.token_sha256.to_ascii_lowercase(),
                Human {
                    id: HumanId(h.id.clone()),
                    groups: h.groups.clone(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_core::{AgentRecord, SystemClock, Timestamp};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Agents(Mutex<Vec<(AgentRecord, String)>>);

    #[async_trait::async_trait]
    impl AgentRegistry for Agents {
        async fn create_agent(&self, a: &AgentRecord, h: &str) -> Result<(), Error> {
            self.0.lock().unwrap().push((a.clone(), h.to_owned()));
            Ok(())
        }
        async fn list_agents(&self) -> Result<Vec<AgentRecord>, Error> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(a, _)| a.clone())
                .collect())
        }
        async fn revoke_agent(&self, _: &str, _: Timestamp) -> Result<bool, Error> {
            Ok(false)
        }
        async fn agent_by_token(&self, h: &str) -> Result<Option<AgentRecord>, Error> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(_, x)| x == h)
                .map(|(a, _)| a.clone()))
        }
    }

    #[tokio::test]
    async fn humans_agents_and_refusals() {
        let agents = Arc::new(Agents::default());
        let good = generate_agent_token();
        assert!(
            good.starts_with(AGENT_TOKEN_PREFIX) && good.len() == AGENT_TOKEN_PREFIX.len() + 64
        );
        let record =
            |name: &str, revoked: Option<Timestamp>, expires: Option<Timestamp>| AgentRecord {
                name: name.into(),
                owner: "o@x".into(),
                groups: vec![],
                created_at: Timestamp(0),
                expires_at: expires,
                revoked_at: revoked,
            };
        agents
            .create_agent(&record("bot", None, None), &token_sha256(&good))
            .await
            .unwrap();
        agents
            .create_agent(
                &record("gone", Some(Timestamp(1)), None),
                &token_sha256("revoked"),
            )
            .await
            .unwrap();
        agents
            .create_agent(
                &record("old", None, Some(Timestamp(1))),
                &token_sha256("expired"),
            )
            .await
            .unwrap();
        let auth = Authenticator::new(
            &[HumanConfig {
                id: "alice@x".into(),
                groups: vec!["dba".into()],
                token_sha256: token_sha256("alice-token").to_uppercase(),
            }],
            agents,
            Arc::new(SystemClock),
        );
        match auth.authenticate("alice-token").await.unwrap() {
            Principal::Human(h) => assert_eq!(h.groups, vec!["dba".to_string()]),
            p => panic!("{p:?}"),
        }
        assert_eq!(auth.authenticate(&good).await.unwrap().id(), "bot");
        assert!(matches!(
            auth.authenticate("").await,
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            auth.authenticate("nope").await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            auth.authenticate("revoked").await,
            Err(AuthError::Revoked(_))
        ));
        assert!(matches!(
            auth.authenticate("expired").await,
            Err(AuthError::Expired(_))
        ));
        // The token itself never shows up in an error.
        let e = auth
            .authenticate("secret-value")
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret-value"));
    }
}

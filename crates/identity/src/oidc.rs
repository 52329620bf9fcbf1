//! OpenID Connect: verifies JWTs from the configured issuers with
//! `jsonwebtoken` against the issuer's JWKS (found through its discovery
//! document, cached, fetched again on an unknown `kid` at most once per
//! `jwks_min_refresh_interval`).
//!
//! Only the algorithms an issuer's config allows (RS256, ES256, EdDSA) are
//! accepted, and only with a key of the matching type: a token's `alg`
//! header never chooses how its key is used (no `none`, no HMAC with a
//! public key).

use gavel_config::{OidcIssuerConfig, secure_or_loopback};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a discovery or JWKS request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest discovery document or JWKS gavel reads.
const MAX_DOCUMENT: usize = 256 * 1024;

/// Why a JWT was refused. The token itself never appears in it.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Not signed by a key of the issuer, expired, wrong audience, …
    #[error("token refused: {0}")]
    Refused(String),
    /// The issuer could not be reached or answered nonsense.
    #[error("identity provider {issuer} unavailable: {reason}")]
    Unavailable {
        /// The issuer.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
}

fn refused(reason: impl Into<String>) -> OidcError {
    OidcError::Refused(reason.into())
}

/// What a verified token says about its subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// A person: the id from the configured claim, and groups.
    Human {
        /// From `human_id_claim`.
        id: String,
        /// From `groups_claim`.
        groups: Vec<String>,
    },
    /// A client-credentials token mapped to an agent by name, or a
    /// delegated token (RFC 8693 `act`) whose actor is such an agent.
    Agent {
        /// The agent's name in gavel's store.
        name: String,
        /// For a delegated token, the human it acts for.
        on_behalf_of: Option<String>,
    },
}

/// One key of the issuer's JWKS.
#[derive(Clone)]
struct SigningKey {
    key: DecodingKey,
    algorithm: Algorithm,
    /// The key's `endorsements` (a Microsoft JWK extension: the channels a
    /// Bot Framework key may sign for); empty for other issuers.
    endorsements: Vec<String>,
}

struct Keys {
    endpoints: Option<Endpoints>,
    by_kid: HashMap<String, SigningKey>,
    /// Keys without a `kid`, used only when the set has exactly one key.
    anonymous: Vec<SigningKey>,
    fetched_at: Option<Instant>,
    jwks_uri: Option<String>,
}

/// One configured issuer and its cached keys.
pub struct Issuer {
    config: OidcIssuerConfig,
    /// Where the discovery document is, when not at the issuer's
    /// `/.well-known/openid-configuration` (Bot Framework's is elsewhere).
    discovery_url: Option<String>,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    /// One fetch at a time; the key map is never locked across a request.
    fetching: Mutex<()>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
}

/// Where a browser signs in, from the discovery document.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The authorization endpoint.
    pub authorization: String,
    /// The token endpoint.
    pub token: String,
    /// The device authorization endpoint (RFC 8628), when the issuer has one.
    pub device_authorization: Option<String>,
}

/// The algorithm a key is for, from its type (and curve), never from the
/// token; a JWK's own `alg`, when present, must agree.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    match declared {
        Some(a) if a != by_type => None,
        _ => Some(by_type),
    }
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl Issuer {
    /// An issuer from its config; keys are fetched on first use.
    pub fn new(config: OidcIssuerConfig, http: reqwest::Client) -> Issuer {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| parse_algorithm(a))
            .collect();
        Issuer {
            config,
            discovery_url: None,
            algorithms,
            http,
            fetching: Mutex::new(()),
            keys: RwLock::new(Keys {
                endpoints: None,
                by_kid: HashMap::new(),
                anonymous: Vec::new(),
                fetched_at: None,
                jwks_uri: None,
            }),
        }
    }

    /// The same issuer with its discovery document at `url` instead of
    /// under the issuer URL (which the document must still name).
    pub fn discovered_at(mut self, url: impl Into<String>) -> Issuer {
        self.discovery_url = Some(url.into());
        self
    }

    /// The configured issuer URL.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    fn unavailable(&self, reason: impl Into<String>) -> OidcError {
        OidcError::Unavailable {
            issuer: self.config.issuer.clone(),
            reason: reason.into(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        if !secure_or_loopback(url) {
            return Err(self.unavailable(format!("{url} is neither https:// nor loopback")));
        }
        let response = self
            .http
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(self.unavailable(format!("GET {url}: HTTP {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(self.unavailable(format!("GET {url}: larger than {MAX_DOCUMENT} bytes")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("GET {url}: {e}")))?;
        if body.len() > MAX_DOCUMENT {
            return Err(self.unavailable(format!("GET {url}: larger than {MAX_DOCUMENT} bytes")));
        }
        serde_json::from_slice(&body).map_err(|e| self.unavailable(format!("GET {url}: {e}")))
    }

    fn keys_read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn keys_write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the discovery document (once) and the JWKS, without holding
    /// the key map locked.
    async fn refresh(&self) -> Result<(), OidcError> {
        let known_jwks_uri = self.keys_read().jwks_uri.clone();
        let jwks_uri = match known_jwks_uri {
            Some(u) => u,
            None => {
                let url = self.discovery_url.clone().unwrap_or_else(|| {
                    format!(
                        "{}/.well-known/openid-configuration",
                        self.config.issuer.trim_end_matches('/')
                    )
                });
                let discovery: Discovery = self.get_json(&url).await?;
                // OpenID Connect Discovery §4.3: the document must name
                // the issuer it was fetched for.
                if discovery.issuer != self.config.issuer {
                    return Err(self.unavailable(format!(
                        "discovery document names issuer {:?}",
                        discovery.issuer
                    )));
                }
                let endpoints = match (discovery.authorization_endpoint, discovery.token_endpoint) {
                    (Some(authorization), Some(token))
                        if secure_or_loopback(&authorization) && secure_or_loopback(&token) =>
                    {
                        Some(Endpoints {
                            authorization,
                            token,
                            device_authorization: discovery
                                .device_authorization_endpoint
                                .filter(|d| secure_or_loopback(d)),
                        })
                    }
                    _ => None,
                };
                let mut keys = self.keys_write();
                keys.jwks_uri = Some(discovery.jwks_uri.clone());
                keys.endpoints = endpoints;
                discovery.jwks_uri
            }
        };
        let raw: serde_json::Value = self.get_json(&jwks_uri).await?;
        let set: JwkSet = serde_json::from_value(raw.clone())
            .map_err(|e| self.unavailable(format!("GET {jwks_uri}: {e}")))?;
        let mut by_kid = HashMap::new();
        let mut anonymous = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let endorsements: Vec<String> = raw["keys"][i]["endorsements"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect();
            let Some(alg) = key_algorithm(jwk) else {
                continue;
            };
            if !self.algorithms.contains(&alg) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let signing = SigningKey {
                key,
                algorithm: alg,
                endorsements,
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), signing);
                }
                None => anonymous.push(signing),
            }
        }
        tracing::info!(issuer = %self.config.issuer, keys = by_kid.len() + anonymous.len(), "fetched OIDC signing keys");
        let mut keys = self.keys_write();
        keys.by_kid = by_kid;
        keys.anonymous = anonymous;
        Ok(())
    }

    /// Claims the right to fetch now: true at most once per
    /// `jwks_min_refresh_interval`, counting failed attempts too.
    fn may_fetch(&self) -> bool {
        let mut keys = self.keys_write();
        let due = keys
            .fetched_at
            .is_none_or(|t| t.elapsed() >= self.config.jwks_min_refresh_interval);
        if due {
            keys.fetched_at = Some(Instant::now());
        }
        due
    }

    /// The key for `kid`, fetching the JWKS when it is unknown (at most
    /// once per `jwks_min_refresh_interval`, so key rotation is picked up
    /// and a flood of made-up `kid`s is not).
    async fn key(&self, kid: Option<&str>) -> Result<SigningKey, OidcError> {
        let lookup = |keys: &Keys| match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None if keys.by_kid.len() + keys.anonymous.len() == 1 => keys
                .anonymous
                .first()
                .or_else(|| keys.by_kid.values().next())
                .cloned(),
            None => None,
        };
        if let Some(found) = lookup(&self.keys_read()) {
            return Ok(found);
        }
        let _one_fetch = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(found) = lookup(&self.keys_read()) {
            return Ok(found);
        }
        if self.may_fetch() {
            self.refresh().await?;
            if let Some(found) = lookup(&self.keys_read()) {
                return Ok(found);
            }
        }
        Err(refused(match kid {
            Some(kid) => format!(
                "no signing key {:?} at the issuer",
                kid.chars().take(64).collect::<String>()
            ),
            None => "the token names no key (kid) and the issuer has several".into(),
        }))
    }

    /// Verifies `token` (its signature, `iss`, `aud`, `exp`, `nbf`) and
    /// says whom it identifies.
    pub async fn verify(&self, token: &str) -> Result<Subject, OidcError> {
        self.verify_until(token).await.map(|(s, _)| s)
    }

    /// As [`Issuer::verify`], with the token's expiry (`exp`, seconds since
    /// the epoch).
    pub async fn verify_until(&self, token: &str) -> Result<(Subject, Option<i64>), OidcError> {
        self.verify_for(token, None).await
    }

    /// As [`Issuer::verify_until`], also accepting `resource` as the
    /// audience: an access token a client obtained for one of gavel's
    /// resources by its URL (RFC 8707 resource indicators).
    pub async fn verify_for(
        &self,
        token: &str,
        resource: Option<&str>,
    ) -> Result<(Subject, Option<i64>), OidcError> {
        let mut audiences = vec![self.config.audience.as_str()];
        audiences.extend(resource);
        let (claims, _) = self
            .decode(token, &audiences, &["exp", "iss", "aud", "sub"])
            .await?;
        let exp = claims.get("exp").and_then(serde_json::Value::as_i64);
        Ok((self.subject(&claims)?, exp))
    }

    /// The issuer's browser endpoints (discovery is fetched if needed).
    pub async fn endpoints(&self) -> Result<Endpoints, OidcError> {
        if self.keys_read().jwks_uri.is_none() {
            let _one_fetch = self.fetching.lock().await;
            if self.keys_read().jwks_uri.is_none() && self.may_fetch() {
                self.refresh().await?;
            }
        }
        self.keys_read().endpoints.clone().ok_or_else(|| {
            self.unavailable(
                "no https:// (or loopback) authorization and token endpoints in the discovery document",
            )
        })
    }

    /// gavel's client id for browser sign-in, if configured.
    pub fn client_id(&self) -> Option<&str> {
        self.config.client_id.as_deref()
    }

    /// Exchanges an authorization code (with its PKCE verifier) for an ID
    /// token, verifies it for gavel's client id and the flow's `nonce`, and
    /// returns the human it names: only humans sign in to the web pages.
    pub async fn sign_in(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<(String, Vec<String>), OidcError> {
        let client_id = self
            .config
            .client_id
            .clone()
            .ok_or_else(|| refused("browser sign-in is not configured for this issuer"))?;
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("client_id", client_id.clone()),
            ("code_verifier", verifier.to_owned()),
        ];
        if let Some(var) = &self.config.client_secret_env {
            let secret = std::env::var(var)
                .map_err(|_| self.unavailable(format!("${var} (the client secret) is not set")))?;
            form.push(("client_secret", secret));
        }
        let response = self
            .http
            .post(&endpoints.token)
            .timeout(FETCH_TIMEOUT)
            .form(&form)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("token endpoint: {e}")))?;
        if !response.status().is_success() {
            return Err(refused(format!(
                "the token endpoint refused the code (HTTP {})",
                response.status()
            )));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: String,
        }
        let tokens: TokenResponse = response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("token endpoint: {e}")))?;
        let claims = self.verified_claims(&tokens.id_token, &client_id).await?;
        if claims.get("nonce").and_then(|n| n.as_str()) != Some(nonce) {
            return Err(refused("the ID token's nonce does not match this sign-in"));
        }
        // OIDC Core §3.1.3.7: with several audiences, azp must be gavel.
        if claims.get("aud").is_some_and(|a| a.is_array())
            && claims.get("azp").and_then(|a| a.as_str()) != Some(client_id.as_str())
        {
            return Err(refused("the ID token was issued to another client (azp)"));
        }
        // The same mapping as every token: a service identity mapped to
        // an agent never signs in as a reviewer.
        match self.subject(&claims)? {
            Subject::Human { id, groups } => Ok((id, groups)),
            Subject::Agent { .. } => Err(refused("agents cannot sign in to the web pages")),
        }
    }

    /// Verifies `token`'s signature, `iss`, `aud` (the configured
    /// audience), `exp` and `nbf`, requiring the `required` claims, and
    /// returns its claims with the signing key's endorsements (empty when
    /// the key has none). For tokens that name no subject, such as the Bot
    /// Framework's.
    pub async fn verify_claims(
        &self,
        token: &str,
        required: &[&str],
    ) -> Result<(serde_json::Value, Vec<String>), OidcError> {
        self.decode(token, &[self.config.audience.as_str()], required)
            .await
    }

    async fn verified_claims(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<serde_json::Value, OidcError> {
        let (claims, _) = self
            .decode(token, &[audience], &["exp", "iss", "aud", "sub"])
            .await?;
        Ok(claims)
    }

    async fn decode(
        &self,
        token: &str,
        audience: &[&str],
        required: &[&str],
    ) -> Result<(serde_json::Value, Vec<String>), OidcError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("malformed token header: {e}")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(refused(format!(
                "algorithm {:?} is not accepted from this issuer",
                header.alg
            )));
        }
        let SigningKey {
            key,
            algorithm: key_alg,
            endorsements,
        } = self.key(header.kid.as_deref()).await?;
        if key_alg != header.alg {
            return Err(refused(format!(
                "the token says {:?} but its key is for {key_alg:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(key_alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(audience);
        validation.leeway = self.config.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(required);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| refused(jwt_refusal(&e)))?;
        Ok((data.claims, endorsements))
    }

    fn subject(&self, claims: &serde_json::Value) -> Result<Subject, OidcError> {
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str());
        // Delegation (RFC 8693 §4.1): `act` names the party acting for the
        // token's subject; its outermost level is the current actor.
        if let Some(act) = claims.get("act") {
            let actor = ["client_id", "sub"]
                .iter()
                .find_map(|c| act.get(*c).and_then(|v| v.as_str()));
            let name = actor
                .and_then(|a| self.config.agents.get(a))
                .ok_or_else(|| {
                    refused("the token's act claim names an actor that is not mapped to an agent")
                })?;
            let (human, _) = self.human(claims)?;
            return Ok(Subject::Agent {
                name: name.clone(),
                on_behalf_of: Some(human),
            });
        }
        // Client credentials: a token of a mapped client that names no
        // human (or whose subject is the client itself) is the agent. A
        // human's token that came through a mapped client stays the
        // human's.
        let names_a_human = text(&self.config.human_id_claim).is_some_and(|v| !v.trim().is_empty())
            && self.config.human_id_claim != "sub";
        for claim in ["client_id", "azp", "sub"] {
            let Some(client) = text(claim) else { continue };
            let Some(name) = self.config.agents.get(client) else {
                continue;
            };
            let subject_is_client = text("sub") == Some(client);
            if subject_is_client || !names_a_human {
                return Ok(Subject::Agent {
                    name: name.clone(),
                    on_behalf_of: None,
                });
            }
        }
        let (id, groups) = self.human(claims)?;
        Ok(Subject::Human { id, groups })
    }

    /// The human a token names, and their groups.
    fn human(&self, claims: &serde_json::Value) -> Result<(String, Vec<String>), OidcError> {
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str());
        let id_claim = self.config.human_id_claim.as_str();
        let id = text(id_claim)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| refused(format!("the token has no {id_claim:?} claim")))?;
        if id_claim == "email"
            && claims.get("email_verified") != Some(&serde_json::Value::Bool(true))
        {
            return Err(refused(
                "the token's email is not verified (email_verified is not true)",
            ));
        }
        let groups = match claims.get(&self.config.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            Some(_) => {
                return Err(refused(format!(
                    "claim {:?} is not a list of group names",
                    self.config.groups_claim
                )));
            }
        };
        Ok((id.to_owned(), groups))
    }
}

/// Whether `token` has the shape of a JWS compact serialization.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The unverified `iss` of a JWT: only to pick which issuer verifies it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Why a JWT was refused, in words a person acts on.
fn jwt_refusal(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired; sign in again".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidAudience => "the token is for another audience (aud)".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        _ => format!("the token is not valid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_type_decides_the_algorithm() {
        let jwk = |json: serde_json::Value| -> Jwk { serde_json::from_value(json).unwrap() };
        let rsa = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
        assert_eq!(key_algorithm(&jwk(rsa.clone())), Some(Algorithm::RS256));
        let mut declared = rsa.clone();
        declared["alg"] = "RS256".into();
        assert_eq!(key_algorithm(&jwk(declared)), Some(Algorithm::RS256));
        // A JWK that says it is for something else is not used at all.
        let mut mismatch = rsa;
        mismatch["alg"] = "ES256".into();
        assert_eq!(key_algorithm(&jwk(mismatch)), None);
        let hmac = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(key_algorithm(&jwk(hmac)), None);
        let p384 = serde_json::json!({"kty": "EC", "crv": "P-384", "x": "AQAB", "y": "AQAB"});
        assert_eq!(key_algorithm(&jwk(p384)), None);
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AQAB"});
        assert_eq!(key_algorithm(&jwk(ed)), Some(Algorithm::EdDSA));
    }

    #[test]
    fn only_jws_compact_shapes_count_as_jwts() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("gvl_agent_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c="));
    }
}

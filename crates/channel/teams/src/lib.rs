//! Microsoft Teams (SPEC §4, channels). Each routed request, and each of
//! its state changes, becomes an Adaptive Card (schema 1.5) with the same
//! content as the Slack message:
//!
//! - through a **Workflows webhook** ("When a Teams webhook request is
//!   received"): the card opens the approval page (`Action.OpenUrl`). A
//!   card posted by the Workflows bot cannot carry actions that reach
//!   gavel, so reviewers decide on the page;
//! - through a **Bot Framework app**: gavel posts the card to the
//!   configured conversation with the Bot Connector API (client-credentials
//!   token), with a reason field and Approve / Deny (`Action.Execute`), and
//!   updates it in place as the request moves. The `adaptiveCard/action`
//!   invokes arrive at `/integrations/teams/messages` and are believed only
//!   after the Bot Framework JWT is verified: signature against the keys of
//!   Bot Framework's OpenID metadata, `iss` `https://api.botframework.com`,
//!   `aud` the app id, `exp`/`nbf` with 5 minutes of skew, the key endorsed
//!   for the activity's `channelId`, and the token's `serviceurl` equal to
//!   the activity's. The Teams user (`from.aadObjectId`) must be in the
//!   configured map; the decision goes through `Approvals::decide`.
//!
//! Agent-written text goes only into `TextRun`s, which Adaptive Cards never
//! read as Markdown, so it cannot forge links or formatting.
#![deny(missing_docs)]

use gavel_config::{OidcIssuerConfig, TeamsBotConfig, TeamsConfig};
use gavel_core::display::{one_line, visible};
use gavel_core::{
    ApprovalRequest, Approvals, AttemptError, ChannelMessages, DecideFailure, Decision, Deliveries,
    Directory, Human, HumanId, Notifier, Principal, RequestId, RequestState, retry_after_seconds,
};
use gavel_identity::oidc::{Issuer, OidcError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The issuer of every Bot Framework token sent to a bot.
pub const BOT_FRAMEWORK_ISSUER: &str = "https://api.botframework.com";
/// The scope of the app's token for the Bot Connector API.
const CONNECTOR_SCOPE: &str = "https://api.botframework.com/.default";
/// Clock skew Bot Framework tokens are allowed (Microsoft's guidance).
const BOT_CLOCK_SKEW: Duration = Duration::from_secs(300);
const QUEUE: usize = 10_000;
/// Longest operation text shown on a card; the rest is on the page.
const OPERATION_SHOWN: usize = 2_500;
/// Longest other agent-written text on a card.
const TEXT_SHOWN: usize = 1_000;
/// A card's JSON beyond this is shown with shorter texts: Teams refuses
/// messages over about 28 KB, and an agent must not be able to make its
/// own card undeliverable.
const CARD_BYTES: usize = 20_000;
/// The shorter limits used then.
const OPERATION_SHOWN_SHORT: usize = 400;
const TEXT_SHOWN_SHORT: usize = 150;
/// Longest deny reason accepted from a card.
const REASON_MAX: usize = 2_000;
/// The longest a connector token is trusted, whatever `expires_in` says.
const TOKEN_LIFETIME_MAX: Duration = Duration::from_secs(24 * 3600);
/// The channel a Teams activity comes from; `from.aadObjectId` means
/// something only there.
const TEAMS_CHANNEL: &str = "msteams";
/// The content type of an Adaptive Card attachment, and of an invoke
/// response that replaces the card.
const CARD: &str = "application/vnd.microsoft.card.adaptive";

/// One `[[channels.teams]]`.
pub struct Teams {
    name: String,
    routes: Vec<String>,
    public_url: String,
    http: reqwest::Client,
    /// The Workflows webhook URL (a secret: it carries its signature).
    webhook_url: Option<String>,
    bot: Option<Bot>,
    deliveries: Arc<Deliveries>,
    /// For related history on cards; see [`Teams::connect`].
    approvals: OnceLock<Approvals>,
    /// One queue per target, so a failing webhook never delays the bot's
    /// cards (or the other way round).
    queues: Vec<mpsc::Sender<ApprovalRequest>>,
}

/// Where a Teams channel posts.
#[derive(Clone, Copy)]
enum Target {
    Webhook,
    Bot,
}

/// The Bot Framework side of a Teams channel.
struct Bot {
    config: TeamsBotConfig,
    password: String,
    /// Verifies the tokens Bot Framework sends with each activity.
    tokens: Issuer,
    /// The app's own token for the Bot Connector, and when it goes stale.
    connector_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    /// Request id → the id of the card activity gavel posted for it.
    cards: ChannelMessages,
}

/// Cuts agent-written text to `max` characters, saying so.
fn shown(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max).collect();
    cut.push_str("\n… (truncated; the whole text is on the approval page)");
    cut
}

/// `label: value` with the value as a plain `TextRun` (never Markdown),
/// on one line: a value cannot fake further fields.
fn line(label: &str, value: &str) -> Value {
    json!({"type": "RichTextBlock", "inlines": [
        {"type": "TextRun", "text": format!("{label}: "), "weight": "Bolder"},
        {"type": "TextRun", "text": one_line(value)},
    ]})
}

/// A labelled block of agent-written text that may span lines, framed so
/// it cannot pass for gavel's own fields.
fn framed(label: &str, value: &str, monospace: bool) -> Value {
    let mut run = json!({"type": "TextRun", "text": visible(value)});
    if monospace {
        run["fontType"] = json!("Monospace");
    }
    json!({"type": "Container", "style": "emphasis", "items": [
        {"type": "TextBlock", "text": label, "weight": "Bolder"},
        {"type": "RichTextBlock", "inlines": [run]},
    ]})
}

/// A request id from an action's data, if it looks like one gavel makes
/// (so nothing else is echoed back).
fn request_id_of(value: &Value) -> Option<String> {
    let id = value.as_str()?;
    (id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then(|| id.to_owned())
}

/// An invoke answer that shows `text` to the user who pressed.
fn message(text: impl Into<String>) -> Value {
    json!({"statusCode": 200, "type": "application/vnd.microsoft.activity.message", "value": text.into()})
}

/// Why an activity was not believed.
#[derive(Debug, PartialEq, Eq)]
pub struct Unauthenticated(pub String);

impl Teams {
    /// A Teams channel and its posting task. Fails naming an unset
    /// variable.
    pub fn start(
        index: usize,
        config: &TeamsConfig,
        public_url: &str,
        deliveries: Arc<Deliveries>,
    ) -> Result<Arc<Teams>, String> {
        let var = |name: &str, key: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| {
                    format!("channels.teams[{index}].{key} names ${name}, which is not set")
                })
        };
        let webhook_url = match &config.webhook_url_env {
            Some(env) => {
                let url = var(env, "webhook_url_env")?;
                if !gavel_config::secure_or_loopback(&url) {
                    return Err(format!(
                        "channels.teams[{index}].webhook_url_env: ${env} must hold an https:// URL (http:// only for loopback)"
                    ));
                }
                Some(url)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let bot = match &config.bot {
            Some(b) => {
                let password = var(&b.app_password_env, "bot.app_password_env")?;
                let tokens = Issuer::new(
                    OidcIssuerConfig {
                        issuer: BOT_FRAMEWORK_ISSUER.into(),
                        audience: b.app_id.clone(),
                        groups_claim: "groups".into(),
                        human_id_claim: "sub".into(),
                        clock_skew: BOT_CLOCK_SKEW,
                        algorithms: vec!["RS256".into()],
                        jwks_min_refresh_interval: Duration::from_secs(30),
                        client_id: None,
                        client_secret_env: None,
                        agents: BTreeMap::new(),
                    },
                    http.clone(),
                )
                .discovered_at(b.openid_metadata.clone());
                Some(Bot {
                    config: b.clone(),
                    password,
                    tokens,
                    connector_token: tokio::sync::Mutex::new(None),
                    cards: ChannelMessages::new(format!(
                        "{}/bot",
                        config
                            .name
                            .clone()
                            .unwrap_or_else(|| format!("teams-{index}"))
                    )),
                })
            }
            None => None,
        };
        let mut targets = Vec::new();
        let mut queues = Vec::new();
        for (target, wanted) in [
            (Target::Webhook, webhook_url.is_some()),
            (Target::Bot, bot.is_some()),
        ] {
            if wanted {
                let (queue, events) = mpsc::channel(QUEUE);
                queues.push(queue);
                targets.push((target, events));
            }
        }
        if let Some(b) = &config.bot
            && b.tenant_id.is_none()
        {
            tracing::warn!(
                channel = index,
                "channels.teams.bot has no tenant_id: a mapped user pressing from any tenant can decide"
            );
        }
        let teams = Arc::new(Teams {
            name: config
                .name
                .clone()
                .unwrap_or_else(|| format!("teams-{index}")),
            routes: config.routes.clone(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            http,
            webhook_url,
            bot,
            deliveries,
            approvals: OnceLock::new(),
            queues,
        });
        for (target, events) in targets {
            tokio::spawn(post_changes(teams.clone(), target, events));
        }
        Ok(teams)
    }

    /// Whether this channel has a bot (and so answers invokes).
    pub fn has_bot(&self) -> bool {
        self.bot.is_some()
    }

    fn url(&self, request: &ApprovalRequest) -> String {
        format!("{}/requests/{}", self.public_url, request.id.0)
    }

    /// Lets the channel show each request's related history (called once
    /// the gate exists; until then messages go without it).
    pub fn connect(&self, approvals: &Approvals) {
        let _ = self.approvals.set(approvals.clone());
    }

    /// The related-history lines of a request's message.
    async fn history(&self, r: &ApprovalRequest) -> Vec<String> {
        match self.approvals.get() {
            Some(approvals) => approvals.history_lines(r).await,
            None => Vec::new(),
        }
    }

    /// The Adaptive Card of a request. `buttons`: Approve, Deny and a
    /// reason field while it is pending (cards a bot posts). Texts are
    /// shortened further when the card would be too large for Teams.
    pub fn card(&self, r: &ApprovalRequest, buttons: bool, history: &[String]) -> Value {
        let card = self.card_within(r, buttons, history, OPERATION_SHOWN, TEXT_SHOWN);
        if card.to_string().len() <= CARD_BYTES {
            return card;
        }
        self.card_within(r, buttons, history, OPERATION_SHOWN_SHORT, TEXT_SHOWN_SHORT)
    }

    fn card_within(
        &self,
        r: &ApprovalRequest,
        buttons: bool,
        history: &[String],
        operation_shown: usize,
        text_shown: usize,
    ) -> Value {
        let a = &r.action;
        let owner = a
            .principal
            .owner()
            .map(|o| o.0.clone())
            .unwrap_or_else(|| "—".into());
        let title = if r.state == RequestState::Pending {
            format!("Approval needed: {}", a.class)
        } else {
            format!("{}: {}", a.class, r.state)
        };
        let mut body = vec![
            json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true}),
            line("Initiator", &shown(&a.principal.qualified_id(), text_shown)),
            line("Owner", &shown(&owner, text_shown)),
        ];
        if let Some(h) = a.principal.on_behalf_of() {
            body.push(line("Acting for", &shown(&h.0, text_shown)));
        }
        body.extend([
            line(
                "Resource",
                &shown(
                    &format!("{} ({})", a.resource.name, a.resource.kind),
                    text_shown,
                ),
            ),
            line("Action", a.class.as_str()),
            line(
                "Request",
                &format!("{} (gavel approve {})", r.id.short(), r.id.short()),
            ),
            line("Policy", &shown(&r.policies.join(", "), text_shown)),
            line(
                "Quorum",
                &format!(
                    "{} of {} · expires {}",
                    r.approvals(),
                    r.route.quorum.max(1),
                    humantime::format_rfc3339_seconds(r.expires_at.to_system_time())
                ),
            ),
            framed("Operation", &shown(&a.operation, operation_shown), true),
            framed(
                "Intent",
                &if a.intent.is_empty() {
                    "none given".to_owned()
                } else {
                    shown(&a.intent, text_shown)
                },
                false,
            ),
        ]);
        if !a.data_context.is_null() {
            body.push(framed(
                "Data context",
                &shown(&a.data_context.to_string(), text_shown),
                true,
            ));
        }
        if !history.is_empty() {
            let lines: Vec<String> = history.iter().map(|l| one_line(l)).collect();
            body.push(framed(
                "Related history",
                &shown(&lines.join("\n"), text_shown * 2),
                false,
            ));
        }
        if r.state != RequestState::Pending || !r.reviews.is_empty() {
            let by: Vec<String> = r
                .reviews
                .iter()
                .map(|v| {
                    let verb = match v.decision {
                        Decision::Approve => "approved",
                        Decision::Deny => "denied",
                    };
                    if v.comment.is_empty() {
                        format!("{} {verb}", v.reviewer.0)
                    } else {
                        format!("{} {verb}: {}", v.reviewer.0, v.comment)
                    }
                })
                .collect();
            body.push(line(
                &r.state.to_string(),
                &shown(&by.join("; "), text_shown),
            ));
        }
        let mut actions = Vec::new();
        if buttons && r.state == RequestState::Pending {
            body.push(
                json!({"type": "Input.Text", "id": "reason", "isMultiline": true,
                             "label": "Reason (needed to deny)", "placeholder": "Why?"}),
            );
            actions.push(
                json!({"type": "Action.Execute", "title": "Approve", "verb": "approve",
                                "style": "positive", "data": {"request_id": r.id.0}}),
            );
            actions.push(
                json!({"type": "Action.Execute", "title": "Deny", "verb": "deny",
                                "style": "destructive", "data": {"request_id": r.id.0}}),
            );
        }
        actions
            .push(json!({"type": "Action.OpenUrl", "title": "Open request", "url": self.url(r)}));
        json!({
            "type": "AdaptiveCard",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": "1.5",
            "fallbackText": format!("gavel request {} is {}: {}", r.id.short(), r.state, self.url(r)),
            "body": body,
            "actions": actions,
        })
    }

    /// Posts one state change through the Workflows webhook.
    async fn post_webhook(&self, url: &str, r: &ApprovalRequest) -> Result<(), AttemptError> {
        let message = json!({"type": "message", "attachments": [
            {"contentType": CARD, "contentUrl": null, "content": self.card(r, false, &self.history(r).await)},
        ]});
        let response = self
            .http
            .post(url)
            .json(&message)
            .send()
            .await
            // The URL is a secret: never in the message.
            .map_err(|_| AttemptError::transient("the Workflows webhook cannot be reached"))?;
        http_result(response).await.map(|_| ())
    }

    /// Posts (or updates) a request's card in the bot's conversation, and
    /// says what changed in its thread.
    async fn post_bot(&self, bot: &Bot, r: &ApprovalRequest) -> Result<(), AttemptError> {
        let conversation = format!(
            "{}/v3/conversations/{}/activities",
            bot.config.service_url.trim_end_matches('/'),
            bot.config.conversation_id
        );
        let activity = json!({"type": "message", "attachments": [
            {"contentType": CARD, "content": self.card(r, true, &self.history(r).await)},
        ]});
        let posted = bot.cards.get(self.approvals.get(), &r.id.0).await;
        let token = self.connector_token(bot).await?;
        match posted {
            None => {
                let response = self
                    .http
                    .post(&conversation)
                    .bearer_auth(&token)
                    .json(&activity)
                    .send()
                    .await
                    .map_err(|_| AttemptError::transient("the Bot Connector cannot be reached"))?;
                let answer = self.connector_result(bot, response).await?;
                if let Some(id) = answer["id"].as_str() {
                    bot.cards.set(self.approvals.get(), &r.id.0, Some(id)).await;
                }
            }
            Some(id) => {
                let response = self
                    .http
                    .put(format!("{conversation}/{id}"))
                    .bearer_auth(&token)
                    .json(&activity)
                    .send()
                    .await
                    .map_err(|_| AttemptError::transient("the Bot Connector cannot be reached"))?;
                self.connector_result(bot, response).await?;
                let progress = match r.state {
                    RequestState::Pending => {
                        format!("approved {} of {}", r.approvals(), r.route.quorum.max(1))
                    }
                    other => other.to_string(),
                };
                // A reply in the card's thread.
                let response = self
                    .http
                    .post(format!("{conversation}/{id}"))
                    .bearer_auth(&token)
                    .json(&json!({"type": "message", "text": progress, "replyToId": id}))
                    .send()
                    .await
                    .map_err(|_| AttemptError::transient("the Bot Connector cannot be reached"))?;
                self.connector_result(bot, response).await?;
            }
        }
        // Nothing more will change on a finished request's card.
        if r.state.is_final() {
            bot.cards.set(self.approvals.get(), &r.id.0, None).await;
        }
        Ok(())
    }

    /// A Bot Connector answer. A 401 means the cached token was revoked
    /// (or the secret rotated): it is dropped and the call retried with a
    /// new one.
    async fn connector_result(
        &self,
        bot: &Bot,
        response: reqwest::Response,
    ) -> Result<Value, AttemptError> {
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            *bot.connector_token.lock().await = None;
            return Err(AttemptError::transient("Bot Connector: HTTP 401"));
        }
        http_result(response).await
    }

    /// The app's Bot Connector token (client credentials), cached until a
    /// minute before it expires.
    async fn connector_token(&self, bot: &Bot) -> Result<String, AttemptError> {
        let mut cached = bot.connector_token.lock().await;
        if let Some((token, stale_at)) = cached.as_ref()
            && Instant::now() < *stale_at
        {
            return Ok(token.clone());
        }
        let response = self
            .http
            .post(&bot.config.token_endpoint)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", bot.config.app_id.as_str()),
                ("client_secret", bot.password.as_str()),
                ("scope", CONNECTOR_SCOPE),
            ])
            .send()
            .await
            .map_err(|_| AttemptError::transient("the token endpoint cannot be reached"))?;
        let answer = http_result(response).await.map_err(|mut e| {
            e.message = format!("token endpoint: {}", e.message);
            e
        })?;
        let token = answer["access_token"]
            .as_str()
            .ok_or_else(|| AttemptError::permanent("token endpoint: no access_token"))?
            .to_owned();
        let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(3600))
            .min(TOKEN_LIFETIME_MAX);
        let stale_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        *cached = Some((token.clone(), stale_at));
        Ok(token)
    }

    /// Verifies a Bot Framework activity's token (see the crate docs).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        activity: &Value,
    ) -> Result<(), Unauthenticated> {
        let bot = self
            .bot
            .as_ref()
            .ok_or_else(|| Unauthenticated("this Teams channel has no bot".into()))?;
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Unauthenticated("no Bearer token".into()))?;
        let (claims, endorsements) = bot
            .tokens
            .verify_claims(token, &["exp", "iss", "aud"])
            .await
            .map_err(|e| match e {
                OidcError::Refused(why) => Unauthenticated(why),
                unavailable => Unauthenticated(unavailable.to_string()),
            })?;
        // Only Teams vouches for `from.aadObjectId`; other channels a key
        // may be endorsed for (Web Chat, Direct Line) let a client set it.
        let channel = activity["channelId"].as_str().unwrap_or_default();
        if channel != TEAMS_CHANNEL {
            return Err(Unauthenticated(format!(
                "activities from channel {:?} are not accepted, only from {TEAMS_CHANNEL}",
                channel.chars().take(32).collect::<String>()
            )));
        }
        if !endorsements.iter().any(|e| e == channel) {
            return Err(Unauthenticated(format!(
                "the signing key is not endorsed for channel {channel:?}"
            )));
        }
        let claimed = claims["serviceurl"]
            .as_str()
            .or(claims["serviceUrl"].as_str());
        let service_url = activity["serviceUrl"].as_str();
        if claimed.is_none() || claimed != service_url {
            return Err(Unauthenticated(
                "the token's serviceurl is not the activity's".into(),
            ));
        }
        Ok(())
    }

    /// Answers one authenticated activity: an `adaptiveCard/action` invoke
    /// decides; anything else is acknowledged and ignored. Returns the
    /// invoke response body.
    pub async fn activity(
        &self,
        activity: &Value,
        approvals: &Approvals,
        directory: &dyn Directory,
    ) -> Value {
        let Some(bot) = &self.bot else {
            return Value::Null;
        };
        if activity["type"] != "invoke" || activity["name"] != "adaptiveCard/action" {
            return Value::Null;
        }
        let action = &activity["value"]["action"];
        let Some(id) = request_id_of(&action["data"]["request_id"]) else {
            return message("This card names no gavel request.");
        };
        let page = format!("{}/requests/{id}", self.public_url);
        // Only gavel's own card for this request, in its conversation and
        // (when set) its tenant, decides.
        let ours = bot.cards.get(Some(approvals), &id).await;
        let conversation = activity["conversation"]["id"]
            .as_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default();
        let tenant = activity["conversation"]["tenantId"]
            .as_str()
            .or(activity["channelData"]["tenant"]["id"].as_str());
        let on_our_card = conversation == bot.config.conversation_id
            && ours.is_some()
            && activity["replyToId"].as_str() == ours.as_deref()
            && bot
                .config
                .tenant_id
                .as_deref()
                .is_none_or(|t| tenant == Some(t));
        if !on_our_card {
            return message(format!(
                "This card is not gavel's current card for request {id}; decide on the approval page: {page}"
            ));
        }
        let decision = match action["verb"].as_str() {
            Some("approve") => Decision::Approve,
            Some("deny") => Decision::Deny,
            _ => return message("gavel does not know this action"),
        };
        let reason = action["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if decision == Decision::Deny && reason.is_empty() {
            return message("Say why you deny it: fill in the reason, then press Deny.");
        }
        if reason.chars().count() > REASON_MAX {
            return message(format!(
                "The reason is too long: at most {REASON_MAX} characters."
            ));
        }
        let user = activity["from"]["aadObjectId"].as_str().unwrap_or_default();
        let Some(human_id) = bot.config.users.get(user) else {
            return message(
                "gavel does not know who you are: your Teams account is not mapped to a gavel user (channels.teams.bot.users)",
            );
        };
        let reviewer = Principal::Human(directory.human(human_id).unwrap_or(Human {
            id: HumanId(human_id.clone()),
            groups: Vec::new(),
        }));
        let comment = if reason.is_empty() {
            "approved in Teams".to_owned()
        } else {
            reason
        };
        match approvals
            .decide(&RequestId(id.clone()), &reviewer, decision, &comment)
            .await
        {
            Ok(request) => {
                json!({"statusCode": 200, "type": CARD, "value": self.card(&request, true, &self.history(&request).await)})
            }
            Err(DecideFailure::Refused(r)) => message(format!("gavel refused your decision: {r}")),
            Err(DecideFailure::NotFound(_)) => message(format!("gavel has no request {id}")),
            Err(DecideFailure::Internal(_)) => {
                message("gavel could not record the decision; try again")
            }
        }
    }
}

/// A 2xx answer's JSON body (or `null`), else the status as an
/// [`AttemptError`].
async fn http_result(response: reqwest::Response) -> Result<Value, AttemptError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json().await.unwrap_or(Value::Null));
    }
    let retry_after = retry_after_seconds(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    Err(AttemptError::http(status.as_u16(), retry_after))
}

impl Notifier for Teams {
    fn request_changed(&self, request: &ApprovalRequest) -> bool {
        if !request.routed_to(&self.routes) {
            return false;
        }
        for queue in &self.queues {
            if queue.try_send(request.clone()).is_err() {
                metrics::counter!("gavel_channel_deliveries_total", "channel" => self.name.clone(), "outcome" => "dropped").increment(1);
                tracing::error!(channel = %self.name, "Teams queue full; event dropped");
            }
        }
        true
    }
}

/// Delivers each routed state change to one target, in order, retried
/// through [`Deliveries::deliver`].
async fn post_changes(
    teams: Arc<Teams>,
    target: Target,
    mut events: mpsc::Receiver<ApprovalRequest>,
) {
    while let Some(request) = events.recv().await {
        let event = format!("request.{}", request.state.as_str());
        // Outcomes are in the request's deliveries, the log and metrics.
        match (target, &teams.webhook_url, &teams.bot) {
            (Target::Webhook, Some(url), _) => {
                let channel = format!("{}/webhook", teams.name);
                let _ = teams
                    .deliveries
                    .deliver(&request.id.0, &channel, &event, || {
                        teams.post_webhook(url, &request)
                    })
                    .await;
            }
            (Target::Bot, _, Some(bot)) => {
                let channel = format!("{}/bot", teams.name);
                let _ = teams
                    .deliveries
                    .deliver(&request.id.0, &channel, &event, || {
                        teams.post_bot(bot, &request)
                    })
                    .await;
            }
            // A queue exists only for a configured target.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_and_says_so() {
        assert_eq!(shown("short", 10), "short");
        let cut = shown(&"x".repeat(20), 10);
        assert!(cut.starts_with(&"x".repeat(10)) && cut.contains("truncated"));
        assert!(!cut.starts_with(&"x".repeat(11)));
    }

    #[test]
    fn agent_text_is_never_markdown() {
        let l = line("Intent", "[click](https://evil) **now**");
        assert_eq!(l["type"], "RichTextBlock");
        assert_eq!(l["inlines"][1]["type"], "TextRun");
        assert_eq!(l["inlines"][1]["text"], "[click](https://evil) **now**");
    }
}

//! Slack (SPEC §4, channels). A new approval request is posted to the
//! configured channel as a Block Kit message with Approve and Deny
//! buttons (`chat.postMessage`, bot token). Later states update it
//! (`chat.update`), and progress goes in its thread. Button presses arrive
//! at `/integrations/slack/interactions`. Their `X-Slack-Signature` (v0,
//! HMAC-SHA256 over `v0:{timestamp}:{raw body}`, 5-minute window,
//! constant-time, each signature once) is verified before anything is
//! parsed. The Slack user is mapped to a gavel human (explicit map, else
//! the confirmed email from `users.info`), and the decision goes through
//! `Approvals::decide`. A refusal (initiator, owner, outsider, unmapped)
//! is answered with an ephemeral message. Deny opens a modal that asks for
//! a reason.
#![deny(missing_docs)]

use gavel_config::SlackConfig;
use gavel_core::display::{one_line, visible};
use gavel_core::{
    ApprovalRequest, Approvals, AttemptError, ChannelMessages, DecideFailure, Decision, Deliveries,
    Directory, Human, HumanId, Notifier, Principal, RequestId, RequestState, retry_after_seconds,
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// How old a signed request may be (Slack's recommendation).
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Longest operation text shown in a message; the rest is on the page.
const OPERATION_SHOWN: usize = 2_500;
const QUEUE: usize = 10_000;
/// How long a `users.info` answer is trusted: a deactivated or renamed
/// user stops deciding within this time.
const USER_CACHE_TTL: Duration = Duration::from_secs(300);
/// Slack errors that pass: retried like a 5xx.
const TRANSIENT_ERRORS: [&str; 4] = [
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
];

/// `v0=HEX(HMAC-SHA256(secret, "v0:{timestamp}:{body}"))`, as Slack signs.
pub fn slack_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why an interaction was refused before it was read.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Missing or malformed headers.
    Malformed,
    /// Older (or newer) than [`MAX_AGE`].
    Stale,
    /// Not signed with the app's secret.
    BadSignature,
    /// Seen before.
    Replayed,
    /// Whether it was seen before cannot be told now (the store is
    /// unreachable): refused, never let through.
    Unavailable,
}

/// One `[[channels.slack]]`.
pub struct Slack {
    name: String,
    config: SlackConfig,
    bot_token: String,
    signing_secret: Vec<u8>,
    public_url: String,
    http: reqwest::Client,
    /// Request id → the message's `ts`.
    messages: ChannelMessages,
    /// Slack user id → the gavel human id `users.info` gave, and when.
    users: Mutex<HashMap<String, (String, Instant)>>,
    deliveries: Arc<Deliveries>,
    /// For related history in messages; see [`Slack::connect`].
    approvals: OnceLock<Approvals>,
    queue: mpsc::Sender<ApprovalRequest>,
}

fn text(s: &str) -> Value {
    // verbatim: no auto-linking of what an agent wrote.
    json!({"type": "mrkdwn", "text": s, "verbatim": true})
}

/// Agent-supplied text for a one-line field: on one line (it cannot fake
/// further fields), then made inert as [`escape_max`] does.
fn escape(s: &str) -> String {
    escape_max(&one_line(s), 1_000)
}

/// Agent-supplied text made inert in mrkdwn: invisible controls removed,
/// `&`, `<`, `>` escaped (no links or mentions), backticks replaced (a
/// code block cannot be closed early to forge lines), then cut to `max`
/// characters.
fn escape_max(s: &str, max: usize) -> String {
    let escaped = visible(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "ˋ");
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(max).collect();
    // Never end inside an entity.
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
    {
        cut.truncate(amp);
    }
    cut.push_str("\n… (truncated; the whole text is on the approval page)");
    cut
}

impl Slack {
    /// A Slack channel and its posting task. Fails naming an unset
    /// variable.
    pub fn start(
        index: usize,
        config: &SlackConfig,
        public_url: &str,
        deliveries: Arc<Deliveries>,
    ) -> Result<Arc<Slack>, String> {
        let var = |name: &str, key: &str| {
            std::env::var(name).map_err(|_| {
                format!("channels.slack[{index}].{key} names ${name}, which is not set")
            })
        };
        let bot_token = var(&config.bot_token_env, "bot_token_env")?;
        let signing_secret = var(&config.signing_secret_env, "signing_secret_env")?;
        // An empty (or trivially short) secret would let anyone sign.
        if signing_secret.trim().len() < 16 || bot_token.trim().is_empty() {
            return Err(format!(
                "channels.slack[{index}]: the signing secret must be at least 16 characters and the bot token not empty"
            ));
        }
        let signing_secret = signing_secret.into_bytes();
        let (queue, events) = mpsc::channel(QUEUE);
        let slack = Arc::new(Slack {
            name: config
                .name
                .clone()
                .unwrap_or_else(|| format!("slack-{}", config.channel)),
            config: config.clone(),
            bot_token,
            signing_secret,
            public_url: public_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
            messages: ChannelMessages::new(
                config
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("slack-{}", config.channel)),
            ),
            users: Mutex::new(HashMap::new()),
            deliveries,
            approvals: OnceLock::new(),
            queue,
        });
        tokio::spawn(post_changes(slack.clone(), events));
        Ok(slack)
    }

    async fn api(&self, method: &str, body: Value) -> Result<Value, AttemptError> {
        self.send(method, self.endpoint(method).json(&body)).await
    }

    /// For Slack's read methods, which take form-encoded bodies.
    async fn api_form(&self, method: &str, form: &[(&str, &str)]) -> Result<Value, AttemptError> {
        self.send(method, self.endpoint(method).form(form)).await
    }

    fn endpoint(&self, method: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!(
                "{}/{method}",
                self.config.api_base.trim_end_matches('/')
            ))
            .bearer_auth(&self.bot_token)
    }

    /// Sends a Web API call. Slack rate-limits with HTTP 429 and
    /// `Retry-After`, and reports other failures as `ok: false` with an
    /// error name; those that pass are marked for retry.
    async fn send(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, AttemptError> {
        let response = request
            .send()
            .await
            .map_err(|_| AttemptError::transient(format!("{method}: Slack cannot be reached")))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after_seconds(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
            );
            let mut e = AttemptError::http(status.as_u16(), retry_after);
            e.message = format!("{method}: {}", e.message);
            return Err(e);
        }
        let value: Value = response
            .json()
            .await
            .map_err(|e| AttemptError::transient(format!("{method}: {e}")))?;
        if value["ok"] != true {
            let error = value["error"].as_str().unwrap_or("not ok");
            let message = format!("{method}: {error}");
            return Err(if TRANSIENT_ERRORS.contains(&error) {
                AttemptError::transient(message)
            } else {
                AttemptError::permanent(message)
            });
        }
        Ok(value)
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

    /// The Block Kit message of a request, with its related history.
    pub fn blocks(&self, r: &ApprovalRequest, history: &[String]) -> Value {
        let a = &r.action;
        let operation = escape_max(&a.operation, OPERATION_SHOWN);
        let owner = a
            .principal
            .owner()
            .map(|o| o.0.clone())
            .unwrap_or_else(|| "—".into());
        let mut fields = vec![
            text(&format!(
                "*Initiator*\n{}",
                escape(&a.principal.qualified_id())
            )),
            text(&format!("*Owner*\n{}", escape(&owner))),
            text(&format!(
                "*Resource*\n{} ({})",
                escape(&a.resource.name),
                escape(&a.resource.kind)
            )),
            text(&format!("*Action*\n{}", a.class)),
            text(&format!("*Policy*\n{}", escape(&r.policies.join(", ")))),
            text(&format!(
                "*Quorum*\n{} of {} · expires {}",
                r.approvals(),
                r.route.quorum.max(1),
                humantime::format_rfc3339_seconds(r.expires_at.to_system_time())
            )),
        ];
        if let Some(h) = a.principal.on_behalf_of() {
            fields.push(text(&format!("*Acting for*\n{}", escape(&h.0))));
        }
        let mut blocks = vec![
            json!({"type": "header", "text": {"type": "plain_text", "text": format!("Approval needed: {}", a.class)}}),
            json!({"type": "section", "fields": fields}),
            json!({"type": "section", "text": text(&format!("*Operation*\n```{operation}```"))}),
            json!({"type": "section", "text": text(&format!(
                "*Intent*\n{}",
                if a.intent.is_empty() { "_none given_".to_owned() } else { escape(&a.intent) }
            ))}),
        ];
        if !a.data_context.is_null() {
            let context = escape(&a.data_context.to_string());
            blocks.push(
                json!({"type": "context", "elements": [text(&format!("Data context: {context}"))]}),
            );
        }
        if !history.is_empty() {
            let lines: Vec<String> = history
                .iter()
                .map(|l| escape_max(&one_line(l), 300))
                .collect();
            blocks.push(json!({"type": "context", "elements": [text(&format!("*Related history*\n{}", lines.join("\n")))]}));
        }
        blocks.push(json!({"type": "context", "elements": [text(&format!("<{}|Open request {}> for the full context and history, or run `gavel approve {}`", self.url(r), r.id.short(), r.id.short()))]}));
        if r.state == RequestState::Pending {
            blocks.push(
                json!({"type": "actions", "block_id": "gavel_decision", "elements": [
                    {"type": "button", "action_id": "approve", "style": "primary", "value": r.id.0,
                     "text": {"type": "plain_text", "text": "Approve"}},
                    {"type": "button", "action_id": "deny", "style": "danger", "value": r.id.0,
                     "text": {"type": "plain_text", "text": "Deny"}},
                ]}),
            );
        } else {
            let by: Vec<String> = r
                .reviews
                .iter()
                .map(|v| {
                    format!(
                        "{} {}",
                        v.reviewer.0,
                        match v.decision {
                            Decision::Approve => "approved",
                            Decision::Deny => "denied",
                        }
                    )
                })
                .collect();
            blocks.push(json!({"type": "section", "text": text(&format!(
                "*{}*{}",
                r.state,
                if by.is_empty() { String::new() } else { format!(" — {}", escape(&by.join(", "))) }
            ))}));
        }
        Value::Array(blocks)
    }

    async fn post(&self, r: &ApprovalRequest) -> Result<(), AttemptError> {
        let ts = self.messages.get(self.approvals.get(), &r.id.0).await;
        let fallback = format!(
            "gavel request {} is {}: {}",
            r.id.short(),
            r.state,
            self.url(r)
        );
        let history = self.history(r).await;
        match ts {
            None if r.state == RequestState::Pending => {
                let v = self
                    .api("chat.postMessage", json!({"channel": self.config.channel, "text": fallback, "blocks": self.blocks(r, &history)}))
                    .await?;
                if let Some(ts) = v["ts"].as_str() {
                    self.messages
                        .set(self.approvals.get(), &r.id.0, Some(ts))
                        .await;
                }
            }
            // A state change of a request posted before this process
            // started: nothing to update, say it in the channel.
            None => {
                self.api(
                    "chat.postMessage",
                    json!({"channel": self.config.channel, "text": fallback}),
                )
                .await?;
            }
            Some(ts) => {
                self.api("chat.update", json!({"channel": self.config.channel, "ts": ts, "text": fallback, "blocks": self.blocks(r, &history)}))
                    .await?;
                let progress = match r.state {
                    RequestState::Pending => {
                        format!("approved {} of {}", r.approvals(), r.route.quorum.max(1))
                    }
                    other => other.to_string(),
                };
                self.api(
                    "chat.postMessage",
                    json!({"channel": self.config.channel, "thread_ts": ts, "text": progress}),
                )
                .await?;
            }
        }
        // Nothing more will change on a finished request's message.
        if r.state.is_final() {
            self.messages.set(self.approvals.get(), &r.id.0, None).await;
        }
        Ok(())
    }

    /// Verifies a request from Slack before anything is read from it.
    pub async fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Rejected> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(Rejected::Malformed);
        };
        let sent: i64 = timestamp.parse().map_err(|_| Rejected::Malformed)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if (now - sent).unsigned_abs() > MAX_AGE.as_secs() {
            return Err(Rejected::Stale);
        }
        let expected = slack_signature(&self.signing_secret, timestamp, body);
        if expected.len() != signature.len()
            || !bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
        {
            return Err(Rejected::BadSignature);
        }
        // Each signature is good once, on every gateway of the store and
        // across restarts: kept as long as its timestamp could pass.
        let Some(approvals) = self.approvals.get() else {
            return Err(Rejected::Unavailable);
        };
        match approvals
            .use_once("slack-signature", signature, MAX_AGE * 2)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejected::Replayed),
            Err(e) => {
                tracing::error!(error = %e, "cannot record a Slack signature as used; refusing the interaction");
                Err(Rejected::Unavailable)
            }
        }
    }

    /// The gavel human behind a Slack user: the explicit map, else the
    /// confirmed email `users.info` reports. `None`: the user may not decide.
    async fn human_of(&self, user: &str, directory: &dyn Directory) -> Option<Human> {
        let cached = self
            .users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .filter(|(_, at)| at.elapsed() < USER_CACHE_TTL)
            .map(|(id, _)| id.clone());
        let id = match self.config.users.get(user).cloned().or(cached) {
            Some(id) => id,
            None => {
                // users.info is a read method: form-encoded, as Slack documents.
                let info = self.api_form("users.info", &[("user", user)]).await.ok()?;
                let u = &info["user"];
                let email = u["profile"]["email"].as_str()?;
                // Only full members of gavel's own workspace: no guests,
                // bots, deactivated users, or users of another team.
                let refused = u["is_email_confirmed"] != true
                    || u["is_bot"] == true
                    || u["deleted"] == true
                    || u["is_restricted"] == true
                    || u["is_ultra_restricted"] == true
                    || self
                        .config
                        .team_id
                        .as_deref()
                        .is_some_and(|team| u["team_id"].as_str() != Some(team));
                if refused {
                    return None;
                }
                let id = email.to_lowercase();
                let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
                users.retain(|_, (_, at)| at.elapsed() < USER_CACHE_TTL);
                users.insert(user.to_owned(), (id.clone(), Instant::now()));
                id
            }
        };
        Some(directory.human(&id).unwrap_or(Human {
            id: HumanId(id),
            groups: Vec::new(),
        }))
    }

    async fn ephemeral(&self, user: &str, message: &str) {
        if let Err(e) = self
            .api(
                "chat.postEphemeral",
                json!({"channel": self.config.channel, "user": user, "text": message}),
            )
            .await
        {
            tracing::warn!(error = %e.message, "Slack ephemeral message failed");
        }
    }

    /// Handles one verified interaction payload (the `payload` form field).
    /// Returns the JSON body to answer Slack with (empty for 200 OK).
    pub async fn interaction(
        &self,
        payload: &Value,
        approvals: &Approvals,
        directory: &dyn Directory,
    ) -> Value {
        let user = payload["user"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match payload["type"].as_str() {
            Some("block_actions") => {
                let Some(action) = payload["actions"].get(0) else {
                    return Value::Null;
                };
                let id = action["value"].as_str().unwrap_or_default().to_owned();
                // A button counts only on the message gavel posted for this
                // request, in its channel, from its workspace.
                let ours = self.messages.get(Some(approvals), &id).await;
                let from_our_message = payload["channel"]["id"] == self.config.channel.as_str()
                    && ours.is_some()
                    && payload["container"]["message_ts"].as_str() == ours.as_deref()
                    && self.config.team_id.as_deref().is_none_or(|t| {
                        payload["user"]["team_id"].as_str() == Some(t)
                            || payload["team"]["id"].as_str() == Some(t)
                    });
                if !from_our_message {
                    self.ephemeral(
                        &user,
                        &format!(
                            "This button is not on gavel's current message for request {id}; decide on the approval page: {}/requests/{id}",
                            self.public_url
                        ),
                    )
                    .await;
                    return Value::Null;
                }
                match action["action_id"].as_str() {
                    Some("approve") => {
                        // A refusal was already told to the user, ephemerally.
                        let _refused = self
                            .decide(
                                &user,
                                &id,
                                Decision::Approve,
                                "approved in Slack",
                                approvals,
                                directory,
                            )
                            .await;
                    }
                    Some("deny") => {
                        let modal = json!({
                            "type": "modal", "callback_id": "gavel_deny", "private_metadata": id,
                            "title": {"type": "plain_text", "text": "Deny request"},
                            "submit": {"type": "plain_text", "text": "Deny"},
                            "blocks": [{"type": "input", "block_id": "reason",
                                        "label": {"type": "plain_text", "text": "Why?"},
                                        "element": {"type": "plain_text_input", "action_id": "reason", "multiline": true}}]
                        });
                        let trigger = payload["trigger_id"].as_str().unwrap_or_default();
                        if let Err(e) = self
                            .api("views.open", json!({"trigger_id": trigger, "view": modal}))
                            .await
                        {
                            tracing::warn!(error = %e.message, "Slack: opening the deny modal failed");
                        }
                    }
                    _ => {}
                }
                Value::Null
            }
            Some("view_submission") if payload["view"]["callback_id"] == "gavel_deny" => {
                let id = payload["view"]["private_metadata"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let reason = payload["view"]["state"]["values"]["reason"]["reason"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                if reason.is_empty() {
                    return json!({"response_action": "errors", "errors": {"reason": "Say why you deny it."}});
                }
                match self
                    .decide(&user, &id, Decision::Deny, &reason, approvals, directory)
                    .await
                {
                    Ok(()) => json!({"response_action": "clear"}),
                    Err(why) => json!({"response_action": "errors", "errors": {"reason": why}}),
                }
            }
            _ => Value::Null,
        }
    }

    async fn decide(
        &self,
        user: &str,
        id: &str,
        decision: Decision,
        comment: &str,
        approvals: &Approvals,
        directory: &dyn Directory,
    ) -> Result<(), String> {
        let Some(human) = self.human_of(user, directory).await else {
            let why = "gavel does not know who you are: your Slack account is not mapped to a gavel user (a confirmed email or an entry in channels.slack.users)".to_owned();
            self.ephemeral(user, &why).await;
            return Err(why);
        };
        let reviewer = Principal::Human(human);
        match approvals
            .decide(&RequestId(id.to_owned()), &reviewer, decision, comment)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = match e {
                    DecideFailure::Refused(r) => format!("gavel refused your decision: {r}"),
                    DecideFailure::NotFound(_) => format!("gavel has no request {id}"),
                    DecideFailure::Internal(_) => {
                        "gavel could not record the decision; try again".to_owned()
                    }
                };
                self.ephemeral(user, &why).await;
                Err(why)
            }
        }
    }
}

impl Notifier for Slack {
    fn request_changed(&self, request: &ApprovalRequest) -> bool {
        if !request.routed_to(&self.config.routes) {
            return false;
        }
        if self.queue.try_send(request.clone()).is_err() {
            metrics::counter!("gavel_channel_deliveries_total", "channel" => self.name.clone(), "outcome" => "dropped").increment(1);
            tracing::error!(channel = %self.name, "Slack queue full; event dropped");
        }
        true
    }
}

/// Posts each routed state change in order, retried through
/// [`Deliveries::deliver`].
async fn post_changes(slack: Arc<Slack>, mut events: mpsc::Receiver<ApprovalRequest>) {
    while let Some(request) = events.recv().await {
        let event = format!("request.{}", request.state.as_str());
        // The outcome is in the request's deliveries, the log and metrics.
        let _ = slack
            .deliveries
            .deliver(&request.id.0, &slack.name, &event, || slack.post(&request))
            .await;
    }
}

/// The `payload` field of a Slack interaction body (form-encoded).
pub fn payload_of(body: &[u8]) -> Option<Value> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .and_then(|(_, v)| serde_json::from_str(&v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slacks_documented_example_verifies() {
        // https://api.slack.com/authentication/verifying-requests-from-slack
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            slack_signature(
                b"8f742231b10e8888abcd99yyyzzz85a5",
                "1531420618",
                body.as_bytes()
            ),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn agent_text_cannot_forge_lines_links_or_mentions() {
        let e = escape("x```\n*Policy*\nall-good <!channel> <https://evil|click> & more");
        assert!(
            !e.contains('`') && !e.contains('<') && !e.contains('>'),
            "{e}"
        );
        assert!(
            e.contains("&lt;!channel&gt;") && e.contains("&amp; more"),
            "{e}"
        );
        let long = escape_max(&"&".repeat(50), 12);
        assert!(
            long.starts_with("&amp;&amp;") && !long.contains("&am\n"),
            "{long}"
        );
        assert!(long.contains("truncated"));
    }

    #[test]
    fn payloads_are_read_from_the_form() {
        let body = b"payload=%7B%22type%22%3A%22block_actions%22%7D";
        assert_eq!(payload_of(body).unwrap()["type"], "block_actions");
        assert!(payload_of(b"nothing=here").is_none());
    }
}

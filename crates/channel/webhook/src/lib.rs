//! Signed webhooks (SPEC §4, channels): every approval request and each of
//! its state changes is POSTed as JSON to the configured URLs, signed
//! `X-Gavel-Signature: t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "t.body"))`
//! so a consumer (a ticket system, an on-call tool) can check it came from
//! gavel and is fresh. Deliveries are retried with backoff; their status is
//! kept per request for the API. A consumer decides through the REST API
//! with a human's token, like any channel, through `Approvals::decide`.
//!
//! A failing webhook never blocks the gate, the request or other channels:
//! [`Webhook::request_changed`] only queues.
#![deny(missing_docs)]

use gavel_config::WebhookConfig;
use gavel_core::{ApprovalRequest, AttemptError, Deliveries, Notifier, retry_after_seconds};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting per channel; past this, new ones are dropped (and
/// counted) rather than let a dead consumer grow memory.
const QUEUE: usize = 10_000;

/// The signature header value for `body` sent at `t` (unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

struct Event {
    request_id: String,
    name: String,
    body: Vec<u8>,
}

/// One `[[channels.webhook]]`.
pub struct Webhook {
    name: String,
    routes: Vec<String>,
    public_url: String,
    queue: mpsc::Sender<Event>,
}

impl Webhook {
    /// A webhook channel and its delivery task. Fails naming an unset
    /// secret variable.
    pub fn start(
        index: usize,
        config: &WebhookConfig,
        public_url: &str,
        deliveries: Arc<Deliveries>,
    ) -> Result<Webhook, String> {
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("webhook-{index}"));
        let secret = std::env::var(&config.secret_env).map_err(|_| {
            format!(
                "channels.webhook[{index}].secret_env names ${}, which is not set",
                config.secret_env
            )
        })?;
        // An empty (or trivially short) secret would let anyone sign.
        if secret.trim().len() < 16 {
            return Err(format!(
                "channels.webhook[{index}]: the secret in ${} must be at least 16 characters",
                config.secret_env
            ));
        }
        let (queue, events) = mpsc::channel(QUEUE);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| format!("webhook {name}: {e}"))?;
        tokio::spawn(deliver(
            name.clone(),
            config.url.clone(),
            secret.into_bytes(),
            http,
            events,
            deliveries,
        ));
        Ok(Webhook {
            name,
            routes: config.routes.clone(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            queue,
        })
    }
}

impl Notifier for Webhook {
    fn request_changed(&self, request: &ApprovalRequest) -> bool {
        if !request.routed_to(&self.routes) {
            return false;
        }
        let name = format!("request.{}", request.state.as_str());
        let body = serde_json::json!({
            "event": name,
            "request_id": request.id.0,
            "state": request.state.as_str(),
            "url": format!("{}/requests/{}", self.public_url, request.id.0),
            "request": request,
        });
        let event = Event {
            request_id: request.id.0.clone(),
            name,
            body: serde_json::to_vec(&body).unwrap_or_default(),
        };
        if self.queue.try_send(event).is_err() {
            metrics::counter!("gavel_channel_deliveries_total", "channel" => self.name.clone(), "outcome" => "dropped").increment(1);
            tracing::error!(channel = %self.name, "webhook queue full; event dropped");
        }
        true
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Delivers events in order, each retried with backoff (see
/// [`Deliveries::deliver`]); a fresh timestamp and signature per attempt.
async fn deliver(
    channel: String,
    url: String,
    secret: Vec<u8>,
    http: reqwest::Client,
    mut events: mpsc::Receiver<Event>,
    deliveries: Arc<Deliveries>,
) {
    while let Some(event) = events.recv().await {
        let attempt = || async {
            let t = now_secs();
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-gavel-signature", signature(&secret, t, &event.body))
                .header("x-gavel-event", &event.name)
                .body(event.body.clone())
                .send()
                .await
                .map_err(|e| {
                    // The URL may carry a secret: never in the message.
                    AttemptError::transient(if e.is_timeout() {
                        "timed out"
                    } else {
                        "connection failed"
                    })
                })?;
            if response.status().is_success() {
                return Ok(());
            }
            let retry_after = retry_after_seconds(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
            );
            Err(AttemptError::http(response.status().as_u16(), retry_after))
        };
        // The outcome is in `deliveries`, the log and the metrics.
        let _ = deliveries
            .deliver(&event.request_id, &channel, &event.name, attempt)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_t_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' |
        //   openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}

//! The Slack channel against a local stand-in for Slack's Web API
//! (`tests/slack/fake_slack.py`), with interactions signed exactly as Slack
//! signs them (v0, HMAC-SHA256 over `v0:{timestamp}:{body}`).

mod harness;

use harness::{ALICE, FakeServer, Gavel};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const BOT_TOKEN: &str = "xoxb-test-token";
const SIGNING_SECRET: &str = "slack-signing-secret-for-tests";

/// `tests/slack/fake_slack.py`: Slack's Web API methods gavel calls.
struct FakeSlack(FakeServer);

impl FakeSlack {
    fn start() -> FakeSlack {
        FakeSlack(FakeServer::start("slack/fake_slack.py", &[BOT_TOKEN]))
    }

    fn calls(&self, method: &str) -> Vec<Value> {
        self.0
            .recorded()
            .into_iter()
            .filter(|c| c["method"] == method)
            .map(|c| c["body"].clone())
            .collect()
    }

    async fn wait(&self, method: &str, what: impl Fn(&Value) -> bool) -> Value {
        self.0
            .wait_until(|got| {
                got.iter()
                    .any(|c| c["method"] == method && what(&c["body"]))
            })
            .await
            .into_iter()
            .find(|c| c["method"] == method && what(&c["body"]))
            .map(|c| c["body"].clone())
            .unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(secret: &str, ts: &str, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn form_body(payload: &Value) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

async fn post_signed(g: &Gavel, body: &str, ts: i64, secret: &str) -> (u16, String) {
    let ts = ts.to_string();
    let r = g
        .http
        .post(format!("{}/integrations/slack/interactions", g.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", sign(secret, &ts, body))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A button press on the message with `ts`, as Slack sends it.
fn click(user: &str, action: &str, request: &str, ts: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "team_id": "T1"},
        "team": {"id": "T1"},
        "channel": {"id": "C0123"},
        "container": {"type": "message", "message_ts": ts, "channel_id": "C0123"},
        "trigger_id": "trigger-1",
        "actions": [{"action_id": action, "value": request, "block_id": "gavel_decision"}],
    })
}

async fn start(slack: &FakeSlack) -> Gavel {
    let extra = format!(
        r#"
[[channels.slack]]
bot_token_env = "TEST_SLACK_BOT_TOKEN"
signing_secret_env = "TEST_SLACK_SIGNING_SECRET"
channel = "C0123"
routes = ["group:dba"]
api_base = "http://127.0.0.1:{port}/api"
users = {{ "U_BOB" = "bob@x" }}
"#,
        port = slack.0.port
    );
    Gavel::start_custom_env(
        "60s",
        harness::POLICIES,
        &extra,
        &[
            ("TEST_SLACK_BOT_TOKEN", BOT_TOKEN),
            ("TEST_SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ],
    )
    .await
}

async fn state(g: &Gavel, id: &str) -> Value {
    g.get(&format!("/api/v1/requests/{id}"), ALICE).await.1
}

/// The message gavel posted for request `id`, once gavel has recorded it
/// as delivered (and so knows its `ts`).
async fn posted(slack: &FakeSlack, g: &Gavel, id: &str) -> (Value, Value) {
    let message = slack
        .wait("chat.postMessage", |b| b["blocks"].to_string().contains(id))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = state(g, id).await;
        if let Some(d) = view["deliveries"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["channel"] == "slack-C0123"))
            && d["status"] == "delivered"
        {
            return (message, d.clone());
        }
        assert!(Instant::now() < deadline, "not delivered: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_in_slack_follow_the_same_rules() {
    let slack = FakeSlack::start();
    let mut g = start(&slack).await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE orders")
        .await;
    let id = harness::request_id(&v);
    // The message: everything a reviewer needs, with the buttons. Slack
    // rate-limited the first try; gavel waited its Retry-After and tried
    // again, and the request shows it.
    let (posted, delivery) = posted(&slack, &g, &id).await;
    assert_eq!(delivery["attempts"], 2, "{delivery}");
    assert_eq!(delivery["event"], "request.pending", "{delivery}");
    assert_eq!(slack.calls("chat.postMessage(429)").len(), 1);
    assert_eq!(posted["channel"], "C0123");
    let ts = posted["_ts"].as_str().unwrap().to_owned();
    let blocks = posted["blocks"].to_string();
    for needed in [
        "agent:bot",
        "owner@x",
        "prod-db",
        "sql.ddl",
        "DROP TABLE orders",
        "ddl-needs-dba",
        "approve",
        "deny",
        "/requests/",
        "Related history",
        "No earlier requests by this initiator.",
    ] {
        assert!(blocks.contains(needed), "missing {needed}: {blocks}");
    }
    // Signed by someone else, stale, or replayed: refused before reading.
    let body = form_body(&click("U_BOB", "approve", &id, &ts));
    assert_eq!(post_signed(&g, &body, now(), "wrong-secret").await.0, 401);
    assert_eq!(
        post_signed(&g, &body, now() - 400, SIGNING_SECRET).await.0,
        401
    );
    // The agent's owner: an ephemeral refusal, nothing changes.
    let owner = form_body(&click("U_OWNER", "approve", &id, &ts));
    let sent = now();
    assert_eq!(post_signed(&g, &owner, sent, SIGNING_SECRET).await.0, 200);
    let refusal = slack
        .wait("chat.postEphemeral", |b| b["user"] == "U_OWNER")
        .await;
    assert!(
        refusal["text"].as_str().unwrap().contains("owner"),
        "{refusal}"
    );
    // The same signed request again is a replay, also after a restart:
    // used signatures are kept in the store, not in one process.
    assert_eq!(post_signed(&g, &owner, sent, SIGNING_SECRET).await.0, 401);
    g.stop();
    g.launch().await;
    assert_eq!(post_signed(&g, &owner, sent, SIGNING_SECRET).await.0, 401);
    // An unconfirmed email maps to nobody.
    let eve = form_body(&click("U_EVE", "approve", &id, &ts));
    assert_eq!(post_signed(&g, &eve, now(), SIGNING_SECRET).await.0, 200);
    slack
        .wait("chat.postEphemeral", |b| b["user"] == "U_EVE")
        .await;
    // A button that is not on gavel's message for this request (crafted,
    // or on another message) decides nothing.
    let forged = form_body(&click("U_BOB", "approve", &id, "1699999999.000001"));
    assert_eq!(post_signed(&g, &forged, now(), SIGNING_SECRET).await.0, 200);
    slack
        .wait("chat.postEphemeral", |b| {
            b["user"] == "U_BOB"
                && b["text"]
                    .as_str()
                    .unwrap()
                    .contains("not on gavel's current message")
        })
        .await;
    assert_eq!(state(&g, &id).await["state"], "pending");
    // bob (mapped explicitly) approves: the message is updated and the
    // thread says so.
    assert_eq!(post_signed(&g, &body, now(), SIGNING_SECRET).await.0, 200);
    let updated = slack
        .wait("chat.update", |b| {
            b["blocks"].to_string().contains("bob@x approved")
        })
        .await;
    // The update and the thread reply are on the message gavel posted.
    let ts = updated["ts"].as_str().unwrap().to_owned();
    slack
        .wait("chat.postMessage", |b| {
            b["thread_ts"] == ts.as_str() && b["text"] == "approved"
        })
        .await;
    let v = state(&g, &id).await;
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["reviews"][0]["reviewer"], "bob@x");
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_asks_for_a_reason_in_a_modal() {
    let slack = FakeSlack::start();
    let mut g = start(&slack).await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE users")
        .await;
    let id = harness::request_id(&v);
    let (posted, _) = posted(&slack, &g, &id).await;
    let ts = posted["_ts"].as_str().unwrap().to_owned();
    // gavel restarts (SIGKILL): the message's buttons still work, because
    // its ts is in the store.
    g.kill();
    g.launch().await;
    // alice (mapped by her confirmed email) presses Deny: a modal opens.
    let body = form_body(&click("U_ALICE", "deny", &id, &ts));
    assert_eq!(post_signed(&g, &body, now(), SIGNING_SECRET).await.0, 200);
    let opened = slack.wait("views.open", |_| true).await;
    assert_eq!(opened["view"]["private_metadata"], id.as_str());
    assert_eq!(opened["trigger_id"], "trigger-1");
    let submit = |reason: &str| {
        json!({
            "type": "view_submission",
            "user": {"id": "U_ALICE"},
            "view": {"callback_id": "gavel_deny", "private_metadata": id,
                     "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}}},
        })
    };
    // No reason: the modal says so, nothing changes.
    let (status, answer) = post_signed(&g, &form_body(&submit("  ")), now(), SIGNING_SECRET).await;
    assert_eq!(status, 200);
    assert!(answer.contains("\"errors\""), "{answer}");
    assert_eq!(state(&g, &id).await["state"], "pending");
    let (status, answer) = post_signed(
        &g,
        &form_body(&submit("not during the freeze")),
        now(),
        SIGNING_SECRET,
    )
    .await;
    assert_eq!(status, 200);
    assert!(answer.contains("clear"), "{answer}");
    let v = state(&g, &id).await;
    assert_eq!(v["state"], "denied", "{v}");
    assert_eq!(v["reviews"][0]["reviewer"], "alice@x");
    assert_eq!(v["reviews"][0]["comment"], "not during the freeze");
    // The message gavel posted before the restart is the one updated.
    slack
        .wait("chat.update", |b| {
            b["blocks"].to_string().contains("denied") && b["ts"] == ts.as_str()
        })
        .await;
}

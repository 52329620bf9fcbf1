//! The Teams channel against a local stand-in for Teams
//! (`tests/teams/fake_teams.py`): a Workflows webhook and a Bot Connector
//! that validate every card against Microsoft's Adaptive Card 1.5 schema,
//! Bot Framework's OpenID metadata and keys, and tokens signed with a JOSE
//! library gavel did not write.

mod harness;

use harness::{ALICE, BOB, FakeServer, Gavel};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const APP_ID: &str = "00000000-1111-2222-3333-444444444444";
const APP_PASSWORD: &str = "bot-app-password-for-tests";
const CONVERSATION: &str = "19:gavel@thread.tacv2";
const TENANT: &str = "tenant-1";

/// `tests/teams/fake_teams.py`: Workflows, Bot Framework and the Bot
/// Connector, validating every card.
struct FakeTeams {
    server: FakeServer,
    http: reqwest::Client,
}

impl FakeTeams {
    fn start() -> FakeTeams {
        FakeTeams {
            server: FakeServer::start("teams/fake_teams.py", &[APP_ID, APP_PASSWORD]),
            http: reqwest::Client::new(),
        }
    }

    fn base(&self) -> String {
        self.server.base()
    }

    fn service_url(&self) -> String {
        format!("{}/connector", self.base())
    }

    fn calls(&self, kind: &str) -> Vec<Value> {
        self.server
            .recorded()
            .into_iter()
            .filter(|c| c["kind"] == kind)
            .collect()
    }

    async fn wait(&self, kind: &str, what: impl Fn(&Value) -> bool) -> Value {
        self.server
            .wait_until(|got| got.iter().any(|c| c["kind"] == kind && what(c)))
            .await
            .into_iter()
            .find(|c| c["kind"] == kind && what(c))
            .unwrap()
    }

    /// A Bot Framework token from the fake's signing service.
    async fn token(&self, spec: Value) -> String {
        let v: Value = self
            .http
            .post(format!("{}/mint", self.base()))
            .json(&spec)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    async fn good_token(&self) -> String {
        self.token(json!({"claims": {"serviceurl": self.service_url()}}))
            .await
    }
}

async fn start(teams: &FakeTeams, channels: &str) -> Gavel {
    Gavel::start_custom_env(
        "60s",
        harness::POLICIES,
        channels,
        &[
            ("TEST_TEAMS_WEBHOOK", &format!("{}/workflow", teams.base())),
            (
                "TEST_TEAMS_BROKEN_WEBHOOK",
                &format!("{}/nowhere", teams.base()),
            ),
            ("TEST_TEAMS_APP_PASSWORD", APP_PASSWORD),
        ],
    )
    .await
}

async fn state(g: &Gavel, id: &str) -> Value {
    g.get(&format!("/api/v1/requests/{id}"), ALICE).await.1
}

fn card_text(card: &Value) -> String {
    card.to_string()
}

fn actions_of(card: &Value, kind: &str) -> Vec<Value> {
    card["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_cards_are_valid_and_a_broken_channel_blocks_nothing() {
    let teams = FakeTeams::start();
    let g = start(
        &teams,
        r#"
[[channels.teams]]
name = "teams-dba"
webhook_url_env = "TEST_TEAMS_WEBHOOK"
routes = ["group:dba"]

[[channels.teams]]
name = "teams-broken"
webhook_url_env = "TEST_TEAMS_BROKEN_WEBHOOK"

[[channels.teams]]
name = "teams-security"
webhook_url_env = "TEST_TEAMS_WEBHOOK"
routes = ["group:security"]
"#,
    )
    .await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE orders")
        .await;
    let id = harness::request_id(&v);
    let posted = teams
        .wait("webhook", |c| card_text(&c["card"]).contains(&id))
        .await;
    assert_eq!(posted["errors"], json!([]), "{posted}");
    let card = &posted["card"];
    assert_eq!(card["version"], "1.5");
    let text = card_text(card);
    for needed in [
        "agent:bot",
        "owner@x",
        "prod-db",
        "sql.ddl",
        "DROP TABLE orders",
        "ddl-needs-dba",
        "0 of 1",
    ] {
        assert!(text.contains(needed), "missing {needed}: {text}");
    }
    // A Workflows card cannot reach gavel's bot: it opens the page.
    assert!(actions_of(card, "Action.Execute").is_empty(), "{card}");
    let open = actions_of(card, "Action.OpenUrl");
    assert!(
        open[0]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/requests/{id}")),
        "{card}"
    );
    // The broken channel was refused (404, not retried) and shows as
    // failed on the request; the routed one was delivered; the one routed
    // to another group got nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let deliveries = loop {
        let view = state(&g, &id).await;
        let d = view["deliveries"].as_array().cloned().unwrap_or_default();
        if d.len() == 2 && d.iter().all(|d| d["status"] != "pending") {
            break d;
        }
        assert!(Instant::now() < deadline, "deliveries: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let of = |name: &str| {
        deliveries
            .iter()
            .find(|d| d["channel"] == name)
            .unwrap_or_else(|| panic!("no {name}: {deliveries:?}"))
            .clone()
    };
    assert_eq!(of("teams-dba/webhook")["status"], "delivered");
    let broken = of("teams-broken/webhook");
    assert_eq!(broken["status"], "failed", "{broken}");
    assert_eq!(broken["attempts"], 1, "{broken}");
    assert_eq!(broken["last_error"], "HTTP 404", "{broken}");
    let metrics = g
        .http
        .get(format!("{}/metrics", g.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gavel_channel_deliveries_total")
                && l.contains("teams-broken/webhook")
                && l.contains("failed")),
        "{metrics}"
    );
    // A decision made elsewhere (the REST API) becomes a new card.
    assert_eq!(g.approve(BOB, &id).await.0, 200);
    let approved = teams
        .wait("webhook", |c| {
            let t = card_text(&c["card"]);
            t.contains(&id) && t.contains("bob@x approved")
        })
        .await;
    assert_eq!(approved["errors"], json!([]), "{approved}");
    assert_eq!(teams.calls("webhook").len(), 2);

    // An agent cannot name a resource that fakes fields (REST refuses it),
    // nor hide text with bidi controls, nor make its card too large for
    // Teams with a huge operation.
    let (status, _) = g
        .call(
            reqwest::Method::POST,
            "/api/v1/actions",
            Some(&g.agent_token),
            Some(json!({"resource": "scratch\nPolicy: all-good", "action": "sql.ddl", "operation": "x"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, v) = g
        .call(
            reqwest::Method::POST,
            "/api/v1/actions",
            Some(&g.agent_token),
            Some(json!({"resource": "scratch", "action": "sql.ddl",
                        "operation": format!("COMMENT ON TABLE t IS '{}'", "é".repeat(30_000)), "intent": "tidy up all-good\u{202e}"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = harness::request_id(&v);
    let posted = teams
        .wait("webhook", |c| card_text(&c["card"]).contains(&id))
        .await;
    assert_eq!(posted["errors"], json!([]), "{posted}");
    let text = card_text(&posted["card"]);
    assert!(text.len() < 24_000, "{} bytes", text.len());
    assert!(text.contains("truncated"));
    // The related history: the agent's earlier request and its outcome.
    assert!(
        text.contains("By this initiator, recently: 1 approved")
            && text.contains("approved sql.ddl on prod-db: DROP TABLE orders"),
        "{text}"
    );
    assert!(
        text.contains("tidy up all-good⟨U+202E⟩") && !text.contains('\u{202e}'),
        "{text}"
    );
}

/// An `adaptiveCard/action` invoke as Teams sends it for a press on the
/// card activity `reply_to`.
fn invoke(
    teams: &FakeTeams,
    user: &str,
    verb: &str,
    request: &str,
    reply_to: &str,
    reason: &str,
) -> Value {
    json!({
        "type": "invoke",
        "name": "adaptiveCard/action",
        "id": "invoke-1",
        "channelId": "msteams",
        "serviceUrl": teams.service_url(),
        "from": {"id": "29:user", "aadObjectId": user, "name": user},
        "recipient": {"id": format!("28:{APP_ID}")},
        "conversation": {"id": format!("{CONVERSATION};messageid={reply_to}"),
                         "conversationType": "channel", "tenantId": TENANT},
        "channelData": {"tenant": {"id": TENANT}},
        "replyToId": reply_to,
        "value": {"action": {"type": "Action.Execute", "verb": verb,
                             "data": {"request_id": request, "reason": reason}},
                  "trigger": "manual"},
    })
}

async fn send(g: &Gavel, token: Option<&str>, activity: &Value) -> (u16, Value) {
    let mut r = g
        .http
        .post(format!("{}/integrations/teams/messages", g.base))
        .json(activity);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn bot_cards_decide_only_with_verified_bot_framework_tokens() {
    let teams = FakeTeams::start();
    let channels = format!(
        r#"
[[channels.teams]]
name = "teams-bot"
routes = ["group:dba"]
[channels.teams.bot]
app_id = "{APP_ID}"
app_password_env = "TEST_TEAMS_APP_PASSWORD"
service_url = "{service}"
conversation_id = "{CONVERSATION}"
tenant_id = "{TENANT}"
openid_metadata = "{base}/metadata"
token_endpoint = "{base}/token"
users = {{ "aad-bob" = "bob@x", "aad-owner" = "owner@x" }}
"#,
        service = teams.service_url(),
        base = teams.base(),
    );
    let g = start(&teams, &channels).await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE users")
        .await;
    let id = harness::request_id(&v);
    let posted = teams
        .wait("post", |c| card_text(&c["card"]).contains(&id))
        .await;
    assert_eq!(posted["errors"], json!([]), "{posted}");
    assert_eq!(posted["conversation"], CONVERSATION);
    let card_id = posted["id"].as_str().unwrap().to_owned();
    let verbs: Vec<Value> = actions_of(&posted["card"], "Action.Execute")
        .iter()
        .map(|a| a["verb"].clone())
        .collect();
    assert_eq!(verbs, vec![json!("approve"), json!("deny")]);
    assert_eq!(
        teams.calls("token"),
        vec![json!({"kind": "token", "ok": true})]
    );
    // gavel records the card before the delivery counts as done.
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&g, &id).await["deliveries"][0]["status"] != "delivered" {
        assert!(Instant::now() < deadline, "bot delivery not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let approve = invoke(&teams, "aad-bob", "approve", &id, &card_id, "");
    // Tokens Bot Framework did not issue for this bot, this channel and
    // this service URL are refused before anything is read.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let service = teams.service_url();
    let refused = [
        ("no token", None),
        (
            "another bot's",
            Some(
                teams
                    .token(json!({"claims": {"serviceurl": service, "aud": "another-app"}}))
                    .await,
            ),
        ),
        (
            "expired",
            Some(
                teams
                    .token(json!({"claims": {"serviceurl": service, "exp": now - 600, "nbf": now - 900, "iat": now - 900}}))
                    .await,
            ),
        ),
        (
            "another issuer",
            Some(
                teams
                    .token(json!({"claims": {"serviceurl": service, "iss": "https://sts.example.com"}}))
                    .await,
            ),
        ),
        (
            "a key endorsed only for webchat",
            Some(
                teams
                    .token(json!({"kid": "bf-webchat", "claims": {"serviceurl": service}}))
                    .await,
            ),
        ),
        (
            "a key endorsed for webchat, on a webchat activity",
            Some(
                teams
                    .token(json!({"kid": "bf-webchat", "claims": {"serviceurl": service}}))
                    .await,
            ),
        ),
        (
            "another service URL",
            Some(
                teams
                    .token(json!({"claims": {"serviceurl": "https://smba.example.com/"}}))
                    .await,
            ),
        ),
        (
            "no service URL",
            Some(teams.token(json!({"claims": {}})).await),
        ),
        (
            "HS256 keyed with the public key",
            Some(
                teams
                    .token(json!({"forge": "hs256-public", "claims": {"serviceurl": service}}))
                    .await,
            ),
        ),
        (
            "alg none",
            Some(
                teams
                    .token(json!({"forge": "none", "claims": {"serviceurl": service}}))
                    .await,
            ),
        ),
        (
            "signed with someone else's key",
            Some(
                teams
                    .token(json!({"forge": "self-signed", "claims": {"serviceurl": service}}))
                    .await,
            ),
        ),
    ];
    let mut webchat = approve.clone();
    webchat["channelId"] = json!("webchat");
    for (what, token) in &refused {
        // Only Teams vouches for `from.aadObjectId`.
        let activity = if what.contains("webchat activity") {
            &webchat
        } else {
            &approve
        };
        let (status, _) = send(&g, token.as_deref(), activity).await;
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(state(&g, &id).await["state"], "pending");

    let token = teams.good_token().await;
    let says = |answer: &Value, what: &str| {
        assert_eq!(
            answer["type"], "application/vnd.microsoft.activity.message",
            "{answer}"
        );
        assert!(
            answer["value"].as_str().unwrap().contains(what),
            "{what}: {answer}"
        );
    };
    // The agent's owner may not approve; neither may an unmapped user.
    let (status, answer) = send(
        &g,
        Some(&token),
        &invoke(&teams, "aad-owner", "approve", &id, &card_id, ""),
    )
    .await;
    assert_eq!(status, 200);
    says(&answer, "owner");
    let (_, answer) = send(
        &g,
        Some(&token),
        &invoke(&teams, "aad-mallory", "approve", &id, &card_id, ""),
    )
    .await;
    says(&answer, "not mapped");
    // A press that is not on gavel's card, or from another tenant.
    let (_, answer) = send(
        &g,
        Some(&token),
        &invoke(&teams, "aad-bob", "approve", &id, "activity-999", ""),
    )
    .await;
    says(&answer, "not gavel's current card");
    let mut elsewhere = approve.clone();
    elsewhere["conversation"]["tenantId"] = json!("tenant-2");
    elsewhere["channelData"]["tenant"]["id"] = json!("tenant-2");
    let (_, answer) = send(&g, Some(&token), &elsewhere).await;
    says(&answer, "not gavel's current card");
    // Deny needs a reason.
    let (_, answer) = send(
        &g,
        Some(&token),
        &invoke(&teams, "aad-bob", "deny", &id, &card_id, "  "),
    )
    .await;
    says(&answer, "Say why");
    assert_eq!(state(&g, &id).await["state"], "pending");

    // bob approves: the answer is the updated card, for everyone the card
    // is updated in place, and its thread says so.
    let (status, answer) = send(&g, Some(&token), &approve).await;
    assert_eq!(status, 200);
    assert_eq!(answer["type"], "application/vnd.microsoft.card.adaptive");
    assert!(
        card_text(&answer["value"]).contains("bob@x approved"),
        "{answer}"
    );
    assert!(actions_of(&answer["value"], "Action.Execute").is_empty());
    let v = state(&g, &id).await;
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(v["reviews"][0]["reviewer"], "bob@x");
    let updated = teams
        .wait("update", |c| {
            c["id"] == card_id.as_str() && card_text(&c["card"]).contains("bob@x approved")
        })
        .await;
    assert_eq!(updated["errors"], json!([]), "{updated}");
    teams
        .wait("reply", |c| {
            c["to"] == card_id.as_str() && c["text"] == "approved"
        })
        .await;
    // The same press again decides nothing.
    let (_, answer) = send(&g, Some(&token), &approve).await;
    says(&answer, "refused");
    // The connector token was fetched once and reused.
    assert_eq!(teams.calls("token").len(), 1);
    // A request whose approvers (group:security) no channel serves is
    // counted, and logged, so the gap in the routes is seen.
    let v = g
        .act(&g.agent_token, "sql.write", "prod-db", "DELETE FROM t")
        .await;
    assert_eq!(harness::verdict(&v), "pending");
    let metrics = g
        .http
        .get(format!("{}/metrics", g.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "gavel_requests_unrouted_total 1"),
        "{metrics}"
    );
    assert!(g.log().contains("no channel routes this request"));
}

//! Signed webhooks, checked by a consumer gavel did not write
//! (`tests/webhook/receiver.py`: Python's hmac), including retries after
//! failures and the delivery status on the request.

mod harness;

use harness::{ALICE, BOB, FakeServer, Gavel};
use serde_json::Value;
use std::time::Duration;

const SECRET: &str = "whsec-test-0123456789";

/// The independent consumer, `tests/webhook/receiver.py`.
struct Receiver(FakeServer);

impl Receiver {
    fn start(secret: &str, fail_first: u32) -> Receiver {
        Receiver(FakeServer::start(
            "webhook/receiver.py",
            &[secret, &fail_first.to_string()],
        ))
    }

    async fn wait_for(&self, what: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.0.wait_until(what).await
    }
}

async fn start(receivers: &[(&Receiver, &str)]) -> Gavel {
    let mut extra = String::new();
    for (r, routes) in receivers {
        extra.push_str(&format!(
            "\n[[channels.webhook]]\nname = \"hook-{}\"\nurl = \"http://127.0.0.1:{}/hook\"\nsecret_env = \"GAVEL_TEST_WEBHOOK_SECRET\"\nroutes = {routes}\n",
            r.0.port, r.0.port
        ));
    }
    Gavel::start_custom_env(
        "60s",
        harness::POLICIES,
        &extra,
        &[("GAVEL_TEST_WEBHOOK_SECRET", SECRET)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_state_change_arrives_signed_and_failures_are_retried() {
    let hook = Receiver::start(SECRET, 2);
    let g = start(&[(&hook, "[]")]).await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE t")
        .await;
    let id = harness::request_id(&v);
    // The first two attempts get 500; the third is accepted.
    let got = hook
        .wait_for(|g| {
            g.iter()
                .any(|e| e["state"] == "pending" && e["attempt"] == 3)
        })
        .await;
    assert!(got.iter().all(|e| e["valid"] == true), "{got:?}");
    assert!(got.iter().all(|e| e["request_id"] == id.as_str()));
    // The consumer logs a delivery before it answers; gavel marks it
    // delivered once it has read the answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let (_, view) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
        if view["deliveries"][0]["status"] != "pending" {
            break view;
        }
        assert!(std::time::Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deliveries = view["deliveries"].as_array().unwrap();
    assert_eq!(deliveries[0]["event"], "request.pending", "{view}");
    assert_eq!(deliveries[0]["status"], "delivered", "{view}");
    assert_eq!(deliveries[0]["attempts"], 3, "{view}");
    // A consumer decides through the REST API with a human's token.
    let (status, _) = g.approve(BOB, &id).await;
    assert_eq!(status, 200);
    let got = hook
        .wait_for(|g| g.iter().any(|e| e["event"] == "request.approved"))
        .await;
    assert!(got.iter().all(|e| e["valid"] == true), "{got:?}");
    // Using the grant is a state change too.
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE t")
        .await;
    assert_eq!(harness::verdict(&v), "allow");
    hook.wait_for(|g| g.iter().any(|e| e["event"] == "request.admitted"))
        .await;
    // So is the agent's report of how it went.
    let (status, _) = g
        .call(
            reqwest::Method::POST,
            "/api/v1/actions/outcome",
            Some(&g.agent_token),
            Some(serde_json::json!({"admission_id": v["admission_id"], "status": "succeeded"})),
        )
        .await;
    assert_eq!(status, 200);
    hook.wait_for(|g| g.iter().any(|e| e["event"] == "request.executed"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_detected_and_routes_pick_the_channels() {
    // This consumer expects another secret: every delivery fails its check.
    let wrong = Receiver::start("not-the-secret", 0);
    // Routed only to requests the security group approves.
    let security = Receiver::start(SECRET, 0);
    let g = start(&[(&wrong, "[]"), (&security, "[\"group:security\"]")]).await;
    let v = g
        .act(
            &g.agent_token,
            "sql.ddl",
            "prod-db",
            "CREATE TABLE x (a int)",
        )
        .await;
    assert_eq!(harness::verdict(&v), "pending");
    let got = wrong.wait_for(|g| !g.is_empty()).await;
    assert_eq!(got[0]["valid"], false);
    // A write on prod needs the security group: routed to both.
    let v = g
        .act(&g.agent_token, "sql.write", "prod-db", "DELETE FROM t")
        .await;
    let write_id = harness::request_id(&v);
    let got = security.wait_for(|g| !g.is_empty()).await;
    assert_eq!(got.len(), 1, "the DDL request is not routed here: {got:?}");
    assert_eq!(got[0]["request_id"], write_id.as_str());
    assert_eq!(got[0]["valid"], true);
}

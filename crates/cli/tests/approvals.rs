//! SPEC §4 end to end: the real binary over HTTP.

mod harness;

use harness::*;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn privileged_action_waits_for_an_eligible_human_and_its_grant_is_single_use() {
    let g = Gavel::start().await;
    let agent = g.agent_token.clone();

    let read = g.act(&agent, "sql.read", "prod-db", "SELECT 1").await;
    assert_eq!(verdict(&read), "allow", "{read}");

    let v = g
        .act(&agent, "sql.ddl", "prod-db", "DROP TABLE customers")
        .await;
    assert_eq!(verdict(&v), "pending", "{v}");
    let id = request_id(&v);
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/requests/{id}")),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("group:dba"), "{v}");

    // The agent itself, its owner (even though in the dba group) and a
    // human outside the approver set are all refused with 403.
    let (s, e) = g.approve(&agent, &id).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only humans"),
        "{e}"
    );
    let (s, e) = g.approve(OWNER, &id).await;
    assert_eq!(s, 403, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("owner"),
        "{e}"
    );
    let (s, e) = g.approve(CAROL, &id).await;
    assert_eq!(s, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("approver set"),
        "{e}"
    );
    let (_, r) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "pending");
    assert_eq!(
        r["reviews"].as_array().unwrap().len(),
        0,
        "refusals change nothing: {r}"
    );

    // A waiter blocked on the request returns the moment alice approves.
    let waiter = {
        let http = g.http.clone();
        let url = format!("{}/api/v1/requests/{id}/wait?timeout=60s", g.base);
        let agent = agent.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let v: serde_json::Value = http
                .get(url)
                .bearer_auth(agent)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "wait returned before any decision");
    let (s, r) = g.approve(ALICE, &id).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "approved");
    let (woke, waited) = waiter.await.unwrap();
    assert_eq!(woke["state"], "approved", "{woke}");
    assert!(
        waited < Duration::from_secs(60),
        "the waiter hit its timeout instead of waking"
    );

    // A second decision on a decided request is a conflict.
    let (s, _) = g.approve(BOB, &id).await;
    assert_eq!(s, 409);

    // Another literal is another action: the grant does not cover it.
    let other = g
        .act(&agent, "sql.ddl", "prod-db", "DROP TABLE customers2")
        .await;
    assert_eq!(verdict(&other), "pending");
    assert_ne!(request_id(&other), id);

    // The identical retry passes once…
    let once = g
        .act(&agent, "sql.ddl", "prod-db", "DROP TABLE customers")
        .await;
    assert_eq!(verdict(&once), "allow", "{once}");
    assert_eq!(request_id(&once), id);
    // The agent acts itself: nothing has run that gavel saw until it
    // reports.
    let (_, r) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "admitted");
    // …and the next identical retry is pending again, on a new request.
    let again = g
        .act(&agent, "sql.ddl", "prod-db", "DROP TABLE customers")
        .await;
    assert_eq!(verdict(&again), "pending", "{again}");
    assert_ne!(request_id(&again), id);

    // A human initiator cannot approve its own request either.
    let own = g.act(ALICE, "sql.ddl", "prod-db", "DROP TABLE mine").await;
    let (s, e) = g.approve(ALICE, &request_id(&own)).await;
    assert_eq!(s, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("initiator"),
        "{e}"
    );
}

#[tokio::test]
async fn one_deny_beats_earlier_approvals_and_reaches_the_waiting_agent() {
    let g = Gavel::start().await;
    let agent = g.agent_token.clone();
    let v = g
        .act(&agent, "sql.dcl", "prod-db", "GRANT ALL ON t TO mallory")
        .await;
    let id = request_id(&v);

    let waiting = g.act_waiting(&agent, "sql.dcl", "prod-db", "GRANT ALL ON t TO mallory");
    g.wait_for_reask(&id).await;
    let (s, r) = g.approve(ALICE, &id).await;
    assert_eq!(s, 200);
    assert_eq!(
        (r["state"].as_str(), r["approvals"].as_u64()),
        (Some("pending"), Some(1)),
        "{r}"
    );
    // The same human approving twice counts once.
    let (s, _) = g.approve(ALICE, &id).await;
    assert_eq!(s, 403);
    let (s, r) = g.deny(BOB, &id, "nobody gets ALL").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "denied");
    let answer = waiting.await.unwrap();
    assert_eq!(verdict(&answer), "deny", "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("nobody gets ALL"),
        "{answer}"
    );
    // Nothing revives it: eligible reviewers get 409, everyone else 403.
    assert_eq!(g.approve(OWNER, &id).await.0, 403);
    assert_eq!(g.approve(CAROL, &id).await.0, 403);
    assert_eq!(g.approve(&agent, &id).await.0, 403);
    assert_eq!(g.approve(ALICE, &id).await.0, 409);
    // A deny needs a reason.
    let fresh = request_id(
        &g.act(&agent, "sql.dcl", "prod-db", "REVOKE ALL ON t FROM bob")
            .await,
    );
    let (s, e) = g
        .call(
            Method::POST,
            &format!("/api/v1/requests/{fresh}/deny"),
            Some(BOB),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
}

#[tokio::test]
async fn long_polled_action_is_allowed_once_approved() {
    let g = Gavel::start().await;
    let agent = g.agent_token.clone();
    let first = g
        .act(&agent, "sql.ddl", "db", "CREATE INDEX i ON t (c)")
        .await;
    let id = request_id(&first);
    let waiting = g.act_waiting(&agent, "sql.ddl", "db", "CREATE INDEX i ON t (c)");
    g.wait_for_reask(&id).await;
    g.approve(BOB, &id).await;
    let answer = waiting.await.unwrap();
    assert_eq!(verdict(&answer), "allow", "{answer}");
    assert_eq!(request_id(&answer), id);
    let next = g
        .act(&agent, "sql.ddl", "db", "CREATE INDEX i ON t (c)")
        .await;
    assert_eq!(
        verdict(&next),
        "pending",
        "the long-poll spent the grant: {next}"
    );
}

#[tokio::test]
async fn unanswered_request_expires() {
    let g = Gavel::start().await;
    let v = g
        .act(
            &g.agent_token,
            "sql.admin",
            "db",
            "ALTER SYSTEM SET fsync = off",
        )
        .await;
    let id = request_id(&v);
    let (s, r) = g
        .get(&format!("/api/v1/requests/{id}/wait?timeout=20s"), ALICE)
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["state"], "expired", "{r}");
    let (s, e) = g.approve(ALICE, &id).await;
    assert_eq!(s, 409, "{e}");
    let (_, list) = g.get("/api/v1/requests?state=expired", ALICE).await;
    assert!(
        list["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
}

#[tokio::test]
async fn restart_keeps_pending_requests_their_timers_and_grants() {
    let mut g = Gavel::start().await;
    let agent = g.agent_token.clone();
    let pending = request_id(&g.act(&agent, "sql.ddl", "db", "DROP TABLE a").await);
    let timed = request_id(
        &g.act(&agent, "sql.admin", "db", "ALTER SYSTEM SET x = 1")
            .await,
    );
    let granted = request_id(&g.act(&agent, "sql.ddl", "db", "DROP TABLE b").await);
    assert_eq!(g.approve(ALICE, &granted).await.0, 200);
    let partial = request_id(
        &g.act(&agent, "sql.dcl", "db", "GRANT SELECT ON t TO x")
            .await,
    );
    assert_eq!(g.approve(ALICE, &partial).await.0, 200);

    g.kill();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    g.launch().await;

    // The 2 s timer ran out while the gateway was down.
    let (_, t) = g.get(&format!("/api/v1/requests/{timed}"), ALICE).await;
    assert_eq!(t["state"], "expired", "{t}");
    // The pending request is still pending and can be approved.
    let (_, p) = g.get(&format!("/api/v1/requests/{pending}"), ALICE).await;
    assert_eq!(p["state"], "pending", "{p}");
    assert_eq!(g.approve(BOB, &pending).await.1["state"], "approved");
    // The grant made before the restart is still good, once.
    let v = g.act(&agent, "sql.ddl", "db", "DROP TABLE b").await;
    assert_eq!(
        (verdict(&v), request_id(&v)),
        ("allow", granted.clone()),
        "{v}"
    );
    // The partial quorum survived: one more approval completes it.
    let (_, q) = g.approve(BOB, &partial).await;
    assert_eq!(
        (q["state"].as_str(), q["approvals"].as_u64()),
        (Some("approved"), Some(2)),
        "{q}"
    );
}

#[tokio::test]
async fn agents_see_only_their_own_requests() {
    let g = Gavel::start().await;
    let other = g.create_agent("other-bot", "carol@x", &["agents"]);
    let mine = request_id(
        &g.act(&g.agent_token, "sql.ddl", "db", "DROP TABLE mine")
            .await,
    );
    let theirs = request_id(&g.act(&other, "sql.ddl", "db", "DROP TABLE theirs").await);
    let (s, _) = g
        .get(&format!("/api/v1/requests/{theirs}"), &g.agent_token)
        .await;
    assert_eq!(s, 404);
    let (_, list) = g.get("/api/v1/requests", &g.agent_token).await;
    let ids: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    let (s, _) = g
        .get("/api/v1/requests?initiator=agent:other-bot", &g.agent_token)
        .await;
    assert_eq!(s, 403);
    let (_, all) = g.get("/api/v1/requests", CAROL).await;
    assert_eq!(all["requests"].as_array().unwrap().len(), 2);
    // Reviewers get the initiator's history with the request.
    let second = request_id(
        &g.act(&g.agent_token, "sql.ddl", "db", "DROP TABLE mine2")
            .await,
    );
    let (_, r) = g.get(&format!("/api/v1/requests/{second}"), ALICE).await;
    assert_eq!(
        r["history"]["initiator_recent"][0]["id"],
        mine.as_str(),
        "{r}"
    );
    assert_eq!(
        r["history"]["resource_recent"].as_array().unwrap().len(),
        2,
        "{r}"
    );
}

#[tokio::test]
async fn revoked_agents_are_refused_at_once() {
    let g = Gavel::start().await;
    let (s, _) = g.get("/api/v1/whoami", &g.agent_token).await;
    assert_eq!(s, 200);
    let out = g.cli(&["agent", "revoke", "bot"], None);
    assert!(out.status.success());
    let (s, e) = g.get("/api/v1/whoami", &g.agent_token).await;
    assert_eq!(s, 401);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("revoked"),
        "{e}"
    );
}

#[tokio::test]
async fn long_polls_are_capped_at_the_configured_hold() {
    let g = Gavel::start_with_hold("1s").await;
    // Without the cap this call would block for 60 s and hit the client's
    // 20 s timeout.
    let resp = g
        .http
        .post(format!("{}/api/v1/actions?wait=60s", g.base))
        .bearer_auth(&g.agent_token)
        .timeout(Duration::from_secs(20))
        .json(&json!({"resource": "db", "action": "sql.ddl", "operation": "DROP TABLE held"}))
        .send()
        .await
        .expect("the hold cap ends the long-poll");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(verdict(&v), "pending", "{v}");
}

#[tokio::test]
async fn outcomes_are_recorded_once_by_the_initiator_and_a_failed_approved_action_marks_its_request()
 {
    let g = Gavel::start().await;
    let agent = g.agent_token.clone();
    let id = request_id(
        &g.act(&agent, "sql.ddl", "db", "CREATE INDEX big ON t (c)")
            .await,
    );
    g.approve(ALICE, &id).await;
    let allowed = g
        .act(&agent, "sql.ddl", "db", "CREATE INDEX big ON t (c)")
        .await;
    assert_eq!(verdict(&allowed), "allow");
    let admission = allowed["admission_id"]
        .as_str()
        .expect("an allow carries the id its outcome is reported under")
        .to_owned();
    let report = |admission: &str, status: &str| json!({"admission_id": admission, "status": status, "detail": "disk full"});
    // Another principal cannot report it, nor learn that it exists.
    for status in ["failed", "succeeded"] {
        let (s, e) = g
            .call(
                Method::POST,
                "/api/v1/actions/outcome",
                Some(BOB),
                Some(report(&admission, status)),
            )
            .await;
        assert_eq!(s, 404, "another principal cannot report the outcome: {e}");
    }
    let (s, e) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&agent),
            Some(report(&admission, "exploded")),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    // The old shape (naming the request instead of the admission) is refused.
    let (s, e) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&agent),
            Some(json!({"resource": "db", "action": "sql.ddl", "operation": "CREATE INDEX big ON t (c)",
                        "request_id": id, "status": "failed", "detail": "x"})),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&agent),
            Some(report(&admission, "failed")),
        )
        .await;
    assert_eq!(s, 200);
    let (_, r) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "failed", "{r}");
    // Once only: the agent cannot relabel it.
    let (s, e) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&agent),
            Some(report(&admission, "succeeded")),
        )
        .await;
    assert_eq!(s, 409, "a second outcome is refused: {e}");
    let (_, page) = g
        .get(&format!("/api/v1/audit?request_id={id}"), ALICE)
        .await;
    let events: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record"]["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        vec!["request_created", "approved", "grant_used", "failed"],
        "{page}"
    );
    // An action policy alone allowed takes one outcome too.
    let read = g.act(&agent, "sql.read", "db", "SELECT 1").await;
    assert_eq!(verdict(&read), "allow", "{read}");
    let admission = read["admission_id"].as_str().unwrap().to_owned();
    let (s, _) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&agent),
            Some(report(&admission, "succeeded")),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&agent),
            Some(report(&admission, "failed")),
        )
        .await;
    assert_eq!(s, 409);
    let (_, page) = g.get("/api/v1/audit?event=outcome", ALICE).await;
    assert_eq!(
        page["records"][0]["record"]["outcome"],
        "succeeded: disk full"
    );
}

#[tokio::test]
async fn rest_actions_are_judged_as_a_server_reads_them() {
    let g = Gavel::start_custom(
        "1s",
        r#"
@id("tickets") permit(principal, action == Action::"http.read", resource == Resource::"tickets");
@id("no-admin") forbid(principal, action, resource) when { context has path && context.path like "/admin/*" };
"#,
        "",
    )
    .await;
    let agent = g.agent_token.clone();
    let ask = |operation: &str, details: serde_json::Value| json!({"resource": "tickets", "action": "http.read", "operation": operation, "details": details});
    // The path policy judges is the one a server would act on.
    for dressed in [
        "GET /tickets/../admin/users",
        "GET /%61dmin/users",
        "get /admin/./users",
    ] {
        let (s, v) = g
            .call(
                Method::POST,
                "/api/v1/actions",
                Some(&agent),
                Some(ask(dressed, json!({}))),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(verdict(&v), "deny", "{dressed}: {v}");
    }
    // Details cannot claim another path than the operation's, and what a
    // server could read two ways is refused.
    for (operation, details) in [
        ("GET /admin/users", json!({"path": "/tickets/1"})),
        ("GET //admin/users", json!({})),
        ("GET /tickets/%2e%2e%2fadmin", json!({})),
        ("GET tickets", json!({})),
        ("GET /public/..;/admin/users", json!({})),
        ("GET /public/%2E%2E%3B/admin/users", json!({})),
    ] {
        let (s, v) = g
            .call(
                Method::POST,
                "/api/v1/actions",
                Some(&agent),
                Some(ask(operation, details)),
            )
            .await;
        assert_eq!(s, 400, "{operation}: {v}");
    }
    let (s, v) = g
        .call(
            Method::POST,
            "/api/v1/actions",
            Some(&agent),
            Some(ask("GET /tickets/1", json!({}))),
        )
        .await;
    assert_eq!((s, verdict(&v)), (200, "allow"), "{v}");
    // The method says what a request does, whatever class the agent names.
    let (s, v) = g
        .call(
            Method::POST,
            "/api/v1/actions",
            Some(&agent),
            Some(ask("DELETE /tickets/1", json!({}))),
        )
        .await;
    assert_eq!((s, verdict(&v)), (200, "deny"), "{v}");
    assert!(v["reason"].as_str().unwrap().contains("http.write"), "{v}");
    // SQL is judged by what it does, and the tables it names are added to
    // those the agent listed.
    let v = g
        .act(&agent, "sql.read", "prod-db", "DELETE FROM orders")
        .await;
    assert!(
        v["reason"].as_str().unwrap().contains("sql.write"),
        "a DELETE asked as a read is a write: {v}"
    );
    let v = g
        .act(&agent, "sql.read", "prod-db", "SELECT 1; DROP TABLE orders")
        .await;
    assert!(
        v["reason"].as_str().unwrap().contains("sql.ddl"),
        "judged by its most privileged statement: {v}"
    );
    let v = g
        .act(&agent, "sql.ddl", "prod-db", "drop every table")
        .await;
    assert!(
        v["reason"].as_str().unwrap().contains("sql.unknown"),
        "what is not SQL is sql.unknown: {v}"
    );
    // A database's actions are SQL: another class is refused, not judged
    // by rules written for something else.
    let (s, v) = g
        .call(
            Method::POST,
            "/api/v1/actions",
            Some(&agent),
            Some(json!({"resource": "prod-db", "action": "mcp.read", "operation": "DROP TABLE orders"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // Resource names: a configured one in another case is that resource;
    // an unconfigured one may not hide behind spaces, controls or
    // look-alike letters.
    let v = g.act(&agent, "sql.read", "PROD-DB", "SELECT 1").await;
    assert!(
        v["reason"].as_str().unwrap().contains("on prod-db"),
        "judged as the configured prod-db: {v}"
    );
    for name in [
        "payroll ",
        " payroll",
        "payroll\u{200b}",
        "payro\u{217c}l",
        "pay roll",
    ] {
        let (s, v) = g
            .call(
                Method::POST,
                "/api/v1/actions",
                Some(&agent),
                Some(json!({"resource": name, "action": "http.read", "operation": "GET /x"})),
            )
            .await;
        assert_eq!(s, 400, "{name:?}: {v}");
    }
}

//! The binary's operational surface: CLI, config errors, policy reload,
//! health, metrics, OpenAPI, bad input, and a client gavel did not write.

mod harness;

use harness::*;
use reqwest::Method;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn agent_text_is_inert_in_the_terminal() {
    let g = Gavel::start().await;
    // A title change, a line erase and a cursor move up, a right-to-left
    // override and a zero-width space: what a hostile agent would use to
    // make a reviewer's terminal show something else.
    let hostile =
        "DROP TABLE t /*\u{1b}]0;approved\u{7}\u{1b}[2K\u{1b}[1A\u{202E}elbat_eslaf\u{200B}*/";
    let v = g.act(&g.agent_token, "sql.ddl", "prod-db", hostile).await;
    let id = request_id(&v);
    for args in [
        vec!["show", id.as_str()],
        vec!["requests", "--state", "pending"],
    ] {
        let out = g.cli(&args, Some(ALICE));
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202E}' || c == '\u{200B}'),
            "{args:?} passed hidden characters to the terminal: {text:?}"
        );
        assert!(
            text.contains("DROP TABLE t /*⟨U+001B⟩]0;approved⟨U+0007⟩"),
            "{text}"
        );
        if args[0] == "show" {
            assert!(text.contains("⟨U+202E⟩elbat_eslaf⟨U+200B⟩"), "{text}");
        }
    }
}

#[tokio::test]
async fn reviewers_work_from_the_cli() {
    let g = Gavel::start().await;
    let id = request_id(
        &g.act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE t")
            .await,
    );

    let out = g.cli(&["requests", "--state", "pending"], Some(ALICE));
    assert!(out.status.success(), "{}", stderr(&out));
    let short = &id[id.len() - 8..];
    assert!(
        stdout(&out).contains(short) && stdout(&out).contains("DROP TABLE t"),
        "{}",
        stdout(&out)
    );

    let out = g.cli(&["show", &id], Some(ALICE));
    assert!(out.status.success());
    let text = stdout(&out);
    for needle in [
        "owner owner@x",
        "prod-db",
        "sql.ddl",
        "intent     test",
        "group:dba",
        "ddl-needs-dba",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    // Refusals exit 3 and say why.
    let out = g.cli(&["approve", &id], Some(OWNER));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owner of the initiating agent"),
        "{}",
        stderr(&out)
    );
    let out = g.cli(&["approve", &id], Some("wrong-token"));
    assert_eq!(out.status.code(), Some(3));
    let out = g.cli(&["approve", &id], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no GAVEL_TOKEN is a usage error"
    );
    let out = g.cli(&["show", "no-such-id"], Some(ALICE));
    assert_eq!(out.status.code(), Some(4));

    let out = g.cli(
        &["approve", &id, "--comment", "reviewed the migration"],
        Some(ALICE),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("it is approved"), "{}", stdout(&out));

    let other = request_id(
        &g.act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE u")
            .await,
    );
    let out = g.cli(
        &["deny", &other, "--reason", "not during the freeze"],
        Some(BOB),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = g.cli(&["show", &other, "--json"], Some(ALICE));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reviews"][0]["comment"], "not during the freeze");

    let out = g.cli(&["whoami"], Some(&g.agent_token));
    assert!(
        stdout(&out).contains("agent bot (owner owner@x"),
        "{}",
        stdout(&out)
    );

    let out = g.cli(&["agent", "list"], None);
    assert!(
        stdout(&out).contains("bot") && stdout(&out).contains("active"),
        "{}",
        stdout(&out)
    );
    let out = g.cli(&["agent", "create", "bot", "--owner", "x@x"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "names are never reused: {}",
        stderr(&out)
    );
}

#[test]
fn agent_tokens_are_stored_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["agent", "create", "bot", "--owner", "o@x", "--group", "etl"])
        .env_remove("GAVEL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("gvl_agent_"), "{token}");
    for entry in std::fs::read_dir(dir.path().join("gavel-data")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&token), "plaintext token on disk");
    }
}

#[test]
fn bad_configuration_fails_at_start_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[approvals]\nhold = \"a while\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml:2")
            && err.contains("approvals.hold")
            && err.contains("invalid duration"),
        "{err}"
    );

    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown field `lisen`"),
        "{}",
        stderr(&out)
    );

    // A broken policy set refuses to start, naming file and line.
    std::fs::write(&file, "data_dir = \"d\"\n[policy]\ndir = \"p\"\n").unwrap();
    std::fs::create_dir(dir.path().join("p")).unwrap();
    std::fs::write(dir.path().join("p/x.cedar"), "permit(principal, action, resource);\nforbid(principal, action == Action::\"sql.read\", resource) when { context.nope };\n").unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("x.cedar:2:"), "{}", stderr(&out));
}

#[test]
fn policy_validate_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("main.cedar"), POLICIES).unwrap();
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        "[[resources.api]]\nname = \"prod-db\"\ntags = { env = \"prod\" }\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };

    let out = run(&["policy", "validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("6 policies in 1 files are valid"),
        "{}",
        stdout(&out)
    );

    let out = run(&[
        "policy",
        "explain",
        "--principal",
        "agent:bot",
        "--owner",
        "o@x",
        "--action",
        "sql.write",
        "--resource",
        "prod-db",
        "--context",
        r#"{"operation": "DELETE FROM t", "tables": ["t"]}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("NEEDS APPROVAL by group:security (quorum 1"),
        "{text}"
    );
    assert!(
        text.contains("prod-writes-need-security") && text.contains("main.cedar:"),
        "{text}"
    );

    let out = run(&[
        "policy",
        "explain",
        "--principal",
        "human:h@x",
        "--action",
        "sql.unknown",
        "--resource",
        "db",
    ]);
    assert!(
        stdout(&out).contains("decision: DENY") && stdout(&out).contains("no-unknown-sql"),
        "{}",
        stdout(&out)
    );

    let out = run(&[
        "policy",
        "explain",
        "--principal",
        "agent:bot",
        "--owner",
        "o@x",
        "--action",
        "sql.write",
        "--resource",
        "dev-db",
    ]);
    assert!(stdout(&out).contains("default deny"), "{}", stdout(&out));

    std::fs::write(
        pdir.join("broken.cedar"),
        "permit(principal, action == Action::\"sql.nope\", resource);\n",
    )
    .unwrap();
    let out = run(&["policy", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("broken.cedar:1:"), "{}", stderr(&out));
}

#[tokio::test]
async fn policies_hot_reload_and_a_broken_file_keeps_the_last_good_set() {
    let g = Gavel::start().await;
    let agent = g.agent_token.clone();
    assert_eq!(
        verdict(&g.act(&agent, "sql.read", "db", "SELECT 1").await),
        "allow"
    );

    g.write_policy("freeze.cedar", "@id(\"read-freeze\") forbid(principal, action == Action::\"sql.read\", resource == Resource::\"db\");\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = g.act(&agent, "sql.read", "db", "SELECT 1").await;
        if verdict(&v) == "deny" {
            assert_eq!(v["policies"], json!(["read-freeze"]), "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    g.write_policy(
        "freeze.cedar",
        "forbid(principal, action == Action::\"sql.read\" resource);\n",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, r) = g.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(s, 200);
        if r["status"] == "degraded" {
            let err = r["policy"]["reload_error"].as_str().unwrap();
            assert!(err.contains("freeze.cedar:1:"), "{err}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never showed the reload error: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last good set (with the freeze) is still in force.
    assert_eq!(
        verdict(&g.act(&agent, "sql.read", "db", "SELECT 1").await),
        "deny"
    );
    assert!(g.log().contains("policy reload failed"), "{}", g.log());

    std::fs::remove_file(g.policy_dir().join("freeze.cedar")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while verdict(&g.act(&agent, "sql.read", "db", "SELECT 1").await) != "allow" {
        assert!(
            Instant::now() < deadline,
            "removing the file never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, r) = g.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r["status"], "ready", "{r}");
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let g = Gavel::start().await;
    let agent = g.agent_token.clone();
    let cases = [
        (
            Some(agent.as_str()),
            r#"{"resource": "db", "action": "sql.read""#,
            400,
            "invalid JSON",
        ),
        (
            Some(agent.as_str()),
            r#"{"resource": "db", "action": "sql.everything", "operation": "x"}"#,
            400,
            "unknown action class",
        ),
        (
            Some(agent.as_str()),
            r#"{"resource": "db", "action": "sql.read", "operation": "x", "extra": 1}"#,
            400,
            "unknown field",
        ),
        (
            Some(agent.as_str()),
            r#"{"resource": "db", "action": "sql.read", "operation": ""}"#,
            400,
            "operation",
        ),
        (
            Some(agent.as_str()),
            r#"{"resource": "db", "action": "sql.read", "operation": "x", "details": {"tables": "t"}}"#,
            400,
            "tables",
        ),
        (
            Some(agent.as_str()),
            r#"{"resource": "db", "action": "http.read", "operation": "GET"}"#,
            400,
            "METHOD /path",
        ),
        (
            Some("not-a-token"),
            r#"{"resource": "db", "action": "sql.read", "operation": "x"}"#,
            401,
            "invalid token",
        ),
        (
            None,
            r#"{"resource": "db", "action": "sql.read", "operation": "x"}"#,
            401,
            "Bearer",
        ),
    ];
    for (token, body, status, needle) in cases {
        let mut req = g
            .http
            .post(format!("{}/api/v1/actions", g.base))
            .body(body)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let v: serde_json::Value = resp.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {v}");
        assert!(v["error"]["code"].is_string());
    }
    let (s, v) = g.get("/api/v1/requests?state=limbo", ALICE).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = g.get("/api/v1/requests?limit=many", ALICE).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (s, v) = g
        .call(Method::DELETE, "/api/v1/requests", Some(ALICE), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{v}"
    );
    let (s, v) = g.get("/api/v1/nope", ALICE).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    // Nothing above reached the gate as an action.
    let (_, list) = g.get("/api/v1/requests", ALICE).await;
    assert_eq!(list["requests"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn metrics_and_openapi() {
    let g = Gavel::start().await;
    g.act(&g.agent_token, "sql.read", "db", "SELECT 1").await;
    g.act(&g.agent_token, "sql.unknown", "db", "???").await;
    g.act(&g.agent_token, "sql.ddl", "db", "DROP TABLE t").await;
    let text = g
        .http
        .get(format!("{}/metrics", g.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "gavel_decisions_total{verdict=\"allow\"} 1",
        "gavel_decisions_total{verdict=\"deny\"} 1",
        "gavel_decisions_total{verdict=\"pending\"} 1",
        "gavel_gate_check_seconds_bucket",
        "gavel_requests{state=\"pending\"} 1",
        "gavel_requests{state=\"approved\"} 0",
        "gavel_audit_records 3",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let (s, doc) = g
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(s, 200);
    for path in [
        "/api/v1/actions",
        "/api/v1/requests",
        "/api/v1/requests/{id}",
        "/api/v1/requests/{id}/approve",
        "/api/v1/requests/{id}/deny",
        "/api/v1/requests/{id}/wait",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"]["ActionVerdict"].is_object());
}

/// curl, a client gavel did not write, drives the whole flow.
#[tokio::test]
async fn curl_drives_check_approve_and_retry() {
    let g = Gavel::start().await;
    let curl = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args)
            .output()
            .expect("curl is installed");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
    };
    let body = r#"{"resource":"prod-db","action":"sql.ddl","operation":"ALTER TABLE t ADD COLUMN c int","intent":"add column for feature X"}"#;
    let agent_auth = format!("Authorization: Bearer {}", g.agent_token);
    let url = format!("{}/api/v1/actions", g.base);
    let v = curl(&[
        "-H",
        &agent_auth,
        "-H",
        "content-type: application/json",
        "-d",
        body,
        &url,
    ]);
    assert_eq!(verdict(&v), "pending", "{v}");
    let id = request_id(&v);
    let approve_url = format!("{}/api/v1/requests/{id}/approve", g.base);
    let r = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {ALICE}"),
        &approve_url,
    ]);
    assert_eq!(r["state"], "approved");
    assert_eq!(r["intent"], "add column for feature X");
    let v = curl(&[
        "-H",
        &agent_auth,
        "-H",
        "content-type: application/json",
        "-d",
        body,
        &url,
    ]);
    assert_eq!(verdict(&v), "allow", "{v}");
}

#[test]
fn shipped_examples_are_valid() {
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let out = Command::new(BIN)
        .args(["policy", "validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(BIN)
        .args([
            "policy",
            "explain",
            "--principal",
            "agent:bot",
            "--owner",
            "o@x",
            "--action",
            "sql.ddl",
            "--resource",
            "prod-db",
            "--context",
            r#"{"operation": "DROP TABLE t"}"#,
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("NEEDS APPROVAL by group:dba (quorum 2, timeout 30m)"),
        "{}",
        stdout(&out)
    );
}

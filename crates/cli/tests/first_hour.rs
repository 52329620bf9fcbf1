//! What a newcomer meets in the first hour: commands that fail loudly and
//! say what to do, short ids, output that reads well and survives pipes,
//! reviewers who sign in on the web with a token, and configuration
//! changes that take effect or say they need a restart.

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

/// `gavel ARGS` in `dir` with nothing from the environment but `env`.
fn gavel_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("GAVEL_CONFIG")
        .env_remove("GAVEL_SERVER")
        .env_remove("GAVEL_TOKEN")
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn commands_that_read_state_never_create_it() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["audit", "verify"],
        vec!["audit", "export", "--format", "jsonl"],
        vec!["audit", "checkpoint"],
        vec!["audit", "key"],
        vec!["agent", "list"],
        vec!["agent", "revoke", "nobody"],
    ] {
        let out = gavel_in(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains("gavel-data") && (e.contains("--config") || e.contains("gavel serve")),
            "{args:?} names what is missing and what to do: {e}"
        );
        assert!(
            !dir.path().join("gavel-data").exists(),
            "{args:?} created the state it was asked to read"
        );
    }
}

#[test]
fn policy_validate_refuses_a_missing_or_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = gavel_in(dir.path(), &["policy", "validate", "--dir", "nope"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope is not a directory"));
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = gavel_in(dir.path(), &["policy", "validate", "--dir", "empty"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no *.cedar files"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn quickstart_writes_a_working_setup_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = gavel_in(dir.path(), &["quickstart"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exports = stdout(&out);
    assert_eq!(exports.lines().count(), 3, "{exports}");
    assert!(exports.contains("export GAVEL_TOKEN=gvl_human_"));
    assert!(exports.contains("export AGENT_TOKEN=gvl_agent_"));
    assert!(stderr(&out).contains("Next:"), "{}", stderr(&out));
    let config = std::fs::read_to_string(dir.path().join("gavel-quickstart/gavel.toml")).unwrap();
    assert!(!config.contains("gvl_"), "no token in the config");
    let out = gavel_in(
        dir.path(),
        &[
            "policy",
            "validate",
            "--config",
            "gavel-quickstart/gavel.toml",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again = gavel_in(dir.path(), &["quickstart"], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test]
async fn client_errors_name_the_server_the_token_and_the_next_step() {
    let g = Gavel::start().await;
    let out = g.cli(&["requests"], Some("gvl_human_not-a-real-token"));
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    assert!(
        e.contains(&g.base) && e.contains("GAVEL_TOKEN") && e.contains("gavel login"),
        "{e}"
    );
    let out = g.cli(&["requests"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("set GAVEL_TOKEN"), "{}", stderr(&out));
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["requests", "--server", &dead])
        .env("GAVEL_TOKEN", ALICE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains(&dead) && e.contains("gavel serve"), "{e}");
    // --config names the server too (no GAVEL_SERVER).
    let out = Command::new(BIN)
        .args(["whoami", "--config"])
        .arg(g.config_path())
        .env_remove("GAVEL_SERVER")
        .env("GAVEL_TOKEN", ALICE)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("alice@x"));
}

#[tokio::test]
async fn short_ids_name_requests_everywhere() {
    let g = Gavel::start().await;
    let first = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE a")
        .await;
    let second = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE b")
        .await;
    let (id1, id2) = (request_id(&first), request_id(&second));
    let short1 = first["short_id"].as_str().unwrap().to_owned();
    assert_eq!(short1.len(), 8);
    assert!(id1.ends_with(&short1));
    assert!(
        first["review_with"]
            .as_str()
            .unwrap()
            .contains(&format!("gavel approve {short1}"))
    );
    // The short id, a prefix of it, and the full id all work.
    for given in [short1.as_str(), &short1[..5], id1.as_str()] {
        let out = g.cli(&["show", given], Some(ALICE));
        assert!(out.status.success(), "{given}: {}", stderr(&out));
        assert!(stdout(&out).contains(&id1), "{given}");
    }
    // A prefix two requests share is refused, with the candidates.
    let common: usize = id1
        .chars()
        .zip(id2.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(common >= 4, "time-ordered ids share a prefix: {id1} {id2}");
    let out = g.cli(&["show", &id1[..common]], Some(ALICE));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("more than one request")
            && e.contains(&short1)
            && e.contains(second["short_id"].as_str().unwrap()),
        "{e}"
    );
    // Too short to mean anything.
    let (s, v) = g
        .get(&format!("/api/v1/requests/{}", &short1[..3]), ALICE)
        .await;
    assert_eq!(s, 404, "{v}");
    // Approving by short id; `requests -q` prints short ids.
    let out = g.cli(&["approve", &short1], Some(ALICE));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("approved request {short1}")));
    let out = g.cli(&["requests", "-q"], Some(ALICE));
    let text = stdout(&out);
    let ids: Vec<&str> = text.lines().collect();
    assert!(
        ids.contains(&short1.as_str()) && ids.iter().all(|i| i.len() == 8),
        "{ids:?}"
    );
}

#[tokio::test]
async fn requests_lists_what_needs_me_with_ages_and_progress() {
    let g = Gavel::start().await;
    g.act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE a")
        .await;
    g.act(&g.agent_token, "sql.write", "prod-db", "DELETE FROM t")
        .await;
    // alice is in dba (the DROP), not security (the DELETE).
    let out = g.cli(&["requests", "--mine"], Some(ALICE));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("AGE") && lines[0].contains("APPROVALS")
    );
    assert!(
        lines[1].contains("DROP TABLE a") && lines[1].contains("0/1"),
        "{text}"
    );
    // Columns line up: every row starts its STATE where the header does.
    let at = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][at..at + 7], "pending");
    assert!(!text.contains('\u{1b}'), "no colour into a pipe");
    // The owner of the agent is never asked.
    let out = g.cli(&["requests", "--mine"], Some(OWNER));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(stderr(&out).contains("no pending requests need your review"));
    // A bare agent name filters as agent:NAME.
    let out = g.cli(&["requests", "--initiator", "bot", "-q"], Some(ALICE));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
}

#[tokio::test]
async fn wait_exits_with_what_happened() {
    let g = Gavel::start().await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE w")
        .await;
    let id = v["short_id"].as_str().unwrap().to_owned();
    let out = g.cli(&["wait", &id, "--timeout", "1s"], Some(ALICE));
    assert_eq!(
        out.status.code(),
        Some(6),
        "still pending: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("still pending"));
    g.approve(ALICE, &request_id(&v)).await;
    let out = g.cli(&["wait", &id, "--timeout", "1s"], Some(ALICE));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE x")
        .await;
    g.deny(ALICE, &request_id(&v), "no").await;
    let out = g.cli(&["wait", v["short_id"].as_str().unwrap()], Some(ALICE));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[tokio::test]
async fn every_printing_command_ends_quietly_on_a_closed_pipe() {
    let g = Gavel::start().await;
    for i in 0..30 {
        g.act(
            &g.agent_token,
            "sql.ddl",
            "prod-db",
            &format!("DROP TABLE p{i}"),
        )
        .await;
    }
    let id = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE last")
        .await["short_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for args in [
        "requests",
        "requests --json",
        &format!("show {id}"),
        &format!("show {id} --json"),
        "whoami",
        "agent list",
        "agent list --json",
        "audit export --format jsonl",
        "audit export --format ocsf",
        "policy schema",
        "policy validate",
        "token generate",
    ] {
        // The reader exits at once: gavel's writes meet a closed pipe.
        let script = format!("'{BIN}' {args} | true; echo \"status=${{PIPESTATUS[0]}}\"");
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(&script)
            .env("GAVEL_CONFIG", g.config_path())
            .env("GAVEL_SERVER", &g.base)
            .env("GAVEL_TOKEN", ALICE);
        let out = cmd.output().unwrap();
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(o.contains("status=0"), "{args}: {o} {e}");
        assert!(
            !e.contains("panicked") && !e.contains("Broken pipe"),
            "{args}: {e}"
        );
    }
}

#[tokio::test]
async fn reviewers_sign_in_on_the_web_with_their_token() {
    let g = Gavel::start().await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE web")
        .await;
    let id = request_id(&v);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = |r: &reqwest::Response, name: &str| -> Option<String> {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
    };
    // The link a reviewer receives leads to sign-in, and back.
    let r = browser
        .get(format!("{}/requests/{id}", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let login = r.headers()["location"].to_str().unwrap().to_owned();
    let page = browser
        .get(format!("{}{login}", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let form_cookie = cookie(&page, "gavel_login").expect("the form's cookie");
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"token\"") && html.contains("type=\"password\""));
    let key = html
        .split("name=\"form_key\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let post = |token: &str, with_cookie: bool| {
        let mut req = browser.post(format!("{}/login", g.base)).form(&[
            ("token", token),
            ("next", &format!("/requests/{id}")),
            ("form_key", &key),
        ]);
        if with_cookie {
            req = req.header("cookie", &form_cookie);
        }
        req.send()
    };
    // An agent's token, a wrong one, and a form posted without the cookie
    // of the page it came from are refused.
    let r = post(&g.agent_token, true).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("Agents never review"));
    let r = post("gvl_human_wrong", true).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(ALICE, false).await.unwrap();
    assert_eq!(r.status(), 403, "a form posted without its cookie");
    assert!(cookie(&r, "gavel_session").is_none());
    // The reviewer's token signs in and lands on the request.
    let r = post(ALICE, true).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], format!("/requests/{id}").as_str());
    let session = cookie(&r, "gavel_session").expect("a session");
    let page = browser
        .get(format!("{}/requests/{id}", g.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("DROP TABLE web") && html.contains("Signed in as alice@x"));
    assert!(html.contains(v["short_id"].as_str().unwrap()));
    // The page says only a state name back from its own query: a link
    // cannot make the trusted page say something else.
    for (done, shown) in [("approved", true), ("call%20ops%20now", false)] {
        let page = browser
            .get(format!("{}/requests/{id}?done={done}", g.base))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(page.contains("Your decision was recorded"), shown, "{done}");
    }
    // The token never rides in a URL.
    assert!(!login.contains("token"));
    // A cookie planted by another site on this host (same-site, another
    // port) cannot be paired with a key of the planter's choosing: the
    // key is a MAC of the cookie, and an empty pair is no pair.
    for (planted, key) in [("gavel_login=KNOWN", "KNOWN"), ("gavel_login=", "")] {
        let r = browser
            .post(format!("{}/login", g.base))
            .header("cookie", planted)
            .form(&[("token", ALICE), ("next", "/requests"), ("form_key", key)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{planted}");
        assert!(cookie(&r, "gavel_session").is_none(), "{planted}");
    }
}

/// A web session is the reviewer as the configuration says now: one
/// removed from `[[identity.humans]]` can no longer decide through a
/// browser that signed in before.
#[tokio::test]
async fn a_reviewer_removed_from_the_config_loses_their_web_session() {
    let g = Gavel::start().await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE gone")
        .await;
    let id = request_id(&v);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser
        .get(format!("{}/login", g.base))
        .send()
        .await
        .unwrap();
    let form_cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gavel_login="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let key = html
        .split("name=\"form_key\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let r = browser
        .post(format!("{}/login", g.base))
        .header("cookie", &form_cookie)
        .form(&[("token", ALICE), ("next", "/requests"), ("form_key", &key)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gavel_session="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let open = |session: String| {
        let browser = browser.clone();
        let url = format!("{}/requests/{id}", g.base);
        async move {
            browser
                .get(url)
                .header("cookie", session)
                .send()
                .await
                .unwrap()
        }
    };
    let page = open(session.clone()).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the decision form")
        .to_owned();
    // Alice leaves the configuration.
    let config = std::fs::read_to_string(g.config_path()).unwrap();
    let without: String = config
        .split("[[identity.humans]]")
        .filter(|block| !block.contains("alice@x"))
        .collect::<Vec<_>>()
        .join("[[identity.humans]]");
    assert_ne!(config, without);
    std::fs::write(g.config_path(), without).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.get("/api/v1/whoami", ALICE).await.0 != 401 {
        assert!(Instant::now() < deadline, "alice's token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Her browser's session no longer opens pages nor decides.
    let page = open(session.clone()).await;
    assert_eq!(page.status(), 303, "the session ended");
    let r = browser
        .post(format!("{}/requests/{id}/decision", g.base))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("decision", "approve"),
            ("comment", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
    let (_, req) = g.get(&format!("/api/v1/requests/{id}"), BOB).await;
    assert_eq!(req["state"], "pending", "{req}");
}

#[tokio::test]
async fn humans_added_to_the_config_can_act_without_a_restart() {
    let g = Gavel::start().await;
    let dave = "dave-token-0005";
    let (s, _) = g.get("/api/v1/whoami", dave).await;
    assert_eq!(s, 401);
    let config = std::fs::read_to_string(g.config_path()).unwrap();
    std::fs::write(
        g.config_path(),
        format!(
            "{config}\n[[identity.humans]]\nid = \"dave@x\"\ngroups = [\"dba\"]\ntoken_sha256 = \"{}\"\n",
            sha(dave)
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = g.get("/api/v1/whoami", dave).await;
        if s == 200 {
            assert_eq!(v["principal"]["id"], "dave@x");
            break;
        }
        assert!(Instant::now() < deadline, "dave never became known");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything else says it needs a restart.
    let config = std::fs::read_to_string(g.config_path()).unwrap();
    std::fs::write(
        g.config_path(),
        config.replace("timeout = \"15m\"", "timeout = \"20m\""),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.log().contains("restart gavel for it to take effect") {
        assert!(Instant::now() < deadline, "{}", g.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!g.log().contains('\u{1b}'), "no colour in a log file");
}

#[tokio::test]
async fn a_missing_policy_directory_is_a_warning_at_start() {
    let g = Gavel::start().await;
    assert!(!g.log().contains("policy directory does not exist"));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("gavel.toml"),
        format!(
            "data_dir = \"state\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[policy]\ndir = \"polices\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("gavel.toml"))
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        if log.contains("gavel is serving") {
            break log;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        log.contains("WARN") && log.contains("polices") && log.contains("does not exist"),
        "{log}"
    );
}

#[tokio::test]
async fn an_agent_acting_itself_is_admitted_until_it_reports() {
    let g = Gavel::start().await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE r")
        .await;
    let id = request_id(&v);
    g.approve(ALICE, &id).await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE r")
        .await;
    assert_eq!(verdict(&v), "allow");
    let (_, r) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "admitted", "nothing has run yet: {r}");
    let (s, _) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&g.agent_token),
            Some(json!({"admission_id": v["admission_id"], "status": "succeeded", "detail": "dropped"})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, r) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "executed", "{r}");
    // An outcome's detail goes into the audit log for good: it is bounded.
    let v = g
        .act(&g.agent_token, "sql.read", "prod-db", "SELECT 1")
        .await;
    assert_eq!(verdict(&v), "allow");
    let (s, e) = g
        .call(
            Method::POST,
            "/api/v1/actions/outcome",
            Some(&g.agent_token),
            Some(json!({"admission_id": v["admission_id"], "status": "succeeded", "detail": "x".repeat(5000)})),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e.to_string().contains("at most 4096 bytes"), "{e}");
}

/// An agent reading its own request sees no one else's requests in its
/// history.
#[tokio::test]
async fn an_agents_history_holds_only_its_own_requests() {
    let g = Gavel::start().await;
    let other = g.create_agent("other-bot", "owner@x", &[]);
    g.act(
        &other,
        "sql.ddl",
        "prod-db",
        "ALTER ROLE app PASSWORD 'secret-of-other'",
    )
    .await;
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE mine")
        .await;
    let id = request_id(&v);
    let (s, mine) = g
        .get(&format!("/api/v1/requests/{id}"), &g.agent_token)
        .await;
    assert_eq!(s, 200);
    assert!(!mine.to_string().contains("secret-of-other"), "{mine}");
    // A reviewer sees both.
    let (_, all) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert!(all.to_string().contains("secret-of-other"), "{all}");
}

/// The command line sends a token only over https:// or to loopback.
#[test]
fn the_cli_never_sends_a_token_in_the_clear_to_another_host() {
    let out = Command::new(BIN)
        .args(["requests", "--server", "http://192.0.2.2:8470"])
        .env("GAVEL_TOKEN", ALICE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("neither https:// nor loopback"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policy_explain_classifies_sql_as_the_proxy_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = gavel_in(dir.path(), &["quickstart"], &[]);
    assert!(out.status.success());
    let out = gavel_in(
        dir.path(),
        &[
            "policy",
            "explain",
            "--config",
            "gavel-quickstart/gavel.toml",
            "--principal",
            "agent:deploy-bot",
            "--resource",
            "prod-db",
            "--sql",
            "DELETE FROM audit.events WHERE id = 1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("classified: sql.write"), "{text}");
    assert!(text.contains("tables: audit.events"), "{text}");
    assert!(
        text.contains("DENY") && text.contains("audit-tables-untouchable"),
        "{text}"
    );
}

/// What agents asked (SQL literals included) and the audit log are
/// readable by gavel's own user only.
#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let g = Gavel::start().await;
    let mode = std::fs::metadata(g.dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

//! The MCP gateway against real MCP servers from npm
//! (`@modelcontextprotocol/server-everything`,
//! `@modelcontextprotocol/server-filesystem`), over stdio and streamable
//! HTTP, driven by a client gavel did not write: the official Python SDK
//! (PyPI `mcp`). `scripts/setup` installs all of them.

mod harness;

use harness::{ALICE, BIN, BOB, Gavel, OWNER, Reaped, free_port};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn npm_bin(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/npm/node_modules/.bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path.display().to_string()
}

fn client_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp/client.py")
        .display()
        .to_string()
}

/// Policies over the two upstreams. `DATA` is replaced by the test's data
/// directory.
const MCP_POLICIES: &str = r#"
@id("everything-tools") permit(principal, action == Action::"mcp.call", resource == Resource::"everything");
@id("no-env") forbid(principal, action == Action::"mcp.call", resource)
  when { context.tool == "get-env" };
@id("fs-reads") permit(principal, action == Action::"mcp.call", resource == Resource::"fs")
  when { context.tool like "read*" || context.tool like "list*" };
@id("fs-writes-need-a-dba") @approval("group:dba")
permit(principal, action == Action::"mcp.call", resource == Resource::"fs")
  when { context.tool == "write_file" };
@id("fs-writes-only-in-allowed")
forbid(principal, action == Action::"mcp.call", resource == Resource::"fs")
  when { context.tool == "write_file" &&
         !(context.args.hasTag("path") && context.args.getTag("path") like "DATA/allowed/*") };
@id("resources-and-prompts") permit(principal, action == Action::"mcp.read", resource);
"#;

struct Mcp {
    g: Gavel,
    data: tempfile::TempDir,
}

impl Mcp {
    async fn start(hold: &str) -> Mcp {
        Mcp::start_with(hold, "").await
    }

    async fn start_with(hold: &str, extra: &str) -> Mcp {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join("allowed")).unwrap();
        std::fs::write(data.path().join("allowed/hello.txt"), "hello from disk\n").unwrap();
        let dir = data.path().display().to_string();
        let config = format!(
            r#"
[[resources.mcp]]
name = "everything"
command = ["{everything}"]
tags = {{ env = "prod" }}

[[resources.mcp]]
name = "fs"
command = ["{fs}", "{dir}"]
{extra}
"#,
            everything = npm_bin("mcp-server-everything"),
            fs = npm_bin("mcp-server-filesystem"),
        );
        let g = Gavel::start_custom(hold, &MCP_POLICIES.replace("DATA", &dir), &config).await;
        let m = Mcp { g, data };
        m.wait_ready().await;
        m
    }

    /// Waits until `/readyz` reports every MCP upstream connected.
    async fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, v) = self.g.get("/readyz", ALICE).await;
            let ups = v["mcp_upstreams"].as_array().cloned().unwrap_or_default();
            if !ups.is_empty() && ups.iter().all(|u| u["up"] == true) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "MCP upstreams did not come up: {v}\n{}",
                self.g.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/readyz` once the supervisors have compared the upstreams' names.
    async fn wait_ready_with_collisions(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = self.g.get("/readyz", ALICE).await;
            let ups = v["mcp_upstreams"].as_array().cloned().unwrap_or_default();
            if ups.iter().any(|u| u.get("colliding_names").is_some()) {
                return v;
            }
            assert!(Instant::now() < deadline, "no collision reported: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("{}/mcp", self.g.base)
    }

    fn path(&self, rel: &str) -> String {
        self.data.path().join(rel).display().to_string()
    }

    /// Runs the Python SDK client over streamable HTTP as `token`.
    async fn client(&self, token: &str, steps: Value) -> Vec<Value> {
        run_client(json!({
            "transport": "http", "url": self.url(), "token": token, "steps": steps,
        }))
        .await
    }

    /// The one pending request, once it exists.
    async fn pending_request(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, list) = self.g.get("/api/v1/requests?state=pending", ALICE).await;
            if let Some(r) = list["requests"].as_array().and_then(|a| a.first()) {
                return r.clone();
            }
            assert!(Instant::now() < deadline, "no pending request: {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pending_requests(&self) -> Vec<Value> {
        let (_, list) = self.g.get("/api/v1/requests?state=pending", ALICE).await;
        list["requests"].as_array().cloned().unwrap_or_default()
    }

    async fn audit_events(&self, query: &str) -> Vec<Value> {
        let (_, page) = self.g.get(&format!("/api/v1/audit?{query}"), ALICE).await;
        page["records"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|r| r["record"].clone())
            .collect()
    }
}

async fn run_client(script: Value) -> Vec<Value> {
    let out = tokio::process::Command::new("python3")
        .arg(client_script())
        .arg(script.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_are_namespaced_filtered_and_annotated() {
    let m = Mcp::start("60s").await;
    let out = m
        .client(&m.g.agent_token, json!([{"op": "list_tools"}]))
        .await;
    let tools = out[0]["tools"].as_object().unwrap();
    assert!(tools.contains_key("everything__echo"), "{tools:?}");
    assert!(tools.contains_key("fs__read_text_file"), "{tools:?}");
    // Forbidden whatever the arguments: never shown.
    assert!(!tools.contains_key("everything__get-env"), "{tools:?}");
    // Not permitted at all (fs only permits reads, lists and writes).
    assert!(!tools.contains_key("fs__move_file"), "{tools:?}");
    // Held or refused depending on the path: shown, and it says so.
    let write = tools["fs__write_file"].as_str().unwrap();
    assert!(write.starts_with("[gavel:"), "{write}");
    // Nothing leaks unprefixed.
    assert!(tools.keys().all(|k| k.contains("__")), "{tools:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_calls_pass_and_denied_ones_name_the_policy() {
    let m = Mcp::start("60s").await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "call", "tool": "everything__echo", "args": {"message": "hi"}, "meta": {"intent": "saying hello"}},
                {"op": "call", "tool": "fs__read_text_file", "args": {"path": m.path("allowed/hello.txt")}},
                {"op": "call", "tool": "everything__get-env", "args": {}},
                {"op": "call", "tool": "fs__write_file", "args": {"path": "/etc/gavel-test", "content": "x"}},
                {"op": "call", "tool": "nosuch__tool", "args": {}},
                {"op": "call", "tool": "everything__nosuch", "args": {}},
            ]),
        )
        .await;
    assert_eq!(out[0]["is_error"], false, "{}", out[0]);
    assert_eq!(out[0]["text"], "Echo: hi");
    assert_eq!(out[1]["text"], "hello from disk\n", "{}", out[1]);
    assert_eq!(out[2]["is_error"], true);
    assert!(
        out[2]["text"]
            .as_str()
            .unwrap()
            .contains("denied by policy no-env"),
        "{}",
        out[2]
    );
    assert!(
        out[3]["text"]
            .as_str()
            .unwrap()
            .contains("fs-writes-only-in-allowed"),
        "{}",
        out[3]
    );
    assert!(!std::path::Path::new("/etc/gavel-test").exists());
    // Unknown tools are JSON-RPC invalid params (-32602).
    assert_eq!(out[4]["code"], -32602, "{}", out[4]);
    assert_eq!(out[5]["code"], -32602, "{}", out[5]);
    // Every decision and outcome is audited, with the intent.
    let records = m.audit_events("resource=everything").await;
    let echo: Vec<&Value> = records
        .iter()
        .filter(|r| r["operation"] == "echo")
        .collect();
    assert!(
        echo.iter()
            .any(|r| r["event"] == "decision" && r["decision"] == "allow"),
        "{records:?}"
    );
    assert!(echo.iter().all(|r| r["intent"] == "saying hello"));
    assert!(echo.iter().all(|r| r["surface"] == "mcp"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcomes = m.audit_events("resource=everything&event=outcome").await;
        if outcomes
            .iter()
            .any(|r| r["operation"] == "echo" && r["outcome"] == "succeeded: 1 content block(s)")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{outcomes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let denied = m.audit_events("resource=everything&event=decision").await;
    assert!(
        denied
            .iter()
            .any(|r| r["operation"] == "get-env" && r["decision"] == "deny"),
        "{denied:?}"
    );
    // An agent that asks through the REST API about an MCP resource is
    // judged with the resource's real kind and tags.
    m.g.write_policy_and_wait(
        "kinds.cedar",
        r#"@id("prod-mcp-needs-a-dba") @approval("group:dba")
permit(principal, action == Action::"mcp.call", resource)
  when { resource.kind == "mcp" && resource.hasTag("env") && resource.getTag("env") == "prod"
         && context.tool == "deploy" };"#,
    )
    .await;
    let v =
        m.g.act(&m.g.agent_token, "mcp.call", "everything", "deploy")
            .await;
    assert_eq!(harness::verdict(&v), "pending", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_call_approved_while_waiting_returns_the_real_result() {
    let m = Mcp::start("60s").await;
    let target = m.path("allowed/new.txt");
    let script = json!({
        "transport": "http", "url": m.url(), "token": m.g.agent_token,
        "steps": [{"op": "call", "tool": "fs__write_file",
                   "args": {"path": target, "content": "approved content"},
                   "meta": {"intent": "write the report"},
                   "progress": true}],
    });
    let call = tokio::spawn(run_client(script));
    let request = m.pending_request().await;
    let id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(request["action"], "mcp.call");
    assert_eq!(request["operation"], "write_file");
    assert_eq!(request["intent"], "write the report");
    assert_eq!(request["details"]["args"]["content"], "approved content");
    assert_eq!(request["data_context"]["upstream"], "fs");
    assert!(
        !std::path::Path::new(&target).exists(),
        "ran before approval"
    );
    // The agent's owner may not approve; another dba may.
    let (status, _) = m.g.approve(OWNER, &id).await;
    assert_eq!(status, 403);
    let (status, v) = m.g.approve(BOB, &id).await;
    assert_eq!(status, 200, "{v}");
    let out = call.await.unwrap();
    assert_eq!(out[0]["is_error"], false, "{}", out[0]);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "approved content"
    );
    // The held call heard it was waiting, naming the request.
    let progress = out[0]["progress"].as_array().unwrap();
    assert!(
        progress.iter().any(|p| p.as_str().unwrap().contains(&id)),
        "{progress:?}"
    );
    let (_, r) = m.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "executed", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_hold_timeout_the_identical_call_passes_once_and_changed_arguments_do_not() {
    let m = Mcp::start("1s").await;
    let target = m.path("allowed/later.txt");
    let call = |content: &str| {
        json!({"op": "call", "tool": "fs__write_file",
               "args": {"path": target, "content": content}})
    };
    let out = m.client(&m.g.agent_token, json!([call("v1")])).await;
    assert_eq!(out[0]["is_error"], true);
    let text = out[0]["text"].as_str().unwrap();
    let request = m.pending_request().await;
    let id = request["id"].as_str().unwrap();
    assert!(text.contains(id), "{text}");
    assert!(
        text.contains(&format!("{}/requests/{id}", m.g.base)),
        "{text}"
    );
    assert!(!std::path::Path::new(&target).exists());
    let (status, v) = m.g.approve(ALICE, id).await;
    assert_eq!(status, 200, "{v}");
    // A changed argument is another action: held, not granted.
    // The identical call passes once; a third identical call is held again.
    let out = m
        .client(
            &m.g.agent_token,
            json!([call("v2"), call("v1"), call("v1")]),
        )
        .await;
    assert_eq!(out[0]["is_error"], true, "{}", out[0]);
    assert!(out[0]["text"].as_str().unwrap().contains("needs approval"));
    assert_eq!(out[1]["is_error"], false, "{}", out[1]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v1");
    assert_eq!(out[2]["is_error"], true, "{}", out[2]);
    assert!(out[2]["text"].as_str().unwrap().contains("needs approval"));
    let (_, r) = m.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "executed", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_held_call_withdraws_its_request() {
    let m = Mcp::start("60s").await;
    let target = m.path("allowed/cancelled.txt");
    let out = m
        .client(
            &m.g.agent_token,
            json!([{"op": "cancel_call", "tool": "fs__write_file",
                    "args": {"path": target, "content": "x"}, "after": 2}]),
        )
        .await;
    assert_eq!(out[0]["cancelled"], true, "{}", out[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (id, state) = loop {
        let (_, list) = m.g.get("/api/v1/requests", ALICE).await;
        let r = &list["requests"][0];
        if r["state"] == "expired" {
            break (r["id"].as_str().unwrap().to_owned(), r["state"].clone());
        }
        assert!(Instant::now() < deadline, "not withdrawn: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state, "expired");
    let events: Vec<String> = m
        .audit_events(&format!("request_id={id}"))
        .await
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["request_created", "withdrawn"]);
    // A late approval finds nothing to approve and nothing runs.
    let (status, _) = m.g.approve(BOB, &id).await;
    assert_eq!(status, 409);
    assert!(!std::path::Path::new(&target).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_and_prompts_pass_through_gated_as_mcp_read() {
    let m = Mcp::start("60s").await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "list_resources"},
                {"op": "list_prompts"},
                {"op": "get_prompt", "name": "everything__simple-prompt", "args": {}},
            ]),
        )
        .await;
    let uris = out[0]["uris"].as_array().unwrap();
    assert!(!uris.is_empty(), "{}", out[0]);
    let prompts = out[1]["prompts"].as_array().unwrap();
    assert!(
        prompts
            .iter()
            .all(|p| p.as_str().unwrap().starts_with("everything__")),
        "{prompts:?}"
    );
    assert!(out[2]["messages"].as_u64().unwrap() >= 1, "{}", out[2]);
    let uri = uris[0].as_str().unwrap().to_owned();
    let out = m
        .client(
            &m.g.agent_token,
            json!([{"op": "read_resource", "uri": uri}]),
        )
        .await;
    assert!(out[0].get("error").is_none(), "{}", out[0]);
    let reads = m.audit_events("resource=everything&event=decision").await;
    assert!(
        reads
            .iter()
            .any(|r| r["class"] == "mcp.read" && r["operation"] == uri.as_str()),
        "{reads:?}"
    );
    // Without the permit, reads are refused with a JSON-RPC error.
    m.g.write_policy_and_wait(
        "main.cedar",
        &MCP_POLICIES
            .replace("DATA", &m.data.path().display().to_string())
            .replace(
                "@id(\"resources-and-prompts\") permit",
                "@id(\"resources-and-prompts\") forbid",
            ),
    )
    .await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([{"op": "read_resource", "uri": uri}]),
        )
        .await;
    assert!(
        out[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("resources-and-prompts"),
        "{}",
        out[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_updates_reach_only_the_sessions_that_subscribed() {
    let m = Mcp::start("60s").await;
    let uri = "demo://resource/static/document/architecture.md";
    // The subscriber turns on the upstream's simulated updates (every 5 s
    // for each URI subscribed on gavel's upstream session).
    let subscriber = tokio::spawn(run_client(json!({
        "transport": "http", "url": m.url(), "token": m.g.agent_token,
        "steps": [
            {"op": "call", "tool": "everything__toggle-subscriber-updates", "args": {}},
            {"op": "subscribe", "uri": uri},
            {"op": "wait_updated", "uri": uri, "timeout": 20},
            {"op": "unsubscribe", "uri": uri},
        ],
    })));
    // Another agent's session, connected all along, subscribed to nothing.
    let bystander_token = m.g.create_agent("bystander", "owner@x", &[]);
    let bystander = run_client(json!({
        "transport": "http", "url": m.url(), "token": bystander_token,
        "steps": [{"op": "wait_updated", "uri": uri, "timeout": 12}],
    }))
    .await;
    let out = subscriber.await.unwrap();
    assert_eq!(out[1]["ok"], true, "{}", out[1]);
    let updated = out[2]["updated"].as_array().unwrap();
    assert!(updated.iter().any(|u| u == uri), "{}", out[2]);
    assert_eq!(out[3]["ok"], true, "{}", out[3]);
    assert_eq!(bystander[0]["updated"], json!([]), "{}", bystander[0]);
    // A subscription is gated as a read of the resource.
    let reads = m.audit_events("resource=everything&event=decision").await;
    assert!(
        reads
            .iter()
            .any(|r| r["class"] == "mcp.read" && r["operation"] == uri),
        "{reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_clients_reach_the_gateway_through_gavel_mcp() {
    let m = Mcp::start("60s").await;
    let out = run_client(json!({
        "transport": "stdio",
        "command": [BIN, "mcp", "--token-env", "AGENT_TOKEN", "--server", m.g.base],
        "env": {"AGENT_TOKEN": m.g.agent_token, "PATH": std::env::var("PATH").unwrap()},
        "steps": [
            {"op": "list_tools"},
            {"op": "call", "tool": "everything__echo", "args": {"message": "over stdio"}},
            {"op": "call", "tool": "everything__get-env", "args": {}},
        ],
    }))
    .await;
    assert!(
        out[0]["tools"]
            .as_object()
            .unwrap()
            .contains_key("everything__echo")
    );
    assert_eq!(out[1]["text"], "Echo: over stdio", "{}", out[1]);
    assert!(
        out[2]["text"].as_str().unwrap().contains("no-env"),
        "{}",
        out[2]
    );
    // A client of the stateless 2026-07-28 revision, the same way.
    let out = run_client(json!({
        "transport": "stdio", "discover": true,
        "command": [BIN, "mcp", "--token-env", "AGENT_TOKEN", "--server", m.g.base],
        "env": {"AGENT_TOKEN": m.g.agent_token, "PATH": std::env::var("PATH").unwrap()},
        "steps": [
            {"op": "call", "tool": "everything__echo", "args": {"message": "stateless stdio"}},
        ],
    }))
    .await;
    assert!(
        out[0]["versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "2026-07-28")),
        "{}",
        out[0]
    );
    assert_eq!(out[1]["text"], "Echo: stateless stdio", "{}", out[1]);
    // A wrong token is refused in MCP's own terms, not with a crash.
    let bad = run_client(json!({
        "transport": "stdio",
        "command": [BIN, "mcp", "--token-env", "AGENT_TOKEN", "--server", m.g.base],
        "env": {"AGENT_TOKEN": "not-a-token", "PATH": std::env::var("PATH").unwrap()},
        "steps": [],
    }));
    let result = tokio::time::timeout(Duration::from_secs(30), tokio::spawn(bad)).await;
    // The SDK raises on the failed initialize: the client process fails.
    assert!(matches!(result, Ok(Err(_))), "{result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streamable_http_upstreams_are_relayed_too() {
    let port = free_port();
    let _upstream = Reaped(
        Command::new(npm_bin("mcp-server-everything"))
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "upstream did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = Mcp::start_with(
        "60s",
        &format!("[[resources.mcp]]\nname = \"remote\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n"),
    )
    .await;
    m.g.write_policy_and_wait(
        "remote.cedar",
        "@id(\"remote-echo\") permit(principal, action == Action::\"mcp.call\", resource == Resource::\"remote\") when { context.tool == \"echo\" };",
    )
        .await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "list_tools"},
                {"op": "call", "tool": "remote__echo", "args": {"message": "via http"}},
                {"op": "call", "tool": "remote__get-sum", "args": {"a": 1, "b": 2}},
            ]),
        )
        .await;
    let tools = out[0]["tools"].as_object().unwrap();
    assert!(tools.contains_key("remote__echo"));
    assert!(!tools.contains_key("remote__get-sum"), "{tools:?}");
    assert_eq!(out[1]["text"], "Echo: via http", "{}", out[1]);
    assert_eq!(out[2]["is_error"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_is_restarted_shown_in_readyz_and_lists_are_refreshed() {
    let m = Mcp::start("60s").await;
    let ready = m.wait_ready().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // A client that stays connected hears that the tool list changed.
    let ready = m.data.path().join("watcher-ready");
    let watcher = tokio::spawn(run_client(json!({
        "transport": "http", "url": m.url(), "token": m.g.agent_token,
        "steps": [{"op": "list_tools"},
                  {"op": "touch", "path": ready.display().to_string()},
                  {"op": "wait_list_changed", "timeout": 30}],
    })));
    // Only a session that is established hears the change.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the watcher never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Kill the filesystem server (gavel's child, found by its argument).
    let dir = m.data.path().display().to_string();
    let status = Command::new("pkill")
        .args(["-f", &format!("mcp-server-filesystem {dir}")])
        .status()
        .unwrap();
    assert!(status.success(), "no upstream process to kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = m.g.get("/readyz", ALICE).await;
        let fs = v["mcp_upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "fs")
            .cloned()
            .unwrap();
        if fs["up"] == true && fs["connects"] == 2 {
            assert!(
                fs["last_error"].is_null(),
                "a live upstream shows no error: {fs}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = watcher.await.unwrap();
    assert_eq!(out[2]["seen"], true, "{}", out[2]);
    // And it works again.
    let out = m
        .client(
            &m.g.agent_token,
            json!([{"op": "call", "tool": "fs__read_text_file",
                    "args": {"path": m.path("allowed/hello.txt")}}]),
        )
        .await;
    assert_eq!(out[0]["text"], "hello from disk\n", "{}", out[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_malformed_json_rpc_and_session_theft_are_refused() {
    let m = Mcp::start("60s").await;
    let post = |token: Option<&str>, body: &str, session: Option<&str>| {
        let mut req =
            m.g.http
                .post(m.url())
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        req.send()
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}"#;
    let r = post(None, init, None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = post(Some("wrong-token"), init, None).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32001, "{body}");
    // What is not JSON-RPC gets JSON-RPC's own error codes.
    for (body, code) in [
        ("{not json", -32700),
        ("[]", -32600),
        (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, -32600),
        (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, -32600),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":"everything__echo"}"#,
            -32602,
        ),
        // A key twice: read one way here, maybe another way elsewhere.
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"everything__echo","name":"everything__get-env","arguments":{}}}"#,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"ping","method":"tools/list"}"#,
            -32600,
        ),
    ] {
        let r = post(Some(&m.g.agent_token), body, None).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert_eq!(v["jsonrpc"], "2.0");
    }
    // A session opened by the agent cannot be used by another principal.
    let r = post(Some(&m.g.agent_token), init, None).await.unwrap();
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let r = post(Some(&m.g.agent_token), initialized, Some(&session))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let r = post(Some(BOB), list, Some(&session)).await.unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("belongs to another principal") && !text.contains("everything__echo"),
        "{text}"
    );
    // Nor its notifications (a cancel), its event stream or its end.
    let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":2}}"#;
    let r = post(Some(BOB), cancel, Some(&session)).await.unwrap();
    assert_eq!(r.status(), 403);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r =
            m.g.http
                .request(method.clone(), m.url())
                .bearer_auth(BOB)
                .header("accept", "text/event-stream")
                .header("mcp-session-id", &session)
                .header("mcp-protocol-version", "2025-11-25")
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 403, "{method}");
    }
    let r = post(Some(&m.g.agent_token), list, Some(&session))
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("everything__echo"), "{text}");
    // An unknown method is -32601 from the session itself.
    let unknown = r#"{"jsonrpc":"2.0","id":4,"method":"tools/frobnicate","params":{}}"#;
    let r = post(Some(&m.g.agent_token), unknown, Some(&session))
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains("-32601"), "{text}");
    // Mcp-Method and Mcp-Name headers that lie about the body are refused
    // (-32020) before anything is judged or forwarded; true ones pass.
    let call = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"everything__get-env","arguments":{}}}"#;
    for (header, value) in [
        ("mcp-name", "everything__echo"),
        ("mcp-name", "=?base64?ZXZlcnl0aGluZ19fZWNobw==?="),
        ("mcp-method", "tools/list"),
    ] {
        let r =
            m.g.http
                .post(m.url())
                .bearer_auth(&m.g.agent_token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", &session)
                .header("mcp-protocol-version", "2025-11-25")
                .header(header, value)
                .body(call)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 400, "{header}: {value}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], -32020, "{v}");
        assert_eq!(v["id"], 5, "{v}");
    }
    let judged = m.audit_events("resource=everything&event=decision").await;
    assert!(
        !judged.iter().any(|r| r["operation"] == "get-env"),
        "a refused message is never judged: {judged:?}"
    );
    let honest = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"everything__echo","arguments":{"message":"true headers"}}}"#;
    let r =
        m.g.http
            .post(m.url())
            .bearer_auth(&m.g.agent_token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "everything__echo")
            .body(honest)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("true headers"));
}

#[tokio::test(flavor = "multi_thread")]
async fn resource_uris_are_judged_in_the_form_the_upstream_reads() {
    let m = Mcp::start("60s").await;
    let policies = MCP_POLICIES
        .replace("DATA", &m.data.path().display().to_string())
        .replace(
            r#"@id("resources-and-prompts") permit(principal, action == Action::"mcp.read", resource);"#,
            r#"@id("dynamic-text") permit(principal, action == Action::"mcp.read", resource)
  when { context.operation like "demo://resource/dynamic/text/*" };
@id("no-static") forbid(principal, action == Action::"mcp.read", resource)
  when { context.operation like "demo://resource/static/*" };
@id("no-dot-dot") forbid(principal, action == Action::"mcp.read", resource)
  when { context.operation like "*..*" };"#,
        );
    m.g.write_policy_and_wait("main.cedar", &policies).await;
    let secret = "demo://resource/static/document/architecture.md";
    let dressed = [
        // Dot segments the upstream removes, however they are spelled.
        "demo://resource/dynamic/text/%2e%2e/%2e%2e/static/document/architecture.md",
        "demo://resource/dynamic/text/%2E%2E/%2E%2E/static/document/architecture.md",
        "demo://resource/dynamic/text/.%2e/%2E./static/document/architecture.md",
        // What the upstream's URL parser trims or deletes.
        " demo://resource/static/document/architecture.md",
        "\tdemo://resource/static/document/architecture.md",
        "demo://resource/sta\ttic/document/architecture.md",
        "DEMO://resource/static/document/architecture.md",
    ];
    let steps: Vec<Value> = std::iter::once(secret)
        .chain(dressed)
        .map(|uri| json!({"op": "read_resource", "uri": uri}))
        .chain(std::iter::once(
            json!({"op": "read_resource", "uri": "demo://resource/dynamic/text/1"}),
        ))
        .collect();
    let out = m.client(&m.g.agent_token, Value::Array(steps)).await;
    let (allowed, refused) = out.split_last().unwrap();
    for (i, r) in refused.iter().enumerate() {
        assert!(
            r.get("error").is_some(),
            "read {i} reached the upstream: {r}"
        );
        assert!(
            !r["text"].as_str().unwrap_or("").contains("architecture"),
            "{r}"
        );
    }
    assert!(allowed.get("error").is_none(), "{allowed}");
    // What policy judged is what the upstream would read.
    let reads = m.audit_events("resource=everything&event=decision").await;
    let judged: Vec<&str> = reads
        .iter()
        .filter(|r| r["class"] == "mcp.read")
        .filter_map(|r| r["operation"].as_str())
        .collect();
    assert!(judged.contains(&secret), "{judged:?}");
    assert!(
        judged
            .iter()
            .all(|op| !op.contains("%2e") && !op.contains("..")),
        "{judged:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn path_arguments_are_judged_as_the_filesystem_server_resolves_them() {
    let m = Mcp::start("1s").await;
    let escape = format!("{}/../escaped.txt", m.path("allowed"));
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "call", "tool": "fs__write_file", "args": {"path": escape, "content": "x"}},
                {"op": "call", "tool": "fs__write_file", "args": {"path": "allowed/relative.txt", "content": "x"}},
                {"op": "call", "tool": "fs__read_text_file", "args": {"path": "file://../escaped.txt"}},
            ]),
        )
        .await;
    assert_eq!(out[0]["is_error"], true, "{}", out[0]);
    assert!(
        out[0]["text"]
            .as_str()
            .unwrap()
            .contains("fs-writes-only-in-allowed"),
        "refused outright by the forbid, as the path the server would write: {}",
        out[0]
    );
    assert_eq!(out[1]["is_error"], true, "{}", out[1]);
    assert!(
        out[1]["text"].as_str().unwrap().contains("not absolute"),
        "{}",
        out[1]
    );
    // A URI is not a path: a filesystem server reads `file://../x` as a
    // relative path.
    assert_eq!(out[2]["is_error"], true, "{}", out[2]);
    assert!(
        out[2]["text"].as_str().unwrap().contains("not absolute"),
        "{}",
        out[2]
    );
    assert!(!std::path::Path::new(&m.path("escaped.txt")).exists());
    assert!(m.pending_requests().await.is_empty(), "nothing waits");
    // Each refusal is recorded, with the arguments as sent.
    let refused = m.audit_events("resource=fs&event=decision").await;
    let judged: Vec<&Value> = refused
        .iter()
        .filter(|r| {
            r["comment"]
                .as_str()
                .is_some_and(|c| c.contains("not judgeable"))
        })
        .collect();
    assert_eq!(judged.len(), 2, "{refused:#?}");
    assert!(
        judged
            .iter()
            .any(|r| r["details"]["args"]["path"] == "file://../escaped.txt"),
        "{judged:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_call_of_a_revoked_agent_never_runs() {
    let m = Mcp::start("60s").await;
    let target = m.path("allowed/revoked.txt");
    let call = tokio::spawn(run_client(json!({
        "transport": "http", "url": m.url(), "token": m.g.agent_token,
        "steps": [{"op": "call", "tool": "fs__write_file",
                   "args": {"path": target, "content": "after revocation"}}],
    })));
    let request = m.pending_request().await;
    let id = request["id"].as_str().unwrap().to_owned();
    let out = m.g.cli(&["agent", "revoke", "bot"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = call.await.unwrap();
    assert_eq!(out[0]["is_error"], true, "{}", out[0]);
    assert!(
        out[0]["text"].as_str().unwrap().contains("revoked"),
        "{}",
        out[0]
    );
    let (_, r) = m.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "expired", "withdrawn: {r}");
    let (status, v) = m.g.approve(BOB, &id).await;
    assert_eq!(status, 409, "nothing left to approve: {v}");
    assert!(!std::path::Path::new(&target).exists(), "never written");
}

/// Two agents' sessions, each answering sampling and elicitation with its
/// own name, call the upstream's tools that ask the client at the same
/// time: each request reaches the session whose call caused it, and
/// nothing reaches the other. Roots are never the client's: an upstream
/// that asks hears the configured ones, so no agent can widen a
/// filesystem server's allowed directories.
#[tokio::test(flavor = "multi_thread")]
async fn sampling_and_elicitation_reach_only_the_session_that_caused_them() {
    let m = Mcp::start_with(
        "60s",
        &format!(
            "[[resources.mcp]]\nname = \"rooted\"\ncommand = [\"{}\"]\nroots = [\"file:///srv/shared\"]\n",
            npm_bin("mcp-server-everything")
        ),
    )
    .await;
    m.g.write_policy_and_wait(
        "rooted.cedar",
        "@id(\"rooted-roots\") permit(principal, action == Action::\"mcp.call\", resource == Resource::\"rooted\") when { context.tool == \"get-roots-list\" };",
    )
    .await;
    let other_token = m.g.create_agent("other-bot", "owner@x", &[]);
    let script = |token: &str, who: &str| {
        json!({
            "transport": "http", "url": m.url(), "token": token,
            "answers": {
                "sampling": format!("sampled by {who}"),
                "elicitation": {"name": format!("{who} the agent")},
                "roots": ["file:///"],
            },
            "steps": [
                {"op": "list_tools"},
                {"op": "call", "tool": "everything__trigger-sampling-request",
                 "args": {"prompt": format!("question of {who}"), "maxTokens": 10}},
                {"op": "call", "tool": "everything__trigger-elicitation-request", "args": {}},
                {"op": "call", "tool": "rooted__get-roots-list", "args": {}},
                {"op": "call", "tool": "fs__list_allowed_directories", "args": {}},
            ],
        })
    };
    let (a, b) = tokio::join!(
        run_client(script(&m.g.agent_token, "alpha")),
        run_client(script(&other_token, "beta")),
    );
    for (out, me, them) in [(&a, "alpha", "beta"), (&b, "beta", "alpha")] {
        let all = out
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let tools = out[0]["tools"].as_object().unwrap();
        assert!(
            tools.contains_key("everything__trigger-sampling-request"),
            "a client that offers sampling sees the tools that need it: {all}"
        );
        assert!(
            !tools.contains_key("everything__get-roots-list"),
            "gavel claims no roots for an upstream without configured ones: {all}"
        );
        assert!(
            out[1]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("sampled by {me}")),
            "{all}"
        );
        assert_eq!(
            out[1]["asked"],
            json!([{"sampling": format!("Resource trigger-sampling-request context: question of {me}")}]),
            "{all}"
        );
        assert!(
            out[2]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("{me} the agent")),
            "{all}"
        );
        let roots = out[3]["text"].as_str().unwrap();
        assert!(roots.contains("file:///srv/shared"), "{all}");
        // The client was never asked for its roots ("file:///").
        assert!(
            out.iter().all(|step| step
                .get("asked")
                .and_then(|a| a.as_array())
                .is_none_or(|a| a.iter().all(|x| x.get("roots").is_none()))),
            "{all}"
        );
        let dirs = out[4]["text"].as_str().unwrap();
        assert!(
            dirs.contains(m.data.path().to_str().unwrap()) && !dirs.contains("\n/\n"),
            "the filesystem server keeps its configured directory: {all}"
        );
        assert!(!all.contains(them), "{me}'s session heard of {them}: {all}");
    }
    // Each question and how it was answered is on record, under the agent
    // that was asked, without what the client answered.
    let relayed = m.audit_events("event=relayed").await;
    for (agent, who) in [("agent:bot", "alpha"), ("agent:other-bot", "beta")] {
        let mine: Vec<&Value> = relayed.iter().filter(|r| r["initiator"] == agent).collect();
        let ops: Vec<&str> = mine
            .iter()
            .map(|r| r["operation"].as_str().unwrap())
            .collect();
        for op in ["sampling/createMessage", "elicitation/create", "roots/list"] {
            assert!(ops.contains(&op), "{agent}: {ops:?} {relayed:?}");
        }
        let text = serde_json::to_string(&mine).unwrap();
        assert!(text.contains(&format!("question of {who}")), "{text}");
        assert!(text.contains("accept"), "{text}");
        assert!(
            !text.contains(&format!("sampled by {who}")),
            "answer content recorded: {text}"
        );
        assert!(
            !text.contains(&format!("{who} the agent")),
            "answer content recorded: {text}"
        );
    }
    // A client that offers none of it sees none of the tools that need it:
    // its upstream sessions claim exactly what it claims.
    let plain = m
        .client(&m.g.agent_token, json!([{"op": "list_tools"}]))
        .await;
    let tools = plain[0]["tools"].as_object().unwrap();
    assert!(tools.contains_key("everything__echo"), "{tools:?}");
    assert!(
        !tools.contains_key("everything__trigger-sampling-request"),
        "{tools:?}"
    );
    // The calls were gated and recorded like any other.
    let calls = m.audit_events("resource=everything&event=decision").await;
    assert!(
        calls
            .iter()
            .any(|r| r["operation"] == "trigger-sampling-request"),
        "{calls:?}"
    );
}

/// One principal cannot take every upstream session: at its own limit its
/// least recently used session makes room (never another principal's), a
/// session it ends frees its place, and a revoked agent's sessions are
/// closed, with their upstream processes.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_sessions_are_bounded_per_principal_and_end_with_it() {
    let m = Mcp::start_with("60s", "max_sessions_per_principal = 2\n").await;
    let open = |token: String| {
        let http = m.g.http.clone();
        let url = m.url();
        async move {
            let post = |body: &str, session: Option<&str>| {
                let mut req = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .body(body.to_owned());
                if let Some(s) = session {
                    req = req
                        .header("mcp-session-id", s)
                        .header("mcp-protocol-version", "2025-11-25");
                }
                req.send()
            };
            let r = post(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"0"}}}"#, None).await.unwrap();
            let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
            let _ = r.text().await;
            let _ = post(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Some(&session),
            )
            .await
            .unwrap()
            .text()
            .await;
            let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"fs__list_allowed_directories","arguments":{}}}"#;
            let text = post(call, Some(&session))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            (session, text)
        }
    };
    let agent = m.g.agent_token.clone();
    let (first, t1) = open(agent.clone()).await;
    let (second, t2) = open(agent.clone()).await;
    let (_third, t3) = open(agent.clone()).await;
    for t in [&t1, &t2, &t3] {
        assert!(t.contains(m.data.path().to_str().unwrap()), "{t}");
    }
    // The third made room by ending the agent's own least recently used
    // session (clients often never end theirs): the first is gone.
    // A tools/list in one of the agent's sessions, by its id.
    let list_in = |session: String| {
        let req =
            m.g.http
                .post(m.url())
                .bearer_auth(&agent)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25")
                .body(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#);
        async move { req.send().await.unwrap() }
    };
    let r = list_in(first.clone()).await;
    assert_eq!(r.status(), 404, "the evicted session is closed");
    let fs_sessions = |v: &Value| {
        v["mcp_upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "fs")
            .map(|u| u["sessions"].as_u64().unwrap())
            .unwrap()
    };
    let (_, ready) = m.g.get("/readyz", ALICE).await;
    assert_eq!(
        fs_sessions(&ready),
        2,
        "never more than 2 for one principal: {ready}"
    );
    // Another agent's sessions are its own: it never evicts the first
    // agent's, and gets its place.
    let other = m.g.create_agent("other-bot", "owner@x", &[]);
    let (_, t) = open(other.clone()).await;
    assert!(t.contains(m.data.path().to_str().unwrap()), "{t}");
    let r = list_in(second.clone()).await;
    assert_eq!(
        r.status(),
        200,
        "another principal evicted nothing of this one"
    );
    let _ = r.text().await;
    // Ending a session frees its place at once.
    let r =
        m.g.http
            .delete(m.url())
            .bearer_auth(&agent)
            .header("mcp-session-id", &second)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = m.g.get("/readyz", ALICE).await;
        if fs_sessions(&ready) == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot never came back: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Revoking the agent closes its sessions and their upstream processes.
    let out = m.g.cli(&["agent", "revoke", "bot"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = m.g.get("/readyz", ALICE).await;
        if fs_sessions(&ready) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked agent's sessions live on: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Progress of a forwarded call, log messages at the level the client
/// set, and completions pass through to the session they belong to.
#[tokio::test(flavor = "multi_thread")]
async fn progress_logging_and_completion_pass_through() {
    let m = Mcp::start("60s").await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "call", "tool": "everything__trigger-long-running-operation",
                 "args": {"duration": 1, "steps": 3}, "progress": true},
                {"op": "set_level", "level": "debug"},
                {"op": "call", "tool": "everything__toggle-simulated-logging", "args": {}},
                {"op": "wait_logs", "timeout": 20, "count": 2},
                {"op": "complete", "ref": {"type": "ref/prompt", "name": "everything__completable-prompt"},
                 "argument": {"name": "department", "value": "Eng"}},
            ]),
        )
        .await;
    let all = out
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(out[0]["is_error"], false, "{all}");
    assert_eq!(
        out[0]["progress"].as_array().map(|p| p.len()),
        Some(3),
        "every upstream progress notification reaches the caller: {all}"
    );
    assert_eq!(out[1]["ok"], true, "{all}");
    assert!(
        out[3]["logs"].as_array().is_some_and(|l| l.len() >= 2),
        "{all}"
    );
    assert_eq!(out[4]["values"], json!(["Engineering"]), "{all}");
    // The level the client set is on record.
    let relayed = m.audit_events("event=relayed").await;
    assert!(
        relayed.iter().any(|r| r["operation"] == "logging/setLevel"
            && r["resource"] == "everything"
            && r["outcome"].as_str().unwrap().contains("Debug")),
        "{relayed:?}"
    );
    // A completion is gated as a read of the prompt it completes.
    let reads = m.audit_events("resource=everything&event=decision").await;
    assert!(
        reads
            .iter()
            .any(|r| r["class"] == "mcp.read" && r["operation"] == "completable-prompt"),
        "{reads:?}"
    );
    // The arguments already chosen reach policy too: a completion for a
    // department policy keeps closed is refused like the prompt itself.
    m.g.write_policy_and_wait(
        "no-engineering.cedar",
        "@id(\"no-engineering\") forbid(principal, action == Action::\"mcp.read\", resource == Resource::\"everything\") when { context.tool == \"completable-prompt\" && context.args.hasTag(\"department\") && context.args.getTag(\"department\") == \"Engineering\" };",
    )
    .await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "complete", "ref": {"type": "ref/prompt", "name": "everything__completable-prompt"},
                 "argument": {"name": "name", "value": ""}, "context": {"department": "Engineering"}},
                {"op": "complete", "ref": {"type": "ref/prompt", "name": "everything__completable-prompt"},
                 "argument": {"name": "name", "value": ""}, "context": {"department": "Sales"}},
            ]),
        )
        .await;
    assert!(
        out[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no-engineering"),
        "{}",
        out[0]
    );
    assert!(
        out[1]["values"].as_array().is_some_and(|v| !v.is_empty()),
        "{}",
        out[1]
    );
    // Another session that set no level hears none of those logs.
    let quiet = m
        .client(
            &m.g.agent_token,
            json!([{"op": "wait_logs", "timeout": 4, "count": 1}]),
        )
        .await;
    assert_eq!(quiet[0]["logs"], json!([]), "{}", quiet[0]);
}

/// `prefix = false` shows an upstream's tools under their own names; a
/// name two upstreams both show is withheld, refused when called, and
/// reported in /readyz.
#[tokio::test(flavor = "multi_thread")]
async fn unprefixed_upstreams_keep_their_names_and_collisions_are_refused() {
    let m = Mcp::start_with(
        "60s",
        &format!(
            "prefix = false\n\n[[resources.mcp]]\nname = \"twin\"\ncommand = [\"{}\"]\nprefix = false\n",
            npm_bin("mcp-server-everything")
        ),
    )
    .await;
    // (`prefix = false` above belongs to the fs upstream: its tools keep
    // their names; "twin" is a second everything server, unprefixed.)
    m.g.write_policy_and_wait(
        "twin.cedar",
        "@id(\"twin-all\") permit(principal, action == Action::\"mcp.call\", resource == Resource::\"twin\");",
    )
    .await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "list_tools"},
                {"op": "call", "tool": "read_text_file", "args": {"path": m.path("allowed/hello.txt")}},
                {"op": "call", "tool": "echo", "args": {"message": "which one?"}},
                {"op": "call", "tool": "everything__echo", "args": {"message": "prefixed"}},
            ]),
        )
        .await;
    let all = out
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let tools = out[0]["tools"].as_object().unwrap();
    assert!(tools.contains_key("read_text_file"), "{all}");
    assert!(!tools.contains_key("fs__read_text_file"), "{all}");
    assert!(tools.contains_key("everything__echo"), "{all}");
    // "echo" is twin's own name only, so it is shown; nothing collides
    // with the prefixed everything server.
    assert!(tools.contains_key("echo"), "{all}");
    assert_eq!(out[1]["text"], "hello from disk\n", "{all}");
    assert_eq!(out[2]["text"], "Echo: which one?", "{all}");
    assert_eq!(out[3]["text"], "Echo: prefixed", "{all}");

    // A third upstream, also unprefixed, that offers the same names as
    // twin: those names are withheld and refused.
    let m = Mcp::start_with(
        "60s",
        &format!(
            "[[resources.mcp]]\nname = \"twin\"\ncommand = [\"{e}\"]\nprefix = false\n\n[[resources.mcp]]\nname = \"triplet\"\ncommand = [\"{e}\"]\nprefix = false\n",
            e = npm_bin("mcp-server-everything")
        ),
    )
    .await;
    m.g.write_policy_and_wait(
        "twins.cedar",
        "@id(\"twins-all\") permit(principal, action == Action::\"mcp.call\", resource);",
    )
    .await;
    let out = m
        .client(
            &m.g.agent_token,
            json!([
                {"op": "list_tools"},
                {"op": "call", "tool": "echo", "args": {"message": "ambiguous"}},
            ]),
        )
        .await;
    let all = out
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let tools = out[0]["tools"].as_object().unwrap();
    assert!(!tools.contains_key("echo"), "{all}");
    assert!(tools.contains_key("everything__echo"), "{all}");
    let error = out[1]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("several upstreams") && error.contains("twin") && error.contains("triplet"),
        "{all}"
    );
    let ready = m.wait_ready_with_collisions().await;
    let twin = ready["mcp_upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "twin")
        .cloned()
        .unwrap();
    assert!(
        twin["colliding_names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "echo")),
        "{ready}"
    );
    assert_eq!(ready["status"], "degraded", "{ready}");
}

/// A client of the stateless 2026-07-28 revision (the Python SDK's
/// `server/discover`, no initialize, no session) lists and calls tools
/// under the same policy; its requests reuse pooled upstream connections
/// rather than starting one per request.
#[tokio::test(flavor = "multi_thread")]
async fn stateless_2026_07_28_clients_are_served_from_pooled_connections() {
    let m = Mcp::start("60s").await;
    let out = run_client(json!({
        "transport": "http", "url": m.url(), "token": m.g.agent_token, "discover": true,
        "steps": [
            {"op": "list_tools"},
            {"op": "call", "tool": "everything__echo", "args": {"message": "stateless"}},
            {"op": "call", "tool": "everything__get-env", "args": {}},
            {"op": "call", "tool": "everything__echo", "args": {"message": "again"}},
        ],
    }))
    .await;
    let all = out
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out[0]["versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "2026-07-28")),
        "{all}"
    );
    assert!(
        out[1]["tools"]
            .as_object()
            .is_some_and(|t| t.contains_key("everything__echo")),
        "{all}"
    );
    assert_eq!(out[2]["text"], "Echo: stateless", "{all}");
    assert!(
        out[3]["text"].as_str().unwrap_or("").contains("no-env"),
        "{all}"
    );
    assert_eq!(out[4]["text"], "Echo: again", "{all}");
    // Four requests, one upstream connection per upstream, kept for the
    // client's next request.
    let (_, ready) = m.g.get("/readyz", ALICE).await;
    for u in ready["mcp_upstreams"].as_array().unwrap() {
        assert!(u["sessions"].as_u64().unwrap() <= 1, "{ready}");
    }
}

/// A 2026-07-28 client whose call waits for a human hears
/// `input_required` with a `requestState` instead of a refusal. The state
/// is gavel's handle: it continues only the identical call of the same
/// principal, once; the upstream runs nothing before the approval.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_call_of_a_stateless_client_answers_input_required_with_a_single_use_state() {
    let m = Mcp::start("1s").await;
    let target = m.path("allowed/stateless.txt");
    let write = |content: &str, state: Value| {
        let mut step = json!({"op": "call_once", "tool": "fs__write_file",
                              "args": {"path": target, "content": content}});
        if !state.is_null() {
            step["state"] = state;
        }
        step
    };
    let stateless = |token: &str, steps: Value| {
        run_client(json!({"transport": "http", "url": m.url(), "token": token,
                          "discover": true, "steps": steps}))
    };
    let out = stateless(&m.g.agent_token, json!([write("v1", Value::Null)])).await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    let state = out[1]["state"].as_str().unwrap().to_owned();
    let waiting = &out[1]["meta"]["gavel/approval"];
    let request = m.pending_request().await;
    let id = request["id"].as_str().unwrap();
    assert_eq!(waiting["request"], id, "{}", out[1]);
    assert!(waiting["url"].as_str().unwrap().contains(id));
    assert!(
        !std::path::Path::new(&target).exists(),
        "ran before approval"
    );

    // Still pending: the retry with the state waits again and hands out a
    // new state; the old one is spent.
    let out = stateless(
        &m.g.agent_token,
        json!([write("v1", json!(state)), write("v1", json!(state))]),
    )
    .await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    let state = out[1]["state"].as_str().unwrap().to_owned();
    assert!(
        out[2]["error"].as_str().unwrap().contains("already used"),
        "{}",
        out[2]
    );
    assert_eq!(
        m.pending_requests().await.len(),
        1,
        "the retry filed nothing new"
    );

    // Another principal, or other arguments, get nothing from a state,
    // and spend it.
    let other = m.g.create_agent("other-bot", "carol@example.com", &[]);
    let out = stateless(&other, json!([write("v1", json!(state))])).await;
    assert!(
        out[1]["error"].as_str().unwrap().contains("another call"),
        "{}",
        out[1]
    );
    let out = stateless(&m.g.agent_token, json!([write("v1", json!(state))])).await;
    assert!(
        out[1]["error"].as_str().unwrap().contains("already used"),
        "{}",
        out[1]
    );
    let out = stateless(
        &m.g.agent_token,
        json!([
            write("v1", Value::Null),
            write("changed", json!({"from": 0}))
        ]),
    )
    .await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    assert!(
        out[2]["error"].as_str().unwrap().contains("another call"),
        "{}",
        out[2]
    );
    // A state gavel never issued is refused, not passed on.
    let out = stateless(&m.g.agent_token, json!([write("v1", json!("made-up"))])).await;
    assert!(
        out[1]["error"].as_str().unwrap().contains("not issued"),
        "{}",
        out[1]
    );
    assert!(
        !std::path::Path::new(&target).exists(),
        "ran before approval"
    );

    // Approved: the identical call with a fresh state runs, once.
    let out = stateless(&m.g.agent_token, json!([write("v1", Value::Null)])).await;
    let state = out[1]["state"].as_str().unwrap().to_owned();
    let (status, v) = m.g.approve(BOB, id).await;
    assert_eq!(status, 200, "{v}");
    let out = stateless(&m.g.agent_token, json!([write("v1", json!(state))])).await;
    assert_eq!(out[1]["result_type"], "complete", "{}", out[1]);
    assert_eq!(out[1]["is_error"], false, "{}", out[1]);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v1");
    let (_, r) = m.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "executed", "{r}");
    // Reviewers see a stateless client's recent calls, although each of
    // its requests is a session of its own.
    let out = stateless(&m.g.agent_token, json!([write("v9", Value::Null)])).await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    let next = m.pending_request().await;
    let recent = next["data_context"]["recent_calls"].to_string();
    assert!(recent.contains("fs__write_file"), "{next}");

    // A 2026-07-28 request has no session: one that names a session id is
    // refused, and a method that revision removed is not found, session id
    // or not.
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let post = |body: Value, session: Option<&str>| {
        let mut req = reqwest::Client::new()
            .post(m.url())
            .bearer_auth(&m.g.agent_token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .json(&body);
        if let Some(id) = session {
            req = req.header("mcp-session-id", id);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "everything__echo", "arguments": {"message": "x"}, "_meta": meta}});
    let (status, v) = post(call, Some("made-up")).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!(-32600)), "{v}");
    let set_level = json!({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel",
                           "params": {"level": "debug", "_meta": meta}});
    for session in [None, Some("made-up")] {
        let (status, v) = post(set_level.clone(), session).await;
        assert!(status == 404 || status == 400, "{status} {v}");
        assert!(
            v["error"]["code"] == -32601 || v["error"]["code"] == -32600,
            "{v}"
        );
    }
    let (status, v) = post(set_level, None).await;
    assert_eq!((status, &v["error"]["code"]), (404, &json!(-32601)), "{v}");
}

/// An upstream of the 2026-07-28 revision (the Python SDK) asks its
/// client for a confirmation with `input_required`. Through gavel, the
/// question reaches the client, the answer reaches the upstream, and the
/// call is admitted once: one approval covers every round, the
/// upstream's own requestState never reaches the client, and gavel's
/// handle for the round is good once.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstreams_input_required_is_relayed_under_one_admission() {
    let server = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/mrtr_server.py");
    let extra = format!(
        r#"
[[resources.mcp]]
name = "confirming"
command = ["python3", "{server}"]
roots = ["file:///srv/shared"]

[[resources.mcp]]
name = "modern"
command = ["python3", "{server}"]
env = {{ MODERN_ONLY = "1" }}
"#,
        server = server.display()
    );
    let data = tempfile::tempdir().unwrap();
    let policies = r#"
@id("drops-need-a-dba") @approval("group:dba")
permit(principal, action == Action::"mcp.call", resource == Resource::"confirming");
"#;
    // At debug, rmcp would log whole messages: the answer's secret must
    // still never reach gavel's log.
    let g = Gavel::start_custom_env("1s", policies, &extra, &[("RUST_LOG", "debug")]).await;
    let m = Mcp { g, data };
    m.wait_ready().await;
    let stateless = |steps: Value| {
        run_client(
            json!({"transport": "http", "url": m.url(), "token": m.g.agent_token,
                          "discover": true,
                          "answers": {"elicitation": {"sure": true, "pin": "4711-secret-pin"}},
                          "steps": steps}),
        )
    };
    let drop =
        json!({"op": "call_once", "tool": "confirming__drop_table", "args": {"table": "users"}});
    let out = stateless(json!([drop])).await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    assert!(
        out[1]["requests"].as_object().unwrap().is_empty(),
        "{}",
        out[1]
    );
    let held = out[1]["state"].clone();
    let id = m.pending_request().await["id"].as_str().unwrap().to_owned();
    let (status, v) = m.g.approve(BOB, &id).await;
    assert_eq!(status, 200, "{v}");

    let mut resume = drop.clone();
    resume["state"] = held;
    let mut answer = drop.clone();
    answer["state"] = json!({"from": 0});
    answer["respond"] = json!(0);
    let out = stateless(json!([resume, answer.clone(), answer])).await;
    // Admitted: the upstream's question, under gavel's own handle.
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    assert_eq!(
        out[1]["requests"]["confirm"], "elicitation/create",
        "{}",
        out[1]
    );
    let handle = out[1]["state"].as_str().unwrap();
    assert!(handle.starts_with("gavel-round-"), "{handle}");
    // The answer completes the call without another approval.
    assert_eq!(out[2]["result_type"], "complete", "{}", out[2]);
    assert_eq!(out[2]["text"], "dropped users", "{}", out[2]);
    // The same handle again is refused.
    assert!(
        out[3]["error"].as_str().unwrap().contains("already used"),
        "{}",
        out[3]
    );
    assert!(m.pending_requests().await.is_empty());
    let (_, r) = m.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "executed", "{r}");
    let grants = m.audit_events("event=grant_used").await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    // The question and how it was answered are on record, not the answer.
    let relayed = m.audit_events("event=relayed").await;
    assert!(
        relayed
            .iter()
            .any(|r| r["operation"] == "elicitation/create"
                && r["outcome"]
                    .as_str()
                    .unwrap()
                    .contains("accept with fields [sure, pin]")),
        "{relayed:?}"
    );
    assert!(
        !serde_json::to_string(&relayed)
            .unwrap()
            .contains("4711-secret-pin")
    );
    assert!(m.g.log().contains("DEBUG"), "the gateway logs at debug");
    assert!(
        !m.g.log().contains("4711-secret-pin"),
        "an elicitation answer reached the log"
    );

    // An upstream that asks for roots hears the configured ones, never the
    // client's (which would widen what a filesystem server may touch); the
    // client is not even asked.
    let roots = json!({"op": "call_once", "tool": "confirming__allowed_roots", "args": {}});
    let mut roots_answer = roots.clone();
    roots_answer["state"] = json!({"from": 0});
    roots_answer["respond"] = json!(0);
    let out = run_client(
        json!({"transport": "http", "url": m.url(), "token": m.g.agent_token,
                                "discover": true, "answers": {"roots": ["file:///"]},
                                "steps": [roots.clone()]}),
    )
    .await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    let id = m.pending_request().await["id"].as_str().unwrap().to_owned();
    let (status, v) = m.g.approve(BOB, &id).await;
    assert_eq!(status, 200, "{v}");
    let mut resume = roots.clone();
    resume["state"] = out[1]["state"].clone();
    let out = run_client(
        json!({"transport": "http", "url": m.url(), "token": m.g.agent_token,
                                "discover": true, "answers": {"roots": ["file:///"]},
                                "steps": [resume, roots_answer]}),
    )
    .await;
    assert_eq!(out[1]["result_type"], "input_required", "{}", out[1]);
    assert!(
        out[1]["requests"].as_object().unwrap().is_empty(),
        "the client is not asked for roots: {}",
        out[1]
    );
    assert_eq!(out[2]["text"], "roots: file:///srv/shared", "{}", out[2]);

    // An upstream that speaks only 2026-07-28 serves a 2025-11-25 session
    // client too: its question reaches the client as a server request on
    // the call's stream, the answer goes back, and the call completes.
    m.g.write_policy_and_wait(
        "modern.cedar",
        "@id(\"modern-drops\") permit(principal, action == Action::\"mcp.call\", resource == Resource::\"modern\");",
    )
    .await;
    let out = run_client(json!({
        "transport": "http", "url": m.url(), "token": m.g.agent_token,
        "answers": {"elicitation": {"sure": true}},
        "steps": [{"op": "call", "tool": "modern__drop_table", "args": {"table": "orders"}}],
    }))
    .await;
    assert_eq!(out[0]["text"], "dropped orders", "{}", out[0]);
    let asked = out[0]["asked"].as_array().cloned().unwrap_or_default();
    assert!(
        asked
            .iter()
            .any(|a| a["elicitation"] == "Really drop orders?"),
        "{}",
        out[0]
    );
    let (_, ready) = m.g.get("/readyz", ALICE).await;
    assert!(
        ready["mcp_upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "modern" && u["up"] == true),
        "{ready}"
    );
}

/// The official TypeScript SDK as the client (npm
/// `@modelcontextprotocol/sdk`): two agents' sessions call the upstream's
/// tools that ask their client for sampling and elicitation at the same
/// time, and each question reaches only the session that caused it; an
/// `Mcp-Name` header that lies about the body is refused and runs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_npm_sdk_client_hears_only_its_own_questions_and_header_lies_are_refused() {
    let m = Mcp::start("60s").await;
    let other_token = m.g.create_agent("other-bot", "owner@x", &[]);
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/npm/node_modules");
    let client = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.mjs");
    let run = |token: &str, who: &str| {
        let script = json!({
            "url": m.url(), "token": token,
            "answers": {"sampling": format!("sampled by {who}"),
                        "elicitation": {"name": format!("{who} the agent")}},
            "steps": [
                {"op": "list_tools"},
                {"op": "call", "tool": "everything__trigger-sampling-request",
                 "args": {"prompt": format!("question of {who}"), "maxTokens": 10}},
                {"op": "call", "tool": "everything__trigger-elicitation-request", "args": {}},
                {"op": "call", "tool": "everything__echo", "args": {"message": who}},
                {"op": "call", "tool": "everything__trigger-long-running-operation",
                 "args": {"duration": 1, "steps": 3}, "progress": true},
                {"op": "read_resource", "uri": "demo://resource/static/document/architecture.md"},
                {"op": "get_prompt", "name": "everything__simple-prompt"},
                {"op": "complete", "ref": {"type": "ref/prompt", "name": "everything__completable-prompt"},
                 "argument": {"name": "department", "value": "Eng"}},
                {"op": "set_level", "level": "debug"},
                {"op": "raw", "headers": {"Mcp-Method": "tools/call", "Mcp-Name": "everything__echo"},
                 "body": {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                          "params": {"name": "everything__get-env", "arguments": {}}}},
            ],
        });
        let (modules, client) = (modules.clone(), client.clone());
        async move {
            let out = tokio::process::Command::new("node")
                .arg(client)
                .arg(modules)
                .arg(script.to_string())
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "npm client failed: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let (a, b) = tokio::join!(run(&m.g.agent_token, "alpha"), run(&other_token, "beta"));
    for (out, me, them) in [(&a, "alpha", "beta"), (&b, "beta", "alpha")] {
        let all = out
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            out[0]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "everything__trigger-sampling-request"),
            "{all}"
        );
        assert!(
            out[1]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("sampled by {me}")),
            "{all}"
        );
        assert!(
            out[2]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("{me} the agent")),
            "{all}"
        );
        assert_eq!(out[3]["text"], format!("Echo: {me}"), "{all}");
        assert_eq!(
            out[4]["progress"].as_array().map(|p| p.len()),
            Some(3),
            "{all}"
        );
        assert!(!out[5]["text"].as_str().unwrap_or("").is_empty(), "{all}");
        assert_eq!(out[6]["messages"], 1, "{all}");
        assert_eq!(out[7]["values"], json!(["Engineering"]), "{all}");
        assert_eq!(out[8]["ok"], true, "{all}");
        assert_eq!(out[9]["status"], 400, "{all}");
        assert_eq!(out[9]["code"], -32020, "{all}");
        assert!(!all.contains(them), "{me}'s session heard of {them}: {all}");
    }
    // The lie was refused before anything was judged: no record of get-env.
    let records = m.audit_events("resource=everything").await;
    assert!(
        records.iter().all(|r| r["operation"] != "get-env"),
        "{records:?}"
    );
}

//! Runs the real `gavel` binary against a temporary data directory.

#![allow(dead_code)]

pub mod pg;

use serde_json::{Value, json};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gavel");

pub const ALICE: &str = "alice-token-0001";
pub const BOB: &str = "bob-token-0002";
pub const CAROL: &str = "carol-token-0003";
pub const OWNER: &str = "owner-token-0004";

pub const POLICIES: &str = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("no-unknown-sql") forbid(principal, action == Action::"sql.unknown", resource);
@id("ddl-needs-dba")
@approval("group:dba")
@timeout("2m")
permit(principal, action == Action::"sql.ddl", resource);
@id("dcl-needs-two-dbas")
@approval("group:dba")
@quorum("2")
permit(principal, action == Action::"sql.dcl", resource);
@id("admin-expires-fast")
@approval("group:dba")
@timeout("2s")
permit(principal, action == Action::"sql.admin", resource);
@id("prod-writes-need-security")
@approval("group:security")
permit(principal, action == Action::"sql.write", resource)
when { resource.hasTag("env") && resource.getTag("env") == "prod" };
"#;

pub fn sha(token: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "hash", token])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Gavel {
    pub dir: tempfile::TempDir,
    pub base: String,
    child: Option<Child>,
    pub http: reqwest::Client,
    pub agent_token: String,
    /// Extra environment for the gateway process (secrets it reads).
    pub env: Vec<(String, String)>,
}

impl Gavel {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gavel.toml")
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// A fresh gateway with four humans (alice and bob in dba, carol in dev,
    /// owner@x in dba: the owner of agent `bot`) and the agent `bot`.
    pub async fn start() -> Gavel {
        Gavel::start_with_hold("60s").await
    }

    /// As [`Gavel::start`], with `approvals.hold` set to `hold`.
    pub async fn start_with_hold(hold: &str) -> Gavel {
        Gavel::start_custom(hold, POLICIES, "").await
    }

    /// A gateway with the four humans and `bot`, `policies` as its only
    /// policy file and `extra` appended to the configuration.
    pub async fn start_custom(hold: &str, policies: &str, extra: &str) -> Gavel {
        Gavel::start_custom_env(hold, policies, extra, &[]).await
    }

    /// As [`Gavel::start_custom`], with `env` set for the gateway process.
    pub async fn start_custom_env(
        hold: &str,
        policies: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gavel {
        let mut g = Gavel::prepare("gw-test", hold, policies, extra, env);
        g.agent_token = g.create_agent("bot", "owner@x", &[]);
        g.launch().await;
        g
    }

    /// A gateway's directory and configuration (`gateway_id`, the four
    /// humans, `policies`, `extra`), not yet started and without agents.
    pub fn prepare(
        gateway_id: &str,
        hold: &str,
        policies: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Gavel {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            r#"
data_dir = "state"

[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
gateway_id = "{gateway_id}"

[policy]
dir = "policies"
reload_interval = "200ms"

[approvals]
hold = "{hold}"
timeout = "15m"
grant_ttl = "10m"

[[identity.humans]]
id = "alice@x"
groups = ["dba"]
token_sha256 = "{alice}"

[[identity.humans]]
id = "bob@x"
groups = ["dba", "security"]
token_sha256 = "{bob}"

[[identity.humans]]
id = "carol@x"
groups = ["dev"]
token_sha256 = "{carol}"

[[identity.humans]]
id = "owner@x"
groups = ["dba"]
token_sha256 = "{owner}"

[[resources.api]]
name = "prod-db"
kind = "postgres"
tags = {{ env = "prod" }}
"#,
            alice = sha(ALICE),
            bob = sha(BOB),
            carol = sha(CAROL),
            owner = sha(OWNER),
        ) + extra;
        std::fs::write(dir.path().join("gavel.toml"), config).unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/main.cedar"), policies).unwrap();
        Gavel {
            dir,
            base: format!("http://127.0.0.1:{port}"),
            child: None,
            http: reqwest::Client::new(),
            agent_token: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Runs `gavel agent create` and returns the token from its last line.
    pub fn create_agent(&self, name: &str, owner: &str, groups: &[&str]) -> String {
        let mut args = vec!["agent", "create", name, "--owner", owner];
        for g in groups {
            args.extend(["--group", g]);
        }
        let out = self.cli(&args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().last().unwrap().trim().to_owned()
    }

    pub fn cli(&self, args: &[&str], token: Option<&str>) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("GAVEL_CONFIG", self.config_path())
            .env("GAVEL_SERVER", &self.base)
            .env_remove("GAVEL_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("GAVEL_TOKEN", t);
        }
        cmd.output().unwrap()
    }

    pub async fn launch(&mut self) {
        let log_before = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        // A process group of its own: what gavel starts (MCP servers over
        // stdio) ends with it, however the test ends.
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config_path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = self.http.get(format!("{}/healthz", self.base)).send().await;
            // The answer must come from this gavel, not from another
            // test's that took the port first: this one says it serves.
            if health.is_ok_and(|r| r.status().is_success())
                && self
                    .log()
                    .get(log_before..)
                    .is_some_and(|l| l.contains("gavel is serving"))
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gavel exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gavel did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no graceful shutdown, nothing flushed on the way out; the
    /// processes gavel started go with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
            kill_group(c.id());
        }
    }

    /// SIGTERM: the graceful shutdown an init system would ask for.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let exit = c.wait().unwrap();
            kill_group(c.id());
            assert!(
                exit.success(),
                "gavel exited with {exit} on SIGTERM: {}",
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// `POST /api/v1/actions` as `token`.
    pub async fn act(&self, token: &str, action: &str, resource: &str, operation: &str) -> Value {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/actions",
                Some(token),
                Some(json!({"resource": resource, "action": action, "operation": operation, "intent": "test"})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// `POST /api/v1/actions?wait=60s` in the background: the agent holds
    /// its action until a decision lands.
    pub fn act_waiting(
        &self,
        token: &str,
        action: &str,
        resource: &str,
        operation: &str,
    ) -> tokio::task::JoinHandle<Value> {
        let request = self
            .http
            .post(format!("{}/api/v1/actions?wait=60s", self.base))
            .bearer_auth(token)
            .json(&json!({"resource": resource, "action": action, "operation": operation}));
        tokio::spawn(async move { request.send().await.unwrap().json::<Value>().await.unwrap() })
    }

    /// Waits until an agent's second ask for request `id` (e.g. from
    /// [`Gavel::act_waiting`]) has reached the gate: its `request_pending`
    /// record is in the audit log.
    pub async fn wait_for_reask(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, page) = self
                .get(&format!("/api/v1/audit?request_id={id}"), ALICE)
                .await;
            if page["records"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["record"]["event"] == "request_pending"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the second ask never arrived: {page}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn approve(&self, token: &str, id: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            Some(token),
            Some(json!({"comment": "ok"})),
        )
        .await
    }

    pub async fn deny(&self, token: &str, id: &str, reason: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/v1/requests/{id}/deny"),
            Some(token),
            Some(json!({"reason": reason})),
        )
        .await
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        let path: &Path = &self.policy_dir().join(name);
        // Write then rename, as editors and config managers do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Writes a policy file and waits until the running gateway has
    /// loaded it (its policy version in /readyz changed).
    #[allow(dead_code)]
    pub async fn write_policy_and_wait(&self, name: &str, text: &str) {
        let version = |v: &Value| v["policy"]["version"].clone();
        let before = version(
            &self
                .call(reqwest::Method::GET, "/readyz", None, None)
                .await
                .1,
        );
        self.write_policy(name, text);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = version(
                &self
                    .call(reqwest::Method::GET, "/readyz", None, None)
                    .await
                    .1,
            );
            if !now.is_null() && now != before {
                return;
            }
            assert!(Instant::now() < deadline, "the policy was never reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gavel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process a test started, ended with the test however it ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL to process group `leader` (what a gavel started with
/// `process_group(0)` left behind). `--`: procps's kill would read `-PID`
/// as an option and signal every process.
pub fn kill_group(leader: u32) {
    if leader > 1 {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{leader}")])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn verdict(v: &Value) -> &str {
    v["verdict"].as_str().unwrap_or("?")
}

pub fn request_id(v: &Value) -> String {
    v["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no request_id in {v}"))
        .to_owned()
}

/// A stand-in server gavel talks to (fake Slack, fake Teams, a webhook
/// consumer): `python3 tests/SCRIPT PORT ARGS… OUT_FILE`, which records one
/// JSON line per call in OUT_FILE. Killed when dropped.
pub struct FakeServer {
    child: Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeServer {
    /// Starts `script` (under `tests/`) and waits until it listens.
    pub fn start(script: &str, args: &[&str]) -> FakeServer {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("calls.jsonl");
        let port = free_port();
        let child = Command::new("python3")
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests")
                    .join(script),
            )
            .arg(port.to_string())
            .args(args)
            .arg(&out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{script} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        FakeServer {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every call recorded so far.
    pub fn recorded(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits (up to 30 s) until the recorded calls satisfy `what`.
    pub async fn wait_until(&self, what: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.recorded();
            if what(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "not recorded: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

//! Several gateways as one: three real `gavel serve` processes on one
//! PostgreSQL store. A decision made on one releases what another holds,
//! a killed gateway loses no acknowledged action and hands the checkpoint
//! signing on, and the gateways ride out their database restarting.

mod harness;

use harness::pg::{StoreDb, text};
use harness::{ALICE, FakeServer, Gavel, free_port};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOT_TOKEN: &str = "xoxb-test-token";
const SIGNING_SECRET: &str = "slack-signing-secret-for-tests";

/// gavel's own policies for these tests: reads pass, DDL waits for a DBA.
const POLICIES: &str = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("ddl-needs-dba")
@approval("group:dba")
@timeout("5m")
permit(principal, action == Action::"sql.ddl", resource);
"#;

/// Fields drop in order: the gateways stop before their database goes.
struct Gateways {
    gateways: Vec<Gavel>,
    /// Each gateway's PostgreSQL listener port.
    pg_ports: Vec<u16>,
    agent_token: String,
    _db: StoreDb,
}

/// `n` gateways (`gw-a`, `gw-b`, …) on the store `db`, each with a
/// PostgreSQL listener in front of the machine's PostgreSQL and, when
/// `slack_port` is given, the Slack channel; all sign the audit log with
/// one key (the first gateway's, copied to the others, as an operator
/// would distribute it).
async fn start(db: StoreDb, n: usize, slack_port: Option<u16>) -> Gateways {
    start_with(db, n, slack_port, "").await
}

/// As [`start`], with `audit` added to each gateway's `[audit]` section.
async fn start_with(db: StoreDb, n: usize, slack_port: Option<u16>, audit: &str) -> Gateways {
    let mut gateways = Vec::new();
    let mut pg_ports = Vec::new();
    let mut agent_token = String::new();
    for i in 0..n {
        let name = format!("gw-{}", (b'a' + i as u8) as char);
        let pg_port = free_port();
        let slack = slack_port.map_or(String::new(), |port| {
            format!(
                r#"
[[channels.slack]]
bot_token_env = "TEST_SLACK_BOT_TOKEN"
signing_secret_env = "TEST_SLACK_SIGNING_SECRET"
channel = "C0123"
routes = ["group:dba"]
api_base = "http://127.0.0.1:{port}/api"
users = {{ "U_BOB" = "bob@x" }}
"#
            )
        });
        let extra = format!(
            r#"
[storage]
url = "{url}"

[audit]
checkpoint_interval = "1s"
{audit}

[[resources.postgres]]
name = "app-db"
listen = "127.0.0.1:{pg_port}"
upstream = "postgres://postgres@127.0.0.1:5432/test"
{slack}
"#,
            url = db.url()
        );
        let mut g = Gavel::prepare(
            &name,
            "60s",
            POLICIES,
            &extra,
            &[
                ("TEST_SLACK_BOT_TOKEN", BOT_TOKEN),
                ("TEST_SLACK_SIGNING_SECRET", SIGNING_SECRET),
            ],
        );
        if i == 0 {
            agent_token = g.create_agent("bot", "owner@x", &[]);
        } else {
            let key = gateways
                .first()
                .map(|first: &Gavel| first.dir.path().join("state/audit.key"))
                .unwrap();
            std::fs::create_dir_all(g.dir.path().join("state")).unwrap();
            std::fs::copy(key, g.dir.path().join("state/audit.key")).unwrap();
        }
        g.agent_token = agent_token.clone();
        g.launch().await;
        gateways.push(g);
        pg_ports.push(pg_port);
    }
    Gateways {
        _db: db,
        gateways,
        pg_ports,
        agent_token,
    }
}

impl Gateways {
    /// psql through gateway `i`'s PostgreSQL listener as agent `bot`, in a
    /// thread; answers with its output and when it ended.
    fn psql(
        &self,
        i: usize,
        sql: &str,
    ) -> std::thread::JoinHandle<(std::process::Output, Instant)> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=127.0.0.1 port={} user=bot dbname=test",
                self.pg_ports[i]
            ))
            .args(["-c", sql])
            .env("PGPASSWORD", &self.agent_token)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null());
        std::thread::spawn(move || {
            let out = cmd.output().unwrap();
            (out, Instant::now())
        })
    }

    async fn readyz(&self, i: usize) -> (u16, Value) {
        self.gateways[i]
            .call(reqwest::Method::GET, "/readyz", None, None)
            .await
    }

    /// The pending request for `operation`, as gateway `i` lists it.
    async fn pending(&self, i: usize, operation: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, page) = self.gateways[i]
                .get("/api/v1/requests?state=pending", ALICE)
                .await;
            if let Some(r) = page["requests"].as_array().and_then(|rs| {
                rs.iter().find(|r| {
                    r["operation"]
                        .as_str()
                        .is_some_and(|o| o.contains(operation))
                })
            }) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no pending request for {operation}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The gateway that holds the checkpoint signer lease, among `alive`.
    async fn signer(&self, alive: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for &i in alive {
                if self.readyz(i).await.1["checkpoint_signer"] == true {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no gateway signs checkpoints");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `gavel audit verify` on the shared store, through gateway `i`'s
    /// configuration.
    fn verify(&self, i: usize) -> String {
        let out = self.gateways[i].cli(&["audit", "verify"], None);
        assert!(out.status.success(), "audit verify: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every audit record in the store, read offline by the CLI.
    fn records(&self, i: usize) -> Vec<Value> {
        let out = self.gateways[i].cli(&["audit", "export", "--format", "jsonl"], None);
        assert!(out.status.success(), "audit export: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn slack_signed(body: &str, ts: i64) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A statement held on gateway B's PostgreSQL listener is approved through
/// gateway A's REST API, and through A's Slack interaction endpoint, and
/// completes on B. The request reached Slack once, not once per gateway.
/// Prints approval → release across gateways (p50, p99).
#[tokio::test(flavor = "multi_thread")]
async fn a_decision_on_one_gateway_releases_a_statement_held_on_another() {
    let slack = FakeServer::start("slack/fake_slack.py", &[BOT_TOKEN]);
    let g = start(StoreDb::create(), 3, Some(slack.port)).await;
    let table = harness::pg::table("gateways");
    let mut latencies = Vec::new();
    let mut answered = Vec::new();
    for round in 0..20 {
        let sql = format!("CREATE TABLE {table}_{round} (id int)");
        let held = g.psql(1, &sql);
        let request = g.pending(0, &format!("{table}_{round}")).await;
        let id = request["id"].as_str().unwrap().to_owned();
        let approved = Instant::now();
        let (status, body) = g.gateways[0].approve(ALICE, &id).await;
        assert_eq!(status, 200, "{body}");
        answered.push(approved.elapsed());
        let (out, released) = tokio::task::spawn_blocking(move || held.join().unwrap())
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        latencies.push(released - approved);
        harness::pg::admin(&format!("DROP TABLE {table}_{round}"));
    }
    latencies.sort();
    answered.sort();
    println!(
        "approve call on gw-a answered: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&answered, 0.5).as_secs_f64() * 1e3,
        percentile(&answered, 0.99).as_secs_f64() * 1e3,
    );
    println!(
        "approval on gw-a -> statement released on gw-b: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} rounds",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len()
    );

    // Through A's Slack endpoint: the message was posted by B (which filed
    // the request), once; the button press lands on A.
    let sql = format!("CREATE TABLE {table}_slack (id int)");
    let held = g.psql(1, &sql);
    let request = g.pending(2, &format!("{table}_slack")).await;
    let id = request["id"].as_str().unwrap().to_owned();
    let posted = slack
        .wait_until(|calls| {
            calls.iter().any(|c| {
                c["method"] == "chat.postMessage" && c["body"]["blocks"].to_string().contains(&id)
            })
        })
        .await;
    let message = posted
        .iter()
        .find(|c| {
            c["method"] == "chat.postMessage" && c["body"]["blocks"].to_string().contains(&id)
        })
        .unwrap();
    let ts = message["body"]["_ts"].as_str().unwrap().to_owned();
    let click = json!({
        "type": "block_actions",
        "user": {"id": "U_BOB", "team_id": "T1"},
        "team": {"id": "T1"},
        "channel": {"id": "C0123"},
        "container": {"type": "message", "message_ts": ts, "channel_id": "C0123"},
        "trigger_id": "trigger-1",
        "actions": [{"action_id": "approve", "value": id, "block_id": "gavel_decision"}],
    });
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &click.to_string())
        .finish();
    let sent = now_secs();
    let post = |gw: &Gavel| {
        gw.http
            .post(format!("{}/integrations/slack/interactions", gw.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", sent.to_string())
            .header("x-slack-signature", slack_signed(&body, sent))
            .body(body.clone())
            .send()
    };
    assert_eq!(post(&g.gateways[0]).await.unwrap().status(), 200);
    let (out, _) = tokio::task::spawn_blocking(move || held.join().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    harness::pg::admin(&format!("DROP TABLE {table}_slack"));
    // The same signed press, replayed to another gateway: refused there
    // too (used signatures are in the store).
    assert_eq!(post(&g.gateways[2]).await.unwrap().status(), 401);
    // Posted once, by the gateway that filed it; updated by the one that
    // decided, through the message reference in the store.
    let updated = slack
        .wait_until(|calls| {
            calls
                .iter()
                .any(|c| c["method"] == "chat.update" && c["body"]["ts"] == ts.as_str())
        })
        .await;
    let posts = updated
        .iter()
        .filter(|c| {
            c["method"] == "chat.postMessage" && c["body"]["blocks"].to_string().contains(&id)
        })
        .count();
    assert_eq!(posts, 1, "one message per request, not one per gateway");

    // One log: every gateway's records, one verification.
    let records = g.records(2);
    let writers: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["gateway_id"].as_str())
        .collect();
    assert!(
        writers.contains("gw-a") && writers.contains("gw-b"),
        "{writers:?}"
    );
    let approved_on_a = records
        .iter()
        .filter(|r| r["request_id"] == id.as_str() && r["event"] == "approved")
        .collect::<Vec<_>>();
    assert_eq!(approved_on_a.len(), 1);
    assert_eq!(approved_on_a[0]["gateway_id"], "gw-a");
    let executed = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["event"] == "outcome")
        .expect("the statement's outcome is recorded");
    assert_eq!(executed["gateway_id"], "gw-b");
    // Sign what is there, then verify it offline.
    let signer = g.signer(&[0, 1, 2]).await;
    g.gateways[signer]
        .get("/api/v1/audit/checkpoint", ALICE)
        .await;
    let verified = g.verify(1);
    assert!(verified.contains("audit log verified"), "{verified}");
}

/// 16 agents act through three gateways; the checkpoint signer is killed
/// with SIGKILL in the middle. Every action a gateway acknowledged has its
/// record, the other gateways keep serving, another gateway takes the
/// signing over, and the log verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_loses_no_acknowledged_action_and_the_signer_fails_over() {
    let mut g = start(StoreDb::create(), 3, None).await;
    let victim = g.signer(&[0, 1, 2]).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut agents = Vec::new();
    for agent in 0..16 {
        let bases: Vec<String> = g.gateways.iter().map(|gw| gw.base.clone()).collect();
        let token = g.agent_token.clone();
        let acknowledged = acknowledged.clone();
        let refused = refused.clone();
        let stop = stop.clone();
        agents.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let operation = format!("SELECT {agent}, {n}");
                let base = &bases[(agent + n) % bases.len()];
                n += 1;
                let answer = http
                    .post(format!("{base}/api/v1/actions"))
                    .bearer_auth(&token)
                    .json(&json!({"resource": "prod-db", "action": "sql.read", "operation": operation}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let Ok(answer) = answer else {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let ok = answer.status().is_success();
                let body: Value = answer.json().await.unwrap_or(Value::Null);
                if ok && body["verdict"] == "allow" {
                    acknowledged.lock().unwrap().push(operation);
                } else {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = acknowledged.lock().unwrap().len();
    g.gateways[victim].kill();
    let killed = Instant::now();
    let new_signer = g.signer(&survivors).await;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in agents {
        a.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "16 agents on 3 gateways: {} actions acknowledged ({before_kill} before the kill), {} refused or cut off; checkpoint signer gw-{} took over {:.1} s after gw-{} was killed (interval 1 s)",
        acknowledged.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        (b'a' + new_signer as u8) as char,
        takeover.as_secs_f64(),
        (b'a' + victim as u8) as char,
    );
    assert!(
        acknowledged.len() > before_kill,
        "the survivors kept serving"
    );
    // Every acknowledged action has its decision record.
    let records = g.records(survivors[0]);
    let recorded: HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "decision")
        .filter_map(|r| r["operation"].as_str())
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|op| !recorded.contains(op.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged without a record: {missing:?}"
    );
    // The new signer signs past what the victim signed, and the whole log
    // verifies against every checkpoint.
    let (status, note) = g.gateways[new_signer]
        .get("/api/v1/audit/checkpoint", ALICE)
        .await;
    assert_eq!(status, 200, "{note}");
    let verified = g.verify(survivors[0]);
    assert!(verified.contains("audit log verified"), "{verified}");
    // Two interval's worth is the promise; the bound here only catches a
    // takeover that never happens.
    assert!(takeover < Duration::from_secs(30));
}

/// A PostgreSQL server of this test's own (initdb in a temporary
/// directory, as the `postgres` OS user), so restarting it disturbs no
/// other test.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .max()
            .expect("PostgreSQL server binaries in /usr/lib/postgresql");
        let bin = version.join("bin");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        Command::new("chmod")
            .arg("755")
            .arg(dir.path())
            .status()
            .unwrap();
        Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        let pg = PrivatePostgres { dir, port, bin };
        pg.as_postgres(&[
            pg.bin.join("initdb").to_str().unwrap(),
            "-D",
            pg.data().to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "gavel",
        ]);
        pg.control("start");
        pg
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn as_postgres(&self, argv: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
    }

    /// `pg_ctl start|stop|restart`, waiting until it is done.
    fn control(&self, what: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data().to_str().unwrap(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            what,
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://gavel@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// The store's PostgreSQL goes away under load and comes back: while it is
/// gone nothing is allowed (no action without its durable record),
/// `/readyz` says why, a held action keeps waiting or is refused cleanly,
/// and the gateways recover by themselves.
#[tokio::test(flavor = "multi_thread")]
async fn gateways_refuse_while_their_database_is_down_and_recover_by_themselves() {
    let server = PrivatePostgres::start();
    // Reads through the PostgreSQL listener are released before their
    // record is written: the mode that must stop releasing when the store
    // fails.
    let g = start_with(
        StoreDb::at(server.url()),
        2,
        None,
        "read_durability = \"buffered\"",
    )
    .await;
    let (reader, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=bot dbname=test password={}",
            g.pg_ports[1], g.agent_token
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    reader
        .simple_query("SELECT 'before the outage'")
        .await
        .unwrap();
    // A held action, waiting on gateway B.
    let held = g.gateways[1].act_waiting(
        &g.agent_token,
        "sql.ddl",
        "prod-db",
        "DROP TABLE during_outage",
    );
    g.pending(0, "during_outage").await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut agents = Vec::new();
    for agent in 0..8 {
        let bases: Vec<String> = g.gateways.iter().map(|gw| gw.base.clone()).collect();
        let token = g.agent_token.clone();
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        agents.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            let mut refusals = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let operation = format!("SELECT {agent}, {n}");
                let base = &bases[(agent + n) % bases.len()];
                n += 1;
                let answer = http
                    .post(format!("{base}/api/v1/actions"))
                    .bearer_auth(&token)
                    .json(&json!({"resource": "prod-db", "action": "sql.read", "operation": operation}))
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await
                    .unwrap();
                let status = answer.status().as_u16();
                let body: Value = answer.json().await.unwrap();
                if status == 200 && body["verdict"] == "allow" {
                    acknowledged.lock().unwrap().push(operation);
                } else {
                    // A clean refusal in the API's own error shape.
                    assert_eq!(status, 503, "{body}");
                    assert_eq!(body["error"]["code"], "unavailable", "{body}");
                    refusals += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            refusals
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.control("stop");
    // Down: not ready, and saying why.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, health) = g.readyz(0).await;
        if status == 503 {
            assert!(health["storage_error"].is_string(), "{health}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without its database: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = acknowledged.lock().unwrap().len();
    // An open session's buffered reads: perhaps the first slips out before
    // the failed write is noticed (the bounded loss window), then none.
    let mut released = 0;
    let mut last = Ok(());
    for i in 0..8 {
        last = reader
            .simple_query(&format!("SELECT 'during the outage {i}'"))
            .await
            .map(|_| ());
        released += usize::from(last.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_err() && released <= 2,
        "{released} reads released while the store was down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        acknowledged.lock().unwrap().len(),
        during,
        "nothing is allowed while the store is down"
    );
    server.control("start");
    // Back by themselves: ready again, and serving.
    for i in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.readyz(i).await.0 != 200 {
            assert!(Instant::now() < deadline, "gw {i} did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refusals = 0;
    for a in agents {
        refusals += a.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > during,
        "serving again after the restart"
    );
    // The held action: still waiting (then approved here) or refused
    // cleanly by the outage, never let through unapproved.
    let request = g.pending(0, "during_outage").await;
    let id = request["id"].as_str().unwrap().to_owned();
    let (status, body) = g.gateways[0].approve(ALICE, &id).await;
    assert_eq!(status, 200, "{body}");
    let held = held.await.unwrap();
    assert!(
        held["verdict"] == "allow" || held["error"]["code"] == "unavailable",
        "{held}"
    );
    println!(
        "store restart under load: {} actions allowed, {refusals} refused while PostgreSQL was down; held action: {}",
        acknowledged.len(),
        held["verdict"]
            .as_str()
            .or(held["error"]["code"].as_str())
            .unwrap_or("?")
    );
    let records = g.records(0);
    let recorded: HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "decision")
        .filter_map(|r| r["operation"].as_str())
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|op| !recorded.contains(op.as_str()))
        .collect();
    assert!(missing.is_empty(), "allowed without a record: {missing:?}");
    let signer = g.signer(&[0, 1]).await;
    g.gateways[signer]
        .get("/api/v1/audit/checkpoint", ALICE)
        .await;
    let verified = g.verify(0);
    assert!(verified.contains("audit log verified"), "{verified}");
}

/// Behind a load balancer without sticky sessions a browser meets a
/// different gateway at every step: the sign-in form shown by A is posted
/// to B, the session B starts works on C, and signing out on C ends it
/// everywhere. A request filed through B shows its Slack delivery on A.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_and_a_delivery_are_known_to_every_gateway() {
    let slack = FakeServer::start("slack/fake_slack.py", &[BOT_TOKEN]);
    let g = start(StoreDb::create(), 3, Some(slack.port)).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
    };
    let page = browser
        .get(format!("{}/login", g.gateways[0].base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let form_cookie = cookie(&page, "gavel_login").unwrap();
    let html = page.text().await.unwrap();
    let key = html
        .split("name=\"form_key\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let signed_in = browser
        .post(format!("{}/login", g.gateways[1].base))
        .header("cookie", &form_cookie)
        .form(&[("token", ALICE), ("next", "/requests"), ("form_key", &key)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        signed_in.status(),
        303,
        "{}",
        signed_in.text().await.unwrap()
    );
    let session = cookie(&signed_in, "gavel_session").unwrap();
    let requests = |i: usize| {
        browser
            .get(format!("{}/requests", g.gateways[i].base))
            .header("cookie", &session)
            .send()
    };
    let page = requests(2).await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Signed in as alice@x"), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    // The store keeps a digest of the session, never the cookie itself.
    let cookie_value = &session["gavel_session=".len()..];
    let raw = g._db.query(&format!(
        "SELECT count(*) FROM web_state WHERE value LIKE '%{cookie_value}%' OR key = '{cookie_value}'"
    ));
    let sessions = g
        ._db
        .query("SELECT count(*) FROM web_state WHERE kind = 'session'");
    assert_eq!(sessions, "1");
    assert_eq!(raw, "0");
    let out = browser
        .post(format!("{}/logout", g.gateways[2].base))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    for i in 0..3 {
        let page = requests(i).await.unwrap();
        assert_eq!(page.status(), 303, "signed out on every gateway");
    }

    // A request filed through B: B delivers it to Slack, A shows how.
    let v = g.gateways[1]
        .act(&g.agent_token, "sql.ddl", "app-db", "DROP TABLE delivered")
        .await;
    let id = harness::request_id(&v);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = g.gateways[0]
            .get(&format!("/api/v1/requests/{id}"), ALICE)
            .await;
        if view["deliveries"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["channel"] == "slack-C0123" && d["status"] == "delivered")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never showed B's delivery: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `gavel store copy` moves a gateway's whole state from its SQLite file
/// to PostgreSQL and back; `gavel audit verify` passes on each copy with
/// the same signed checkpoints, and a gateway started on the copy knows
/// the agents and requests.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_state_moves_from_sqlite_to_postgres_and_back() {
    let mut g = Gavel::start_custom("100ms", POLICIES, "").await;
    for i in 0..5 {
        g.act(
            &g.agent_token,
            "sql.read",
            "prod-db",
            &format!("SELECT {i}"),
        )
        .await;
    }
    let v = g
        .act(&g.agent_token, "sql.ddl", "prod-db", "DROP TABLE moved")
        .await;
    let id = harness::request_id(&v);
    g.stop();
    let verify = |g: &Gavel| {
        let out = g.cli(&["audit", "verify", "--json"], None);
        assert!(out.status.success(), "{}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            report["records"].clone(),
            report["checkpoints"].clone(),
            report["root"].clone(),
        )
    };
    let original = verify(&g);
    let sqlite = format!("sqlite://{}", g.dir.path().join("state/gavel.db").display());
    let db = StoreDb::create();
    let copy = |g: &Gavel, from: &str, to: &str| {
        g.cli(&["store", "copy", "--from", from, "--to", to], None)
    };
    let out = copy(&g, &sqlite, db.url());
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("identical to the original"), "{said}");
    // Into a store that holds data: refused, nothing changes.
    let again = copy(&g, &sqlite, db.url());
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        text(&again)
    );
    // The gateway's config, pointed at the copy.
    let config = std::fs::read_to_string(g.config_path()).unwrap();
    std::fs::write(
        g.config_path(),
        format!("{config}\n[storage]\nurl = \"{}\"\n", db.url()),
    )
    .unwrap();
    assert_eq!(
        verify(&g),
        original,
        "the copy verifies with the same checkpoints"
    );
    g.launch().await;
    let (status, view) = g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "pending");
    g.act(
        &g.agent_token,
        "sql.read",
        "prod-db",
        "SELECT 'on postgres'",
    )
    .await;
    g.stop();
    // And back into a new SQLite file.
    let back = g.dir.path().join("state/back.db");
    let out = copy(&g, db.url(), &format!("sqlite://{}", back.display()));
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(
        g.config_path(),
        format!(
            "{config}\n[storage]\nurl = \"sqlite://{}\"\n",
            back.display()
        ),
    )
    .unwrap();
    let (records, checkpoints, _) = verify(&g);
    assert!(records.as_u64().unwrap() > original.0.as_u64().unwrap());
    assert!(checkpoints.as_u64().unwrap() > original.1.as_u64().unwrap());
    // A password in the URL is refused without being echoed.
    let out = copy(&g, &sqlite, "postgres://gavel:hunter2@127.0.0.1/x");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
}

/// `storage.ca_file` makes gavel reach its store over TLS and verify the
/// server's certificate and name: the machine's PostgreSQL serves TLS with
/// Debian's snakeoil certificate (CN=localhost). Another CA, or a name the
/// certificate does not carry, and gavel does not connect. The password
/// comes from `storage.password_file` and shows nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_reached_over_verified_tls() {
    let ca = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    assert!(
        std::path::Path::new(ca).exists(),
        "the machine's PostgreSQL certificate"
    );
    let db = StoreDb::create();
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("db-password");
    std::fs::write(&password, "store-secret-never-shown\n").unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(dir.path().join("other-key.pem"))
        .arg("-out")
        .arg(&other_ca)
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let storage = |host: &str, ca: &std::path::Path| {
        format!(
            "[storage]\nurl = \"postgres://postgres@{host}:5432/{name}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
            password.display(),
            ca.display()
        )
    };
    // Verified: the gateway starts and its connections are encrypted.
    let mut g = Gavel::prepare(
        "gw-tls",
        "1s",
        POLICIES,
        &storage("localhost", ca.as_ref()),
        &[],
    );
    g.agent_token = g.create_agent("bot", "owner@x", &[]);
    g.launch().await;
    g.act(&g.agent_token, "sql.read", "prod-db", "SELECT 1")
        .await;
    let encrypted = harness::pg::admin(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'gavel' \
         AND a.datname LIKE 'gavel_store_%'",
    );
    let (tls, all) = encrypted.split_once('|').unwrap();
    assert!(
        all != "0" && tls == all,
        "every store connection uses TLS: {encrypted}"
    );
    g.stop();
    assert!(!g.log().contains("store-secret-never-shown"));
    // Another CA, or a name the certificate does not carry: no connection.
    for (host, ca) in [
        ("localhost", other_ca.as_path()),
        ("127.0.0.1", ca.as_ref()),
    ] {
        let config = std::fs::read_to_string(g.config_path()).unwrap();
        let start = config.find("[storage]").unwrap();
        std::fs::write(
            g.config_path(),
            format!("{}{}", &config[..start], storage(host, ca)),
        )
        .unwrap();
        let out = g.cli(&["agent", "list"], None);
        assert!(
            !out.status.success(),
            "{host} with {}: {}",
            ca.display(),
            text(&out)
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("postgres://postgres@") && !said.contains("store-secret-never-shown"),
            "{said}"
        );
    }
}

/// A gateway that cannot sign (its audit key is not the log's) never holds
/// the signer lease: it says why in `/readyz`, signs nothing, and the
/// gateway that can sign takes over again as soon as it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_cannot_sign_never_keeps_the_others_from_signing() {
    let mut g = start(StoreDb::create(), 2, None).await;
    assert_eq!(g.signer(&[0, 1]).await, 0);
    // gw-b gets a key of its own: it starts, and makes a new one.
    g.gateways[1].kill();
    std::fs::remove_file(g.gateways[1].dir.path().join("state/audit.key")).unwrap();
    let _ = std::fs::remove_file(g.gateways[1].dir.path().join("state/audit.checkpoint"));
    g.gateways[1].launch().await;
    g.gateways[0]
        .act(
            &g.agent_token,
            "sql.read",
            "prod-db",
            "SELECT 'signed by a'",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, health) = g.readyz(1).await;
        if health["audit_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not verify"))
        {
            assert_eq!(health["checkpoint_signer"], false, "{health}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gw-b never said it cannot sign: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The signer dies; gw-b keeps serving but must not take the lease.
    g.gateways[0].kill();
    let checkpoints = |g: &Gateways| -> usize {
        g._db
            .query("SELECT count(*) FROM audit_checkpoints")
            .parse()
            .unwrap()
    };
    let before = checkpoints(&g);
    for i in 0..5 {
        g.gateways[1]
            .act(
                &g.agent_token,
                "sql.read",
                "prod-db",
                &format!("SELECT {i}"),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(g.readyz(1).await.1["checkpoint_signer"], false);
    assert_eq!(checkpoints(&g), before, "nothing signed with the wrong key");
    // gw-a comes back and signs everything, gw-b's records included.
    g.gateways[0].launch().await;
    assert_eq!(g.signer(&[0, 1]).await, 0);
    let (status, note) = g.gateways[0].get("/api/v1/audit/checkpoint", ALICE).await;
    assert_eq!(status, 200, "{note}");
    let size: u64 = g
        ._db
        .query("SELECT count(*) FROM audit_log")
        .parse()
        .unwrap();
    let signed: u64 = g
        ._db
        .query("SELECT max(size) FROM audit_checkpoints")
        .parse()
        .unwrap();
    assert!(signed + 2 >= size, "signed {signed} of {size}");
    assert!(checkpoints(&g) > before);
}

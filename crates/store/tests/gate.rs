//! The gate and approvals over both real stores (SQLite and the machine's
//! PostgreSQL) and real Cedar policies: concurrency, restarts, expiry,
//! append-only audit. One suite: every test runs against each backend.

use gavel_core::*;
use gavel_policy::CedarEngine;
use gavel_store::{PostgresAccess, Storage, StorageUrl};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

struct ManualClock(AtomicI64);
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
impl ManualClock {
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

const POLICY: &str = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("ddl-needs-dba")
@approval("group:dba")
@quorum("2")
@timeout("60s")
permit(principal, action == Action::"sql.ddl", resource);
"#;

/// A PostgreSQL database of its own for one test, dropped afterwards.
/// The server is `GAVEL_TEST_PG_HOST` (default 127.0.0.1:5432), reached as
/// the OS user with trust auth, as on the CI machine.
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    fn create() -> TestDatabase {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "gavel_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {name}"));
        TestDatabase { name }
    }

    fn url(&self) -> String {
        format!("postgres://{}@{}/{}", pg_user(), pg_host(), self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The OS user, whom trust auth lets in (sqlx does not default to it).
fn pg_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn pg_host() -> String {
    std::env::var("GAVEL_TEST_PG_HOST").unwrap_or_else(|_| "127.0.0.1:5432".into())
}

fn psql(sql: &str) {
    let (host, port) = pg_host()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap_or_else(|| (pg_host(), "5432".into()));
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Env {
    _dir: tempfile::TempDir,
    url: StorageUrl,
    db: Option<TestDatabase>,
    policies: std::path::PathBuf,
    clock: Arc<ManualClock>,
}

impl Env {
    fn sqlite() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::Sqlite(dir.path().join("gavel.db"));
        Env::with(dir, url, None)
    }

    fn postgres() -> Env {
        let db = TestDatabase::create();
        let url = StorageUrl::parse(&db.url()).unwrap();
        Env::with(tempfile::tempdir().unwrap(), url, Some(db))
    }

    fn with(dir: tempfile::TempDir, url: StorageUrl, db: Option<TestDatabase>) -> Env {
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("p.cedar"), POLICY).unwrap();
        Env {
            url,
            db,
            policies,
            _dir: dir,
            clock: Arc::new(ManualClock(AtomicI64::new(1_000_000))),
        }
    }

    /// A new connection to the store: another gateway, or this one after
    /// a restart.
    async fn open(&self) -> Storage {
        Storage::open(&self.url, &PostgresAccess::default())
            .await
            .unwrap()
    }

    async fn gate(&self) -> (Gate, Storage) {
        self.gateway("test-gw").await
    }

    /// A gate on its own connection to the store, named `gateway_id` in
    /// the records it writes.
    async fn gateway(&self, gateway_id: &str) -> (Gate, Storage) {
        let store = self.open().await;
        let gate = Gate::new(
            Arc::new(CedarEngine::load(&self.policies).unwrap()),
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            self.clock.clone(),
            GateConfig {
                default_timeout: Duration::from_secs(900),
                grant_ttl: Duration::from_secs(600),
                gateway_id: gateway_id.into(),
                public_url: "http://127.0.0.1:8470".into(),
            },
            Vec::new(),
        );
        (gate, store)
    }

    /// Runs raw SQL on the store's database, bypassing gavel (as an
    /// attacker or a failing disk would): `sqlite` or `postgres`, whichever
    /// this backend speaks.
    async fn raw(&self, sqlite: &str, postgres: &str) -> Result<(), String> {
        match &self.url {
            StorageUrl::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sqlite.to_owned()))
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            StorageUrl::Postgres(_) => {
                let url = self.db.as_ref().unwrap().url();
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(postgres.to_owned()))
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Runs each named test (an `async fn(Env)`) once on SQLite and once on
/// PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::Env::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::Env::postgres()).await
                }
            }
        )*
    };
}

fn agent() -> Principal {
    Principal::Agent {
        id: "bot".into(),
        owner: HumanId::from("owner@x"),
        groups: vec![],
        on_behalf_of: None,
    }
}

fn dba(id: &str) -> Principal {
    Principal::Human(Human {
        id: HumanId::from(id),
        groups: vec!["dba".into()],
    })
}

fn ddl(op: &str) -> Action {
    Action {
        principal: agent(),
        resource: Resource {
            name: "db".into(),
            kind: "postgres".into(),
            tags: Default::default(),
        },
        class: ActionClass::SqlDdl,
        operation: op.into(),
        details: serde_json::json!({}),
        intent: "migrate".into(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "test".into(),
        source: Some("127.0.0.1".into()),
    }
}

fn pending_id(v: Verdict) -> RequestId {
    match v {
        Verdict::Pending(r) => r.id,
        other => panic!("expected pending, got {other:?}"),
    }
}

async fn a_grant_is_spent_exactly_once_under_concurrent_retries(env: Env) {
    let (gate, _) = env.gate().await;
    let id = pending_id(gate.check(ddl("DROP TABLE t")).await.unwrap());
    gate.approvals()
        .decide(&id, &dba("a@x"), Decision::Approve, "")
        .await
        .unwrap();
    let r = gate
        .approvals()
        .decide(&id, &dba("b@x"), Decision::Approve, "ok")
        .await
        .unwrap();
    assert_eq!(r.state, RequestState::Approved);

    let mut tasks = Vec::new();
    for _ in 0..16 {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            gate.check(ddl("DROP TABLE t")).await.unwrap()
        }));
    }
    let mut allowed = 0;
    let mut pending = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Verdict::Allow(p) => {
                assert_eq!(p.request_id(), Some(&id));
                allowed += 1;
                p.finish(gavel_core::Outcome::Succeeded {
                    detail: "DROP TABLE".into(),
                });
            }
            Verdict::Pending(r) => {
                pending.insert(r.id.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(allowed, 1, "the grant must be spent exactly once");
    // The losers wait on one fresh request, not one each.
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(!pending.contains(&id));
    let spent = gate.approvals().get(&id).await.unwrap().unwrap();
    assert_eq!(spent.state, RequestState::Executed);
}

async fn racing_reviewers_are_all_counted_once(env: Env) {
    let (gate, _) = env.gate().await;
    let id = pending_id(gate.check(ddl("ALTER TABLE t ADD c int")).await.unwrap());
    let mut tasks = Vec::new();
    for who in ["a@x", "b@x", "c@x", "a@x"] {
        let gate = gate.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            gate.approvals()
                .decide(&id, &dba(who), Decision::Approve, "")
                .await
        }));
    }
    let results: Vec<_> = futures_join(tasks).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 2,
        "quorum 2 is reached by exactly two landing approvals: {results:?}"
    );
    let r = gate.approvals().get(&id).await.unwrap().unwrap();
    assert_eq!(r.state, RequestState::Approved);
    assert_eq!(r.reviews.len(), 2);
    // Losing writers leave no record of a change that did not happen.
    let store = env.open().await;
    let landed = store
        .audit_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, r)| matches!(r.event, AuditEvent::Reviewed | AuditEvent::Approved))
        .count();
    assert_eq!(landed, 2);
}

async fn a_state_change_is_never_durable_without_its_audit_record(env: Env) {
    let (gate, store) = env.gate().await;
    let id = pending_id(gate.check(ddl("DROP TABLE atomic")).await.unwrap());
    gate.approvals()
        .decide(&id, &dba("a@x"), Decision::Approve, "")
        .await
        .unwrap();
    // Make the audit append of the quorum-completing approval fail, as a
    // full disk or an I/O error would.
    env.raw(
        "CREATE TRIGGER inject_failure BEFORE INSERT ON audit_log \
         WHEN json_extract(NEW.record, '$.event') = 'approved' \
         BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END",
        "CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF convert_from(NEW.record, 'UTF8')::jsonb ->> 'event' = 'approved' THEN \
         RAISE EXCEPTION 'injected audit failure'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER inject_failure BEFORE INSERT ON audit_log \
         FOR EACH ROW EXECUTE FUNCTION inject_failure();",
    )
    .await
    .unwrap();
    let err = gate
        .approvals()
        .decide(&id, &dba("b@x"), Decision::Approve, "")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected audit failure"), "{err}");
    let r = gate.approvals().get(&id).await.unwrap().unwrap();
    assert_eq!(
        r.state,
        RequestState::Pending,
        "the approval must roll back with its record"
    );
    assert_eq!(r.reviews.len(), 1);
    assert!(matches!(
        gate.check(ddl("DROP TABLE atomic")).await.unwrap(),
        Verdict::Pending(_)
    ));
    env.raw(
        "DROP TRIGGER inject_failure",
        "DROP TRIGGER inject_failure ON audit_log",
    )
    .await
    .unwrap();
    let r = gate
        .approvals()
        .decide(&id, &dba("b@x"), Decision::Approve, "")
        .await
        .unwrap();
    assert_eq!(r.state, RequestState::Approved);
    let events: Vec<AuditEvent> = store
        .audit_records()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.event)
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == AuditEvent::Approved)
            .count(),
        1,
        "{events:?}"
    );
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn pending_requests_reviews_and_grants_survive_reopening(env: Env) {
    let (pending, approved) = {
        let (gate, _) = env.gate().await;
        let p = pending_id(gate.check(ddl("DROP TABLE a")).await.unwrap());
        gate.approvals()
            .decide(&p, &dba("a@x"), Decision::Approve, "first")
            .await
            .unwrap();
        let g = pending_id(gate.check(ddl("DROP TABLE b")).await.unwrap());
        gate.approvals()
            .decide(&g, &dba("a@x"), Decision::Approve, "")
            .await
            .unwrap();
        gate.approvals()
            .decide(&g, &dba("b@x"), Decision::Approve, "")
            .await
            .unwrap();
        (p, g)
    };
    let (gate, _) = env.gate().await;
    let p = gate.approvals().get(&pending).await.unwrap().unwrap();
    assert_eq!(p.state, RequestState::Pending);
    assert_eq!(p.reviews.len(), 1);
    assert_eq!(p.reviews[0].comment, "first");
    let done = gate
        .approvals()
        .decide(&pending, &dba("b@x"), Decision::Approve, "")
        .await
        .unwrap();
    assert_eq!(done.state, RequestState::Approved);
    assert!(
        matches!(gate.check(ddl("DROP TABLE b")).await.unwrap(), Verdict::Allow(p) if p.request_id() == Some(&approved))
    );
    // The expiry timer survives too.
    env.clock.advance(61_000);
    let again = gate.approvals().get(&approved).await.unwrap().unwrap();
    assert_eq!(again.state, RequestState::Executed);
}

async fn sweeper_expires_requests_and_unused_grants(env: Env) {
    let (gate, _) = env.gate().await;
    let stale = pending_id(gate.check(ddl("DROP TABLE x")).await.unwrap());
    let granted = pending_id(gate.check(ddl("DROP TABLE y")).await.unwrap());
    gate.approvals()
        .decide(&granted, &dba("a@x"), Decision::Approve, "")
        .await
        .unwrap();
    gate.approvals()
        .decide(&granted, &dba("b@x"), Decision::Approve, "")
        .await
        .unwrap();
    env.clock.advance(59_000);
    assert_eq!(gate.approvals().expire_due().await.unwrap(), 0);
    env.clock.advance(1_000);
    assert_eq!(gate.approvals().expire_due().await.unwrap(), 1);
    let s = gate.approvals().get(&stale).await.unwrap().unwrap();
    assert_eq!(s.state, RequestState::Expired);
    // Decisions on an expired request are refused as no longer pending.
    let err = gate
        .approvals()
        .decide(&stale, &dba("c@x"), Decision::Approve, "")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DecideFailure::Refused(DecideError::NotPending(RequestState::Expired))
        ),
        "{err:?}"
    );
    // The grant (TTL 600 s) expires unused.
    env.clock.advance(600_000);
    assert_eq!(gate.approvals().expire_due().await.unwrap(), 1);
    assert_eq!(
        gate.approvals().get(&granted).await.unwrap().unwrap().state,
        RequestState::Expired
    );
    // And the retry needs a new approval.
    let fresh = pending_id(gate.check(ddl("DROP TABLE y")).await.unwrap());
    assert_ne!(fresh, granted);
}

async fn waiters_wake_when_a_decision_lands(env: Env) {
    let (gate, _) = env.gate().await;
    let id = pending_id(gate.check(ddl("DROP TABLE w")).await.unwrap());
    let waiter = {
        let gate = gate.clone();
        let id = id.clone();
        tokio::spawn(async move { gate.approvals().wait(&id, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    gate.approvals()
        .decide(&id, &dba("a@x"), Decision::Deny, "no")
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("waiter woke")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(woke.state, RequestState::Denied);
}

async fn every_step_is_audited_and_the_log_refuses_changes(env: Env) {
    let (gate, store) = env.gate().await;
    let mut read = ddl("SELECT 1");
    read.class = ActionClass::SqlRead;
    let Verdict::Allow(permitted) = gate.check(read).await.unwrap() else {
        panic!("a read is allowed")
    };
    // Not forwarded: dropping the proof records that it did not run.
    drop(permitted);
    let id = pending_id(gate.check(ddl("DROP TABLE z")).await.unwrap());
    let _ = gate
        .approvals()
        .decide(
            &id,
            &Principal::Human(Human {
                id: "owner@x".into(),
                groups: vec!["dba".into()],
            }),
            Decision::Approve,
            "",
        )
        .await
        .unwrap_err();
    gate.approvals()
        .decide(&id, &dba("a@x"), Decision::Deny, "too risky")
        .await
        .unwrap();
    // Outcomes are queued, not awaited: where the dropped read's lands
    // among the others depends on the group commit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (events, outcomes): (Vec<AuditEvent>, Vec<String>) = loop {
        let records = store.audit_records().await.unwrap();
        let outcomes: Vec<String> = records
            .iter()
            .filter(|(_, r)| r.event == AuditEvent::Outcome)
            .map(|(_, r)| r.outcome.clone().unwrap_or_default())
            .collect();
        if !outcomes.is_empty() || std::time::Instant::now() > deadline {
            let events = records
                .into_iter()
                .map(|(_, r)| r.event)
                .filter(|e| *e != AuditEvent::Outcome)
                .collect();
            break (events, outcomes);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(
        events,
        vec![
            AuditEvent::Decision,
            AuditEvent::RequestCreated,
            AuditEvent::ReviewRefused,
            AuditEvent::Denied
        ]
    );
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert!(outcomes[0].starts_with("failed: not run"), "{outcomes:?}");
    let records: Vec<_> = store
        .audit_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, r)| r.event != AuditEvent::Outcome)
        .collect();
    assert_eq!(records[0].1.decision.as_deref(), Some("allow"));
    assert_eq!(records[0].1.policies, vec!["reads".to_string()]);
    assert_eq!(records[1].1.request_id.as_ref(), Some(&id));
    assert_eq!(records[3].1.comment.as_deref(), Some("too risky"));
    assert_eq!(records[3].1.gateway_id, "test-gw");

    for (sqlite, postgres) in [
        (
            "UPDATE audit_log SET time = 0 WHERE seq = 1",
            "UPDATE audit_log SET time = 0 WHERE seq = 1",
        ),
        ("DELETE FROM audit_log", "DELETE FROM audit_log"),
        ("DELETE FROM audit_log", "TRUNCATE audit_log"),
    ] {
        let refused = env.raw(sqlite, postgres).await.unwrap_err();
        assert!(refused.contains("append-only"), "{refused}");
    }
}

async fn agents_are_stored_by_token_hash_and_revocable(env: Env) {
    let (_, store) = env.gate().await;
    let record = AgentRecord {
        name: "bot".into(),
        owner: "owner@x".into(),
        groups: vec!["agents".into()],
        created_at: Timestamp(1),
        expires_at: None,
        revoked_at: None,
    };
    store.create_agent(&record, "aa11").await.unwrap();
    let dup = store.create_agent(&record, "bb22").await.unwrap_err();
    assert!(matches!(dup, Error::Invalid(_)), "{dup}");
    assert_eq!(
        store.agent_by_token("aa11").await.unwrap().unwrap().groups,
        vec!["agents".to_string()]
    );
    assert!(store.agent_by_token("bb22").await.unwrap().is_none());
    assert!(store.revoke_agent("bot", Timestamp(5)).await.unwrap());
    assert!(!store.revoke_agent("bot", Timestamp(6)).await.unwrap());
    let revoked = store.agent_by_token("aa11").await.unwrap().unwrap();
    assert!(!revoked.is_active(Timestamp(7)));
    if let StorageUrl::Sqlite(path) = &env.url {
        let raw = std::fs::read(path).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("plaintext-token"));
    }
}

async fn waiters_see_decisions_made_by_another_process_on_the_same_store(env: Env) {
    let (here, _) = env.gate().await;
    let (elsewhere, _) = env.gate().await; // its own pool and its own wake-ups
    let id = pending_id(here.check(ddl("DROP TABLE shared")).await.unwrap());
    let waiter = {
        let here = here.clone();
        let id = id.clone();
        tokio::spawn(async move { here.approvals().wait(&id, Duration::from_secs(60)).await })
    };
    tokio::task::yield_now().await;
    elsewhere
        .approvals()
        .decide(&id, &dba("a@x"), Decision::Deny, "no")
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter saw the other gateway's decision")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(woke.state, RequestState::Denied);
}

/// A one-time key (a chat request's signature) is good once, for every
/// gate on the store and after a restart, until it expires; concurrent
/// uses of the same key let exactly one through.
async fn a_one_time_key_is_good_once_across_restarts_until_it_expires(env: Env) {
    let (gate, _) = env.gate().await;
    let keep = Duration::from_secs(600);
    let approvals = gate.approvals().clone();
    assert!(
        approvals
            .use_once("slack-signature", "v0=abc", keep)
            .await
            .unwrap()
    );
    assert!(
        !approvals
            .use_once("slack-signature", "v0=abc", keep)
            .await
            .unwrap()
    );
    // Another scope is another key.
    assert!(
        approvals
            .use_once("teams-token", "v0=abc", keep)
            .await
            .unwrap()
    );
    drop(gate);
    let (gate, _) = env.gate().await;
    let approvals = gate.approvals().clone();
    assert!(
        !approvals
            .use_once("slack-signature", "v0=abc", keep)
            .await
            .unwrap()
    );
    // Spawned together, then counted.
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let a = approvals.clone();
            tokio::spawn(async move {
                a.use_once("slack-signature", "v0=race", keep)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for t in tries {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    // Past its time it is forgotten.
    env.clock.advance(601_000);
    assert!(
        approvals
            .use_once("slack-signature", "v0=abc", keep)
            .await
            .unwrap()
    );
}

/// Three gateways on one store, each allowing reads (their decision
/// records go through that gateway's group commit) and filing requests
/// (appended inside the request's transaction), all at once: one log,
/// positions 0..n without a gap, every leaf hash right, every gateway's
/// records there and named.
async fn several_gateways_write_one_gap_free_log(env: Env) {
    let mut gates = Vec::new();
    for name in ["gw-a", "gw-b", "gw-c"] {
        gates.push((name, env.gateway(name).await.0));
    }
    let mut tasks = Vec::new();
    for (name, gate) in &gates {
        for i in 0..40 {
            let gate = gate.clone();
            let name = *name;
            tasks.push(tokio::spawn(async move {
                let mut read = ddl(&format!("SELECT {i} -- {name}"));
                read.class = ActionClass::SqlRead;
                let Verdict::Allow(p) = gate.check(read).await.unwrap() else {
                    panic!("reads are allowed")
                };
                p.finish(Outcome::Succeeded {
                    detail: "SELECT 1".into(),
                });
                if i % 8 == 0 {
                    pending_id(
                        gate.check(ddl(&format!("DROP TABLE t{i}_{name}")))
                            .await
                            .unwrap(),
                    );
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 120 decisions, 120 outcomes (queued, not awaited), 15 requests.
    let store = env.open().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let stored = store.audit_stored(0, u64::MAX).await.unwrap();
        let outcomes = stored
            .iter()
            .filter(|r| gavel_audit::parse_leaf(&r.data).unwrap().1.event == AuditEvent::Outcome)
            .count();
        if outcomes >= 120 || std::time::Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "positions are gap-free");
        assert_eq!(gavel_audit::leaf_hash(&r.data), r.leaf_hash);
        assert_eq!(gavel_audit::leaf_seq(&r.data), Some(r.seq));
        // Exactly the bytes gavel's own serializer makes for this record
        // at this position (PostgreSQL writes the position prefix itself).
        let (_, record) = gavel_audit::parse_leaf(&r.data).unwrap();
        assert_eq!(r.data, gavel_audit::leaf_data(r.seq, &record));
    }
    let records: Vec<AuditRecord> = stored
        .iter()
        .map(|r| gavel_audit::parse_leaf(&r.data).unwrap().1)
        .collect();
    for name in ["gw-a", "gw-b", "gw-c"] {
        let mine = |event: AuditEvent| {
            records
                .iter()
                .filter(|r| r.gateway_id == name && r.event == event)
                .count()
        };
        assert_eq!(mine(AuditEvent::Outcome), 40, "{name}");
        assert_eq!(mine(AuditEvent::RequestCreated), 5, "{name}");
    }
    assert_eq!(store.audit_size().await.unwrap(), stored.len() as u64);
}

/// Records too large to send in one statement together (a long SQL text
/// each) are still one batch: contiguous positions, exact bytes.
async fn a_batch_of_large_records_keeps_its_positions(env: Env) {
    let (gate, store) = env.gate().await;
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut read = ddl(&format!("SELECT '{}' -- {i}", "x".repeat(3_000)));
                read.class = ActionClass::SqlRead;
                let Verdict::Allow(p) = gate.check(read).await.unwrap() else {
                    panic!("reads are allowed")
                };
                p.finish(Outcome::Succeeded {
                    detail: "SELECT 1".into(),
                });
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let stored = store.audit_stored(0, u64::MAX).await.unwrap();
        if stored.len() >= 96 || std::time::Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stored.len(), 96);
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        let (_, record) = gavel_audit::parse_leaf(&r.data).unwrap();
        assert_eq!(r.data, gavel_audit::leaf_data(r.seq, &record));
        assert_eq!(gavel_audit::leaf_hash(&r.data), r.leaf_hash);
    }
}

/// Of the gateways sharing a store, one holds a lease at a time; it
/// renews it, and another takes it once it runs out or is given up.
async fn one_gateway_holds_a_lease_at_a_time(env: Env) {
    let a = env.open().await;
    let b = env.open().await;
    let t = |ms: i64| Timestamp(1_000_000 + ms);
    assert!(
        a.try_lease("audit-signer", "gw-a/1", t(0), t(5_000))
            .await
            .unwrap()
    );
    assert!(
        !b.try_lease("audit-signer", "gw-b/1", t(1), t(5_001))
            .await
            .unwrap()
    );
    // Renewed by its holder, so still not free at the first expiry.
    assert!(
        a.try_lease("audit-signer", "gw-a/1", t(2_000), t(7_000))
            .await
            .unwrap()
    );
    assert!(
        !b.try_lease("audit-signer", "gw-b/1", t(5_500), t(10_500))
            .await
            .unwrap()
    );
    // The holder died: taken over once its lease ran out.
    assert!(
        b.try_lease("audit-signer", "gw-b/1", t(7_000), t(12_000))
            .await
            .unwrap()
    );
    assert!(
        !a.try_lease("audit-signer", "gw-a/1", t(7_001), t(12_001))
            .await
            .unwrap()
    );
    // Given up: free at once.
    b.release_lease("audit-signer", "gw-b/1").await.unwrap();
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                s.try_lease("audit-signer", &format!("racer/{i}"), t(8_000), t(13_000))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one racer takes a free lease");
}

/// Sign-ins in flight are capped however many gateways add them at once:
/// a flood of unauthenticated sign-in starts cannot grow the table without
/// bound.
async fn the_sign_in_cap_holds_under_concurrent_writers(env: Env) {
    let stores = [
        env.open().await,
        env.open().await,
        env.open().await,
        env.open().await,
    ];
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                store
                    .put_web_state(
                        "sign_in",
                        &format!("k{i}"),
                        "{}",
                        Timestamp(10_000 + i as i64),
                        Timestamp(1),
                        10,
                    )
                    .await
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        // SQLite may refuse a writer that waited past its busy timeout;
        // that refuses one sign-in, it never overfills the table.
        failed += usize::from(t.await.unwrap().is_err());
    }
    assert!(failed < 200);
    let mut kept = 0;
    for i in 0..200 {
        if stores[0]
            .web_state("sign_in", &format!("k{i}"), Timestamp(2))
            .await
            .unwrap()
            .is_some()
        {
            kept += 1;
        }
    }
    assert!(kept <= 10, "{kept} sign-ins kept past the cap of 10");
    assert!(kept > 0);
    // A sign-in is taken once, by whichever gateway its callback reaches
    // first; expired ones are not taken at all.
    stores[0]
        .put_web_state(
            "sign_in",
            "once",
            "{\"n\":1}",
            Timestamp(5_000),
            Timestamp(2),
            10,
        )
        .await
        .unwrap();
    let takes: Vec<_> = stores
        .iter()
        .cloned()
        .map(|s| {
            tokio::spawn(async move {
                s.take_web_state("sign_in", "once", Timestamp(3))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut taken = 0;
    for t in takes {
        taken += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(taken, 1);
    stores[1]
        .put_web_state("sign_in", "late", "{}", Timestamp(5_000), Timestamp(2), 10)
        .await
        .unwrap();
    assert!(
        stores[2]
            .take_web_state("sign_in", "late", Timestamp(5_000))
            .await
            .unwrap()
            .is_none()
    );
}

/// A whole state moves from SQLite to PostgreSQL and back, audit log
/// byte for byte; a copy into a store that holds data is refused.
#[tokio::test]
async fn a_store_copies_to_postgres_and_back_byte_for_byte() {
    let sqlite = Env::sqlite();
    let (gate, original) = sqlite.gate().await;
    let id = pending_id(gate.check(ddl("DROP TABLE copied")).await.unwrap());
    gate.approvals()
        .decide(&id, &dba("a@x"), Decision::Approve, "looks fine")
        .await
        .unwrap();
    original
        .create_agent(
            &AgentRecord {
                name: "bot".into(),
                owner: "owner@x".into(),
                groups: vec!["agents".into()],
                created_at: Timestamp(1),
                expires_at: None,
                revoked_at: None,
            },
            "aa11",
        )
        .await
        .unwrap();
    let root = [7u8; 32];
    original
        .insert_checkpoint(3, &root, "a signed note\n", Timestamp(5))
        .await
        .unwrap();
    let postgres = Env::postgres();
    let pg = postgres.open().await;
    let report = gavel_store::copy_store(&original, &pg).await.unwrap();
    assert_eq!(report.rows("requests"), 1);
    assert_eq!(report.rows("reviews"), 1);
    assert_eq!(report.rows("agents"), 1);
    assert_eq!(report.rows("audit_checkpoints"), 1);
    let log = original.audit_stored(0, u64::MAX).await.unwrap();
    let moved = pg.audit_stored(0, u64::MAX).await.unwrap();
    assert_eq!(log, moved);
    assert_eq!(report.rows("audit_log"), log.len() as u64);
    let r = pg.get_request(&id).await.unwrap().unwrap();
    assert_eq!(r.reviews.len(), 1);
    assert_eq!(r.reviews[0].comment, "looks fine");
    assert!(pg.agent_by_token("aa11").await.unwrap().is_some());
    // The copy takes over: its next record goes right after the copied log.
    let (pg_gate, _) = postgres.gate().await;
    pending_id(pg_gate.check(ddl("DROP TABLE after_copy")).await.unwrap());
    let grown = pg.audit_stored(0, u64::MAX).await.unwrap();
    assert_eq!(grown.len(), log.len() + 1);
    assert_eq!(grown.last().unwrap().seq, log.len() as u64);
    // And back, into a fresh SQLite file.
    let back = Env::sqlite();
    let back_store = back.open().await;
    gavel_store::copy_store(&pg, &back_store).await.unwrap();
    assert_eq!(back_store.audit_stored(0, u64::MAX).await.unwrap(), grown);
    assert_eq!(
        back_store.checkpoints().await.unwrap(),
        original.checkpoints().await.unwrap()
    );
    // Never into a store with data in it.
    let refused = gavel_store::copy_store(&original, &pg).await.unwrap_err();
    assert!(refused.to_string().contains("not empty"), "{refused}");
}

/// A decision committed through one gateway's connection is announced to
/// every gateway listening on the store (LISTEN/NOTIFY), with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_one_gateway_is_announced_to_the_others() {
    let env = Env::postgres();
    let (deciding, _) = env.gateway("gw-a").await;
    let Storage::Postgres(listening) = env.open().await else {
        panic!("a PostgreSQL store")
    };
    let (heard, mut hear) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        listening
            .watch_requests(move |id, state| {
                let _ = heard.send((id, state));
            })
            .await
    });
    // The listener must be listening before the change: retry until the
    // first announcement (a request being filed) arrives.
    let mut n = 0;
    let id = loop {
        let id = pending_id(
            deciding
                .check(ddl(&format!("DROP TABLE heard{n}")))
                .await
                .unwrap(),
        );
        match tokio::time::timeout(Duration::from_secs(2), hear.recv()).await {
            Ok(Some((got, RequestState::Pending))) if got == id => break id,
            _ => n += 1,
        }
        assert!(n < 10, "no announcement of a new request");
    };
    deciding
        .approvals()
        .decide(&id, &dba("a@x"), Decision::Deny, "no")
        .await
        .unwrap();
    let (got, state) = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (got, state) = hear.recv().await.unwrap();
            if got == id {
                return (got, state);
            }
        }
    })
    .await
    .expect("the denial is announced");
    assert_eq!((got, state), (id, RequestState::Denied));
    listener.abort();
}

on_both_backends!(
    a_grant_is_spent_exactly_once_under_concurrent_retries,
    racing_reviewers_are_all_counted_once,
    a_state_change_is_never_durable_without_its_audit_record,
    pending_requests_reviews_and_grants_survive_reopening,
    sweeper_expires_requests_and_unused_grants,
    waiters_wake_when_a_decision_lands,
    every_step_is_audited_and_the_log_refuses_changes,
    agents_are_stored_by_token_hash_and_revocable,
    waiters_see_decisions_made_by_another_process_on_the_same_store,
    a_one_time_key_is_good_once_across_restarts_until_it_expires,
    several_gateways_write_one_gap_free_log,
    one_gateway_holds_a_lease_at_a_time,
    the_sign_in_cap_holds_under_concurrent_writers,
    a_batch_of_large_records_keeps_its_positions
);

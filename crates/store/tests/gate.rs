//! The gate and approvals over the real SQLite store and real Cedar
//! policies: concurrency, restarts, expiry, append-only audit.

use gavel_core::*;
use gavel_policy::CedarEngine;
use gavel_store::SqliteStore;
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

struct Env {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    policies: std::path::PathBuf,
    clock: Arc<ManualClock>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("p.cedar"), POLICY).unwrap();
        Env {
            db: dir.path().join("gavel.db"),
            policies,
            _dir: dir,
            clock: Arc::new(ManualClock(AtomicI64::new(1_000_000))),
        }
    }

    async fn gate(&self) -> (Gate, SqliteStore) {
        let store = SqliteStore::open(&self.db).await.unwrap();
        let gate = Gate::new(
            Arc::new(CedarEngine::load(&self.policies).unwrap()),
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            self.clock.clone(),
            GateConfig {
                default_timeout: Duration::from_secs(900),
                grant_ttl: Duration::from_secs(600),
                gateway_id: "test-gw".into(),
                public_url: "http://127.0.0.1:8470".into(),
            },
            Vec::new(),
        );
        (gate, store)
    }
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

#[tokio::test]
async fn a_grant_is_spent_exactly_once_under_concurrent_retries() {
    let env = Env::new();
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

#[tokio::test]
async fn racing_reviewers_are_all_counted_once() {
    let env = Env::new();
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
    let store = SqliteStore::open(&env.db).await.unwrap();
    let landed = store
        .audit_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, r)| matches!(r.event, AuditEvent::Reviewed | AuditEvent::Approved))
        .count();
    assert_eq!(landed, 2);
}

#[tokio::test]
async fn a_state_change_is_never_durable_without_its_audit_record() {
    let env = Env::new();
    let (gate, store) = env.gate().await;
    let id = pending_id(gate.check(ddl("DROP TABLE atomic")).await.unwrap());
    gate.approvals()
        .decide(&id, &dba("a@x"), Decision::Approve, "")
        .await
        .unwrap();
    // Make the audit append of the quorum-completing approval fail, as a
    // full disk or an I/O error would.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", env.db.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER inject_failure BEFORE INSERT ON audit_log \
         WHEN json_extract(NEW.record, '$.event') = 'approved' \
         BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END",
    )
    .execute(&pool)
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
    sqlx::query("DROP TRIGGER inject_failure")
        .execute(&pool)
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

#[tokio::test]
async fn pending_requests_reviews_and_grants_survive_reopening() {
    let env = Env::new();
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

#[tokio::test]
async fn sweeper_expires_requests_and_unused_grants() {
    let env = Env::new();
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

#[tokio::test]
async fn waiters_wake_when_a_decision_lands() {
    let env = Env::new();
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

#[tokio::test]
async fn every_step_is_audited_and_the_log_refuses_changes() {
    let env = Env::new();
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

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", env.db.display()))
        .await
        .unwrap();
    let update = sqlx::query("UPDATE audit_log SET time = 0 WHERE seq = 1")
        .execute(&pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM audit_log").execute(&pool).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn agents_are_stored_by_token_hash_and_revocable() {
    let env = Env::new();
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
    let raw = std::fs::read(&env.db).unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("plaintext-token"));
}

#[tokio::test]
async fn waiters_see_decisions_made_by_another_process_on_the_same_store() {
    let env = Env::new();
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
#[tokio::test]
async fn a_one_time_key_is_good_once_across_restarts_until_it_expires() {
    let env = Env::new();
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

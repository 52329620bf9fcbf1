//! `Gate::check` for an allowed action with 10, 100 and 1,000 policies.
//!
//! Run: `cargo bench -p gavel-policy --bench gate`
//!
//! `gate_check/*` measures the decision path (policy, grant logic, audit
//! record construction) with an in-memory audit sink, so the number is the
//! gate's own CPU cost, for an action seen before (decision cache hit).
//! `gate_check_new_action/*` makes every action new (a distinct operation
//! each time), so each check evaluates Cedar: the cache-miss cost. `gate_check_sqlite` is the same check with the real
//! SQLite store, where every allow waits for its audit record's fsync:
//! that is the durable end-to-end figure.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gavel_core::*;
use gavel_policy::{CedarEngine, decide_uncached, load_sources};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A realistic policy set of `n` policies: most pinned to one of many
/// resources (the common shape: per-database rules), a few global ones.
fn pinned_policies(n: usize) -> String {
    let mut text = String::from(
        "@id(\"no-unknown\") forbid(principal, action == Action::\"sql.unknown\", resource);\n\
         @id(\"reads-db-3\") permit(principal in Group::\"team0\", action == Action::\"sql.read\", resource == Resource::\"db-3\");\n\
         @id(\"ddl-approval\") @approval(\"group:dba\") permit(principal, action == Action::\"sql.ddl\", resource) when { resource.hasTag(\"env\") && resource.getTag(\"env\") == \"prod\" };\n",
    );
    for i in 3..n {
        let class = ActionClass::ALL[i % ActionClass::ALL.len()];
        let r = i / 4;
        match i % 3 {
            0 => text.push_str(&format!("@id(\"p{i}\") permit(principal in Group::\"team{}\", action == Action::\"{class}\", resource == Resource::\"db-{r}\");\n", i % 10)),
            1 => text.push_str(&format!("@id(\"p{i}\") forbid(principal, action == Action::\"{class}\", resource == Resource::\"db-{r}\") when {{ context.intent == \"forbidden-{i}\" }};\n")),
            _ => text.push_str(&format!("@id(\"p{i}\") permit(principal is Agent, action in [Action::\"sql.read\", Action::\"{class}\"], resource == Resource::\"db-{r}\") when {{ principal.owner == User::\"owner{i}@x\" }};\n")),
        }
    }
    text
}

/// The worst case for the index: `n` policies that all apply to every
/// resource and to `sql.read`.
fn unpinned_policies(n: usize) -> String {
    (0..n)
        .map(|i| format!("@id(\"u{i}\") permit(principal in Group::\"team{i}\", action == Action::\"sql.read\", resource) when {{ resource.hasTag(\"env\") }};\n"))
        .collect()
}

fn action() -> Action {
    Action {
        principal: Principal::Agent {
            id: "bench-bot".into(),
            owner: HumanId::from("owner@x"),
            groups: vec!["team0".into(), "team1".into()],
            on_behalf_of: None,
        },
        resource: Resource {
            name: "db-3".into(),
            kind: "postgres".into(),
            tags: [("env".to_string(), "prod".to_string())].into(),
        },
        class: ActionClass::SqlRead,
        operation: "SELECT id, name FROM customers WHERE id = $1".into(),
        details: serde_json::json!({"tables": ["customers"]}),
        intent: "look up a customer".into(),
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "bench".into(),
        source: Some("127.0.0.1".into()),
    }
}

struct MemoryAudit(Mutex<u64>);

#[async_trait::async_trait]
impl AuditSink for MemoryAudit {
    async fn append(&self, record: AuditRecord) -> Result<u64, Error> {
        std::hint::black_box(&record);
        let mut n = self.0.lock().unwrap();
        *n += 1;
        Ok(*n)
    }

    /// Outcomes (a dropped `Permitted` records "not run") are counted at
    /// once, as a real sink's queue takes them, without a task each.
    fn enqueue(self: Arc<Self>, record: AuditRecord) {
        std::hint::black_box(&record);
        *self.0.lock().unwrap() += 1;
    }
}

/// Allowed actions never reach the store; every method says so loudly.
struct NoStore;

#[async_trait::async_trait]
impl Store for NoStore {
    async fn channel_message(&self, _: &RequestId, _: &str) -> Result<Option<String>, Error> {
        Ok(None)
    }
    async fn set_channel_message(
        &self,
        _: &RequestId,
        _: &str,
        _: Option<&str>,
    ) -> Result<(), Error> {
        Err(Error::Store(
            "benchmark store: allowed actions never post to channels".into(),
        ))
    }
    async fn insert_request(&self, _: &ApprovalRequest, _: &AuditRecord) -> Result<bool, Error> {
        Err(Error::Store(
            "benchmark store: allowed actions never open requests".into(),
        ))
    }
    async fn get_request(&self, _: &RequestId) -> Result<Option<ApprovalRequest>, Error> {
        Ok(None)
    }
    async fn live_requests(&self, _: &Fingerprint) -> Result<Vec<ApprovalRequest>, Error> {
        Ok(Vec::new())
    }
    async fn save_transition(
        &self,
        _: &ApprovalRequest,
        _: &ApprovalRequest,
        _: &AuditRecord,
    ) -> Result<bool, Error> {
        Ok(false)
    }
    async fn list_requests(&self, _: &RequestFilter) -> Result<Vec<ApprovalRequest>, Error> {
        Ok(Vec::new())
    }
    async fn due_for_expiry(&self, _: Timestamp) -> Result<Vec<ApprovalRequest>, Error> {
        Ok(Vec::new())
    }
    async fn count_by_state(&self) -> Result<Vec<(RequestState, u64)>, Error> {
        Ok(Vec::new())
    }
    async fn park_admission(&self, _: &ParkedAdmission) -> Result<(), Error> {
        Err(Error::Store(
            "benchmark store: allowed actions are finished, not parked".into(),
        ))
    }
    async fn parked_admission(
        &self,
        _: &AdmissionId,
    ) -> Result<Option<(ParkedAdmission, bool)>, Error> {
        Ok(None)
    }
    async fn close_admission(&self, _: &AdmissionId, _: Timestamp) -> Result<bool, Error> {
        Ok(false)
    }
    async fn use_once(&self, _: &str, _: &str, _: Timestamp, _: Timestamp) -> Result<bool, Error> {
        Err(Error::Store(
            "benchmark store: no one-time keys (no chat channels)".into(),
        ))
    }
}

fn engine(dir: &Path, text: &str) -> Arc<CedarEngine> {
    std::fs::write(dir.join("bench.cedar"), text).unwrap();
    Arc::new(CedarEngine::load(dir).unwrap())
}

fn gate(policy: Arc<CedarEngine>, store: Arc<dyn Store>, audit: Arc<dyn AuditSink>) -> Gate {
    Gate::new(
        policy,
        store,
        audit,
        Arc::new(SystemClock),
        GateConfig {
            default_timeout: Duration::from_secs(900),
            grant_ttl: Duration::from_secs(600),
            gateway_id: "bench".into(),
            public_url: "http://127.0.0.1:8470".into(),
        },
        Vec::new(),
    )
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Verdicts are dropped outside `block_on`; a dropped `Permitted`
    // queues its outcome, which may spawn.
    let _runtime = rt.enter();
    let a = action();

    for (group_name, fresh_each_time) in [("gate_check", false), ("gate_check_new_action", true)] {
        let mut group = c.benchmark_group(group_name);
        for n in [10usize, 100, 1000] {
            for (shape, text) in [
                ("pinned", pinned_policies(n)),
                ("unpinned", unpinned_policies(n)),
            ] {
                let dir = tempfile::tempdir().unwrap();
                let g = gate(
                    engine(dir.path(), &text),
                    Arc::new(NoStore),
                    Arc::new(MemoryAudit(Mutex::new(0))),
                );
                assert!(
                    matches!(rt.block_on(g.check(a.clone())).unwrap(), Verdict::Allow(_)),
                    "{shape}/{n} must allow"
                );
                let mut i = 0u64;
                group.bench_with_input(BenchmarkId::new(shape, n), &n, |b, _| {
                    b.iter(|| {
                        let mut action = a.clone();
                        if fresh_each_time {
                            i += 1;
                            action.operation =
                                format!("SELECT id, name FROM customers WHERE id = {i}");
                        }
                        rt.block_on(g.check(action)).unwrap()
                    })
                });
            }
        }
        group.finish();
    }

    let mut group = c.benchmark_group("policy_decide");
    for n in [10usize, 100, 1000] {
        let bundle = load_sources(&[(PathBuf::from("b.cedar"), pinned_policies(n))]).unwrap();
        group.bench_with_input(BenchmarkId::new("pinned", n), &n, |b, _| {
            b.iter(|| decide_uncached(&bundle, &a))
        });
    }
    group.finish();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = |rt: &tokio::runtime::Runtime, name: &str| {
        let url = gavel_store::StorageUrl::Sqlite(dir.path().join(format!("{name}.db")));
        rt.block_on(gavel_store::Storage::open(&url, &Default::default()))
            .unwrap()
    };
    durable(c, &rt, "sqlite", dir.path(), &a, &sqlite);
    // The same on the machine's PostgreSQL, in a database of its own.
    match BenchDatabase::create() {
        Some(db) => {
            let postgres = |rt: &tokio::runtime::Runtime, name: &str| {
                db.recreate(name);
                let url = gavel_store::StorageUrl::parse(&db.url(name)).unwrap();
                rt.block_on(gavel_store::Storage::open(&url, &Default::default()))
                    .unwrap()
            };
            durable(c, &rt, "postgres", dir.path(), &a, &postgres);
        }
        None => {
            eprintln!("no PostgreSQL at 127.0.0.1:5432 (psql failed): skipping gate_check_postgres")
        }
    }
}

/// Databases on the machine's PostgreSQL for the `postgres` groups,
/// dropped when the bench ends.
struct BenchDatabase {
    names: std::sync::Mutex<Vec<String>>,
}

fn bench_psql(sql: &str) -> bool {
    std::process::Command::new("psql")
        .args(["-X", "-q", "-h", "127.0.0.1", "-d", "test", "-c", sql])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl BenchDatabase {
    fn create() -> Option<BenchDatabase> {
        bench_psql("SELECT 1").then(|| BenchDatabase {
            names: std::sync::Mutex::default(),
        })
    }

    fn name(name: &str) -> String {
        format!("gavel_bench_{}_{name}", std::process::id())
    }

    fn recreate(&self, name: &str) {
        let db = Self::name(name);
        assert!(bench_psql(&format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )));
        assert!(bench_psql(&format!("CREATE DATABASE {db}")));
        self.names.lock().unwrap().push(db);
    }

    fn url(&self, name: &str) -> String {
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        format!("postgres://{user}@127.0.0.1:5432/{}", Self::name(name))
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        for db in self.names.lock().unwrap().iter() {
            bench_psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

/// `Gate::check` with a durable store (`backend`): one agent at a time,
/// then 64 at once on two workers.
fn durable(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    dir: &Path,
    a: &Action,
    open: &dyn Fn(&tokio::runtime::Runtime, &str) -> gavel_store::Storage,
) {
    let mut group = c.benchmark_group(format!("gate_check_{backend}"));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    let store = Arc::new(open(rt, "single"));
    let g = gate(engine(dir, &pinned_policies(100)), store.clone(), store);
    group.bench_function("pinned/100", |b| {
        b.iter(|| rt.block_on(g.check(a.clone())).unwrap())
    });
    group.finish();

    // Durable appends per second through the gate: 64 agents at once on a
    // two-worker runtime, every allow waiting for its audit record's
    // commit (group commit batches whatever arrives during one commit).
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(format!("gate_check_{backend}_concurrent"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(criterion::Throughput::Elements(1));
    let store = Arc::new(open(&mt, "concurrent"));
    let g = gate(engine(dir, &pinned_policies(100)), store.clone(), store);
    const AGENTS: u64 = 64;
    group.bench_function("pinned/100/64-agents", |b| {
        b.iter_custom(|iters| {
            let per_agent = iters.div_ceil(AGENTS);
            mt.block_on(async {
                let start = std::time::Instant::now();
                let tasks: Vec<_> = (0..AGENTS)
                    .map(|_| {
                        let g = g.clone();
                        let a = a.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_agent {
                                g.check(a.clone()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                // Report the time for exactly `iters` checks.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_agent * AGENTS) as f64)
            })
        })
    });
    group.finish();
}

criterion_group!(gate_benches, benches);
criterion_main!(gate_benches);

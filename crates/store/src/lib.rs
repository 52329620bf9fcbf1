//! Persistence for gavel: approval requests with their reviews and grants,
//! agents with hashed tokens, the audit log and its checkpoints, and the
//! small pieces of shared state several gateways must agree on (one-time
//! keys, chat message references, leases).
//!
//! Two backends implement the core ports [`Store`](gavel_core::Store),
//! [`AgentRegistry`](gavel_core::AgentRegistry) and
//! [`AuditSink`](gavel_core::AuditSink), so the gate never sees SQL:
//! [`SqliteStore`], the embedded default (WAL, `synchronous = FULL`), and
//! [`PgStore`], which several gateways share. [`Storage`] is whichever one
//! `[storage] url` names.
#![deny(missing_docs)]

mod audit_queue;
mod copy;
mod postgres;
mod shared_state;
mod sqlite;

pub use copy::{CopyReport, copy_store};
pub use postgres::{PgStore, REQUEST_CHANNEL};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use gavel_audit::{Hash, StoredCheckpoint, StoredRecord};
use gavel_core::{
    Action, AdmissionId, AgentRecord, AgentRegistry, ApprovalRequest, ApprovalRoute, AuditReceipt,
    AuditRecord, AuditSink, Error, Fingerprint, ParkedAdmission, RequestFilter, RequestId,
    RequestState, Store, Timestamp,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// Which audit records to read (`GET /api/v1/audit`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only records after this sequence number.
    pub after: Option<u64>,
    /// Only records at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Only records before this time (ms since the epoch).
    pub until: Option<i64>,
    /// Only this initiator (`agent:NAME`).
    pub initiator: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Only this request.
    pub request_id: Option<String>,
    /// Only this event type.
    pub event: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// What `[storage] url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database; the URL carries no password.
    Postgres(PostgresUrl),
}

/// A `postgres://` URL without a password in it (the password comes from
/// `storage.password_env` or `storage.password_file`).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl PostgresUrl {
    /// `postgres://user@host:port/database`, without the query (its
    /// parameters may name files and options an operator would rather not
    /// see in every log line): what logs and errors show.
    pub fn redacted(&self) -> String {
        let end = self.0.find(['?', '#']).unwrap_or(self.0.len());
        self.0[..end].to_owned()
    }
}

impl StorageUrl {
    /// Parses `sqlite://path` (relative paths are relative to the working
    /// directory), `sqlite:path`, or `postgres://user@host:port/database`
    /// (also `postgresql://`) with no password in it.
    pub fn parse(url: &str) -> Result<StorageUrl, String> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("sqlite URL has no path (e.g. sqlite://gavel-data/gavel.db)".into());
            }
            return Ok(StorageUrl::Sqlite(path.into()));
        }
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            if authority
                .rsplit_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
            {
                // The URL is not echoed: it carries a password.
                return Err("the PostgreSQL URL carries a password; put it in storage.password_env or storage.password_file, never in the URL".into());
            }
            let query = url.split_once('?').map_or("", |(_, q)| q);
            if query.split('&').any(|pair| {
                // As the driver reads it: `pass%77ord` is `password`.
                let key = percent_decoded(pair.split('=').next().unwrap_or(""));
                key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
            }) {
                return Err("the PostgreSQL URL carries a password parameter; put it in storage.password_env or storage.password_file, never in the URL".into());
            }
            sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| {
                format!(
                    "not a usable PostgreSQL URL ({e}); expected postgres://USER@HOST:PORT/DATABASE"
                )
            })?;
            return Ok(StorageUrl::Postgres(PostgresUrl(url.to_owned())));
        }
        // The URL is not echoed: it may carry a password.
        Err("unsupported storage URL scheme; expected sqlite://PATH or postgres://USER@HOST/DATABASE".into())
    }

    /// The URL as logs show it.
    pub fn redacted(&self) -> String {
        match self {
            StorageUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            StorageUrl::Postgres(url) => url.redacted(),
        }
    }
}

/// `s` with `%XX` escapes decoded (and `+` as a space, as in forms);
/// invalid escapes are kept as written.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to reach a PostgreSQL store beyond its URL.
#[derive(Default, Clone)]
pub struct PostgresAccess {
    /// The password, read from `storage.password_env` or `_file`.
    pub password: Option<String>,
    /// A CA certificate (PEM): connect with TLS and verify the server's
    /// certificate and host name against it (`sslmode=verify-full`).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PostgresAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresAccess")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The store `[storage] url` names.
#[derive(Clone)]
pub enum Storage {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL, shared by several gateways.
    Postgres(PgStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! on_backend {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Storage::Sqlite($s) => $e,
            Storage::Postgres($s) => $e,
        }
    };
}

impl Storage {
    /// Opens (creating and migrating if needed) the store `url` names.
    pub async fn open(url: &StorageUrl, access: &PostgresAccess) -> Result<Storage, Error> {
        match url {
            StorageUrl::Sqlite(path) => Ok(Storage::Sqlite(SqliteStore::open(path).await?)),
            StorageUrl::Postgres(url) => {
                let mut options = sqlx::postgres::PgConnectOptions::from_str(&url.0)
                    .map_err(|e| db_err(format!("{}: {e}", url.redacted())))?;
                if let Some(password) = &access.password {
                    options = options.password(password);
                }
                if let Some(ca) = &access.ca_file {
                    options = options
                        .ssl_mode(sqlx::postgres::PgSslMode::VerifyFull)
                        .ssl_root_cert(ca);
                }
                PgStore::open(options)
                    .await
                    .map(Storage::Postgres)
                    .map_err(|e| db_err(format!("{}: {e}", url.redacted())))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Storage::Sqlite(_) => "sqlite",
            Storage::Postgres(_) => "postgres",
        }
    }

    /// Every audit record with its sequence number, in order.
    pub async fn audit_records(&self) -> Result<Vec<(u64, AuditRecord)>, Error> {
        on_backend!(self, s => s.audit_records().await)
    }

    /// Stored audit rows with `from <= seq < to`, in order, exactly as stored.
    pub async fn audit_stored(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, Error> {
        on_backend!(self, s => s.audit_stored(from, to).await)
    }

    /// Leaf hashes of records `from <= seq < to`, in order.
    pub async fn audit_leaves(&self, from: u64, to: u64) -> Result<Vec<Hash>, Error> {
        on_backend!(self, s => s.audit_leaves(from, to).await)
    }

    /// A page of audit records matching `f`, in sequence order.
    pub async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<(u64, AuditRecord)>, Error> {
        on_backend!(self, s => s.audit_page(f).await)
    }

    /// Number of audit records.
    pub async fn audit_size(&self) -> Result<u64, Error> {
        on_backend!(self, s => s.audit_size().await)
    }

    /// Stores a signed checkpoint; an existing one for the same size is kept.
    pub async fn insert_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        note: &str,
        at: Timestamp,
    ) -> Result<(), Error> {
        on_backend!(self, s => s.insert_checkpoint(size, root, note, at).await)
    }

    /// Every stored checkpoint, by size.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, Error> {
        on_backend!(self, s => s.checkpoints().await)
    }

    /// The checkpoint of the largest size, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, Error> {
        on_backend!(self, s => s.latest_checkpoint().await)
    }
}

#[async_trait]
impl Store for Storage {
    async fn insert_request(
        &self,
        request: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error> {
        on_backend!(self, s => s.insert_request(request, record).await)
    }
    async fn get_request(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, Error> {
        on_backend!(self, s => s.get_request(id).await)
    }
    async fn live_requests(&self, fp: &Fingerprint) -> Result<Vec<ApprovalRequest>, Error> {
        on_backend!(self, s => s.live_requests(fp).await)
    }
    async fn save_transition(
        &self,
        before: &ApprovalRequest,
        after: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error> {
        on_backend!(self, s => s.save_transition(before, after, record).await)
    }
    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<ApprovalRequest>, Error> {
        on_backend!(self, s => s.list_requests(f).await)
    }
    async fn due_for_expiry(&self, now: Timestamp) -> Result<Vec<ApprovalRequest>, Error> {
        on_backend!(self, s => s.due_for_expiry(now).await)
    }
    async fn count_by_state(&self) -> Result<Vec<(RequestState, u64)>, Error> {
        on_backend!(self, s => s.count_by_state().await)
    }
    async fn channel_message(
        &self,
        id: &RequestId,
        channel: &str,
    ) -> Result<Option<String>, Error> {
        on_backend!(self, s => s.channel_message(id, channel).await)
    }
    async fn set_channel_message(
        &self,
        id: &RequestId,
        channel: &str,
        reference: Option<&str>,
    ) -> Result<(), Error> {
        on_backend!(self, s => s.set_channel_message(id, channel, reference).await)
    }
    async fn park_admission(&self, admission: &ParkedAdmission) -> Result<(), Error> {
        on_backend!(self, s => s.park_admission(admission).await)
    }
    async fn parked_admission(
        &self,
        id: &AdmissionId,
    ) -> Result<Option<(ParkedAdmission, bool)>, Error> {
        on_backend!(self, s => s.parked_admission(id).await)
    }
    async fn close_admission(&self, id: &AdmissionId, now: Timestamp) -> Result<bool, Error> {
        on_backend!(self, s => s.close_admission(id, now).await)
    }
    async fn use_once(
        &self,
        scope: &str,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error> {
        on_backend!(self, s => s.use_once(scope, key, now, until).await)
    }
}

#[async_trait]
impl AgentRegistry for Storage {
    async fn create_agent(&self, a: &AgentRecord, token_sha256: &str) -> Result<(), Error> {
        on_backend!(self, s => s.create_agent(a, token_sha256).await)
    }
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, Error> {
        on_backend!(self, s => s.list_agents().await)
    }
    async fn revoke_agent(&self, name: &str, now: Timestamp) -> Result<bool, Error> {
        on_backend!(self, s => s.revoke_agent(name, now).await)
    }
    async fn agent_by_token(&self, token_sha256: &str) -> Result<Option<AgentRecord>, Error> {
        on_backend!(self, s => s.agent_by_token(token_sha256).await)
    }
}

#[async_trait]
impl AuditSink for Storage {
    async fn append(&self, record: AuditRecord) -> Result<u64, Error> {
        on_backend!(self, s => s.append(record).await)
    }

    fn submit(self: Arc<Self>, record: AuditRecord) -> AuditReceipt {
        on_backend!(&*self, s => s.audit_queue().submit(record))
    }

    fn enqueue(self: Arc<Self>, record: AuditRecord) {
        on_backend!(&*self, s => s.audit_queue().enqueue(record))
    }

    fn healthy(&self) -> bool {
        on_backend!(self, s => s.audit_queue().healthy())
    }
}

/// The parts of a request fixed at creation, kept as one JSON column.
#[derive(Serialize, Deserialize)]
pub(crate) struct RequestBody {
    pub(crate) action: Action,
    pub(crate) policies: Vec<String>,
    pub(crate) policy_version: String,
    pub(crate) route: ApprovalRoute,
}

impl RequestBody {
    pub(crate) fn of(r: &ApprovalRequest) -> Result<String, Error> {
        serde_json::to_string(&RequestBody {
            action: r.action.clone(),
            policies: r.policies.clone(),
            policy_version: r.policy_version.clone(),
            route: r.route.clone(),
        })
        .map_err(db_err)
    }
}

pub(crate) fn agent_exists(name: &str) -> Error {
    Error::Invalid(format!(
        "an agent named {name:?} already exists (names are never reused, so audit records stay unambiguous)"
    ))
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> Error {
    Error::store(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_never_carries_its_password() {
        let err = StorageUrl::parse("postgres://gavel:hunter2@db:5432/gavel").unwrap_err();
        assert!(
            !err.contains("hunter2") && err.contains("password_env"),
            "{err}"
        );
        let err = StorageUrl::parse("postgres://gavel@db/gavel?password=hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        for sneaky in ["pass%77ord", "PASS%57ORD", "sslpass%77ord", "%70assword"] {
            let err = StorageUrl::parse(&format!("postgres://gavel@db/gavel?{sneaky}=hunter2"))
                .unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let url = StorageUrl::parse("postgresql://gavel@db:5432/gavel?sslmode=require").unwrap();
        assert_eq!(url.redacted(), "postgresql://gavel@db:5432/gavel");
        assert!(matches!(
            StorageUrl::parse("sqlite://d/g.db").unwrap(),
            StorageUrl::Sqlite(_)
        ));
        let err = StorageUrl::parse("mysql://root:pw@h/db").unwrap_err();
        assert!(!err.contains("pw@"), "{err}");
    }
}

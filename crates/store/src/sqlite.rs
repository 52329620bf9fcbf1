use crate::audit_queue::{AuditQueue, BatchAppender};
use crate::{AuditFilter, RequestBody, db_err};
use async_trait::async_trait;
use gavel_audit::{Hash, StoredCheckpoint, StoredRecord};
use gavel_core::{
    AdmissionId, AgentRecord, AgentRegistry, ApprovalRequest, AuditReceipt, AuditRecord, AuditSink,
    Decision, Error, Fingerprint, HumanId, ParkedAdmission, RequestFilter, RequestId, RequestState,
    Review, Store, Timestamp,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// gavel's embedded store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Group commit for standalone audit appends (the allow/deny hot path).
    audit: AuditQueue,
}

/// The group-commit writer's own connection and its idea of the next
/// position.
struct BatchWriter {
    pool: SqlitePool,
    /// Taken out of the pool for good: no acquire per batch.
    conn: Option<sqlx::SqliteConnection>,
    /// The next free position, as of this writer's last append. Other
    /// writers (request transitions) append too; then the batch's first
    /// position is taken, the insert fails on the primary key, and the
    /// writer reads the real next position and tries again. Positions stay
    /// contiguous: nobody can append past a free position.
    next: Option<u64>,
}

impl BatchAppender for BatchWriter {
    /// Appends `records` at consecutive positions in one statement (one
    /// implicit transaction, one commit): a single round trip to SQLite in
    /// the common case.
    async fn append_batch(&mut self, records: &[&AuditRecord]) -> Result<u64, Error> {
        let audit_err = |e: &dyn std::fmt::Display| Error::Audit(e.to_string());
        if self.conn.is_none() {
            let conn = self.pool.acquire().await.map_err(|e| audit_err(&e))?;
            self.conn = Some(conn.detach());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::Audit("no audit writer connection".into()));
        };
        for _ in 0..8 {
            let first = match self.next {
                Some(n) => n,
                None => {
                    let next: i64 =
                        sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(|e| audit_err(&e))?;
                    next as u64
                }
            };
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO audit_log (seq, time, record, leaf_hash) ");
            q.push_values(records.iter().enumerate(), |mut b, (i, r)| {
                let seq = first + i as u64;
                let data = gavel_audit::leaf_data(seq, r);
                let hash = gavel_audit::leaf_hash(&data).to_vec();
                b.push_bind(seq as i64)
                    .push_bind(r.time.0)
                    .push_bind(data)
                    .push_bind(hash);
            });
            match q.build().execute(&mut *conn).await {
                Ok(_) => {
                    self.next = Some(first + records.len() as u64);
                    return Ok(first);
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    // Another writer appended since: read the position again.
                    self.next = None;
                }
                Err(e) => {
                    self.next = None;
                    self.conn = None;
                    return Err(audit_err(&e));
                }
            }
        }
        Err(Error::Audit(
            "could not find a free audit position after 8 attempts".into(),
        ))
    }
}

const REQUEST_COLUMNS: &str =
    "id, fingerprint, state, created_at, expires_at, grant_expires_at, updated_at, body";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies
    /// migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            // Only gavel's own user reads what agents asked (SQL literals
            // included) and the audit log.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .map_err(|e| db_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsync'd, so an audit record is durable
            // before the gate lets anything through.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|e| db_err(format!("cannot open {}: {e}", path.display())))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| db_err(format!("migrating {}: {e}", path.display())))?;
        let audit = AuditQueue::start(BatchWriter {
            pool: pool.clone(),
            conn: None,
            next: None,
        });
        Ok(SqliteStore { pool, audit })
    }

    /// A write transaction that takes SQLite's write lock at once
    /// (`BEGIN IMMEDIATE`), so reads inside it (the next audit position,
    /// the guarded state) cannot be overtaken by another writer, in this
    /// process or another.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, Error> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    /// The pool, for copying a whole store.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Every audit record with its sequence number, in order.
    pub async fn audit_records(&self) -> Result<Vec<(u64, AuditRecord)>, Error> {
        self.audit_stored(0, u64::MAX)
            .await?
            .into_iter()
            .map(|r| {
                gavel_audit::parse_leaf(&r.data)
                    .map_err(|e| db_err(format!("audit record {}: {e}", r.seq)))
            })
            .collect()
    }

    /// Stored audit rows with `from <= seq < to`, in order, exactly as stored.
    pub async fn audit_stored(&self, from: u64, to: u64) -> Result<Vec<StoredRecord>, Error> {
        let rows = sqlx::query(
            "SELECT seq, record, leaf_hash FROM audit_log WHERE seq >= ? AND seq < ? ORDER BY seq",
        )
        .bind(from.min(i64::MAX as u64) as i64)
        .bind(to.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(db_err)?;
                let hash: Vec<u8> = row.try_get("leaf_hash").map_err(db_err)?;
                Ok(StoredRecord {
                    seq: seq as u64,
                    data: row.try_get("record").map_err(db_err)?,
                    leaf_hash: hash.try_into().map_err(|_| {
                        db_err(format!("audit record {seq}: leaf hash is not 32 bytes"))
                    })?,
                })
            })
            .collect()
    }

    /// Leaf hashes of records `from <= seq < to`, in order.
    pub async fn audit_leaves(&self, from: u64, to: u64) -> Result<Vec<Hash>, Error> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT leaf_hash FROM audit_log WHERE seq >= ? AND seq < ? ORDER BY seq",
        )
        .bind(from.min(i64::MAX as u64) as i64)
        .bind(to.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|h| {
                h.try_into()
                    .map_err(|_| db_err("a leaf hash is not 32 bytes"))
            })
            .collect()
    }

    /// A page of audit records matching `f`, in sequence order.
    pub async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<(u64, AuditRecord)>, Error> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT seq, record FROM audit_log WHERE 1 = 1");
        if let Some(after) = f.after {
            q.push(" AND seq > ")
                .push_bind(after.min(i64::MAX as u64) as i64);
        }
        // The record's own (hashed) time, not the unverified `time` column.
        if let Some(since) = f.since {
            q.push(" AND json_extract(CAST(record AS TEXT), '$.time') >= ")
                .push_bind(since);
        }
        if let Some(until) = f.until {
            q.push(" AND json_extract(CAST(record AS TEXT), '$.time') < ")
                .push_bind(until);
        }
        for (path, value) in [
            ("$.initiator", &f.initiator),
            ("$.resource", &f.resource),
            ("$.request_id", &f.request_id),
            ("$.event", &f.event),
        ] {
            if let Some(v) = value {
                q.push(format!(
                    " AND json_extract(CAST(record AS TEXT), '{path}') = "
                ))
                .push_bind(v.clone());
            }
        }
        q.push(" ORDER BY seq LIMIT ")
            .push_bind(f.limit.min(10_000) as i64);
        let rows = q.build().fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(db_err)?;
                let data: Vec<u8> = row.try_get("record").map_err(db_err)?;
                let (_, record) = gavel_audit::parse_leaf(&data)
                    .map_err(|e| db_err(format!("audit record {seq}: {e}")))?;
                Ok((seq as u64, record))
            })
            .collect()
    }

    /// Number of audit records.
    pub async fn audit_size(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(n as u64)
    }

    /// Stores a signed checkpoint; an existing one for the same size is kept.
    pub async fn insert_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        note: &str,
        at: Timestamp,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (size) DO NOTHING",
        )
        .bind(size as i64)
        .bind(root.to_vec())
        .bind(note)
        .bind(at.0)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Every stored checkpoint, by size.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, Error> {
        let rows = sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let size: i64 = row.try_get("size").map_err(db_err)?;
                Ok(StoredCheckpoint {
                    size: size as u64,
                    note: row.try_get("note").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// The checkpoint of the largest size, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, Error> {
        Ok(self.checkpoints().await?.pop())
    }

    async fn reviews(conn: &mut SqliteConnection, id: &str) -> Result<Vec<Review>, Error> {
        let rows = sqlx::query(
            "SELECT reviewer, decision, comment, at FROM reviews WHERE request_id = ? ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let decision: String = row.try_get("decision").map_err(db_err)?;
                Ok(Review {
                    reviewer: HumanId(row.try_get("reviewer").map_err(db_err)?),
                    decision: if decision == "deny" {
                        Decision::Deny
                    } else {
                        Decision::Approve
                    },
                    comment: row.try_get("comment").map_err(db_err)?,
                    at: Timestamp(row.try_get("at").map_err(db_err)?),
                })
            })
            .collect()
    }

    /// Requests from `sql` (selecting [`REQUEST_COLUMNS`]) with their reviews,
    /// all read in one transaction so a request and its reviews always come
    /// from the same snapshot.
    async fn read_requests<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Vec<ApprovalRequest>, Error> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let rows = query.fetch_all(&mut *tx).await.map_err(db_err)?;
        let requests = Self::hydrate(&mut tx, rows).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(requests)
    }

    async fn hydrate(
        conn: &mut SqliteConnection,
        rows: Vec<SqliteRow>,
    ) -> Result<Vec<ApprovalRequest>, Error> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id").map_err(db_err)?;
            let body: String = row.try_get("body").map_err(db_err)?;
            let body: RequestBody = serde_json::from_str(&body)
                .map_err(|e| db_err(format!("request {id}: corrupt body: {e}")))?;
            let fingerprint: String = row.try_get("fingerprint").map_err(db_err)?;
            let state: String = row.try_get("state").map_err(db_err)?;
            out.push(ApprovalRequest {
                reviews: Self::reviews(conn, &id).await?,
                id: RequestId(id),
                fingerprint: Fingerprint::from_hex(&fingerprint)
                    .ok_or_else(|| db_err("corrupt fingerprint"))?,
                action: body.action,
                policies: body.policies,
                policy_version: body.policy_version,
                route: body.route,
                state: RequestState::from_str(&state).map_err(db_err)?,
                created_at: Timestamp(row.try_get("created_at").map_err(db_err)?),
                expires_at: Timestamp(row.try_get("expires_at").map_err(db_err)?),
                grant_expires_at: row
                    .try_get::<Option<i64>, _>("grant_expires_at")
                    .map_err(db_err)?
                    .map(Timestamp),
                updated_at: Timestamp(row.try_get("updated_at").map_err(db_err)?),
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_request(
        &self,
        r: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error> {
        let body = RequestBody::of(r)?;
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "INSERT INTO requests (id, fingerprint, state, initiator, resource, class, created_at, \
             expires_at, grant_expires_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.id.0)
        .bind(r.fingerprint.to_hex())
        .bind(r.state.as_str())
        .bind(r.action.principal.qualified_id())
        .bind(&r.action.resource.name)
        .bind(r.action.class.as_str())
        .bind(r.created_at.0)
        .bind(r.expires_at.0)
        .bind(r.grant_expires_at.map(|t| t.0))
        .bind(r.updated_at.0)
        .bind(body)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await.map_err(db_err)?;
                return Ok(false);
            }
            Err(e) => return Err(db_err(e)),
        }
        append_audit(&mut tx, record).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn get_request(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, Error> {
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?"
        )))
        .bind(&id.0);
        Ok(self.read_requests(query).await?.into_iter().next())
    }

    async fn live_requests(&self, fp: &Fingerprint) -> Result<Vec<ApprovalRequest>, Error> {
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE fingerprint = ? \
             AND state IN ('pending', 'approved') ORDER BY created_at, id"
        )))
        .bind(fp.to_hex());
        self.read_requests(query).await
    }

    async fn save_transition(
        &self,
        before: &ApprovalRequest,
        after: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error> {
        if before.id != after.id || after.reviews.len() < before.reviews.len() {
            return Err(db_err(
                "save_transition: after is not a successor of before",
            ));
        }
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE requests SET state = ?, grant_expires_at = ?, updated_at = ? \
             WHERE id = ? AND state = ? \
             AND (SELECT count(*) FROM reviews WHERE request_id = ?) = ?",
        )
        .bind(after.state.as_str())
        .bind(after.grant_expires_at.map(|t| t.0))
        .bind(after.updated_at.0)
        .bind(&after.id.0)
        .bind(before.state.as_str())
        .bind(&after.id.0)
        .bind(before.reviews.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if updated.rows_affected() != 1 {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        for (seq, review) in after.reviews.iter().enumerate().skip(before.reviews.len()) {
            sqlx::query(
                "INSERT INTO reviews (request_id, seq, reviewer, decision, comment, at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&after.id.0)
            .bind(seq as i64)
            .bind(&review.reviewer.0)
            .bind(match review.decision {
                Decision::Approve => "approve",
                Decision::Deny => "deny",
            })
            .bind(&review.comment)
            .bind(review.at.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        append_audit(&mut tx, record).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<ApprovalRequest>, Error> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE 1 = 1"
        ));
        if let Some(state) = f.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(initiator) = &f.initiator {
            q.push(" AND initiator = ").push_bind(initiator.clone());
        }
        if let Some(resource) = &f.resource {
            q.push(" AND resource = ").push_bind(resource.clone());
        }
        if let Some(prefix) = &f.id_prefix {
            // Ranges, so the indexes serve them: ids are lower-case hex and
            // `-`, all below `g`.
            let end = format!("{prefix}g");
            q.push(" AND ((substr(id, 29) >= ")
                .push_bind(prefix.clone())
                .push(" AND substr(id, 29) < ")
                .push_bind(end.clone())
                .push(") OR (id >= ")
                .push_bind(prefix.clone())
                .push(" AND id < ")
                .push_bind(end)
                .push("))");
        }
        let limit = if f.limit == 0 { 100 } else { f.limit.min(1000) };
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit as i64);
        self.read_requests(q.build()).await
    }

    async fn due_for_expiry(&self, now: Timestamp) -> Result<Vec<ApprovalRequest>, Error> {
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE \
             (state = 'pending' AND expires_at <= ?) OR \
             (state = 'approved' AND (grant_expires_at IS NULL OR grant_expires_at <= ?)) \
             ORDER BY created_at LIMIT 500"
        )))
        .bind(now.0)
        .bind(now.0);
        self.read_requests(query).await
    }

    async fn channel_message(
        &self,
        id: &RequestId,
        channel: &str,
    ) -> Result<Option<String>, Error> {
        sqlx::query_scalar(
            "SELECT reference FROM channel_messages WHERE request_id = ? AND channel = ?",
        )
        .bind(&id.0)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)
    }

    async fn set_channel_message(
        &self,
        id: &RequestId,
        channel: &str,
        reference: Option<&str>,
    ) -> Result<(), Error> {
        let query = match reference {
            Some(r) => sqlx::query(
                "INSERT INTO channel_messages (request_id, channel, reference) VALUES (?, ?, ?) \
                 ON CONFLICT (request_id, channel) DO UPDATE SET reference = excluded.reference",
            )
            .bind(&id.0)
            .bind(channel)
            .bind(r),
            None => {
                sqlx::query("DELETE FROM channel_messages WHERE request_id = ? AND channel = ?")
                    .bind(&id.0)
                    .bind(channel)
            }
        };
        query.execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    async fn park_admission(&self, admission: &ParkedAdmission) -> Result<(), Error> {
        let json = serde_json::to_string(admission).map_err(Error::store)?;
        sqlx::query(
            "INSERT INTO admissions (id, initiator, admission, admitted_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&admission.id.0)
        .bind(admission.action.principal.qualified_id())
        .bind(json)
        .bind(admission.admitted_at.0)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn parked_admission(
        &self,
        id: &AdmissionId,
    ) -> Result<Option<(ParkedAdmission, bool)>, Error> {
        let row = sqlx::query("SELECT admission, finished_at FROM admissions WHERE id = ?")
            .bind(&id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.try_get("admission").map_err(db_err)?;
        let finished: Option<i64> = row.try_get("finished_at").map_err(db_err)?;
        let admission: ParkedAdmission = serde_json::from_str(&json).map_err(Error::store)?;
        Ok(Some((admission, finished.is_some())))
    }

    async fn close_admission(&self, id: &AdmissionId, now: Timestamp) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE admissions SET finished_at = ? WHERE id = ? AND finished_at IS NULL",
        )
        .bind(now.0)
        .bind(&id.0)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_once(
        &self,
        scope: &str,
        key: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM one_time_keys WHERE expires_at < ?")
            .bind(now.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let inserted = sqlx::query(
            "INSERT INTO one_time_keys (scope, key, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(until.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected()
            == 1;
        tx.commit().await.map_err(db_err)?;
        Ok(inserted)
    }

    async fn count_by_state(&self) -> Result<Vec<(RequestState, u64)>, Error> {
        let rows = sqlx::query("SELECT state, count(*) AS n FROM requests GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let mut counts: Vec<(RequestState, u64)> =
            RequestState::ALL.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            let state: String = row.try_get("state").map_err(db_err)?;
            let n: i64 = row.try_get("n").map_err(db_err)?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| s.as_str() == state) {
                slot.1 = n as u64;
            }
        }
        Ok(counts)
    }
}

#[async_trait]
impl AgentRegistry for SqliteStore {
    async fn create_agent(&self, a: &AgentRecord, token_sha256: &str) -> Result<(), Error> {
        let result = sqlx::query(
            "INSERT INTO agents (name, owner, groups_json, token_sha256, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.name)
        .bind(&a.owner.0)
        .bind(serde_json::to_string(&a.groups).map_err(db_err)?)
        .bind(token_sha256)
        .bind(a.created_at.0)
        .bind(a.expires_at.map(|t| t.0))
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(crate::agent_exists(&a.name))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, Error> {
        let rows = sqlx::query(
            "SELECT name, owner, groups_json, created_at, expires_at, revoked_at FROM agents ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn revoke_agent(&self, name: &str, now: Timestamp) -> Result<bool, Error> {
        let r =
            sqlx::query("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
                .bind(now.0)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn agent_by_token(&self, token_sha256: &str) -> Result<Option<AgentRecord>, Error> {
        let row = sqlx::query(
            "SELECT name, owner, groups_json, created_at, expires_at, revoked_at FROM agents \
             WHERE token_sha256 = ?",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(agent_from_row).transpose()
    }
}

fn agent_from_row(row: &SqliteRow) -> Result<AgentRecord, Error> {
    let groups: String = row.try_get("groups_json").map_err(db_err)?;
    Ok(AgentRecord {
        name: row.try_get("name").map_err(db_err)?,
        owner: HumanId(row.try_get("owner").map_err(db_err)?),
        groups: serde_json::from_str(&groups).map_err(db_err)?,
        created_at: Timestamp(row.try_get("created_at").map_err(db_err)?),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")
            .map_err(db_err)?
            .map(Timestamp),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(db_err)?
            .map(Timestamp),
    })
}

/// Appends one audit record on `conn`, inside the caller's write
/// transaction (which holds SQLite's write lock, so the next position is
/// ours alone).
async fn append_audit(conn: &mut SqliteConnection, record: &AuditRecord) -> Result<u64, Error> {
    let audit_err = |e: &dyn std::fmt::Display| Error::Audit(e.to_string());
    let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| audit_err(&e))?;
    let seq = next as u64;
    let data = gavel_audit::leaf_data(seq, record);
    let hash = gavel_audit::leaf_hash(&data);
    sqlx::query("INSERT INTO audit_log (seq, time, record, leaf_hash) VALUES (?, ?, ?, ?)")
        .bind(next)
        .bind(record.time.0)
        .bind(data)
        .bind(hash.to_vec())
        .execute(&mut *conn)
        .await
        .map_err(|e| audit_err(&e))?;
    Ok(seq)
}

impl SqliteStore {
    pub(crate) fn audit_queue(&self) -> &AuditQueue {
        &self.audit
    }
}

#[async_trait]
impl AuditSink for SqliteStore {
    async fn append(&self, record: AuditRecord) -> Result<u64, Error> {
        self.audit.append(record).await
    }

    fn submit(self: Arc<Self>, record: AuditRecord) -> AuditReceipt {
        self.audit.submit(record)
    }

    fn enqueue(self: Arc<Self>, record: AuditRecord) {
        self.audit.enqueue(record)
    }

    fn healthy(&self) -> bool {
        self.audit.healthy()
    }
}

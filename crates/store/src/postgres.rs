use crate::audit_queue::{AuditQueue, BatchAppender};
use crate::{AuditFilter, RequestBody, db_err};
use async_trait::async_trait;
use gavel_audit::{Hash, StoredCheckpoint, StoredRecord};
use gavel_core::{
    AdmissionId, AgentRecord, AgentRegistry, ApprovalRequest, AuditReceipt, AuditRecord, AuditSink,
    Decision, Error, Fingerprint, HumanId, ParkedAdmission, RequestFilter, RequestId, RequestState,
    Review, Store, Timestamp,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The store several gateways share: PostgreSQL, with the same guarded
/// transitions as [`crate::SqliteStore`], one gap-free audit log for all
/// of them, and `NOTIFY` on every request change.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    audit: AuditQueue,
}

/// The channel request changes are announced on (`id state`).
pub const REQUEST_CHANNEL: &str = "gavel_requests";

/// The group-commit writer's own connection.
struct PgBatchWriter {
    pool: PgPool,
    /// Taken out of the pool for good: no acquire per batch. Dropped after
    /// an error, so a broken connection is replaced.
    conn: Option<PgConnection>,
}

impl BatchAppender for PgBatchWriter {
    /// Takes positions from `audit_head` and inserts the batch: one
    /// statement and one round trip for a batch of up to
    /// [`STATEMENT_BYTES`], else one statement per such slice inside one
    /// transaction (so the batch's positions stay contiguous), with one
    /// commit either way.
    async fn append_batch(&mut self, records: &[&AuditRecord]) -> Result<u64, Error> {
        if self.conn.is_none() {
            let conn = self.pool.acquire().await.map_err(audit_err)?;
            self.conn = Some(conn.detach());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Error::Audit("no audit writer connection".into()));
        };
        let members: Vec<Vec<u8>> = records
            .iter()
            .map(|r| gavel_audit::leaf_members(r))
            .collect();
        let times: Vec<i64> = records.iter().map(|r| r.time.0).collect();
        let slices = statement_slices(&members);
        let result = if slices.len() == 1 {
            append_members(conn, members, times).await
        } else {
            async {
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(audit_err)?;
                let mut first = None;
                for range in slices {
                    let at = append_members(
                        &mut tx,
                        members[range.clone()].to_vec(),
                        times[range].to_vec(),
                    )
                    .await?;
                    first.get_or_insert(at);
                }
                tx.commit().await.map_err(audit_err)?;
                first.ok_or_else(|| Error::Audit("an empty audit batch".into()))
            }
            .await
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// The most record bytes sent in one statement. sqlx 0.9.0 does not set
/// `TCP_NODELAY` (launchbadge/sqlx#4335, fixed by #4336 after the 0.9.0
/// release): a message larger than the socket's initial send buffer
/// (16 KiB on Linux) is written in pieces, Nagle holds the last one until
/// PostgreSQL's delayed ACK, and the statement takes 40 ms more. Measured
/// here: a batch of 126 records took 46 ms over TCP and 3.8 ms over a
/// Unix socket. Slices under this size keep every message small.
const STATEMENT_BYTES: usize = 12 * 1024;

/// The index ranges of `members` to send one statement each: runs whose
/// bytes stay under [`STATEMENT_BYTES`] (a larger record is a run of its
/// own).
fn statement_slices(members: &[Vec<u8>]) -> Vec<std::ops::Range<usize>> {
    let mut slices = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in members.iter().enumerate() {
        if i > start && bytes + m.len() > STATEMENT_BYTES {
            slices.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += m.len();
    }
    slices.push(start..members.len());
    slices
}

fn audit_err(e: impl std::fmt::Display) -> Error {
    Error::Audit(e.to_string())
}

/// Takes `records.len()` positions from `audit_head` and inserts the
/// records there, in one statement (one round trip), inside the caller's
/// transaction or as one of its own. The head row stays locked until that
/// transaction ends: appends from every gateway queue behind it, so
/// positions are gap-free and become visible in order.
///
/// The position is part of each record's hashed bytes, so PostgreSQL
/// writes the `{"seq":N,"v":1,` prefix in front of the members gavel
/// serialized, and the leaf hash (`SHA-256(0x00 ‖ bytes)`, RFC 6962) with
/// them. The conformance tests check every stored record against
/// `gavel_audit::leaf_data` and `leaf_hash`.
async fn append_audit_batch(
    conn: &mut PgConnection,
    records: &[&AuditRecord],
) -> Result<u64, Error> {
    let members = records
        .iter()
        .map(|r| gavel_audit::leaf_members(r))
        .collect();
    let times = records.iter().map(|r| r.time.0).collect();
    append_members(conn, members, times).await
}

/// [`APPEND`] for records already serialized (`leaf_members`).
async fn append_members(
    conn: &mut PgConnection,
    members: Vec<Vec<u8>>,
    times: Vec<i64>,
) -> Result<u64, Error> {
    let first: i64 = sqlx::query_scalar(APPEND)
        .bind(members)
        .bind(times)
        .bind(gavel_audit::RECORD_VERSION.to_string())
        .fetch_one(&mut *conn)
        .await
        .map_err(audit_err)?;
    Ok(first as u64)
}

/// One statement: positions from the head, prefix and hash in place.
const APPEND: &str = "\
WITH head AS (
    UPDATE audit_head SET next = next + cardinality($1::bytea[])
    RETURNING next - cardinality($1::bytea[]) AS first
), inserted AS (
    INSERT INTO audit_log (seq, time, record, leaf_hash)
    SELECT head.first + r.i - 1, r.t, d.data, sha256(decode('00', 'hex') || d.data)
    FROM head,
         UNNEST($1::bytea[], $2::bigint[]) WITH ORDINALITY AS r (members, t, i),
         LATERAL (SELECT convert_to('{\"seq\":' || (head.first + r.i - 1) || ',\"v\":' || $3::text || ',', 'UTF8')
                         || r.members AS data) AS d
    RETURNING seq
)
SELECT min(seq) FROM inserted";

const REQUEST_COLUMNS: &str =
    "id, fingerprint, state, created_at, expires_at, grant_expires_at, updated_at, body";

impl PgStore {
    /// Connects with `options` and applies migrations (several gateways
    /// starting at once migrate one at a time: sqlx holds an advisory lock).
    pub async fn open(options: PgConnectOptions) -> Result<PgStore, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A gateway whose database is gone answers (and refuses) within
            // seconds instead of holding every caller for sqlx's 30 s.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("gavel").options([
                // A commit returns once it is on disk, whatever the
                // role's or database's defaults say.
                ("synchronous_commit", "on"),
                // Nothing waits long for a lock (the audit head held by
                // a stalled gateway) or a statement: the caller is
                // refused (503) instead of hanging with it.
                ("lock_timeout", "5s"),
                ("statement_timeout", "30s"),
                // A gateway stopped mid-transaction (SIGSTOP, a paused
                // VM) loses its transaction, and its locks, after 10 s.
                ("idle_in_transaction_session_timeout", "10s"),
            ]))
            .await
            .map_err(|e| db_err(format!("cannot connect to PostgreSQL: {e}")))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| db_err(format!("migrating the PostgreSQL store: {e}")))?;
        let audit = AuditQueue::start(PgBatchWriter {
            pool: pool.clone(),
            conn: None,
        });
        Ok(PgStore { pool, audit })
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Calls `changed` with every request change any gateway on this store
    /// commits (`LISTEN` on [`REQUEST_CHANNEL`]), for as long as the
    /// returned future runs. A lost connection is re-established; changes
    /// announced meanwhile are missed, which waiters cover by re-reading
    /// the store on their own (at least every second).
    pub async fn watch_requests(&self, changed: impl Fn(RequestId, RequestState)) {
        let mut failures = 0u32;
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot listen for request changes; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(REQUEST_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if failures > 0 {
                tracing::info!("listening for request changes again");
            }
            failures = 0;
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        let Some((id, state)) = n.payload().split_once(' ') else {
                            continue;
                        };
                        if let Ok(state) = RequestState::from_str(state) {
                            changed(RequestId(id.to_owned()), state);
                        }
                    }
                    // The connection dropped; the next call reconnects.
                    Ok(None) => {
                        tracing::warn!(
                            "the request-change listener lost its connection; reconnecting"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the request-change listener failed; reconnecting");
                        failures += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
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
            "SELECT seq, record, leaf_hash FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
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
            "SELECT leaf_hash FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
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
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new("SELECT seq, record FROM audit_log WHERE 1 = 1");
        if let Some(after) = f.after {
            q.push(" AND seq > ")
                .push_bind(after.min(i64::MAX as u64) as i64);
        }
        // The record's own (hashed) time, not the unverified `time` column.
        const RECORD: &str = "convert_from(record, 'UTF8')::jsonb";
        if let Some(since) = f.since {
            q.push(format!(" AND ({RECORD} ->> 'time')::bigint >= "))
                .push_bind(since);
        }
        if let Some(until) = f.until {
            q.push(format!(" AND ({RECORD} ->> 'time')::bigint < "))
                .push_bind(until);
        }
        for (key, value) in [
            ("initiator", &f.initiator),
            ("resource", &f.resource),
            ("request_id", &f.request_id),
            ("event", &f.event),
        ] {
            if let Some(v) = value {
                q.push(format!(" AND {RECORD} ->> '{key}' = "))
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
            "INSERT INTO audit_checkpoints (size, root, note, created_at) VALUES ($1, $2, $3, $4) \
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
        let row =
            sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        row.map(|row| {
            let size: i64 = row.try_get("size").map_err(db_err)?;
            Ok(StoredCheckpoint {
                size: size as u64,
                note: row.try_get("note").map_err(db_err)?,
            })
        })
        .transpose()
    }

    async fn reviews(conn: &mut PgConnection, id: &str) -> Result<Vec<Review>, Error> {
        let rows = sqlx::query(
            "SELECT reviewer, decision, comment, at FROM reviews WHERE request_id = $1 ORDER BY seq",
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

    /// Requests from `query` (selecting [`REQUEST_COLUMNS`]) with their
    /// reviews, read in one repeatable-read transaction so a request and its
    /// reviews come from the same snapshot.
    async fn read_requests<'q>(
        &self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<ApprovalRequest>, Error> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db_err)?;
        let rows = query.fetch_all(&mut *tx).await.map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(request_from_row(&mut tx, &row).await?);
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    /// Tells every gateway listening that request `id` is now `state`,
    /// when (and only if) the caller's transaction commits.
    async fn announce(
        conn: &mut PgConnection,
        id: &RequestId,
        state: RequestState,
    ) -> Result<(), Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REQUEST_CHANNEL)
            .bind(format!("{} {}", id.0, state.as_str()))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

async fn request_from_row(conn: &mut PgConnection, row: &PgRow) -> Result<ApprovalRequest, Error> {
    let id: String = row.try_get("id").map_err(db_err)?;
    let body: String = row.try_get("body").map_err(db_err)?;
    let body: RequestBody = serde_json::from_str(&body)
        .map_err(|e| db_err(format!("request {id}: corrupt body: {e}")))?;
    let fingerprint: String = row.try_get("fingerprint").map_err(db_err)?;
    let state: String = row.try_get("state").map_err(db_err)?;
    Ok(ApprovalRequest {
        reviews: PgStore::reviews(conn, &id).await?,
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
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[async_trait]
impl Store for PgStore {
    async fn insert_request(
        &self,
        r: &ApprovalRequest,
        record: &AuditRecord,
    ) -> Result<bool, Error> {
        let body = RequestBody::of(r)?;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let result = sqlx::query(
            "INSERT INTO requests (id, fingerprint, state, initiator, resource, class, created_at, \
             expires_at, grant_expires_at, updated_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await.map_err(db_err)?;
                return Ok(false);
            }
            Err(e) => return Err(db_err(e)),
        }
        append_audit_batch(&mut tx, &[record]).await?;
        Self::announce(&mut tx, &r.id, r.state).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn get_request(&self, id: &RequestId) -> Result<Option<ApprovalRequest>, Error> {
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1"
        )))
        .bind(&id.0);
        Ok(self.read_requests(query).await?.into_iter().next())
    }

    async fn live_requests(&self, fp: &Fingerprint) -> Result<Vec<ApprovalRequest>, Error> {
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE fingerprint = $1 \
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
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        // Lock the row first: the guarded update below then reads, in a
        // snapshot taken after the lock, whatever a racing transition
        // committed (READ COMMITTED would otherwise count reviews as of
        // before the wait).
        let exists = sqlx::query("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE")
            .bind(&after.id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        let updated = sqlx::query(
            "UPDATE requests SET state = $1, grant_expires_at = $2, updated_at = $3 \
             WHERE id = $4 AND state = $5 \
             AND (SELECT count(*) FROM reviews WHERE request_id = $4) = $6",
        )
        .bind(after.state.as_str())
        .bind(after.grant_expires_at.map(|t| t.0))
        .bind(after.updated_at.0)
        .bind(&after.id.0)
        .bind(before.state.as_str())
        .bind(before.reviews.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if updated.rows_affected() != 1 {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        for (seq, review) in after.reviews.iter().enumerate().skip(before.reviews.len()) {
            let inserted = sqlx::query(
                "INSERT INTO reviews (request_id, seq, reviewer, decision, comment, at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
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
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    tx.rollback().await.map_err(db_err)?;
                    return Ok(false);
                }
                Err(e) => return Err(db_err(e)),
            }
        }
        append_audit_batch(&mut tx, &[record]).await?;
        Self::announce(&mut tx, &after.id, after.state).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<ApprovalRequest>, Error> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
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
             (state = 'pending' AND expires_at <= $1) OR \
             (state = 'approved' AND (grant_expires_at IS NULL OR grant_expires_at <= $1)) \
             ORDER BY created_at LIMIT 500"
        )))
        .bind(now.0);
        self.read_requests(query).await
    }

    async fn channel_message(
        &self,
        id: &RequestId,
        channel: &str,
    ) -> Result<Option<String>, Error> {
        sqlx::query_scalar(
            "SELECT reference FROM channel_messages WHERE request_id = $1 AND channel = $2",
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
                "INSERT INTO channel_messages (request_id, channel, reference) VALUES ($1, $2, $3) \
                 ON CONFLICT (request_id, channel) DO UPDATE SET reference = excluded.reference",
            )
            .bind(&id.0)
            .bind(channel)
            .bind(r),
            None => {
                sqlx::query("DELETE FROM channel_messages WHERE request_id = $1 AND channel = $2")
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
            "INSERT INTO admissions (id, initiator, admission, admitted_at) VALUES ($1, $2, $3, $4)",
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
        let row = sqlx::query("SELECT admission, finished_at FROM admissions WHERE id = $1")
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
            "UPDATE admissions SET finished_at = $1 WHERE id = $2 AND finished_at IS NULL",
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
        sqlx::query("DELETE FROM one_time_keys WHERE expires_at < $1")
            .bind(now.0)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        // The primary key decides between racing gateways: one insert wins.
        let inserted = sqlx::query(
            "INSERT INTO one_time_keys (scope, key, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(until.0)
        .execute(&self.pool)
        .await
        .map_err(db_err)?
        .rows_affected()
            == 1;
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
impl AgentRegistry for PgStore {
    async fn create_agent(&self, a: &AgentRecord, token_sha256: &str) -> Result<(), Error> {
        let result = sqlx::query(
            "INSERT INTO agents (name, owner, groups_json, token_sha256, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
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
            Err(e) if is_unique_violation(&e) => Err(crate::agent_exists(&a.name)),
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
            sqlx::query("UPDATE agents SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
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
             WHERE token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(agent_from_row).transpose()
    }
}

fn agent_from_row(row: &PgRow) -> Result<AgentRecord, Error> {
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

impl PgStore {
    pub(crate) fn audit_queue(&self) -> &AuditQueue {
        &self.audit
    }
}

#[async_trait]
impl AuditSink for PgStore {
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

//! `gavel store copy`: a whole state, audit log included, from one store
//! to another (SQLite to PostgreSQL and back), byte for byte, so the copy's
//! audit log verifies against the same signed checkpoints.

use crate::{Storage, db_err};
use gavel_core::Error;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Blob,
}

#[derive(PartialEq)]
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// Each table that is state (leases are not: they name live processes),
/// parents before children, with its columns and the order to read it in.
/// A table: its name, its columns with their kinds, and the order it is
/// read in.
type Table = (&'static str, &'static [(&'static str, Kind)], &'static str);

const TABLES: &[Table] = &[
    (
        "requests",
        &[
            ("id", Kind::Text),
            ("fingerprint", Kind::Text),
            ("state", Kind::Text),
            ("initiator", Kind::Text),
            ("resource", Kind::Text),
            ("class", Kind::Text),
            ("created_at", Kind::Int),
            ("expires_at", Kind::Int),
            ("grant_expires_at", Kind::Int),
            ("updated_at", Kind::Int),
            ("body", Kind::Text),
        ],
        "id",
    ),
    (
        "reviews",
        &[
            ("request_id", Kind::Text),
            ("seq", Kind::Int),
            ("reviewer", Kind::Text),
            ("decision", Kind::Text),
            ("comment", Kind::Text),
            ("at", Kind::Int),
        ],
        "request_id, seq",
    ),
    (
        "channel_messages",
        &[
            ("request_id", Kind::Text),
            ("channel", Kind::Text),
            ("reference", Kind::Text),
        ],
        "request_id, channel",
    ),
    (
        "agents",
        &[
            ("name", Kind::Text),
            ("owner", Kind::Text),
            ("groups_json", Kind::Text),
            ("token_sha256", Kind::Text),
            ("created_at", Kind::Int),
            ("expires_at", Kind::Int),
            ("revoked_at", Kind::Int),
        ],
        "name",
    ),
    (
        "admissions",
        &[
            ("id", Kind::Text),
            ("initiator", Kind::Text),
            ("admission", Kind::Text),
            ("admitted_at", Kind::Int),
            ("finished_at", Kind::Int),
        ],
        "id",
    ),
    (
        "one_time_keys",
        &[
            ("scope", Kind::Text),
            ("key", Kind::Text),
            ("expires_at", Kind::Int),
        ],
        "scope, key",
    ),
    (
        "audit_log",
        &[
            ("seq", Kind::Int),
            ("time", Kind::Int),
            ("record", Kind::Blob),
            ("leaf_hash", Kind::Blob),
        ],
        "seq",
    ),
    (
        "audit_checkpoints",
        &[
            ("size", Kind::Int),
            ("root", Kind::Blob),
            ("note", Kind::Text),
            ("created_at", Kind::Int),
        ],
        "size",
    ),
];

/// Rows read per query and written per statement.
const PAGE: i64 = 500;

/// What a copy moved.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Rows per table, in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

impl CopyReport {
    /// Rows copied into `table`.
    pub fn rows(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(0, |(_, n)| *n)
    }
}

/// A transaction on either backend.
enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Runs `$body` with `$conn` the transaction's connection and `$Db` its
/// sqlx database type.
macro_rules! on_tx {
    ($tx:expr, $conn:ident, $Db:ident => $body:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                let $conn = &mut **t;
                type $Db = Sqlite;
                $body
            }
            Tx::Postgres(t) => {
                let $conn = &mut **t;
                type $Db = Postgres;
                $body
            }
        }
    };
}

impl Tx {
    /// A read-only snapshot of `store`: every table as of one moment.
    async fn snapshot(store: &Storage) -> Result<Tx, Error> {
        Ok(match store {
            Storage::Sqlite(s) => Tx::Sqlite(s.pool().begin().await.map_err(db_err)?),
            Storage::Postgres(s) => Tx::Postgres(
                s.pool()
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(db_err)?,
            ),
        })
    }

    /// A write transaction on `store`.
    async fn write(store: &Storage) -> Result<Tx, Error> {
        Ok(match store {
            Storage::Sqlite(s) => Tx::Sqlite(
                s.pool()
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db_err)?,
            ),
            Storage::Postgres(s) => Tx::Postgres(s.pool().begin().await.map_err(db_err)?),
        })
    }

    async fn commit(self) -> Result<(), Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
        .map_err(db_err)
    }

    async fn count(&mut self, table: &str) -> Result<i64, Error> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"));
        on_tx!(self, conn, Db => sqlx::query_scalar::<Db, i64>(sql).fetch_one(conn).await)
            .map_err(db_err)
    }

    /// Whether a gateway still works on this store: one holds the
    /// checkpoint signer lease, unexpired.
    async fn live_gateway(&mut self, now: i64) -> Result<Option<String>, Error> {
        on_tx!(self, conn, Db => {
            QueryBuilder::<Db>::new("SELECT holder FROM leases WHERE expires_at > ")
                .push_bind(now)
                .build()
                .fetch_optional(conn)
                .await
                .and_then(|row| row.map(|r| r.try_get::<String, _>(0)).transpose())
        })
        .map_err(db_err)
    }

    async fn read_page(
        &mut self,
        table: &str,
        columns: &[(&str, Kind)],
        order: &str,
        offset: i64,
    ) -> Result<Vec<Vec<Cell>>, Error> {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let sql = format!(
            "SELECT {} FROM {table} ORDER BY {order} LIMIT {PAGE} OFFSET {offset}",
            names.join(", ")
        );
        on_tx!(self, conn, Db => {
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .fetch_all(conn)
                .await
                .map_err(|e| copy_err(table, e))?;
            rows.iter()
                .map(|row| {
                    columns
                        .iter()
                        .enumerate()
                        .map(|(i, (_, kind))| {
                            Ok(match kind {
                                Kind::Int => Cell::Int(row.try_get(i).map_err(db_err)?),
                                Kind::Text => Cell::Text(row.try_get(i).map_err(db_err)?),
                                Kind::Blob => Cell::Blob(row.try_get(i).map_err(db_err)?),
                            })
                        })
                        .collect::<Result<Vec<Cell>, Error>>()
                })
                .collect()
        })
    }

    async fn insert(
        &mut self,
        table: &str,
        columns: &[(&str, Kind)],
        rows: Vec<Vec<Cell>>,
    ) -> Result<(), Error> {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let head = format!("INSERT INTO {table} ({}) ", names.join(", "));
        on_tx!(self, conn, Db => {
            let mut q = QueryBuilder::<Db>::new(head);
            q.push_values(rows, |mut b, row| {
                for cell in row {
                    match cell {
                        Cell::Int(v) => b.push_bind(v),
                        Cell::Text(v) => b.push_bind(v),
                        Cell::Blob(v) => b.push_bind(v),
                    };
                }
            });
            q.build().execute(conn).await.map(|_| ()).map_err(|e| copy_err(table, e))
        })
    }
}

/// Copies every table of `from` into `to`, which must hold no requests,
/// agents or audit records, and checks before committing that the copy's
/// audit log and checkpoints are the original's, byte for byte. `from` is
/// read in one snapshot; `to` is written in one transaction: the copy
/// lands completely and verified, or not at all. Refused while a gateway
/// still holds `from`'s checkpoint signer lease (stop the gateways first:
/// one still writing there would write past the copy).
pub async fn copy_store(from: &Storage, to: &Storage) -> Result<CopyReport, Error> {
    let mut source = Tx::snapshot(from).await?;
    let now = gavel_core::Clock::now(&gavel_core::SystemClock).0;
    if let Some(holder) = source.live_gateway(now).await? {
        return Err(Error::Invalid(format!(
            "gateway {holder:?} is still running on the source store; stop every gateway on it first (or wait for its lease to run out)"
        )));
    }
    let mut target = Tx::write(to).await?;
    for table in ["requests", "agents", "audit_log"] {
        if target.count(table).await? > 0 {
            return Err(Error::Invalid(format!(
                "the target store is not empty (it has rows in {table}); copy only into a new store"
            )));
        }
    }
    let mut report = CopyReport::default();
    for &(table, columns, order) in TABLES {
        let mut offset = 0;
        let mut copied = 0u64;
        loop {
            let rows = source.read_page(table, columns, order, offset).await?;
            if rows.is_empty() {
                break;
            }
            offset += rows.len() as i64;
            copied += rows.len() as u64;
            target.insert(table, columns, rows).await?;
        }
        report.tables.push((table, copied));
    }
    if let Tx::Postgres(t) = &mut target {
        // The next append goes right after the copied log.
        sqlx::query(
            "UPDATE audit_head SET next = (SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log)",
        )
        .execute(&mut **t)
        .await
        .map_err(db_err)?;
    }
    // The copy's log must be the original's: same positions, bytes and
    // leaf hashes (recomputed, not only compared), same signed notes.
    for &(table, columns, order) in TABLES
        .iter()
        .filter(|(t, _, _)| matches!(*t, "audit_log" | "audit_checkpoints"))
    {
        let mut offset = 0;
        loop {
            let original = source.read_page(table, columns, order, offset).await?;
            let copied = target.read_page(table, columns, order, offset).await?;
            if original != copied {
                return Err(db_err(format!(
                    "the copy of {table} does not match the original near row {offset}; nothing was written"
                )));
            }
            if table == "audit_log" {
                for row in &copied {
                    if let [_, _, Cell::Blob(Some(data)), Cell::Blob(Some(hash))] = row.as_slice()
                        && gavel_audit::leaf_hash(data).as_slice() != hash.as_slice()
                    {
                        return Err(db_err(
                            "an audit record's leaf hash does not match its bytes in the source; nothing was written",
                        ));
                    }
                }
            }
            if copied.is_empty() {
                break;
            }
            offset += copied.len() as i64;
        }
    }
    target.commit().await?;
    Ok(report)
}

fn copy_err(table: &str, e: sqlx::Error) -> Error {
    db_err(format!("copying {table}: {e}"))
}

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

enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// Each table that is state (leases are not: they name live processes),
/// parents before children, with its columns and the order to read it in.
const TABLES: &[(&str, &[(&str, Kind)], &str)] = &[
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

/// Copies every table of `from` into `to`, which must hold no requests,
/// agents or audit records. The whole copy is one transaction on `to`:
/// it lands completely or not at all. Stop the gateways on `from` first:
/// a gateway still writing there would write past the copy.
pub async fn copy_store(from: &Storage, to: &Storage) -> Result<CopyReport, Error> {
    for table in ["requests", "agents", "audit_log"] {
        if count(to, table).await? > 0 {
            return Err(Error::Invalid(format!(
                "the target store is not empty (it has rows in {table}); copy only into a new store"
            )));
        }
    }
    let mut report = CopyReport::default();
    match to {
        Storage::Sqlite(s) => {
            let mut tx = s.pool().begin().await.map_err(db_err)?;
            for &(table, columns, order) in TABLES {
                let mut offset = 0;
                let mut copied = 0u64;
                loop {
                    let rows = read_page(from, table, columns, order, offset).await?;
                    if rows.is_empty() {
                        break;
                    }
                    offset += rows.len() as i64;
                    copied += rows.len() as u64;
                    let mut q: QueryBuilder<Sqlite> =
                        QueryBuilder::new(insert_head(table, columns));
                    q.push_values(rows, |mut b, row| {
                        for cell in row {
                            match cell {
                                Cell::Int(v) => b.push_bind(v),
                                Cell::Text(v) => b.push_bind(v),
                                Cell::Blob(v) => b.push_bind(v),
                            };
                        }
                    });
                    q.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| copy_err(table, e))?;
                }
                report.tables.push((table, copied));
            }
            tx.commit().await.map_err(db_err)?;
        }
        Storage::Postgres(s) => {
            let mut tx = s.pool().begin().await.map_err(db_err)?;
            for &(table, columns, order) in TABLES {
                let mut offset = 0;
                let mut copied = 0u64;
                loop {
                    let rows = read_page(from, table, columns, order, offset).await?;
                    if rows.is_empty() {
                        break;
                    }
                    offset += rows.len() as i64;
                    copied += rows.len() as u64;
                    let mut q: QueryBuilder<Postgres> =
                        QueryBuilder::new(insert_head(table, columns));
                    q.push_values(rows, |mut b, row| {
                        for cell in row {
                            match cell {
                                Cell::Int(v) => b.push_bind(v),
                                Cell::Text(v) => b.push_bind(v),
                                Cell::Blob(v) => b.push_bind(v),
                            };
                        }
                    });
                    q.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| copy_err(table, e))?;
                }
                report.tables.push((table, copied));
            }
            // The next append goes right after the copied log.
            sqlx::query(
                "UPDATE audit_head SET next = (SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log)",
            )
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        }
    }
    Ok(report)
}

fn copy_err(table: &str, e: sqlx::Error) -> Error {
    db_err(format!("copying {table}: {e}"))
}

fn insert_head(table: &str, columns: &[(&str, Kind)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    format!("INSERT INTO {table} ({}) ", names.join(", "))
}

async fn count(store: &Storage, table: &str) -> Result<i64, Error> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"));
    match store {
        Storage::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        Storage::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
    }
    .map_err(db_err)
}

async fn read_page(
    store: &Storage,
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
    macro_rules! cells {
        ($rows:expr) => {
            $rows
                .iter()
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
        };
    }
    match store {
        Storage::Sqlite(s) => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(s.pool())
                .await
                .map_err(|e| copy_err(table, e))?;
            cells!(rows)
        }
        Storage::Postgres(s) => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(s.pool())
                .await
                .map_err(|e| copy_err(table, e))?;
            cells!(rows)
        }
    }
}

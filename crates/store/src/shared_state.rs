//! State that browsers and channels leave with one gateway and may come
//! back for at another: sign-in state and delivery status. The same SQL
//! serves both backends (placeholders come from the query builder).

use crate::{Storage, db_err};
use gavel_core::{Delivery, DeliveryStatus, Error, Timestamp};
use sqlx::{QueryBuilder, Row};

/// Runs `$body` with `$pool` bound to the backend's pool and `$Db` to its
/// sqlx database type.
macro_rules! on_pool {
    ($self:expr, $pool:ident, $Db:ident => $body:expr) => {
        match $self {
            Storage::Sqlite(s) => {
                let $pool = s.pool();
                type $Db = sqlx::Sqlite;
                $body
            }
            Storage::Postgres(s) => {
                let $pool = s.pool();
                type $Db = sqlx::Postgres;
                $body
            }
        }
    };
}

impl Storage {
    /// Takes or renews the lease `name` for `holder` until `until`, if it
    /// is free, expired at `now`, or already `holder`'s. Clocks of the
    /// gateways sharing a store are assumed synchronised (NTP).
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error> {
        on_pool!(self, pool, Db => {
            QueryBuilder::<Db>::new("INSERT INTO leases (name, holder, expires_at) VALUES (")
                .push_bind(name)
                .push(", ")
                .push_bind(holder)
                .push(", ")
                .push_bind(until.0)
                .push(
                    ") ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= ",
                )
                .push_bind(now.0)
                .build()
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
                .map_err(db_err)
        })
    }

    /// Gives the lease `name` up, if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), Error> {
        on_pool!(self, pool, Db => {
            QueryBuilder::<Db>::new("DELETE FROM leases WHERE name = ")
                .push_bind(name)
                .push(" AND holder = ")
                .push_bind(holder)
                .build()
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(db_err)
        })
    }

    /// Keeps `value` under (`kind`, `key`) until `expires_at`, replacing
    /// what was there. Expired entries of `kind` go first, and past
    /// `max_entries` the one that expires soonest: a flood of sign-ins
    /// cannot grow the table without bound. `key` must already be a
    /// digest, never a cookie's own value.
    pub async fn put_web_state(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        expires_at: Timestamp,
        now: Timestamp,
        max_entries: u64,
    ) -> Result<(), Error> {
        on_pool!(self, pool, Db => {
            let mut tx = pool.begin().await.map_err(db_err)?;
            if matches!(self, Storage::Postgres(_)) {
                // One writer per kind at a time, so concurrent writers (on
                // several gateways) cannot each see room under the cap.
                // SQLite's write lock does the same there.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('gavel.web_state.' || $1))")
                    .bind(kind)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            QueryBuilder::<Db>::new("DELETE FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" AND expires_at <= ")
                .push_bind(now.0)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            // Room for one more: everything past the newest max - 1 goes.
            QueryBuilder::<Db>::new("DELETE FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" AND key IN (SELECT key FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" ORDER BY expires_at DESC LIMIT ")
                .push_bind(i64::MAX)
                .push(" OFFSET ")
                .push_bind(max_entries.saturating_sub(1).min(i64::MAX as u64) as i64)
                .push(")")
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            QueryBuilder::<Db>::new("INSERT INTO web_state (kind, key, value, expires_at) VALUES (")
                .push_bind(kind)
                .push(", ")
                .push_bind(key)
                .push(", ")
                .push_bind(value)
                .push(", ")
                .push_bind(expires_at.0)
                .push(") ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)
        })
    }

    /// The value under (`kind`, `key`), unless it expired by `now`.
    pub async fn web_state(
        &self,
        kind: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<String>, Error> {
        on_pool!(self, pool, Db => {
            QueryBuilder::<Db>::new("SELECT value FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" AND key = ")
                .push_bind(key)
                .push(" AND expires_at > ")
                .push_bind(now.0)
                .build()
                .fetch_optional(pool)
                .await
                .and_then(|row| row.map(|r| r.try_get(0)).transpose())
                .map_err(db_err)
        })
    }

    /// Removes the entry under (`kind`, `key`) and returns its value if it
    /// had not expired by `now`: of two gateways taking the same entry
    /// (a sign-in's `state` replayed to both), one gets it.
    pub async fn take_web_state(
        &self,
        kind: &str,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<String>, Error> {
        on_pool!(self, pool, Db => {
            let row = QueryBuilder::<Db>::new("DELETE FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" AND key = ")
                .push_bind(key)
                .push(" RETURNING value, expires_at")
                .build()
                .fetch_optional(pool)
                .await
                .map_err(db_err)?;
            let Some(row) = row else { return Ok(None) };
            let expires: i64 = row.try_get(1).map_err(db_err)?;
            if expires <= now.0 {
                return Ok(None);
            }
            row.try_get(0).map(Some).map_err(db_err)
        })
    }

    /// Forgets the entry under (`kind`, `key`).
    pub async fn drop_web_state(&self, kind: &str, key: &str) -> Result<(), Error> {
        on_pool!(self, pool, Db => {
            QueryBuilder::<Db>::new("DELETE FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" AND key = ")
                .push_bind(key)
                .build()
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(db_err)
        })
    }

    /// The value under (`kind`, `key`), storing `value` first if there is
    /// none: every gateway ends up with the first one stored (a key they
    /// must share, such as the one that signs the sign-in form).
    pub async fn shared_web_state(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        expires_at: Timestamp,
    ) -> Result<String, Error> {
        on_pool!(self, pool, Db => {
            QueryBuilder::<Db>::new("INSERT INTO web_state (kind, key, value, expires_at) VALUES (")
                .push_bind(kind)
                .push(", ")
                .push_bind(key)
                .push(", ")
                .push_bind(value)
                .push(", ")
                .push_bind(expires_at.0)
                .push(") ON CONFLICT (kind, key) DO NOTHING")
                .build()
                .execute(pool)
                .await
                .map_err(db_err)?;
            QueryBuilder::<Db>::new("SELECT value FROM web_state WHERE kind = ")
                .push_bind(kind)
                .push(" AND key = ")
                .push_bind(key)
                .build()
                .fetch_one(pool)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(db_err)
        })
    }

    /// Records where delivery `seq` of process `process` for request
    /// `request_id` stands, replacing what was recorded before.
    pub async fn record_delivery(
        &self,
        request_id: &str,
        process: &str,
        began_at: Timestamp,
        delivery: &Delivery,
    ) -> Result<(), Error> {
        let status = match delivery.status {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        };
        on_pool!(self, pool, Db => {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO deliveries (request_id, process, seq, channel, event, status, attempts, last_error, began_at, at) ",
            );
            q.push_values([()], |mut b, _| {
                b.push_bind(request_id)
                    .push_bind(process)
                    .push_bind(delivery.seq as i64)
                    .push_bind(delivery.channel.as_str())
                    .push_bind(delivery.event.as_str())
                    .push_bind(status)
                    .push_bind(i64::from(delivery.attempts))
                    .push_bind(delivery.last_error.as_deref())
                    .push_bind(began_at.0)
                    .push_bind(delivery.at.0);
            });
            q.push(
                " ON CONFLICT (request_id, process, seq) DO UPDATE SET status = excluded.status, \
                 attempts = excluded.attempts, last_error = excluded.last_error, at = excluded.at",
            );
            q.build().execute(pool).await.map(|_| ()).map_err(db_err)
        })
    }

    /// Every delivery recorded for `request_id`, by any gateway, in the
    /// order they began.
    pub async fn deliveries_of(&self, request_id: &str) -> Result<Vec<Delivery>, Error> {
        on_pool!(self, pool, Db => {
            let rows = QueryBuilder::<Db>::new(
                "SELECT seq, channel, event, status, attempts, last_error, at FROM deliveries WHERE request_id = ",
            )
            .push_bind(request_id)
            .push(" ORDER BY began_at, process, seq")
            .build()
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
            rows.iter()
                .map(|row| {
                    let status: String = row.try_get("status").map_err(db_err)?;
                    let attempts: i64 = row.try_get("attempts").map_err(db_err)?;
                    let seq: i64 = row.try_get("seq").map_err(db_err)?;
                    Ok(Delivery {
                        channel: row.try_get("channel").map_err(db_err)?,
                        event: row.try_get("event").map_err(db_err)?,
                        status: match status.as_str() {
                            "delivered" => DeliveryStatus::Delivered,
                            "failed" => DeliveryStatus::Failed,
                            _ => DeliveryStatus::Pending,
                        },
                        attempts: attempts as u32,
                        last_error: row.try_get("last_error").map_err(db_err)?,
                        at: Timestamp(row.try_get("at").map_err(db_err)?),
                        seq: seq as u64,
                    })
                })
                .collect()
        })
    }
}

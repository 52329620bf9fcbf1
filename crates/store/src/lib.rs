//! Persistence for gavel: approval requests with their reviews and grants,
//! agents with hashed tokens, and the audit log.
//!
//! [`SqliteStore`] is the embedded default (WAL, `synchronous = FULL`,
//! embedded migrations). It implements the core ports [`Store`],
//! [`AgentRegistry`] and [`AuditSink`], so the gate never sees SQL.
#![deny(missing_docs)]

mod sqlite;

pub use sqlite::SqliteStore;

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

use gavel_core::Error;

/// What `[storage] url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// An SQLite database file.
    Sqlite(std::path::PathBuf),
}

impl StorageUrl {
    /// Parses `sqlite://path` (relative paths are relative to the working
    /// directory) or `sqlite:path`.
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
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(
                "PostgreSQL storage is not available in this build yet; use sqlite://PATH".into(),
            );
        }
        // The URL is not echoed: it may carry a password.
        Err("unsupported storage URL scheme; expected sqlite://PATH".into())
    }
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> Error {
    Error::store(e)
}

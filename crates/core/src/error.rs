use std::fmt;

/// Whose fault an error is, so each surface maps it to its own protocol in
/// one place (HTTP status, SQLSTATE, JSON-RPC code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The caller sent something wrong.
    Caller,
    /// Storage or another dependency failed.
    Internal,
}

/// A failure inside the gate's own machinery (store, audit, notifier).
///
/// Every such failure denies the action: the gate fails closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not read or write.
    #[error("store: {0}")]
    Store(String),
    /// The audit log could not append; nothing is forwarded without a record.
    #[error("audit: {0}")]
    Audit(String),
    /// Input that cannot become an action.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Who caused it.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Error::Invalid(_) => ErrorSource::Caller,
            Error::Store(_) | Error::Audit(_) => ErrorSource::Internal,
        }
    }

    /// Wraps a store failure.
    pub fn store(e: impl fmt::Display) -> Self {
        Error::Store(e.to_string())
    }
}

//! The PostgreSQL surface: a wire-protocol proxy that gates every
//! statement.
//!
//! Agents connect with any PostgreSQL client and their gavel token as the
//! password; gavel connects to the real server with its own credentials.
//! [`classify`] decides each statement's SPEC §3 action class with
//! PostgreSQL's own grammar (libpg_query through the `pg_query` crate), so
//! gavel cannot be fooled by a statement the server parses differently;
//! [`shape`] lets statements that differ only in literals share one
//! classification. [`PostgresSurface`] runs a listener: allowed statements
//! are forwarded as the client's own bytes, denied ones get SQLSTATE 42501,
//! and those that need approval wait while a human decides.
#![deny(missing_docs)]

pub mod classify;
mod proxy;
pub mod shape;
mod upstream;
pub mod wire;

pub use classify::{Classification, Classifier, StatementClass};
pub use proxy::{Classified, PostgresSurface};

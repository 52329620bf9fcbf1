//! The PostgreSQL surface.
//!
//! [`classify`] decides the SPEC §3 action class of a query string with
//! PostgreSQL's own grammar (libpg_query through the `pg_query` crate), so
//! gavel cannot be fooled by a statement the server parses differently.
//! The wire-protocol proxy that uses it comes next.
#![deny(missing_docs)]

pub mod classify;

pub use classify::{Classification, Classifier, StatementClass};

//! The PostgreSQL surface: a wire-protocol proxy that gates every
//! statement.
//!
//! Agents connect with any PostgreSQL client and their gavel token as the
//! password; gavel connects to the real server with its own credentials.
//! [`classify`] decides each statement's SPEC §3 action class with
//! PostgreSQL's own grammar (libpg_query through the `pg_query` crate), so
//! gavel cannot be fooled by a statement the server parses differently;
//! [`shape`] lets statements that differ only in literals share one
//! classification. [`PostgresSurface`] runs a listener: every statement is
//! admitted by the gate ([`gavel_core::Gate::admit`]) and reaches the server
//! only together with its `Permitted` (`to_server`); denied ones get
//! SQLSTATE 42501, and those that need approval wait while a human
//! decides. The session judges by what the server holds ([`names`]).
#![deny(missing_docs)]

pub mod classify;
mod hold;
pub mod names;
mod pipeline;
mod session;
pub mod shape;
mod startup;
mod surface;
mod to_server;
mod upstream;
pub mod wire;

pub use classify::{Classification, Classifier, StatementClass};
pub use surface::{Classified, PostgresSurface, classifier_for};

//! The tamper-evident audit log (SPEC §5).
//!
//! - [`record`]: the versioned bytes hashed for each record (`leaf_data`).
//! - [`tree`]: the RFC 6962 Merkle tree over those leaves. The tree lives
//!   in the store as leaf hashes; roots and proofs are computed from them.
//!   `ct-merkle` supplies the proof index arithmetic and the verification.
//! - [`note`]: C2SP signed notes (Ed25519) and tlog checkpoints.
//! - [`verify`]: the offline verifier behind `gavel audit verify`.
#![deny(missing_docs)]

pub mod export;
pub mod note;
pub mod record;
pub mod tree;
pub mod verify;

pub use note::{Checkpoint, NoteError, NoteSigner, NoteVerifier};
pub use record::{RECORD_VERSION, leaf_data, leaf_members, leaf_seq, parse_leaf};
pub use tree::{Frontier, Hash, consistency_proof, inclusion_proof, leaf_hash, root_of};
pub use verify::{StoredCheckpoint, StoredRecord, VerifyError, VerifyReport, verify_log};

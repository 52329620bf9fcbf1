//! The offline verifier: recomputes the tree from the stored records and
//! checks every signed checkpoint against it.
//!
//! It finds, and names by sequence number:
//! - a modified record: its bytes no longer start with its position, or
//!   their hash differs from the stored leaf hash, or a signed checkpoint's
//!   root no longer matches (then the first record not vouched for by an
//!   earlier checkpoint is named);
//! - an inserted, deleted or reordered record: positions are contiguous
//!   from 0 and every record carries its own position inside its hashed
//!   bytes;
//! - truncation: a stored checkpoint, or one kept elsewhere
//!   (`--checkpoint`), covers more records than the log holds.

use crate::note::{Checkpoint, NoteVerifier};
use crate::record::leaf_seq;
use crate::tree::{Frontier, Hash, leaf_hash};
use std::collections::BTreeMap;

/// One stored record, as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its position (the row's key).
    pub seq: u64,
    /// The stored leaf bytes.
    pub data: Vec<u8>,
    /// The stored leaf hash.
    pub leaf_hash: Hash,
}

/// One stored signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it claims (the row's key).
    pub size: u64,
    /// The signed note.
    pub note: String,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Signed checkpoints checked (stored and external).
    pub checkpoints: usize,
    /// Root of the whole log.
    pub root: Hash,
    /// Records covered by a matching signed checkpoint; any after it are
    /// not yet vouched for (a forged record appended there would not show).
    pub signed: u64,
}

/// The first problem found, by sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("first bad record: seq {seq}: {reason}")]
pub struct VerifyError {
    /// The first sequence number that cannot be vouched for.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Verifies `records` (in stored order) against `checkpoints` and an
/// optional checkpoint kept elsewhere.
pub fn verify_log(
    records: impl IntoIterator<Item = StoredRecord>,
    checkpoints: &[StoredCheckpoint],
    verifier: &NoteVerifier,
    external: Option<&str>,
) -> Result<VerifyReport, VerifyError> {
    // Every checkpoint must be signed by the log's key for the log's origin
    // and claim the size it is stored under.
    let mut expected: BTreeMap<u64, (Hash, &'static str)> = BTreeMap::new();
    let mut opened = 0;
    for cp in checkpoints {
        let parsed = Checkpoint::open(&cp.note, verifier).map_err(|e| VerifyError {
            seq: cp.size.saturating_sub(1),
            reason: format!("stored checkpoint for size {}: {e}", cp.size),
        })?;
        if parsed.size != cp.size || parsed.origin != verifier.name() {
            return Err(VerifyError {
                seq: cp.size.saturating_sub(1),
                reason: format!(
                    "stored checkpoint for size {} claims size {} of log {:?}",
                    cp.size, parsed.size, parsed.origin
                ),
            });
        }
        expected.insert(parsed.size, (parsed.root, "stored checkpoint"));
        opened += 1;
    }
    if let Some(note) = external {
        let parsed = Checkpoint::open(note, verifier).map_err(|e| VerifyError {
            seq: 0,
            reason: format!("the external checkpoint does not verify: {e}"),
        })?;
        if parsed.origin != verifier.name() {
            return Err(VerifyError {
                seq: 0,
                reason: format!("the external checkpoint is for log {:?}", parsed.origin),
            });
        }
        if expected
            .get(&parsed.size)
            .is_some_and(|(root, _)| *root != parsed.root)
        {
            return Err(VerifyError {
                seq: parsed.size.saturating_sub(1),
                reason: format!(
                    "the external checkpoint and a stored one disagree on the root at size {}",
                    parsed.size
                ),
            });
        }
        expected.insert(parsed.size, (parsed.root, "external checkpoint"));
        opened += 1;
    }

    let mut frontier = Frontier::default();
    let mut vouched_until = 0u64; // records [0, vouched_until) are covered by a matching checkpoint
    for rec in records {
        let at = frontier.size();
        if rec.seq != at {
            let reason = if rec.seq > at {
                format!(
                    "missing: the next stored record is seq {} (records deleted)",
                    rec.seq
                )
            } else {
                format!(
                    "seq {} appears again out of order (records inserted or reordered)",
                    rec.seq
                )
            };
            return Err(VerifyError { seq: at, reason });
        }
        let embedded = leaf_seq(&rec.data).ok_or_else(|| VerifyError {
            seq: at,
            reason: "its bytes do not start with {\"seq\":N,\"v\":1, (record modified)".into(),
        })?;
        if embedded != at {
            return Err(VerifyError {
                seq: at,
                reason: format!(
                    "stored at position {at} but its hashed bytes say seq {embedded} (record moved)"
                ),
            });
        }
        let hash = leaf_hash(&rec.data);
        if hash != rec.leaf_hash {
            return Err(VerifyError {
                seq: at,
                reason: "its bytes do not match its stored leaf hash (record modified)".into(),
            });
        }
        frontier.push(hash);
        if let Some((root, what)) = expected.get(&frontier.size()) {
            if *root != frontier.root() {
                return Err(VerifyError {
                    seq: vouched_until,
                    reason: format!(
                        "the signed {what} for size {} does not match the records: one of seq {}..={} was altered",
                        frontier.size(),
                        vouched_until,
                        frontier.size() - 1
                    ),
                });
            }
            vouched_until = frontier.size();
        }
    }
    if let Some((&size, (_, what))) = expected.range(frontier.size() + 1..).next() {
        return Err(VerifyError {
            seq: frontier.size(),
            reason: format!(
                "the log ends at {} records but a signed {what} covers {size} (records truncated)",
                frontier.size()
            ),
        });
    }
    Ok(VerifyReport {
        records: frontier.size(),
        checkpoints: opened,
        root: frontier.root(),
        signed: vouched_until,
    })
}

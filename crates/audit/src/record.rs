//! The bytes of a record, as hashed into the tree.
//!
//! Version 1: the record as a JSON object with two more members, `"v": 1`
//! and `"seq": N` (its 0-based position in the log), serialized with object
//! keys sorted by their UTF-8 bytes, no insignificant whitespace, integers
//! in decimal, and strings escaped as serde_json escapes them (only `"`,
//! `\` and control characters). Those bytes are stored verbatim, so the
//! verifier hashes exactly what was written, and a record carries its own
//! position: moving it breaks its hash.

use gavel_core::{AuditRecord, canonical_json};

/// The record format version written into every record.
pub const RECORD_VERSION: u64 = 1;

/// The canonical bytes of `record` at position `seq`.
pub fn leaf_data(seq: u64, record: &AuditRecord) -> Vec<u8> {
    let mut value = serde_json::to_value(record).unwrap_or_else(|e| {
        // AuditRecord is plain data; serializing it cannot fail.
        panic!("audit record does not serialize: {e}")
    });
    if let Some(map) = value.as_object_mut() {
        map.insert("v".into(), RECORD_VERSION.into());
        map.insert("seq".into(), seq.into());
    }
    canonical_json(&value)
}

/// Why stored bytes are not a valid record.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    /// Not JSON, or not a record.
    #[error("not a version-1 audit record: {0}")]
    Malformed(String),
    /// Valid JSON, but not in canonical form (it was edited).
    #[error("record bytes are not canonical")]
    NotCanonical,
}

/// Parses stored leaf bytes back into `(seq, record)`, checking they are
/// exactly the canonical encoding.
pub fn parse_leaf(data: &[u8]) -> Result<(u64, AuditRecord), LeafError> {
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| LeafError::Malformed(e.to_string()))?;
    let seq = value["seq"]
        .as_u64()
        .ok_or_else(|| LeafError::Malformed("no seq".into()))?;
    if value["v"].as_u64() != Some(RECORD_VERSION) {
        return Err(LeafError::Malformed(format!(
            "unknown version {}",
            value["v"]
        )));
    }
    let record: AuditRecord =
        serde_json::from_value(value.clone()).map_err(|e| LeafError::Malformed(e.to_string()))?;
    if leaf_data(seq, &record) != data {
        return Err(LeafError::NotCanonical);
    }
    Ok((seq, record))
}

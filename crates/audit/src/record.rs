//! The bytes of a record, as hashed into the tree.
//!
//! Version 1: a JSON object that starts with `{"seq":N,"v":1,` (its 0-based
//! position in the log and the format version), followed by the record's
//! members with keys sorted by their UTF-8 bytes, no insignificant
//! whitespace, integers in decimal, and strings escaped as serde_json
//! escapes them (only `"`, `\` and control characters). Those bytes are
//! stored verbatim, so the verifier hashes exactly what was written, and a
//! record carries its own position: moving it breaks its hash. Position and
//! version come first so the verifier reads them without parsing JSON.

use gavel_core::{AuditRecord, canonical_json};

/// The record format version written into every record.
pub const RECORD_VERSION: u64 = 1;

/// The canonical bytes of `record` at position `seq`.
pub fn leaf_data(seq: u64, record: &AuditRecord) -> Vec<u8> {
    let members = leaf_members(record);
    let mut out = format!("{{\"seq\":{seq},\"v\":{RECORD_VERSION},").into_bytes();
    out.extend_from_slice(&members);
    out
}

/// What follows `{"seq":N,"v":1,` in the record's bytes: its members as
/// canonical JSON and the closing brace. For a store that assigns the
/// position itself and writes the prefix in the same statement.
pub fn leaf_members(record: &AuditRecord) -> Vec<u8> {
    let value = serde_json::to_value(record).unwrap_or_else(|e| {
        // AuditRecord is plain data; serializing it cannot fail.
        panic!("audit record does not serialize: {e}")
    });
    let mut members = canonical_json(&value);
    // `members` is `{…}` with at least one member: drop its opening brace.
    members.remove(0);
    members
}

/// Reads the position and version from the front of leaf bytes without
/// parsing the rest (the fast path of verification).
pub fn leaf_seq(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let version = format!(",\"v\":{RECORD_VERSION},");
    rest[digits..]
        .starts_with(version.as_bytes())
        .then_some(seq)
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

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_core::{ActionClass, AuditEvent, Timestamp};

    #[test]
    fn position_and_version_lead_and_round_trip() {
        let r = AuditRecord {
            time: Timestamp(5),
            event: AuditEvent::Decision,
            initiator: "agent:a".into(),
            owner: None,
            on_behalf_of: None,
            reviewers: vec![],
            comment: Some("{\"seq\":9,\"v\":1,".into()),
            resource: "db".into(),
            class: ActionClass::SqlRead,
            operation: "SELECT 1".into(),
            details: serde_json::Value::Null,
            intent: String::new(),
            policies: vec!["p".into()],
            decision: Some("allow".into()),
            outcome: None,
            source: None,
            surface: "api".into(),
            request_id: None,
            gateway_id: "g".into(),
        };
        let data = leaf_data(42, &r);
        assert!(
            data.starts_with(b"{\"seq\":42,\"v\":1,\"class\":"),
            "{}",
            String::from_utf8_lossy(&data)
        );
        assert_eq!(leaf_seq(&data), Some(42));
        assert_eq!(parse_leaf(&data).unwrap(), (42, r));
        for bad in [
            &b"{\"seq\":042,\"v\":1,"[..],
            b"{\"seq\":42,\"v\":2,",
            b"{\"v\":1,\"seq\":42,",
            b"{\"seq\":,\"v\":1,",
            b" {\"seq\":1,\"v\":1,",
        ] {
            assert_eq!(leaf_seq(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // Reformatted but equivalent JSON is not the canonical bytes.
        let spaced = String::from_utf8(data)
            .unwrap()
            .replacen("\"class\":", "\"class\": ", 1);
        assert!(matches!(
            parse_leaf(spaced.as_bytes()),
            Err(LeafError::NotCanonical)
        ));
    }
}

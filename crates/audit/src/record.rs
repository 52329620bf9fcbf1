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
///
/// Written member by member in canonical (byte) order, each value by
/// serde_json's own serializer, `details` by [`canonical_json`]: the bytes
/// of `canonical_json(serde_json::to_value(record))` without building the
/// value tree. A test holds the two to the same bytes, and fails if a new
/// member of `AuditRecord` is not written here.
pub fn leaf_members(record: &AuditRecord) -> Vec<u8> {
    let r = record;
    let mut out = Vec::with_capacity(512 + r.operation.len());
    let mut first = true;
    let mut member = |out: &mut Vec<u8>, key: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    };
    // Keys are plain ASCII names, so their byte order is this order.
    member(&mut out, "class");
    json(&mut out, &r.class);
    member(&mut out, "comment");
    json(&mut out, &r.comment);
    member(&mut out, "decision");
    json(&mut out, &r.decision);
    if !r.details.is_null() {
        member(&mut out, "details");
        out.extend_from_slice(&canonical_json(&r.details));
    }
    member(&mut out, "event");
    json(&mut out, &r.event);
    member(&mut out, "gateway_id");
    json(&mut out, &r.gateway_id);
    member(&mut out, "initiator");
    json(&mut out, &r.initiator);
    member(&mut out, "intent");
    json(&mut out, &r.intent);
    if r.on_behalf_of.is_some() {
        member(&mut out, "on_behalf_of");
        json(&mut out, &r.on_behalf_of);
    }
    member(&mut out, "operation");
    json(&mut out, &r.operation);
    member(&mut out, "outcome");
    json(&mut out, &r.outcome);
    member(&mut out, "owner");
    json(&mut out, &r.owner);
    member(&mut out, "policies");
    json(&mut out, &r.policies);
    member(&mut out, "request_id");
    json(&mut out, &r.request_id);
    member(&mut out, "resource");
    json(&mut out, &r.resource);
    member(&mut out, "reviewers");
    json(&mut out, &r.reviewers);
    member(&mut out, "source");
    json(&mut out, &r.source);
    member(&mut out, "surface");
    json(&mut out, &r.surface);
    member(&mut out, "time");
    json(&mut out, &r.time);
    out.push(b'}');
    out
}

/// `value` as serde_json writes it, appended to `out`. Every member but
/// `details` is a string, a number, null or a list of strings, whose
/// serde_json form is already canonical.
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).unwrap_or_else(|e| {
        // AuditRecord is plain data; serializing it cannot fail.
        panic!("audit record does not serialize: {e}")
    });
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

    /// The members as canonical JSON of the whole serialized record: what
    /// `leaf_members` wrote before it skipped the value tree.
    fn reference_members(r: &AuditRecord) -> Vec<u8> {
        let mut members = canonical_json(&serde_json::to_value(r).unwrap());
        members.remove(0);
        members
    }

    #[test]
    fn members_are_the_canonical_json_of_the_whole_record() {
        let plain = AuditRecord {
            time: Timestamp(1_764_547_200_123),
            event: AuditEvent::Decision,
            initiator: "agent:a".into(),
            owner: None,
            on_behalf_of: None,
            reviewers: vec![],
            comment: None,
            resource: "db".into(),
            class: ActionClass::SqlRead,
            operation: "SELECT 1".into(),
            details: serde_json::Value::Null,
            intent: String::new(),
            policies: vec![],
            decision: None,
            outcome: None,
            source: None,
            surface: "postgres".into(),
            request_id: None,
            gateway_id: "gw".into(),
        };
        let full = AuditRecord {
            event: AuditEvent::Approved,
            owner: Some("owner@x".into()),
            on_behalf_of: Some("h\u{e9}l\u{e8}ne@x".into()),
            reviewers: vec!["a@x".into(), "b\"q\\@x".into()],
            comment: Some("line\nbreak \u{1} \u{1F600} </script>".into()),
            class: ActionClass::SqlDdl,
            operation: "DROP TABLE \"t\"; -- \u{2028}".into(),
            details: serde_json::json!({"z": [1, 2.5, null], "a": {"y": true, "b": "x"}}),
            intent: "because".into(),
            policies: vec!["p1".into(), "p0".into()],
            decision: Some("allow".into()),
            outcome: Some("executed".into()),
            source: Some("127.0.0.1:5".into()),
            request_id: Some(gavel_core::RequestId("0190-abc".into())),
            ..plain.clone()
        };
        for r in [plain, full] {
            assert_eq!(
                String::from_utf8(leaf_members(&r)).unwrap(),
                String::from_utf8(reference_members(&r)).unwrap()
            );
        }
    }

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

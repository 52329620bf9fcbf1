//! Each export format against its specification's required fields, parsed
//! here independently of the code that writes it.

use gavel_audit::export::{cef, jsonl, ocsf, syslog};
use gavel_core::{ActionClass, AuditEvent, AuditRecord, RequestId, Timestamp};

fn record(event: AuditEvent, decision: Option<&str>) -> AuditRecord {
    AuditRecord {
        time: Timestamp(1_764_000_000_123),
        event,
        initiator: "agent:deploy-bot".into(),
        owner: Some("bob@example.com".into()),
        on_behalf_of: None,
        reviewers: vec!["alice@example.com".into()],
        comment: Some("ok | fine = yes ] \"quoted\" \\ back\nslash".into()),
        resource: "prod-db".into(),
        class: ActionClass::SqlDdl,
        operation: "ALTER TABLE t ADD c int -- a|b=c".into(),
        details: serde_json::Value::Null,
        intent: "migrate".into(),
        policies: vec!["prod-ddl".into(), "other".into()],
        decision: decision.map(str::to_owned),
        outcome: Some("approved".into()),
        source: Some("10.1.2.3".into()),
        surface: "api".into(),
        request_id: Some(RequestId("r-1".into())),
        gateway_id: "gw-1".into(),
    }
}

#[test]
fn ocsf_api_activity_has_the_required_attributes() {
    for (event, decision, disposition, id) in [
        (AuditEvent::Decision, Some("allow"), "Allowed", 1),
        (AuditEvent::Decision, Some("deny"), "Blocked", 2),
        (AuditEvent::Approved, Some("approve"), "Approved", 8),
        (AuditEvent::GrantUsed, Some("allow"), "Approved", 8),
        (AuditEvent::Denied, Some("deny"), "Blocked", 2),
    ] {
        let e = ocsf(7, &record(event, decision), "gavel.example/audit");
        // Base event: required.
        for key in [
            "activity_id",
            "category_uid",
            "class_uid",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(e[key].is_u64(), "{key} in {e}");
        }
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["category_uid"], 6);
        assert_eq!(
            e["type_uid"].as_u64().unwrap(),
            600300 + e["activity_id"].as_u64().unwrap()
        );
        assert_eq!(e["time"], 1_764_000_000_123u64);
        assert!(e["metadata"]["version"].as_str().unwrap().starts_with("1."));
        assert_eq!(e["metadata"]["product"]["vendor_name"], "gavel");
        assert_eq!(e["metadata"]["product"]["name"], "gavel");
        // API Activity: actor, api (with operation) and src_endpoint are required.
        assert_eq!(e["actor"]["user"]["uid"], "agent:deploy-bot");
        assert_eq!(e["api"]["operation"], "sql.ddl");
        assert_eq!(e["src_endpoint"]["ip"], "10.1.2.3");
        assert_eq!(
            (
                e["disposition"].as_str().unwrap(),
                e["disposition_id"].as_u64().unwrap()
            ),
            (disposition, id)
        );
        // The approval chain travels along.
        assert_eq!(e["unmapped"]["gavel"]["reviewers"][0], "alice@example.com");
        assert_eq!(e["unmapped"]["gavel"]["request_id"], "r-1");
        assert_eq!(e["unmapped"]["gavel"]["seq"], 7);
    }
}

/// Splits a CEF line on unescaped '|'.
fn cef_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if fields.len() < 8 => {
                let n = chars.next().unwrap();
                fields.last_mut().unwrap().push(n);
            }
            '|' if fields.len() < 8 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Parses CEF extensions: `key=value` pairs where `=` and `\\` in values are
/// escaped and a new key starts at ` word=`.
fn cef_extensions(ext: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let bytes: Vec<char> = ext.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let key_start = i;
        while bytes[i] != '=' {
            i += 1;
        }
        let key: String = bytes[key_start..i].iter().collect();
        i += 1;
        let mut value = String::new();
        while i < bytes.len() {
            if bytes[i] == '\\' {
                value.push(match bytes[i + 1] {
                    'n' => '\n',
                    'r' => '\r',
                    c => c,
                });
                i += 2;
                continue;
            }
            // A space followed by `key=` (no escape) starts the next pair.
            if bytes[i] == ' ' {
                let rest: String = bytes[i + 1..].iter().collect();
                let starts_pair = rest.find('=').is_some_and(|eq| {
                    !rest[..eq].is_empty() && rest[..eq].chars().all(|c| c.is_ascii_alphanumeric())
                });
                if starts_pair {
                    break;
                }
            }
            value.push(bytes[i]);
            i += 1;
        }
        out.push((key, value));
        i += 1;
    }
    out
}

#[test]
fn cef_has_all_seven_header_fields_and_escapes_values() {
    let line = cef(42, &record(AuditEvent::Decision, Some("deny")));
    let f = cef_fields(&line);
    assert_eq!(f.len(), 8, "{line}");
    assert_eq!(f[0], "CEF:0");
    assert_eq!((f[1].as_str(), f[2].as_str()), ("gavel", "gavel"));
    assert!(!f[3].is_empty(), "device version");
    assert_eq!(f[4], "decision", "signature id");
    assert_eq!(f[5], "sql.ddl decision", "name");
    let severity: u8 = f[6].parse().unwrap();
    assert!(severity <= 10);
    let ext = cef_extensions(&f[7]);
    let get = |k: &str| {
        ext.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing in {line}"))
    };
    assert_eq!(get("rt"), "1764000000123");
    assert_eq!(get("suser"), "agent:deploy-bot");
    assert_eq!(get("src"), "10.1.2.3");
    assert_eq!(get("act"), "Blocked");
    assert_eq!(get("msg"), "ALTER TABLE t ADD c int -- a|b=c");
    assert_eq!(get("cn1"), "42");
    assert_eq!(get("cs2"), "prod-ddl,other");
}

#[test]
fn syslog_is_rfc_5424_with_a_private_sd_id() {
    let line = syslog(9, &record(AuditEvent::Approved, Some("approve")));
    // HEADER = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
    let (pri, rest) = line.strip_prefix('<').unwrap().split_once('>').unwrap();
    let pri: u8 = pri.parse().unwrap();
    assert!(pri <= 191);
    assert_eq!(pri / 8, 13, "facility log audit");
    let mut parts = rest.splitn(7, ' ');
    assert_eq!(parts.next(), Some("1"), "version");
    let ts = parts.next().unwrap();
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
    assert_eq!(parts.next(), Some("gw-1"), "hostname");
    assert_eq!(parts.next(), Some("gavel"), "app-name");
    assert_eq!(parts.next(), Some("-"), "procid");
    assert_eq!(parts.next(), Some("approved"), "msgid");
    let sd_and_msg = parts.next().unwrap();
    // STRUCTURED-DATA: [SD-ID *(SP PARAM-NAME="PARAM-VALUE")]; a private
    // SD-ID has the form name@PEN.
    assert!(sd_and_msg.starts_with("[gavel@32473 "), "{sd_and_msg}");
    let mut end = None;
    let mut escaped = false;
    for (i, c) in sd_and_msg.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, ']') => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.expect("structured data is closed");
    let sd = &sd_and_msg[1..end];
    assert!(sd.contains(" seq=\"9\""), "{sd}");
    assert!(sd.contains(" initiator=\"agent:deploy-bot\""), "{sd}");
    assert!(sd.contains(" disposition=\"Approved\""), "{sd}");
    assert!(
        sd_and_msg[end + 1..].starts_with(' '),
        "MSG follows after a space"
    );
}

#[test]
fn jsonl_lines_are_the_hashed_bytes() {
    let r = record(AuditEvent::Decision, Some("allow"));
    let line = jsonl(3, &r);
    assert_eq!(line.as_bytes(), gavel_audit::leaf_data(3, &r).as_slice());
    assert!(!line.contains('\n'));
    let (seq, back) = gavel_audit::parse_leaf(line.as_bytes()).unwrap();
    assert_eq!((seq, back), (3, r));
}

#[test]
fn the_human_an_agent_acts_for_is_in_every_format() {
    let mut r = record(AuditEvent::Decision, Some("allow"));
    assert!(!cef(1, &r).contains("onBehalfOf"));
    assert!(!syslog(1, &r).contains("on_behalf_of"));
    r.on_behalf_of = Some("dana@example.com".into());
    assert_eq!(
        ocsf(1, &r, "o")["unmapped"]["gavel"]["on_behalf_of"],
        "dana@example.com"
    );
    let ext = cef_extensions(cef_fields(&cef(1, &r)).last().unwrap());
    assert!(ext.contains(&("flexString1".into(), "dana@example.com".into())));
    assert!(syslog(1, &r).contains("on_behalf_of=\"dana@example.com\""));
    assert!(jsonl(1, &r).contains("\"on_behalf_of\":\"dana@example.com\""));
}

//! Audit exports for SIEMs: JSON Lines, OCSF, CEF and RFC 5424 syslog.
//!
//! Each function turns one record (with its sequence number) into one line.

use gavel_core::{ActionClass, AuditEvent, AuditRecord};
use serde_json::{Value, json};

/// The OCSF schema version the export follows.
pub const OCSF_VERSION: &str = "1.3.0";

/// The private structured-data id of the syslog export. 32473 is the
/// private enterprise number RFC 5612 reserves for documentation.
pub const SYSLOG_SD_ID: &str = "gavel@32473";

const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What happened to the action, in OCSF's words.
fn disposition(r: &AuditRecord) -> (u8, &'static str, u8) {
    // (disposition_id, disposition, action_id: 1 allowed / 2 denied / 0 unknown)
    match (r.event, r.decision.as_deref()) {
        (AuditEvent::Decision, Some("allow")) => (1, "Allowed", 1),
        (AuditEvent::Decision, _) => (2, "Blocked", 2),
        (AuditEvent::GrantUsed, _) | (AuditEvent::Approved, _) => (8, "Approved", 1),
        (AuditEvent::Denied, _)
        | (AuditEvent::Expired, _)
        | (AuditEvent::Withdrawn, _)
        | (AuditEvent::ReviewRefused, _) => (2, "Blocked", 2),
        (AuditEvent::RequestCreated, _) | (AuditEvent::RequestPending, _) => {
            (99, "Pending approval", 0)
        }
        (AuditEvent::Reviewed, _) => (99, "Partially approved", 0),
        // How an allowed action ended: it was allowed, whatever happened next.
        (AuditEvent::Outcome, _) => (1, "Allowed", 1),
        (AuditEvent::Failed, _) => (8, "Approved", 1),
        (AuditEvent::Relayed, _) => (1, "Allowed", 1),
    }
}

fn activity(class: ActionClass) -> (u8, &'static str) {
    match class {
        ActionClass::SqlRead
        | ActionClass::McpRead
        | ActionClass::HttpRead
        | ActionClass::SqlExport => (2, "Read"),
        ActionClass::SqlWrite
        | ActionClass::SqlDdl
        | ActionClass::SqlDcl
        | ActionClass::HttpWrite => (3, "Update"),
        _ => (99, "Other"),
    }
}

fn initiator_parts(r: &AuditRecord) -> (&str, &str) {
    r.initiator
        .split_once(':')
        .unwrap_or(("unknown", &r.initiator))
}

/// The record as JSON with its sequence number: exactly the canonical bytes
/// that were hashed into the tree (see [`crate::record`]).
pub fn jsonl(seq: u64, r: &AuditRecord) -> String {
    String::from_utf8(crate::leaf_data(seq, r)).unwrap_or_default()
}

/// An OCSF API Activity event (class 6003). The approval chain (reviewers,
/// comment, policies, request, intent) is under `unmapped.gavel`.
pub fn ocsf(seq: u64, r: &AuditRecord, origin: &str) -> Value {
    let (disposition_id, disposition, action_id) = disposition(r);
    let (activity_id, activity_name) = activity(r.class);
    let (kind, id) = initiator_parts(r);
    let denied = action_id == 2;
    let failed = denied
        || r.event == AuditEvent::Failed
        || r.outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("failed"));
    let mut api = json!({"operation": r.class.as_str(), "service": {"name": r.surface}});
    if let Some(id) = &r.request_id {
        api["request"] = json!({"uid": id.0});
    }
    let src_endpoint = match r.source.as_deref().map(endpoint) {
        Some(Endpoint::Ip(ip, Some(port))) => json!({"ip": ip, "port": port}),
        Some(Endpoint::Ip(ip, None)) => json!({"ip": ip}),
        Some(Endpoint::Name(name)) => json!({"name": name}),
        None => json!({"name": r.surface}),
    };
    json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": 6003 * 100 + u32::from(activity_id),
        "time": r.time.0,
        "severity_id": if denied { 3 } else { 1 },
        "severity": if denied { "Medium" } else { "Informational" },
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "action_id": action_id,
        "action": match action_id { 1 => "Allowed", 2 => "Denied", _ => "Unknown" },
        "disposition_id": disposition_id,
        "disposition": disposition,
        "message": format!("{} {} on {}: {}", r.initiator, r.class, r.resource, r.event.as_str()),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": format!("{origin}/{seq}"),
            "log_name": origin,
            "event_code": r.event.as_str(),
            "product": {"name": "gavel", "vendor_name": "gavel", "version": PRODUCT_VERSION},
        },
        "actor": {
            "user": {"uid": r.initiator, "name": id, "type": if kind == "human" { "User" } else { "Other" }},
        },
        "api": api,
        "src_endpoint": src_endpoint,
        "resources": [{"name": r.resource, "type": "gavel resource"}],
        "unmapped": {"gavel": {
            "seq": seq,
            "event": r.event.as_str(),
            "operation": r.operation,
            "details": r.details,
            "intent": r.intent,
            "owner": r.owner,
            "on_behalf_of": r.on_behalf_of,
            "reviewers": r.reviewers,
            "comment": r.comment,
            "policies": r.policies,
            "decision": r.decision,
            "outcome": r.outcome,
            "request_id": r.request_id.as_ref().map(|i| i.0.clone()),
            "gateway_id": r.gateway_id,
        }},
    })
}

fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// An ArcSight CEF line: all seven header fields, then extensions.
pub fn cef(seq: u64, r: &AuditRecord) -> String {
    let (_, disposition, action_id) = disposition(r);
    let severity = if action_id == 2 { 7 } else { 3 };
    let name = format!("{} {}", r.class, r.event.as_str());
    let mut ext: Vec<(String, String)> = vec![
        ("rt".into(), r.time.0.to_string()),
        ("suser".into(), r.initiator.clone()),
        ("act".into(), disposition.to_owned()),
        (
            "outcome".into(),
            r.outcome
                .clone()
                .or_else(|| r.decision.clone())
                .unwrap_or_default(),
        ),
        ("msg".into(), r.operation.clone()),
        ("dvchost".into(), r.gateway_id.clone()),
        ("cn1".into(), seq.to_string()),
        ("cn1Label".into(), "seq".into()),
        ("cs1".into(), r.resource.clone()),
        ("cs1Label".into(), "resource".into()),
        ("cs2".into(), r.policies.join(",")),
        ("cs2Label".into(), "policies".into()),
        (
            "cs3".into(),
            r.request_id
                .as_ref()
                .map(|i| i.0.clone())
                .unwrap_or_default(),
        ),
        ("cs3Label".into(), "requestId".into()),
        ("cs4".into(), r.reviewers.join(",")),
        ("cs4Label".into(), "reviewers".into()),
        ("cs5".into(), r.intent.clone()),
        ("cs5Label".into(), "intent".into()),
        ("cs6".into(), r.owner.clone().unwrap_or_default()),
        ("cs6Label".into(), "owner".into()),
    ];
    match r.source.as_deref().map(endpoint) {
        Some(Endpoint::Ip(ip, port)) => {
            ext.push(("src".into(), ip));
            if let Some(port) = port {
                ext.push(("spt".into(), port.to_string()));
            }
        }
        Some(Endpoint::Name(name)) => ext.push(("shost".into(), name)),
        None => {}
    }
    if let Some(human) = &r.on_behalf_of {
        ext.push(("flexString1".into(), human.clone()));
        ext.push(("flexString1Label".into(), "onBehalfOf".into()));
    }
    let ext: Vec<String> = ext
        .iter()
        .map(|(k, v)| format!("{k}={}", cef_value(v)))
        .collect();
    format!(
        "CEF:0|gavel|gavel|{}|{}|{}|{}|{}",
        cef_header(PRODUCT_VERSION),
        cef_header(r.event.as_str()),
        cef_header(&name),
        severity,
        ext.join(" ")
    )
}

/// Control characters would split one record into several syslog lines.
fn no_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn sd_value(s: &str) -> String {
    no_controls(s)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

fn printable(s: &str, max: usize, fallback: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if cleaned.is_empty() {
        fallback.to_owned()
    } else {
        cleaned
    }
}

/// An RFC 5424 syslog line (facility 13, log audit) with the record in the
/// private structured-data element [`SYSLOG_SD_ID`].
pub fn syslog(seq: u64, r: &AuditRecord) -> String {
    let (_, disposition, action_id) = disposition(r);
    let severity = if action_id == 2 { 4 } else { 6 }; // warning / informational
    let pri = 13 * 8 + severity;
    let time = humantime::format_rfc3339_millis(r.time.to_system_time());
    let mut params = vec![
        ("seq", seq.to_string()),
        ("event", r.event.as_str().to_owned()),
        ("initiator", r.initiator.clone()),
        ("owner", r.owner.clone().unwrap_or_default()),
        ("resource", r.resource.clone()),
        ("class", r.class.as_str().to_owned()),
        ("disposition", disposition.to_owned()),
        ("policies", r.policies.join(",")),
        ("reviewers", r.reviewers.join(",")),
        (
            "request",
            r.request_id
                .as_ref()
                .map(|i| i.0.clone())
                .unwrap_or_default(),
        ),
    ];
    match r.source.as_deref().map(endpoint) {
        Some(Endpoint::Ip(ip, port)) => {
            params.push(("src", ip));
            if let Some(port) = port {
                params.push(("src_port", port.to_string()));
            }
        }
        Some(Endpoint::Name(name)) => params.push(("src_host", name)),
        None => params.push(("src", String::new())),
    }
    if let Some(human) = &r.on_behalf_of {
        params.push(("on_behalf_of", human.clone()));
    }
    let sd: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", sd_value(v)))
        .collect();
    format!(
        "<{pri}>1 {time} {} gavel - {} [{SYSLOG_SD_ID} {}] {} {} on {}: {}",
        printable(&r.gateway_id, 255, "-"),
        printable(r.event.as_str(), 32, "-"),
        sd.join(" "),
        no_controls(&r.initiator),
        r.class,
        no_controls(&r.resource),
        no_controls(&r.operation)
    )
}

/// A record's client address as exports want it: an IP and its port in
/// their own fields (`127.0.0.1:53808`, `[::1]:5432`, `10.0.0.7`), or a
/// name when it is no address.
enum Endpoint {
    Ip(String, Option<u16>),
    Name(String),
}

fn endpoint(source: &str) -> Endpoint {
    if let Ok(addr) = source.parse::<std::net::SocketAddr>() {
        return Endpoint::Ip(addr.ip().to_string(), Some(addr.port()));
    }
    if let Ok(ip) = source.parse::<std::net::IpAddr>() {
        return Endpoint::Ip(ip.to_string(), None);
    }
    Endpoint::Name(source.to_owned())
}

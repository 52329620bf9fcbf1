use crate::action::Action;
use crate::approval::ApprovalRoute;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// What an approval is bound to: SHA-256 over the principal, the resource
/// (name, kind and tags), the action class, the exact operation, the
/// canonical details, the surface, the session settings, the policy version, and the approval route the
/// decision produced (policies, approvers, quorum, timeout) (SPEC §4).
///
/// Binding the route means an approval granted under one requirement is
/// never spent under a stricter one: if a resource's tags or a principal's
/// groups change so that policy now asks for other approvers or a larger
/// quorum, the retry has another fingerprint and needs a new approval.
///
/// Only leading and trailing whitespace of the operation is ignored; any
/// other normalization (comments, inner whitespace) is the surface's to do
/// before building the [`Action`], and must never touch literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `action` decided under the policy set
    /// `policy_version` by `policies`, needing approval along `route`.
    pub fn of(
        action: &Action,
        policy_version: &str,
        policies: &[String],
        route: &ApprovalRoute,
    ) -> Fingerprint {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(b"gavel-fingerprint-v2");
        field(action.principal.qualified_id().as_bytes());
        // An agent acting for someone is another accountability context:
        // a grant for it acting for alice is not one for it acting for bob.
        // (Bound only when present, so other fingerprints are unchanged.)
        if let Some(human) = action.principal.on_behalf_of() {
            field(format!("on_behalf_of:{human}").as_bytes());
        }
        field(action.resource.name.as_bytes());
        field(action.resource.kind.as_bytes());
        field(&(action.resource.tags.len() as u64).to_be_bytes());
        for (k, v) in &action.resource.tags {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(action.class.as_str().as_bytes());
        field(action.operation.trim().as_bytes());
        field(&canonical_json(&action.details));
        // Where it came from and what its text means there: a grant filed
        // over REST is not one for the proxy, and one approved under
        // `DateStyle = MDY` is not one under `DMY`.
        field(action.surface.as_bytes());
        field(&(action.settings.len() as u64).to_be_bytes());
        for (k, v) in &action.settings {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(policy_version.as_bytes());
        let mut sorted_policies: Vec<&String> = policies.iter().collect();
        sorted_policies.sort();
        field(&(sorted_policies.len() as u64).to_be_bytes());
        for p in sorted_policies {
            field(p.as_bytes());
        }
        let mut approvers: Vec<String> = route.approvers.iter().map(|a| a.to_string()).collect();
        approvers.sort();
        field(&(approvers.len() as u64).to_be_bytes());
        for a in &approvers {
            field(a.as_bytes());
        }
        field(&route.quorum.to_be_bytes());
        field(&(route.timeout.as_millis() as u64).to_be_bytes());
        Fingerprint(h.finalize().into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lower- or upper-case hex.
    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Fingerprint::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad fingerprint hex"))
    }
}

/// JSON with object keys sorted by their UTF-8 bytes and no insignificant
/// whitespace, so that equal values always hash equally. (serde_json keeps
/// insertion order when any crate in the build enables `preserve_order`, so
/// its own output is not canonical.)
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical_json(v, &mut out);
    out
}

fn write_canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Straight into `out` with serde_json's own serializer:
                // the same bytes as `Value::String(k).to_string()`,
                // without two allocations per key.
                write_json(k, out);
                out.push(b':');
                write_canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => write_json(scalar, out),
    }
}

/// `value` as serde_json writes it (compact), appended to `out`.
fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing a string or scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer before it serialized straight into the buffer: every
    /// key and scalar through `to_string`. The hashed bytes of records
    /// and fingerprints must not change.
    fn reference_canonical_json(v: &serde_json::Value) -> Vec<u8> {
        use serde_json::Value;
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = b"{".to_vec();
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                    out.push(b':');
                    out.extend(reference_canonical_json(&map[k]));
                }
                out.push(b'}');
                out
            }
            Value::Array(items) => {
                let mut out = b"[".to_vec();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(reference_canonical_json(item));
                }
                out.push(b']');
                out
            }
            scalar => scalar.to_string().into_bytes(),
        }
    }

    #[test]
    fn canonical_bytes_are_unchanged_by_the_direct_writer() {
        let tricky = serde_json::json!({
            "z": [1, -0.0, 1.5, 1e300, u64::MAX, i64::MIN, true, false, null],
            "a\"quote\\back\u{1}ctl\n": "caf\u{e9} \u{1F600} \u{2028} </script>",
            "": {"nested": {"b": "x", "a": [{"y": 1, "x": 2}]}, "empty": {}, "list": []},
            "\u{7f}del": "\t\r\u{0}",
        });
        for v in [
            tricky.clone(),
            tricky["z"].clone(),
            serde_json::json!("s"),
            serde_json::json!(3),
        ] {
            assert_eq!(canonical_json(&v), reference_canonical_json(&v), "{v}");
        }
    }
    use crate::{ActionClass, Approver, Human, HumanId, Principal, Resource};
    use serde_json::json;
    use std::time::Duration;

    fn route(quorum: u32) -> ApprovalRoute {
        ApprovalRoute {
            approvers: vec![Approver::Group("dba".into())],
            quorum,
            timeout: Duration::from_secs(60),
        }
    }

    fn fp(a: &Action, version: &str) -> Fingerprint {
        Fingerprint::of(a, version, &["p".to_string()], &route(1))
    }

    fn action(op: &str, details: serde_json::Value) -> Action {
        Action {
            principal: Principal::Agent {
                id: "bot".into(),
                owner: HumanId::from("o@x"),
                groups: vec![],
                on_behalf_of: None,
            },
            resource: Resource {
                name: "db".into(),
                kind: "postgres".into(),
                tags: Default::default(),
            },
            class: ActionClass::SqlWrite,
            operation: op.into(),
            details,
            intent: "cleanup".into(),
            data_context: serde_json::Value::Null,
            settings: Default::default(),
            surface: "api".into(),
            source: None,
        }
    }

    #[test]
    fn literals_are_bound() {
        let a = fp(&action("DELETE FROM t WHERE id = 1", json!({})), "v1");
        let b = fp(&action("DELETE FROM t WHERE id = 2", json!({})), "v1");
        assert_ne!(a, b);
    }

    #[test]
    fn outer_whitespace_and_intent_do_not_matter() {
        let a = fp(&action("  DELETE FROM t\n", json!({})), "v1");
        let mut other = action("DELETE FROM t", json!({}));
        other.intent = "something else".into();
        assert_eq!(a, fp(&other, "v1"));
    }

    #[test]
    fn inner_whitespace_is_bound() {
        let a = fp(&action("SELECT 'a  b'", json!({})), "v1");
        let b = fp(&action("SELECT 'a b'", json!({})), "v1");
        assert_ne!(a, b);
    }

    #[test]
    fn details_key_order_does_not_matter_but_values_do() {
        let a = fp(&action("x", json!({"a": 1, "b": [1, 2]})), "v1");
        let b = fp(&action("x", json!({"b": [1, 2], "a": 1})), "v1");
        let c = fp(&action("x", json!({"b": [2, 1], "a": 1})), "v1");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn principal_resource_class_and_policy_version_are_bound() {
        let base = action("x", json!({}));
        let base_fp = fp(&base, "v1");
        assert_ne!(base_fp, fp(&base, "v2"));
        let mut human = base.clone();
        human.principal = Principal::Human(Human {
            id: HumanId::from("bot"),
            groups: vec![],
        });
        assert_ne!(base_fp, fp(&human, "v1"), "agent:bot and human:bot differ");
        let mut res = base.clone();
        res.resource.name = "db2".into();
        assert_ne!(base_fp, fp(&res, "v1"));
        let mut class = base;
        class.class = ActionClass::SqlDdl;
        assert_ne!(base_fp, fp(&class, "v1"));
    }

    #[test]
    fn the_approval_route_and_resource_tags_are_bound() {
        let a = action("DROP TABLE t", json!({}));
        let base = Fingerprint::of(&a, "v", &["p".to_string()], &route(1));
        assert_ne!(
            base,
            Fingerprint::of(&a, "v", &["p".to_string()], &route(2))
        );
        assert_ne!(
            base,
            Fingerprint::of(&a, "v", &["q".to_string()], &route(1))
        );
        let mut more = route(1);
        more.approvers.push(Approver::User(HumanId::from("x@x")));
        assert_ne!(base, Fingerprint::of(&a, "v", &["p".to_string()], &more));
        let mut prod = a.clone();
        prod.resource.tags.insert("env".into(), "prod".into());
        assert_ne!(
            base,
            Fingerprint::of(&prod, "v", &["p".to_string()], &route(1))
        );
        let mut kind = a.clone();
        kind.resource.kind = "mysql".into();
        assert_ne!(
            base,
            Fingerprint::of(&kind, "v", &["p".to_string()], &route(1))
        );
    }

    #[test]
    fn the_surface_and_session_settings_are_bound() {
        let a = action("DELETE FROM d WHERE day < '03/04/2024'", json!({}));
        let base = fp(&a, "v");
        let mut rest = a.clone();
        rest.surface = "postgres".into();
        assert_ne!(
            base,
            fp(&rest, "v"),
            "a REST grant is not one for the proxy"
        );
        let mut dmy = a.clone();
        dmy.settings.insert("DateStyle".into(), "ISO, DMY".into());
        let mut mdy = a.clone();
        mdy.settings.insert("DateStyle".into(), "ISO, MDY".into());
        assert_ne!(fp(&dmy, "v"), fp(&mdy, "v"));
        assert_ne!(base, fp(&mdy, "v"));
        let mut shifted = a.clone();
        shifted
            .settings
            .insert("DateStyleISO".into(), ", MDY".into());
        assert_ne!(fp(&mdy, "v"), fp(&shifted, "v"));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let mut a = action("x", json!({}));
        a.resource.name = "ab".into();
        a.operation = "c".into();
        let mut b = a.clone();
        b.resource.name = "a".into();
        b.operation = "bc".into();
        assert_ne!(fp(&a, "v"), fp(&b, "v"));
    }
}

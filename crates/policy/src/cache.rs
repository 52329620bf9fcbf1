//! Memoized policy decisions.
//!
//! A Cedar decision is a pure function of the policy set, the entities and
//! the request. gavel builds the entities and the request from the action
//! alone (principal id, kind, owner and groups; resource name, kind and
//! tags; class; operation; intent; details), so an action identical in all
//! of those gets the identical decision. The key is SHA-256 over all of
//! them, length-prefixed, so two different actions cannot share a key
//! short of a SHA-256 collision. The cache belongs to one policy bundle and
//! is dropped with it on reload.

use gavel_core::{Action, PolicyDecision, Principal};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Most distinct decisions kept; past that the cache starts over, which
/// bounds memory whatever the traffic.
const CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DecisionKey([u8; 32]);

/// Feeds length-prefixed fields to SHA-256, so field boundaries cannot shift.
struct KeyHasher(Sha256);

impl KeyHasher {
    fn new(domain: &[u8]) -> KeyHasher {
        let mut h = KeyHasher(Sha256::new());
        h.field(domain);
        h
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Everything the principal and resource entities are built from.
    fn entities(&mut self, action: &Action) {
        match &action.principal {
            Principal::Human(human) => {
                self.field(b"human");
                self.field(human.id.0.as_bytes());
            }
            Principal::Agent { id, owner, .. } => {
                self.field(b"agent");
                self.field(id.as_bytes());
                self.field(owner.0.as_bytes());
            }
        }
        let groups = action.principal.groups();
        self.field(&(groups.len() as u64).to_le_bytes());
        for g in groups {
            self.field(g.as_bytes());
        }
        self.field(action.resource.name.as_bytes());
        self.field(action.resource.kind.as_bytes());
        self.field(&(action.resource.tags.len() as u64).to_le_bytes());
        for (k, v) in &action.resource.tags {
            self.field(k.as_bytes());
            self.field(v.as_bytes());
        }
    }

    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl DecisionKey {
    /// The key of `action`'s decision. With `reads_operation` false (no
    /// policy mentions `operation`), a SQL action's key leaves out the
    /// operation and every detail but `tables`: the Cedar context of a SQL
    /// class is exactly `operation`, `intent` and `tables`.
    pub(crate) fn of(action: &Action, reads_operation: bool) -> DecisionKey {
        if !reads_operation && action.class.is_sql() {
            let mut h = KeyHasher::new(b"gavel-decision-sql-v1");
            h.entities(action);
            h.field(action.class.as_str().as_bytes());
            h.field(action.intent.as_bytes());
            let tables = action
                .details
                .get("tables")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            h.field(&gavel_core::canonical_json(&tables));
            return DecisionKey(h.finish());
        }
        let mut h = KeyHasher::new(b"gavel-decision-v1");
        h.entities(action);
        h.field(action.class.as_str().as_bytes());
        h.field(action.operation.as_bytes());
        h.field(action.intent.as_bytes());
        h.field(&gavel_core::canonical_json(&action.details));
        DecisionKey(h.finish())
    }
}

/// Identifies the principal and resource entities of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EntitiesKey([u8; 32]);

impl EntitiesKey {
    pub(crate) fn of(action: &Action) -> EntitiesKey {
        let mut h = KeyHasher::new(b"gavel-entities-v1");
        h.entities(action);
        EntitiesKey(h.finish())
    }
}

/// A bounded map that starts over when full, which caps memory whatever
/// the traffic.
#[derive(Debug)]
pub(crate) struct Bounded<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Bounded(Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Bounded<K, V> {
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key, value);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Decisions already made under one policy bundle.
pub(crate) type DecisionCache = Bounded<DecisionKey, PolicyDecision>;

/// Cedar entities already built for a principal and resource.
pub(crate) type EntitiesCache = Bounded<EntitiesKey, std::sync::Arc<cedar_policy::Entities>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decide, decide_uncached, load_sources};
    use gavel_core::{ActionClass, HumanId, PolicyVerdict, Resource};
    use std::path::PathBuf;

    fn action() -> Action {
        Action {
            principal: Principal::Agent {
                id: "bot".into(),
                owner: HumanId::from("o@x"),
                groups: vec!["g".into()],
                on_behalf_of: None,
            },
            resource: Resource {
                name: "db".into(),
                kind: "postgres".into(),
                tags: [("env".to_string(), "prod".to_string())].into(),
            },
            class: ActionClass::SqlRead,
            operation: "SELECT 1".into(),
            details: serde_json::json!({"tables": ["t"]}),
            intent: "i".into(),
            data_context: serde_json::Value::Null,
            settings: Default::default(),
            surface: "test".into(),
            source: None,
        }
    }

    #[test]
    fn every_input_cedar_sees_changes_the_key() {
        let base = action();
        let k = DecisionKey::of(&base, true);
        let mut variants: Vec<Action> = Vec::new();
        let mut v = base.clone();
        v.principal = Principal::Agent {
            id: "bot".into(),
            owner: HumanId::from("p@x"),
            groups: vec!["g".into()],
            on_behalf_of: None,
        };
        variants.push(v);
        let mut v = base.clone();
        v.principal = Principal::Agent {
            id: "bot".into(),
            owner: HumanId::from("o@x"),
            groups: vec!["g".into(), "h".into()],
            on_behalf_of: None,
        };
        variants.push(v);
        let mut v = base.clone();
        v.principal = Principal::Human(gavel_core::Human {
            id: "bot".into(),
            groups: vec!["g".into()],
        });
        variants.push(v);
        let mut v = base.clone();
        v.resource.tags.insert("env".into(), "dev".into());
        variants.push(v);
        let mut v = base.clone();
        v.resource.kind = "mysql".into();
        variants.push(v);
        let mut v = base.clone();
        v.class = ActionClass::SqlWrite;
        variants.push(v);
        let mut v = base.clone();
        v.operation = "SELECT 2".into();
        variants.push(v);
        let mut v = base.clone();
        v.intent = "j".into();
        variants.push(v);
        let mut v = base.clone();
        v.details = serde_json::json!({"tables": ["u"]});
        variants.push(v);
        let short = DecisionKey::of(&base, false);
        for v in &variants {
            assert_ne!(DecisionKey::of(v, true), k, "{v:?}");
            // Without policies that read the operation, only the operation
            // (and details other than tables) may share a key.
            if v.operation == base.operation {
                assert_ne!(DecisionKey::of(v, false), short, "{v:?}");
            } else {
                assert_eq!(DecisionKey::of(v, false), short, "{v:?}");
            }
        }
        // Fields Cedar never sees do not split the cache.
        let mut v = base.clone();
        v.source = Some("10.0.0.1".into());
        v.surface = "other".into();
        v.data_context = serde_json::json!({"estimated_rows": 5});
        assert_eq!(DecisionKey::of(&v, true), k);
        let mut v = base.clone();
        v.details = serde_json::json!({"tables": ["t"], "params": ["1"]});
        assert_eq!(DecisionKey::of(&v, false), short);
        assert_ne!(DecisionKey::of(&v, true), k);
        // A non-SQL class always keys on everything.
        let mut v = base.clone();
        v.class = ActionClass::McpCall;
        let mut w = v.clone();
        w.operation = "other_tool".into();
        assert_ne!(DecisionKey::of(&v, false), DecisionKey::of(&w, false));
    }

    #[test]
    fn a_policy_that_reads_the_operation_keeps_it_in_the_key() {
        let reads = "@id(\"r\") permit(principal, action == Action::\"sql.read\", resource) when { !(context.operation like \"*pg_sleep*\") };";
        let bundle = load_sources(&[(PathBuf::from("c.cedar"), reads.into())]).unwrap();
        assert!(bundle.reads_operation);
        let a = action();
        assert_eq!(decide(&bundle, &a).verdict, PolicyVerdict::Allow);
        let mut sleepy = a.clone();
        sleepy.operation = "SELECT pg_sleep(10)".into();
        assert_eq!(decide(&bundle, &sleepy).verdict, PolicyVerdict::Deny);
        let escaped = "@id(\"r\") permit(principal, action == Action::\"sql.read\", resource) when { !(context[\"\\u{6f}peration\"] like \"*pg_sleep*\") };";
        let bundle = load_sources(&[(PathBuf::from("c.cedar"), escaped.into())]).unwrap();
        assert!(
            bundle.reads_operation,
            "an escaped attribute name still counts"
        );
        let blind = "@id(\"r\") permit(principal, action == Action::\"sql.read\", resource);";
        let bundle = load_sources(&[(PathBuf::from("c.cedar"), blind.into())]).unwrap();
        assert!(!bundle.reads_operation);
        assert_eq!(decide(&bundle, &a).verdict, PolicyVerdict::Allow);
        assert_eq!(decide(&bundle, &sleepy).verdict, PolicyVerdict::Allow);
        assert_eq!(bundle.cache.len(), 1, "one decision serves both statements");
    }

    #[test]
    fn cached_answers_equal_fresh_ones_and_reload_starts_empty() {
        let text = "@id(\"r\") permit(principal in Group::\"g\", action == Action::\"sql.read\", resource) when { context.intent == \"i\" };";
        let bundle = load_sources(&[(PathBuf::from("c.cedar"), text.into())]).unwrap();
        let a = action();
        let first = decide(&bundle, &a);
        assert_eq!(first.verdict, PolicyVerdict::Allow);
        assert_eq!(bundle.cache.len(), 1);
        assert_eq!(decide(&bundle, &a), first);
        let mut other = a.clone();
        other.intent = "x".into();
        assert_eq!(decide(&bundle, &other).verdict, PolicyVerdict::Deny);
        assert_eq!(
            decide_uncached(&bundle, &other).verdict,
            PolicyVerdict::Deny
        );
        let reloaded = load_sources(&[(PathBuf::from("c.cedar"), text.into())]).unwrap();
        assert_eq!(reloaded.cache.len(), 0);
    }
}

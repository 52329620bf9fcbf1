//! Cedar policy for gavel (SPEC §3).
//!
//! [`load_dir`] reads `*.cedar` files, validates them against the schema
//! gavel ships ([`SCHEMA_TEXT`]), reads the approval annotations
//! (`@approval`, `@quorum`, `@timeout`) and indexes the policies by action
//! class and resource into a [`PolicyBundle`]. [`CedarEngine`] evaluates a
//! bundle as gavel's [`PolicyEngine`] and swaps in a new one when the files
//! change, keeping the last good set when they are broken.
//!
//! Decision order: any matching `forbid` → deny; else any matching approval
//! policy → needs approval (approvers united, largest quorum, shortest
//! timeout); else any matching `permit` → allow; else deny. Any evaluation
//! error also denies: a broken `forbid` must never let an action through.
#![deny(missing_docs)]

mod cache;
mod load;

pub use load::{
    ApprovalSpec, PolicyBundle, PolicyErrors, PolicyInfo, PolicyProblem, SCHEMA_TEXT, load_dir,
    load_sources, policy_files, schema,
};

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request,
    RestrictedExpression,
};
use gavel_core::{
    Action, ActionClass, Approver, PolicyDecision, PolicyEngine, PolicyVerdict, Principal,
};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn uid(type_name: &str, id: &str) -> EntityUid {
    static TYPES: std::sync::OnceLock<[EntityTypeName; 6]> = std::sync::OnceLock::new();
    let types = TYPES.get_or_init(|| {
        ["User", "Agent", "Group", "Resource", "Action", "Arguments"]
            .map(|t| EntityTypeName::from_str(t).unwrap_or_else(|e| panic!("entity type {t}: {e}")))
    });
    let t = match type_name {
        "User" => &types[0],
        "Agent" => &types[1],
        "Group" => &types[2],
        "Resource" => &types[3],
        "Arguments" => &types[5],
        _ => &types[4],
    };
    EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
}

/// The Cedar principal uid of a gavel principal.
pub fn principal_uid(p: &Principal) -> EntityUid {
    match p {
        Principal::Human(h) => uid("User", &h.id.0),
        Principal::Agent { id, .. } => uid("Agent", id),
    }
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

/// The Cedar `context` for an action: `operation` and `intent`, plus the
/// class's own fields taken from `details`, defaulted from the operation
/// where that is unambiguous (a tool call's operation is the tool; an HTTP
/// operation is `METHOD path`; a command's is the command line).
/// A field of the wrong type is an error, which the gate turns into deny.
pub fn context_pairs(action: &Action) -> Result<Vec<(String, RestrictedExpression)>, String> {
    let details = &action.details;
    let text = |key: &str, default: Option<&str>| -> Result<RestrictedExpression, String> {
        match details.get(key) {
            Some(serde_json::Value::String(s)) => Ok(string(s)),
            Some(other) => Err(format!(
                "details.{key} must be a string for {}, got {other}",
                action.class
            )),
            None => default
                .map(string)
                .ok_or_else(|| format!("details.{key} is required for {}", action.class)),
        }
    };
    let mut pairs = vec![
        ("operation".to_owned(), string(&action.operation)),
        ("intent".to_owned(), string(&action.intent)),
    ];
    let op = action.operation.trim();
    match action.class {
        ActionClass::SqlRead
        | ActionClass::SqlWrite
        | ActionClass::SqlDdl
        | ActionClass::SqlDcl
        | ActionClass::SqlExport
        | ActionClass::SqlAdmin
        | ActionClass::SqlUnknown => {
            let tables = match details.get("tables") {
                None => Vec::new(),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|t| {
                        t.as_str()
                            .map(string)
                            .ok_or_else(|| "details.tables must be a list of strings".to_owned())
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("details.tables must be a list of strings".into()),
            };
            pairs.push(("tables".into(), RestrictedExpression::new_set(tables)));
        }
        ActionClass::McpCall | ActionClass::McpRead => {
            pairs.push(("tool".into(), text("tool", Some(op))?));
            pairs.push((
                "args".into(),
                RestrictedExpression::new_entity_uid(uid("Arguments", ARGUMENTS_ID)),
            ));
        }
        ActionClass::HttpRead | ActionClass::HttpWrite => {
            let (method, path) = op.split_once(' ').unwrap_or(("", ""));
            let method = (!method.is_empty()).then_some(method);
            let path = (!path.trim().is_empty()).then_some(path.trim());
            pairs.push(("method".into(), text("method", method)?));
            pairs.push(("path".into(), text("path", path)?));
        }
        ActionClass::ExecRun => {
            pairs.push(("command".into(), text("command", Some(op))?));
        }
    }
    Ok(pairs)
}

/// The id of the one `Arguments` entity of an MCP request.
const ARGUMENTS_ID: &str = "call";

/// An MCP action's arguments (`details.args`, a JSON object) as the tags of
/// an `Arguments` entity, which is how a strictly validated schema carries
/// values of any shape: `context.args.hasTag("path") &&
/// context.args.getTag("path") like "/srv/data/*"`. A string argument is
/// its text; any other value is its canonical JSON (`true`, `42`,
/// `["a","b"]`).
fn arguments_entity(action: &Action) -> Result<Entity, String> {
    let tags: Vec<(String, RestrictedExpression)> = match action.details.get("args") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => {
                        String::from_utf8_lossy(&gavel_core::canonical_json(other)).into_owned()
                    }
                };
                (k.clone(), string(&text))
            })
            .collect(),
        Some(_) => return Err("details.args must be a JSON object".into()),
    };
    Entity::new_with_tags(uid("Arguments", ARGUMENTS_ID), [], [], tags).map_err(|e| e.to_string())
}

fn entities(action: &Action) -> Result<Entities, String> {
    let principal = principal_uid(&action.principal);
    let groups = action.principal.groups().iter().map(|g| uid("Group", g));
    let principal_entity = match &action.principal {
        Principal::Human(_) => Entity::new_with_tags(principal.clone(), [], groups, []),
        Principal::Agent { owner, .. } => Entity::new_with_tags(
            principal.clone(),
            [(
                "owner".to_owned(),
                RestrictedExpression::new_entity_uid(uid("User", &owner.0)),
            )],
            groups,
            [],
        ),
    }
    .map_err(|e| e.to_string())?;
    let resource = uid("Resource", &action.resource.name);
    let resource_entity = Entity::new_with_tags(
        resource.clone(),
        [
            ("name".to_owned(), string(&action.resource.name)),
            ("kind".to_owned(), string(&action.resource.kind)),
        ],
        [],
        action
            .resource
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), string(v))),
    )
    .map_err(|e| e.to_string())?;
    Entities::from_entities([principal_entity, resource_entity], None).map_err(|e| e.to_string())
}

fn cedar_request(
    bundle: &PolicyBundle,
    action: &Action,
) -> Result<(Request, Arc<Entities>), String> {
    let key = cache::EntitiesKey::of(action);
    let entities = match bundle.entities.get(&key) {
        Some(e) => e,
        None => {
            let e = Arc::new(entities(action)?);
            bundle.entities.insert(key, e.clone());
            e
        }
    };
    let entities = if matches!(action.class, ActionClass::McpCall | ActionClass::McpRead) {
        // Arguments differ per call, so they join a copy of the cached set.
        Arc::new(
            entities
                .as_ref()
                .clone()
                .add_entities([arguments_entity(action)?], None)
                .map_err(|e| e.to_string())?,
        )
    } else {
        entities
    };
    let context = Context::from_pairs(context_pairs(action)?).map_err(|e| e.to_string())?;
    let request = Request::new(
        principal_uid(&action.principal),
        uid("Action", action.class.as_str()),
        uid("Resource", &action.resource.name),
        context,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok((request, entities))
}

/// Decides `action` against `bundle` (SPEC §3 decision order), reusing an
/// earlier decision for an action identical in every input Cedar sees.
pub fn decide(bundle: &PolicyBundle, action: &Action) -> PolicyDecision {
    let key = cache::DecisionKey::of(action, bundle.reads_operation);
    if let Some(hit) = bundle.cache.get(&key) {
        return hit;
    }
    let decision = decide_uncached(bundle, action);
    bundle.cache.insert(key, decision.clone());
    decision
}

/// As [`decide`], always evaluating (through the index).
pub fn decide_uncached(bundle: &PolicyBundle, action: &Action) -> PolicyDecision {
    decide_over(
        bundle,
        action,
        bundle.slice(action.class, &action.resource.name),
    )
}

/// As [`decide`], evaluating every policy instead of the indexed slice.
/// Exists so tests can prove the index changes no answer.
pub fn decide_unindexed(bundle: &PolicyBundle, action: &Action) -> PolicyDecision {
    decide_over(bundle, action, Some(bundle.whole()))
}

fn decide_over(
    bundle: &PolicyBundle,
    action: &Action,
    set: Option<&cedar_policy::PolicySet>,
) -> PolicyDecision {
    static AUTHORIZER: std::sync::OnceLock<Authorizer> = std::sync::OnceLock::new();
    let deny = |policies: Vec<String>, reason: String| PolicyDecision {
        verdict: PolicyVerdict::Deny,
        policies,
        reason,
        policy_version: bundle.version.clone(),
    };
    let default_deny = || {
        deny(
            Vec::new(),
            format!(
                "no policy permits {} on {} for {} (default deny)",
                action.class,
                action.resource.name,
                action.principal.qualified_id()
            ),
        )
    };
    let Some(set) = set else {
        return default_deny();
    };
    let (request, entities) = match cedar_request(bundle, action) {
        Ok(r) => r,
        Err(e) => return deny(Vec::new(), format!("cannot evaluate policy: {e}")),
    };
    let response = AUTHORIZER
        .get_or_init(Authorizer::new)
        .is_authorized(&request, set, &entities);
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
    if !errors.is_empty() {
        let ids = diagnostics
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(p) => {
                    p.policy_id().to_string()
                }
            })
            .collect();
        return deny(
            ids,
            format!(
                "policy evaluation failed, denying (fail closed): {}",
                errors.join("; ")
            ),
        );
    }
    let mut matched: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
    matched.sort();
    if response.decision() == Decision::Deny {
        if matched.is_empty() {
            return default_deny();
        }
        let reason = format!("forbidden by policy {}", matched.join(", "));
        return deny(matched, reason);
    }
    let mut approvers: Vec<Approver> = Vec::new();
    let mut quorum = 0;
    let mut timeout: Option<Duration> = None;
    let mut approval_policies = Vec::new();
    for id in &matched {
        if let Some(spec) = bundle.policies.get(id).and_then(|i| i.approval.as_ref()) {
            approval_policies.push(id.clone());
            for a in &spec.approvers {
                if !approvers.contains(a) {
                    approvers.push(a.clone());
                }
            }
            quorum = quorum.max(spec.quorum);
            timeout = match (timeout, spec.timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    if approval_policies.is_empty() {
        let reason = format!("permitted by policy {}", matched.join(", "));
        return PolicyDecision {
            verdict: PolicyVerdict::Allow,
            policies: matched,
            reason,
            policy_version: bundle.version.clone(),
        };
    }
    let reason = format!(
        "needs approval by {} ({} of them) under policy {}",
        approvers
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        quorum,
        approval_policies.join(", ")
    );
    PolicyDecision {
        verdict: PolicyVerdict::NeedsApproval {
            approvers,
            quorum,
            timeout,
        },
        policies: approval_policies,
        reason,
        policy_version: bundle.version.clone(),
    }
}

/// What a reload attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed on disk.
    Unchanged,
    /// A new set is live.
    Reloaded {
        /// Its version.
        version: String,
    },
    /// The files are broken; the last good set stays live.
    Failed(PolicyErrors),
}

/// Each policy file with a hash of its content. Content, not mtime: an
/// edit that keeps size and lands within the clock's resolution is still
/// seen, and a touch that changes nothing reloads nothing.
type DirStamp = Vec<(PathBuf, Option<[u8; 32]>)>;

/// gavel's [`PolicyEngine`]: a live, hot-swappable [`PolicyBundle`].
pub struct CedarEngine {
    dir: PathBuf,
    live: ArcSwap<PolicyBundle>,
    stamp: Mutex<DirStamp>,
    last_error: Mutex<Option<PolicyErrors>>,
}

impl CedarEngine {
    /// Loads `dir`; fails if its policies are broken (gavel refuses to start
    /// on a broken policy set).
    pub fn load(dir: &Path) -> Result<CedarEngine, PolicyErrors> {
        let stamp = stamp(dir);
        let bundle = load_dir(dir)?;
        Ok(CedarEngine {
            dir: dir.to_path_buf(),
            live: ArcSwap::from_pointee(bundle),
            stamp: Mutex::new(stamp),
            last_error: Mutex::new(None),
        })
    }

    /// The live bundle.
    pub fn bundle(&self) -> Arc<PolicyBundle> {
        self.live.load_full()
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The error of the last failed reload, while the files stay broken.
    pub fn last_error(&self) -> Option<PolicyErrors> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads if any file was added, removed or modified since the last
    /// look. A broken set leaves the live one in place.
    pub fn reload_if_changed(&self) -> Reload {
        let now = stamp(&self.dir);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match load_dir(&self.dir) {
            Ok(bundle) => {
                *last_error = None;
                if bundle.version == self.live.load().version {
                    return Reload::Unchanged;
                }
                let version = bundle.version.to_string();
                self.live.store(Arc::new(bundle));
                Reload::Reloaded { version }
            }
            Err(errors) => {
                *last_error = Some(errors.clone());
                Reload::Failed(errors)
            }
        }
    }
}

fn stamp(dir: &Path) -> DirStamp {
    use sha2::Digest;
    policy_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let hash = std::fs::read(&p)
                .ok()
                .map(|b| sha2::Sha256::digest(b).into());
            (p, hash)
        })
        .collect()
}

impl PolicyEngine for CedarEngine {
    fn evaluate(&self, action: &Action) -> PolicyDecision {
        decide(&self.live.load(), action)
    }

    fn denial_depends_on_arguments(&self, action: &Action, denial: &PolicyDecision) -> bool {
        let bundle = self.live.load();
        if denial.policy_version != bundle.version {
            // Decided under another set: no claim either way.
            return true;
        }
        if denial.policies.is_empty() {
            // Default deny: only a permit that reads the arguments could
            // have matched with other ones.
            let Some(slice) = bundle.slice(action.class, &action.resource.name) else {
                return false;
            };
            return slice.policies().any(|p| {
                bundle
                    .policies
                    .get(p.id().to_string().as_str())
                    .is_none_or(|info| {
                        info.reads_args && info.effect == cedar_policy::Effect::Permit
                    })
            });
        }
        // Each forbid behind the denial matched; one that ignores the
        // arguments matches whatever they are.
        denial
            .policies
            .iter()
            .all(|id| bundle.policies.get(id).is_none_or(|p| p.reads_args))
    }
}

/// A full account of one decision, for `gavel policy explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The decision.
    pub decision: PolicyDecision,
    /// The policies behind it, with where they live.
    pub policies: Vec<PolicyInfo>,
    /// How many policies the index left to evaluate.
    pub evaluated: usize,
    /// How many are loaded in all.
    pub loaded: usize,
}

/// Decides `action` and says why.
pub fn explain(bundle: &PolicyBundle, action: &Action) -> Explanation {
    let decision = decide(bundle, action);
    let policies = decision
        .policies
        .iter()
        .filter_map(|id| bundle.policies.get(id).cloned())
        .collect();
    Explanation {
        evaluated: bundle
            .slice(action.class, &action.resource.name)
            .map_or(0, |s| s.policies().count()),
        loaded: bundle.policies.len(),
        decision,
        policies,
    }
}

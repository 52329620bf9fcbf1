//! Reading, checking and indexing a directory of `*.cedar` files.

use cedar_policy::{
    ActionConstraint, Effect, EntityUid, Policy, PolicyId, PolicySet, ResourceConstraint, Schema,
    ValidationMode, Validator,
};
use gavel_core::{ActionClass, Approver};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The schema gavel ships; every policy is validated against it.
pub const SCHEMA_TEXT: &str = include_str!("../schema/gavel.cedarschema");

/// The parsed [`SCHEMA_TEXT`].
pub fn schema() -> &'static Schema {
    static SCHEMA: std::sync::OnceLock<Schema> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA_TEXT)
            .unwrap_or_else(|e| panic!("gavel's built-in Cedar schema does not parse: {e}"));
        schema
    })
}

/// One problem in one policy file, located for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem is about the file as a whole).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Everything wrong with a policy directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyProblem>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The approval requirement a `permit` carries in its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// From `@approval("group:dba, user:bob@x")`.
    pub approvers: Vec<Approver>,
    /// From `@quorum("2")`, default 1.
    pub quorum: u32,
    /// From `@timeout("30m")`.
    pub timeout: Option<Duration>,
}

/// What gavel knows about one loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Its id: the `@id` annotation, else `file:line`.
    pub id: String,
    /// Where it came from.
    pub file: PathBuf,
    /// Its first line.
    pub line: usize,
    /// permit or forbid.
    pub effect: Effect,
    /// Present on approval policies.
    pub approval: Option<ApprovalSpec>,
    /// Whether it may read an MCP call's arguments (`context.args`):
    /// conservatively, whether `args` appears anywhere in its parsed form.
    pub reads_args: bool,
}

/// A validated, indexed policy set: what the engine evaluates.
#[derive(Debug)]
pub struct PolicyBundle {
    /// Hash of every file's path and content; bound into fingerprints.
    pub version: Arc<str>,
    /// Every policy, by id.
    pub policies: BTreeMap<String, PolicyInfo>,
    /// Number of files read.
    pub files: usize,
    index: HashMap<ActionClass, ClassSlice>,
    whole: PolicySet,
    /// Decisions already made under this bundle. Lives and dies with the
    /// bundle, so a reload can never serve a stale decision.
    pub(crate) cache: crate::cache::DecisionCache,
    /// Entities by principal and resource, shared by decisions that differ
    /// only in their context.
    pub(crate) entities: crate::cache::EntitiesCache,
    /// Whether any policy may read `context.operation`: if none does, SQL
    /// decisions do not depend on the statement text (only on its class,
    /// tables and intent) and are cached without it, so statements that
    /// differ only in their literals share one decision.
    pub reads_operation: bool,
    /// Whether any policy may read `context.args` (same conservative test).
    pub reads_args: bool,
}

/// The policies that can match one action class: those for any resource,
/// and per resource name those that name it plus the former.
#[derive(Debug, Default)]
struct ClassSlice {
    any_resource: PolicySet,
    by_resource: HashMap<String, PolicySet>,
}

impl PolicyBundle {
    /// An empty bundle: everything is denied by default.
    pub fn empty() -> PolicyBundle {
        PolicyBundle::build(Vec::new(), 0, String::new())
    }

    /// Every policy, unindexed.
    pub fn whole(&self) -> &PolicySet {
        &self.whole
    }

    /// The only policies that can match `class` on `resource`; evaluating
    /// this slice gives the same answer as the whole set.
    pub fn slice(&self, class: ActionClass, resource: &str) -> Option<&PolicySet> {
        let slice = self.index.get(&class)?;
        Some(
            slice
                .by_resource
                .get(resource)
                .unwrap_or(&slice.any_resource),
        )
    }

    fn build(policies: Vec<(Policy, PolicyInfo)>, files: usize, hash_hex: String) -> PolicyBundle {
        let mut index: HashMap<ActionClass, ClassSlice> = HashMap::new();
        let mut infos = BTreeMap::new();
        let mut whole = PolicySet::new();
        // First the resource-independent ones, so each per-resource set can
        // start as a copy of them.
        let mut specific: Vec<(ActionClass, String, Policy)> = Vec::new();
        for (policy, info) in &policies {
            let classes = classes_of(policy);
            let resource = named_resource(policy);
            for class in classes {
                match &resource {
                    Some(name) => specific.push((class, name.clone(), policy.clone())),
                    None => {
                        let slice = index.entry(class).or_default();
                        add(&mut slice.any_resource, policy.clone());
                        for set in slice.by_resource.values_mut() {
                            add(set, policy.clone());
                        }
                    }
                }
            }
            infos.insert(info.id.clone(), info.clone());
            add(&mut whole, policy.clone());
        }
        for (class, name, policy) in specific {
            let slice = index.entry(class).or_default();
            let base = slice.any_resource.clone();
            add(slice.by_resource.entry(name).or_insert(base), policy);
        }
        // Conservative: the word anywhere in a policy's parsed form (an
        // attribute, a string) counts as a read; the parsed form has string
        // escapes (`context["\u{6f}peration"]`) already decoded.
        let mentions = |word: &str| {
            policies.iter().any(|(p, _)| match p.to_json() {
                Ok(json) => json.to_string().contains(word),
                Err(_) => true,
            })
        };
        let reads_operation = mentions("operation");
        let reads_args = policies.iter().any(|(_, info)| info.reads_args);
        PolicyBundle {
            reads_operation,
            reads_args,
            version: Arc::from(if hash_hex.is_empty() {
                "empty".to_owned()
            } else {
                hash_hex[..16].to_owned()
            }),
            policies: infos,
            files,
            index,
            whole,
            cache: Default::default(),
            entities: Default::default(),
        }
    }
}

fn add(set: &mut PolicySet, policy: Policy) {
    // Ids are unique by construction (checked in `load_dir`).
    set.add(policy)
        .unwrap_or_else(|e| panic!("policy ids were checked unique: {e}"));
}

/// Which action classes a policy's scope admits.
fn classes_of(policy: &Policy) -> Vec<ActionClass> {
    let class_of = |uid: &EntityUid| -> Option<ActionClass> {
        (uid.type_name().to_string() == "Action")
            .then(|| uid.id().unescaped().parse().ok())
            .flatten()
    };
    match policy.action_constraint() {
        ActionConstraint::Any => ActionClass::ALL.to_vec(),
        ActionConstraint::Eq(uid) => class_of(&uid).into_iter().collect(),
        ActionConstraint::In(uids) => uids.iter().filter_map(class_of).collect(),
    }
}

/// The resource a policy's scope pins, if it pins one by name.
/// `Resource` entities have no parents, so `resource in Resource::"x"` means
/// the same as `resource == Resource::"x"`.
fn named_resource(policy: &Policy) -> Option<String> {
    match policy.resource_constraint() {
        ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid)
            if uid.type_name().to_string() == "Resource" =>
        {
            Some(uid.id().unescaped().to_owned())
        }
        _ => None,
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn first_label_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels()?.next().map(|l| l.offset())
}

fn diagnostic_message(d: &dyn miette::Diagnostic) -> String {
    let mut msg = d.to_string();
    if let Some(help) = d.help() {
        msg.push_str(&format!(" (help: {help})"));
    }
    msg
}

/// Every `*.cedar` file under `dir`, sorted. A missing directory is an
/// empty policy set (default deny), not an error.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "cedar") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads, parses, validates and indexes every policy under `dir`.
/// All problems are reported at once, each with file, line and column.
pub fn load_dir(dir: &Path) -> Result<PolicyBundle, PolicyErrors> {
    let files = policy_files(dir).map_err(|e| {
        PolicyErrors(vec![PolicyProblem {
            file: dir.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read policy directory: {e}"),
        }])
    })?;
    let mut sources = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => {
                return Err(PolicyErrors(vec![PolicyProblem {
                    file,
                    line: 0,
                    column: 0,
                    message: format!("cannot read: {e}"),
                }]));
            }
        }
    }
    load_sources(&sources)
}

/// As [`load_dir`], over in-memory `(path, text)` pairs.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<PolicyBundle, PolicyErrors> {
    let mut problems = Vec::new();
    let mut hasher = Sha256::new();
    let mut loaded: Vec<(Policy, PolicyInfo, usize)> = Vec::new();
    let mut ids: HashMap<String, (PathBuf, usize)> = HashMap::new();

    for (source_index, (file, text)) in sources.iter().enumerate() {
        hasher.update((file.to_string_lossy().len() as u64).to_be_bytes());
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
        let set: PolicySet = match text.parse() {
            Ok(set) => set,
            Err(errors) => {
                let errors: cedar_policy::ParseErrors = errors;
                for e in errors.iter() {
                    let (line, column) = first_label_offset(e)
                        .map(|o| line_col(text, o))
                        .unwrap_or((1, 1));
                    problems.push(PolicyProblem {
                        file: file.clone(),
                        line,
                        column,
                        message: diagnostic_message(e),
                    });
                }
                continue;
            }
        };
        // Parsed policies are named policy0, policy1, … in source order;
        // their text is an exact slice of the file, found in order.
        let mut parsed: Vec<&Policy> = set.policies().collect();
        parsed.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut cursor = 0;
        for policy in parsed {
            let policy_text = policy.to_string();
            let start = text[cursor..]
                .find(policy_text.as_str())
                .map(|i| cursor + i)
                .unwrap_or(cursor);
            cursor = start + policy_text.len().min(text.len() - start);
            let (line, column) = line_col(text, start);
            let id = policy
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}:{line}", file.display()));
            let problem = |message: String| PolicyProblem {
                file: file.clone(),
                line,
                column,
                message,
            };
            if let Some((other_file, other_line)) = ids.get(&id) {
                problems.push(problem(format!(
                    "duplicate policy id {id:?} (also at {}:{other_line})",
                    other_file.display()
                )));
                continue;
            }
            ids.insert(id.clone(), (file.clone(), line));
            let approval = match approval_spec(policy) {
                Ok(a) => a,
                Err(message) => {
                    problems.push(problem(message));
                    continue;
                }
            };
            let reads_args = policy
                .to_json()
                .map_or(true, |json| json.to_string().contains("args"));
            let info = PolicyInfo {
                id: id.clone(),
                file: file.clone(),
                line,
                effect: policy.effect(),
                approval,
                reads_args,
            };
            loaded.push((policy.new_id(PolicyId::new(&id)), info, source_index));
        }
    }

    // Validate all policies together against the schema (strict mode).
    let mut whole = PolicySet::new();
    for (policy, _, _) in &loaded {
        if let Err(e) = whole.add(policy.clone()) {
            problems.push(PolicyProblem {
                file: PathBuf::new(),
                line: 0,
                column: 0,
                message: e.to_string(),
            });
        }
    }
    let validation = Validator::new(schema().clone()).validate(&whole, ValidationMode::Strict);
    for e in validation.validation_errors() {
        let Some((_, info, source_index)) = loaded.iter().find(|(p, _, _)| p.id() == e.policy_id())
        else {
            continue;
        };
        let text = &sources[*source_index].1;
        let (line, column) = first_label_offset(e)
            .map(|o| line_col(text, o))
            .unwrap_or((info.line, 1));
        problems.push(PolicyProblem {
            file: info.file.clone(),
            line,
            column,
            message: diagnostic_message(e),
        });
    }

    if !problems.is_empty() {
        problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(PolicyErrors(problems));
    }
    let files = sources.len();
    let hash = if sources.is_empty() {
        String::new()
    } else {
        hex::encode(hasher.finalize())
    };
    Ok(PolicyBundle::build(
        loaded.into_iter().map(|(p, i, _)| (p, i)).collect(),
        files,
        hash,
    ))
}

/// The longest `@timeout` accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The annotations gavel understands. Any other is an error: a misspelled
/// `@approvals` would otherwise turn an approval rule into a plain permit.
const KNOWN_ANNOTATIONS: &[&str] = &["id", "approval", "quorum", "timeout", "description"];

/// Reads `@approval`, `@quorum`, `@timeout` from a policy.
fn approval_spec(policy: &Policy) -> Result<Option<ApprovalSpec>, String> {
    if let Some((key, _)) = policy
        .annotations()
        .find(|(k, _)| !KNOWN_ANNOTATIONS.contains(k))
    {
        return Err(format!(
            "unknown annotation @{key} (gavel knows @id, @approval, @quorum, @timeout, @description); a misspelled approval rule would allow without approval"
        ));
    }
    let approval = policy.annotation("approval");
    let quorum = policy.annotation("quorum");
    let timeout = policy.annotation("timeout");
    let Some(approval) = approval else {
        if quorum.is_some() || timeout.is_some() {
            return Err(
                "@quorum and @timeout need an @approval annotation on the same policy".into(),
            );
        }
        return Ok(None);
    };
    if policy.effect() == Effect::Forbid {
        return Err(
            "@approval on a forbid policy has no meaning: forbid always denies; put it on a permit"
                .into(),
        );
    }
    let approvers = approval
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse::<Approver>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("@approval: {e}"))?;
    if approvers.is_empty() {
        return Err(
            "@approval names nobody: list users or groups, e.g. @approval(\"group:dba\")".into(),
        );
    }
    let quorum = match quorum {
        None => 1,
        Some(q) => match q.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "@quorum({q:?}) must be a whole number of at least 1"
                ));
            }
        },
    };
    let timeout = match timeout {
        None => None,
        Some(t) => match humantime::parse_duration(t.trim()) {
            Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Some(d),
            _ => {
                return Err(format!(
                    "@timeout({t:?}) must be a positive duration of at most 365 days, such as \"30m\" or \"2h\""
                ));
            }
        },
    };
    Ok(Some(ApprovalSpec {
        approvers,
        quorum,
        timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<PolicyBundle, PolicyErrors> {
        load_sources(&[(PathBuf::from("p.cedar"), text.to_owned())])
    }

    #[test]
    fn ids_lines_and_annotations() {
        let b = load(
            "@id(\"reads\")\npermit(principal, action == Action::\"sql.read\", resource);\n\n\
             @approval(\"group:dba, user:bob@x\")\n@quorum(\"2\")\n@timeout(\"30m\")\n\
             permit(principal, action in [Action::\"sql.ddl\"], resource);\n",
        )
        .unwrap();
        assert_eq!(b.policies["reads"].line, 1);
        let ddl = &b.policies["p.cedar:4"];
        assert_eq!(ddl.line, 4);
        let spec = ddl.approval.as_ref().unwrap();
        assert_eq!(spec.quorum, 2);
        assert_eq!(spec.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(spec.approvers.len(), 2);
    }

    #[test]
    fn schema_errors_name_file_and_line() {
        let err = load(
            "permit(principal, action, resource);\n\npermit(principal, action == Action::\"sql.read\", resource)\n  when { context.nope == 1 };\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].line, 4, "{err}");
        assert!(err.to_string().starts_with("p.cedar:4:"), "{err}");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let err =
            load("permit(principal, action, resource);\npermit(principal action, resource);\n")
                .unwrap_err();
        assert_eq!(err.0[0].line, 2, "{err}");
    }

    #[test]
    fn bad_annotations_are_rejected() {
        for (text, needle) in [
            (
                "@approval(\"group:dba\")\nforbid(principal, action, resource);",
                "forbid",
            ),
            (
                "@approval(\"group:dba\")\n@quorum(\"0\")\npermit(principal, action, resource);",
                "@quorum",
            ),
            (
                "@approval(\"group:dba\")\n@timeout(\"soon\")\npermit(principal, action, resource);",
                "@timeout",
            ),
            (
                "@quorum(\"2\")\npermit(principal, action, resource);",
                "@approval",
            ),
            (
                "@approval(\" , \")\npermit(principal, action, resource);",
                "nobody",
            ),
            (
                "@approvals(\"group:dba\")\npermit(principal, action, resource);",
                "unknown annotation @approvals",
            ),
            (
                "@approval(\"group:dba\")\n@quorom(\"2\")\npermit(principal, action, resource);",
                "unknown annotation @quorom",
            ),
            (
                "@id(\"x\")\npermit(principal, action, resource);\n@id(\"x\")\npermit(principal, action, resource);",
                "duplicate",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn version_changes_with_content() {
        let a = load("permit(principal, action, resource);").unwrap();
        let b = load("permit(principal, action, resource);\n").unwrap();
        assert_ne!(a.version, b.version);
        assert_eq!(PolicyBundle::empty().version.as_ref(), "empty");
    }
}

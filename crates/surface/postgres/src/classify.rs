//! Statement classification (SPEC §3), failing closed.
//!
//! The query string is parsed with PostgreSQL's grammar. The whole parse tree
//! is walked. (`pg_query`'s own `nodes()` visits only a subset of node types,
//! so it is not used.) Every node can raise the statement's class:
//! - DML anywhere, CTEs included, is `sql.write`;
//! - a call of a function on the side-effect list is `sql.admin` (or
//!   `sql.write` for sequence changes);
//! - a call of any function not known to be read-only is `sql.unknown`;
//! - any statement type not listed here is `sql.unknown`.
//!
//! A string of several statements takes the most privileged class of any of
//! them. What cannot be parsed is `sql.unknown`. The ranking, lowest first:
//! read, write, export, ddl, dcl, admin, unknown.

use gavel_core::ActionClass;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// How privileged a class is; a query string takes its highest.
/// How privileged a class is, for "most privileged wins".
pub(crate) fn rank(class: ActionClass) -> u8 {
    match class {
        ActionClass::SqlRead => 0,
        ActionClass::SqlWrite => 1,
        ActionClass::SqlExport => 2,
        ActionClass::SqlDdl => 3,
        ActionClass::SqlDcl => 4,
        ActionClass::SqlAdmin => 5,
        _ => 6,
    }
}

/// One statement's class and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementClass {
    /// Its class.
    pub class: ActionClass,
    /// The top-level statement type, e.g. `SelectStmt`.
    pub kind: String,
    /// What raised it to this class.
    pub reason: String,
    /// What it does to the session's prepared statements, cursors and
    /// settings.
    pub effect: Effect,
}

/// What a statement does to the session beyond its class: the facts the
/// proxy needs so that it never parses SQL itself. Names are as the server
/// folds them (PostgreSQL's own parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing the proxy tracks.
    None,
    /// `PREPARE name AS …`.
    Prepare(String),
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` (`None`).
    Deallocate(Option<String>),
    /// `DECLARE name CURSOR …`.
    Declare {
        /// The cursor.
        name: String,
        /// `WITH HOLD`: it outlives its transaction.
        hold: bool,
    },
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close(Option<String>),
    /// `EXECUTE name`.
    Execute(String),
    /// `FETCH … name` or `MOVE … name`: runs the portal's query.
    Fetch(String),
    /// `DISCARD …`.
    Discard,
    /// Transaction control.
    Transaction(Transaction),
    /// `SET name …` / `RESET name`, with the value when it is one string
    /// constant (`None` for RESET, `DEFAULT` or anything else).
    Set {
        /// The setting, lower case.
        name: String,
        /// `SET name = 'value'`'s value.
        value: Option<String>,
    },
}

/// Kinds of transaction control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction {
    /// BEGIN, START TRANSACTION.
    Begin,
    /// COMMIT, END.
    Commit,
    /// ROLLBACK, ABORT.
    Rollback,
    /// SAVEPOINT.
    Savepoint,
    /// RELEASE SAVEPOINT.
    Release,
    /// ROLLBACK TO SAVEPOINT.
    RollbackTo,
    /// PREPARE TRANSACTION, COMMIT / ROLLBACK PREPARED.
    TwoPhase,
}

/// A prepared statement or portal as the session holds it, for `EXECUTE`
/// and `FETCH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The class of what it runs.
    pub class: ActionClass,
    /// The tables it names.
    pub tables: Vec<String>,
    /// Its text, for reviewers.
    pub text: std::sync::Arc<str>,
}

/// The session's prepared statements and portals, as the server holds
/// them, for `EXECUTE` and `FETCH`/`MOVE`. A name the session cannot vouch
/// for resolves to `None`, which classifies as `sql.unknown`.
pub trait Names {
    /// The prepared statement `name`.
    fn statement(&self, name: &str) -> Option<Resolved>;
    /// The portal (cursor) `name`.
    fn portal(&self, name: &str) -> Option<Resolved>;
}

/// No names at all: `EXECUTE` and `FETCH` fail closed.
pub struct NoNames;

impl Names for NoNames {
    fn statement(&self, _: &str) -> Option<Resolved> {
        None
    }
    fn portal(&self, _: &str) -> Option<Resolved> {
        None
    }
}

/// The verdict on a whole query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The most privileged class of any statement.
    pub class: ActionClass,
    /// Each statement in order.
    pub statements: Vec<StatementClass>,
    /// Tables and views named anywhere (`schema.name` when qualified),
    /// including those of prepared statements and portals it runs.
    pub tables: Vec<String>,
    /// Why the string has its class.
    pub reason: String,
    /// The intent of a leading `/* intent: … */` comment.
    pub intent: Option<String>,
}

impl Classification {
    /// Whether it resolves names of the session (`EXECUTE`, `FETCH`,
    /// `MOVE`): its class depends on more than its text.
    pub fn uses_names(&self) -> bool {
        self.statements
            .iter()
            .any(|s| matches!(s.effect, Effect::Execute(_) | Effect::Fetch(_)))
    }

    /// Whether it may change the session's prepared statements (and so
    /// the server must be asked what they are before the next `EXECUTE`
    /// or `Bind` is judged): `PREPARE`, `DEALLOCATE`, `DISCARD`, or code
    /// gavel cannot see into (anything but a read or a write).
    pub fn may_change_statements(&self) -> bool {
        self.statements.iter().any(|s| {
            matches!(
                s.effect,
                Effect::Prepare(_) | Effect::Deallocate(_) | Effect::Discard
            ) || runs_unseen_code(s)
        })
    }

    /// Whether it may change the session's portals and cursors beyond
    /// what a transaction's end does: `DECLARE`, `CLOSE`, `DISCARD`,
    /// `ROLLBACK` (a cursor `WITH HOLD` declared in it goes too), `ROLLBACK
    /// TO`, two-phase commit, or code gavel cannot see into.
    pub fn may_change_portals(&self) -> bool {
        self.statements.iter().any(|s| {
            matches!(
                s.effect,
                Effect::Declare { .. }
                    | Effect::Close(_)
                    | Effect::Discard
                    | Effect::Transaction(
                        Transaction::Commit
                            | Transaction::Rollback
                            | Transaction::RollbackTo
                            | Transaction::TwoPhase
                    )
            ) || runs_unseen_code(s)
        })
    }

    /// Whether it may change session settings that change what later
    /// statements mean: `SET`, `RESET`, `DISCARD`, transaction control
    /// (which ends `SET LOCAL`), or code gavel cannot see into.
    pub fn may_change_settings(&self) -> bool {
        self.statements.iter().any(|s| {
            matches!(
                s.effect,
                Effect::Set { .. } | Effect::Discard | Effect::Transaction(_)
            ) || runs_unseen_code(s)
        })
    }

    /// `SET gavel.intent = '…'` / `RESET gavel.intent` alone: the new
    /// intent (empty to clear).
    pub fn intent_setting(&self) -> Option<String> {
        match self.statements.as_slice() {
            [
                StatementClass {
                    effect: Effect::Set { name, value },
                    ..
                },
            ] if name == "gavel.intent" => Some(value.clone().unwrap_or_default()),
            _ => None,
        }
    }
}

/// A statement whose class says code may run that gavel did not see
/// (functions, procedures, DO blocks, anything unknown).
fn runs_unseen_code(s: &StatementClass) -> bool {
    !matches!(s.class, ActionClass::SqlRead | ActionClass::SqlWrite)
}

/// A leading `/* intent: … */` comment.
pub fn comment_intent(sql: &str) -> Option<String> {
    let rest = sql.trim_start().strip_prefix("/*")?;
    let end = rest.find("*/")?;
    let body = rest[..end].trim();
    let lower = body.get(..7)?.to_ascii_lowercase();
    (lower == "intent:").then(|| body[7..].trim().to_owned())
}

/// Functions with side effects, and the class a call gets.
const SIDE_EFFECTS: &[(&str, ActionClass)] = &[
    ("nextval", ActionClass::SqlWrite),
    ("setval", ActionClass::SqlWrite),
    ("pg_notify", ActionClass::SqlWrite),
    ("pg_terminate_backend", ActionClass::SqlAdmin),
    ("pg_cancel_backend", ActionClass::SqlAdmin),
    ("pg_reload_conf", ActionClass::SqlAdmin),
    ("pg_rotate_logfile", ActionClass::SqlAdmin),
    ("pg_switch_wal", ActionClass::SqlAdmin),
    ("pg_create_restore_point", ActionClass::SqlAdmin),
    ("pg_promote", ActionClass::SqlAdmin),
    ("pg_sleep", ActionClass::SqlAdmin),
    ("pg_sleep_for", ActionClass::SqlAdmin),
    ("pg_sleep_until", ActionClass::SqlAdmin),
    ("pg_read_file", ActionClass::SqlAdmin),
    ("pg_read_binary_file", ActionClass::SqlAdmin),
    ("pg_ls_dir", ActionClass::SqlAdmin),
    ("pg_stat_file", ActionClass::SqlAdmin),
    ("pg_file_write", ActionClass::SqlAdmin),
    ("lo_import", ActionClass::SqlAdmin),
    ("lo_export", ActionClass::SqlAdmin),
    ("lo_unlink", ActionClass::SqlAdmin),
    ("lo_create", ActionClass::SqlAdmin),
    ("lo_put", ActionClass::SqlAdmin),
    ("lo_from_bytea", ActionClass::SqlAdmin),
    ("dblink", ActionClass::SqlAdmin),
    ("dblink_exec", ActionClass::SqlAdmin),
    ("dblink_connect", ActionClass::SqlAdmin),
    ("dblink_send_query", ActionClass::SqlAdmin),
    ("set_config", ActionClass::SqlAdmin),
    ("query_to_xml", ActionClass::SqlAdmin),
    ("query_to_xml_and_xmlschema", ActionClass::SqlAdmin),
    ("query_to_xmlschema", ActionClass::SqlAdmin),
    ("cursor_to_xml", ActionClass::SqlAdmin),
    ("pg_advisory_lock", ActionClass::SqlAdmin),
    ("pg_advisory_xact_lock", ActionClass::SqlAdmin),
    ("pg_drop_replication_slot", ActionClass::SqlAdmin),
    ("pg_create_physical_replication_slot", ActionClass::SqlAdmin),
    ("pg_create_logical_replication_slot", ActionClass::SqlAdmin),
    ("pg_logical_emit_message", ActionClass::SqlAdmin),
    ("pg_replication_origin_create", ActionClass::SqlAdmin),
];

/// Built-in functions known to read only. Anything else is `sql.unknown`
/// unless configured.
const READ_ONLY: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "variance",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "row_number",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "cume_dist",
    "percent_rank",
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substr",
    "substring",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "lpad",
    "rpad",
    "replace",
    "translate",
    "position",
    "strpos",
    "left",
    "right",
    "repeat",
    "reverse",
    "split_part",
    "concat",
    "concat_ws",
    "format",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "starts_with",
    "md5",
    "sha256",
    "sha512",
    "encode",
    "decode",
    "to_hex",
    "ascii",
    "chr",
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "mod",
    "power",
    "sqrt",
    "exp",
    "ln",
    "log",
    "sign",
    "greatest",
    "least",
    "coalesce",
    "nullif",
    "random",
    "pi",
    "width_bucket",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_trunc",
    "date_part",
    "extract",
    "date_bin",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "isfinite",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "timezone",
    "generate_series",
    "generate_subscripts",
    "unnest",
    "array_length",
    "array_lower",
    "array_upper",
    "array_position",
    "array_positions",
    "array_to_string",
    "string_to_array",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_remove",
    "array_replace",
    "cardinality",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "to_json",
    "to_jsonb",
    "row_to_json",
    "json_object",
    "jsonb_object",
    "json_array_length",
    "jsonb_array_length",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "jsonb_pretty",
    "jsonb_path_query",
    "jsonb_path_exists",
    "gen_random_uuid",
    "uuid_generate_v4",
    "current_setting",
    "current_database",
    "current_schema",
    "current_schemas",
    "version",
    "pg_backend_pid",
    "pg_typeof",
    "format_type",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "pg_table_size",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_database_size",
    "pg_size_pretty",
    "pg_get_viewdef",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "obj_description",
    "col_description",
    "pg_postmaster_start_time",
    "inet_client_addr",
    "inet_server_addr",
    "host",
    "family",
    "masklen",
    "text",
    "int4",
    "int8",
    "numeric",
    "float8",
    "bool",
    "date",
    "timestamp",
    "interval",
    "exists",
];

/// Statement and node types, by the class they carry on their own.
fn node_class(kind: &str) -> Option<ActionClass> {
    use ActionClass::*;
    Some(match kind {
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "TruncateStmt" | "NotifyStmt"
        | "RefreshMatViewStmt" => SqlWrite,
        "SelectStmt" | "VariableShowStmt" | "TransactionStmt" | "ExplainStmt" | "PrepareStmt"
        | "DeallocateStmt" | "DiscardStmt" | "ListenStmt" | "UnlistenStmt" | "ClosePortalStmt"
        | "FetchStmt" | "DeclareCursorStmt" | "ReturnStmt" | "PlassignStmt"
        // Their real class depends on their contents (see `Walk::node`).
        | "CopyStmt" | "VariableSetStmt" | "ExecuteStmt" => SqlRead,
        "GrantStmt" | "GrantRoleStmt" | "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt"
        | "DropRoleStmt" | "AlterDefaultPrivilegesStmt" | "AlterOwnerStmt" | "ReassignOwnedStmt"
        | "DropOwnedStmt" | "CreatePolicyStmt" | "AlterPolicyStmt" | "SecLabelStmt" => SqlDcl,
        "DoStmt" | "CallStmt" | "LoadStmt" | "CheckPointStmt" | "AlterSystemStmt" | "VacuumStmt"
        | "ClusterStmt" | "ReindexStmt" | "LockStmt" | "CreateExtensionStmt" | "AlterExtensionStmt"
        | "AlterExtensionContentsStmt" | "CreateFunctionStmt" | "AlterFunctionStmt"
        | "CreatePLangStmt" | "CreateTrigStmt" | "CreateEventTrigStmt" | "AlterEventTrigStmt"
        | "RuleStmt" | "CreateFdwStmt" | "AlterFdwStmt" | "CreateForeignServerStmt"
        | "AlterForeignServerStmt" | "CreateUserMappingStmt" | "AlterUserMappingStmt"
        | "DropUserMappingStmt" | "ImportForeignSchemaStmt" | "CreateForeignTableStmt"
        | "CreateSubscriptionStmt" | "AlterSubscriptionStmt" | "DropSubscriptionStmt"
        | "CreatePublicationStmt" | "AlterPublicationStmt" | "CreatedbStmt" | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt" | "AlterDatabaseRefreshCollStmt" | "DropdbStmt"
        | "CreateTableSpaceStmt" | "DropTableSpaceStmt" | "AlterTableSpaceOptionsStmt"
        | "CreateConversionStmt" | "CreateTransformStmt" | "CreateAmStmt" => SqlAdmin,
        "CreateStmt" | "AlterTableStmt" | "DropStmt" | "IndexStmt" | "ViewStmt" | "CreateSeqStmt"
        | "AlterSeqStmt" | "CreateSchemaStmt" | "RenameStmt" | "CommentStmt" | "CreateTableAsStmt"
        | "CompositeTypeStmt" | "CreateEnumStmt" | "AlterEnumStmt" | "CreateRangeStmt"
        | "CreateDomainStmt" | "AlterDomainStmt" | "DefineStmt" | "AlterObjectSchemaStmt"
        | "CreateCastStmt" | "CreateOpClassStmt" | "CreateOpFamilyStmt" | "AlterOpFamilyStmt"
        | "CreateStatsStmt" | "AlterStatsStmt" | "AlterTypeStmt" | "AlterCollationStmt"
        | "AlterTableMoveAllStmt" | "AlterObjectDependsStmt" | "AlterOperatorStmt"
        | "AlterTSDictionaryStmt" | "AlterTSConfigurationStmt" | "AlterTableCmd" => SqlDdl,
        _ => return None,
    })
}

/// `AlterTableType::AtChangeOwner` in libpg_query's protobuf.
const AT_CHANGE_OWNER: i64 = 27;
/// `TransactionStmtKind`: PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED.
const TWO_PHASE: [i64; 3] = [8, 9, 10];
/// `DiscardMode::DiscardAll` (also resets the session's role).
const DISCARD_ALL: i64 = 1;
/// `VariableSetKind`: SET TRANSACTION / SESSION CHARACTERISTICS, RESET ALL.
const VAR_SET_MULTI: i64 = 4;
const VAR_RESET_ALL: i64 = 6;

/// Settings a session may change without approval. Any other `SET` can
/// change what the server does (`session_replication_role` skips triggers,
/// `log_statement` hides activity, `search_path` shadows functions): admin.
const SAFE_SETTINGS: &[&str] = &[
    "application_name",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "timezone",
    "datestyle",
    "intervalstyle",
    "extra_float_digits",
    // Not client_encoding nor standard_conforming_strings: both change how
    // the server splits the bytes of a statement into tokens, so a gateway
    // that parsed in UTF-8 with standard strings could be shown one
    // statement while the server runs another.
    "client_min_messages",
    "bytea_output",
    "transaction_isolation",
    "transaction_read_only",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "work_mem",
    "maintenance_work_mem",
    "enable_seqscan",
    "enable_indexscan",
    "enable_bitmapscan",
    "enable_hashjoin",
    "enable_mergejoin",
    "enable_nestloop",
    "jit",
    "row_security",
];

/// Operators PostgreSQL ships. Any other operator, or one qualified with a
/// schema other than pg_catalog, runs whatever function its creator chose.
const BUILTIN_OPERATORS: &[&str] = &[
    "=",
    "<>",
    "!=",
    "<",
    ">",
    "<=",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "||",
    "|/",
    "||/",
    "@",
    "&",
    "|",
    "#",
    "~",
    "<<",
    ">>",
    "->",
    "->>",
    "#>",
    "#>>",
    "@>",
    "<@",
    "?",
    "?|",
    "?&",
    "&&",
    "~*",
    "!~",
    "!~*",
    "~~",
    "!~~",
    "~~*",
    "!~~*",
    "@@",
    "@?",
    "#-",
    "<->",
    "&<",
    "&>",
    "<<|",
    "|>>",
    "&<|",
    "|&>",
    "<^",
    ">^",
    "?#",
    "?-",
    "?-|",
    "?||",
    "~=",
    "<<=",
    ">>=",
    "-|-",
    "BETWEEN",
    "NOT BETWEEN",
    "BETWEEN SYMMETRIC",
    "NOT BETWEEN SYMMETRIC",
];

/// Types PostgreSQL ships. A cast to any other type (or a domain) may run
/// its creator's input function or CHECK expression.
const BUILTIN_TYPES: &[&str] = &[
    "bool",
    "boolean",
    "int2",
    "int4",
    "int8",
    "smallint",
    "integer",
    "int",
    "bigint",
    "numeric",
    "decimal",
    "float4",
    "float8",
    "real",
    "text",
    "varchar",
    "bpchar",
    "char",
    "name",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "bytea",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "oid",
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regnamespace",
    "regrole",
    "money",
    "xml",
    "bit",
    "varbit",
    "tsvector",
    "tsquery",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
    "record",
];

/// Catalogs whose contents are server configuration or credentials.
const SENSITIVE_RELATIONS: &[&str] = &[
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_file_settings",
    "pg_authid",
    "pg_shadow",
    "pg_user_mappings",
];

/// The names in a list of `String` nodes (`funcname`, an operator, a type).
fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.pointer("/node/String/sval").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `parts` (optionally schema-qualified) names a built-in in `list`.
fn builtin(parts: &[String], list: &[&str]) -> bool {
    match parts {
        [name] => list.contains(&name.as_str()),
        [schema, name] => schema == "pg_catalog" && list.contains(&name.as_str()),
        _ => false,
    }
}

/// Whether any data-modifying statement occurs inside `v`.
fn contains_dml(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, c)| {
            matches!(
                k.as_str(),
                "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
            ) || contains_dml(c)
        }),
        Value::Array(a) => a.iter().any(contains_dml),
        _ => false,
    }
}

/// Classifies query strings. Cheap to share.
#[derive(Debug, Clone)]
pub struct Classifier {
    side_effects: HashMap<String, ActionClass>,
    read_only: HashSet<String>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(&[], &[])
    }
}

struct Walk<'a> {
    classifier: &'a Classifier,
    names: &'a Staged<'a>,
    class: ActionClass,
    reason: String,
    tables: BTreeSet<String>,
}

/// The session's names as a query string sees them: what the statements
/// before it in the same string prepared, deallocated, declared and closed
/// (a string runs in order and stops at its first error, so that is exact),
/// then the session's.
struct Staged<'a> {
    session: &'a dyn Names,
    statements: HashMap<String, Option<Resolved>>,
    portals: HashMap<String, Option<Resolved>>,
    /// `DEALLOCATE ALL` / `CLOSE ALL` earlier in the string.
    statements_cleared: bool,
    portals_cleared: bool,
}

impl Staged<'_> {
    fn statement(&self, name: &str) -> Option<Resolved> {
        match self.statements.get(name) {
            Some(staged) => staged.clone(),
            None if self.statements_cleared => None,
            None => self.session.statement(name),
        }
    }

    fn portal(&self, name: &str) -> Option<Resolved> {
        match self.portals.get(name) {
            Some(staged) => staged.clone(),
            None if self.portals_cleared => None,
            None => self.session.portal(name),
        }
    }
}

impl Walk<'_> {
    fn raise(&mut self, class: ActionClass, reason: impl FnOnce() -> String) {
        if rank(class) > rank(self.class) {
            self.class = class;
            self.reason = reason();
        }
    }

    fn visit(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                // A RangeVar, wrapped as a node or held directly (`relation`).
                if let Some(name) = map.get("relname").and_then(Value::as_str) {
                    let schema = map.get("schemaname").and_then(Value::as_str).unwrap_or("");
                    if SENSITIVE_RELATIONS.contains(&name) {
                        self.raise(ActionClass::SqlAdmin, || {
                            format!("{name} exposes server configuration or credentials")
                        });
                    }
                    if !name.is_empty() {
                        self.tables.insert(if schema.is_empty() {
                            name.to_owned()
                        } else {
                            format!("{schema}.{name}")
                        });
                    }
                }
                for (key, child) in map {
                    self.node(key, child);
                    self.visit(child);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.visit(i)),
            _ => {}
        }
    }

    fn node(&mut self, kind: &str, n: &Value) {
        if let Some(class) = node_class(kind) {
            self.raise(class, || kind.to_owned());
        } else if kind.ends_with("Stmt") && kind != "RawStmt" {
            self.raise(ActionClass::SqlUnknown, || {
                format!("{kind} is not a statement gavel knows")
            });
        }
        match kind {
            "SelectStmt" => {
                if n.get("into_clause").is_some_and(|c| !c.is_null()) {
                    self.raise(ActionClass::SqlDdl, || {
                        "SELECT … INTO creates a table".into()
                    });
                }
                if n.get("locking_clause")
                    .is_some_and(|c| c.as_array().is_some_and(|a| !a.is_empty()))
                {
                    self.raise(ActionClass::SqlWrite, || {
                        "SELECT … FOR UPDATE/SHARE locks rows".into()
                    });
                }
            }
            "CopyStmt" => self.copy(n),
            "VariableSetStmt" => {
                let name = n
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_lowercase();
                let kind = n.get("kind").and_then(Value::as_i64).unwrap_or(0);
                if kind == VAR_RESET_ALL {
                    self.raise(ActionClass::SqlDcl, || {
                        "RESET ALL also resets the role".into()
                    });
                } else if kind == VAR_SET_MULTI {
                    // SET TRANSACTION … / SET SESSION CHARACTERISTICS …
                } else if name == "role" || name == "session_authorization" {
                    self.raise(ActionClass::SqlDcl, || {
                        format!("SET {name} changes identity")
                    });
                } else if !(name.starts_with("gavel.") || SAFE_SETTINGS.contains(&name.as_str())) {
                    self.raise(ActionClass::SqlAdmin, || {
                        format!("SET {name} changes how the server behaves")
                    });
                }
            }
            "TransactionStmt"
                if n.get("kind")
                    .and_then(Value::as_i64)
                    .is_some_and(|k| TWO_PHASE.contains(&k)) =>
            {
                self.raise(ActionClass::SqlAdmin, || {
                    "two-phase commit acts on prepared transactions of any session".into()
                });
            }
            "DiscardStmt" if n.get("target").and_then(Value::as_i64) == Some(DISCARD_ALL) => {
                self.raise(ActionClass::SqlDcl, || {
                    "DISCARD ALL also resets the role".into()
                });
            }
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                let target = n
                    .pointer("/relation/relname")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if target.starts_with("pg_") {
                    self.raise(ActionClass::SqlAdmin, || {
                        format!("writing the system catalog {target}")
                    });
                }
            }
            "A_Expr" | "AExpr" => {
                let op = names(n.get("name"));
                if !op.is_empty() && !builtin(&op, BUILTIN_OPERATORS) {
                    self.raise(ActionClass::SqlUnknown, || {
                        format!("operator {} is not a built-in", op.join("."))
                    });
                }
            }
            "TypeCast" => {
                let ty = names(n.pointer("/type_name/names"));
                if !ty.is_empty() && !builtin(&ty, BUILTIN_TYPES) {
                    self.raise(ActionClass::SqlUnknown, || {
                        format!("cast to {}, which is not a built-in type", ty.join("."))
                    });
                }
            }
            "ExecuteStmt" => {
                let name = n.get("name").and_then(Value::as_str).unwrap_or("");
                match self.names.statement(name) {
                    Some(r) => {
                        self.tables.extend(r.tables.iter().cloned());
                        self.raise(r.class, || {
                            format!(
                                "EXECUTE {name} runs a prepared {}: {}",
                                r.class,
                                excerpt(&r.text)
                            )
                        })
                    }
                    None => self.raise(ActionClass::SqlUnknown, || {
                        format!(
                            "EXECUTE of prepared statement {name:?}, which gavel cannot vouch for"
                        )
                    }),
                }
            }
            "FetchStmt" => {
                let name = n.get("portalname").and_then(Value::as_str).unwrap_or("");
                match self.names.portal(name) {
                    Some(r) => {
                        self.tables.extend(r.tables.iter().cloned());
                        self.raise(r.class, || {
                            format!(
                                "FETCH from {name:?} runs a {}: {}",
                                r.class,
                                excerpt(&r.text)
                            )
                        })
                    }
                    None => self.raise(ActionClass::SqlUnknown, || {
                        format!("FETCH from cursor {name:?}, which gavel cannot vouch for")
                    }),
                }
            }
            // (CALL's own `funccall` is not checked here: CallStmt is already
            // sql.admin, which is how an approver sees a procedure call.)
            "FuncCall" => self.function(n),
            "AlterTableCmd"
                if n.get("subtype").and_then(Value::as_i64) == Some(AT_CHANGE_OWNER) =>
            {
                self.raise(ActionClass::SqlDcl, || {
                    "ALTER … OWNER TO changes ownership".into()
                })
            }
            _ => {}
        }
    }

    fn copy(&mut self, n: &Value) {
        if n.get("query").is_some_and(contains_dml) {
            self.raise(ActionClass::SqlAdmin, || {
                "COPY of a data-modifying query".into()
            });
        }
        let from = n.get("is_from").and_then(Value::as_bool).unwrap_or(false);
        let program = n
            .get("is_program")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let file = n
            .get("filename")
            .and_then(Value::as_str)
            .is_some_and(|f| !f.is_empty());
        let (class, why) = match (from, program, file) {
            (_, true, _) => (
                ActionClass::SqlAdmin,
                "COPY … PROGRAM runs a shell command on the server",
            ),
            (_, false, true) => (ActionClass::SqlAdmin, "COPY with a server-side file"),
            (true, false, false) => (ActionClass::SqlWrite, "COPY … FROM STDIN loads rows"),
            (false, false, false) => (ActionClass::SqlExport, "COPY … TO STDOUT exports rows"),
        };
        self.raise(class, || why.into());
    }

    fn function(&mut self, n: &Value) {
        let parts = names(n.get("funcname"));
        let Some(name) = parts.last() else {
            self.raise(ActionClass::SqlUnknown, || {
                "a function call gavel cannot name".into()
            });
            return;
        };
        let schema = if parts.len() > 1 {
            parts[0].as_str()
        } else {
            ""
        };
        let qualified = parts.join(".");
        // A function in another schema is whatever that schema defines: only
        // built-ins (unqualified or pg_catalog) or configured names are trusted.
        let read_only = self.classifier.read_only.contains(qualified.as_str())
            || ((schema.is_empty() || schema == "pg_catalog")
                && self.classifier.read_only.contains(name.as_str()));
        if let Some(class) = self.classifier.side_effects.get(name.as_str()) {
            self.raise(*class, || format!("{qualified}() has side effects"));
        } else if !read_only {
            self.raise(ActionClass::SqlUnknown, || {
                format!("{qualified}() is not known to be read-only")
            });
        }
    }
}

/// Whether PostgreSQL's grammar accepts `sql` (for tests and fuzzing).
pub fn parses(sql: &str) -> Result<(), String> {
    pg_query::parse(sql, 0)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Classifier {
    /// The built-in lists plus `side_effects` (name, class) and `read_only`
    /// names from the configuration. A configured side effect wins over the
    /// read-only list.
    pub fn new(side_effects: &[(String, ActionClass)], read_only: &[String]) -> Classifier {
        let mut se: HashMap<String, ActionClass> = SIDE_EFFECTS
            .iter()
            .map(|(n, c)| ((*n).to_owned(), *c))
            .collect();
        se.extend(side_effects.iter().map(|(n, c)| (n.to_lowercase(), *c)));
        let mut ro: HashSet<String> = READ_ONLY.iter().map(|n| (*n).to_owned()).collect();
        ro.extend(read_only.iter().map(|n| n.to_lowercase()));
        Classifier {
            side_effects: se,
            read_only: ro,
        }
    }

    /// Classifies `sql`. `names` resolves the session's prepared
    /// statements and portals (for `EXECUTE`, `FETCH` and `MOVE`), seen
    /// through what the string itself prepares and declares before them;
    /// a name nobody vouches for fails closed.
    pub fn classify(&self, sql: &str, names: &dyn Names) -> Classification {
        let intent = comment_intent(sql);
        let unknown = |reason: String| Classification {
            class: ActionClass::SqlUnknown,
            statements: Vec::new(),
            tables: Vec::new(),
            reason,
            intent: intent.clone(),
        };
        let parsed = match pg_query::parse(sql, 0) {
            Ok(p) => p,
            Err(e) => return unknown(format!("PostgreSQL's parser rejects it: {e}")),
        };
        let mut staged = Staged {
            session: names,
            statements: HashMap::new(),
            portals: HashMap::new(),
            statements_cleared: false,
            portals_cleared: false,
        };
        let mut class = ActionClass::SqlRead;
        let mut reason = String::from("read-only statements");
        let mut statements = Vec::new();
        let mut tables = BTreeSet::new();
        for raw in &parsed.protobuf.stmts {
            let tree = match serde_json::to_value(raw) {
                Ok(t) => t,
                Err(e) => return unknown(format!("cannot inspect the parse tree: {e}")),
            };
            let node = tree.pointer("/stmt/node").and_then(Value::as_object);
            let kind = node
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_else(|| "empty".into());
            let body = node.and_then(|m| m.values().next()).unwrap_or(&Value::Null);
            let effect = effect(&kind, body);
            let mut walk = Walk {
                classifier: self,
                names: &staged,
                class: ActionClass::SqlRead,
                reason: kind.clone(),
                tables: BTreeSet::new(),
            };
            walk.visit(&tree);
            let (walk_class, walk_reason, walk_tables) = (walk.class, walk.reason, walk.tables);
            if rank(walk_class) > rank(class) {
                class = walk_class;
                reason = walk_reason.clone();
            }
            // What later statements of the same string see.
            let text: std::sync::Arc<str> = Arc::from(statement_text(sql, raw));
            match &effect {
                Effect::Prepare(name) => {
                    staged.statements.insert(
                        name.clone(),
                        Some(Resolved {
                            class: walk_class,
                            tables: walk_tables.iter().cloned().collect(),
                            text,
                        }),
                    );
                }
                Effect::Deallocate(Some(name)) => {
                    staged.statements.insert(name.clone(), None);
                }
                Effect::Deallocate(None) => {
                    staged.statements.clear();
                    staged.statements_cleared = true;
                }
                Effect::Declare { name, .. } => {
                    staged.portals.insert(
                        name.clone(),
                        Some(Resolved {
                            class: walk_class,
                            tables: walk_tables.iter().cloned().collect(),
                            text,
                        }),
                    );
                }
                Effect::Close(Some(name)) => {
                    staged.portals.insert(name.clone(), None);
                }
                Effect::Close(None) | Effect::Discard => {
                    staged.portals.clear();
                    staged.portals_cleared = true;
                    if effect == Effect::Discard {
                        staged.statements.clear();
                        staged.statements_cleared = true;
                    }
                }
                _ => {}
            }
            tables.extend(walk_tables);
            statements.push(StatementClass {
                class: walk_class,
                kind,
                reason: walk_reason,
                effect,
            });
        }
        Classification {
            class,
            statements,
            tables: tables.into_iter().collect(),
            reason,
            intent,
        }
    }

    /// The class of what `PREPARE name` in `source` prepares, and the
    /// tables it names: for a SQL-prepared statement the server reports
    /// with the whole query string that created it. The most privileged
    /// when the string prepares `name` more than once; `None` when it does
    /// not prepare it at all.
    pub fn prepared_in(&self, source: &str, name: &str) -> Option<Resolved> {
        self.defined_in(
            source,
            |effect| matches!(effect, Effect::Prepare(n) if n == name),
        )
    }

    /// As [`Classifier::prepared_in`], for `DECLARE name CURSOR`.
    pub fn declared_in(&self, source: &str, name: &str) -> Option<Resolved> {
        self.defined_in(
            source,
            |effect| matches!(effect, Effect::Declare { name: n, .. } if n == name),
        )
    }

    fn defined_in(&self, source: &str, wanted: impl Fn(&Effect) -> bool) -> Option<Resolved> {
        let parsed = pg_query::parse(source, 0).ok()?;
        let mut found: Option<Resolved> = None;
        for raw in &parsed.protobuf.stmts {
            let tree = serde_json::to_value(raw).ok()?;
            let node = tree.pointer("/stmt/node").and_then(Value::as_object)?;
            let (kind, body) = node.iter().next()?;
            if !wanted(&effect(kind, body)) {
                continue;
            }
            let staged = Staged {
                session: &NoNames,
                statements: HashMap::new(),
                portals: HashMap::new(),
                statements_cleared: false,
                portals_cleared: false,
            };
            let mut walk = Walk {
                classifier: self,
                names: &staged,
                class: ActionClass::SqlRead,
                reason: kind.clone(),
                tables: BTreeSet::new(),
            };
            walk.visit(&tree);
            if found
                .as_ref()
                .is_none_or(|f| rank(walk.class) > rank(f.class))
            {
                found = Some(Resolved {
                    class: walk.class,
                    tables: walk.tables.into_iter().collect(),
                    text: Arc::from(statement_text(source, raw)),
                });
            }
        }
        found
    }
}

/// The text of one statement of a query string.
fn statement_text<'a>(sql: &'a str, raw: &pg_query::protobuf::RawStmt) -> &'a str {
    let start = usize::try_from(raw.stmt_location)
        .unwrap_or(0)
        .min(sql.len());
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => (start + n).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql).trim()
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    if s.len() <= 200 {
        return s.to_owned();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `DeclareCursorStmt.options`: `CURSOR_OPT_HOLD`.
const CURSOR_OPT_HOLD: i64 = 0x0020;

/// What a top-level statement does to the session's names and settings.
fn effect(kind: &str, n: &Value) -> Effect {
    let text = |key: &str| n.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    match kind {
        "PrepareStmt" => Effect::Prepare(text("name")),
        "ExecuteStmt" => Effect::Execute(text("name")),
        "DeallocateStmt" => {
            let all = n.get("isall").and_then(Value::as_bool).unwrap_or(false);
            let name = text("name");
            if all || name.is_empty() {
                Effect::Deallocate(None)
            } else {
                Effect::Deallocate(Some(name))
            }
        }
        "DeclareCursorStmt" => Effect::Declare {
            name: text("portalname"),
            hold: n
                .get("options")
                .and_then(Value::as_i64)
                .is_some_and(|o| o & CURSOR_OPT_HOLD != 0),
        },
        "ClosePortalStmt" => {
            let name = text("portalname");
            Effect::Close((!name.is_empty()).then_some(name))
        }
        "FetchStmt" => Effect::Fetch(text("portalname")),
        "DiscardStmt" => Effect::Discard,
        "TransactionStmt" => {
            Effect::Transaction(match n.get("kind").and_then(Value::as_i64).unwrap_or(0) {
                1 | 2 => Transaction::Begin,
                3 => Transaction::Commit,
                4 => Transaction::Rollback,
                5 => Transaction::Savepoint,
                6 => Transaction::Release,
                7 => Transaction::RollbackTo,
                _ => Transaction::TwoPhase,
            })
        }
        "VariableSetStmt" => {
            // kind 1 = VAR_SET_VALUE; anything else (RESET, SET … TO
            // DEFAULT, SET … FROM CURRENT) has no value of its own.
            let value = (n.get("kind").and_then(Value::as_i64) == Some(1))
                .then(|| {
                    let args = n.get("args").and_then(Value::as_array)?;
                    let [one] = args.as_slice() else { return None };
                    one.pointer("/node/AConst/sval/sval")
                        .or_else(|| one.pointer("/node/AConst/val/Sval/sval"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .flatten();
            Effect::Set {
                name: text("name").to_lowercase(),
                value,
            }
        }
        _ => Effect::None,
    }
}

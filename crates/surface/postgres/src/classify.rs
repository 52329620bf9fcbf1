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

/// How privileged a class is, for "most privileged wins".
pub fn rank(class: ActionClass) -> u8 {
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
    /// It runs a prepared statement or portal (`EXECUTE`, `FETCH`) that may
    /// itself change them.
    pub runs_session_changes: bool,
    /// It names a prepared statement or portal anywhere (`EXECUTE`,
    /// `FETCH` or `MOVE`, also inside `EXPLAIN` or `CREATE TABLE … AS`):
    /// its class depends on the session, not on its text alone.
    pub uses_names: bool,
    /// Its class depends on a literal's value (`current_setting('…')`):
    /// one classification per shape would not hold for another value.
    pub reads_literals: bool,
    /// It may add or re-point code that statements resolve by name or
    /// type (functions, operators, casts, types, rules, triggers, …), which
    /// gavel learns of only by reading the catalog after it ran.
    pub creates_code: bool,
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
    /// `SHOW name`.
    Show(String),
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
    /// Running it may change the session's prepared statements, portals
    /// or settings (it is a `DEALLOCATE`, a `SET`, code gavel cannot see,
    /// …).
    pub changes_session: bool,
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
    /// What its `EXECUTE` and `FETCH` statements run, as the session holds
    /// it now: bound into an approval with the text, so approving `EXECUTE
    /// p` grants nothing once `p` is another statement.
    pub runs: Vec<String>,
}

impl Classification {
    /// Whether it resolves names of the session (`EXECUTE`, `FETCH`,
    /// `MOVE`): its class depends on more than its text.
    pub fn uses_names(&self) -> bool {
        self.statements.iter().any(|s| s.uses_names)
    }

    /// Whether its class depends on a literal's value.
    pub fn reads_literals(&self) -> bool {
        self.statements.iter().any(|s| s.reads_literals)
    }

    /// Whether it may create code gavel has not read yet (see
    /// [`StatementClass::creates_code`]).
    pub fn creates_code(&self) -> bool {
        self.statements.iter().any(|s| s.creates_code)
    }

    /// Whether it evaluates expressions (where code resolved by name or
    /// type runs).
    pub fn evaluates(&self) -> bool {
        self.statements
            .iter()
            .any(|s| EVALUATING.contains(&s.kind.as_str()))
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
                || s.runs_session_changes
        })
    }

    /// Whether running it may change the session's names or settings at
    /// all (for what runs it again: `EXECUTE`, `FETCH`, a protocol Execute).
    pub fn changes_session(&self) -> bool {
        self.may_change_statements() || self.may_change_portals() || self.may_change_settings()
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
                || s.runs_session_changes
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
                || s.runs_session_changes
        })
    }

    /// `SHOW gavel.…` alone: the name of gavel's own setting asked for
    /// (`gavel.names`: what gavel believes the session's prepared
    /// statements and portals are).
    pub fn gavel_show(&self) -> Option<&str> {
        match self.statements.as_slice() {
            [
                StatementClass {
                    effect: Effect::Show(name),
                    ..
                },
            ] if name.starts_with("gavel.") => Some(name),
            _ => None,
        }
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
    // What psql's describe commands and ORMs' introspection call.
    "array_remove",
    "getdatabaseencoding",
    "pg_char_to_encoding",
    "pg_collation_is_visible",
    "pg_conversion_is_visible",
    "pg_describe_object",
    "pg_encoding_to_char",
    "pg_function_is_visible",
    "pg_get_expr",
    "pg_get_function_arguments",
    "pg_get_function_result",
    "pg_get_function_sqlbody",
    "pg_get_functiondef",
    "pg_get_statisticsobjdef_columns",
    "pg_get_userbyid",
    "pg_has_role",
    "pg_opclass_is_visible",
    "pg_operator_is_visible",
    "pg_opfamily_is_visible",
    "pg_relation_is_publishable",
    "pg_statistics_obj_is_visible",
    "pg_table_is_visible",
    "pg_tablespace_location",
    "pg_ts_config_is_visible",
    "pg_ts_dict_is_visible",
    "pg_ts_parser_is_visible",
    "pg_ts_template_is_visible",
    "pg_type_is_visible",
    "shobj_description",
    "pg_get_serial_sequence",
    "pg_get_triggerdef",
    "pg_get_partkeydef",
    "pg_get_partition_constraintdef",
    "pg_index_column_has_property",
    "pg_get_keywords",
    "to_regclass",
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
        | "CreatePlangStmt" | "CreateTrigStmt" | "CreateEventTrigStmt" | "AlterEventTrigStmt"
        | "RuleStmt" | "CreateFdwStmt" | "AlterFdwStmt" | "CreateForeignServerStmt"
        | "AlterForeignServerStmt" | "CreateUserMappingStmt" | "AlterUserMappingStmt"
        | "DropUserMappingStmt" | "ImportForeignSchemaStmt" | "CreateForeignTableStmt"
        | "CreateSubscriptionStmt" | "AlterSubscriptionStmt" | "DropSubscriptionStmt"
        | "CreatePublicationStmt" | "AlterPublicationStmt" | "CreatedbStmt" | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt" | "AlterDatabaseRefreshCollStmt" | "DropdbStmt"
        | "CreateTableSpaceStmt" | "DropTableSpaceStmt" | "AlterTableSpaceOptionsStmt"
        | "CreateConversionStmt" | "CreateTransformStmt" | "CreateAmStmt"
        // A cast runs wherever its two types meet, in every session.
        | "CreateCastStmt" => SqlAdmin,
        "CreateStmt" | "AlterTableStmt" | "DropStmt" | "IndexStmt" | "ViewStmt" | "CreateSeqStmt"
        | "AlterSeqStmt" | "CreateSchemaStmt" | "RenameStmt" | "CommentStmt" | "CreateTableAsStmt"
        | "CompositeTypeStmt" | "CreateEnumStmt" | "AlterEnumStmt" | "CreateRangeStmt"
        | "CreateDomainStmt" | "AlterDomainStmt" | "DefineStmt" | "AlterObjectSchemaStmt"
        | "CreateOpClassStmt" | "CreateOpFamilyStmt" | "AlterOpFamilyStmt"
        | "CreateStatsStmt" | "AlterStatsStmt" | "AlterTypeStmt" | "AlterCollationStmt"
        | "AlterTableMoveAllStmt" | "AlterObjectDependsStmt" | "AlterOperatorStmt"
        | "AlterTsdictionaryStmt" | "AlterTsconfigurationStmt" | "AlterTableCmd" => SqlDdl,
        _ => return None,
    })
}

/// `ObjectType` values (libpg_query's protobuf) of relations.
const RELATION_OBJECTS: &[i64] = &[
    19, // OBJECT_FOREIGN_TABLE
    21, // OBJECT_INDEX
    24, // OBJECT_MATVIEW
    38, // OBJECT_SEQUENCE
    42, // OBJECT_TABLE
    52, // OBJECT_VIEW
];
const OBJECT_COLUMN: i64 = 7;
/// `SubLinkType::AnySublink` (`x IN (SELECT …)`, `x op ANY (SELECT …)`).
const SUBLINK_ANY: i64 = 3;

/// Statement kinds that evaluate expressions, where an implicit cast can
/// run.
const EVALUATING: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "ExplainStmt",
    "DeclareCursorStmt",
    "CopyStmt",
    "CreateTableAsStmt",
    "PrepareStmt",
    "ExecuteStmt",
    "FetchStmt",
];
const OBJECT_SCHEMA: i64 = 37;

/// Statement kinds that may add or re-point code other statements resolve
/// by name or type: what follows them in the same string or pipeline is
/// judged before gavel can read what they did.
const CREATES_CODE: &[&str] = &[
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "CreateCastStmt",
    "DefineStmt",
    "CreateOpClassStmt",
    "CreateOpFamilyStmt",
    "AlterOpFamilyStmt",
    "AlterOperatorStmt",
    "CreateDomainStmt",
    "AlterDomainStmt",
    "CreateRangeStmt",
    "AlterTypeStmt",
    "RenameStmt",
    "AlterObjectSchemaStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "CreateTransformStmt",
    "CreateConversionStmt",
    "CreatePlangStmt",
    "CreateTrigStmt",
    "RuleStmt",
    "CreatePolicyStmt",
    "AlterPolicyStmt",
    "DoStmt",
    "CallStmt",
    "LoadStmt",
    "CreateAmStmt",
];

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

/// Settings whose values are server configuration an agent has no need
/// to read (paths to keys and configuration files, replication
/// connection strings with their passwords, commands the server runs):
/// `SHOW` of them, or `current_setting()` of them, is `sql.admin`.
const SENSITIVE_SETTINGS: &[&str] = &[
    "archive_command",
    "archive_library",
    "config_file",
    "data_directory",
    "dynamic_library_path",
    "external_pid_file",
    "hba_file",
    "ident_file",
    "krb_server_keyfile",
    "listen_addresses",
    "local_preload_libraries",
    "log_directory",
    "log_filename",
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "session_preload_libraries",
    "shared_preload_libraries",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_crl_dir",
    "ssl_crl_file",
    "ssl_dh_params_file",
    "ssl_key_file",
    "ssl_passphrase_command",
    "unix_socket_directories",
    "unix_socket_group",
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
    "regoperator",
    "regoper",
    "regconfig",
    "regdictionary",
    "regcollation",
    "pg_lsn",
    "xid",
    "xid8",
    "cid",
    "tid",
    "jsonpath",
    "int2vector",
    "oidvector",
    "aclitem",
    "pg_node_tree",
    "txid_snapshot",
    "pg_snapshot",
    "int4multirange",
    "int8multirange",
    "nummultirange",
    "tsmultirange",
    "tstzmultirange",
    "datemultirange",
];

/// pg_catalog relations a read may touch: ordinary metadata every role can
/// read (what psql's `\\d` commands and ORMs' introspection query). Any
/// other pg_catalog relation (credentials, other sessions, server
/// configuration and internals, raw statistics) is `sql.admin`.
const PG_CATALOG_READ_ALLOW: &[&str] = &[
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_cursors",
    "pg_database",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_group",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject_metadata",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policies",
    "pg_policy",
    "pg_prepared_statements",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_publication_tables",
    "pg_range",
    "pg_rewrite",
    "pg_roles",
    "pg_rules",
    "pg_seclabel",
    "pg_seclabels",
    "pg_sequence",
    "pg_sequences",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shseclabel",
    "pg_stat_all_indexes",
    "pg_stat_all_tables",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_sys_indexes",
    "pg_stat_sys_tables",
    "pg_stat_user_functions",
    "pg_stat_user_indexes",
    "pg_stat_user_tables",
    "pg_stat_xact_all_tables",
    "pg_stat_xact_sys_tables",
    "pg_stat_xact_user_functions",
    "pg_stat_xact_user_tables",
    "pg_statio_all_indexes",
    "pg_statio_all_sequences",
    "pg_statio_all_tables",
    "pg_statio_sys_indexes",
    "pg_statio_sys_sequences",
    "pg_statio_sys_tables",
    "pg_statio_user_indexes",
    "pg_statio_user_sequences",
    "pg_statio_user_tables",
    "pg_statistic_ext",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user",
    "pg_views",
];

/// information_schema views a read may touch (all filtered by the
/// reader's privileges). Any other (`user_mappings`, the `_pg_*` helpers)
/// is `sql.admin`.
const INFORMATION_SCHEMA_READ_ALLOW: &[&str] = &[
    "administrable_role_authorizations",
    "applicable_roles",
    "attributes",
    "character_sets",
    "check_constraint_routine_usage",
    "check_constraints",
    "collation_character_set_applicability",
    "collations",
    "column_column_usage",
    "column_domain_usage",
    "column_options",
    "column_privileges",
    "column_udt_usage",
    "columns",
    "constraint_column_usage",
    "constraint_table_usage",
    "data_type_privileges",
    "domain_constraints",
    "domain_udt_usage",
    "domains",
    "element_types",
    "enabled_roles",
    "foreign_data_wrapper_options",
    "foreign_data_wrappers",
    "foreign_server_options",
    "foreign_servers",
    "foreign_table_options",
    "foreign_tables",
    "information_schema_catalog_name",
    "key_column_usage",
    "parameters",
    "referential_constraints",
    "role_column_grants",
    "role_routine_grants",
    "role_table_grants",
    "role_udt_grants",
    "role_usage_grants",
    "routine_column_usage",
    "routine_privileges",
    "routine_routine_usage",
    "routine_sequence_usage",
    "routine_table_usage",
    "routines",
    "schemata",
    "sequences",
    "sql_features",
    "sql_implementation_info",
    "sql_parts",
    "sql_sizing",
    "table_constraints",
    "table_privileges",
    "tables",
    "transforms",
    "triggered_update_columns",
    "triggers",
    "udt_privileges",
    "usage_privileges",
    "user_defined_types",
    "view_column_usage",
    "view_routine_usage",
    "view_table_usage",
    "views",
];

/// Whether a relation is a system catalog a read may not touch: in
/// pg_catalog (or unqualified and named `pg_…`: pg_catalog comes first in
/// every search path) and not allow-listed, in information_schema and not
/// allow-listed, or TOAST.
fn forbidden_catalog(schema: &str, name: &str) -> bool {
    match schema {
        "pg_catalog" => !PG_CATALOG_READ_ALLOW.contains(&name),
        "" => name.starts_with("pg_") && !PG_CATALOG_READ_ALLOW.contains(&name),
        "information_schema" => !INFORMATION_SCHEMA_READ_ALLOW.contains(&name),
        s => s == "pg_toast" || s.starts_with("pg_toast_temp_"),
    }
}

/// Table-sampling methods PostgreSQL ships (and its contrib modules').
const BUILTIN_SAMPLING: &[&str] = &["system", "bernoulli", "system_rows", "system_time"];

/// pg_catalog functions that are volatile and callable with one argument,
/// so reachable in column notation (`(x).nextval`, `('.').pg_ls_dir`)
/// where no call is written. Used until the server's own list is read
/// ([`Classifier::set_catalog`]).
const VOLATILE_ONE_ARG: &[&str] = &[
    "amvalidate",
    "brin_summarize_new_values",
    "currval",
    "gin_clean_pending_list",
    "lo_close",
    "lo_creat",
    "lo_create",
    "lo_get",
    "lo_import",
    "lo_tell",
    "lo_tell64",
    "lo_unlink",
    "nextval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_blocking_pids",
    "pg_cancel_backend",
    "pg_collation_actual_version",
    "pg_create_physical_replication_slot",
    "pg_create_restore_point",
    "pg_current_logfile",
    "pg_database_collation_actual_version",
    "pg_database_size",
    "pg_drop_replication_slot",
    "pg_get_multixact_members",
    "pg_import_system_collations",
    "pg_indexes_size",
    "pg_log_backend_memory_contexts",
    "pg_ls_dir",
    "pg_ls_replslotdir",
    "pg_ls_tmpdir",
    "pg_partition_ancestors",
    "pg_partition_tree",
    "pg_promote",
    "pg_read_binary_file",
    "pg_read_file",
    "pg_relation_size",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_origin_session_progress",
    "pg_replication_origin_session_setup",
    "pg_safe_snapshot_blocking_pids",
    "pg_sequence_last_value",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_stat_file",
    "pg_stat_reset_replication_slot",
    "pg_stat_reset_shared",
    "pg_stat_reset_single_function_counters",
    "pg_stat_reset_single_table_counters",
    "pg_stat_reset_slru",
    "pg_stat_reset_subscription_stats",
    "pg_table_size",
    "pg_tablespace_size",
    "pg_terminate_backend",
    "pg_total_relation_size",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_xact_commit_timestamp",
    "pg_xact_commit_timestamp_origin",
    "pg_xact_status",
    "plpgsql_validator",
    "setseed",
    "ts_stat",
    "txid_status",
];

/// What the server's catalog says about names that column notation can
/// turn into function calls: `x.f` calls `f(x)` when `x` has no column
/// `f`, and `(expr).f` calls `f(expr)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// gavel could not read the server's catalog: any user object may
    /// exist, so nothing that evaluates expressions is a plain read.
    pub unavailable: bool,
    /// Functions outside pg_catalog and information_schema callable with
    /// one argument (any volatility): user code.
    pub user_functions: HashSet<String>,
    /// pg_catalog functions callable with one argument that are volatile.
    pub volatile_builtins: HashSet<String>,
    /// Every function name defined outside pg_catalog and
    /// information_schema, but by an extension: an unqualified call of a
    /// built-in name may resolve to one of them (`lower(5)` to a user's
    /// `public.lower(int)`). (Extensions are installed by an approved
    /// `CREATE EXTENSION`; their functions are judged by name as built-ins
    /// are.)
    pub user_function_names: HashSet<String>,
    /// Every operator name defined outside pg_catalog and
    /// information_schema, but by an extension (`public.+(text, text)`).
    pub user_operators: HashSet<String>,
    /// Casts created after initdb, but by an extension (`int4 AS point`):
    /// an implicit one runs where no cast is written, so while any exists
    /// no query is a plain read.
    pub user_casts: std::collections::BTreeSet<String>,
}

impl Catalog {
    /// This catalog and `other` together (a session's own, uncommitted
    /// objects over the committed ones).
    pub fn merged(&self, other: &Catalog) -> Catalog {
        let mut out = self.clone();
        out.user_functions
            .extend(other.user_functions.iter().cloned());
        out.volatile_builtins
            .extend(other.volatile_builtins.iter().cloned());
        out.user_function_names
            .extend(other.user_function_names.iter().cloned());
        out.user_operators
            .extend(other.user_operators.iter().cloned());
        out.user_casts.extend(other.user_casts.iter().cloned());
        out.unavailable |= other.unavailable;
        out
    }

    /// What the classifier knows when the server's catalog cannot be read.
    pub fn unavailable() -> Catalog {
        Catalog {
            unavailable: true,
            ..Catalog::default()
        }
    }
}

impl Catalog {
    /// Adds one row of [`CATALOG_SQL`].
    pub fn add(&mut self, name: &str, kind: &str) {
        let set = match kind {
            "user" => &mut self.user_functions,
            "builtin" => &mut self.volatile_builtins,
            "user_function" => &mut self.user_function_names,
            "user_operator" => &mut self.user_operators,
            "user_cast" => {
                self.user_casts.insert(name.to_owned());
                return;
            }
            _ => return,
        };
        set.insert(name.to_owned());
    }
}

/// The query that reads a [`Catalog`] on gavel's own connection: rows
/// `(name, kind)`, kind `user` or `builtin` (callable in column notation),
/// `user_function` or `user_operator` (any defined outside the system
/// schemas).
pub const CATALOG_SQL: &str = "SELECT DISTINCT p.proname::text, CASE WHEN n.nspname IN ('pg_catalog', 'information_schema') THEN 'builtin' ELSE 'user' END \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.prokind <> 'p' AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 \
     AND (n.nspname NOT IN ('pg_catalog', 'information_schema') OR p.provolatile = 'v') \
     UNION SELECT DISTINCT p.proname::text, 'user_function' \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e') \
     UNION SELECT DISTINCT o.oprname::text, 'user_operator' \
     FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.objid = o.oid AND d.deptype = 'e') \
     UNION SELECT c.castsource::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.||) ' AS ' \
       OPERATOR(pg_catalog.||) c.casttarget::pg_catalog.regtype::pg_catalog.text, 'user_cast' \
     FROM pg_catalog.pg_cast c WHERE c.oid >= 16384 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
       WHERE d.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'e')";

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
    /// The read-only names the operator configured: trusted even where a
    /// user function shares the name.
    configured_read_only: HashSet<String>,
    /// What the server's catalog says column notation can call; shared by
    /// every clone, replaced whole.
    catalog: Arc<std::sync::RwLock<Arc<Catalog>>>,
    /// Counts catalog changes: a classification cached under an older
    /// catalog is never used again.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(&[], &[])
    }
}

struct Walk<'a> {
    classifier: &'a Classifier,
    /// What the server's catalog says (the session's own, uncommitted
    /// objects included when it has any).
    catalog: &'a Catalog,
    names: &'a Staged<'a>,
    class: ActionClass,
    reason: String,
    tables: BTreeSet<String>,
    /// It runs a prepared statement or portal that may change the session.
    runs_session_changes: bool,
    /// The texts of the prepared statements and portals it runs.
    runs: Vec<String>,
    /// It resolved a name of the session's (anywhere in the tree).
    uses_names: bool,
    /// Its class came from a literal's value.
    reads_literals: bool,
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
                    if forbidden_catalog(schema, name) {
                        self.raise(ActionClass::SqlAdmin, || {
                            format!("{name} is a system catalog outside what a read may touch (credentials, other sessions, server configuration or internals)")
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
                // A TypeName wherever it is (TypeCast, XMLSERIALIZE, XMLTABLE
                // and JSON_TABLE columns, RETURNING, column definitions,
                // PREPARE's argument types, …): only TypeName has these.
                if map.contains_key("pct_type")
                    && map.contains_key("names")
                    && map.contains_key("array_bounds")
                {
                    let ty = names(map.get("names"));
                    if !ty.is_empty() && !builtin(&ty, BUILTIN_TYPES) {
                        self.raise(ActionClass::SqlUnknown, || {
                            format!(
                                "type {} is not a built-in: a domain's CHECK or a type's functions may run",
                                ty.join(".")
                            )
                        });
                    }
                }
                // A collation wherever it is (COLLATE, column definitions).
                if let Some(collation) = map.get("collname").filter(|c| c.is_array()) {
                    let c = names(Some(collation));
                    if c.len() > 1 && c[0] != "pg_catalog" {
                        self.raise(ActionClass::SqlUnknown, || {
                            format!("collation {} is not a built-in", c.join("."))
                        });
                    }
                }
                for (key, child) in map {
                    self.node(key, child);
                    match (key.as_str(), child) {
                        // A signature's types are recorded, not evaluated,
                        // when a function is created: a call of it is
                        // judged where it is made.
                        ("FunctionParameter", _) => {
                            if let Some(default) = child.get("defexpr") {
                                self.visit(default);
                            }
                        }
                        ("CreateFunctionStmt", Value::Object(fields)) => fields
                            .iter()
                            .filter(|(k, _)| *k != "returnType")
                            .for_each(|(_, v)| self.visit(v)),
                        _ => self.visit(child),
                    }
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
            "VariableShowStmt" => {
                let name = n
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_lowercase();
                if name == "all" {
                    self.raise(ActionClass::SqlAdmin, || {
                        "SHOW ALL lists the server's whole configuration, as pg_settings does"
                            .into()
                    });
                } else if SENSITIVE_SETTINGS.contains(&name.as_str()) {
                    self.raise(ActionClass::SqlAdmin, || {
                        format!("{name} is server configuration an agent has no need to read")
                    });
                }
            }
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
            // Every place an operator is named: expressions, `op ANY/ALL
            // (SELECT …)`, `ORDER BY … USING op`.
            "AExpr" => self.operator(n.get("name")),
            "SubLink" => {
                self.operator(n.get("oper_name"));
                // `x IN (SELECT …)` compares with `=`, looked up by name.
                if n.get("sub_link_type").and_then(Value::as_i64) == Some(SUBLINK_ANY)
                    && names(n.get("oper_name")).is_empty()
                {
                    self.implicit_operator("=");
                }
            }
            // `CASE x WHEN y`, `JOIN … USING` and `NATURAL JOIN` compare
            // with `=`, looked up by name like a written one.
            "CaseExpr" if n.get("arg").is_some_and(|a| !a.is_null()) => self.implicit_operator("="),
            "JoinExpr"
                if n.get("is_natural").and_then(Value::as_bool) == Some(true)
                    || n.get("using_clause")
                        .and_then(Value::as_array)
                        .is_some_and(|u| !u.is_empty()) =>
            {
                self.implicit_operator("=")
            }
            "SortBy" => self.operator(n.get("use_op")),
            // Column notation: `x.f` calls `f(x)` when `x` has no column `f`.
            "ColumnRef" => {
                if let Some(fields) = n
                    .get("fields")
                    .and_then(Value::as_array)
                    .filter(|f| (2..=4).contains(&f.len()))
                    && let Some(name) = fields
                        .last()
                        .and_then(|l| l.pointer("/node/String/sval"))
                        .and_then(Value::as_str)
                {
                    self.column_notation(name);
                }
            }
            // `(expr).f` calls any one-argument `f(expr)`.
            "AIndirection" => {
                for item in n
                    .get("indirection")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(name) = item.pointer("/node/String/sval").and_then(Value::as_str) {
                        self.column_notation(name);
                    }
                }
            }
            "RangeTableSample" => {
                let method = names(n.get("method"));
                if !builtin(&method, BUILTIN_SAMPLING) {
                    self.raise(ActionClass::SqlUnknown, || {
                        format!("sampling method {} is not a built-in", method.join("."))
                    });
                }
            }
            "DropStmt" => {
                // DROP names its relations as lists of strings, not
                // RangeVars; a schema stands for all its tables
                // (`schema.*`).
                let kind = n.get("remove_type").and_then(Value::as_i64).unwrap_or(0);
                for object in n
                    .get("objects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let parts = names(object.pointer("/node/List/items"));
                    let single = object
                        .pointer("/node/String/sval")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    match (kind, single) {
                        (OBJECT_SCHEMA, Some(schema)) => {
                            self.tables.insert(format!("{schema}.*"));
                        }
                        (k, _) if RELATION_OBJECTS.contains(&k) && !parts.is_empty() => {
                            self.tables.insert(parts.join("."));
                        }
                        _ => {}
                    }
                }
            }
            "CommentStmt" | "SecLabelStmt" => {
                let kind = n.get("objtype").and_then(Value::as_i64).unwrap_or(0);
                let parts = names(n.pointer("/object/node/List/items"));
                if RELATION_OBJECTS.contains(&kind) && !parts.is_empty() {
                    self.tables.insert(parts.join("."));
                } else if kind == OBJECT_COLUMN && parts.len() >= 2 {
                    self.tables.insert(parts[..parts.len() - 1].join("."));
                }
            }
            "ExecuteStmt" => {
                self.uses_names = true;
                let name = n.get("name").and_then(Value::as_str).unwrap_or("");
                let resolved = self.names.statement(name);
                self.runs_session_changes |= resolved.as_ref().is_none_or(|r| r.changes_session);
                match resolved {
                    Some(r) => {
                        self.tables.extend(r.tables.iter().cloned());
                        self.runs.push(r.text.to_string());
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
                self.uses_names = true;
                let name = n.get("portalname").and_then(Value::as_str).unwrap_or("");
                let resolved = self.names.portal(name);
                self.runs_session_changes |= resolved.as_ref().is_none_or(|r| r.changes_session);
                match resolved {
                    Some(r) => {
                        self.tables.extend(r.tables.iter().cloned());
                        self.runs.push(r.text.to_string());
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

    fn operator(&mut self, name: Option<&Value>) {
        let op = names(name);
        // BETWEEN is no operator of its own: PostgreSQL looks up `>=` and
        // `<=` (`<` and `>` for NOT BETWEEN) by name, like written ones.
        match op.as_slice() {
            [b] if b == "BETWEEN" || b == "BETWEEN SYMMETRIC" => {
                self.implicit_operator(">=");
                self.implicit_operator("<=");
            }
            [b] if b == "NOT BETWEEN" || b == "NOT BETWEEN SYMMETRIC" => {
                self.implicit_operator("<");
                self.implicit_operator(">");
            }
            _ => {}
        }
        if !op.is_empty() && !builtin(&op, BUILTIN_OPERATORS) {
            self.raise(ActionClass::SqlUnknown, || {
                format!("operator {} is not a built-in", op.join("."))
            });
        } else if let [unqualified] = op.as_slice()
            && self.catalog.user_operators.contains(unqualified)
        {
            self.raise(ActionClass::SqlUnknown, || {
                format!(
                    "operator {unqualified} may resolve to a user-defined operator of that name"
                )
            });
        }
    }

    /// An operator the statement uses without naming it.
    fn implicit_operator(&mut self, op: &str) {
        if self.catalog.user_operators.contains(op) {
            self.raise(ActionClass::SqlUnknown, || {
                format!("an implicit {op} may resolve to a user-defined operator of that name")
            });
        }
    }

    /// A name column notation may turn into a call: judged as the call
    /// when the server has such a function.
    fn column_notation(&mut self, name: &str) {
        let catalog = self.catalog;
        if catalog.user_functions.contains(name) {
            self.raise(ActionClass::SqlUnknown, || {
                format!("{name} may call the user function {name}() in column notation")
            });
        } else if catalog.volatile_builtins.contains(name) || VOLATILE_ONE_ARG.contains(&name) {
            match self.classifier.side_effects.get(name) {
                Some(class) => self.raise(*class, || {
                    format!("{name} calls {name}() in column notation, which has side effects")
                }),
                None => self.raise(ActionClass::SqlUnknown, || {
                    format!("{name} may call the volatile function {name}() in column notation")
                }),
            }
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
        if parts.last().is_some_and(|f| f == "current_setting")
            && matches!(parts.as_slice(), [_] | [_, _])
            && (parts.len() == 1 || parts[0] == "pg_catalog")
        {
            let setting = n
                .pointer("/args/0/node/AConst/val/Sval/sval")
                .and_then(Value::as_str)
                .map(str::to_lowercase);
            self.reads_literals = true;
            match setting {
                Some(s) if SENSITIVE_SETTINGS.contains(&s.as_str()) => self
                    .raise(ActionClass::SqlAdmin, || {
                        format!("{s} is server configuration an agent has no need to read")
                    }),
                Some(_) => {}
                None => self.raise(ActionClass::SqlUnknown, || {
                    "current_setting() of a setting named at run time".into()
                }),
            }
        }
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
        // An unqualified built-in name resolves across the search path: a
        // user's function of that name (another argument type) may be the
        // one called. Only a name the operator configured is trusted then.
        let shadowed = schema.is_empty()
            && self.catalog.user_function_names.contains(name.as_str())
            && !self.classifier.configured_read_only.contains(name.as_str());
        if let Some(class) = self.classifier.side_effects.get(name.as_str()) {
            self.raise(*class, || format!("{qualified}() has side effects"));
        } else if !read_only {
            self.raise(ActionClass::SqlUnknown, || {
                format!("{qualified}() is not known to be read-only")
            });
        } else if shadowed {
            self.raise(ActionClass::SqlUnknown, || {
                format!("{qualified}() may call a user-defined function of the same name")
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
        let configured: HashSet<String> = read_only.iter().map(|n| n.to_lowercase()).collect();
        ro.extend(configured.iter().cloned());
        Classifier {
            side_effects: se,
            read_only: ro,
            configured_read_only: configured,
            catalog: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// Changes whenever what the classifier knows of the server's
    /// functions changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces what the classifier knows of the server's functions.
    /// Returns whether it changed.
    pub fn set_catalog(&self, catalog: Catalog) -> bool {
        let mut slot = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let changed = **slot != catalog;
        *slot = Arc::new(catalog);
        if changed {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        changed
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Classifies `sql`. `names` resolves the session's prepared
    /// statements and portals (for `EXECUTE`, `FETCH` and `MOVE`), seen
    /// through what the string itself prepares and declares before them;
    /// a name nobody vouches for fails closed.
    pub fn classify(&self, sql: &str, names: &dyn Names) -> Classification {
        self.classify_with(sql, names, None)
    }

    /// As [`Classifier::classify`], with `own` objects of the session's
    /// that the server's catalog as gavel read it cannot show yet
    /// (created in its open transaction).
    pub fn classify_with(
        &self,
        sql: &str,
        names: &dyn Names,
        own: Option<&Catalog>,
    ) -> Classification {
        let committed = self.catalog();
        let merged;
        let catalog: &Catalog = match own {
            Some(own) => {
                merged = committed.merged(own);
                &merged
            }
            None => &committed,
        };
        let intent = comment_intent(sql);
        let unknown = |reason: String| Classification {
            class: ActionClass::SqlUnknown,
            statements: Vec::new(),
            tables: Vec::new(),
            reason,
            intent: intent.clone(),
            runs: Vec::new(),
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
        let mut runs = Vec::new();
        let mut code_created_by: Option<String> = None;
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
                catalog,
                names: &staged,
                class: ActionClass::SqlRead,
                reason: kind.clone(),
                tables: BTreeSet::new(),
                runs_session_changes: false,
                runs: Vec::new(),
                uses_names: false,
                reads_literals: false,
            };
            walk.visit(&tree);
            let evaluates = EVALUATING.contains(&kind.as_str());
            if evaluates && catalog.unavailable {
                walk.raise(ActionClass::SqlUnknown, || {
                    "gavel cannot read the server's catalog now: user functions, operators and casts may run anywhere".into()
                });
            }
            if let Some(earlier) = code_created_by.as_deref().filter(|_| evaluates) {
                walk.raise(ActionClass::SqlUnknown, || {
                    format!(
                        "an earlier statement of this string ({earlier}) may create code gavel has not read yet; send what follows it on its own"
                    )
                });
            }
            if !catalog.user_casts.is_empty() && evaluates {
                let casts: Vec<&str> = catalog.user_casts.iter().map(String::as_str).collect();
                walk.raise(ActionClass::SqlUnknown, || {
                    format!(
                        "user-defined casts ({}) may run wherever the types meet",
                        casts.join(", ")
                    )
                });
            }
            runs.extend(std::mem::take(&mut walk.runs));
            let uses_names = walk.uses_names;
            let reads_literals = walk.reads_literals;
            let creates_code =
                CREATES_CODE.contains(&kind.as_str()) || walk.class == ActionClass::SqlUnknown;
            if creates_code && code_created_by.is_none() {
                code_created_by = Some(kind.clone());
            }
            let (walk_class, walk_reason, walk_tables, runs_session_changes) = (
                walk.class,
                walk.reason,
                walk.tables,
                walk.runs_session_changes,
            );
            if rank(walk_class) > rank(class) {
                class = walk_class;
                reason = walk_reason.clone();
            }
            // What later statements of the same string see: a PREPARE or
            // DECLARE defines what its body runs.
            let whole = statement_text(sql, raw);
            let defined = || Resolved {
                class: walk_class,
                tables: walk_tables.iter().cloned().collect(),
                text: Arc::from(definition_body(whole).unwrap_or(whole)),
                // A body is a query or DML: it changes the session only
                // through code.
                changes_session: !matches!(
                    walk_class,
                    ActionClass::SqlRead | ActionClass::SqlWrite
                ) || runs_session_changes,
            };
            match &effect {
                Effect::Prepare(name) => {
                    staged.statements.insert(name.clone(), Some(defined()));
                }
                Effect::Deallocate(Some(name)) => {
                    staged.statements.insert(name.clone(), None);
                }
                Effect::Deallocate(None) => {
                    staged.statements.clear();
                    staged.statements_cleared = true;
                }
                Effect::Declare { name, .. } => {
                    staged.portals.insert(name.clone(), Some(defined()));
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
                runs_session_changes,
                uses_names,
                reads_literals,
                creates_code,
            });
        }
        Classification {
            class,
            statements,
            tables: tables.into_iter().collect(),
            reason,
            intent,
            runs,
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
        let catalog = self.catalog();
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
                catalog: &catalog,
                names: &staged,
                class: ActionClass::SqlRead,
                reason: kind.clone(),
                tables: BTreeSet::new(),
                runs_session_changes: false,
                runs: Vec::new(),
                uses_names: false,
                reads_literals: false,
            };
            walk.visit(&tree);
            if found
                .as_ref()
                .is_none_or(|f| rank(walk.class) > rank(f.class))
            {
                let whole = statement_text(source, raw);
                found = Some(Resolved {
                    class: walk.class,
                    tables: walk.tables.into_iter().collect(),
                    text: Arc::from(definition_body(whole).unwrap_or(whole)),
                    changes_session: !matches!(
                        walk.class,
                        ActionClass::SqlRead | ActionClass::SqlWrite
                    ) || walk.runs_session_changes,
                });
            }
        }
        found
    }
}

/// The statement a `PREPARE name … AS statement` or `DECLARE name … FOR
/// query` defines: what runs, and what policy judges as the operation of
/// an `Execute` of it. The body follows the first `AS` (`PREPARE`) or
/// `FOR` (`DECLARE`) token, as the scanner reads the text.
fn definition_body(definition: &str) -> Option<&str> {
    use pg_query::protobuf::Token;
    let tokens: Vec<_> = pg_query::scan(definition)
        .ok()?
        .tokens
        .into_iter()
        .filter(|t| t.token != Token::SqlComment as i32 && t.token != Token::CComment as i32)
        .collect();
    let first = tokens.first()?.token;
    let keyword = if first == pg_query::protobuf::Token::Prepare as i32 {
        pg_query::protobuf::Token::As as i32
    } else if first == pg_query::protobuf::Token::Declare as i32 {
        pg_query::protobuf::Token::For as i32
    } else {
        return None;
    };
    let at = tokens.iter().position(|t| t.token == keyword)?;
    let start = usize::try_from(tokens.get(at + 1)?.start).ok()?;
    definition.get(start..).map(str::trim)
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
        "VariableShowStmt" => Effect::Show(text("name").to_lowercase()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_s_body_is_what_runs() {
        assert_eq!(
            definition_body("PREPARE p (int, text) AS DELETE FROM t WHERE a = $1"),
            Some("DELETE FROM t WHERE a = $1")
        );
        assert_eq!(
            definition_body("/* x */ DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT 1 FOR UPDATE"),
            Some("SELECT 1 FOR UPDATE")
        );
        assert_eq!(definition_body("SELECT 1"), None);
        let c = Classifier::default();
        let r = c
            .prepared_in("DEALLOCATE r; PREPARE r AS DELETE FROM t", "r")
            .unwrap();
        assert_eq!(
            (r.class, &*r.text),
            (ActionClass::SqlWrite, "DELETE FROM t")
        );
    }
}

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
}

/// The verdict on a whole query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The most privileged class of any statement.
    pub class: ActionClass,
    /// Each statement in order.
    pub statements: Vec<StatementClass>,
    /// Tables and views named anywhere (`schema.name` when qualified).
    pub tables: Vec<String>,
    /// Why the string has its class.
    pub reason: String,
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
    prepared: &'a dyn Fn(&str) -> Option<ActionClass>,
    class: ActionClass,
    reason: String,
    tables: BTreeSet<String>,
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
                match (self.prepared)(name) {
                    Some(class) => {
                        self.raise(class, || format!("EXECUTE {name} runs a prepared {class}"))
                    }
                    None => self.raise(ActionClass::SqlUnknown, || {
                        format!("EXECUTE of unknown prepared statement {name:?}")
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

    /// Classifies `sql`. `prepared` resolves the class of a prepared
    /// statement by name (for `EXECUTE`); unknown names fail closed.
    pub fn classify(
        &self,
        sql: &str,
        prepared: &dyn Fn(&str) -> Option<ActionClass>,
    ) -> Classification {
        let unknown = |reason: String| Classification {
            class: ActionClass::SqlUnknown,
            statements: Vec::new(),
            tables: Vec::new(),
            reason,
        };
        let parsed = match pg_query::parse(sql, 0) {
            Ok(p) => p,
            Err(e) => return unknown(format!("PostgreSQL's parser rejects it: {e}")),
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
            let kind = tree
                .pointer("/stmt/node")
                .and_then(Value::as_object)
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_else(|| "empty".into());
            let mut walk = Walk {
                classifier: self,
                prepared,
                class: ActionClass::SqlRead,
                reason: kind.clone(),
                tables: BTreeSet::new(),
            };
            walk.visit(&tree);
            if rank(walk.class) > rank(class) {
                class = walk.class;
                reason = walk.reason.clone();
            }
            tables.extend(walk.tables);
            statements.push(StatementClass {
                class: walk.class,
                kind,
                reason: walk.reason,
            });
        }
        Classification {
            class,
            statements,
            tables: tables.into_iter().collect(),
            reason,
        }
    }
}

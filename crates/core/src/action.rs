use crate::principal::Principal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The class of an action: the Cedar action id policies are written against.
///
/// The names are a stable contract (SPEC §3): policies and audit records
/// refer to them by [`ActionClass::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionClass {
    /// A read-only SQL statement.
    SqlRead,
    /// INSERT, UPDATE, DELETE, MERGE.
    SqlWrite,
    /// Schema changes.
    SqlDdl,
    /// GRANT, REVOKE, roles.
    SqlDcl,
    /// Bulk data leaving the database.
    SqlExport,
    /// Server administration and side-effecting functions.
    SqlAdmin,
    /// Anything the classifier cannot prove harmless.
    SqlUnknown,
    /// An MCP tool call.
    McpCall,
    /// An MCP resource read.
    McpRead,
    /// A safe HTTP method.
    HttpRead,
    /// An unsafe HTTP method.
    HttpWrite,
    /// A shell command.
    ExecRun,
}

impl ActionClass {
    /// Every class, in declaration order.
    pub const ALL: [ActionClass; 12] = [
        ActionClass::SqlRead,
        ActionClass::SqlWrite,
        ActionClass::SqlDdl,
        ActionClass::SqlDcl,
        ActionClass::SqlExport,
        ActionClass::SqlAdmin,
        ActionClass::SqlUnknown,
        ActionClass::McpCall,
        ActionClass::McpRead,
        ActionClass::HttpRead,
        ActionClass::HttpWrite,
        ActionClass::ExecRun,
    ];

    /// Whether forwarding it changes nothing where it goes (`sql.read`,
    /// `mcp.read`, `http.read`): what it releases is data to the client.
    pub const fn is_read(self) -> bool {
        matches!(
            self,
            ActionClass::SqlRead | ActionClass::McpRead | ActionClass::HttpRead
        )
    }

    /// Whether it is one of the SQL classes.
    pub const fn is_sql(self) -> bool {
        matches!(
            self,
            ActionClass::SqlRead
                | ActionClass::SqlWrite
                | ActionClass::SqlDdl
                | ActionClass::SqlDcl
                | ActionClass::SqlExport
                | ActionClass::SqlAdmin
                | ActionClass::SqlUnknown
        )
    }

    /// The stable name, e.g. `sql.ddl`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ActionClass::SqlRead => "sql.read",
            ActionClass::SqlWrite => "sql.write",
            ActionClass::SqlDdl => "sql.ddl",
            ActionClass::SqlDcl => "sql.dcl",
            ActionClass::SqlExport => "sql.export",
            ActionClass::SqlAdmin => "sql.admin",
            ActionClass::SqlUnknown => "sql.unknown",
            ActionClass::McpCall => "mcp.call",
            ActionClass::McpRead => "mcp.read",
            ActionClass::HttpRead => "http.read",
            ActionClass::HttpWrite => "http.write",
            ActionClass::ExecRun => "exec.run",
        }
    }
}

impl fmt::Display for ActionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no action class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action class {0:?} (expected one of sql.read, sql.write, sql.ddl, sql.dcl, sql.export, sql.admin, sql.unknown, mcp.call, mcp.read, http.read, http.write, exec.run)"
)]
pub struct UnknownActionClass(pub String);

impl FromStr for ActionClass {
    type Err = UnknownActionClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ActionClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownActionClass(s.to_owned()))
    }
}

impl Serialize for ActionClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ActionClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Something gavel guards: a database, an MCP server, an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// The configured name, e.g. `prod-db`.
    pub name: String,
    /// What it is: `postgres`, `mysql`, `mcp`, `http`, `api`, …
    pub kind: String,
    /// The configuration's tags (Cedar entity tags).
    pub tags: BTreeMap<String, String>,
}

/// One client operation, as a surface describes it to the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Who asks.
    pub principal: Principal,
    /// What it touches.
    pub resource: Resource,
    /// Its class.
    pub class: ActionClass,
    /// The operation text as the surface normalized it (SQL statement, tool
    /// name, `METHOD path`, command line). Bound exactly into the
    /// fingerprint: literals are never normalized away.
    pub operation: String,
    /// Surface-specific facts the decision may depend on (tables, MCP
    /// arguments, bound parameters, …). A JSON object; part of the
    /// fingerprint.
    pub details: serde_json::Value,
    /// The initiator's stated reason (may be empty).
    pub intent: String,
    /// What reviewers see beside the operation: estimated row counts, the
    /// session's recent statements. Neither bound into the fingerprint (it
    /// changes between identical retries) nor seen by policy.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data_context: serde_json::Value,
    /// The session settings that change what the operation means where it
    /// runs (for SQL: `DateStyle`, `TimeZone`, `search_path`, …), read from
    /// the upstream when an approval is at stake. Bound into the
    /// fingerprint, shown to reviewers, not seen by policy: approving
    /// `… WHERE day < '03/04/2024'` under `DateStyle = MDY` grants nothing
    /// under `DMY`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// Which surface produced it (`api`, `postgres`, `mcp`, …). Bound into
    /// the fingerprint: a grant filed through one surface is not spent
    /// through another.
    pub surface: String,
    /// The client's network address, when known.
    pub source: Option<String>,
}

/// The surface whose initiators ask first and then perform the action
/// themselves (the REST API): gavel never forwards it, so what happened is
/// what the initiator reports.
pub const SURFACE_INITIATOR_ACTS: &str = "api";

impl Action {
    /// Whether the initiator performs the action itself (and reports how it
    /// went) rather than gavel forwarding it.
    pub fn initiator_acts(&self) -> bool {
        self.surface == SURFACE_INITIATOR_ACTS
    }
}

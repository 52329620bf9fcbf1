//! The session's prepared statements and portals, as the server holds
//! them.
//!
//! gavel judges an `Execute`, an `EXECUTE` or a `FETCH` by what the server
//! will run under that name, so these tables must never say something the
//! server does not hold. Three rules keep them so:
//! - **Names as the server keeps them.** The server keeps the first 63
//!   bytes of a protocol statement or portal name (NAMEDATALEN − 1); a
//!   longer name is refused before anything is forwarded
//!   ([`check_protocol_name`]), so two names gavel tells apart are never
//!   one name on the server.
//! - **Changes the server confirmed.** A Parse, Bind or Close changes the
//!   tables only when the server answers ParseComplete, BindComplete or
//!   CloseComplete; a simple Query drops the unnamed statement and portal,
//!   as the server does; a transaction's end drops the portals that do not
//!   outlive it.
//! - **The server's own word for the rest.** Whatever can change the
//!   tables without such a confirmation (SQL `PREPARE`, `DEALLOCATE`,
//!   `DECLARE`, `CLOSE`, `DISCARD`, `ROLLBACK`, and any statement that runs
//!   code gavel cannot see) marks them stale, and before the next judgement
//!   that depends on them the session reads `pg_prepared_statements` and
//!   `pg_cursors` on its own backend ([`Names::resync`]). While they are
//!   stale and cannot be read (an aborted transaction, an open pipeline), a
//!   name resolves to nothing, which classifies as `sql.unknown`.

use crate::classify::{self, Classifier, Resolved};
use crate::surface::Classified;
use gavel_core::ActionClass;
use std::collections::HashMap;
use std::sync::Arc;

/// The longest statement or portal name the server keeps whole, in bytes.
pub const MAX_NAME: usize = 63;

/// Why a protocol-level name is refused: the server would keep only its
/// first 63 bytes, so it could name another statement than the one gavel
/// judged.
pub fn check_protocol_name(what: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!(
            "{what} name of {} bytes refused: PostgreSQL keeps only the first {MAX_NAME} bytes of a name, so gavel accepts at most {MAX_NAME}",
            name.len()
        ));
    }
    Ok(())
}

/// A prepared statement as the server holds it.
#[derive(Debug)]
pub struct Prepared {
    /// What it runs: the text parsed, or the body of a SQL `PREPARE` /
    /// `DECLARE`. The operation of an `Execute` of it.
    pub text: Arc<str>,
    /// The text the server reports for it (`pg_prepared_statements`,
    /// `pg_cursors`): for SQL ones, the whole string that made it. `None`
    /// when it is the same as `text`.
    pub source: Option<Arc<str>>,
    /// What it runs.
    pub classified: Arc<Classified>,
    /// The intent of a leading `/* intent: … */` comment.
    pub intent: Option<String>,
    /// The parameter types Parse declared (OIDs; 0 lets the server infer
    /// one): part of what the statement means, so part of what an approval
    /// binds.
    pub param_types: Arc<Vec<u32>>,
}

/// The first OID PostgreSQL gives objects created after initdb: a type at
/// or above it is user-defined (its input function, or a domain's CHECK,
/// runs when a parameter is bound).
pub const FIRST_USER_OID: u32 = 16_384;

/// A portal as the server holds it.
#[derive(Debug, Clone)]
pub struct Portal {
    /// The statement it runs (`None`: gavel does not know it).
    pub statement: Option<Arc<Prepared>>,
    /// Its bound parameters (part of what an approval binds).
    pub params: Arc<Vec<serde_json::Value>>,
    /// Each parameter's format code (0 text, 1 binary).
    pub formats: Arc<Vec<i16>>,
    /// It outlives its transaction (`DECLARE … WITH HOLD`).
    pub holdable: bool,
}

/// One row of gavel's read of the server's tables: `('s', name, text,
/// from_sql)` from `pg_prepared_statements`, `('c', name, text,
/// is_holdable)` from `pg_cursors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    /// `s` or `c`.
    pub kind: String,
    /// The name.
    pub name: String,
    /// The text the server reports.
    pub text: String,
    /// `from_sql` or `is_holdable`.
    pub flag: bool,
}

/// The query that reads the server's tables. Schema-qualified, so no
/// `search_path` can substitute another relation.
pub const SERVER_NAMES_SQL: &str = "SELECT 's', name, statement, from_sql FROM pg_catalog.pg_prepared_statements \
     UNION ALL SELECT 'c', name, statement, is_holdable FROM pg_catalog.pg_cursors";

/// The session's statements and portals.
#[derive(Debug, Default)]
pub struct Names {
    /// Named and unnamed prepared statements.
    pub statements: HashMap<String, Arc<Prepared>>,
    /// Named and unnamed portals.
    pub portals: HashMap<String, Portal>,
    /// Something may have changed the statements without a confirmation.
    pub statements_stale: bool,
    /// Something may have changed the portals without a confirmation.
    pub portals_stale: bool,
}

impl Names {
    /// Whether `name` resolves to what the server holds now: not while the
    /// table is stale.
    pub fn statement(&self, name: &str) -> Option<&Arc<Prepared>> {
        if self.statements_stale && !name.is_empty() {
            return None;
        }
        self.statements.get(name)
    }

    /// As [`Names::statement`], for portals.
    pub fn portal(&self, name: &str) -> Option<&Portal> {
        if self.portals_stale && !name.is_empty() {
            return None;
        }
        self.portals.get(name)
    }

    /// A simple Query starts: the server drops its unnamed statement and
    /// portal.
    pub fn simple_query_sent(&mut self) {
        self.statements.remove("");
        self.portals.remove("");
    }

    /// The server is idle again (ReadyForQuery `I`): portals that do not
    /// outlive their transaction are gone.
    pub fn transaction_ended(&mut self) {
        self.portals.retain(|_, p| p.holdable);
    }

    /// Replaces the named entries with the server's `rows` (the unnamed
    /// statement and portal are not in the server's views; they change
    /// only by confirmed protocol messages and are kept). An entry whose
    /// name and text are unchanged keeps its classification.
    pub fn resync(
        &mut self,
        rows: &[ServerRow],
        classify: &dyn Fn(&str) -> Arc<Classified>,
        classifier: &Classifier,
    ) {
        let mut statements: HashMap<String, Arc<Prepared>> = HashMap::new();
        let mut portals: HashMap<String, Portal> = HashMap::new();
        if let Some(unnamed) = self.statements.get("") {
            statements.insert(String::new(), unnamed.clone());
        }
        if let Some(unnamed) = self.portals.get("") {
            portals.insert(String::new(), unnamed.clone());
        }
        for row in rows {
            match row.kind.as_str() {
                "s" => {
                    let kept = self
                        .statements
                        .get(&row.name)
                        .filter(|p| p.reported() == row.text)
                        .cloned();
                    let prepared = kept.unwrap_or_else(|| {
                        Arc::new(prepared_from_server(row, classify, classifier))
                    });
                    statements.insert(row.name.clone(), prepared);
                }
                "c" => {
                    let kept = self
                        .portals
                        .get(&row.name)
                        .filter(|p| {
                            p.statement
                                .as_ref()
                                .is_some_and(|s| s.reported() == row.text)
                        })
                        .cloned();
                    let portal = match kept {
                        Some(mut p) => {
                            p.holdable = row.flag;
                            p
                        }
                        None => Portal {
                            statement: Some(Arc::new(cursor_from_server(
                                row, classify, classifier,
                            ))),
                            params: Arc::new(Vec::new()),
                            formats: Arc::new(Vec::new()),
                            holdable: row.flag,
                        },
                    };
                    portals.insert(row.name.clone(), portal);
                }
                _ => {}
            }
        }
        self.statements = statements;
        self.portals = portals;
        self.statements_stale = false;
        self.portals_stale = false;
    }
}

fn from_resolved(row: &ServerRow, r: Option<Resolved>, what: &str) -> Prepared {
    let (class, tables, reason, text) = match r {
        Some(r) => (
            r.class,
            r.tables,
            format!("{what} {:?} as the server holds it", row.name),
            r.text,
        ),
        None => (
            ActionClass::SqlUnknown,
            Vec::new(),
            format!(
                "{what} {:?}: gavel cannot tell what the server holds",
                row.name
            ),
            Arc::from(row.text.as_str()),
        ),
    };
    Prepared {
        text,
        source: Some(Arc::from(row.text.as_str())),
        classified: Arc::new(Classified {
            class,
            tables,
            reason,
            kinds: Vec::new(),
            classes: vec![class],
            facts: None,
            generation: 0,
        }),
        intent: None,
        param_types: Arc::default(),
    }
}

/// A statement from `pg_prepared_statements`: a protocol-level one is its
/// own text; a SQL one is the `PREPARE` of that name in the string the
/// server reports.
fn prepared_from_server(
    row: &ServerRow,
    classify: &dyn Fn(&str) -> Arc<Classified>,
    classifier: &Classifier,
) -> Prepared {
    if row.flag {
        return from_resolved(
            row,
            classifier.prepared_in(&row.text, &row.name),
            "prepared statement",
        );
    }
    protocol_level(row, classify)
}

/// A protocol-level statement or portal from the server's tables: its
/// text is what it runs.
fn protocol_level(row: &ServerRow, classify: &dyn Fn(&str) -> Arc<Classified>) -> Prepared {
    Prepared {
        text: Arc::from(row.text.as_str()),
        source: None,
        intent: classify::comment_intent(&row.text),
        classified: classify(&row.text),
        param_types: Arc::default(),
    }
}

/// A portal from `pg_cursors`: a SQL cursor is the `DECLARE` of that name
/// in the string the server reports; a protocol-level portal is its
/// statement's text.
fn cursor_from_server(
    row: &ServerRow,
    classify: &dyn Fn(&str) -> Arc<Classified>,
    classifier: &Classifier,
) -> Prepared {
    if let Some(declared) = classifier.declared_in(&row.text, &row.name) {
        return from_resolved(row, Some(declared), "cursor");
    }
    protocol_level(row, classify)
}

impl Prepared {
    /// The text the server reports for it.
    pub fn reported(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_server_would_truncate_are_refused() {
        assert!(check_protocol_name("statement", &"a".repeat(63)).is_ok());
        assert!(check_protocol_name("statement", &"a".repeat(64)).is_err());
        // Bytes, not characters: 32 two-byte characters are 64 bytes.
        assert!(check_protocol_name("portal", &"é".repeat(32)).is_err());
        assert!(check_protocol_name("portal", &"é".repeat(31)).is_ok());
    }
}

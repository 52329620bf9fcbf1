//! The PostgreSQL surface against the machine's real PostgreSQL
//! (127.0.0.1:5432, database `test`), driven by clients gavel did not
//! write: psql, pgbench, tokio-postgres and Python's psycopg.

mod harness;

use harness::pg::*;
use harness::{ALICE, BOB};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PG_POLICIES: &str = r#"
@id("reads") permit(principal, action == Action::"sql.read", resource);
@id("writes") permit(principal, action == Action::"sql.write", resource)
when { !(context.operation like "*DELETE*") };
@id("deletes-need-a-dba") @approval("group:dba")
permit(principal, action == Action::"sql.write", resource)
when { context.operation like "*DELETE*" };
@id("ddl-needs-a-dba") @approval("group:dba") @timeout("5m")
permit(principal, action == Action::"sql.ddl", resource);
@id("exports") permit(principal, action == Action::"sql.export", resource);
@id("no-admin") forbid(principal, action == Action::"sql.admin", resource);
@id("no-unknown-sql") forbid(principal, action == Action::"sql.unknown", resource);
"#;

async fn start(hold: &str) -> Pg {
    Pg::start_policies(hold, PG_POLICIES, "").await
}

async fn start_with(hold: &str, listener: &str) -> Pg {
    Pg::start_policies(hold, PG_POLICIES, listener).await
}

fn request_id(stderr: &str) -> String {
    // The full id is in the approval page's address it gives.
    let at = stderr.find("/requests/").expect("links a request") + "/requests/".len();
    stderr[at..at + 36].to_owned()
}

#[tokio::test]
async fn psql_reads_and_writes_pass_and_privileged_statements_do_not() {
    let pg = start("2s").await;
    let t = table("basic");
    admin(&format!("CREATE TABLE {t} (id int primary key, v text)"));

    let out = pg.psql(&["-c", &format!("INSERT INTO {t} VALUES (1, 'one')")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = pg.psql(&["-tA", "-c", &format!("SELECT v FROM {t} WHERE id = 1")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "one",
        "{}",
        text(&out)
    );

    // A side-effect function hidden in a read is sql.admin: forbidden.
    let out = pg.psql(&["-c", "SELECT 1 AS harmless, pg_reload_conf()"]);
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("denied by policy no-admin"), "{err}");

    // What PostgreSQL's grammar rejects is sql.unknown: fail closed.
    let out = pg.psql(&["-c", "SELEC 1"]);
    assert!(
        text(&out).contains("denied by policy no-unknown-sql"),
        "{}",
        text(&out)
    );

    // A multi-statement string is judged by its most privileged statement:
    // the DROP is held, times out, and nothing of the string runs.
    let started = Instant::now();
    let out = pg.psql(&["-c", &format!("SELECT 1; DELETE FROM {t}; DROP TABLE {t}")]);
    let err = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "held for approvals.hold"
    );
    assert!(err.contains("needs approval"), "{err}");
    let id = request_id(&String::from_utf8_lossy(&out.stderr));
    assert!(
        err.contains(&format!("{}/requests/{id}", pg.g.base)),
        "{err}"
    );
    assert_eq!(
        admin(&format!("SELECT count(*) FROM {t}")),
        "1",
        "nothing ran"
    );

    // The audit log holds the decisions and outcomes, command tags included.
    let records = pg.audit().await;
    let insert = format!("INSERT INTO {t} VALUES (1, 'one')");
    assert!(
        records.iter().any(|r| r["event"] == "decision"
            && r["decision"] == "allow"
            && r["operation"] == insert.as_str()
            && r["surface"] == "postgres"),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|r| r["event"] == "outcome"
            && r["operation"] == insert.as_str()
            && r["outcome"] == "succeeded: INSERT 0 1"),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "deny" && r["policies"][0] == "no-admin"),
        "{records:#?}"
    );
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn an_approved_statement_passes_once_for_the_same_agent() {
    let pg = start("1s").await;
    let t = table("grant");
    let ddl = format!("CREATE TABLE IF NOT EXISTS {t} (a int)");
    let out = pg.psql(&["-c", &ddl]);
    assert!(!out.status.success());
    let id = request_id(&String::from_utf8_lossy(&out.stderr));

    // The agent's owner (in the dba group) may not approve; alice may.
    let (status, _) = pg.g.approve(harness::OWNER, &id).await;
    assert_eq!(status, 403);
    let (status, body) = pg.g.approve(ALICE, &id).await;
    assert_eq!(status, 200, "{body}");

    // Another literal is not covered.
    let other = format!("CREATE TABLE IF NOT EXISTS {t}_other (a int)");
    assert!(!pg.psql(&["-c", &other]).status.success());

    let out = pg.psql(&["-c", &ddl]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        admin(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{t}'"
        )),
        "1"
    );
    let (_, r) = pg.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(r["state"], "executed", "{r}");

    // The grant is spent: the identical statement needs a new approval.
    let out = pg.psql(&["-c", &ddl]);
    assert!(!out.status.success());
    let again = request_id(&String::from_utf8_lossy(&out.stderr));
    assert_ne!(again, id);
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn a_statement_approved_while_held_runs_and_the_client_never_knows() {
    let pg = start("30s").await;
    let t = table("held");
    let ddl = format!("CREATE TABLE {t} (a int)");
    let conninfo = pg.conninfo();
    let token = pg.g.agent_token.clone();
    let ddl2 = ddl.clone();
    let client = std::thread::spawn(move || {
        Command::new("psql")
            .args(["-X", "-q", &conninfo, "-c", &ddl2])
            .env("PGPASSWORD", token)
            .output()
            .unwrap()
    });
    let r = pg.wait_for_pending(&ddl).await;
    let id = r["id"].as_str().unwrap().to_owned();
    let (status, body) = pg.g.approve(BOB, &id).await;
    assert_eq!(status, 200, "{body}");
    let out = client.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("waiting up to 30s for approval of request {id}")),
        "{}",
        text(&out)
    );
    assert_eq!(
        admin(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{t}'"
        )),
        "1"
    );
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn a_held_statement_inside_a_transaction_leaves_it_usable() {
    let pg = start("1s").await;
    let t = table("tx");
    admin(&format!("CREATE TABLE {t} (id int)"));
    let script = format!(
        "BEGIN;\nINSERT INTO {t} VALUES (1);\nCREATE TABLE {t}_new (a int);\nINSERT INTO {t} VALUES (2);\nCOMMIT;\n"
    );
    let out = pg.psql_with(&["-v", "ON_ERROR_STOP=0"], Some(&script));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("needs approval"), "{}", text(&out));
    assert!(
        !err.contains("current transaction is aborted"),
        "{}",
        text(&out)
    );
    assert_eq!(
        admin(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM {t}"
        )),
        "1,2"
    );
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn psql_copy_in_and_out_streams_through() {
    let pg = start("1s").await;
    let t = table("copy");
    admin(&format!("CREATE TABLE {t} (id int, v text)"));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let rows: String = (1..=5000)
        .map(|i| format!("{i},row number {i}\n"))
        .collect();
    std::fs::write(&input, &rows).unwrap();
    let out = pg.psql(&["-c", &format!("\\copy {t} from '{}' csv", input.display())]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(admin(&format!("SELECT count(*) FROM {t}")), "5000");
    let output = dir.path().join("out.csv");
    let out = pg.psql(&[
        "-c",
        &format!(
            "\\copy (SELECT * FROM {t} ORDER BY id) to '{}' csv",
            output.display()
        ),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), rows);
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn cancel_from_psql_releases_a_held_statement() {
    let pg = start("60s").await;
    let t = table("cancel");
    let ddl = format!("CREATE TABLE {t} (a int)");
    let mut child = Command::new("psql")
        .args(["-X", "-q", &pg.conninfo(), "-c", &ddl])
        .env("PGPASSWORD", &pg.g.agent_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let r = pg.wait_for_pending(&ddl).await;
    // psql's stderr, read as it comes: the hold's NOTICE says the
    // statement is waiting (and listening for a cancel).
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let stderr = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                stderr
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stderr.lock().unwrap().contains("waiting up to") {
        assert!(
            Instant::now() < deadline,
            "no hold notice: {}",
            stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ctrl-C: psql sends a CancelRequest on a new connection.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();
    reader.join().unwrap();
    let err = stderr.lock().unwrap().clone();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hold ended early"
    );
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(err.contains(r["id"].as_str().unwrap()), "{err}");
    assert_eq!(
        admin(&format!(
            "SELECT count(*) FROM pg_tables WHERE tablename = '{t}'"
        )),
        "0"
    );
}

fn pgbench(args: &[&str], pg: Option<&Pg>) -> Output {
    let mut cmd = Command::new("pgbench");
    match pg {
        Some(pg) => cmd
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "bot"])
            .env("PGPASSWORD", &pg.g.agent_token),
        None => cmd.args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]),
    };
    cmd.args(args).arg("test").output().unwrap()
}

#[tokio::test]
async fn pgbench_runs_through_gavel_in_every_query_mode() {
    // pgbench's own tables, made directly (once) with a scale of 1.
    if admin("SELECT count(*) FROM pg_tables WHERE tablename = 'pgbench_branches'") == "0" {
        let out = pgbench(&["-i", "-q", "-s", "1"], None);
        assert!(out.status.success(), "{}", text(&out));
    }
    let pg = start("1s").await;
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(
            &["-n", "-S", "-T", "2", "-c", "4", "-j", "2", "-M", mode],
            Some(&pg),
        );
        let report = text(&out);
        assert!(out.status.success(), "{mode}: {report}");
        assert!(
            report.contains("number of failed transactions: 0"),
            "{mode}: {report}"
        );
    }
    // The TPC-B-like script: UPDATEs and an INSERT in BEGIN … END.
    let out = pgbench(&["-n", "-T", "2", "-c", "2", "-M", "prepared"], Some(&pg));
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
}

#[tokio::test]
async fn tokio_postgres_extended_protocol_pipelines_and_refusals() {
    let pg = start("1s").await;
    let t = table("ext");
    admin(&format!("CREATE TABLE {t} (id int, v text)"));
    let (client, connection) = tokio_postgres::connect(
        &format!("{} password={}", pg.conninfo(), pg.g.agent_token),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);

    let row = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let insert = client
        .prepare(&format!("INSERT INTO {t} VALUES ($1, $2)"))
        .await
        .unwrap();
    for i in 0..10i32 {
        client
            .execute(&insert, &[&i, &format!("v{i}")])
            .await
            .unwrap();
    }

    // Pipelined: three queries in flight at once, the middle one refused.
    let name: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&t];
    let count = format!("SELECT count(*) FROM {t}");
    let ok1 = client.query_one("SELECT count(*) FROM pg_class WHERE relname = $1", &name);
    let denied = client.query_one("SELECT pg_reload_conf()", &[]);
    let ok2 = client.query_one(&count, &[]);
    let (a, b, c) = tokio::join!(ok1, denied, ok2);
    assert_eq!(a.unwrap().get::<_, i64>(0), 1);
    let e = b.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e}"
    );
    assert!(
        e.as_db_error().unwrap().message().contains("no-admin"),
        "{e}"
    );
    assert_eq!(
        c.map_err(|e| format!("{e}\n{}", pg.g.log()))
            .unwrap()
            .get::<_, i64>(0),
        10
    );

    // A held statement inside a transaction: refused, the transaction lives.
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(&insert, &[&100i32, &"in tx"]).await.unwrap();
    let e = client
        .execute(&format!("CREATE TABLE {t}_x (a int)"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    client.execute(&insert, &[&101i32, &"in tx"]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        admin(&format!("SELECT count(*) FROM {t} WHERE v = 'in tx'")),
        "2"
    );

    // A DELETE needs approval; its bound parameters are part of what is
    // approved, and reviewers see the row estimate and recent statements.
    let e = client
        .execute(&format!("DELETE FROM {t} WHERE id < $1"), &[&5i32])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let id = request_id(e.as_db_error().unwrap().message());
    let (_, r) = pg.g.get(&format!("/api/v1/requests/{id}"), ALICE).await;
    assert_eq!(
        r["details"]["params"],
        serde_json::json!(["\\x00000005"]),
        "{r}"
    );
    pg.g.approve(ALICE, &id).await;
    let e = client
        .execute(&format!("DELETE FROM {t} WHERE id < $1"), &[&6i32])
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("needs approval"),
        "another parameter is another request"
    );
    let n = client
        .execute(&format!("DELETE FROM {t} WHERE id < $1"), &[&5i32])
        .await
        .unwrap();
    assert_eq!(n, 5);
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn reviewers_see_intent_row_estimates_and_recent_statements() {
    let pg = start("1s").await;
    let t = table("ctx");
    admin(&format!(
        "CREATE TABLE {t} AS SELECT g AS id FROM generate_series(1, 1000) g; ANALYZE {t}"
    ));
    let script = format!(
        "SET gavel.intent = 'purge the rows of the old import';\nSELECT count(*) FROM {t};\nDELETE FROM {t} WHERE id > 100;\n/* intent: one-off cleanup */ DELETE FROM {t} WHERE id > 900;\n"
    );
    let out = pg.psql_with(&["-v", "ON_ERROR_STOP=0"], Some(&script));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.matches("needs approval").count(), 2, "{}", text(&out));
    let requests = pg.pending().await;
    let find = |needle: &str| {
        requests
            .iter()
            .find(|r| r["operation"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {requests:#?}"))
            .clone()
    };
    let first = find("id > 100");
    assert_eq!(first["intent"], "purge the rows of the old import");
    let estimate = first["data_context"]["estimated_rows"].as_u64().unwrap();
    assert!((800..=1000).contains(&estimate), "{first:#}");
    let recent = first["data_context"]["recent_statements"]
        .as_array()
        .unwrap();
    assert!(
        recent.iter().any(|s| s
            .as_str()
            .unwrap()
            .contains(&format!("SELECT count(*) FROM {t}"))),
        "{first:#}"
    );
    let second = find("id > 900");
    assert_eq!(second["intent"], "one-off cleanup");
    assert_eq!(
        admin(&format!("SELECT count(*) FROM {t}")),
        "1000",
        "EXPLAIN never executes"
    );
    // The intent was never sent to the server.
    admin(&format!("DROP TABLE {t}"));
}

#[tokio::test]
async fn psycopg_works_through_gavel() {
    let pg = start("1s").await;
    let t = table("psycopg");
    admin(&format!("CREATE TABLE {t} (id int, v text)"));
    let script = format!(
        r#"
import psycopg, sys
with psycopg.connect("{conninfo} password={token}") as conn:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO {t} VALUES (%s, %s)", (1, "it's"))
        cur.executemany("INSERT INTO {t} VALUES (%s, %s)", [(i, f"v{{i}}") for i in range(2, 6)])
        conn.commit()
        cur.execute("SELECT v FROM {t} WHERE id = %s", (1,))
        assert cur.fetchone()[0] == "it's"
        with conn.cursor(name="server_side") as named:
            named.execute("SELECT id FROM {t} ORDER BY id")
            assert [r[0] for r in named.fetchall()] == [1, 2, 3, 4, 5]
        conn.commit()
        try:
            cur.execute("SELECT pg_reload_conf()")
            sys.exit("pg_reload_conf passed")
        except psycopg.errors.InsufficientPrivilege as e:
            assert "no-admin" in str(e), str(e)
        conn.rollback()
        cur.execute("SELECT count(*) FROM {t}")
        assert cur.fetchone()[0] == 5
print("OK")
"#,
        conninfo = pg.conninfo(),
        token = pg.g.agent_token,
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK"),
        "psycopg is installed by scripts/setup: {}",
        text(&out)
    );
    admin(&format!("DROP TABLE {t}"));
}

/// Reads what the server answers until it closes the connection.
fn answer(mut s: std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn backends(application_name: &str) -> String {
    admin(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
    ))
}

#[tokio::test]
async fn bad_clients_get_clean_errors_and_never_reach_the_server() {
    let pg = start("1s").await;
    let addr = format!("127.0.0.1:{}", pg.port);
    let connect = || std::net::TcpStream::connect(&addr).unwrap();

    // A startup packet whose length is absurd.
    let mut s = connect();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0]).unwrap();
    let _ = answer(s);

    // An unknown protocol version.
    let mut s = connect();
    s.write_all(&[0, 0, 0, 8, 0, 9, 0, 0]).unwrap();
    assert!(answer(s).contains("unsupported frontend protocol 9.0"));

    // `options` can set any server setting, the role included.
    let mut s = connect();
    s.write_all(&startup(&[
        ("user", "bot"),
        ("options", "-c role=postgres"),
    ]))
    .unwrap();
    assert!(answer(s).contains("startup parameter \"options\" is not allowed"));

    // A database this listener does not serve.
    let out = Command::new("psql")
        .args([
            "-X",
            &format!("host=127.0.0.1 port={} user=bot dbname=postgres", pg.port),
            "-c",
            "SELECT 1",
        ])
        .env("PGPASSWORD", &pg.g.agent_token)
        .output()
        .unwrap();
    assert!(text(&out).contains("is not served here"), "{}", text(&out));

    // A wrong token; the token is not echoed.
    let out = Command::new("psql")
        .args(["-X", &pg.conninfo(), "-c", "SELECT 1"])
        .env("PGPASSWORD", "gvl_agent_not-a-real-token")
        .output()
        .unwrap();
    let err = text(&out);
    assert!(
        err.contains("password authentication failed for user \"bot\""),
        "{err}"
    );
    assert!(!err.contains("not-a-real-token"), "{err}");

    // Garbage after a good login: a message type that does not exist, and
    // a Query whose length disagrees with its text.
    for garbage in [
        &b"Y\x00\x00\x00\x04"[..],
        &b"Q\x00\x00\x00\x0cDROP\x00abc"[..],
    ] {
        let mut s = connect();
        s.write_all(&startup(&[
            ("user", "bot"),
            ("application_name", "gavel-garbage"),
        ]))
        .unwrap();
        let mut ask = [0u8; 9];
        s.read_exact(&mut ask).unwrap();
        assert_eq!(ask[0], b'R', "asks for a password");
        let token = format!("{}\0", pg.g.agent_token);
        let mut p = vec![b'p'];
        p.extend(((token.len() + 4) as u32).to_be_bytes());
        p.extend(token.as_bytes());
        s.write_all(&p).unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"Z\x00\x00\x00\x05I") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            seen.push(b[0]);
        }
        s.write_all(garbage).unwrap();
        let reply = answer(s);
        assert!(reply.contains("08P01"), "{reply:?}");
    }
    assert_eq!(
        backends("gavel-garbage"),
        "0",
        "no upstream connection was made"
    );
}

fn make_cert(dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn tls_is_served_and_can_be_required() {
    let certs = tempfile::tempdir().unwrap();
    make_cert(certs.path());
    let listener = format!(
        "tls_cert_file = \"{0}/cert.pem\"\ntls_key_file = \"{0}/key.pem\"\nrequire_tls = true\n",
        certs.path().display()
    );
    let pg = start_with("1s", &listener).await;
    let run = |extra: &str| {
        Command::new("psql")
            .args([
                "-X",
                "-tA",
                &format!("{} {extra}", pg.conninfo()),
                "-c",
                "SELECT 'over tls'",
            ])
            .env("PGPASSWORD", &pg.g.agent_token)
            .output()
            .unwrap()
    };
    let out = run("sslmode=disable");
    assert!(text(&out).contains("accepts only TLS"), "{}", text(&out));
    let out = run(&format!(
        "sslmode=verify-full sslrootcert={}/cert.pem host=localhost",
        certs.path().display()
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
}

#[tokio::test]
async fn statement_names_cannot_be_swapped_behind_gavels_back() {
    let pg = start("1s").await;
    let mut raw = Raw::login(&pg).await;

    // A Parse the server refuses (the name exists) must not replace what
    // gavel believes the name holds.
    let r = raw.parse_bind("s", "SELECT pg_reload_conf()", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.parse_bind("s", "SELECT 1", None).await;
    assert!(Raw::error(&r).unwrap().contains("already exists"), "{r:?}");
    let r = raw.bind_execute("s").await;
    let e = Raw::error(&r).expect("refused");
    assert!(e.contains("no-admin"), "{e}");

    // A protocol-level portal left for a FETCH to run: binding it is
    // judged as its statement (binding plans it), so it never exists.
    assert!(Raw::error(&raw.query("BEGIN").await).is_none());
    let r = raw
        .parse_bind("", "SELECT pg_reload_conf()", Some("c"))
        .await;
    let e = Raw::error(&r).expect("refused");
    assert!(e.contains("no-admin"), "{e}");
    assert!(Raw::error(&raw.query("ROLLBACK").await).is_none());

    // A PREPARE that never ran names nothing; EXECUTE of a protocol-level
    // statement takes that statement's class.
    let r = raw.query("SELECT 1/0; PREPARE p AS SELECT 1").await;
    assert!(Raw::error(&r).unwrap().contains("division by zero"));
    let r = raw.parse_bind("p", "SELECT pg_reload_conf()", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let r = raw.query("EXECUTE p").await;
    let e = Raw::error(&r).expect("refused");
    assert!(e.contains("no-admin"), "{e}");

    // A Query right behind a redefinition it depends on is classified
    // against the redefinition (gavel waits for the server to confirm it).
    use postgres_protocol::message::frontend;
    let r = raw.parse_bind("x", "SELECT 1", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let mut out = bytes::BytesMut::new();
    frontend::close(b'S', "x", &mut out).unwrap();
    frontend::parse("x", "SELECT pg_reload_conf()", std::iter::empty(), &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::query("EXECUTE x", &mut out).unwrap();
    raw.send(&out).await;
    assert!(Raw::error(&raw.until_ready().await).is_none());
    let e = Raw::error(&raw.until_ready().await).expect("refused");
    assert!(e.contains("no-admin"), "{e}");

    // EXECUTE inside a protocol statement, after a redefinition in the same
    // batch, is judged by the redefinition.
    let r = raw.parse_bind("y", "SELECT 1", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let mut out = bytes::BytesMut::new();
    frontend::close(b'S', "y", &mut out).unwrap();
    frontend::parse("y", "SELECT pg_reload_conf()", std::iter::empty(), &mut out).unwrap();
    frontend::parse("", "EXECUTE y", std::iter::empty(), &mut out).unwrap();
    bind(&mut out, "", "");
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    let e = Raw::error(&raw.until_ready().await).expect("refused");
    assert!(e.contains("no-admin"), "{e}");

    // SQL PREPARE and protocol Parse share one namespace.
    assert!(Raw::error(&raw.query("PREPARE z AS SELECT 1").await).is_none());
    let mut out = bytes::BytesMut::new();
    frontend::close(b'S', "z", &mut out).unwrap();
    frontend::sync(&mut out);
    raw.send(&out).await;
    assert!(Raw::error(&raw.until_ready().await).is_none());
    let r = raw.parse_bind("z", "SELECT pg_reload_conf()", None).await;
    assert!(Raw::error(&r).is_none(), "{r:?}");
    let e = Raw::error(&raw.query("EXECUTE z").await).expect("refused");
    assert!(e.contains("no-admin"), "{e}");

    // Settings that change how the server reads bytes are not harmless.
    let r = raw.query("SET client_encoding = 'SJIS'").await;
    assert!(Raw::error(&r).unwrap().contains("no-admin"), "{r:?}");
    let r = raw.query("SET standard_conforming_strings = off").await;
    assert!(Raw::error(&r).unwrap().contains("no-admin"), "{r:?}");

    // And the session is still fine.
    let r = raw.query("SELECT 42").await;
    assert!(Raw::error(&r).is_none(), "{r:?}");

    // Pipelined simple queries: an error in the first does not swallow the
    // second (the server runs each Query on its own).
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT 1/0", &mut out).unwrap();
    postgres_protocol::message::frontend::query("SELECT 'second'", &mut out).unwrap();
    raw.send(&out).await;
    let first = raw.until_ready().await;
    assert!(Raw::error(&first).unwrap().contains("division by zero"));
    let second = raw.until_ready().await;
    assert!(Raw::error(&second).is_none(), "{second:?}");
    assert!(
        second
            .iter()
            .any(|(t, b)| *t == b'D' && String::from_utf8_lossy(b).contains("second"))
    );

    // A client encoding other than UTF-8 is refused at startup, and text
    // that is not UTF-8 never reaches the server.
    let out = Command::new("psql")
        .args(["-X", &pg.conninfo(), "-c", "SELECT 1"])
        .env("PGPASSWORD", &pg.g.agent_token)
        .env("PGCLIENTENCODING", "SJIS")
        .output()
        .unwrap();
    assert!(text(&out).contains("client_encoding"), "{}", text(&out));
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(b"Q\x00\x00\x00\x0dSELECT\x951\x00");
    raw.send(&out).await;
    let m = raw.message().await;
    assert_eq!(m.0, b'E');
    assert!(String::from_utf8_lossy(&m.1).contains("UTF-8"), "{m:?}");
}

#[tokio::test]
async fn buffered_reads_are_recorded_once_with_their_outcome() {
    let pg = start_with("1s", "\n[audit]\nread_durability = \"buffered\"\n").await;
    let out = pg.psql(&["-tA", "-c", "SELECT 'buffered' AS how"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "buffered",
        "{}",
        text(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = pg.audit().await;
        let reads: Vec<&Value> = records
            .iter()
            .filter(|r| r["operation"] == "SELECT 'buffered' AS how")
            .collect();
        if let [one] = reads.as_slice() {
            assert_eq!(one["event"], "decision", "{one}");
            assert_eq!(one["decision"], "allow", "{one}");
            assert_eq!(one["outcome"], "succeeded: SELECT 1", "{one}");
            break;
        }
        assert!(reads.len() < 2, "one record per read: {reads:#?}");
        assert!(
            Instant::now() < deadline,
            "the record was written: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gavel_reaches_the_server_over_verified_tls() {
    // The machine's PostgreSQL serves TLS with Debian's snakeoil
    // certificate (CN=localhost): trust exactly that certificate.
    let ca = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    assert!(
        std::path::Path::new(ca).exists(),
        "the test PostgreSQL's certificate is missing"
    );
    assert_eq!(
        admin("SELECT setting FROM pg_settings WHERE name = 'ssl'"),
        "on",
        "the machine's PostgreSQL serves TLS"
    );
    let listener = format!(
        "upstream_tls = \"require\"\nupstream_ca_file = \"{ca}\"\nupstream_tls_server_name = \"localhost\"\n"
    );
    let pg = start_with("1s", &listener).await;
    // pg_stat_ssl is not for agents (it shows every session's
    // certificates): the server's superuser looks at gavel's backend.
    let mut raw = Raw::login(&pg).await;
    let answer = raw.query("SELECT pg_backend_pid()").await;
    let pid = answer
        .iter()
        .find(|(t, _)| *t == b'D')
        .map(|(_, body)| String::from_utf8_lossy(&body[6..]).into_owned())
        .expect("a row");
    assert_eq!(
        admin(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}")),
        "t"
    );

    // A name the certificate does not carry: no connection, and the client
    // learns only that the upstream is unavailable.
    let wrong = format!(
        "upstream_tls = \"require\"\nupstream_ca_file = \"{ca}\"\nupstream_tls_server_name = \"db.example.com\"\n"
    );
    let pg = start_with("1s", &wrong).await;
    let out = pg.psql(&["-c", "SELECT 1"]);
    let err = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the database behind resource app-db"),
        "{err}"
    );
    assert!(
        !err.contains("certificate"),
        "details stay in the gateway log: {err}"
    );
    assert!(pg.g.log().contains("certificate"), "{}", pg.g.log());
}

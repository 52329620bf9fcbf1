//! The PostgreSQL surface's test helpers: gavel in front of the machine's
//! PostgreSQL, the server's own view (`admin`), and a client that speaks
//! the protocol message by message.

use super::{ALICE, Gavel, free_port};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Pg {
    pub g: Gavel,
    pub port: u16,
}

impl Pg {
    /// gavel with one `[[resources.postgres]]` (`app-db`, tagged prod) in
    /// front of the machine's PostgreSQL, under `policies`.
    pub async fn start_policies(hold: &str, policies: &str, listener: &str) -> Pg {
        let port = free_port();
        let extra = format!(
            r#"
[[resources.postgres]]
name = "app-db"
listen = "127.0.0.1:{port}"
upstream = "postgres://postgres@127.0.0.1:5432/test"
tags = {{ env = "prod" }}
{listener}
"#
        );
        let g = Gavel::start_custom(hold, policies, &extra).await;
        Pg { g, port }
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=bot dbname=test application_name=gavel-test",
            self.port
        )
    }

    /// psql through gavel as agent `bot`.
    pub fn psql(&self, args: &[&str]) -> Output {
        self.psql_with(args, None)
    }

    pub fn psql_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("psql");
        cmd.arg("-X")
            .arg("-q")
            .arg(self.conninfo())
            .args(args)
            .env("PGPASSWORD", &self.g.agent_token)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("psql is installed (scripts/setup)");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    pub async fn pending(&self) -> Vec<Value> {
        let (status, body) = self.g.get("/api/v1/requests?state=pending", ALICE).await;
        assert_eq!(status, 200, "{body}");
        body["requests"].as_array().cloned().unwrap_or_default()
    }

    pub async fn wait_for_pending(&self, operation: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(r) = self.pending().await.into_iter().find(|r| {
                r["operation"]
                    .as_str()
                    .is_some_and(|o| o.contains(operation))
            }) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no pending request for {operation}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn audit(&self) -> Vec<Value> {
        let (status, body) = self.g.get("/api/v1/audit?limit=1000", ALICE).await;
        assert_eq!(status, 200, "{body}");
        body["records"]
            .as_array()
            .map(|rs| rs.iter().map(|r| r["record"].clone()).collect())
            .unwrap_or_default()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// psql straight to PostgreSQL as its superuser: the ground truth.
pub fn admin(sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-tA",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "test",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "admin {sql}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A table name no other test uses.
pub fn table(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = format!(
        "gavel_{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    admin(&format!("DROP TABLE IF EXISTS {t}"));
    t
}

pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A client that speaks the protocol message by message, for sequences no
/// library sends.
pub struct Raw {
    s: tokio::net::TcpStream,
    inbox: bytes::BytesMut,
}

impl Raw {
    pub async fn login(pg: &Pg) -> Raw {
        Raw::login_db(pg, "test").await
    }

    /// As [`Raw::login`], naming database `db`.
    pub async fn login_db(pg: &Pg, db: &str) -> Raw {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
            .await
            .unwrap();
        s.write_all(&startup(&[("user", "bot"), ("database", db)]))
            .await
            .unwrap();
        let mut raw = Raw {
            s,
            inbox: bytes::BytesMut::new(),
        };
        let ask = raw.message().await;
        assert_eq!(ask.0, b'R');
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::password_message(
            pg.g.agent_token.as_bytes(),
            &mut out,
        )
        .unwrap();
        raw.send(&out).await;
        raw.until_ready().await;
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(bytes).await.unwrap();
    }

    pub async fn message(&mut self) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        loop {
            if self.inbox.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.inbox[1],
                    self.inbox[2],
                    self.inbox[3],
                    self.inbox[4],
                ]) as usize;
                if self.inbox.len() > len {
                    let frame = self.inbox.split_to(len + 1);
                    return (frame[0], frame[5..].to_vec());
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_buf(&mut self.inbox))
                .await
                .expect("an answer within 20 s")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        loop {
            let m = self.message().await;
            let done = m.0 == b'Z';
            got.push(m);
            if done {
                return got;
            }
        }
    }

    pub fn error(messages: &[(u8, Vec<u8>)]) -> Option<String> {
        messages
            .iter()
            .find(|(t, _)| *t == b'E')
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
    }

    pub async fn query(&mut self, sql: &str) -> Vec<(u8, Vec<u8>)> {
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
        self.send(&out).await;
        self.until_ready().await
    }

    /// Parse (and optionally Bind) then Sync.
    pub async fn parse_bind(
        &mut self,
        statement: &str,
        sql: &str,
        portal: Option<&str>,
    ) -> Vec<(u8, Vec<u8>)> {
        use postgres_protocol::message::frontend;
        let mut out = bytes::BytesMut::new();
        frontend::parse(statement, sql, std::iter::empty(), &mut out).unwrap();
        if let Some(portal) = portal {
            bind(&mut out, portal, statement);
        }
        frontend::sync(&mut out);
        self.send(&out).await;
        self.until_ready().await
    }

    pub async fn bind_execute(&mut self, statement: &str) -> Vec<(u8, Vec<u8>)> {
        use postgres_protocol::message::frontend;
        let mut out = bytes::BytesMut::new();
        bind(&mut out, "", statement);
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        self.send(&out).await;
        self.until_ready().await
    }
}

pub fn bind(out: &mut bytes::BytesMut, portal: &str, statement: &str) {
    postgres_protocol::message::frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<i32>(),
        |_: i32,
         _: &mut bytes::BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::No)
        },
        std::iter::empty::<i16>(),
        out,
    )
    .map_err(|_| "bind")
    .unwrap();
}

/// A PostgreSQL database for gavel's own store, of one test: created on
/// the machine's server and dropped afterwards (or one that exists, on a
/// server of the test's own).
pub struct StoreDb {
    url: String,
    name: Option<String>,
}

impl StoreDb {
    pub fn create() -> StoreDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "gavel_store_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        admin(&format!("CREATE DATABASE {name}"));
        StoreDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name: Some(name),
        }
    }

    pub fn at(url: String) -> StoreDb {
        StoreDb { url, name: None }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `sql` in this database (on the machine's server), bypassing
    /// gavel: what whoever reads the database sees.
    pub fn query(&self, sql: &str) -> String {
        let name = self
            .name
            .as_deref()
            .expect("a database on the machine's server");
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-tA",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                name,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for StoreDb {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

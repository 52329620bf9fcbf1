//! Model-based differential testing of gavel's PostgreSQL surface.
//!
//! Random (or fuzzer-chosen) sequences of extended-protocol batches (Parse,
//! Bind, Execute, Describe, Close, Flush, Sync) and query strings (PREPARE,
//! DEALLOCATE, DECLARE, CLOSE, EXECUTE, FETCH, MOVE, transaction control,
//! errors) run through gavel against the real PostgreSQL. After every
//! ReadyForQuery two things are checked:
//! - **gavel's view equals the server's**: what `SHOW gavel.names` says the
//!   session's named prepared statements and portals are, for each table
//!   gavel does not mark stale, is exactly what the server lists in
//!   `pg_prepared_statements` and `pg_cursors` for the same session;
//! - **nothing but reads ran**: the policy allows only `sql.read`, and some
//!   statements the sequences prepare insert into a log table; the table
//!   must stay empty whatever the sequence does.
//!
//! Used by the integration test `crates/cli/tests/postgres_model.rs` (a
//! few seeded runs in CI) and by the cargo-fuzz target `names`
//! (`scripts/fuzz`), which feeds fuzzer bytes through [`rounds_from_bytes`].

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One message of an extended-protocol batch (a Sync always follows the
/// last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Parse `text` as statement `name`.
    Parse { name: String, text: String },
    /// Bind `statement` to `portal`.
    Bind { portal: String, statement: String },
    /// Execute `portal` for at most `rows` rows (0: all).
    Execute { portal: String, rows: i32 },
    /// Describe a statement (`S`) or portal (`P`).
    Describe { kind: u8, name: String },
    /// Close a statement (`S`) or portal (`P`).
    Close { kind: u8, name: String },
    /// Flush: the server answers what it has so far.
    Flush,
}

/// What the client sends before it waits for ReadyForQuery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// A simple-protocol query string.
    Query(String),
    /// Extended-protocol messages, then Sync.
    Batch(Vec<Step>),
}

/// A small deterministic generator (SplitMix64), so a seed names a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A source of choices: a generator, or fuzzer bytes.
trait Choices {
    fn below(&mut self, n: usize) -> usize;
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn exhausted(&self) -> bool;
}

impl Choices for Rng {
    fn below(&mut self, n: usize) -> usize {
        Rng::below(self, n)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        Rng::pick(self, items)
    }
    fn exhausted(&self) -> bool {
        false
    }
}

struct Bytes<'a>(&'a [u8]);

impl Choices for Bytes<'_> {
    fn below(&mut self, n: usize) -> usize {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b as usize % n
            }
            None => 0,
        }
    }
    fn exhausted(&self) -> bool {
        self.0.is_empty()
    }
}

/// Names the sequences use: statement and portal names shared between
/// the protocol and SQL, and one of the longest the server keeps whole.
const STATEMENTS: &[&str] = &[
    "",
    "s1",
    "s2",
    "s3",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];
const PORTALS: &[&str] = &["", "p1", "p2", "c1"];
const CURSORS: &[&str] = &["c1", "c2", "p1"];

/// The log table's placeholder in statement texts.
const LOG: &str = "{log}";

fn statement_text(c: &mut dyn Choices) -> String {
    match c.below(10) {
        0..=2 => format!("SELECT 'r{}'", c.below(3)),
        3..=4 => format!("INSERT INTO {LOG} VALUES ('w{}')", c.below(3)),
        5 => "SELECT 1/0".into(),
        6 => format!("EXECUTE {}", c.pick(&STATEMENTS[1..])),
        7 => format!("FETCH 1 FROM {}", c.pick(CURSORS)),
        8 => format!("DEALLOCATE {}", c.pick(&STATEMENTS[1..])),
        _ => format!(
            "DECLARE {} CURSOR FOR SELECT 'r{}'",
            c.pick(CURSORS),
            c.below(3)
        ),
    }
}

fn sql_statement(c: &mut dyn Choices) -> String {
    let s = c.pick(&STATEMENTS[1..]);
    let k = c.pick(CURSORS);
    match c.below(20) {
        0..=1 => format!("PREPARE {s} AS SELECT 'r{}'", c.below(3)),
        2 => format!("PREPARE {s} AS INSERT INTO {LOG} VALUES ('w')"),
        3..=4 => format!("DEALLOCATE {s}"),
        5 => "DEALLOCATE ALL".into(),
        6..=7 => format!("EXECUTE {s}"),
        8 => format!(
            "DECLARE {k} {}CURSOR FOR SELECT 'r{}'",
            if c.below(2) == 0 { "" } else { "SCROLL " },
            c.below(3)
        ),
        9 => format!("DECLARE {k} CURSOR WITH HOLD FOR SELECT 'h'"),
        10 => format!("CLOSE {k}"),
        11 => "CLOSE ALL".into(),
        12 => format!("FETCH 1 FROM {}", c.pick(PORTALS)),
        13 => format!("MOVE 1 IN {k}"),
        14 => c.pick(&["BEGIN", "COMMIT", "ROLLBACK"]).into(),
        15 => c
            .pick(&["SAVEPOINT a", "ROLLBACK TO a", "RELEASE a"])
            .into(),
        16 => "SELECT 1/0".into(),
        17 => "DISCARD ALL".into(),
        _ => "SELECT 'r'".into(),
    }
}

fn round(c: &mut dyn Choices) -> Round {
    if c.below(2) == 0 {
        let n = 1 + c.below(3);
        let parts: Vec<String> = (0..n).map(|_| sql_statement(c)).collect();
        return Round::Query(parts.join("; "));
    }
    let n = 1 + c.below(6);
    let steps = (0..n)
        .map(|_| match c.below(12) {
            0..=2 => Step::Parse {
                name: c.pick(STATEMENTS).into(),
                text: statement_text(c),
            },
            3..=5 => Step::Bind {
                portal: c.pick(PORTALS).into(),
                statement: c.pick(STATEMENTS).into(),
            },
            6..=7 => Step::Execute {
                portal: c.pick(PORTALS).into(),
                rows: c.below(2) as i32,
            },
            8 => Step::Describe {
                kind: if c.below(2) == 0 { b'S' } else { b'P' },
                name: c.pick(PORTALS).into(),
            },
            9..=10 => Step::Close {
                kind: if c.below(2) == 0 { b'S' } else { b'P' },
                name: if c.below(2) == 0 {
                    c.pick(STATEMENTS).into()
                } else {
                    c.pick(PORTALS).into()
                },
            },
            _ => Step::Flush,
        })
        .collect();
    Round::Batch(steps)
}

/// `n` rounds from `seed`.
pub fn random_rounds(seed: u64, n: usize) -> Vec<Round> {
    let mut rng = Rng(seed);
    (0..n).map(|_| round(&mut rng)).collect()
}

/// Rounds chosen by fuzzer bytes (at most 64).
pub fn rounds_from_bytes(data: &[u8]) -> Vec<Round> {
    let mut c = Bytes(data);
    let mut out = Vec::new();
    while !c.exhausted() && out.len() < 64 {
        out.push(round(&mut c));
    }
    out
}

/// A blocking protocol client, message by message.
pub struct Wire {
    s: TcpStream,
    inbox: Vec<u8>,
    /// The transaction status of the last ReadyForQuery.
    pub status: u8,
}

type Message = (u8, Vec<u8>);

/// Rows of text columns (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

impl Wire {
    fn open(addr: &str, params: &[(&str, &str)], password: Option<&str>) -> Result<Wire, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut w = Wire {
            s,
            inbox: Vec::new(),
            status: b'I',
        };
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out).map_err(|e| e.to_string())?;
        w.send(&out)?;
        loop {
            let (tag, body) = w.message()?;
            match tag {
                b'R' if body.get(..4) == Some(&[0, 0, 0, 3]) => {
                    let mut out = BytesMut::new();
                    frontend::password_message(password.unwrap_or("").as_bytes(), &mut out)
                        .map_err(|e| e.to_string())?;
                    w.send(&out)?;
                }
                b'E' => return Err(format!("login refused: {}", String::from_utf8_lossy(&body))),
                b'Z' => return Ok(w),
                _ => {}
            }
        }
    }

    /// A session through gavel as an agent with `token`.
    pub fn gavel(addr: &str, token: &str) -> Result<Wire, String> {
        Wire::open(addr, &[("user", "bot"), ("database", "test")], Some(token))
    }

    /// A session straight to the server as its superuser (trust auth).
    pub fn direct(addr: &str) -> Result<Wire, String> {
        Wire::open(addr, &[("user", "postgres"), ("database", "test")], None)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.s.write_all(bytes).map_err(|e| format!("send: {e}"))
    }

    fn message(&mut self) -> Result<Message, String> {
        loop {
            if self.inbox.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.inbox[1],
                    self.inbox[2],
                    self.inbox[3],
                    self.inbox[4],
                ]) as usize;
                if self.inbox.len() > len {
                    let frame: Vec<u8> = self.inbox.drain(..len + 1).collect();
                    return Ok((frame[0], frame[5..].to_vec()));
                }
            }
            let mut buf = [0u8; 8192];
            let n = self.s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the connection closed".into());
            }
            self.inbox.extend_from_slice(&buf[..n]);
        }
    }

    fn until_ready(&mut self) -> Result<Vec<Message>, String> {
        let mut got = Vec::new();
        loop {
            let m = self.message()?;
            if m.0 == b'Z' {
                self.status = m.1.first().copied().unwrap_or(b'I');
                got.push(m);
                return Ok(got);
            }
            got.push(m);
        }
    }

    /// Runs a simple query; its rows as text, or its error.
    /// The outer error is the connection's; the inner one the statement's.
    pub fn query(&mut self, sql: &str) -> Result<Result<Rows, String>, String> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| e.to_string())?;
        self.send(&out)?;
        let mut rows = Vec::new();
        let mut error = None;
        for (tag, body) in self.until_ready()? {
            match tag {
                b'D' => rows.push(data_row(&body).ok_or("malformed row")?),
                b'E' => error = Some(String::from_utf8_lossy(&body).into_owned()),
                _ => {}
            }
        }
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(rows),
        })
    }

    fn run(&mut self, round: &Round, log: &str) -> Result<(), String> {
        let mut out = BytesMut::new();
        let text = |t: &str| t.replace(LOG, log);
        match round {
            Round::Query(sql) => {
                frontend::query(&text(sql), &mut out).map_err(|e| e.to_string())?
            }
            Round::Batch(steps) => {
                for step in steps {
                    match step {
                        Step::Parse { name, text: t } => {
                            frontend::parse(name, &text(t), std::iter::empty(), &mut out)
                                .map_err(|e| e.to_string())?
                        }
                        Step::Bind { portal, statement } => frontend::bind(
                            portal,
                            statement,
                            std::iter::empty::<i16>(),
                            std::iter::empty::<i32>(),
                            |_: i32,
                             _: &mut BytesMut|
                             -> Result<
                                postgres_protocol::IsNull,
                                Box<dyn std::error::Error + Sync + Send>,
                            > { Ok(postgres_protocol::IsNull::No) },
                            std::iter::empty::<i16>(),
                            &mut out,
                        )
                        .map_err(|_| "bind".to_owned())?,
                        Step::Execute { portal, rows } => {
                            frontend::execute(portal, *rows, &mut out).map_err(|e| e.to_string())?
                        }
                        Step::Describe { kind, name } => {
                            frontend::describe(*kind, name, &mut out).map_err(|e| e.to_string())?
                        }
                        Step::Close { kind, name } => {
                            frontend::close(*kind, name, &mut out).map_err(|e| e.to_string())?
                        }
                        Step::Flush => frontend::flush(&mut out),
                    }
                }
                frontend::sync(&mut out);
            }
        }
        self.send(&out)?;
        self.until_ready().map(|_| ())
    }
}

fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        out.push(Some(
            String::from_utf8_lossy(body.get(at..at + len)?).into_owned(),
        ));
        at += len;
    }
    Some(out)
}

/// Where a run goes.
pub struct Target {
    /// gavel's PostgreSQL listener (`host:port`).
    pub gavel: String,
    /// An agent token under a policy that permits only `sql.read`.
    pub token: String,
    /// The server itself, for the log table (`host:port`).
    pub direct: String,
    /// A table only this run uses; created and dropped by [`run`].
    pub log: String,
}

/// What a run saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rounds run.
    pub rounds: usize,
    /// Comparisons of a table gavel did not mark stale.
    pub compared: usize,
    /// Comparisons skipped because gavel will ask the server first.
    pub stale: usize,
    /// Rounds after which the transaction was aborted (the server could
    /// not be asked).
    pub aborted: usize,
}

/// `(kind, name, text)` rows, sorted.
type View = Vec<(String, String, String)>;

/// Runs `rounds` through gavel and checks, after each, that gavel's view
/// of the session's names equals the server's and that nothing but reads
/// ran. Returns what it saw, or the first divergence with the rounds that
/// led to it.
pub fn run(target: &Target, rounds: &[Round]) -> Result<Summary, String> {
    let mut admin = Wire::direct(&target.direct)?;
    admin
        .query(&format!(
            "DROP TABLE IF EXISTS {0}; CREATE TABLE {0} (tag text)",
            target.log
        ))?
        .map_err(|e| format!("creating the log table: {e}"))?;
    let mut wire = Wire::gavel(&target.gavel, &target.token)?;
    let mut summary = Summary::default();
    let result = (|| -> Result<(), String> {
        for (i, round) in rounds.iter().enumerate() {
            let context = || format!("after round {i} of {:#?}", &rounds[..=i]);
            wire.run(round, &target.log)
                .map_err(|e| format!("{e} {}", context()))?;
            summary.rounds += 1;
            let gavel = wire
                .query("SHOW gavel.names")?
                .map_err(|e| format!("SHOW gavel.names failed: {e}"))?;
            if wire.status == b'E' {
                summary.aborted += 1;
            } else {
                let server = wire
                    .query(
                        "SELECT 's', name, statement FROM pg_catalog.pg_prepared_statements \
                         UNION ALL SELECT 'c', name, statement FROM pg_catalog.pg_cursors",
                    )?
                    .map_err(|e| format!("reading the server's names failed: {e} {}", context()))?;
                for kind in ["s", "c"] {
                    // Each table's own row (no name) says whether gavel will
                    // ask the server before relying on it.
                    let stale = gavel.iter().any(|r| {
                        r[0].as_deref() == Some(kind)
                            && r[1].is_none()
                            && r[3].as_deref() == Some("t")
                    });
                    if stale {
                        summary.stale += 1;
                        continue;
                    }
                    let ours: View = view(&gavel, kind);
                    let theirs: View = view(&server, kind);
                    if ours != theirs {
                        return Err(format!(
                            "gavel's {} differ from the server's:\n gavel:  {ours:?}\n server: {theirs:?}\n{}",
                            if kind == "s" {
                                "prepared statements"
                            } else {
                                "portals"
                            },
                            context()
                        ));
                    }
                    summary.compared += 1;
                }
            }
            let ran = admin
                .query(&format!("SELECT tag FROM {}", target.log))?
                .map_err(|e| format!("reading the log table: {e}"))?;
            if !ran.is_empty() {
                return Err(format!(
                    "a statement that is not a read ran through gavel ({ran:?}) {}",
                    context()
                ));
            }
        }
        Ok(())
    })();
    let _ = admin.query(&format!("DROP TABLE IF EXISTS {}", target.log));
    result.map(|()| summary)
}

fn view(rows: &[Vec<Option<String>>], kind: &str) -> View {
    let mut out: View = rows
        .iter()
        .filter(|r| r[0].as_deref() == Some(kind))
        .filter(|r| r[1].as_deref().is_some_and(|n| !n.is_empty()))
        .map(|r| {
            (
                kind.to_owned(),
                r[1].clone().unwrap_or_default(),
                r[2].clone().unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_sequence() {
        assert_eq!(random_rounds(7, 20), random_rounds(7, 20));
        assert_ne!(random_rounds(7, 20), random_rounds(8, 20));
        assert!(!rounds_from_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]).is_empty());
        assert!(rounds_from_bytes(&[]).is_empty());
    }
}

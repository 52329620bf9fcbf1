//! The only way bytes reach the server from a client's session.
//!
//! A message that runs a statement (a simple `Query`, an `Execute`) is
//! written only together with the [`Permitted`] the gate gave for exactly
//! that statement: the writer takes the proof, checks that it admitted the
//! text being sent, and keeps it until the server reports how the
//! statement ended. Everything else a client sends runs nothing on its own
//! ([`Passive`]: Parse, Bind, Describe, Close, Sync, Flush, COPY data), and
//! gavel's own statements are fixed texts ([`GavelRead`]). There is no
//! other constructor of outgoing bytes, so a statement cannot reach the
//! server around the gate.

use crate::upstream::Stream;
use bytes::BytesMut;
use gavel_core::{Outcome, Permitted};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client session's connection to its server backend. It is read
/// freely; it is written only what a [`ToServer`] holds.
pub struct ServerConn(Stream);

impl ServerConn {
    pub fn new(stream: Stream) -> ServerConn {
        ServerConn(stream)
    }

    /// Reads what the server sent into `buf`; 0 at its end.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        self.0.read_buf(buf).await
    }

    /// Writes everything `out` holds, and empties it.
    pub async fn send(&mut self, out: &mut ToServer) -> std::io::Result<()> {
        self.0.write_all(&out.out).await?;
        out.out.clear();
        Ok(())
    }
}

/// A whole client message that runs nothing by itself.
pub struct Passive(BytesMut);

impl Passive {
    /// `frame` if its type runs nothing: Parse, Bind, Describe, Close,
    /// Sync, Flush, CopyData, CopyDone, CopyFail.
    pub fn new(frame: BytesMut) -> Result<Passive, BytesMut> {
        match frame.first() {
            Some(b'P' | b'B' | b'D' | b'C' | b'S' | b'H' | b'd' | b'c' | b'f') => {
                Ok(Passive(frame))
            }
            _ => Err(frame),
        }
    }
}

/// A read gavel itself sends on the client's backend, with a fixed
/// text: never anything a client wrote.
pub enum GavelRead {
    /// Reads the session's prepared statements and cursors
    /// ([`crate::names::SERVER_NAMES_SQL`]).
    Names,
    /// Reads the settings bound into an approval
    /// ([`crate::session::SETTINGS_SQL`]).
    Settings,
    /// Reads the functions, operators and casts the classifier must know
    /// of, as this backend sees them (its own uncommitted ones included)
    /// ([`crate::classify::CATALOG_SQL`]).
    Catalog,
}

impl GavelRead {
    pub fn sql(&self) -> &'static str {
        match self {
            GavelRead::Names => crate::names::SERVER_NAMES_SQL,
            GavelRead::Settings => crate::session::SETTINGS_SQL,
            GavelRead::Catalog => crate::classify::CATALOG_SQL,
        }
    }
}

/// A statement on its way to the server, or run, whose outcome is still to
/// come.
pub struct InFlight {
    pub permitted: Permitted,
    /// A simple query ends at ReadyForQuery, an Execute at its completion.
    pub simple: bool,
    pub tags: Vec<String>,
    pub error: Option<String>,
}

impl InFlight {
    /// Records how it ended (`override_error` wins over what the server
    /// said).
    pub fn finish(self, override_error: Option<String>) {
        let outcome = match override_error.or(self.error) {
            Some(e) => Outcome::Failed { detail: e },
            None => Outcome::Succeeded {
                detail: self.tags.join(", "),
            },
        };
        self.permitted.finish(outcome);
    }
}

/// A statement that was not sent: its admission did not match it.
#[derive(Debug)]
pub struct Mismatch(pub String);

/// Bytes waiting to go to the server, and the admitted statements among
/// them whose outcome is still to come, in order.
#[derive(Default)]
pub struct ToServer {
    out: BytesMut,
    pub inflight: VecDeque<InFlight>,
}

impl ToServer {
    /// A simple Query whose whole text `sql` the gate admitted.
    pub fn query(&mut self, frame: &[u8], sql: &str, permitted: Permitted) -> Result<(), Mismatch> {
        self.admitted(b'Q', frame, sql, permitted)
    }

    /// An Execute of a portal whose statement, `statement_text`, the gate
    /// admitted (with its bound parameters).
    pub fn execute(
        &mut self,
        frame: &[u8],
        statement_text: &str,
        permitted: Permitted,
    ) -> Result<(), Mismatch> {
        self.admitted(b'E', frame, statement_text, permitted)
    }

    /// A message of type `tag` that runs `text`, which `permitted` must be
    /// the admission of.
    fn admitted(
        &mut self,
        tag: u8,
        frame: &[u8],
        text: &str,
        permitted: Permitted,
    ) -> Result<(), Mismatch> {
        if frame.first() != Some(&tag) || permitted.action().operation != text {
            return Err(Mismatch(format!(
                "admission for {:?} offered with another {}",
                permitted.action().operation,
                if tag == b'Q' { "query" } else { "statement" }
            )));
        }
        self.out.extend_from_slice(frame);
        self.inflight.push_back(InFlight {
            permitted,
            simple: tag == b'Q',
            tags: Vec::new(),
            error: None,
        });
        Ok(())
    }

    /// A message that runs nothing by itself.
    pub fn passive(&mut self, message: Passive) {
        self.out.extend_from_slice(&message.0);
    }

    /// gavel's own statement through the extended protocol, under names of
    /// its own (`name` for both statement and portal), closed again, with
    /// a Sync. The client's unnamed statement and portal are untouched.
    pub fn gavel(&mut self, statement: &GavelRead, name: &str) {
        use postgres_protocol::message::frontend;
        let Some(mut b) = parse_bind_execute(name, statement.sql()) else {
            return;
        };
        let _ = frontend::close(b'P', name, &mut b);
        let _ = frontend::close(b'S', name, &mut b);
        frontend::sync(&mut b);
        self.out.extend_from_slice(&b);
    }

    /// gavel's refusal raised by the server itself (a `DO` block that
    /// raises `code` with `message`), so that the server's answers to a
    /// pipeline that already ran in part stay in order and it skips to the
    /// client's Sync as after any error. The message keeps only characters
    /// that need no escaping under any setting.
    pub fn raise(&mut self, code: &str, message: &str) {
        let text: String = message
            .chars()
            .map(|c| {
                if matches!(c, '\'' | '\\' | '$') {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        let code: String = code.chars().filter(char::is_ascii_alphanumeric).collect();
        let sql = format!(
            "DO $gavel$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{text}'; END$gavel$"
        );
        if let Some(b) = parse_bind_execute("", &sql) {
            self.out.extend_from_slice(&b);
        }
    }

    /// A Sync or Flush of gavel's own (after a raised refusal).
    pub fn sync_or_flush(&mut self, sync: bool) {
        use postgres_protocol::message::frontend;
        if sync {
            frontend::sync(&mut self.out);
        } else {
            frontend::flush(&mut self.out);
        }
    }

    /// Terminate, at the end of the session.
    pub fn terminate(&mut self) {
        postgres_protocol::message::frontend::terminate(&mut self.out);
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// Parse, Bind (no parameters) and Execute of `sql` as statement and portal
/// `name`; `None` only for a text with a NUL, which gavel's own never hold.
fn parse_bind_execute(name: &str, sql: &str) -> Option<BytesMut> {
    use postgres_protocol::message::frontend;
    let mut b = BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut b).ok()?;
    frontend::bind(
        name,
        name,
        std::iter::empty::<i16>(),
        std::iter::empty::<i32>(),
        |_: i32,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::No)
        },
        std::iter::empty::<i16>(),
        &mut b,
    )
    .ok()?;
    frontend::execute(name, 0, &mut b).ok()?;
    Some(b)
}

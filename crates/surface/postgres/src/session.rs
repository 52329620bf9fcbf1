//! One client connection after login: every statement through the gate,
//! forwarded as the client's own bytes.
//!
//! One task owns both sockets of a connection and moves bytes in whichever
//! direction has them; nothing crosses threads per statement. Results are
//! relayed frame by frame as they arrive (a large row or COPY chunk streams
//! through without being held whole). Simple queries are judged here; the
//! extended protocol's pipelines in [`crate::pipeline`]; the hold and the
//! refusals in [`crate::hold`].

use crate::classify::{self, Resolved};
use crate::names::{Names, Portal, Prepared, ServerRow};
use crate::surface::{CancelTarget, Classified, PostgresSurface};
use crate::to_server::{GavelRead, Passive, ServerConn, ToServer};
use crate::upstream::Stream;
use crate::wire::{self, WireError};
use bytes::BytesMut;
use gavel_core::{Action, AuditReceipt, Gate, Principal, Refusal};
use pgwire::messages::PgWireFrontendMessage;
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes of extended-protocol messages queued before a Sync or Flush.
pub(crate) const MAX_BATCH_BYTES: usize = 64 << 20;

/// Most messages queued before a Sync or Flush.
pub(crate) const MAX_BATCH_MESSAGES: usize = 10_000;

/// How many of a session's statements reviewers see.
const RECENT: usize = 10;

/// Per-connection buffer size to start with; they grow with the traffic.
const BUFFER: usize = 4096;

/// The settings bound into an approval: those that change what a
/// statement's literals and names mean. Read with schema-qualified
/// functions, so no `search_path` can substitute others.
pub(crate) const SETTINGS: &[&str] = &[
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "search_path",
    "standard_conforming_strings",
    "transform_null_equals",
    "lc_monetary",
    "lc_numeric",
    "default_text_search_config",
    "session_replication_role",
    "row_security",
    "role",
];

/// The query that reads [`SETTINGS`], in that order, then the current user.
pub const SETTINGS_SQL: &str = "SELECT pg_catalog.current_setting('DateStyle'), pg_catalog.current_setting('IntervalStyle'), \
     pg_catalog.current_setting('TimeZone'), pg_catalog.current_setting('search_path'), \
     pg_catalog.current_setting('standard_conforming_strings'), pg_catalog.current_setting('transform_null_equals'), \
     pg_catalog.current_setting('lc_monetary'), pg_catalog.current_setting('lc_numeric'), \
     pg_catalog.current_setting('default_text_search_config'), pg_catalog.current_setting('session_replication_role'), \
     pg_catalog.current_setting('row_security'), pg_catalog.current_setting('role'), current_user";

/// A change to the statement and portal tables, applied when the server
/// confirms it.
pub(crate) enum TableOp {
    Statement(String, Option<Arc<Prepared>>),
    Portal(String, Option<Portal>),
}

/// After a refused statement in an extended-protocol pipeline, the rest up
/// to Sync is skipped, as PostgreSQL itself skips after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    No,
    /// Nothing of the pipeline reached the server: answer Sync here.
    AnswerSync,
    /// Part of it did: the server raised the refusal; forward Sync.
    ForwardSync,
}

pub(crate) struct Session {
    pub surface: Arc<PostgresSurface>,
    pub gate: Gate,
    pub principal: Principal,
    pub source: String,
    pub client: Stream,
    pub upstream: Option<ServerConn>,
    pub passed: Vec<(String, String)>,
    /// Bytes from the client not yet handled.
    cbuf: BytesMut,
    /// Bytes from the server not yet relayed.
    ubuf: BytesMut,
    /// Bytes gavel itself answers the client with.
    pub cout: BytesMut,
    /// Bytes waiting to go to the server, and the admitted statements in
    /// flight.
    pub to_server: ToServer,
    /// Rest of a large row or COPY chunk being streamed through.
    passthrough: usize,
    pub tx_status: u8,
    /// ReadyForQuery messages the server still owes (one per Query or Sync
    /// forwarded).
    pub pending_ready: usize,
    /// Durability receipts of read records whose results are held back.
    pub receipts: VecDeque<AuditReceipt>,
    /// Extended-protocol messages since the last Sync or Flush.
    pub batch: Vec<BytesMut>,
    pub batch_bytes: usize,
    pub forwarded_since_sync: bool,
    pub discard: Discard,
    pub names: Names,
    /// Parse, Bind and Close sent and not yet confirmed, in order.
    pub pending_ops: VecDeque<(u64, TableOp)>,
    /// Queries and Syncs sent (each ends a segment with one
    /// ReadyForQuery) and ReadyForQuery messages seen: an op of segment
    /// `n` that is unconfirmed when segment `n` closes was skipped.
    pub segments_sent: u64,
    segments_closed: u64,
    /// The server reported an error in the segment not yet closed by a
    /// Sync, and skips everything until that Sync.
    pub upstream_error: bool,
    /// The server is in COPY FROM STDIN.
    pub copy_in: bool,
    /// Whether the last forwarded extended-protocol segment ended in Sync.
    pub last_segment_synced: bool,
    pub intent: String,
    pub recent: VecDeque<String>,
    pub cancel: Arc<CancelTarget>,
    /// Settings the server reported (ParameterStatus), by name.
    pub reported: BTreeMap<String, String>,
    /// The name of gavel's own statement and portal on this backend.
    own_name: String,
    /// When the credential the client logged in with stops being valid
    /// (a JWT's `exp`, an agent token's expiry): nothing runs after it.
    pub valid_until: Option<gavel_core::Timestamp>,
    /// What this session's own transaction created that the committed
    /// catalog does not show (read on its backend after it ran code gavel
    /// cannot see, dropped when the transaction ends).
    own_catalog: Option<crate::classify::Catalog>,
    /// The session ran such code since `own_catalog` was read.
    own_catalog_stale: bool,
    /// Why gavel can no longer read this session's statements as the
    /// server does (the server reported another client_encoding or
    /// standard_conforming_strings off): the session ends.
    unreadable: Option<String>,
}

/// The session's statements and portals as one query string or pipeline
/// sees them: its own earlier changes first, then the session's. Notes
/// whether it needed a table that is stale.
pub(crate) struct View<'a> {
    pub names: &'a Names,
    pub statements: &'a [(String, Option<Arc<Prepared>>)],
    pub portals: &'a [(String, Option<Portal>)],
    pub wanted_stale: Cell<bool>,
}

impl View<'_> {
    pub fn statement(&self, name: &str) -> Option<Arc<Prepared>> {
        if let Some((_, staged)) = self.statements.iter().rev().find(|(n, _)| n == name) {
            return staged.clone();
        }
        let found = self.names.statement(name).cloned();
        if found.is_none() && self.names.statements_stale && !name.is_empty() {
            self.wanted_stale.set(true);
        }
        found
    }

    pub fn portal(&self, name: &str) -> Option<Portal> {
        if let Some((_, staged)) = self.portals.iter().rev().find(|(n, _)| n == name) {
            return staged.clone();
        }
        let found = self.names.portal(name).cloned();
        if found.is_none() && self.names.portals_stale && !name.is_empty() {
            self.wanted_stale.set(true);
        }
        found
    }
}

fn resolved(p: &Prepared) -> Resolved {
    Resolved {
        class: p.classified.class,
        tables: p.classified.tables.clone(),
        text: p.text.clone(),
        changes_session: p
            .classified
            .facts()
            .map_or(p.classified.runs_unseen_code(), |f| f.changes_session()),
    }
}

impl classify::Names for View<'_> {
    fn statement(&self, name: &str) -> Option<Resolved> {
        View::statement(self, name).map(|p| resolved(&p))
    }

    fn portal(&self, name: &str) -> Option<Resolved> {
        View::portal(self, name).and_then(|p| p.statement.map(|s| resolved(&s)))
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Session {
    pub fn new(
        surface: Arc<PostgresSurface>,
        gate: Gate,
        principal: Principal,
        peer: SocketAddr,
        client: Stream,
        passed: Vec<(String, String)>,
    ) -> Session {
        Session {
            surface,
            gate,
            principal,
            source: peer.to_string(),
            client,
            upstream: None,
            passed,
            cbuf: BytesMut::with_capacity(BUFFER),
            ubuf: BytesMut::new(),
            cout: BytesMut::new(),
            to_server: ToServer::default(),
            passthrough: 0,
            tx_status: b'I',
            pending_ready: 0,
            receipts: VecDeque::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            forwarded_since_sync: false,
            discard: Discard::No,
            names: Names::default(),
            pending_ops: VecDeque::new(),
            segments_sent: 0,
            segments_closed: 0,
            upstream_error: false,
            copy_in: false,
            last_segment_synced: false,
            intent: String::new(),
            recent: VecDeque::new(),
            cancel: Arc::new(CancelTarget::new()),
            reported: BTreeMap::new(),
            own_name: format!("gavel_{:016x}", rand::random::<u64>()),
            valid_until: None,
            unreadable: None,
            own_catalog: None,
            own_catalog_stale: false,
        }
    }

    async fn connect_upstream(&mut self) -> Result<(), WireError> {
        match self.surface.upstream.connect(&self.passed).await {
            Ok(started) => {
                *self
                    .cancel
                    .upstream
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(started.key);
                for (k, v) in &started.parameters {
                    self.reported.insert(k.clone(), v.clone());
                }
                self.upstream = Some(ServerConn::new(started.stream));
                Ok(())
            }
            Err(e) => {
                self.client.write_all(&self.surface.unreachable(&e)).await?;
                Err(WireError::Protocol("upstream unavailable".into()))
            }
        }
    }

    pub async fn run(mut self) -> Result<(), WireError> {
        let result = self.run_inner().await;
        for slot in std::mem::take(&mut self.to_server.inflight) {
            slot.finish(Some("the connection ended before the result".into()));
        }
        if let Some(mut up) = self.upstream.take() {
            let mut bye = ToServer::default();
            bye.terminate();
            let _ = up.send(&mut bye).await;
        }
        result
    }

    async fn run_inner(&mut self) -> Result<(), WireError> {
        loop {
            let up = async {
                match self.upstream.as_mut() {
                    Some(u) => u.read_buf(&mut self.ubuf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                n = up => {
                    if n? == 0 {
                        return self.upstream_closed().await;
                    }
                    self.relay().await?;
                }
                n = self.client.read_buf(&mut self.cbuf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    while let Some(frame) = wire::split_frame(&mut self.cbuf, wire::MAX_MESSAGE)
                        .map_err(|e| self.protocol_error(e))?
                    {
                        if !self.on_client(frame).await? {
                            self.send_upstream().await?;
                            return Ok(());
                        }
                    }
                    self.send_upstream().await?;
                }
            }
        }
    }

    pub fn protocol_error(&mut self, e: WireError) -> WireError {
        wire::fatal(&mut self.cout, "08P01", &e.to_string());
        e
    }

    async fn upstream_closed(&mut self) -> Result<(), WireError> {
        // Whatever the server said last (a FATAL on shutdown) was relayed.
        self.relay().await?;
        for slot in std::mem::take(&mut self.to_server.inflight) {
            slot.finish(Some("the server closed the connection".into()));
        }
        Ok(())
    }

    pub async fn send_upstream(&mut self) -> Result<(), WireError> {
        if !self.cout.is_empty() {
            let out = std::mem::take(&mut self.cout);
            self.client.write_all(&out).await?;
            self.cout = out;
            self.cout.clear();
        }
        if self.to_server.is_empty() {
            return Ok(());
        }
        if self.upstream.is_none() {
            self.connect_upstream().await?;
        }
        if let Some(up) = self.upstream.as_mut() {
            up.send(&mut self.to_server).await?;
        }
        Ok(())
    }

    /// Relays every whole frame (and the available part of a streamed one)
    /// from the server to the client, noting what it needs.
    pub async fn relay(&mut self) -> Result<(), WireError> {
        let mut at = 0;
        let buf = &self.ubuf;
        let mut observed: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
        loop {
            if self.passthrough > 0 {
                let n = self.passthrough.min(buf.len() - at);
                at += n;
                self.passthrough -= n;
                if self.passthrough > 0 {
                    break;
                }
                continue;
            }
            if buf.len() - at < 5 {
                break;
            }
            let tag = buf[at];
            let len =
                u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
            if len < 4 {
                return Err(WireError::Protocol(
                    "the server sent a malformed message".into(),
                ));
            }
            if buf.len() - at < len + 1 {
                if matches!(tag, b'D' | b'd') && len > BUFFER {
                    // Stream a large row or COPY chunk through.
                    self.passthrough = len + 1;
                    continue;
                }
                break;
            }
            if matches!(
                tag,
                b'Z' | b'C' | b'E' | b'I' | b's' | b'1' | b'2' | b'3' | b'G' | b'S'
            ) {
                observed.push((tag, at + 5..at + len + 1));
            }
            at += len + 1;
        }
        for (tag, range) in observed {
            let body = self.ubuf[range].to_vec();
            self.observe(tag, &body);
        }
        if at == 0 {
            return Ok(());
        }
        let chunk = self.ubuf.split_to(at);
        self.release().await?;
        self.client.write_all(&chunk).await?;
        Ok(())
    }

    /// Waits until every decision record queued so far is durable: no
    /// result leaves gavel before the record of the decision that let it
    /// through.
    pub async fn release(&mut self) -> Result<(), WireError> {
        while let Some(receipt) = self.receipts.pop_front() {
            if let Err(e) = receipt.await {
                tracing::error!(error = %e, "audit append failed; withholding the result");
                let mut out = BytesMut::new();
                wire::fatal(
                    &mut out,
                    "58000",
                    "gavel could not make the audit record durable; the result is withheld",
                );
                self.client.write_all(&out).await?;
                return Err(WireError::Protocol("audit failure".into()));
            }
        }
        Ok(())
    }

    fn observe(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                self.tx_status = body.first().copied().unwrap_or(b'I');
                self.pending_ready = self.pending_ready.saturating_sub(1);
                // What the server did not confirm of the segment this ends,
                // it skipped; later segments' changes are still to come.
                if self.segments_closed >= self.segments_sent {
                    // A ReadyForQuery gavel did not expect: resynchronize
                    // rather than match later answers to the wrong ops, and
                    // ask the server what it holds.
                    self.pending_ops.clear();
                    self.segments_closed = self.segments_sent;
                    self.names.statements_stale = true;
                    self.names.portals_stale = true;
                } else {
                    let closed = self.segments_closed;
                    self.segments_closed += 1;
                    while self
                        .pending_ops
                        .front()
                        .is_some_and(|(seg, _)| *seg <= closed)
                    {
                        self.pending_ops.pop_front();
                    }
                }
                self.upstream_error = false;
                self.copy_in = false;
                if self.tx_status == b'I' {
                    self.names.transaction_ended();
                    // Committed or gone: only now can another connection
                    // read what the session's code created (a read made
                    // when it was forwarded may have come too early).
                    if self.has_own_objects() {
                        self.surface.catalog_may_have_changed();
                        self.own_catalog = None;
                        self.own_catalog_stale = true;
                    }
                }
                // Everything before this ReadyForQuery has ended; Executes
                // still waiting were skipped after an error.
                while let Some(slot) = self.to_server.inflight.pop_front() {
                    let simple = slot.simple;
                    let skipped = (!simple && slot.tags.is_empty() && slot.error.is_none())
                        .then(|| "not run: an earlier message of the pipeline failed".to_owned());
                    slot.finish(skipped);
                    if simple {
                        break;
                    }
                }
            }
            b'C' | b'I' | b's' => {
                let tag_text = match tag {
                    b'C' => wire::cstr(body).unwrap_or("").to_owned(),
                    b'I' => "EMPTY".into(),
                    _ => "SUSPENDED".into(),
                };
                if let Some(slot) = self.to_server.inflight.front_mut() {
                    slot.tags.push(tag_text);
                    if !slot.simple
                        && let Some(slot) = self.to_server.inflight.pop_front()
                    {
                        slot.finish(None);
                    }
                }
            }
            b'1' | b'2' | b'3' => match self.pending_ops.pop_front().map(|(_, op)| op) {
                Some(TableOp::Statement(name, Some(p))) => {
                    self.names.statements.insert(name, p);
                }
                Some(TableOp::Statement(name, None)) => {
                    self.names.statements.remove(&name);
                }
                Some(TableOp::Portal(name, Some(p))) => {
                    self.names.portals.insert(name, p);
                }
                Some(TableOp::Portal(name, None)) => {
                    self.names.portals.remove(&name);
                }
                None => {}
            },
            b'G' => {
                self.copy_in = true;
                // In the extended protocol the Sync sent with the Execute
                // that started COPY is ignored by the server: the client's
                // Sync after CopyDone gets the ReadyForQuery instead.
                if self.to_server.inflight.front().is_some_and(|s| !s.simple)
                    && self.last_segment_synced
                {
                    self.pending_ready = self.pending_ready.saturating_sub(1);
                    self.segments_sent = self.segments_sent.saturating_sub(1);
                    self.last_segment_synced = false;
                }
            }
            b'S' => {
                // The server tells the client every change of a reported
                // setting (DateStyle, TimeZone, …): gavel keeps the latest.
                let name = wire::cstr(body).unwrap_or("");
                let value = body
                    .get(name.len() + 1..)
                    .and_then(wire::cstr)
                    .unwrap_or("");
                if !name.is_empty() {
                    self.reported.insert(name.to_owned(), value.to_owned());
                }
                let lower = name.to_ascii_lowercase();
                if (lower == "client_encoding" && !value.eq_ignore_ascii_case("UTF8"))
                    || (lower == "standard_conforming_strings" && value != "on")
                {
                    self.unreadable = Some(format!(
                        "the server reports {name} = {value}: gavel can no longer read this session's statements as the server does"
                    ));
                }
            }
            b'E' => {
                self.copy_in = false;
                // Whatever failed may have done part of its work: what the
                // server holds is read again before the next judgement that
                // depends on it.
                self.names.statements_stale = true;
                self.names.portals_stale = true;
                // The server skips what follows only up to the next Sync:
                // if one is already on its way (every sent segment not yet
                // closed ends in one), later messages run normally.
                if self.segments_sent == self.segments_closed {
                    self.upstream_error = true;
                }
                let text = error_text(body);
                if let Some(slot) = self.to_server.inflight.front_mut() {
                    slot.error = Some(text);
                    if !slot.simple
                        && let Some(slot) = self.to_server.inflight.pop_front()
                    {
                        slot.finish(None);
                    }
                }
            }
            _ => {}
        }
    }

    /// Handles one whole client message; false ends the session.
    async fn on_client(&mut self, frame: BytesMut) -> Result<bool, WireError> {
        let tag = frame[0];
        if matches!(tag, b'd') {
            // COPY data: opaque, streamed to the server as sent.
            if let Ok(data) = Passive::new(frame) {
                self.to_server.passive(data);
            }
            return Ok(true);
        }
        let message = match wire::decode_frontend(&frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(error = %e, source = %self.source, "protocol violation from client");
                wire::fatal(&mut self.cout, "08P01", &e.to_string());
                self.flush_client().await?;
                return Ok(false);
            }
        };
        if self.copy_in
            && !matches!(
                message,
                PgWireFrontendMessage::CopyData(_)
                    | PgWireFrontendMessage::CopyDone(_)
                    | PgWireFrontendMessage::CopyFail(_)
                    | PgWireFrontendMessage::Sync(_)
                    | PgWireFrontendMessage::Flush(_)
            )
        {
            wire::fatal(
                &mut self.cout,
                "08P01",
                &format!(
                    "unexpected message type {:?} during COPY FROM STDIN",
                    tag as char
                ),
            );
            self.flush_client().await?;
            return Ok(false);
        }
        match message {
            PgWireFrontendMessage::Query(q) => {
                if !self.batch.is_empty() && self.discard == Discard::No {
                    self.run_batch(false).await?;
                }
                self.settle().await?;
                if self.discard != Discard::No || self.upstream_error {
                    // The server ignores a Query while it skips to Sync;
                    // so does gavel.
                    return Ok(true);
                }
                return self.simple_query(frame, &q.query).await;
            }
            PgWireFrontendMessage::Parse(_)
            | PgWireFrontendMessage::Bind(_)
            | PgWireFrontendMessage::Describe(_)
            | PgWireFrontendMessage::Execute(_)
            | PgWireFrontendMessage::Close(_) => {
                if self.discard == Discard::No {
                    self.batch_bytes += frame.len();
                    self.batch.push(frame);
                    if self.batch.len() > MAX_BATCH_MESSAGES || self.batch_bytes > MAX_BATCH_BYTES {
                        wire::fatal(
                            &mut self.cout,
                            "54000",
                            "too many extended-protocol messages without a Sync or Flush",
                        );
                        self.flush_client().await?;
                        return Ok(false);
                    }
                }
            }
            PgWireFrontendMessage::Flush(_) | PgWireFrontendMessage::Sync(_) if self.copy_in => {
                // Ignored by the server during COPY FROM STDIN.
                if let Ok(m) = Passive::new(frame) {
                    self.to_server.passive(m);
                }
            }
            PgWireFrontendMessage::Flush(_) => match self.discard {
                Discard::No => {
                    self.batch.push(frame);
                    return self.run_batch(false).await;
                }
                _ => self.flush_client().await?,
            },
            PgWireFrontendMessage::Sync(_) => {
                match std::mem::replace(&mut self.discard, Discard::No) {
                    Discard::No => {
                        self.batch.push(frame);
                        return self.run_batch(true).await;
                    }
                    Discard::AnswerSync => {
                        self.drain().await?;
                        wire::ready(&mut self.cout, self.tx_status);
                        self.flush_client().await?;
                    }
                    Discard::ForwardSync => {
                        if let Ok(m) = Passive::new(frame) {
                            self.to_server.passive(m);
                        }
                        self.sent_sync();
                        self.forwarded_since_sync = false;
                    }
                }
            }
            PgWireFrontendMessage::CopyDone(_) | PgWireFrontendMessage::CopyFail(_) => {
                self.copy_in = false;
                if let Ok(m) = Passive::new(frame) {
                    self.to_server.passive(m);
                }
            }
            PgWireFrontendMessage::Terminate(_) => return Ok(false),
            _ => {
                wire::fatal(
                    &mut self.cout,
                    "08P01",
                    &format!("unexpected message type {:?} after startup", tag as char),
                );
                self.flush_client().await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub async fn flush_client(&mut self) -> Result<(), WireError> {
        if !self.cout.is_empty() {
            self.release().await?;
            self.client.write_all(&self.cout).await?;
            self.cout.clear();
        }
        Ok(())
    }

    /// Forwards what is queued and relays until the server owes nothing,
    /// so an answer gavel writes itself lands after every earlier one.
    pub async fn drain(&mut self) -> Result<(), WireError> {
        self.send_upstream().await?;
        while self.pending_ready > 0 {
            if !self.relay_more().await? {
                self.pending_ready = 0;
                break;
            }
        }
        Ok(())
    }

    /// Reads what the server sends next and relays it; false when there is
    /// no server connection yet.
    async fn relay_more(&mut self) -> Result<bool, WireError> {
        let Some(up) = self.upstream.as_mut() else {
            return Ok(false);
        };
        if up.read_buf(&mut self.ubuf).await? == 0 {
            self.upstream_closed().await?;
            return Err(WireError::Protocol(
                "the server closed the connection".into(),
            ));
        }
        self.relay().await?;
        Ok(true)
    }

    /// Waits until the server has answered every Parse, Bind and Close sent
    /// (a Parse it refused must not count) and, while a segment without
    /// Sync is open, every Execute in it (an error there makes the server
    /// skip what follows). Then gavel decides against the server's real
    /// tables. While the server skips to Sync after an error, nothing sent
    /// now runs, so there is nothing to wait for.
    pub async fn settle(&mut self) -> Result<(), WireError> {
        self.send_upstream().await?;
        while !self.upstream_error
            && (!self.pending_ops.is_empty()
                || (self.forwarded_since_sync && self.to_server.inflight.iter().any(|s| !s.simple)))
        {
            if !self.relay_more().await? {
                break;
            }
        }
        Ok(())
    }

    /// Notes a Query or Sync sent: the server owes one more ReadyForQuery.
    pub fn sent_sync(&mut self) {
        self.pending_ready += 1;
        self.segments_sent += 1;
    }

    /// Runs one of gavel's own statements on this backend and returns its
    /// rows (text), consuming the server's answers: the client sees none of
    /// them but the asynchronous ones (notices, notifications, setting
    /// changes), which are relayed. Only when the server is idle for the
    /// client: every answer relayed, no pipeline open, no COPY, not in an
    /// aborted transaction.
    pub async fn gavel_query(
        &mut self,
        statement: GavelRead,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        if self.forwarded_since_sync || !self.batch.is_empty() || self.copy_in {
            return Err("an extended-protocol pipeline is open".into());
        }
        self.drain().await.map_err(|e| e.to_string())?;
        if self.tx_status == b'E' {
            return Err("the transaction is aborted".into());
        }
        if self.upstream.is_none() {
            if let GavelRead::Names = statement {
                // No backend yet: it holds nothing.
                return Ok(Vec::new());
            }
            self.connect_upstream().await.map_err(|e| e.to_string())?;
        }
        let own = self.own_name.clone();
        self.to_server.gavel(&statement, &own);
        let Some(up) = self.upstream.as_mut() else {
            return Err("no upstream connection".into());
        };
        up.send(&mut self.to_server)
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut failure = None;
        let mut asynchronous = BytesMut::new();
        loop {
            if self.ubuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.ubuf[1], self.ubuf[2], self.ubuf[3], self.ubuf[4]])
                        as usize;
                if len < 4 {
                    return Err("the server sent a malformed message".into());
                }
                if self.ubuf.len() > len {
                    let frame = self.ubuf.split_to(len + 1);
                    let body = &frame[5..];
                    match frame[0] {
                        b'D' => rows.push(data_row(body).ok_or("malformed row")?),
                        b'E' => failure = Some(error_text(body)),
                        b'Z' => {
                            self.tx_status = body.first().copied().unwrap_or(self.tx_status);
                            break;
                        }
                        b'N' | b'A' => asynchronous.extend_from_slice(&frame),
                        b'S' => {
                            self.observe(b'S', body);
                            asynchronous.extend_from_slice(&frame);
                        }
                        _ => {}
                    }
                    continue;
                }
            }
            let Some(up) = self.upstream.as_mut() else {
                return Err("no upstream connection".into());
            };
            match up.read_buf(&mut self.ubuf).await {
                Ok(0) | Err(_) => return Err("the server closed the connection".into()),
                Ok(_) => {}
            }
        }
        if !asynchronous.is_empty() {
            let _ = self.client.write_all(&asynchronous).await;
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(rows),
        }
    }

    /// Reads the session's prepared statements and cursors from the server,
    /// when the tables are stale and the server can be asked.
    pub async fn refresh_names(&mut self) {
        if !self.names.statements_stale && !self.names.portals_stale {
            return;
        }
        let rows = match self.gavel_query(GavelRead::Names).await {
            Ok(rows) => rows,
            Err(why) => {
                tracing::debug!(%why, "cannot read the session's names yet; they stay unknown");
                return;
            }
        };
        let own = self.own_name.clone();
        let rows: Vec<ServerRow> = rows
            .into_iter()
            .filter_map(|r| match r.as_slice() {
                [Some(kind), Some(name), Some(text), Some(flag)] if *name != own => {
                    Some(ServerRow {
                        kind: kind.clone(),
                        name: name.clone(),
                        text: text.clone(),
                        flag: flag == "t",
                    })
                }
                _ => None,
            })
            .collect();
        let surface = self.surface.clone();
        let classify = |text: &str| surface.classify(text, &classify::NoNames);
        self.names.resync(&rows, &classify, &surface.classifier);
    }

    /// Classifies `sql` as this session's server will run it: names it
    /// resolves are what the server holds (read from the server first when
    /// they may have changed), seen through `staged` changes of the
    /// pipeline being judged.
    pub async fn classify_fresh(
        &mut self,
        sql: &str,
        staged_statements: &[(String, Option<Arc<Prepared>>)],
        staged_portals: &[(String, Option<Portal>)],
    ) -> Arc<Classified> {
        self.refresh_own_catalog().await;
        let (classified, wanted_stale) = {
            let view = View {
                names: &self.names,
                statements: staged_statements,
                portals: staged_portals,
                wanted_stale: Cell::new(false),
            };
            let c = self
                .surface
                .classify_own(sql, &view, self.own_catalog.as_ref());
            (c, view.wanted_stale.get())
        };
        if !wanted_stale {
            return classified;
        }
        self.refresh_names().await;
        let view = View {
            names: &self.names,
            statements: staged_statements,
            portals: staged_portals,
            wanted_stale: Cell::new(false),
        };
        self.surface
            .classify_own(sql, &view, self.own_catalog.as_ref())
    }

    /// The session ran code gavel cannot see (it may have created
    /// functions, operators or casts): inside a transaction the committed
    /// catalog does not show them, so read them on the session's own
    /// backend.
    pub async fn refresh_own_catalog(&mut self) {
        if !self.own_catalog_stale {
            return;
        }
        if let Err(e) = self.drain().await {
            tracing::debug!(error = %e, "draining before reading the session's catalog failed");
            return;
        }
        match self.tx_status {
            // Everything it ran has ended and committed: the surface reads
            // the catalog again before anything of this session is judged.
            b'I' => {
                self.own_catalog = None;
                self.own_catalog_stale = false;
                self.surface.catalog_may_have_changed();
                self.surface.ensure_catalog().await;
            }
            b'T' => match self.gavel_query(GavelRead::Catalog).await {
                Ok(rows) => {
                    let mut catalog = crate::classify::Catalog::default();
                    for row in rows {
                        if let [Some(name), Some(kind)] = row.as_slice() {
                            catalog.add(name, kind);
                        }
                    }
                    self.own_catalog = Some(catalog);
                    self.own_catalog_stale = false;
                }
                Err(why) => {
                    tracing::debug!(%why, "cannot read the session's own catalog");
                }
            },
            // Aborted: only the transaction's end runs, and it takes the
            // uncommitted objects with it.
            _ => {}
        }
    }

    /// Whether the session has (or may have) objects of its own that the
    /// committed catalog does not show.
    pub fn has_own_objects(&self) -> bool {
        self.own_catalog_stale || self.own_catalog.is_some()
    }

    /// Code gavel cannot see was forwarded.
    pub fn ran_unseen_code(&mut self) {
        self.surface.catalog_may_have_changed();
        self.own_catalog_stale = true;
    }

    pub fn remember(&mut self, class: gavel_core::ActionClass, sql: &str, verdict: &str) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent
            .push_back(format!("{class} {verdict}: {}", truncate(sql.trim(), 200)));
    }

    pub fn action(
        &self,
        classified: &Classified,
        sql: &str,
        intent: String,
        params: Option<&Portal>,
    ) -> Action {
        let mut details = serde_json::Map::new();
        details.insert("tables".into(), serde_json::json!(classified.tables));
        // What EXECUTE and FETCH run, as the server holds it now.
        if let Some(runs) = classified
            .facts()
            .map(|f| &f.runs)
            .filter(|r| !r.is_empty())
        {
            details.insert("runs".into(), serde_json::json!(runs));
        }
        if let Some(p) = params.filter(|p| !p.params.is_empty()) {
            details.insert("params".into(), serde_json::Value::Array(p.params.to_vec()));
            details.insert("param_formats".into(), serde_json::json!(*p.formats));
            if let Some(types) = p
                .statement
                .as_ref()
                .map(|s| &s.param_types)
                .filter(|t| t.iter().any(|oid| *oid != 0))
            {
                details.insert("param_types".into(), serde_json::json!(**types));
            }
        }
        Action {
            principal: self.principal.clone(),
            resource: self.surface.resource.clone(),
            class: classified.class,
            operation: sql.to_owned(),
            details: serde_json::Value::Object(details),
            intent,
            data_context: serde_json::Value::Null,
            settings: Default::default(),
            surface: "postgres".into(),
            source: Some(self.source.clone()),
        }
    }

    /// Ends the session if its credential has expired: what the session
    /// sends after that is not the principal's any more. Returns whether it
    /// goes on.
    pub async fn credential_valid(&mut self) -> Result<bool, WireError> {
        use gavel_core::Clock as _;
        if let Some(why) = self.unreadable.clone() {
            self.drain().await?;
            wire::fatal(&mut self.cout, "0A000", &format!("gavel: {why}; reconnect"));
            self.flush_client().await?;
            return Ok(false);
        }
        match self.valid_until {
            Some(until) if gavel_core::SystemClock.now() >= until => {
                self.drain().await?;
                wire::fatal(
                    &mut self.cout,
                    "28000",
                    "gavel: the credential this session logged in with has expired; reconnect with a fresh token",
                );
                self.flush_client().await?;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    async fn simple_query(&mut self, frame: BytesMut, sql: &str) -> Result<bool, WireError> {
        if !self.credential_valid().await? {
            return Ok(false);
        }
        self.surface.ensure_catalog().await;
        let classified = self.classify_fresh(sql, &[], &[]).await;
        let facts = classified.facts();
        if let Some(intent) = facts.and_then(|f| f.intent_setting()) {
            self.intent = intent;
            self.drain().await?;
            wire::command_complete(
                &mut self.cout,
                if self.intent.is_empty() {
                    "RESET"
                } else {
                    "SET"
                },
            );
            wire::ready(&mut self.cout, self.tx_status);
            self.flush_client().await?;
            return Ok(true);
        }
        if let Some(name) = facts.and_then(|f| f.gavel_show()) {
            let name = name.to_owned();
            self.show_gavel(&name).await?;
            return Ok(true);
        }
        let intent = facts
            .and_then(|f| f.intent.clone())
            .unwrap_or_else(|| self.intent.clone());
        let action = self.action(&classified, sql, intent, None);
        match self.admit(action, &classified, sql, false, &[]).await {
            Ok(mut permitted) => {
                self.remember(classified.class, sql, "allowed");
                if let Some(r) = permitted.take_receipt() {
                    self.receipts.push_back(r);
                }
                if let Err(e) = self.to_server.query(&frame, sql, permitted) {
                    tracing::error!(error = %e.0, "an admission did not match its query; not forwarded");
                    self.drain().await?;
                    wire::error(
                        &mut self.cout,
                        "58000",
                        "gavel: internal error; the statement was not run",
                        None,
                        None,
                    );
                    wire::ready(&mut self.cout, self.tx_status);
                    self.flush_client().await?;
                    return Ok(true);
                }
                self.names.simple_query_sent();
                if classified.runs_unseen_code() {
                    self.ran_unseen_code();
                }
                if let Some(f) = facts {
                    self.names.statements_stale |= f.may_change_statements();
                    self.names.portals_stale |= f.may_change_portals();
                } else {
                    self.names.statements_stale = true;
                    self.names.portals_stale = true;
                }
                self.sent_sync();
            }
            Err(refusal) => {
                self.remember(classified.class, sql, "refused");
                self.drain().await?;
                let go_on = self.refuse(&refusal, &classified);
                wire::ready(&mut self.cout, self.tx_status);
                self.flush_client().await?;
                return Ok(go_on);
            }
        }
        Ok(true)
    }

    /// Answers `SHOW gavel.…` itself: `gavel.intent`, or `gavel.names`,
    /// what gavel believes this session's prepared statements and portals
    /// are (kind `s` or `c`, name, the text the server reports for it, and
    /// whether gavel will ask the server again before relying on it). For
    /// people debugging a client, and for the differential test that
    /// compares it with the server's own tables.
    async fn show_gavel(&mut self, name: &str) -> Result<(), WireError> {
        self.drain().await?;
        match name {
            "gavel.intent" => {
                wire::row_description(&mut self.cout, &["gavel.intent"]);
                let intent = self.intent.clone();
                wire::data_row(&mut self.cout, &[Some(&intent)]);
                wire::command_complete(&mut self.cout, "SHOW");
            }
            "gavel.names" => {
                wire::row_description(&mut self.cout, &["kind", "name", "statement", "stale"]);
                // First each table's own row: whether gavel will read it
                // from the server again before relying on it.
                let stale = |s: bool| Some(if s { "t" } else { "f" });
                wire::data_row(
                    &mut self.cout,
                    &[Some("s"), None, None, stale(self.names.statements_stale)],
                );
                wire::data_row(
                    &mut self.cout,
                    &[Some("c"), None, None, stale(self.names.portals_stale)],
                );
                let mut rows: Vec<(&str, String, String, bool)> = Vec::new();
                for (n, p) in &self.names.statements {
                    rows.push((
                        "s",
                        n.clone(),
                        p.reported().to_owned(),
                        self.names.statements_stale,
                    ));
                }
                for (n, p) in &self.names.portals {
                    let text = p
                        .statement
                        .as_ref()
                        .map(|s| s.reported().to_owned())
                        .unwrap_or_default();
                    rows.push(("c", n.clone(), text, self.names.portals_stale));
                }
                rows.sort();
                for (kind, n, text, stale) in &rows {
                    wire::data_row(
                        &mut self.cout,
                        &[
                            Some(kind),
                            Some(n),
                            Some(text),
                            Some(if *stale { "t" } else { "f" }),
                        ],
                    );
                }
                wire::command_complete(&mut self.cout, &format!("SELECT {}", rows.len() + 2));
            }
            other => {
                wire::error(
                    &mut self.cout,
                    "42704",
                    &format!("unrecognized gavel setting \"{other}\" (gavel.intent, gavel.names)"),
                    None,
                    None,
                );
            }
        }
        wire::ready(&mut self.cout, self.tx_status);
        self.flush_client().await
    }

    /// Writes `refusal` to the client as an ErrorResponse (a FATAL one for
    /// a revoked principal). Returns whether the session goes on.
    pub fn refuse(&mut self, refusal: &Refusal, classified: &Classified) -> bool {
        let r = crate::hold::pg_refusal(refusal, classified, &self.gate);
        if matches!(refusal, Refusal::Revoked { .. }) {
            wire::fatal(&mut self.cout, r.code, &r.message);
            return false;
        }
        wire::error(
            &mut self.cout,
            r.code,
            &r.message,
            r.detail.as_deref(),
            r.hint.as_deref(),
        );
        true
    }
}

/// `message (SQLSTATE code)` of an ErrorResponse body.
pub(crate) fn error_text(body: &[u8]) -> String {
    let mut message = String::new();
    let mut code = String::new();
    let mut fields = body;
    while let Some((&t, rest)) = fields.split_first() {
        if t == 0 {
            break;
        }
        let value = wire::cstr(rest).unwrap_or("");
        match t {
            b'M' => message = value.to_owned(),
            b'C' => code = value.to_owned(),
            _ => {}
        }
        fields = &rest[(value.len() + 1).min(rest.len())..];
    }
    format!("{message} (SQLSTATE {code})")
}

/// The columns of a DataRow body, as text.
fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::with_capacity(count.max(0) as usize);
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

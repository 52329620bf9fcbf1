//! The listener and one connection's life: TLS and token authentication,
//! then every statement through the gate, forwarded as the client's own
//! bytes.
//!
//! One task owns both sockets of a connection and moves bytes in whichever
//! direction has them; nothing crosses threads per statement. Results are
//! relayed frame by frame as they arrive (a large row or COPY chunk streams
//! through without being held whole).

use crate::classify::Classifier;
use crate::shape::{ShapeCache, shape};
use crate::upstream::{Stream, Upstream, simple_query};
use crate::wire::{self, WireError};
use bytes::{Bytes, BytesMut};
use gavel_config::PostgresResourceConfig;
use gavel_core::{
    Action, ActionClass, ApprovalRequest, AuditReceipt, AuditRecord, Decision, Gate, Outcome,
    PolicyVerdict, Principal, ReadAudit, ReadRecord, RequestId, RequestState, Resource, Verdict,
};
use gavel_identity::{AuthError, Authenticator};
use pgwire::messages::PgWireFrontendMessage;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What one statement (or query string) was classified as.
#[derive(Debug)]
pub struct Classified {
    /// The most privileged class among its statements.
    pub class: ActionClass,
    /// Tables it touches.
    pub tables: Vec<String>,
    /// Why, in words.
    pub reason: String,
    /// Each statement's parse-tree node name (`SelectStmt`, …).
    pub kinds: Vec<String>,
    /// Each statement's class.
    pub classes: Vec<ActionClass>,
}

/// Startup parameters passed on to the upstream. Anything else (notably
/// `options`, which can set any server setting, the role included) is
/// refused.
const PASSED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
];

/// How long a client may take to log in.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of extended-protocol messages queued before a Sync or Flush.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Most messages queued before a Sync or Flush.
const MAX_BATCH_MESSAGES: usize = 10_000;

/// How many of a session's statements reviewers see.
const RECENT: usize = 10;

/// Per-connection buffer size to start with; they grow with the traffic.
const BUFFER: usize = 4096;

/// A cancel key gavel handed out, and what it cancels.
struct CancelTarget {
    /// Wakes a statement held for approval.
    hold: Notify,
    /// The upstream backend's own key, once connected.
    upstream: Mutex<Option<(i32, i32)>>,
}

/// One `[[resources.postgres]]` listener.
pub struct PostgresSurface {
    resource: Resource,
    listen: SocketAddr,
    upstream: Upstream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    require_tls: bool,
    classifier: Classifier,
    classes: ShapeCache<Arc<Classified>>,
    explain: bool,
    /// Whether allowed reads wait for their record to be durable before
    /// their result is released (`audit.read_durability`).
    durable_reads: bool,
    explainer: tokio::sync::Mutex<Option<Stream>>,
    hold: Duration,
    public_url: String,
    cancels: Mutex<HashMap<(i32, i32), Arc<CancelTarget>>>,
    /// What the server reported at startup, replayed to clients before
    /// gavel opens their upstream connection (at their first statement).
    server_parameters: Mutex<Option<Vec<(String, String)>>>,
}

impl std::fmt::Debug for PostgresSurface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSurface")
            .field("resource", &self.resource.name)
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .finish()
    }
}

fn load_tls(
    i: usize,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let field = |f: &str| format!("resources.postgres[{i}].{f}");
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("key `{}`: {}: {e}", field("tls_cert_file"), cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("key `{}`: {}: {e}", field("tls_key_file"), key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("key `{}`: {e}", field("tls_cert_file")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl PostgresSurface {
    /// Builds the listener's settings from `[[resources.postgres]]` entry
    /// `i`. Errors name the key.
    pub fn from_config(
        i: usize,
        config: &PostgresResourceConfig,
        hold: Duration,
        public_url: &str,
        durable_reads: bool,
    ) -> Result<PostgresSurface, String> {
        let upstream = Upstream::from_config(i, config)?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(load_tls(i, cert, key)?),
            _ => None,
        };
        let mut side_effects = Vec::new();
        for (name, class) in &config.side_effect_functions {
            let class: ActionClass = class.parse().map_err(|e| {
                format!("key `resources.postgres[{i}].side_effect_functions.{name}`: {e}")
            })?;
            side_effects.push((name.clone(), class));
        }
        Ok(PostgresSurface {
            resource: Resource {
                name: config.name.clone(),
                kind: "postgres".into(),
                tags: config.tags.clone(),
            },
            listen: config.listen,
            upstream,
            tls,
            require_tls: config.require_tls,
            classifier: Classifier::new(&side_effects, &config.read_only_functions),
            classes: ShapeCache::default(),
            explain: config.explain_estimates,
            durable_reads,
            explainer: tokio::sync::Mutex::new(None),
            hold,
            public_url: public_url.trim_end_matches('/').to_owned(),
            cancels: Mutex::new(HashMap::new()),
            server_parameters: Mutex::new(None),
        })
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.resource.name
    }

    /// Where clients connect.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        gate: Gate,
        auth: Arc<Authenticator>,
    ) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, resource = %self.resource.name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let surface = self.clone();
            let gate = gate.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                metrics::gauge!("gavel_pg_connections", "resource" => surface.resource.name.clone())
                    .increment(1.0);
                if let Err(e) = surface.clone().connection(tcp, peer, gate, auth).await {
                    tracing::debug!(error = %e, %peer, "postgres connection ended");
                }
                metrics::gauge!("gavel_pg_connections", "resource" => surface.resource.name.clone())
                    .decrement(1.0);
            });
        }
    }

    fn classify(
        &self,
        sql: &str,
        prepared: &dyn Fn(&str) -> Option<ActionClass>,
    ) -> Arc<Classified> {
        let key = shape(sql);
        if let Some(hit) = key.as_deref().and_then(|k| self.classes.get(k)) {
            return hit;
        }
        let c = self.classifier.classify(sql, prepared);
        let classified = Arc::new(Classified {
            class: c.class,
            tables: c.tables,
            reason: c.reason,
            kinds: c.statements.iter().map(|s| s.kind.clone()).collect(),
            classes: c.statements.iter().map(|s| s.class).collect(),
        });
        // EXECUTE depends on the session's prepared statements, not on the
        // text alone. What the parser rejects is not cached either: a value
        // the grammar refuses (`SECOND(1.5)`) must not make a valid
        // statement of the same shape unknown.
        // COPY is not cached at all: `FROM ''` parses like `FROM STDIN`, so
        // its file name is a literal that changes the class. EXECUTE can
        // hide inside EXPLAIN, hence the textual test.
        let cacheable = !classified.kinds.is_empty()
            && !classified.kinds.iter().any(|k| k == "CopyStmt")
            && !sql.to_ascii_lowercase().contains("execute");
        if let (Some(k), true) = (key, cacheable) {
            self.classes.insert(k, classified.clone());
        }
        classified
    }

    async fn cancel(&self, key: (i32, i32)) {
        let target = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let Some(target) = target else {
            return;
        };
        target.hold.notify_waiters();
        let upstream = *target.upstream.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(up) = upstream
            && let Err(e) = self.upstream.cancel(up).await
        {
            tracing::warn!(error = %e, "forwarding a cancel request failed");
        }
    }

    /// Estimated rows an UPDATE or DELETE would touch, from `EXPLAIN` on
    /// gavel's own connection, inside a read-only transaction that is
    /// always rolled back. The statement itself is never executed.
    async fn estimate_rows(&self, sql: &str) -> Result<f64, String> {
        let mut slot = self.explainer.lock().await;
        if slot.is_none() {
            let started = self
                .upstream
                .connect(&[("application_name".into(), "gavel-explain".into())])
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            *slot = Some(started.stream);
        }
        let Some(conn) = slot.as_mut() else {
            return Err("no connection".into());
        };
        let result = async {
            simple_query(conn, "BEGIN READ ONLY").await?;
            simple_query(conn, "SET LOCAL statement_timeout = 2000").await?;
            let plan = simple_query(conn, &format!("EXPLAIN (FORMAT JSON) {sql}")).await;
            simple_query(conn, "ROLLBACK").await?;
            plan
        };
        let rows = match tokio::time::timeout(Duration::from_secs(5), result).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                if matches!(e, crate::upstream::UpstreamError::Refused(_)) {
                    return Err(e.to_string());
                }
                *slot = None;
                return Err(e.to_string());
            }
            Err(_) => {
                *slot = None;
                return Err("timed out".into());
            }
        };
        let plan: serde_json::Value = rows
            .first()
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or("EXPLAIN returned no plan")?;
        let top = &plan[0]["Plan"];
        // UPDATE and DELETE plan as ModifyTable (0 rows) over the scan that
        // finds the rows.
        let rows = top["Plans"]
            .as_array()
            .and_then(|children| {
                children
                    .iter()
                    .filter_map(|c| c["Plan Rows"].as_f64())
                    .reduce(f64::max)
            })
            .or_else(|| top["Plan Rows"].as_f64())
            .ok_or("the plan has no row estimate")?;
        Ok(rows)
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        gate: Gate,
        auth: Arc<Authenticator>,
    ) -> Result<(), WireError> {
        tcp.set_nodelay(true)?;
        let mut client = Stream::Plain(tcp);
        let mut tls = false;
        // Like PostgreSQL's authentication_timeout: a client that does not
        // finish logging in does not hold a connection for ever.
        let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
        let late = |_| WireError::Protocol("login timed out".into());
        let startup = loop {
            let packet = tokio::time::timeout_at(deadline, wire::read_startup_packet(&mut client))
                .await
                .map_err(late)??;
            match wire::startup_code(&packet) {
                wire::SSL_REQUEST if !tls => match (&self.tls, client) {
                    (Some(acceptor), Stream::Plain(mut tcp)) => {
                        tcp.write_all(b"S").await?;
                        let accepted = tokio::time::timeout_at(deadline, acceptor.accept(tcp))
                            .await
                            .map_err(late)??;
                        client = Stream::Server(Box::new(accepted));
                        tls = true;
                    }
                    (_, mut other) => {
                        other.write_all(b"N").await?;
                        client = other;
                    }
                },
                wire::GSSENC_REQUEST if !tls => client.write_all(b"N").await?,
                wire::CANCEL_REQUEST => {
                    let key = wire::decode_cancel(&packet)?;
                    self.cancel(key).await;
                    return Ok(());
                }
                code if code >> 16 == 3 => break wire::decode_startup(&packet)?,
                code => {
                    let mut out = BytesMut::new();
                    wire::fatal(
                        &mut out,
                        "0A000",
                        &format!(
                            "unsupported frontend protocol {}.{}: gavel speaks 3.0",
                            code >> 16,
                            code & 0xffff
                        ),
                    );
                    client.write_all(&out).await?;
                    return Ok(());
                }
            }
        };
        let mut out = BytesMut::with_capacity(BUFFER);
        let refuse = |out: &mut BytesMut, code: &str, message: &str| {
            wire::fatal(out, code, message);
        };
        if startup.protocol_number_minor > 0 {
            let options = startup
                .parameters
                .keys()
                .filter(|k| k.starts_with("_pq_."))
                .cloned()
                .collect();
            wire::negotiate_protocol(&mut out, options);
        }
        if self.require_tls && !tls {
            refuse(
                &mut out,
                "28000",
                &format!(
                    "resource {} accepts only TLS connections (use sslmode=require)",
                    self.resource.name
                ),
            );
            client.write_all(&out).await?;
            return Ok(());
        }
        if !tls && !peer.ip().is_loopback() {
            refuse(
                &mut out,
                "28000",
                "gavel takes a token as the password only over TLS or from loopback (use sslmode=require)",
            );
            client.write_all(&out).await?;
            return Ok(());
        }
        let user = startup.parameters.get("user").cloned().unwrap_or_default();
        if user.is_empty() {
            refuse(&mut out, "28000", "no user name in the startup packet");
            client.write_all(&out).await?;
            return Ok(());
        }
        if let Some(db) = startup.parameters.get("database")
            && !(db.is_empty() || *db == self.resource.name || db == self.upstream.database())
        {
            refuse(
                &mut out,
                "3D000",
                &format!(
                    "database \"{db}\" is not served here: this listener serves resource {} (database \"{}\")",
                    self.resource.name,
                    self.upstream.database()
                ),
            );
            client.write_all(&out).await?;
            return Ok(());
        }
        let mut passed = Vec::new();
        for (k, v) in &startup.parameters {
            let lower = k.to_ascii_lowercase();
            if matches!(lower.as_str(), "user" | "database") || lower.starts_with("_pq_.") {
                continue;
            }
            if lower == "options" && v.trim().is_empty() {
                continue;
            }
            if lower == "client_encoding" {
                // gavel reads statements as UTF-8; under another encoding
                // the server could split the same bytes into other tokens.
                let value = v.to_ascii_lowercase();
                if !matches!(value.as_str(), "utf8" | "utf-8" | "unicode") {
                    refuse(
                        &mut out,
                        "0A000",
                        &format!(
                            "client_encoding \"{v}\" is not supported through gavel: use UTF8"
                        ),
                    );
                    client.write_all(&out).await?;
                    return Ok(());
                }
                continue;
            }
            if !PASSED_PARAMETERS.contains(&lower.as_str()) {
                refuse(
                    &mut out,
                    "0A000",
                    &format!(
                        "startup parameter \"{k}\" is not allowed through gavel (allowed: {})",
                        PASSED_PARAMETERS.join(", ")
                    ),
                );
                client.write_all(&out).await?;
                return Ok(());
            }
            passed.push((k.clone(), v.clone()));
        }
        passed.push(("client_encoding".into(), "UTF8".into()));
        wire::ask_password(&mut out);
        client.write_all(&out).await?;
        out.clear();
        let mut inbox = BytesMut::with_capacity(256);
        let frame = loop {
            if let Some(f) = wire::split_frame(&mut inbox, wire::MAX_AUTH_MESSAGE)? {
                break f;
            }
            if tokio::time::timeout_at(deadline, client.read_buf(&mut inbox))
                .await
                .map_err(late)??
                == 0
            {
                return Ok(());
            }
        };
        let token = match (frame[0], wire::decode_frontend(&frame)) {
            (b'p', Ok(PgWireFrontendMessage::PasswordMessageFamily(p))) => p
                .into_password()
                .map(|p| p.password)
                .map_err(|e| WireError::Protocol(e.to_string()))?,
            _ => {
                refuse(&mut out, "08P01", "expected a password message");
                client.write_all(&out).await?;
                return Ok(());
            }
        };
        let principal = match auth.authenticate(&token).await {
            Ok(p) => p,
            Err(e) => {
                let why = match e {
                    AuthError::Revoked(_) => "the token was revoked",
                    AuthError::Expired(_) => "the token has expired",
                    _ => "the password must be a valid gavel token",
                };
                tracing::info!(%peer, %user, resource = %self.resource.name, "postgres authentication failed: {why}");
                refuse(
                    &mut out,
                    "28P01",
                    &format!("password authentication failed for user \"{user}\": {why}"),
                );
                client.write_all(&out).await?;
                return Ok(());
            }
        };
        drop(token);

        let mut session = Session {
            surface: self.clone(),
            gate,
            principal,
            source: peer.to_string(),
            client,
            upstream: None,
            passed,
            cbuf: BytesMut::with_capacity(BUFFER),
            ubuf: BytesMut::new(),
            cout: BytesMut::new(),
            uout: BytesMut::new(),
            passthrough: 0,
            tx_status: b'I',
            pending_ready: 0,
            slots: VecDeque::new(),
            receipts: VecDeque::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            forwarded_since_sync: false,
            discard: Discard::No,
            statements: HashMap::new(),
            portals: HashMap::new(),
            pending_ops: VecDeque::new(),
            segments_sent: 0,
            segments_closed: 0,
            upstream_error: false,
            copy_in: false,
            last_segment_synced: false,
            intent: String::new(),
            recent: VecDeque::new(),
            cancel: Arc::new(CancelTarget {
                hold: Notify::new(),
                upstream: Mutex::new(None),
            }),
        };
        // Replay the server's parameters: cached from an earlier connection,
        // else learned by connecting now.
        let cached = self
            .server_parameters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let parameters = match cached {
            Some(p) => p,
            None => match self.learn_server_parameters().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, resource = %self.resource.name, "cannot open the upstream connection");
                    let mut out = BytesMut::new();
                    wire::fatal(
                        &mut out,
                        "08006",
                        &format!(
                            "gavel cannot reach the database behind resource {}; the gateway log has the reason",
                            self.resource.name
                        ),
                    );
                    session.client.write_all(&out).await?;
                    return Ok(());
                }
            },
        };
        let key = self.register(session.cancel.clone());
        let _registered = Registered {
            surface: self.clone(),
            key,
        };
        let mut out = BytesMut::with_capacity(BUFFER);
        wire::auth_ok(&mut out);
        for (name, value) in &parameters {
            // What the client asked for wins over the server's default.
            let asked = session
                .passed
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            wire::parameter_status(&mut out, name, asked.unwrap_or(value));
        }
        wire::parameter_status(&mut out, "gavel.resource", &self.resource.name);
        wire::backend_key(&mut out, key.0, key.1);
        wire::ready(&mut out, b'I');
        session.client.write_all(&out).await?;
        tracing::debug!(%peer, principal = %session.principal.qualified_id(), resource = %self.resource.name, "postgres session started");
        session.run().await
    }

    /// The server's default parameters, from a connection of gavel's own
    /// (never from a client's session, whose settings are its own).
    async fn learn_server_parameters(
        &self,
    ) -> Result<Vec<(String, String)>, crate::upstream::UpstreamError> {
        let mut started = self
            .upstream
            .connect(&[("client_encoding".into(), "UTF8".into())])
            .await?;
        let mut bye = BytesMut::new();
        postgres_protocol::message::frontend::terminate(&mut bye);
        let _ = started.stream.write_all(&bye).await;
        *self
            .server_parameters
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(started.parameters.clone());
        Ok(started.parameters)
    }

    fn register(&self, target: Arc<CancelTarget>) -> (i32, i32) {
        let mut map = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = ((rand::random::<u32>() >> 1) as i32, rand::random::<i32>());
            if key.0 != 0 && !map.contains_key(&key) {
                map.insert(key, target);
                return key;
            }
        }
    }
}

/// Removes a connection's cancel key when it ends.
struct Registered {
    surface: Arc<PostgresSurface>,
    key: (i32, i32),
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.surface
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// A prepared statement (protocol-level) as gavel saw it parsed.
#[derive(Debug)]
struct Prepared {
    text: Arc<str>,
    classified: Arc<Classified>,
    intent: Option<String>,
}

/// A bound portal.
#[derive(Debug, Clone)]
struct Portal {
    statement: Option<Arc<Prepared>>,
    params: Arc<Vec<serde_json::Value>>,
    /// Each parameter's format code (0 text, 1 binary): part of what an
    /// approval binds, so `\\x41` as text and `A` in binary differ.
    formats: Arc<Vec<i16>>,
}

/// A change to the statement and portal tables, applied when the server
/// confirms it.
enum TableOp {
    Statement(String, Option<Arc<Prepared>>),
    Portal(String, Option<Portal>),
}

/// A forwarded statement whose outcome is still to come.
struct Slot {
    action: Action,
    request: Option<RequestId>,
    /// A simple query ends at ReadyForQuery, an Execute at its completion.
    simple: bool,
    tags: Vec<String>,
    error: Option<String>,
    /// An allowed read's decision record, written with the outcome
    /// (`audit.read_durability = "buffered"`).
    deferred: Option<Box<AuditRecord>>,
}

/// After a refused statement in an extended-protocol pipeline, the rest up
/// to Sync is skipped, as PostgreSQL itself skips after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    No,
    /// Nothing of the pipeline reached the server: answer Sync here.
    AnswerSync,
    /// Part of it did: the server raised the refusal; forward Sync.
    ForwardSync,
}

/// Why a statement does not run, as the client will read it.
struct Refusal {
    code: &'static str,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

enum Decided {
    Allow {
        request: Option<RequestId>,
        record: ReadRecord,
    },
    Refuse(Refusal),
}

struct Session {
    surface: Arc<PostgresSurface>,
    gate: Gate,
    principal: Principal,
    source: String,
    client: Stream,
    upstream: Option<Stream>,
    passed: Vec<(String, String)>,
    /// Bytes from the client not yet handled.
    cbuf: BytesMut,
    /// Bytes from the server not yet relayed.
    ubuf: BytesMut,
    /// Bytes gavel itself answers the client with.
    cout: BytesMut,
    /// Bytes waiting to go to the server.
    uout: BytesMut,
    /// Rest of a large row or COPY chunk being streamed through.
    passthrough: usize,
    tx_status: u8,
    /// ReadyForQuery messages the server still owes (one per Query or Sync
    /// forwarded).
    pending_ready: usize,
    slots: VecDeque<Slot>,
    receipts: VecDeque<AuditReceipt>,
    /// Extended-protocol messages since the last Sync or Flush.
    batch: Vec<BytesMut>,
    batch_bytes: usize,
    forwarded_since_sync: bool,
    discard: Discard,
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Portal>,
    /// Parse, Bind and Close sent and not yet confirmed, in order.
    pending_ops: VecDeque<(u64, TableOp)>,
    /// Queries and Syncs sent (each ends a segment with one
    /// ReadyForQuery) and ReadyForQuery messages seen: an op of segment
    /// `n` that is unconfirmed when segment `n` closes was skipped.
    segments_sent: u64,
    segments_closed: u64,
    /// The server reported an error in the segment not yet closed by a
    /// Sync, and skips everything until that Sync.
    upstream_error: bool,
    /// The server is in COPY FROM STDIN.
    copy_in: bool,
    /// Whether the last forwarded extended-protocol segment ended in Sync.
    last_segment_synced: bool,
    intent: String,
    recent: VecDeque<String>,
    cancel: Arc<CancelTarget>,
}

/// A leading `/* intent: … */` comment.
fn comment_intent(sql: &str) -> Option<String> {
    let rest = sql.trim_start().strip_prefix("/*")?;
    let end = rest.find("*/")?;
    let body = rest[..end].trim();
    let lower = body.get(..7)?.to_ascii_lowercase();
    (lower == "intent:").then(|| body[7..].trim().to_owned())
}

/// `SET gavel.intent = '…'` / `RESET gavel.intent`: `Some(new intent)`.
fn intent_setting(sql: &str) -> Option<String> {
    let t = sql.trim_start();
    let head = t.get(..5)?.to_ascii_lowercase();
    if !(head.starts_with("set") || head.starts_with("reset"))
        || !t.to_ascii_lowercase().contains("gavel.intent")
    {
        return None;
    }
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [stmt] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let tree = serde_json::to_value(stmt).ok()?;
    let set = tree.pointer("/stmt/node/VariableSetStmt")?;
    if set.get("name").and_then(|n| n.as_str()) != Some("gavel.intent") {
        return None;
    }
    // kind 1 = VAR_SET_VALUE; anything else (RESET, SET … TO DEFAULT)
    // clears it.
    if set.get("kind").and_then(|k| k.as_i64()) != Some(1) {
        return Some(String::new());
    }
    set.pointer("/args/0/node/AConst/val/Sval/sval")
        .or_else(|| set.pointer("/args/0/node/AConst/sval/sval"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or(Some(String::new()))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Each parameter's format code, from Bind's list (empty: all text; one:
/// all the same).
fn param_formats(count: usize, formats: &[i16]) -> Vec<i16> {
    (0..count)
        .map(|i| match formats {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        })
        .collect()
}

fn param_values(params: &[Option<Bytes>], formats: &[i16]) -> Vec<serde_json::Value> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let binary = match formats {
                [] => false,
                [one] => *one == 1,
                many => many.get(i) == Some(&1),
            };
            match p {
                None => serde_json::Value::Null,
                Some(b) if !binary => match std::str::from_utf8(b) {
                    Ok(s) => serde_json::Value::String(s.to_owned()),
                    Err(_) => serde_json::Value::String(format!("\\x{}", hex::encode(b))),
                },
                Some(b) => serde_json::Value::String(format!("\\x{}", hex::encode(b))),
            }
        })
        .collect()
}

impl Session {
    async fn connect_upstream(&mut self) -> Result<(), WireError> {
        match self.surface.upstream.connect(&self.passed).await {
            Ok(started) => {
                *self
                    .cancel
                    .upstream
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(started.key);
                self.upstream = Some(started.stream);
                Ok(())
            }
            Err(e) => {
                // Logged in full; the client learns only that it failed, not
                // what the server said about gavel's credentials.
                tracing::error!(error = %e, resource = %self.surface.resource.name, "cannot open the upstream connection");
                let mut out = BytesMut::new();
                wire::fatal(
                    &mut out,
                    "08006",
                    &format!(
                        "gavel cannot reach the database behind resource {}; the gateway log has the reason",
                        self.surface.resource.name
                    ),
                );
                self.client.write_all(&out).await?;
                Err(WireError::Protocol("upstream unavailable".into()))
            }
        }
    }

    async fn run(mut self) -> Result<(), WireError> {
        let result = self.run_inner().await;
        for slot in std::mem::take(&mut self.slots) {
            self.finish(slot, Some("the connection ended before the result".into()));
        }
        if let Some(mut up) = self.upstream.take() {
            let mut bye = BytesMut::new();
            postgres_protocol::message::frontend::terminate(&mut bye);
            let _ = up.write_all(&bye).await;
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

    fn protocol_error(&mut self, e: WireError) -> WireError {
        wire::fatal(&mut self.cout, "08P01", &e.to_string());
        e
    }

    async fn upstream_closed(&mut self) -> Result<(), WireError> {
        // Whatever the server said last (a FATAL on shutdown) was relayed.
        self.relay().await?;
        for slot in std::mem::take(&mut self.slots) {
            self.finish(slot, Some("the server closed the connection".into()));
        }
        Ok(())
    }

    async fn send_upstream(&mut self) -> Result<(), WireError> {
        if !self.cout.is_empty() {
            let out = std::mem::take(&mut self.cout);
            self.client.write_all(&out).await?;
            self.cout = out;
            self.cout.clear();
        }
        if self.uout.is_empty() {
            return Ok(());
        }
        if self.upstream.is_none() {
            self.connect_upstream().await?;
        }
        if let Some(up) = self.upstream.as_mut() {
            up.write_all(&self.uout).await?;
        }
        self.uout.clear();
        Ok(())
    }

    /// Relays every whole frame (and the available part of a streamed one)
    /// from the server to the client, noting what it needs.
    async fn relay(&mut self) -> Result<(), WireError> {
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
                b'Z' | b'C' | b'E' | b'I' | b's' | b'1' | b'2' | b'3' | b'G'
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
    async fn release(&mut self) -> Result<(), WireError> {
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
                    // rather than match later answers to the wrong ops.
                    self.pending_ops.clear();
                    self.segments_closed = self.segments_sent;
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
                    // Portals end with their transaction.
                    self.portals.clear();
                }
                // Everything before this ReadyForQuery has ended; Executes
                // still waiting were skipped after an error.
                while let Some(slot) = self.slots.pop_front() {
                    let simple = slot.simple;

                    let skipped = (!simple && slot.tags.is_empty() && slot.error.is_none())
                        .then(|| "not run: an earlier message of the pipeline failed".to_owned());
                    self.finish(slot, skipped);
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
                if let Some(slot) = self.slots.front_mut() {
                    slot.tags.push(tag_text);
                    if !slot.simple
                        && let Some(slot) = self.slots.pop_front()
                    {
                        self.finish(slot, None);
                    }
                }
            }
            b'1' | b'2' | b'3' => match self.pending_ops.pop_front().map(|(_, op)| op) {
                Some(TableOp::Statement(name, Some(p))) => {
                    self.statements.insert(name, p);
                }
                Some(TableOp::Statement(name, None)) => {
                    self.statements.remove(&name);
                }
                Some(TableOp::Portal(name, Some(p))) => {
                    self.portals.insert(name, p);
                }
                Some(TableOp::Portal(name, None)) => {
                    self.portals.remove(&name);
                }
                None => {}
            },
            b'G' => {
                self.copy_in = true;
                // In the extended protocol the Sync sent with the Execute
                // that started COPY is ignored by the server: the client's
                // Sync after CopyDone gets the ReadyForQuery instead.
                if self.slots.front().is_some_and(|s| !s.simple) && self.last_segment_synced {
                    self.pending_ready = self.pending_ready.saturating_sub(1);
                    self.segments_sent = self.segments_sent.saturating_sub(1);
                    self.last_segment_synced = false;
                }
            }
            b'E' => {
                self.copy_in = false;
                // The server skips what follows only up to the next Sync:
                // if one is already on its way (every sent segment not yet
                // closed ends in one), later messages run normally.
                if self.segments_sent == self.segments_closed {
                    self.upstream_error = true;
                }
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
                let text = format!("{message} (SQLSTATE {code})");
                if let Some(slot) = self.slots.front_mut() {
                    slot.error = Some(text);
                    if !slot.simple
                        && let Some(slot) = self.slots.pop_front()
                    {
                        self.finish(slot, None);
                    }
                }
            }
            _ => {}
        }
    }

    /// Audits how a forwarded statement ended.
    fn finish(&self, slot: Slot, override_error: Option<String>) {
        let outcome = match override_error.or(slot.error) {
            Some(e) => Outcome::Failed { detail: e },
            None => Outcome::Succeeded {
                detail: slot.tags.join(", "),
            },
        };
        if let Some(record) = slot.deferred {
            self.gate.finish_read(*record, &outcome);
            return;
        }
        match slot.request {
            None => self.gate.note_outcome(&slot.action, &outcome),
            Some(id) => {
                let gate = self.gate.clone();
                tokio::spawn(async move {
                    if let Err(e) = gate.record_outcome(&slot.action, Some(&id), &outcome).await {
                        tracing::error!(error = %e, request = %id, "recording an outcome failed");
                    }
                });
            }
        }
    }

    /// Handles one whole client message; false ends the session.
    async fn on_client(&mut self, frame: BytesMut) -> Result<bool, WireError> {
        let tag = frame[0];
        if matches!(tag, b'd') {
            // COPY data: opaque, streamed to the server as sent.
            self.uout.extend_from_slice(&frame);
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
                self.simple_query(frame, &q.query).await?;
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
                self.uout.extend_from_slice(&frame);
            }
            PgWireFrontendMessage::Flush(_) => match self.discard {
                Discard::No => {
                    self.batch.push(frame);
                    self.run_batch(false).await?;
                }
                _ => self.flush_client().await?,
            },
            PgWireFrontendMessage::Sync(_) => {
                match std::mem::replace(&mut self.discard, Discard::No) {
                    Discard::No => {
                        self.batch.push(frame);
                        self.run_batch(true).await?;
                    }
                    Discard::AnswerSync => {
                        self.drain().await?;
                        wire::ready(&mut self.cout, self.tx_status);
                        self.flush_client().await?;
                    }
                    Discard::ForwardSync => {
                        self.uout.extend_from_slice(&frame);
                        self.sent_sync();
                        self.forwarded_since_sync = false;
                    }
                }
            }
            PgWireFrontendMessage::CopyDone(_) | PgWireFrontendMessage::CopyFail(_) => {
                self.copy_in = false;
                self.uout.extend_from_slice(&frame);
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

    async fn flush_client(&mut self) -> Result<(), WireError> {
        if !self.cout.is_empty() {
            self.release().await?;
            self.client.write_all(&self.cout).await?;
            self.cout.clear();
        }
        Ok(())
    }

    /// Forwards what is queued and relays until the server owes nothing,
    /// so an answer gavel writes itself lands after every earlier one.
    async fn drain(&mut self) -> Result<(), WireError> {
        self.send_upstream().await?;
        while self.pending_ready > 0 {
            let Some(up) = self.upstream.as_mut() else {
                self.pending_ready = 0;
                break;
            };
            if up.read_buf(&mut self.ubuf).await? == 0 {
                self.upstream_closed().await?;
                return Err(WireError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            self.relay().await?;
        }
        Ok(())
    }

    /// Classifies `sql` in this session: `EXECUTE` resolves names from SQL
    /// `PREPARE` and protocol-level Parse alike (they share one namespace on
    /// the server), and `FETCH`/`MOVE` on a protocol-level portal takes the
    /// class of the statement bound to it, which that FETCH runs.
    fn classify(&self, sql: &str) -> Arc<Classified> {
        self.classify_staged(sql, &[], &[])
    }

    /// As [`Session::classify`], seeing first the statements and portals
    /// staged earlier in the batch being decided.
    fn classify_staged(
        &self,
        sql: &str,
        staged_statements: &[(String, Option<Arc<Prepared>>)],
        staged_portals: &[(String, Option<Portal>)],
    ) -> Arc<Classified> {
        let statement = |name: &str| -> Option<Arc<Prepared>> {
            match staged_statements.iter().rev().find(|(n, _)| n == name) {
                Some((_, s)) => s.clone(),
                None => self.statements.get(name).cloned(),
            }
        };
        let portal = |name: &str| -> Option<Portal> {
            match staged_portals.iter().rev().find(|(n, _)| n == name) {
                Some((_, p)) => p.clone(),
                None => self.portals.get(name).cloned(),
            }
        };
        let prepared = |name: &str| statement(name).map(|p| p.classified.class);
        let classified = self.surface.classify(sql, &prepared);
        if !classified.kinds.iter().any(|k| k == "FetchStmt")
            || (self.portals.is_empty() && staged_portals.is_empty())
        {
            return classified;
        }
        let Ok(parsed) = pg_query::parse(sql, 0) else {
            return classified;
        };
        let mut raised: Option<Classified> = None;
        for stmt in &parsed.protobuf.stmts {
            let Ok(tree) = serde_json::to_value(stmt) else {
                continue;
            };
            let Some(name) = tree
                .pointer("/stmt/node/FetchStmt/portalname")
                .and_then(|n| n.as_str())
            else {
                continue;
            };
            let Some(bound) = portal(name).and_then(|p| p.statement) else {
                continue;
            };
            let current = raised.as_ref().map_or(classified.class, |c| c.class);
            if crate::classify::rank(bound.classified.class) > crate::classify::rank(current) {
                raised = Some(Classified {
                    class: bound.classified.class,
                    tables: bound.classified.tables.clone(),
                    reason: format!(
                        "FETCH from portal {name:?} runs {}",
                        truncate(&bound.text, 200)
                    ),
                    kinds: classified.kinds.clone(),
                    classes: classified.classes.clone(),
                });
            }
        }
        raised.map_or(classified, Arc::new)
    }

    fn read_audit(&self) -> ReadAudit {
        if self.surface.durable_reads {
            ReadAudit::BeforeRelease
        } else {
            ReadAudit::Deferred
        }
    }

    /// Waits until the server has answered every Parse, Bind and Close sent
    /// (a Parse it refused must not count) and, while a segment without
    /// Sync is open, every Execute in it (an error there makes the server
    /// skip what follows). Then gavel decides against the server's real
    /// tables. While the server skips to Sync after an error, nothing sent
    /// now runs, so there is nothing to wait for.
    async fn settle(&mut self) -> Result<(), WireError> {
        self.send_upstream().await?;
        while !self.upstream_error
            && (!self.pending_ops.is_empty()
                || (self.forwarded_since_sync && self.slots.iter().any(|s| !s.simple)))
        {
            let Some(up) = self.upstream.as_mut() else {
                break;
            };
            if up.read_buf(&mut self.ubuf).await? == 0 {
                self.upstream_closed().await?;
                return Err(WireError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            self.relay().await?;
        }
        Ok(())
    }

    /// Notes a Query or Sync sent: the server owes one more ReadyForQuery.
    fn sent_sync(&mut self) {
        self.pending_ready += 1;
        self.segments_sent += 1;
    }

    fn remember(&mut self, class: ActionClass, sql: &str, verdict: &str) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent
            .push_back(format!("{class} {verdict}: {}", truncate(sql.trim(), 200)));
    }

    fn action(
        &self,
        classified: &Classified,
        sql: &str,
        intent: String,
        params: Option<&Portal>,
    ) -> Action {
        let mut details = serde_json::Map::new();
        details.insert("tables".into(), serde_json::json!(classified.tables));
        if let Some(p) = params.filter(|p| !p.params.is_empty()) {
            details.insert("params".into(), serde_json::Value::Array(p.params.to_vec()));
            details.insert("param_formats".into(), serde_json::json!(*p.formats));
        }
        Action {
            principal: self.principal.clone(),
            resource: self.surface.resource.clone(),
            class: classified.class,
            operation: sql.to_owned(),
            details: serde_json::Value::Object(details),
            intent,
            data_context: serde_json::Value::Null,
            surface: "postgres".into(),
            source: Some(self.source.clone()),
        }
    }

    async fn simple_query(&mut self, frame: BytesMut, sql: &str) -> Result<(), WireError> {
        if let Some(intent) = intent_setting(sql) {
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
            return self.flush_client().await;
        }
        let classified = self.classify(sql);
        let intent = comment_intent(sql).unwrap_or_else(|| self.intent.clone());
        let action = self.action(&classified, sql, intent, None);
        match self.decide(action.clone(), &classified, sql, false).await? {
            Decided::Allow { request, record } => {
                self.remember(classified.class, sql, "allowed");
                self.track_sql_prepare(sql, &classified);
                self.uout.extend_from_slice(&frame);
                self.sent_sync();
                let deferred = match record {
                    ReadRecord::Receipt(r) => {
                        self.receipts.push_back(r);
                        None
                    }
                    ReadRecord::Deferred(r) => Some(r),
                    ReadRecord::Written => None,
                };
                self.slots.push_back(Slot {
                    action,
                    request,
                    simple: true,
                    tags: Vec::new(),
                    error: None,
                    deferred,
                });
            }
            Decided::Refuse(refusal) => {
                self.remember(classified.class, sql, "refused");
                self.drain().await?;
                self.refusal(&refusal);
                wire::ready(&mut self.cout, self.tx_status);
                self.flush_client().await?;
            }
        }
        Ok(())
    }

    fn refusal(&mut self, r: &Refusal) {
        wire::error(
            &mut self.cout,
            r.code,
            &r.message,
            r.detail.as_deref(),
            r.hint.as_deref(),
        );
    }

    /// Keeps the one table of prepared statement names (SQL PREPARE and
    /// protocol Parse share it on the server) in step with a query string
    /// being forwarded. `DEALLOCATE` forgets at once (only stricter). A
    /// `PREPARE` is recorded whether or not it will run (a later error in
    /// the string does not undo it on the server), as the more privileged
    /// of the old and the new class: a phantom entry only makes gavel
    /// stricter.
    fn track_sql_prepare(&mut self, sql: &str, classified: &Classified) {
        let mut prepares: Vec<(String, ActionClass)> = Vec::new();
        if !classified
            .kinds
            .iter()
            .any(|k| k == "PrepareStmt" || k == "DeallocateStmt")
        {
            return;
        }
        let Ok(parsed) = pg_query::parse(sql, 0) else {
            return;
        };
        for (i, stmt) in parsed.protobuf.stmts.iter().enumerate() {
            let Ok(tree) = serde_json::to_value(stmt) else {
                continue;
            };
            if let Some(name) = tree
                .pointer("/stmt/node/PrepareStmt/name")
                .and_then(|n| n.as_str())
            {
                let class = classified
                    .classes
                    .get(i)
                    .copied()
                    .unwrap_or(ActionClass::SqlUnknown);
                prepares.push((name.to_owned(), class));
            } else if let Some(d) = tree.pointer("/stmt/node/DeallocateStmt") {
                match d.get("name").and_then(|n| n.as_str()) {
                    Some(name) => {
                        self.statements.remove(name);
                    }
                    None => self.statements.clear(),
                }
            }
        }
        for (name, class) in &prepares {
            let class = match self.statements.get(name) {
                Some(old)
                    if crate::classify::rank(old.classified.class)
                        > crate::classify::rank(*class) =>
                {
                    old.classified.class
                }
                _ => *class,
            };
            let entry = Prepared {
                text: Arc::from(sql),
                classified: Arc::new(Classified {
                    class,
                    tables: classified.tables.clone(),
                    reason: format!("prepared by SQL PREPARE {name}"),
                    kinds: vec!["PrepareStmt".into()],
                    classes: vec![class],
                }),
                intent: None,
            };
            self.statements.insert(name.clone(), Arc::new(entry));
        }
    }

    /// Asks the gate; holds a statement that needs approval.
    async fn decide(
        &mut self,
        mut action: Action,
        classified: &Classified,
        sql: &str,
        has_params: bool,
    ) -> Result<Decided, WireError> {
        let decision = self.gate.policy().evaluate(&action);
        if matches!(decision.verdict, PolicyVerdict::NeedsApproval { .. }) {
            action.data_context = self.data_context(classified, sql, has_params).await;
        }
        let verdict = match self
            .gate
            .check_read(action.clone(), self.read_audit())
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "the gate failed; refusing");
                return Ok(Decided::Refuse(Refusal {
                    code: "58000",
                    message:
                        "gavel could not decide on this statement (internal error); it was not run"
                            .into(),
                    detail: None,
                    hint: None,
                }));
            }
        };
        match verdict {
            (Verdict::Allow(permit), record) => Ok(Decided::Allow {
                request: permit.request_id().cloned(),
                record,
            }),
            (Verdict::Deny { policies, reason }, _) => Ok(Decided::Refuse(Refusal {
                code: "42501",
                message: if policies.is_empty() {
                    format!("gavel: denied: {reason}")
                } else {
                    format!("gavel: denied by policy {}: {reason}", policies.join(", "))
                },
                detail: Some(format!(
                    "classified as {}: {}",
                    classified.class, classified.reason
                )),
                hint: None,
            })),
            (Verdict::Pending(request), _) => self.hold(*request, action).await,
        }
    }

    async fn data_context(
        &mut self,
        classified: &Classified,
        sql: &str,
        has_params: bool,
    ) -> serde_json::Value {
        let mut context = serde_json::Map::new();
        context.insert("classification".into(), classified.reason.clone().into());
        context.insert(
            "recent_statements".into(),
            serde_json::Value::Array(self.recent.iter().cloned().map(Into::into).collect()),
        );
        // Only a plain write: nothing the classifier saw calls a function
        // with side effects (the planner may fold immutable functions).
        let estimable = classified.class == ActionClass::SqlWrite
            && classified.kinds.len() == 1
            && matches!(classified.kinds[0].as_str(), "UpdateStmt" | "DeleteStmt")
            && !has_params;
        if self.surface.explain && estimable {
            match self.surface.estimate_rows(sql).await {
                Ok(rows) => {
                    context.insert(
                        "estimated_rows".into(),
                        serde_json::json!(rows.round() as u64),
                    );
                }
                Err(e) => {
                    context.insert("estimate_error".into(), e.into());
                }
            }
        }
        serde_json::Value::Object(context)
    }

    async fn hold(
        &mut self,
        request: ApprovalRequest,
        action: Action,
    ) -> Result<Decided, WireError> {
        let id = request.id.clone();
        let url = format!("{}/requests/{}", self.surface.public_url, id);
        let hold = self.surface.hold;
        // A notice first, so a person at psql knows why it waits.
        let mut notice = BytesMut::new();
        {
            use pgwire::messages::PgWireBackendMessage;
            use pgwire::messages::response::NoticeResponse;
            let fields = vec![
                (b'S', "NOTICE".to_owned()),
                (b'V', "NOTICE".to_owned()),
                (b'C', "01000".to_owned()),
                (
                    b'M',
                    format!(
                        "gavel: waiting up to {} for approval of request {id}: {url}",
                        humanize(hold)
                    ),
                ),
            ];
            let _ = PgWireBackendMessage::NoticeResponse(NoticeResponse::new(fields))
                .encode(&mut notice);
        }
        // Listen for a cancel before the client can know it waits: a
        // CancelRequest sent as soon as the notice arrives is not lost.
        let cancel = self.cancel.clone();
        let cancelled = cancel.hold.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        self.drain().await?;
        self.cout.extend_from_slice(&notice);
        self.flush_client().await?;
        let approvals = self.gate.approvals().clone();
        let waited = tokio::select! {
            r = approvals.wait(&id, hold) => Some(r),
            _ = cancelled => None,
        };
        let class = action.class;
        let pending = |what: &str| Refusal {
            code: "42501",
            message: format!("gavel: {what}: request {id} needs approval: {url}"),
            detail: Some(format!(
                "The statement was not run. Once the request is approved, run the identical statement again within the grant's lifetime and it passes once. Classified as {class}."
            )),
            hint: Some(format!("approve with: gavel approve {id}")),
        };
        let request = match waited {
            None => {
                return Ok(Decided::Refuse(Refusal {
                    code: "57014",
                    message: format!(
                        "canceling statement due to user request (gavel request {id} stays pending: {url})"
                    ),
                    detail: None,
                    hint: None,
                }));
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, request = %id, "waiting for a decision failed");
                return Ok(Decided::Refuse(pending("could not wait for the decision")));
            }
            Some(Ok(None)) => return Ok(Decided::Refuse(pending("the request vanished"))),
            Some(Ok(Some(r))) => r,
        };
        match request.state {
            RequestState::Approved => match self.gate.check_read(action, self.read_audit()).await {
                Ok((Verdict::Allow(permit), record)) => Ok(Decided::Allow {
                    request: permit.request_id().cloned(),
                    record,
                }),
                Ok(_) | Err(_) => Ok(Decided::Refuse(pending(
                    "the approval was used or changed before this statement could run",
                ))),
            },
            RequestState::Denied => {
                let by = request
                    .reviews
                    .iter()
                    .find(|r| r.decision == Decision::Deny)
                    .map(|r| format!("{}: {}", r.reviewer.0, r.comment))
                    .unwrap_or_default();
                Ok(Decided::Refuse(Refusal {
                    code: "42501",
                    message: format!("gavel: request {id} was denied by {by}"),
                    detail: Some(url),
                    hint: None,
                }))
            }
            RequestState::Expired => Ok(Decided::Refuse(Refusal {
                code: "42501",
                message: format!("gavel: request {id} expired without a decision: {url}"),
                detail: None,
                hint: None,
            })),
            _ => Ok(Decided::Refuse(pending(&format!(
                "no decision within {}",
                humanize(hold)
            )))),
        }
    }

    /// Decides every Execute of the queued extended-protocol messages, then
    /// forwards them all, or none.
    async fn run_batch(&mut self, sync: bool) -> Result<(), WireError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.settle().await?;
        let mut ops: Vec<TableOp> = Vec::new();
        let mut statements: Vec<(String, Option<Arc<Prepared>>)> = Vec::new();
        let mut portals: Vec<(String, Option<Portal>)> = Vec::new();
        let mut slots = Vec::new();
        let mut receipts = Vec::new();
        let mut refused = None;
        for frame in &batch {
            let message = match wire::decode_frontend(frame) {
                Ok(m) => m,
                Err(e) => return Err(self.protocol_error(e)),
            };
            match message {
                PgWireFrontendMessage::Parse(p) => {
                    let classified = self.classify(&p.query);
                    let prepared = Prepared {
                        text: Arc::from(p.query.as_str()),
                        classified,
                        intent: comment_intent(&p.query),
                    };
                    let name = p.name.unwrap_or_default();
                    let prepared = Arc::new(prepared);
                    ops.push(TableOp::Statement(name.clone(), Some(prepared.clone())));
                    statements.push((name, Some(prepared)));
                }
                PgWireFrontendMessage::Bind(b) => {
                    let name = b.statement_name.unwrap_or_default();
                    let statement = statements
                        .iter()
                        .rev()
                        .find(|(n, _)| *n == name)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_else(|| self.statements.get(&name).cloned());
                    let params = param_values(&b.parameters, &b.parameter_format_codes);
                    let formats = param_formats(b.parameters.len(), &b.parameter_format_codes);
                    let portal = Portal {
                        statement,
                        params: Arc::new(params),
                        formats: Arc::new(formats),
                    };
                    let name = b.portal_name.unwrap_or_default();
                    ops.push(TableOp::Portal(name.clone(), Some(portal.clone())));
                    portals.push((name, Some(portal)));
                }
                PgWireFrontendMessage::Close(c) => {
                    let name = c.name.unwrap_or_default();
                    if c.target_type == b'S' {
                        ops.push(TableOp::Statement(name.clone(), None));
                        statements.push((name, None));
                    } else {
                        ops.push(TableOp::Portal(name.clone(), None));
                        portals.push((name, None));
                    }
                }
                PgWireFrontendMessage::Execute(e) => {
                    let name = e.name.unwrap_or_default();
                    let portal = portals
                        .iter()
                        .rev()
                        .find(|(n, _)| *n == name)
                        .map(|(_, p)| p.clone())
                        .unwrap_or_else(|| self.portals.get(&name).cloned());
                    let (classified, text, stmt_intent, params) = match portal
                        .as_ref()
                        .and_then(|p| p.statement.as_ref().map(|s| (s, p)))
                    {
                        Some((s, portal)) => (
                            s.classified.clone(),
                            s.text.clone(),
                            s.intent.clone(),
                            Some(portal.clone()),
                        ),
                        // Unknown to gavel: the server will refuse it too,
                        // but it is not forwarded on faith.
                        None => {
                            tracing::debug!(portal = %name, known = ?portal.as_ref().map(|p| p.statement.is_some()), statements = ?self.statements.keys().collect::<Vec<_>>(), pending = self.pending_ops.len(), "Execute of an unknown portal");
                            (
                                Arc::new(Classified {
                                    class: ActionClass::SqlUnknown,
                                    tables: Vec::new(),
                                    reason: format!(
                                        "Execute of portal {name:?}, which gavel never saw bound"
                                    ),
                                    kinds: Vec::new(),
                                    classes: Vec::new(),
                                }),
                                Arc::from(format!("<portal {name:?}>").as_str()),
                                None,
                                None,
                            )
                        }
                    };
                    // EXECUTE and FETCH name other statements and portals:
                    // classify them against the tables as they are now,
                    // this batch's own changes included, not as they were
                    // at Parse.
                    let lower = text.to_ascii_lowercase();
                    let classified = if ["execute", "fetch", "move"]
                        .iter()
                        .any(|w| lower.contains(w))
                    {
                        self.classify_staged(&text, &statements, &portals)
                    } else {
                        classified
                    };
                    if let Some(intent) = intent_setting(&text) {
                        self.intent = intent;
                    }
                    let intent = stmt_intent.unwrap_or_else(|| self.intent.clone());
                    let has_params = params.as_ref().is_some_and(|p| !p.params.is_empty());
                    let action = self.action(&classified, &text, intent, params.as_ref());
                    match self
                        .decide(action.clone(), &classified, &text, has_params)
                        .await?
                    {
                        Decided::Allow { request, record } => {
                            self.remember(classified.class, &text, "allowed");
                            let deferred = match record {
                                ReadRecord::Receipt(r) => {
                                    receipts.push(r);
                                    None
                                }
                                ReadRecord::Deferred(r) => Some(r),
                                ReadRecord::Written => None,
                            };
                            slots.push(Slot {
                                action,
                                request,
                                simple: false,
                                tags: Vec::new(),
                                error: None,
                                deferred,
                            });
                        }
                        Decided::Refuse(r) => {
                            self.remember(classified.class, &text, "refused");
                            refused = Some(r);
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(refusal) = refused else {
            // Applied as the server confirms each (ParseComplete, …).
            let segment = self.segments_sent;
            self.pending_ops
                .extend(ops.into_iter().map(|op| (segment, op)));
            for frame in &batch {
                self.uout.extend_from_slice(frame);
            }
            self.slots.extend(slots);
            self.receipts.extend(receipts);
            if sync {
                self.sent_sync();
                self.forwarded_since_sync = false;
            } else {
                self.forwarded_since_sync = true;
            }
            self.last_segment_synced = sync;
            return Ok(());
        };
        // Statements allowed earlier in this batch are not run either.
        for slot in slots {
            self.finish(
                slot,
                Some("not run: a later statement of the same pipeline was refused".into()),
            );
        }
        drop(receipts);
        if !self.forwarded_since_sync {
            // Nothing of this pipeline reached the server: answer here, and
            // the transaction, if one is open, is untouched.
            self.drain().await?;
            self.refusal(&refusal);
            if sync {
                wire::ready(&mut self.cout, self.tx_status);
            } else {
                self.discard = Discard::AnswerSync;
            }
            self.flush_client().await?;
        } else {
            // Part of the pipeline already ran on the server; have it raise
            // the refusal itself, so its answers stay in order and it skips
            // to Sync exactly as after any error.
            self.raise_upstream(&refusal)?;
            if sync {
                let mut s = BytesMut::new();
                postgres_protocol::message::frontend::sync(&mut s);
                self.uout.extend_from_slice(&s);
                self.sent_sync();
                self.forwarded_since_sync = false;
            } else {
                let mut f = BytesMut::new();
                postgres_protocol::message::frontend::flush(&mut f);
                self.uout.extend_from_slice(&f);
                self.discard = Discard::ForwardSync;
            }
        }
        Ok(())
    }

    fn raise_upstream(&mut self, refusal: &Refusal) -> Result<(), WireError> {
        // Only characters that need no escaping under any setting.
        let text: String = refusal
            .message
            .chars()
            .map(|c| {
                if c == '\'' || c == '\\' || c == '$' {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        let sql = format!(
            "DO $gavel$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$gavel$",
            refusal.code, text
        );
        use postgres_protocol::message::frontend;
        let mut b = BytesMut::new();
        frontend::parse("", &sql, std::iter::empty(), &mut b)?;
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            std::iter::empty::<i32>(),
            |_: i32, _: &mut BytesMut| -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty::<i16>(),
            &mut b,
        )
        .map_err(|_| WireError::Protocol("encoding a Bind failed".into()))?;
        frontend::execute("", 0, &mut b)?;
        self.uout.extend_from_slice(&b);
        // Its ParseComplete and BindComplete come back like any other: the
        // unnamed statement becomes the DO block (never allowed), the
        // unnamed portal is gone.
        let segment = self.segments_sent;
        let raised = Prepared {
            text: Arc::from(sql.as_str()),
            classified: Arc::new(Classified {
                class: ActionClass::SqlUnknown,
                tables: Vec::new(),
                reason: "gavel's own refusal".into(),
                kinds: Vec::new(),
                classes: Vec::new(),
            }),
            intent: None,
        };
        self.pending_ops.push_back((
            segment,
            TableOp::Statement(String::new(), Some(Arc::new(raised))),
        ));
        self.pending_ops
            .push_back((segment, TableOp::Portal(String::new(), None)));
        Ok(())
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_comes_from_a_leading_comment_or_a_set() {
        assert_eq!(
            comment_intent("/* intent: clean up test rows */ DELETE FROM t").as_deref(),
            Some("clean up test rows")
        );
        assert_eq!(comment_intent("DELETE FROM t /* intent: x */"), None);
        assert_eq!(
            intent_setting("SET gavel.intent = 'rotate keys'").as_deref(),
            Some("rotate keys")
        );
        assert_eq!(
            intent_setting("set session gavel.intent to 'it''s fine'").as_deref(),
            Some("it's fine")
        );
        assert_eq!(intent_setting("RESET gavel.intent").as_deref(), Some(""));
        assert_eq!(intent_setting("SET gavel.intent = 'x'; DROP TABLE t"), None);
        assert_eq!(intent_setting("SET search_path = gavel_intent"), None);
    }

    #[test]
    fn parameters_render_as_text_or_hex() {
        let p = vec![
            Some(Bytes::from_static(b"42")),
            None,
            Some(Bytes::from_static(&[0, 1])),
        ];
        assert_eq!(
            param_values(&p, &[0, 0, 1]),
            vec![
                serde_json::json!("42"),
                serde_json::Value::Null,
                serde_json::json!("\\x0001")
            ]
        );
    }
}

//! A connection's login: TLS, the startup packet, the client's gavel token
//! as its password, then the server's parameters replayed, and the
//! session handed over.

use crate::session::Session;
use crate::surface::{PostgresSurface, Registered};
use crate::upstream::Stream;
use crate::wire::{self, WireError};
use bytes::BytesMut;
use gavel_core::Gate;
use gavel_identity::{AuthError, Authenticator};
use pgwire::messages::PgWireFrontendMessage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Per-connection buffer size to start with; they grow with the traffic.
const BUFFER: usize = 4096;

impl PostgresSurface {
    pub(crate) async fn connection(
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
        let (principal, valid_until) = match auth.authenticate_until(&token).await {
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

        let mut session = Session::new(self.clone(), gate, principal, peer, client, passed);
        session.valid_until = valid_until;
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
                    session.client.write_all(&self.unreachable(&e)).await?;
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
}

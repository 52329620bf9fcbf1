//! gavel's own connections to the real server: TCP or TLS, authenticated
//! with gavel's credentials (SCRAM-SHA-256, MD5, cleartext or trust).
//! Clients never see these credentials, nor the upstream's own errors
//! about them.

use crate::wire::WireError;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use gavel_config::{PostgresResourceConfig, UpstreamTls};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A byte stream that may be TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS accepted from a client.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to the upstream.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Where and how gavel reaches one upstream server.
pub struct Upstream {
    host: String,
    port: u16,
    user: String,
    database: String,
    password: Option<String>,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// What the upstream told gavel while the connection started.
pub struct Started {
    /// The connection, ready for queries.
    pub stream: Stream,
    /// `ParameterStatus` pairs, to replay to the client.
    pub parameters: Vec<(String, String)>,
    /// The upstream backend's cancel key.
    pub key: (i32, i32),
}

/// Why gavel could not open an upstream connection. Logged in full; the
/// client learns only that the upstream is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Network or TLS failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server refused (bad credentials, unknown database, …).
    #[error("the server said: {0}")]
    Refused(String),
    /// The server spoke something else.
    #[error("{0}")]
    Protocol(String),
}

impl From<WireError> for UpstreamError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => UpstreamError::Io(e),
            WireError::Protocol(p) => UpstreamError::Protocol(p),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn error_text(fields: ErrorFields<'_>) -> String {
    let mut fields = fields;
    let mut code = String::new();
    let mut message = String::new();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    format!("{message} (SQLSTATE {code})")
}

impl Upstream {
    /// Reads `config`: the URL, the password from its env variable or file,
    /// the TLS settings. Errors name the key.
    pub fn from_config(i: usize, config: &PostgresResourceConfig) -> Result<Upstream, String> {
        let key = |field: &str| format!("resources.postgres[{i}].{field}");
        let url: tokio_postgres::Config = config
            .upstream
            .parse()
            // The parser's message can quote the URL, which may hold a
            // password: not echoed.
            .map_err(|_| format!("key `{}`: not a valid postgres:// URL", key("upstream")))?;
        if url.get_password().is_some() {
            return Err(format!(
                "key `{}`: the URL must not carry a password; use upstream_password_env or upstream_password_file",
                key("upstream")
            ));
        }
        let host = match url.get_hosts() {
            [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
            _ => {
                return Err(format!(
                    "key `{}`: needs exactly one TCP host",
                    key("upstream")
                ));
            }
        };
        let port = url.get_ports().first().copied().unwrap_or(5432);
        let user = url
            .get_user()
            .ok_or_else(|| format!("key `{}`: names no user", key("upstream")))?
            .to_owned();
        let database = url.get_dbname().unwrap_or(&user).to_owned();
        let password = if let Some(var) = &config.upstream_password_env {
            Some(std::env::var(var).map_err(|_| {
                format!(
                    "key `{}`: environment variable {var} is not set",
                    key("upstream_password_env")
                )
            })?)
        } else if let Some(file) = &config.upstream_password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "key `{}`: cannot read {}: {e}",
                    key("upstream_password_file"),
                    file.display()
                )
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        } else {
            None
        };
        let tls = match config.upstream_tls {
            UpstreamTls::Disable => None,
            UpstreamTls::Require => {
                let ca = config.upstream_ca_file.as_ref().ok_or_else(|| {
                    format!("key `{}`: required for TLS", key("upstream_ca_file"))
                })?;
                let mut roots = rustls::RootCertStore::empty();
                use rustls::pki_types::pem::PemObject;
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("key `{}`: {e}", key("upstream_ca_file")))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| format!("key `{}`: {e}", key("upstream_ca_file")))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("key `{}`: {e}", key("upstream_ca_file")))?;
                }
                let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = config
                    .upstream_tls_server_name
                    .clone()
                    .unwrap_or_else(|| host.clone());
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| format!("key `{}`: {e}", key("upstream_tls_server_name")))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
            }
        };
        Ok(Upstream {
            host,
            port,
            user,
            database,
            password,
            tls,
        })
    }

    /// The upstream database's name.
    pub fn database(&self) -> &str {
        &self.database
    }

    async fn open(&self) -> Result<Stream, UpstreamError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        if tcp.read_u8().await? != b'S' {
            return Err(UpstreamError::Refused(
                "the server does not accept TLS".into(),
            ));
        }
        let tls = connector.connect(name.clone(), tcp).await?;
        Ok(Stream::Client(Box::new(tls)))
    }

    /// Opens an authenticated connection; `parameters` are startup
    /// parameters passed on from the client (already vetted).
    pub async fn connect(&self, parameters: &[(String, String)]) -> Result<Started, UpstreamError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(parameters))
            .await
            .map_err(|_| UpstreamError::Protocol("timed out connecting".into()))?
    }

    async fn connect_inner(
        &self,
        parameters: &[(String, String)],
    ) -> Result<Started, UpstreamError> {
        let mut stream = self.open().await?;
        let mut buf = BytesMut::new();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
        ];
        params.extend(parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params.iter().copied(), &mut buf)?;
        stream.write_all(&buf).await?;
        let mut inbox = BytesMut::with_capacity(4096);
        let mut scram: Option<ScramSha256> = None;
        let mut scram_finished = false;
        let mut started_params = Vec::new();
        let mut key = (0, 0);
        let password = || {
            self.password.as_deref().ok_or_else(|| {
                UpstreamError::Refused(
                    "the server asks for a password and none is configured".into(),
                )
            })
        };
        loop {
            let msg = loop {
                if let Some(m) = Message::parse(&mut inbox)? {
                    break m;
                }
                if stream.read_buf(&mut inbox).await? == 0 {
                    return Err(UpstreamError::Protocol(
                        "the server closed the connection during startup".into(),
                    ));
                }
            };
            let mut out = BytesMut::new();
            match msg {
                Message::AuthenticationOk => {
                    // A server that started SCRAM must prove it knows the
                    // password before gavel accepts it as the upstream.
                    if scram.is_some() && !scram_finished {
                        return Err(UpstreamError::Protocol(
                            "the server ended SCRAM authentication early".into(),
                        ));
                    }
                }
                Message::AuthenticationCleartextPassword => {
                    // Over plain TCP, anyone in the path could ask for it.
                    if self.tls.is_none() {
                        return Err(UpstreamError::Refused(
                            "the server asks for the password in cleartext; gavel sends it only over TLS (upstream_tls = \"require\")".into(),
                        ));
                    }
                    frontend::password_message(password()?.as_bytes(), &mut out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        self.user.as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechanisms.next()? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(UpstreamError::Refused(
                            "the server offers no SASL mechanism gavel supports".into(),
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        UpstreamError::Protocol("SASL continue without a SASL start".into())
                    })?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        UpstreamError::Protocol("SASL final without a SASL start".into())
                    })?;
                    // Verifies the server's signature: a server that does
                    // not know the password cannot impersonate the upstream.
                    s.finish(body.data())?;
                    scram_finished = true;
                }
                Message::ParameterStatus(p) => {
                    started_params.push((p.name()?.to_owned(), p.value()?.to_owned()));
                }
                Message::BackendKeyData(k) => key = (k.process_id(), k.secret_key()),
                Message::NoticeResponse(_) => {}
                Message::ErrorResponse(e) => {
                    return Err(UpstreamError::Refused(error_text(e.fields())));
                }
                Message::ReadyForQuery(_) => {
                    if !inbox.is_empty() {
                        return Err(UpstreamError::Protocol(
                            "the server sent data before the first query".into(),
                        ));
                    }
                    // gavel's parser reads names as a UTF8 server does
                    // (truncation at a character boundary, case folding of
                    // A–Z only); under another server encoding two names it
                    // tells apart could be one on the server.
                    let encoding = started_params
                        .iter()
                        .find(|(k, _)| k == "server_encoding")
                        .map(|(_, v)| v.as_str());
                    if encoding != Some("UTF8") {
                        return Err(UpstreamError::Protocol(format!(
                            "the database's server_encoding is {}: gavel serves only UTF8 databases",
                            encoding.unwrap_or("not reported")
                        )));
                    }
                    // Nor with backslashes as escapes in plain strings: the
                    // server would end a literal where gavel's parser does
                    // not (`'x\'; DELETE …; --'`).
                    let conforming = started_params
                        .iter()
                        .find(|(k, _)| k == "standard_conforming_strings")
                        .map(|(_, v)| v.as_str());
                    if conforming != Some("on") {
                        return Err(UpstreamError::Protocol(format!(
                            "standard_conforming_strings is {} for gavel's role and database: gavel serves only databases where it is on",
                            conforming.unwrap_or("not reported")
                        )));
                    }
                    return Ok(Started {
                        stream,
                        parameters: started_params,
                        key,
                    });
                }
                _ => {
                    return Err(UpstreamError::Protocol(
                        "unexpected message during startup (gavel supports password, MD5 and SCRAM-SHA-256 authentication)".into(),
                    ));
                }
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
            }
        }
    }

    /// Asks the upstream to cancel whatever backend `key` runs.
    pub async fn cancel(&self, key: (i32, i32)) -> Result<(), UpstreamError> {
        let mut stream = self.open().await?;
        let mut buf = BytesMut::new();
        frontend::cancel_request(key.0, key.1, &mut buf);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        // The server closes the connection without answering.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
        Ok(())
    }
}

/// Runs `sql` (simple protocol) on `stream` and returns the first column of
/// every row as text, or the server's error.
pub async fn simple_query(stream: &mut Stream, sql: &str) -> Result<Vec<String>, UpstreamError> {
    Ok(simple_query_rows(stream, sql)
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}

/// Runs `sql` as one extended-protocol statement (the server refuses a
/// string of several) and returns the first column of every row as text,
/// or the server's error.
pub async fn one_statement(stream: &mut Stream, sql: &str) -> Result<Vec<String>, UpstreamError> {
    let mut out = BytesMut::new();
    frontend::parse("", sql, std::iter::empty(), &mut out)?;
    frontend::bind(
        "",
        "",
        std::iter::empty::<i16>(),
        std::iter::empty::<i32>(),
        |_: i32,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::No)
        },
        std::iter::empty::<i16>(),
        &mut out,
    )
    .map_err(|_| UpstreamError::Protocol("encoding a Bind failed".into()))?;
    frontend::execute("", 0, &mut out)?;
    frontend::sync(&mut out);
    stream.write_all(&out).await?;
    read_rows(stream).await.map(|rows| {
        rows.into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect()
    })
}

/// Runs `sql` (simple protocol) on `stream` and returns every row's columns
/// as text, or the server's error.
pub async fn simple_query_rows(
    stream: &mut Stream,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out)?;
    stream.write_all(&out).await?;
    read_rows(stream).await
}

/// Reads rows up to ReadyForQuery.
async fn read_rows(stream: &mut Stream) -> Result<Vec<Vec<Option<String>>>, UpstreamError> {
    let mut inbox = BytesMut::with_capacity(4096);
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        let msg = loop {
            if let Some(m) = Message::parse(&mut inbox)? {
                break m;
            }
            if stream.read_buf(&mut inbox).await? == 0 {
                return Err(UpstreamError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
        };
        match msg {
            Message::DataRow(row) => {
                let buffer = row.buffer();
                let mut ranges = row.ranges();
                let mut columns = Vec::new();
                while let Some(r) = ranges.next()? {
                    columns.push(r.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                }
                rows.push(columns);
            }
            Message::ErrorResponse(e) => failure = Some(error_text(e.fields())),
            Message::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    match failure {
        Some(f) => Err(UpstreamError::Refused(f)),
        None => Ok(rows),
    }
}

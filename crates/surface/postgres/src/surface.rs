//! One `[[resources.postgres]]` listener: its settings, the classification
//! cache its sessions share, cancel keys, and gavel's own connection for
//! row estimates. A connection's login is in [`crate::startup`], its life
//! in [`crate::session`].

use crate::classify::{Classifier, Names};
use crate::shape::{ShapeCache, shape};
use crate::upstream::{Stream, Upstream, one_statement, simple_query, simple_query_rows};
use bytes::BytesMut;
use gavel_config::PostgresResourceConfig;
use gavel_core::{ActionClass, Gate, Resource};
use gavel_identity::Authenticator;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// What one statement (or query string) was classified as, with the facts
/// the session acts on.
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
    /// The classifier's full answer (effects, intent); `None` for entries
    /// made from the server's tables.
    pub facts: Option<crate::classify::Classification>,
    /// The classifier's catalog generation it was made under.
    pub generation: u64,
}

impl Classified {
    /// The facts, or an answer that claims nothing (no effects).
    pub fn facts(&self) -> Option<&crate::classify::Classification> {
        self.facts.as_ref()
    }

    pub(crate) fn unknown(reason: String) -> Classified {
        Classified {
            class: ActionClass::SqlUnknown,
            tables: Vec::new(),
            reason,
            kinds: Vec::new(),
            classes: Vec::new(),
            facts: None,
            generation: 0,
        }
    }

    /// Whether it may run code gavel does not see (anything but a read or
    /// a write), which may also create or drop functions.
    pub fn runs_unseen_code(&self) -> bool {
        !matches!(self.class, ActionClass::SqlRead | ActionClass::SqlWrite)
    }
}

/// A cancel key gavel handed out, and what it cancels.
pub(crate) struct CancelTarget {
    /// Counts cancel requests: a held statement ends when it changes (a
    /// watch, so a cancel sent as soon as the hold's notice arrives is
    /// never lost).
    pub hold: tokio::sync::watch::Sender<u64>,
    /// The upstream backend's own key, once connected.
    pub upstream: Mutex<Option<(i32, i32)>>,
}

impl CancelTarget {
    pub fn new() -> CancelTarget {
        CancelTarget {
            hold: tokio::sync::watch::Sender::new(0),
            upstream: Mutex::new(None),
        }
    }
}

/// One `[[resources.postgres]]` listener.
pub struct PostgresSurface {
    pub(crate) resource: Resource,
    listen: SocketAddr,
    pub(crate) upstream: Upstream,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) require_tls: bool,
    pub(crate) classifier: Classifier,
    classes: ShapeCache<Arc<Classified>>,
    pub(crate) explain: bool,
    /// Whether allowed reads wait for their record to be durable before
    /// their result is released (`audit.read_durability`).
    pub(crate) durable_reads: bool,
    explainer: tokio::sync::Mutex<Option<Stream>>,
    /// Counts what may have changed the server's catalog (code that ran,
    /// the refresh tick). A read that starts at count `n` and succeeds
    /// stores `n` in `catalog_read`; a statement is classified only once
    /// `catalog_read` has caught up with the count when it asked, so one
    /// never slips past a read still in progress.
    catalog_changes: std::sync::atomic::AtomicU64,
    catalog_read: std::sync::atomic::AtomicU64,
    pub(crate) hold: Duration,
    cancels: Mutex<HashMap<(i32, i32), Arc<CancelTarget>>>,
    /// What the server reported at startup, replayed to clients before
    /// gavel opens their upstream connection (at their first statement).
    pub(crate) server_parameters: Mutex<Option<Vec<(String, String)>>>,
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

/// The classifier configured for a `[[resources.postgres]]` entry (its
/// side-effect and read-only function lists), without the server's
/// catalog.
pub fn classifier_for(i: usize, config: &PostgresResourceConfig) -> Result<Classifier, String> {
    let mut side_effects = Vec::new();
    for (name, class) in &config.side_effect_functions {
        let class: ActionClass = class.parse().map_err(|e| {
            format!("key `resources.postgres[{i}].side_effect_functions.{name}`: {e}")
        })?;
        side_effects.push((name.clone(), class));
    }
    Ok(Classifier::new(&side_effects, &config.read_only_functions))
}

impl PostgresSurface {
    /// Builds the listener's settings from `[[resources.postgres]]` entry
    /// `i`. Errors name the key.
    pub fn from_config(
        i: usize,
        config: &PostgresResourceConfig,
        hold: Duration,
        durable_reads: bool,
    ) -> Result<PostgresSurface, String> {
        let upstream = Upstream::from_config(i, config)?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(load_tls(i, cert, key)?),
            _ => None,
        };
        let classifier = classifier_for(i, config)?;
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
            classifier,
            classes: ShapeCache::default(),
            explain: config.explain_estimates,
            durable_reads,
            explainer: tokio::sync::Mutex::new(None),
            catalog_changes: std::sync::atomic::AtomicU64::new(1),
            catalog_read: std::sync::atomic::AtomicU64::new(0),
            hold,
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
        let surface = self.clone();
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CATALOG_REFRESH);
            loop {
                tick.tick().await;
                surface.catalog_may_have_changed();
                surface.ensure_catalog().await;
            }
        });
        let _refresher = AbortOnDrop(refresher);
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

    /// Classifies `sql` as a session with `names` sees it. Strings whose
    /// class depends only on their text share one classification per shape
    /// (literals aside).
    pub(crate) fn classify(&self, sql: &str, names: &dyn Names) -> Arc<Classified> {
        self.classify_own(sql, names, None)
    }

    /// As [`PostgresSurface::classify`], for a session with objects of its
    /// own the server's committed catalog does not show yet (`own`): such
    /// a classification is neither taken from the cache nor put in it.
    pub(crate) fn classify_own(
        &self,
        sql: &str,
        names: &dyn Names,
        own: Option<&crate::classify::Catalog>,
    ) -> Arc<Classified> {
        // Keyed by the catalog's generation too: a classification made
        // before the server's functions changed is not reused after.
        let generation = self.classifier.generation();
        let key = shape(sql)
            .filter(|_| own.is_none())
            .map(|k| format!("{generation:020}{k}"));
        if let Some(hit) = key.as_deref().and_then(|k| self.classes.get(k)) {
            return hit;
        }
        let c = self.classifier.classify_with(sql, names, own);
        // Not cached: what names the session's statements and portals
        // (EXECUTE, FETCH, MOVE: not the text alone); what the parser
        // rejects (a value the grammar refuses, `SECOND(1.5)`, must not make
        // a valid statement of the same shape unknown); COPY (`FROM ''`
        // parses like `FROM STDIN`, so its file name is a literal that
        // changes the class).
        // Nor a `SET` with a value: its value is one of the facts (the
        // intent of `SET gavel.intent`), and values are literals. Nor what
        // a literal's value classed (`current_setting('data_directory')`).
        let cacheable = !c.statements.is_empty()
            && !c.uses_names()
            && !c.reads_literals()
            && !c.statements.iter().any(|s| {
                s.kind == "CopyStmt"
                    || matches!(
                        s.effect,
                        crate::classify::Effect::Set { value: Some(_), .. }
                    )
            });
        let classified = Arc::new(Classified {
            class: c.class,
            tables: c.tables.clone(),
            reason: c.reason.clone(),
            kinds: c.statements.iter().map(|s| s.kind.clone()).collect(),
            classes: c.statements.iter().map(|s| s.class).collect(),
            facts: Some(c),
            generation,
        });
        if let (Some(k), true) = (key, cacheable) {
            self.classes.insert(k, classified.clone());
        }
        classified
    }

    pub(crate) async fn cancel(&self, key: (i32, i32)) {
        let target = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let Some(target) = target else {
            return;
        };
        target.hold.send_modify(|n| *n += 1);
        let upstream = *target.upstream.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(up) = upstream
            && let Err(e) = self.upstream.cancel(up).await
        {
            tracing::warn!(error = %e, "forwarding a cancel request failed");
        }
    }

    /// What a client is told when gavel cannot open its upstream
    /// connection: logged in full; the client learns only that it failed,
    /// not what the server said about gavel's credentials.
    pub(crate) fn unreachable(&self, e: &crate::upstream::UpstreamError) -> BytesMut {
        tracing::error!(error = %e, resource = %self.resource.name, "cannot open the upstream connection");
        let mut out = BytesMut::new();
        crate::wire::fatal(
            &mut out,
            "08006",
            &format!(
                "gavel cannot reach the database behind resource {}; the gateway log has the reason",
                self.resource.name
            ),
        );
        out
    }

    /// Something that may create or drop functions was forwarded: read the
    /// catalog again before the next classification.
    pub(crate) fn catalog_may_have_changed(&self) {
        self.catalog_changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The resource this surface proxies.
    pub fn resource_name(&self) -> &str {
        &self.resource.name
    }

    /// The class and tables of `sql` as this surface would judge it from
    /// a session with no prepared statements or portals (for actions an
    /// agent runs itself and reports over REST), with the server's catalog.
    pub async fn judge_text(&self, sql: &str) -> (gavel_core::ActionClass, Vec<String>) {
        self.ensure_catalog().await;
        let classified = self.classify(sql, &crate::classify::NoNames);
        (classified.class, classified.tables.clone())
    }

    /// Fails closed until the next read succeeds: any user object may
    /// exist.
    fn catalog_unreadable(&self) {
        if self
            .classifier
            .set_catalog(crate::classify::Catalog::unavailable())
        {
            self.classes.clear();
        }
        // `catalog_read` stays behind: the next statement tries again.
    }

    /// Reads what column notation can call from the server, if something
    /// may have changed it. A statement is classified only after that.
    pub(crate) async fn ensure_catalog(&self) {
        use std::sync::atomic::Ordering;
        let wanted = self.catalog_changes.load(Ordering::Acquire);
        if self.catalog_read.load(Ordering::Acquire) >= wanted {
            return;
        }
        let mut slot = self.explainer.lock().await;
        // Another session may have read it while this one waited.
        if self.catalog_read.load(Ordering::Acquire) >= wanted {
            return;
        }
        let reading = self.catalog_changes.load(Ordering::Acquire);
        let read = async {
            if slot.is_none() {
                let started = self
                    .upstream
                    .connect(&[("application_name".into(), "gavel-catalog".into())])
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                *slot = Some(started.stream);
            }
            let conn = slot.as_mut().ok_or("no connection")?;
            simple_query_rows(conn, crate::classify::CATALOG_SQL)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), read).await {
            Ok(Ok(rows)) => {
                let mut catalog = crate::classify::Catalog::default();
                for row in rows {
                    if let [Some(name), Some(kind)] = row.as_slice() {
                        catalog.add(name, kind);
                    }
                }
                if self.classifier.set_catalog(catalog) {
                    // Cached classifications were made without it (they
                    // are keyed by generation; this frees the memory).
                    self.classes.clear();
                }
                self.catalog_read.fetch_max(reading, Ordering::AcqRel);
            }
            Ok(Err(e)) => {
                *slot = None;
                self.catalog_unreadable();
                tracing::warn!(error = %e, resource = %self.resource.name, "cannot read the server's catalog; statements that evaluate expressions are sql.unknown until it can");
            }
            Err(_) => {
                *slot = None;
                self.catalog_unreadable();
                tracing::warn!(resource = %self.resource.name, "reading the server's catalog timed out; statements that evaluate expressions are sql.unknown until it can");
            }
        }
    }

    /// Estimated rows an UPDATE or DELETE would touch, from `EXPLAIN` on
    /// gavel's own connection, inside a read-only transaction that is
    /// always rolled back. The statement itself is never executed.
    pub(crate) async fn estimate_rows(&self, sql: &str) -> Result<f64, String> {
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
            // One statement only: whatever the text holds, the server will
            // not run a second one on gavel's connection.
            let plan = one_statement(conn, &format!("EXPLAIN (FORMAT JSON) {sql}")).await;
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

    /// The server's default parameters, from a connection of gavel's own
    /// (never from a client's session, whose settings are its own).
    pub(crate) async fn learn_server_parameters(
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

    pub(crate) fn register(&self, target: Arc<CancelTarget>) -> (i32, i32) {
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

/// How often the classifier reads the server's functions again (to see
/// those created outside gavel; those created through gavel are seen at
/// once).
const CATALOG_REFRESH: Duration = Duration::from_secs(5);

/// Aborts a background task when its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes a connection's cancel key when it ends.
pub(crate) struct Registered {
    pub surface: Arc<PostgresSurface>,
    pub key: (i32, i32),
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

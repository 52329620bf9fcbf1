//! The gateway process: builds the gate from the configuration, serves the
//! REST API (SPEC §7) and runs the background work (expiry sweeper, policy
//! hot reload).
//!
//! [`Gateway::build`] wires the pieces; [`Gateway::serve`] runs until the
//! shutdown future resolves. Surfaces added later receive the same
//! [`gavel_core::Gate`] from [`Gateway::gate`].
#![deny(missing_docs)]

mod api;
mod audit;
mod error;
mod openapi;
mod slack;
mod teams;
mod views;
mod web;

pub use audit::Checkpointer;
pub use error::ApiError;
pub use openapi::openapi_json;

use anyhow::Context as _;
use gavel_config::Loaded;
use gavel_core::{Gate, GateConfig, Store, SystemClock};
use gavel_identity::Authenticator;
use gavel_policy::{CedarEngine, Reload};
use gavel_store::{PostgresAccess, Storage, StorageUrl};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Everything a running gateway holds.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) gate: Gate,
    pub(crate) standing: Arc<gavel_identity::AgentStanding>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) policy: Arc<CedarEngine>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<Loaded>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) storage: Storage,
    pub(crate) checkpointer: Arc<Checkpointer>,
    pub(crate) postgres: Vec<Arc<gavel_postgres::PostgresSurface>>,
    pub(crate) mcp: gavel_mcp::McpGateway,
    pub(crate) web: Arc<web::WebState>,
    pub(crate) deliveries: Arc<gavel_core::Deliveries>,
    pub(crate) slack: Vec<Arc<gavel_slack::Slack>>,
    pub(crate) teams: Vec<Arc<gavel_teams::Teams>>,
}

/// Opens the configured store: SQLite, or PostgreSQL with its password
/// from `storage.password_env` or `storage.password_file`.
pub async fn open_store(loaded: &Loaded) -> anyhow::Result<Storage> {
    let file = loaded
        .file
        .as_deref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "<defaults>".into());
    let url = StorageUrl::parse(&loaded.storage_url())
        .map_err(|reason| anyhow::anyhow!("{file}: key `storage.url`: {reason}"))?;
    let storage = &loaded.config.storage;
    let password = match (&storage.password_env, &storage.password_file) {
        (Some(var), _) => Some(std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "{file}: key `storage.password_env`: the environment variable {var} is not set"
            )
        })?),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{file}: key `storage.password_file`: cannot read {}: {e}",
                        path.display()
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    let access = PostgresAccess {
        password,
        ca_file: storage.ca_file.clone(),
    };
    Storage::open(&url, &access)
        .await
        .with_context(|| format!("opening storage {}", url.redacted()))
}

fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("gavel_gate_check_seconds".into()),
            &[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn gateway_id(loaded: &Loaded) -> String {
    if let Some(id) = &loaded.config.server.gateway_id {
        return id.clone();
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "gavel".into())
}

impl Gateway {
    /// Opens storage, loads policies and builds the gate. Fails (naming
    /// file, line and reason) on a broken policy set.
    pub async fn build(loaded: Loaded) -> anyhow::Result<Gateway> {
        let storage = open_store(&loaded).await?;
        let store = Arc::new(storage.clone());
        let signer = gavel_audit::NoteSigner::load_or_create(
            &loaded.audit_key_file(),
            &loaded.config.audit.origin,
        )
        .map_err(|e| anyhow::anyhow!("audit signing key: {e}"))?;
        if signer.name() != loaded.config.audit.origin {
            anyhow::bail!(
                "audit signing key {} is named {:?} but audit.origin is {:?}; a log keeps one origin",
                loaded.audit_key_file().display(),
                signer.name(),
                loaded.config.audit.origin
            );
        }
        let checkpointer = Checkpointer::new(
            storage.clone(),
            signer,
            loaded.audit_witness_file(),
            gateway_id(&loaded),
            loaded.config.audit.checkpoint_interval,
        );
        let policy = Arc::new(
            CedarEngine::load(&loaded.config.policy.dir)
                .map_err(|e| anyhow::anyhow!("policies are invalid:\n{e}"))?,
        );
        let clock = Arc::new(SystemClock);
        let deliveries = Arc::new(gavel_core::Deliveries::recorded(Arc::new(
            StoredDeliveries::start(storage.clone()),
        )));
        let mut notifiers: Vec<Arc<dyn gavel_core::Notifier>> = Vec::new();
        for (i, w) in loaded.config.channels.webhook.iter().enumerate() {
            let hook = gavel_webhook::Webhook::start(
                i,
                w,
                &loaded.config.server.public_url,
                deliveries.clone(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            notifiers.push(Arc::new(hook));
        }
        let mut slack = Vec::new();
        for (i, s) in loaded.config.channels.slack.iter().enumerate() {
            let channel = gavel_slack::Slack::start(
                i,
                s,
                &loaded.config.server.public_url,
                deliveries.clone(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            notifiers.push(channel.clone());
            slack.push(channel);
        }
        let mut teams = Vec::new();
        for (i, t) in loaded.config.channels.teams.iter().enumerate() {
            let channel = gavel_teams::Teams::start(
                i,
                t,
                &loaded.config.server.public_url,
                deliveries.clone(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            notifiers.push(channel.clone());
            teams.push(channel);
        }
        let standing = Arc::new(gavel_identity::AgentStanding::new(
            store.clone(),
            clock.clone(),
        ));
        let gate = Gate::new(
            policy.clone(),
            store.clone(),
            store.clone(),
            clock.clone(),
            GateConfig {
                default_timeout: loaded.config.approvals.timeout,
                grant_ttl: loaded.config.approvals.grant_ttl,
                gateway_id: gateway_id(&loaded),
                public_url: loaded.config.server.public_url.clone(),
            },
            notifiers,
        )
        .with_standing(standing.clone());
        for channel in &slack {
            channel.connect(gate.approvals());
        }
        for channel in &teams {
            channel.connect(gate.approvals());
        }
        let file = loaded
            .file
            .as_deref()
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "<defaults>".into());
        let mut postgres = Vec::new();
        for (i, pg) in loaded.config.resources.postgres.iter().enumerate() {
            let surface = gavel_postgres::PostgresSurface::from_config(
                i,
                pg,
                loaded.config.approvals.hold,
                loaded.config.audit.read_durability == gavel_config::ReadDurability::BeforeRelease,
            )
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            postgres.push(Arc::new(surface));
        }
        let mcp = gavel_mcp::McpGateway::from_config(
            &loaded.config.resources.mcp,
            gate.clone(),
            loaded.config.approvals.hold,
            &loaded.config.server.public_url,
        )
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let auth = Arc::new(
            Authenticator::new(&loaded.config.identity.humans, store.clone(), clock)
                .with_oidc(&loaded.config.identity.oidc),
        );
        Ok(Gateway {
            gate,
            standing,
            auth,
            policy,
            store,
            config: Arc::new(loaded),
            metrics: metrics_handle()?,
            web: Arc::new(web::WebState::new(storage.clone())),
            storage,
            checkpointer,
            postgres,
            mcp,
            deliveries,
            slack,
            teams,
        })
    }

    /// How request `id`'s channel deliveries went, as every gateway on the
    /// store recorded them (this process's own view if the store cannot
    /// say).
    pub(crate) async fn deliveries_of(&self, id: &str) -> Vec<gavel_core::Delivery> {
        match self.storage.deliveries_of(id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading delivery status failed; showing this gateway's own");
                self.deliveries.of(id)
            }
        }
    }

    /// The gate every surface asks.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Binds the API listener, starts background work and serves until
    /// `shutdown` resolves, then drains open requests.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listen = self.config.config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr()?;
        let mut surfaces = Vec::new();
        for pg in &self.postgres {
            let addr = pg.listen_addr();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("resource {}: cannot listen on {addr}", pg.name()))?;
            tracing::info!(resource = %pg.name(), listen = %listener.local_addr()?, "postgres listener ready");
            surfaces.push(tokio::spawn(pg.clone().serve(
                listener,
                self.gate.clone(),
                self.auth.clone(),
            )));
        }
        surfaces.extend(self.mcp.start());
        if !self.mcp.is_empty() {
            tracing::info!(
                upstreams = self.mcp.upstreams().len(),
                "MCP gateway at /mcp"
            );
        }
        let bundle = self.policy.bundle();
        let dir = &self.config.config.policy.dir;
        if !dir.is_dir() {
            tracing::warn!(
                policy_dir = %dir.display(),
                "the policy directory does not exist: every action is denied until *.cedar files appear there (set policy.dir in the config)"
            );
        } else if bundle.policies.is_empty() {
            tracing::warn!(
                policy_dir = %dir.display(),
                "no policies in the policy directory: every action is denied until *.cedar files appear there"
            );
        }
        tracing::info!(
            listen = %bound,
            storage = %StorageUrl::parse(&self.config.storage_url()).map(|u| u.redacted()).unwrap_or_default(),
            policies = bundle.policies.len(),
            policy_version = %bundle.version,
            policy_dir = %self.config.config.policy.dir.display(),
            gateway_id = %self.gate.approvals().config().gateway_id,
            "gavel is serving"
        );
        let sweeper = tokio::spawn(sweep(self.clone()));
        let standing = tokio::spawn(watch_standing(self.clone()));
        let reloader = tokio::spawn(reload(self.clone()));
        let checkpoints = tokio::spawn(checkpoint(self.clone()));
        // Decisions made by other gateways on the same store wake the
        // actions held here at once.
        let changes = match &self.storage {
            Storage::Postgres(pg) => {
                let pg = pg.clone();
                let approvals = self.gate.approvals().clone();
                Some(tokio::spawn(async move {
                    pg.watch_requests(|id, state| approvals.wake(id, state))
                        .await
                }))
            }
            Storage::Sqlite(_) => None,
        };
        let checkpointer = self.checkpointer.clone();
        let mcp = self
            .mcp
            .router(self.auth.clone(), allowed_hosts(&self.config, bound));
        let pages = web::router(self.clone());
        let app = api::router(self)
            .merge(pages)
            .merge(mcp)
            .into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving the API");
        for s in surfaces {
            s.abort();
        }
        sweeper.abort();
        standing.abort();
        reloader.abort();
        checkpoints.abort();
        if let Some(changes) = changes {
            changes.abort();
        }
        match checkpointer.checkpoint_now().await {
            Ok(Some(size)) => tracing::info!(size, "signed the final checkpoint"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "final checkpoint failed"),
        }
        checkpointer.release().await;
        tracing::info!("gavel stopped");
        result
    }
}

/// The `Host` values `/mcp` accepts (DNS-rebinding protection): loopback
/// names, the bound address, and the host of `server.public_url`.
fn allowed_hosts(config: &Loaded, bound: SocketAddr) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        bound.ip().to_string(),
    ];
    let public = &config.config.server.public_url;
    if let Some(rest) = public.split_once("://").map(|(_, r)| r) {
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(h, _)| h);
        if !host.is_empty() {
            hosts.push(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            );
        }
    }
    hosts
}

/// Expires due requests and unused grants, so waiters and channels hear
/// about it even when nobody asks.
async fn sweep(gw: Gateway) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match gw.gate.approvals().expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired requests"),
            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
        }
    }
}

/// Re-reads which agents are revoked or expired, every second (`gavel
/// agent revoke` writes to the store from another process), and withdraws
/// the pending requests of each agent that fell: nobody approves what a
/// revoked agent asked for, and admission refuses its held actions.
async fn watch_standing(gw: Gateway) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let fallen = match gw.standing.refresh().await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "reading agent standing failed");
                continue;
            }
        };
        for principal in fallen {
            match gw.gate.approvals().withdraw_fallen(&principal).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(principal = %principal.qualified_id(), withdrawn = n, "revoked or expired: pending requests withdrawn")
                }
                Err(e) => {
                    tracing::error!(error = %e, principal = %principal.qualified_id(), "withdrawing a revoked agent's requests failed")
                }
            }
        }
    }
}

/// Signs a checkpoint every half `audit.checkpoint_interval` while records
/// arrive, if this gateway holds the signer lease (which lasts one
/// interval and is renewed at every attempt): when the signer dies,
/// another gateway signs within one and a half intervals.
async fn checkpoint(gw: Gateway) {
    let mut tick = tokio::time::interval(gw.config.config.audit.checkpoint_interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = gw.checkpointer.checkpoint_now().await {
            tracing::error!(error = %e, "signing an audit checkpoint failed");
        }
    }
}

/// Hot-reloads policies (a broken set keeps the last good one live) and
/// the configuration's humans; other configuration changes are logged as
/// needing a restart.
async fn reload(gw: Gateway) {
    let mut tick = tokio::time::interval(gw.config.config.policy.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut config_watch = ConfigWatch::new(&gw);
    loop {
        tick.tick().await;
        config_watch.check(&gw);
        let policy = gw.policy.clone();
        let outcome = tokio::task::spawn_blocking(move || policy.reload_if_changed()).await;
        match outcome {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Reloaded { version }) => {
                metrics::gauge!("gavel_policy_reload_failed").set(0.0);
                tracing::info!(%version, "policies reloaded")
            }
            Ok(Reload::Failed(errors)) => {
                metrics::gauge!("gavel_policy_reload_failed").set(1.0);
                tracing::error!(errors = %errors, "policy reload failed; keeping the last good policy set")
            }
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}

/// Watches the configuration file. Humans (`[[identity.humans]]`) take
/// effect at once; anything else is reported as needing a restart.
struct ConfigWatch {
    file: Option<std::path::PathBuf>,
    modified: Option<std::time::SystemTime>,
    /// The configuration as last read (the humans as applied).
    seen: gavel_config::Config,
}

impl ConfigWatch {
    fn new(gw: &Gateway) -> ConfigWatch {
        let file = gw.config.file.clone();
        ConfigWatch {
            modified: file.as_deref().and_then(modified),
            file,
            seen: gw.config.config.clone(),
        }
    }

    fn check(&mut self, gw: &Gateway) {
        let Some(file) = self.file.as_deref() else {
            return;
        };
        let now = modified(file);
        if now == self.modified {
            return;
        }
        self.modified = now;
        let fresh = match gavel_config::load(Some(file)) {
            Ok(l) => l.config,
            Err(e) => {
                tracing::error!(error = %e, "the configuration file changed but is invalid; nothing of it was applied");
                return;
            }
        };
        let humans_changed =
            format!("{:?}", fresh.identity.humans) != format!("{:?}", self.seen.identity.humans);
        if humans_changed {
            gw.auth.set_humans(&fresh.identity.humans);
            tracing::info!(
                humans = fresh.identity.humans.len(),
                "reloaded [[identity.humans]] from the configuration"
            );
        }
        let mut rest_before = self.seen.clone();
        let mut rest_after = fresh.clone();
        rest_before.identity.humans.clear();
        rest_after.identity.humans.clear();
        if format!("{rest_before:?}") != format!("{rest_after:?}") {
            tracing::warn!(
                file = %file.display(),
                "the configuration changed beyond [[identity.humans]]; restart gavel for it to take effect"
            );
        }
        self.seen = fresh;
    }
}

fn modified(file: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

/// Delivery status on its way to the store, in order, by one writer task:
/// [`gavel_core::Deliveries`] hands changes over without waiting.
struct StoredDeliveries {
    queue: tokio::sync::mpsc::Sender<(String, gavel_core::Timestamp, gavel_core::Delivery)>,
}

impl StoredDeliveries {
    fn start(storage: Storage) -> StoredDeliveries {
        // Deliveries of this process are told apart from other gateways'
        // (and from its own before a restart) by a random id.
        let process = uuid::Uuid::now_v7().simple().to_string();
        let (queue, mut changes) =
            tokio::sync::mpsc::channel::<(String, gavel_core::Timestamp, gavel_core::Delivery)>(
                10_000,
            );
        tokio::spawn(async move {
            while let Some((request_id, began_at, delivery)) = changes.recv().await {
                if let Err(e) = storage
                    .record_delivery(&request_id, &process, began_at, &delivery)
                    .await
                {
                    tracing::warn!(error = %e, request = %request_id, "recording delivery status failed");
                }
            }
        });
        StoredDeliveries { queue }
    }
}

impl gavel_core::DeliveryRecorder for StoredDeliveries {
    fn record(
        &self,
        request_id: &str,
        began_at: gavel_core::Timestamp,
        delivery: &gavel_core::Delivery,
    ) {
        if self
            .queue
            .try_send((request_id.to_owned(), began_at, delivery.clone()))
            .is_err()
        {
            tracing::warn!(request = %request_id, "delivery status queue full; this change stays in this gateway only");
        }
    }
}

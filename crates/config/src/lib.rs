//! gavel's configuration: one TOML file (SPEC §7).
//!
//! Every key has a default, so `gavel serve` runs with no file at all.
//! Unknown keys and bad values fail at start with the file, the key and the
//! reason. Relative paths are relative to the directory holding the file
//! (the working directory when there is no file). Secrets are never inline:
//! human tokens appear only as SHA-256 hashes.
#![deny(missing_docs)]

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SQLite database, audit key, checkpoints.
    pub data_dir: PathBuf,
    /// The API listener.
    pub server: ServerConfig,
    /// Where state lives.
    pub storage: StorageConfig,
    /// Who is who.
    pub identity: IdentityConfig,
    /// Where policies live.
    pub policy: PolicyConfig,
    /// Approval timing.
    pub approvals: ApprovalsConfig,
    /// Guarded resources.
    pub resources: ResourcesConfig,
    /// The tamper-evident audit log.
    pub audit: AuditConfig,
    /// Where reviewers hear about requests.
    pub channels: ChannelsConfig,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The log's origin: the first line of every checkpoint and the name of
    /// the signing key. Unique per log.
    pub origin: String,
    /// How often a new checkpoint is signed while records arrive.
    #[serde(with = "duration")]
    pub checkpoint_interval: Duration,
    /// The Ed25519 signing key (created on first start, mode 0600);
    /// default `{data_dir}/audit.key`.
    pub key_file: Option<PathBuf>,
    /// When the record of a read that policy alone allowed must be durable:
    /// `before_release` (default: before any of the result reaches the
    /// client) or `buffered` (queued in order with every other record and
    /// written within one group commit; a crash can lose the last batch of
    /// such records, never the record of a write, a refusal, an approval or
    /// a grant).
    pub read_durability: ReadDurability,
}

/// See [`AuditConfig::read_durability`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadDurability {
    /// Durable before the result is released.
    #[default]
    BeforeRelease,
    /// Written by the next group commit, not awaited.
    Buffered,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: "gavel.local/audit".into(),
            checkpoint_interval: Duration::from_secs(5),
            key_file: None,
            read_durability: ReadDurability::BeforeRelease,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the API, UI and integrations.
    pub listen: SocketAddr,
    /// Base URL used in links sent to reviewers and clients.
    pub public_url: String,
    /// This gateway's id in audit records; defaults to the host name.
    pub gateway_id: Option<String>,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DATABASE` (never with
    /// a password in it); defaults to `sqlite://{data_dir}/gavel.db`.
    pub url: Option<String>,
    /// The environment variable holding the PostgreSQL password.
    pub password_env: Option<String>,
    /// A file holding the PostgreSQL password (a mounted secret).
    pub password_file: Option<PathBuf>,
    /// The CA certificate (PEM) the PostgreSQL server's certificate must
    /// chain to; set, gavel connects with TLS and verifies the server's
    /// certificate and host name (`verify-full`).
    pub ca_file: Option<PathBuf>,
}

/// `[identity]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// `[[identity.humans]]`: humans with API tokens, for small setups.
    pub humans: Vec<HumanConfig>,
    /// `[[identity.oidc]]`: OpenID Connect issuers whose tokens gavel
    /// accepts (humans, and agents through `agents`).
    pub oidc: Vec<OidcIssuerConfig>,
}

/// One `[[identity.oidc]]` entry: an issuer whose signed JWTs (ID or
/// access tokens) authenticate humans, and agents by client credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The issuer URL, exactly as the tokens' `iss` and the discovery
    /// document say it (`https://…`; `http://` only for loopback).
    pub issuer: String,
    /// The audience gavel's tokens must carry in `aud`.
    pub audience: String,
    /// The claim that lists the human's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim that names the human (default `email`, accepted only with
    /// `email_verified: true`; `sub` or any other claim is taken as is).
    #[serde(default = "default_human_id_claim")]
    pub human_id_claim: String,
    /// How far `exp` and `nbf` may be off (default 60 s, at most 5 min).
    #[serde(with = "duration", default = "default_clock_skew")]
    pub clock_skew: Duration,
    /// Signature algorithms accepted (default RS256, ES256 and EdDSA; only
    /// these asymmetric ones are supported).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The least time between two JWKS fetches caused by a token with an
    /// unknown `kid` (default 30 s): rotation is picked up, a flood of
    /// made-up key ids costs the issuer one request per interval.
    #[serde(with = "duration", default = "default_jwks_refresh")]
    pub jwks_min_refresh_interval: Duration,
    /// gavel's own client id at this issuer: set it to let reviewers sign
    /// in to the web pages (authorization code flow with PKCE). ID tokens
    /// from that flow must carry it in `aud`.
    pub client_id: Option<String>,
    /// Environment variable holding the client secret, for issuers that
    /// require one at the token endpoint (never in the file).
    pub client_secret_env: Option<String>,
    /// Client-credentials tokens → agents: the token's `client_id` (or
    /// `azp`, else `sub`) → the name of an agent in gavel's store, which
    /// gives it its owner and groups.
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_human_id_claim() -> String {
    "email".into()
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

/// One `[[identity.humans]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HumanConfig {
    /// Email or IdP subject.
    pub id: String,
    /// Groups, as policies and `@approval` name them.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of the human's API token (`gavel token hash`).
    pub token_sha256: String,
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory of `*.cedar` files, watched for changes.
    pub dir: PathBuf,
    /// How often the directory is checked for changes.
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

/// `[approvals]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// How long a surface holds an action waiting for a decision.
    #[serde(with = "duration")]
    pub hold: Duration,
    /// Default request expiry when no policy sets `@timeout`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How long an approval may be used.
    #[serde(with = "duration")]
    pub grant_ttl: Duration,
}

/// `[channels]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// `[[channels.webhook]]`: URLs that receive every request and each of
    /// its state changes as signed JSON.
    pub webhook: Vec<WebhookConfig>,
    /// `[[channels.slack]]`: Slack channels where reviewers approve with
    /// buttons.
    pub slack: Vec<SlackConfig>,
    /// `[[channels.teams]]`: Microsoft Teams channels that get an Adaptive
    /// Card per request (Workflows webhook, or a Bot Framework app whose
    /// cards carry Approve and Deny).
    pub teams: Vec<TeamsConfig>,
}

/// One `[[channels.teams]]` entry: a Teams Workflows webhook, a Bot
/// Framework app, or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// A name for logs, metrics and delivery status (default `teams-N`).
    pub name: Option<String>,
    /// Environment variable holding the Workflows ("When a Teams webhook
    /// request is received") URL. The URL carries its own signature, so it
    /// is a secret. Cards posted this way open the approval page.
    pub webhook_url_env: Option<String>,
    /// Approver sets this channel serves; empty: all.
    #[serde(default)]
    pub routes: Vec<String>,
    /// A Bot Framework app: cards posted by it carry Approve and Deny
    /// (`Action.Execute`), answered at `/integrations/teams/messages`.
    pub bot: Option<TeamsBotConfig>,
}

/// `[channels.teams.bot]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsBotConfig {
    /// The Microsoft App ID: the `aud` of Bot Framework tokens.
    pub app_id: String,
    /// Environment variable holding the app's client secret.
    pub app_password_env: String,
    /// The Bot Connector endpoint of the conversation (the `serviceUrl`
    /// Teams gave the bot, e.g. `https://smba.trafficmanager.net/emea/`).
    pub service_url: String,
    /// The channel conversation cards are posted to (`19:…@thread.tacv2`).
    pub conversation_id: String,
    /// The Microsoft Entra tenant whose users may decide; invokes from
    /// other tenants are refused when it is set.
    pub tenant_id: Option<String>,
    /// Entra object id (`from.aadObjectId`) → gavel human id. Teams users
    /// who are not listed cannot decide.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Bot Framework's OpenID metadata (overridable for tests).
    #[serde(default = "default_bot_openid_metadata")]
    pub openid_metadata: String,
    /// Where the app gets its token for the Bot Connector (overridable
    /// for tests).
    #[serde(default = "default_bot_token_endpoint")]
    pub token_endpoint: String,
}

fn default_bot_openid_metadata() -> String {
    "https://login.botframework.com/v1/.well-known/openidconfiguration".into()
}

fn default_bot_token_endpoint() -> String {
    "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token".into()
}

/// One `[[channels.slack]]` entry: a Slack app (bot token, signing secret)
/// posting to one channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// A name for logs, metrics and delivery status (default
    /// `slack-{channel}`).
    pub name: Option<String>,
    /// Environment variable holding the bot token (`xoxb-…`).
    pub bot_token_env: String,
    /// Environment variable holding the app's signing secret.
    pub signing_secret_env: String,
    /// The channel id to post requests to (`C0123456`).
    pub channel: String,
    /// Approver sets this channel serves; empty: all.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Slack's Web API base (overridable for tests).
    #[serde(default = "default_slack_api")]
    pub api_base: String,
    /// Slack user id → gavel human id, for users whose Slack email is not
    /// their gavel id. Others are mapped by their confirmed email.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// The Slack workspace (`T…`) whose members may decide; users of other
    /// workspaces (Slack Connect) are refused when it is set.
    pub team_id: Option<String>,
}

fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

/// One `[[channels.webhook]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A name for logs, metrics and delivery status (default `webhook-N`).
    pub name: Option<String>,
    /// Where to POST (`https://`; `http://` only for loopback).
    pub url: String,
    /// Environment variable holding the signing secret
    /// (`X-Gavel-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")`).
    pub secret_env: String,
    /// Approver sets this channel serves (`group:dba`, `user:a@x`); a
    /// request goes here when one of its approvers is listed. Empty: all.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// `[resources]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    /// `[[resources.api]]`: names agents use with `POST /api/v1/actions`.
    pub api: Vec<ApiResourceConfig>,
    /// `[[resources.postgres]]`: PostgreSQL servers reached through gavel's
    /// wire-protocol proxy.
    pub postgres: Vec<PostgresResourceConfig>,
    /// `[[resources.mcp]]`: MCP servers reached through gavel's MCP gateway
    /// at `/mcp`.
    pub mcp: Vec<McpResourceConfig>,
}

/// One `[[resources.mcp]]` entry: an upstream MCP server, launched as a
/// child process (`command`) or reached over streamable HTTP (`url`).
/// Its tools appear to agents as `NAME__TOOL`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpResourceConfig {
    /// The resource name (`resource.name` in policies), also the tool
    /// prefix: letters, digits, `-` and `_`, without `__`.
    pub name: String,
    /// The program and its arguments, spoken to over stdio.
    pub command: Option<Vec<String>>,
    /// Working directory of the child process.
    pub cwd: Option<PathBuf>,
    /// Variables set in the child's environment. Nothing else reaches it
    /// but the variables named in `inherit_env` and `env_from`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Child variable → gavel's own variable to copy it from (secrets
    /// stay out of the config file).
    #[serde(default)]
    pub env_from: BTreeMap<String, String>,
    /// gavel's variables copied unchanged into the child (default `PATH`
    /// and `HOME`, which `npx` and most runtimes need).
    #[serde(default = "default_inherit_env")]
    pub inherit_env: Vec<String>,
    /// A streamable HTTP endpoint, e.g. `https://mcp.example.com/mcp`.
    pub url: Option<String>,
    /// Environment variable holding a bearer token for `url`.
    pub bearer_token_env: Option<String>,
    /// Cedar entity tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Show its tools and prompts as `NAME__TOOL` (default true). With
    /// `false` they keep their own names; a name another upstream also
    /// shows is withheld and refused, never guessed.
    #[serde(default = "default_true")]
    pub prefix: bool,
    /// The most client sessions it serves at once (default 64): each MCP
    /// session at gavel gets a connection of its own to each upstream (a
    /// child process for `command`).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// The most of those one principal holds at once (default 8), so that
    /// no agent can take every slot.
    #[serde(default = "default_max_sessions_per_principal")]
    pub max_sessions_per_principal: usize,
    /// The roots gavel gives this upstream when it asks (`roots/list`):
    /// `file://` URIs from the configuration. A client's own roots never
    /// reach an upstream (a filesystem server would take them as its
    /// allowed directories). Empty (the default): gavel claims no roots.
    #[serde(default)]
    pub roots: Vec<String>,
}

fn default_max_sessions_per_principal() -> usize {
    8
}

fn default_max_sessions() -> usize {
    64
}

fn default_inherit_env() -> Vec<String> {
    vec!["PATH".into(), "HOME".into()]
}

/// One `[[resources.postgres]]` entry: a listener that speaks PostgreSQL's
/// protocol to agents and forwards to `upstream` with gavel's credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresResourceConfig {
    /// The resource name (`resource.name` in policies).
    pub name: String,
    /// Where agents connect.
    pub listen: SocketAddr,
    /// `postgres://USER@HOST:PORT/DATABASE`: the real server and gavel's own
    /// role there. A password in the URL is refused: use
    /// `upstream_password_env` or `upstream_password_file`.
    pub upstream: String,
    /// Environment variable holding gavel's upstream password.
    pub upstream_password_env: Option<String>,
    /// File holding gavel's upstream password (trailing newline ignored).
    pub upstream_password_file: Option<PathBuf>,
    /// `disable` (default) or `require`: TLS to the upstream, verified
    /// against `upstream_ca_file`.
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    /// PEM bundle of the CA(s) that sign the upstream's certificate.
    pub upstream_ca_file: Option<PathBuf>,
    /// The name the upstream certificate must carry; default the URL's host.
    pub upstream_tls_server_name: Option<String>,
    /// PEM certificate chain offered to clients that ask for TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse clients that do not use TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Extra functions with side effects, name → action class (e.g.
    /// `{ "app.purge_tenant" = "sql.admin" }`), on top of the built-in list.
    #[serde(default)]
    pub side_effect_functions: BTreeMap<String, String>,
    /// Extra functions known to be read-only.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Estimate the rows an UPDATE or DELETE would touch with `EXPLAIN`
    /// on a separate gavel-owned connection, for reviewers (default true).
    #[serde(default = "default_true")]
    pub explain_estimates: bool,
    /// Cedar entity tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// TLS to a PostgreSQL upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain TCP (loopback or a trusted network).
    #[default]
    Disable,
    /// TLS, certificate verified against `upstream_ca_file`.
    Require,
}

fn default_true() -> bool {
    true
}

/// One `[[resources.api]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiResourceConfig {
    /// The resource name.
    pub name: String,
    /// Its kind as policies see it (`resource.kind`); default `api`.
    #[serde(default = "default_api_kind")]
    pub kind: String,
    /// Cedar entity tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_api_kind() -> String {
    "api".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("gavel-data"),
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            identity: IdentityConfig::default(),
            policy: PolicyConfig::default(),
            approvals: ApprovalsConfig::default(),
            resources: ResourcesConfig::default(),
            audit: AuditConfig::default(),
            channels: ChannelsConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            public_url: "http://127.0.0.1:8470".into(),
            gateway_id: None,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: PathBuf::from("policies"),
            reload_interval: Duration::from_secs(1),
        }
    }
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            hold: Duration::from_secs(60),
            timeout: Duration::from_secs(15 * 60),
            grant_ttl: Duration::from_secs(10 * 60),
        }
    }
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"90s\", \"15m\" or \"2h\""
            ))
        })
    }
}

/// A configuration that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<defaults>`).
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted key, e.g. `approvals.hold` or `identity.humans[1].token_sha256`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A loaded configuration with its paths resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings, with every relative path made absolute or
    /// relative to the working directory.
    pub config: Config,
    /// Where it came from (`None` for built-in defaults).
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// The SQLite database path or storage URL in effect.
    pub fn storage_url(&self) -> String {
        match &self.config.storage.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.config.data_dir.join("gavel.db").display()
            ),
        }
    }

    /// The audit signing key's path.
    pub fn audit_key_file(&self) -> PathBuf {
        self.config
            .audit
            .key_file
            .clone()
            .unwrap_or_else(|| self.config.data_dir.join("audit.key"))
    }

    /// Where the gateway keeps a copy of its last signed checkpoint, beside
    /// the key and outside the database, so that deleting checkpoints from
    /// the database does not make it re-sign a rewritten log.
    pub fn audit_witness_file(&self) -> PathBuf {
        self.audit_key_file().with_file_name("audit.checkpoint")
    }

    /// The resource named `name` among every configured kind (`api`
    /// entries, `postgres` proxies, `mcp` upstreams): its kind and tags, as
    /// the surfaces describe it to policy.
    pub fn resource(&self, name: &str) -> Option<ApiResourceConfig> {
        let r = &self.config.resources;
        if let Some(api) = r.api.iter().find(|r| r.name == name) {
            return Some(api.clone());
        }
        let found = |kind: &str, tags: &BTreeMap<String, String>| ApiResourceConfig {
            name: name.to_owned(),
            kind: kind.to_owned(),
            tags: tags.clone(),
        };
        r.postgres
            .iter()
            .find(|p| p.name == name)
            .map(|p| found("postgres", &p.tags))
            .or_else(|| {
                r.mcp
                    .iter()
                    .find(|m| m.name == name)
                    .map(|m| found("mcp", &m.tags))
            })
    }

    /// The names of every configured resource.
    pub fn resource_names(&self) -> impl Iterator<Item = String> + '_ {
        let r = &self.config.resources;
        r.api
            .iter()
            .map(|a| a.name.clone())
            .chain(r.postgres.iter().map(|p| p.name.clone()))
            .chain(r.mcp.iter().map(|m| m.name.clone()))
    }
}

/// Loads `file`, or the defaults when `file` is `None`.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let Some(file) = file else {
        let config = Config::default();
        validate(&config, Path::new("<defaults>"))?;
        return Ok(Loaded { config, file: None });
    };
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        key: String::new(),
        reason: format!("cannot read: {e}"),
    })?;
    let mut config = parse(&text, file)?;
    let base = file.parent().unwrap_or(Path::new(""));
    config.data_dir = base.join(&config.data_dir);
    config.policy.dir = base.join(&config.policy.dir);
    config.audit.key_file = config.audit.key_file.map(|k| base.join(k));
    for pg in &mut config.resources.postgres {
        for path in [
            &mut pg.upstream_password_file,
            &mut pg.upstream_ca_file,
            &mut pg.tls_cert_file,
            &mut pg.tls_key_file,
        ] {
            *path = path.take().map(|p| base.join(p));
        }
    }
    for mcp in &mut config.resources.mcp {
        mcp.cwd = mcp.cwd.take().map(|p| base.join(p));
    }
    if let Some(path) = config
        .storage
        .url
        .as_deref()
        .and_then(|url| url.strip_prefix("sqlite://"))
    {
        config.storage.url = Some(format!("sqlite://{}", base.join(path).display()));
    }
    Ok(Loaded {
        config,
        file: Some(file.to_path_buf()),
    })
}

/// Parses and validates TOML text that came from `file`.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: line_of(e.span()),
        key: String::new(),
        reason: e.message().to_owned(),
    })?;
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            file: file.to_path_buf(),
            line: line_of(inner.span()),
            key: if key == "." { String::new() } else { key },
            reason: inner.message().to_owned(),
        }
    })?;
    validate(&config, file)?;
    Ok(config)
}

/// Whether `url` is `https://`, or `http://` to a loopback host (for local
/// development and tests). The authority is read up to the first `/`, so
/// `http://localhost@evil.example` is not loopback.
pub fn secure_or_loopback(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn validate(c: &Config, file: &Path) -> Result<(), ConfigError> {
    let fail = |key: String, reason: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        key,
        reason,
    };
    if !(c.server.public_url.starts_with("http://") || c.server.public_url.starts_with("https://"))
    {
        return Err(fail(
            "server.public_url".into(),
            format!(
                "{:?} must start with http:// or https://",
                c.server.public_url
            ),
        ));
    }
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, h) in c.identity.humans.iter().enumerate() {
        if h.id.trim().is_empty() {
            return Err(fail(
                format!("identity.humans[{i}].id"),
                "must not be empty".into(),
            ));
        }
        // Case-insensitively: two spellings of one person would otherwise
        // count twice toward a quorum.
        if !ids.insert(h.id.to_lowercase()) {
            return Err(fail(
                format!("identity.humans[{i}].id"),
                format!("{:?} is listed twice", h.id),
            ));
        }
        if h.token_sha256.len() != 64 || !h.token_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(
                format!("identity.humans[{i}].token_sha256"),
                "must be the 64-hex-digit SHA-256 of the token (run `gavel token hash TOKEN`), never the token itself".into(),
            ));
        }
        if !hashes.insert(h.token_sha256.to_lowercase()) {
            return Err(fail(
                format!("identity.humans[{i}].token_sha256"),
                "is the same as another human's: every human needs a token of their own".into(),
            ));
        }
    }
    for (i, w) in c.channels.webhook.iter().enumerate() {
        let key = |field: &str| format!("channels.webhook[{i}].{field}");
        if !secure_or_loopback(&w.url) {
            return Err(fail(
                key("url"),
                "must be an https:// URL (http:// only for loopback)".into(),
            ));
        }
        if w.secret_env.trim().is_empty() {
            return Err(fail(
                key("secret_env"),
                "must name an environment variable".into(),
            ));
        }
        for r in &w.routes {
            if !(r.starts_with("group:") || r.starts_with("user:")) {
                return Err(fail(
                    key("routes"),
                    format!("{r:?} must be group:NAME or user:ID, as in @approval"),
                ));
            }
        }
    }
    for (i, s) in c.channels.slack.iter().enumerate() {
        let key = |field: &str| format!("channels.slack[{i}].{field}");
        if !secure_or_loopback(&s.api_base) {
            return Err(fail(
                key("api_base"),
                "must be https:// (http:// only for loopback)".into(),
            ));
        }
        if s.channel.trim().is_empty() {
            return Err(fail(key("channel"), "must name a channel id".into()));
        }
        for r in &s.routes {
            if !(r.starts_with("group:") || r.starts_with("user:")) {
                return Err(fail(
                    key("routes"),
                    format!("{r:?} must be group:NAME or user:ID, as in @approval"),
                ));
            }
        }
    }
    let mut app_ids = HashSet::new();
    for (i, t) in c.channels.teams.iter().enumerate() {
        let key = |field: &str| format!("channels.teams[{i}].{field}");
        if let Some(b) = &t.bot
            && !app_ids.insert(b.app_id.clone())
        {
            return Err(fail(
                key("bot.app_id"),
                format!(
                    "{:?} is used by another Teams channel: one bot app per channel",
                    b.app_id
                ),
            ));
        }
        if t.webhook_url_env.is_none() && t.bot.is_none() {
            return Err(fail(
                key("webhook_url_env"),
                "a Teams channel needs webhook_url_env, [channels.teams.bot], or both".into(),
            ));
        }
        if t.webhook_url_env
            .as_deref()
            .is_some_and(|e| e.trim().is_empty())
        {
            return Err(fail(
                key("webhook_url_env"),
                "must name an environment variable".into(),
            ));
        }
        for r in &t.routes {
            if !(r.starts_with("group:") || r.starts_with("user:")) {
                return Err(fail(
                    key("routes"),
                    format!("{r:?} must be group:NAME or user:ID, as in @approval"),
                ));
            }
        }
        if let Some(b) = &t.bot {
            for (field, url) in [
                ("bot.service_url", &b.service_url),
                ("bot.openid_metadata", &b.openid_metadata),
                ("bot.token_endpoint", &b.token_endpoint),
            ] {
                if !secure_or_loopback(url) {
                    return Err(fail(
                        key(field),
                        "must be https:// (http:// only for loopback)".into(),
                    ));
                }
            }
            for (field, value) in [
                ("bot.app_id", &b.app_id),
                ("bot.app_password_env", &b.app_password_env),
                ("bot.conversation_id", &b.conversation_id),
            ] {
                if value.trim().is_empty() {
                    return Err(fail(key(field), "must not be empty".into()));
                }
            }
        }
    }
    let mut issuers = HashSet::new();
    for (i, o) in c.identity.oidc.iter().enumerate() {
        let key = |field: &str| format!("identity.oidc[{i}].{field}");
        if !secure_or_loopback(&o.issuer) {
            return Err(fail(
                key("issuer"),
                format!(
                    "{:?} must be an https:// URL (http:// only for loopback)",
                    o.issuer
                ),
            ));
        }
        if !issuers.insert(o.issuer.trim_end_matches('/')) {
            return Err(fail(
                key("issuer"),
                format!("{:?} is listed twice", o.issuer),
            ));
        }
        if o.audience.trim().is_empty() {
            return Err(fail(key("audience"), "must not be empty".into()));
        }
        if o.clock_skew > Duration::from_secs(300) {
            return Err(fail(key("clock_skew"), "must be at most 5m".into()));
        }
        if o.algorithms.is_empty() {
            return Err(fail(key("algorithms"), "must name at least one".into()));
        }
        for alg in &o.algorithms {
            if !matches!(alg.as_str(), "RS256" | "ES256" | "EdDSA") {
                return Err(fail(
                    key("algorithms"),
                    format!("{alg:?} is not supported (RS256, ES256, EdDSA)"),
                ));
            }
        }
    }
    for (key, d) in [
        ("approvals.hold", c.approvals.hold),
        ("approvals.timeout", c.approvals.timeout),
        ("approvals.grant_ttl", c.approvals.grant_ttl),
        ("policy.reload_interval", c.policy.reload_interval),
        ("audit.checkpoint_interval", c.audit.checkpoint_interval),
    ] {
        if d.is_zero() {
            return Err(fail(key.into(), "must be longer than zero".into()));
        }
        if d > MAX_DURATION {
            return Err(fail(key.into(), "must be at most 365 days".into()));
        }
    }
    let origin = &c.audit.origin;
    if origin.is_empty() || origin.contains('+') || origin.chars().any(char::is_whitespace) {
        return Err(fail(
            "audit.origin".into(),
            "must be non-empty, without spaces or '+' (it names the signing key), e.g. \"audit.example.com/gavel\"".into(),
        ));
    }
    let mut names = HashSet::new();
    for (i, r) in c.resources.api.iter().enumerate() {
        if r.name.trim().is_empty() {
            return Err(fail(
                format!("resources.api[{i}].name"),
                "must not be empty".into(),
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Err(fail(
                format!("resources.api[{i}].name"),
                format!("{:?} is configured twice", r.name),
            ));
        }
    }
    let mut listens = HashSet::new();
    for (i, r) in c.resources.postgres.iter().enumerate() {
        let key = |field: &str| format!("resources.postgres[{i}].{field}");
        if r.name.trim().is_empty() {
            return Err(fail(key("name"), "must not be empty".into()));
        }
        if !names.insert(r.name.as_str()) {
            return Err(fail(
                key("name"),
                format!("{:?} names another resource too", r.name),
            ));
        }
        if r.listen == c.server.listen || !listens.insert(r.listen) {
            return Err(fail(
                key("listen"),
                format!("{} is already used by another listener", r.listen),
            ));
        }
        if !(r.upstream.starts_with("postgres://") || r.upstream.starts_with("postgresql://")) {
            // Not echoed: it may carry a password.
            return Err(fail(
                key("upstream"),
                "must be a postgres://USER@HOST:PORT/DATABASE URL".into(),
            ));
        }
        if r.upstream_password_env.is_some() && r.upstream_password_file.is_some() {
            return Err(fail(
                key("upstream_password_env"),
                "set upstream_password_env or upstream_password_file, not both".into(),
            ));
        }
        if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
            return Err(fail(
                key("tls_cert_file"),
                "tls_cert_file and tls_key_file go together".into(),
            ));
        }
        if r.require_tls && r.tls_cert_file.is_none() {
            return Err(fail(
                key("require_tls"),
                "needs tls_cert_file and tls_key_file".into(),
            ));
        }
        if r.upstream_tls == UpstreamTls::Require && r.upstream_ca_file.is_none() {
            return Err(fail(
                key("upstream_ca_file"),
                "upstream_tls = \"require\" needs the CA that signs the upstream's certificate"
                    .into(),
            ));
        }
    }
    for (i, r) in c.resources.mcp.iter().enumerate() {
        let key = |field: &str| format!("resources.mcp[{i}].{field}");
        let valid_name = !r.name.is_empty()
            && !r.name.contains("__")
            && !r.name.starts_with('_')
            && !r.name.ends_with('_')
            && r.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(fail(
                key("name"),
                format!(
                    "{:?} must be letters, digits, '-' and '_', without \"__\" and not starting or ending with '_' (it prefixes tool names as NAME__TOOL)",
                    r.name
                ),
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Err(fail(
                key("name"),
                format!("{:?} names another resource too", r.name),
            ));
        }
        if r.max_sessions == 0 || r.max_sessions_per_principal == 0 {
            return Err(fail(
                key("max_sessions"),
                "max_sessions and max_sessions_per_principal must be at least 1 (each client session needs a connection of its own)".into(),
            ));
        }
        if let Some(bad) = r.roots.iter().find(|u| !u.starts_with("file://")) {
            return Err(fail(key("roots"), format!("{bad:?} is not a file:// URI")));
        }
        match (&r.command, &r.url) {
            (Some(cmd), None) if cmd.is_empty() || cmd[0].is_empty() => {
                return Err(fail(key("command"), "must name a program".into()));
            }
            (Some(_), None) => {
                if r.bearer_token_env.is_some() {
                    return Err(fail(
                        key("bearer_token_env"),
                        "goes with url, not command".into(),
                    ));
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(fail(
                        key("url"),
                        "must be an http:// or https:// URL".into(),
                    ));
                }
                if r.bearer_token_env.is_some() && !secure_or_loopback(url) {
                    return Err(fail(
                        key("bearer_token_env"),
                        "a bearer token is sent only over https:// or to loopback".into(),
                    ));
                }
                if !r.env.is_empty() || !r.env_from.is_empty() || r.cwd.is_some() {
                    return Err(fail(
                        key("env"),
                        "env, env_from and cwd go with command, not url".into(),
                    ));
                }
            }
            _ => {
                return Err(fail(
                    key("command"),
                    "set exactly one of command (a child process over stdio) or url (streamable HTTP)"
                        .into(),
                ));
            }
        }
    }
    let storage = &c.storage;
    let postgres = storage
        .url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    if let Some(url) = storage.url.as_deref()
        && !postgres
        && !url.starts_with("sqlite:")
    {
        // Not echoed: a URL may carry a password.
        return Err(fail(
            "storage.url".into(),
            "unsupported storage URL scheme; expected sqlite://PATH or postgres://USER@HOST/DATABASE"
                .into(),
        ));
    }
    if storage.password_env.is_some() && storage.password_file.is_some() {
        return Err(fail(
            "storage.password_env".into(),
            "set storage.password_env or storage.password_file, not both".into(),
        ));
    }
    if !postgres
        && (storage.password_env.is_some()
            || storage.password_file.is_some()
            || storage.ca_file.is_some())
    {
        return Err(fail(
            "storage.url".into(),
            "storage.password_env, password_file and ca_file are for a postgres:// URL".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("gavel.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_need_no_file() {
        let l = load(None).unwrap();
        assert_eq!(l.config.server.listen.to_string(), "127.0.0.1:8470");
        assert_eq!(l.storage_url(), "sqlite://gavel-data/gavel.db");
        assert_eq!(l.config.approvals.hold, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_file_line_key_and_reason() {
        let e = err("[approvals]\nhold = \"soon\"\n");
        assert!(
            e.starts_with("gavel.toml:2: key `approvals.hold`: invalid duration \"soon\""),
            "{e}"
        );
        let e = err("[server]\nlisten = \"nowhere\"\n");
        assert!(e.contains("key `server.listen`"), "{e}");
        let e = err("[serverr]\n");
        assert!(e.contains("unknown field `serverr`"), "{e}");
        let e = err("[[identity.humans]]\nid = \"a@x\"\ntoken_sha256 = \"hunter2\"\n");
        assert!(e.contains("key `identity.humans[0].token_sha256`"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the rejected value may be a secret: {e}"
        );
        let e = err("[approvals]\ngrant_ttl = \"0s\"\n");
        assert!(e.contains("approvals.grant_ttl"), "{e}");
        let h = "a".repeat(64);
        let e = err(&format!(
            "[[identity.humans]]\nid = \"a@x\"\ntoken_sha256 = \"{h}\"\n[[identity.humans]]\nid = \"A@X\"\ntoken_sha256 = \"{}\"\n",
            "b".repeat(64)
        ));
        assert!(
            e.contains("identity.humans[1].id") && e.contains("twice"),
            "{e}"
        );
        let e = err(&format!(
            "[[identity.humans]]\nid = \"a@x\"\ntoken_sha256 = \"{h}\"\n[[identity.humans]]\nid = \"b@x\"\ntoken_sha256 = \"{h}\"\n"
        ));
        assert!(e.contains("identity.humans[1].token_sha256"), "{e}");
        let e = err("[approvals]\ntimeout = \"400days\"\n");
        assert!(e.contains("approvals.timeout") && e.contains("365"), "{e}");
        let e = err("[storage]\nurl = \"mysql://root:s3cret@db/x\"\n");
        assert!(e.contains("storage.url") && !e.contains("s3cret"), "{e}");
        let e = err(
            "[storage]\nurl = \"postgres://g@db/x\"\npassword_env = \"A\"\npassword_file = \"/f\"\n",
        );
        assert!(e.contains("not both"), "{e}");
        let e = err("[storage]\npassword_env = \"A\"\n");
        assert!(e.contains("postgres://"), "{e}");
        let e = err("data_dir = [\n");
        assert!(e.starts_with("gavel.toml:"), "{e}");
    }

    #[test]
    fn oidc_issuers_are_checked() {
        let ok = parse(
            "[[identity.oidc]]\nissuer = \"https://idp.example.com\"\naudience = \"gavel\"\n",
            Path::new("gavel.toml"),
        )
        .unwrap();
        let o = &ok.identity.oidc[0];
        assert_eq!(
            (o.groups_claim.as_str(), o.human_id_claim.as_str()),
            ("groups", "email")
        );
        assert_eq!(o.clock_skew, Duration::from_secs(60));
        for (text, key) in [
            (
                "issuer = \"http://idp.example.com\"\naudience = \"g\"",
                "issuer",
            ),
            (
                "issuer = \"http://localhost.evil.com\"\naudience = \"g\"",
                "issuer",
            ),
            (
                "issuer = \"http://localhost:80@evil.com\"\naudience = \"g\"",
                "issuer",
            ),
            ("issuer = \"https://i\"\naudience = \"\"", "audience"),
            (
                "issuer = \"https://i\"\naudience = \"g\"\nclock_skew = \"1h\"",
                "clock_skew",
            ),
            (
                "issuer = \"https://i\"\naudience = \"g\"\nalgorithms = [\"HS256\"]",
                "algorithms",
            ),
            (
                "issuer = \"https://i\"\naudience = \"g\"\nalgorithms = []",
                "algorithms",
            ),
        ] {
            let e = err(&format!("[[identity.oidc]]\n{text}\n"));
            assert!(
                e.contains(&format!("identity.oidc[0].{key}")),
                "{text}: {e}"
            );
        }
        let e = err(
            "[[identity.oidc]]\nissuer = \"https://i\"\naudience = \"g\"\n[[identity.oidc]]\nissuer = \"https://i/\"\naudience = \"h\"\n",
        );
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn teams_channels_are_checked() {
        let ok = parse(
            "[[channels.teams]]\nwebhook_url_env = \"W\"\n[[channels.teams]]\n[channels.teams.bot]\napp_id = \"a\"\napp_password_env = \"P\"\nservice_url = \"https://smba.trafficmanager.net/emea/\"\nconversation_id = \"19:x@thread.tacv2\"\n",
            Path::new("gavel.toml"),
        )
        .unwrap();
        let bot = ok.channels.teams[1].bot.as_ref().unwrap();
        assert!(
            bot.openid_metadata
                .starts_with("https://login.botframework.com/")
        );
        let e = err("[[channels.teams]]\nroutes = [\"group:dba\"]\n");
        assert!(e.contains("channels.teams[0].webhook_url_env"), "{e}");
        let e = err(
            "[[channels.teams]]\n[channels.teams.bot]\napp_id = \"a\"\napp_password_env = \"P\"\nservice_url = \"http://smba.example/\"\nconversation_id = \"c\"\n",
        );
        assert!(e.contains("channels.teams[0].bot.service_url"), "{e}");
        let bot = "[channels.teams.bot]\napp_id = \"a\"\napp_password_env = \"P\"\nservice_url = \"https://smba.example/\"\nconversation_id = \"c\"\n";
        let e = err(&format!(
            "[[channels.teams]]\n{bot}[[channels.teams]]\n{bot}"
        ));
        assert!(e.contains("channels.teams[1].bot.app_id"), "{e}");
        let e = err("[[channels.teams]]\nwebhook_url_env = \"W\"\nroutes = [\"dba\"]\n");
        assert!(e.contains("channels.teams[0].routes"), "{e}");
    }

    #[test]
    fn slack_channels_are_checked() {
        let ok = parse(
            "[[channels.slack]]\nbot_token_env = \"T\"\nsigning_secret_env = \"S\"\nchannel = \"C1\"\n",
            Path::new("gavel.toml"),
        )
        .unwrap();
        assert_eq!(ok.channels.slack[0].api_base, "https://slack.com/api");
        let e = err(
            "[[channels.slack]]\nbot_token_env = \"T\"\nsigning_secret_env = \"S\"\nchannel = \"C1\"\napi_base = \"http://slack.example/api\"\n",
        );
        assert!(e.contains("channels.slack[0].api_base"), "{e}");
        let e = err(
            "[[channels.slack]]\nbot_token_env = \"T\"\nsigning_secret_env = \"S\"\nchannel = \"\"\n",
        );
        assert!(e.contains("channels.slack[0].channel"), "{e}");
        let e = err(
            "[[channels.slack]]\nbot_token_env = \"T\"\nsigning_secret_env = \"S\"\nchannel = \"C1\"\nroutes = [\"dba\"]\n",
        );
        assert!(e.contains("channels.slack[0].routes"), "{e}");
    }

    #[test]
    fn webhooks_are_checked() {
        let e =
            err("[[channels.webhook]]\nurl = \"http://hooks.example.com/x\"\nsecret_env = \"S\"\n");
        assert!(e.contains("channels.webhook[0].url"), "{e}");
        let e = err(
            "[[channels.webhook]]\nurl = \"https://hooks.example.com/x\"\nsecret_env = \"S\"\nroutes = [\"dba\"]\n",
        );
        assert!(e.contains("channels.webhook[0].routes"), "{e}");
        let e =
            err("[[channels.webhook]]\nurl = \"https://hooks.example.com/x\"\nsecret_env = \"\"\n");
        assert!(e.contains("channels.webhook[0].secret_env"), "{e}");
        assert!(
            parse(
                "[[channels.webhook]]\nurl = \"https://h.example/x\"\nsecret_env = \"S\"\nroutes = [\"group:dba\"]\n",
                Path::new("gavel.toml")
            )
            .is_ok()
        );
    }

    #[test]
    fn mcp_resources_are_checked() {
        let ok = parse(
            "[[resources.mcp]]\nname = \"fs\"\ncommand = [\"npx\", \"x\"]\n[[resources.mcp]]\nname = \"web\"\nurl = \"http://127.0.0.1:1/mcp\"\nbearer_token_env = \"T\"\n",
            Path::new("gavel.toml"),
        )
        .unwrap();
        assert_eq!(ok.resources.mcp[0].inherit_env, ["PATH", "HOME"]);
        for bad in ["a__b", "files_", "_x", "a b", ""] {
            let e = err(&format!(
                "[[resources.mcp]]\nname = \"{bad}\"\ncommand = [\"x\"]\n"
            ));
            assert!(e.contains("resources.mcp[0].name"), "{bad}: {e}");
        }
        let e = err("[[resources.mcp]]\nname = \"a\"\n");
        assert!(e.contains("exactly one of command"), "{e}");
        let e = err("[[resources.mcp]]\nname = \"a\"\ncommand = [\"x\"]\nurl = \"http://h/mcp\"\n");
        assert!(e.contains("exactly one of command"), "{e}");
        let e = err("[[resources.mcp]]\nname = \"a\"\ncommand = []\n");
        assert!(e.contains("must name a program"), "{e}");
        let e = err(
            "[[resources.mcp]]\nname = \"a\"\nurl = \"http://mcp.example.com/mcp\"\nbearer_token_env = \"T\"\n",
        );
        assert!(e.contains("https://"), "{e}");
        let e = err(
            "[[resources.mcp]]\nname = \"a\"\nurl = \"http://localhost.evil.com/mcp\"\nbearer_token_env = \"T\"\n",
        );
        assert!(e.contains("https://"), "{e}");
        let e = err("[[resources.mcp]]\nname = \"a\"\nurl = \"ftp://h\"\n");
        assert!(e.contains("resources.mcp[0].url"), "{e}");
        let e = err(
            "[[resources.api]]\nname = \"a\"\n[[resources.mcp]]\nname = \"a\"\ncommand = [\"x\"]\n",
        );
        assert!(e.contains("names another resource"), "{e}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.toml");
        std::fs::write(&file, "data_dir = \"state\"\n[policy]\ndir = \"pol\"\n").unwrap();
        let l = load(Some(&file)).unwrap();
        assert_eq!(l.config.policy.dir, dir.path().join("pol"));
        assert_eq!(
            l.storage_url(),
            format!("sqlite://{}", dir.path().join("state/gavel.db").display())
        );
    }
}

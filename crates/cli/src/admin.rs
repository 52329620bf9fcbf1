//! Commands that work on the configuration and store directly.

use crate::flags::ExplainArgs;
use crate::{Fail, exit, outln};
use gavel_core::{
    Action, AgentRecord, AgentRegistry, Clock, Human, HumanId, Principal, Resource, SystemClock,
};
use gavel_server::{Gateway, open_store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn load_config(file: Option<&Path>) -> anyhow::Result<gavel_config::Loaded> {
    gavel_config::load(file)
        .map_err(|e| Fail::with(exit::USAGE, format!("invalid configuration: {e}")))
}

/// The store of an existing gateway, for commands that read it: never
/// created by them (a typo in --config must not make an empty store look
/// like a verified one).
pub async fn open_existing_store(
    loaded: &gavel_config::Loaded,
) -> anyhow::Result<gavel_store::Storage> {
    let url = loaded.storage_url();
    if let Ok(gavel_store::StorageUrl::Sqlite(path)) = gavel_store::StorageUrl::parse(&url)
        && !path.exists()
    {
        let config = loaded
            .file
            .as_deref()
            .map(|f| format!("the config {}", f.display()))
            .unwrap_or_else(|| "the defaults (no --config or GAVEL_CONFIG)".into());
        return Err(Fail::with(
            exit::NOT_FOUND,
            format!(
                "no gavel store at {} (from {config}); point --config at the gateway's config, or start `gavel serve` first",
                path.display()
            ),
        ));
    }
    open_store(loaded).await
}

/// The log filter: `RUST_LOG`, else `default`, with the MCP library held
/// at `info` whatever `RUST_LOG` says. At `debug` and `trace` rmcp logs
/// whole MCP messages (tool arguments, elicitation answers, tokens in
/// sampled text), which must not reach gavel's log; `GAVEL_LOG_MCP_BODIES=1`
/// lifts the cap for debugging a client on a machine of one's own.
pub fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let Ok(spec) = std::env::var("RUST_LOG") else {
        return tracing_subscriber::EnvFilter::new(default);
    };
    let spec = if std::env::var("GAVEL_LOG_MCP_BODIES").as_deref() == Ok("1") {
        spec
    } else {
        cap_mcp_bodies(&spec)
    };
    tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// `spec` with every directive that would let rmcp log at `debug` or
/// `trace` lowered to `info` for rmcp.
fn cap_mcp_bodies(spec: &str) -> String {
    let verbose = |level: &str| {
        let level = level.trim().to_ascii_lowercase();
        level == "debug" || level == "trace"
    };
    let mut named = false;
    let mut global_verbose = false;
    let mut directives: Vec<String> = spec
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| match d.split_once('=') {
            Some((target, level)) if target.trim().starts_with("rmcp") => {
                named = true;
                if verbose(level) {
                    format!("{}=info", target.trim())
                } else {
                    d.to_owned()
                }
            }
            None => {
                global_verbose |= verbose(d);
                d.to_owned()
            }
            Some(_) => d.to_owned(),
        })
        .collect();
    if !named && global_verbose {
        directives.push("rmcp=info".into());
    }
    directives.join(",")
}

pub async fn serve(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    // Colours only for a person watching; never in a file or a pipe
    // unless asked (GAVEL_LOG_COLOR=1).
    let ansi = std::env::var("GAVEL_LOG_COLOR").map_or_else(
        |_| std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        |v| v == "1",
    );
    tracing_subscriber::fmt()
        .with_env_filter(log_filter("info,rmcp=warn"))
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let loaded = load_config(file)?;
    let gateway = Gateway::build(loaded)
        .await
        .map_err(|e| Fail::with(exit::USAGE, format!("{e:#}")))?;
    gateway.serve(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

pub async fn agent_create(
    file: Option<&Path>,
    name: &str,
    owner: &str,
    groups: Vec<String>,
    expires: Option<String>,
) -> anyhow::Result<ExitCode> {
    let valid_name = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_name {
        return Err(Fail::with(
            exit::USAGE,
            format!("agent name {name:?}: use 1-128 letters, digits, '-', '_' or '.'"),
        ));
    }
    if owner.trim().is_empty() {
        return Err(Fail::with(
            exit::USAGE,
            "--owner must name the accountable human",
        ));
    }
    let now = SystemClock.now();
    let expires_at = match expires {
        None => None,
        Some(e) => Some(
            now.plus(
                humantime::parse_duration(&e)
                    .map_err(|err| Fail::with(exit::USAGE, format!("--expires {e:?}: {err}")))?,
            ),
        ),
    };
    let loaded = load_config(file)?;
    let known_owner = loaded
        .config
        .identity
        .humans
        .iter()
        .any(|h| h.id.eq_ignore_ascii_case(owner.trim()));
    if !known_owner {
        eprintln!(
            "note: {owner} is not in [[identity.humans]]; make sure it is exactly the id they sign in with (an IdP subject or email), so they are recognised as the owner"
        );
    }
    let store = open_store(&loaded).await?;
    let token = gavel_identity::generate_agent_token();
    let record = AgentRecord {
        name: name.to_owned(),
        owner: HumanId(owner.trim().to_owned()),
        groups,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    store
        .create_agent(&record, &gavel_identity::token_sha256(&token))
        .await
        .map_err(|e| match e {
            gavel_core::Error::Invalid(m) => Fail::with(exit::USAGE, m),
            other => anyhow::Error::new(other),
        })?;
    eprintln!("created agent {name} (owner {owner}); its token is shown once, on the next line:");
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}

pub async fn agent_list(file: Option<&Path>, as_json: bool) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    let store = open_existing_store(&loaded).await?;
    let agents = store.list_agents().await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(ExitCode::SUCCESS);
    }
    if agents.is_empty() {
        eprintln!("no agents; add one with `gavel agent create NAME --owner you@example.com`");
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now();
    let at = |t: gavel_core::Timestamp| {
        crate::out::relative(&humantime::format_rfc3339_millis(t.to_system_time()).to_string())
    };
    let mut table = crate::out::Table::new(vec![
        "NAME", "OWNER", "STATUS", "CREATED", "EXPIRES", "GROUPS",
    ]);
    for a in agents {
        let status = if a.revoked_at.is_some() {
            "revoked"
        } else if !a.is_active(now) {
            "expired"
        } else {
            "active"
        };
        table.row(vec![
            gavel_core::display::one_line(&a.name),
            gavel_core::display::one_line(&a.owner.0),
            status.to_owned(),
            at(a.created_at),
            a.expires_at.map_or_else(|| "never".to_owned(), at),
            gavel_core::display::one_line(&a.groups.join(",")),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

pub async fn agent_revoke(file: Option<&Path>, name: &str) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    let store = open_existing_store(&loaded).await?;
    if store.revoke_agent(name, SystemClock.now()).await? {
        outln!("revoked agent {name}; its token no longer authenticates");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Fail::with(
            exit::NOT_FOUND,
            format!("no active agent named {name:?}"),
        ))
    }
}

pub fn policy_validate(
    file: Option<&Path>,
    dir: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => load_config(file)?.config.policy.dir,
    };
    if !dir.is_dir() {
        return Err(Fail::with(
            exit::USAGE,
            format!(
                "{} is not a directory: nothing to validate (give --dir, or --config with policy.dir)",
                dir.display()
            ),
        ));
    }
    let files = gavel_policy::policy_files(&dir)?;
    if files.is_empty() {
        return Err(Fail::with(
            exit::FAILURE,
            format!(
                "{} holds no *.cedar files: a gateway with it denies every action",
                dir.display()
            ),
        ));
    }
    match gavel_policy::load_dir(&dir) {
        Ok(bundle) if as_json => {
            outln!(
                "{}",
                serde_json::json!({
                    "dir": dir.display().to_string(),
                    "valid": true,
                    "policies": bundle.policies.len(),
                    "files": bundle.files,
                    "version": bundle.version,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(bundle) => {
            outln!(
                "{}: {} policies in {} files are valid (version {})",
                dir.display(),
                bundle.policies.len(),
                bundle.files,
                bundle.version
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) if as_json => {
            let problems: Vec<serde_json::Value> = errors
                .0
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "file": p.file.display().to_string(),
                        "line": p.line,
                        "column": p.column,
                        "message": p.message,
                    })
                })
                .collect();
            outln!(
                "{}",
                serde_json::json!({"dir": dir.display().to_string(), "valid": false, "errors": problems})
            );
            Ok(ExitCode::from(exit::FAILURE))
        }
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("error: {p}");
            }
            eprintln!("{} error(s); the policy set was rejected", errors.0.len());
            Ok(ExitCode::from(exit::FAILURE))
        }
    }
}

pub async fn policy_explain(
    file: Option<&Path>,
    a: ExplainArgs,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    let bundle = gavel_policy::load_dir(&loaded.config.policy.dir)
        .map_err(|e| Fail::with(exit::FAILURE, format!("policies are invalid:\n{e}")))?;
    let given_class = a
        .action
        .as_deref()
        .map(str::parse::<gavel_core::ActionClass>)
        .transpose()
        .map_err(|e| Fail::with(exit::USAGE, e.to_string()))?;
    let classified = match &a.sql {
        Some(sql) => Some(classify_sql(&loaded, &a.resource, sql)?),
        None => None,
    };
    let class = match (given_class, &classified) {
        (Some(c), _) => c,
        (None, Some(c)) => c.class,
        (None, None) => {
            return Err(Fail::with(
                exit::USAGE,
                "give --action, or --sql to classify",
            ));
        }
    };
    let principal = explain_principal(&loaded, &a).await?;
    let mut resource = match loaded.resource(&a.resource) {
        Some(r) => Resource {
            name: r.name.clone(),
            kind: r.kind.clone(),
            tags: r.tags.clone(),
        },
        None => Resource {
            name: a.resource.clone(),
            kind: "api".into(),
            tags: Default::default(),
        },
    };
    if let Some(kind) = &a.kind {
        resource.kind = kind.clone();
    }
    if !a.tag.is_empty() {
        resource.tags = a
            .tag
            .iter()
            .map(|t| {
                t.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| {
                        Fail::with(exit::USAGE, format!("--tag {t:?}: expected KEY=VALUE"))
                    })
            })
            .collect::<Result<_, _>>()?;
    }
    let mut context: serde_json::Value = serde_json::from_str(&a.context)
        .map_err(|e| Fail::with(exit::USAGE, format!("--context is not JSON: {e}")))?;
    let Some(map) = context.as_object_mut() else {
        return Err(Fail::with(exit::USAGE, "--context must be a JSON object"));
    };
    let take = |map: &mut serde_json::Map<String, serde_json::Value>, key: &str| {
        map.remove(key)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut operation = take(map, "operation");
    if let (Some(sql), Some(c)) = (&a.sql, &classified) {
        operation = sql.clone();
        if !map.contains_key("tables") {
            map.insert("tables".into(), serde_json::json!(c.tables));
        }
    }
    if let (false, Some(c)) = (as_json, &classified) {
        outln!(
            "classified: {} ({}); tables: {}",
            c.class,
            gavel_core::display::one_line(&c.reason),
            if c.tables.is_empty() {
                "none".to_owned()
            } else {
                c.tables.join(", ")
            }
        );
        if given_class.is_some_and(|g| g != c.class) {
            outln!(
                "note: judged as --action {class}, but the proxy would judge it as {}",
                c.class
            );
        }
    }
    let intent = take(map, "intent");
    let action = Action {
        principal,
        resource,
        class,
        operation,
        details: context,
        intent,
        data_context: serde_json::Value::Null,
        settings: Default::default(),
        surface: "explain".into(),
        source: None,
    };
    if let Err(e) = gavel_policy::context_pairs(&action) {
        return Err(Fail::with(exit::USAGE, format!("--context: {e}")));
    }
    let x = gavel_policy::explain(&bundle, &action);
    let verdict = match &x.decision.verdict {
        gavel_core::PolicyVerdict::Allow => "ALLOW".to_owned(),
        gavel_core::PolicyVerdict::Deny => "DENY".to_owned(),
        gavel_core::PolicyVerdict::NeedsApproval {
            approvers,
            quorum,
            timeout,
        } => format!(
            "NEEDS APPROVAL by {} (quorum {quorum}, timeout {})",
            approvers
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            timeout
                .map(|t| humantime::format_duration(t).to_string())
                .unwrap_or_else(|| format!(
                    "{} (config default)",
                    humantime::format_duration(loaded.config.approvals.timeout)
                ))
        ),
    };
    if as_json {
        let policies: Vec<serde_json::Value> = x
            .policies
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "effect": format!("{:?}", p.effect).to_lowercase(),
                    "file": p.file.display().to_string(),
                    "line": p.line,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "decision": verdict,
                "reason": x.decision.reason,
                "policies": policies,
                "principal": action.principal.qualified_id(),
                "action": action.class.as_str(),
                "resource": action.resource.name,
                "tables": action.details.get("tables"),
                "classified": classified.as_ref().map(|c| serde_json::json!({
                    "class": c.class.as_str(), "reason": c.reason, "tables": c.tables,
                })),
                "policy_version": x.decision.policy_version,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!("decision: {verdict}");
    outln!("reason:   {}", x.decision.reason);
    for p in &x.policies {
        outln!(
            "  policy {} ({:?}) at {}:{}",
            p.id,
            p.effect,
            p.file.display(),
            p.line
        );
    }
    outln!(
        "principal {} · action {} · resource {} · policy version {} · {} of {} policies evaluated",
        action.principal.qualified_id(),
        action.class,
        action.resource.name,
        x.decision.policy_version,
        x.evaluated,
        x.loaded
    );
    Ok(ExitCode::SUCCESS)
}

async fn explain_principal(
    loaded: &gavel_config::Loaded,
    a: &ExplainArgs,
) -> anyhow::Result<Principal> {
    let (kind, id) = a
        .principal
        .split_once(':')
        .ok_or_else(|| Fail::with(exit::USAGE, "--principal must be agent:NAME or human:ID"))?;
    match kind {
        "human" | "user" => {
            let configured = loaded.config.identity.humans.iter().find(|h| h.id == id);
            let groups = if a.group.is_empty() {
                configured.map(|h| h.groups.clone()).unwrap_or_default()
            } else {
                a.group.clone()
            };
            Ok(Principal::Human(Human {
                id: HumanId(id.to_owned()),
                groups,
            }))
        }
        "agent" => {
            let stored = match open_existing_store(loaded).await {
                Ok(store) => store
                    .list_agents()
                    .await?
                    .into_iter()
                    .find(|x| x.name == id),
                Err(_) => None,
            };
            let owner = a
                .owner
                .clone()
                .or_else(|| stored.as_ref().map(|s| s.owner.0.clone()))
                .ok_or_else(|| {
                    Fail::with(
                        exit::USAGE,
                        format!("agent {id:?} is not in the store; give --owner"),
                    )
                })?;
            let groups = if a.group.is_empty() {
                stored.map(|s| s.groups).unwrap_or_default()
            } else {
                a.group.clone()
            };
            Ok(Principal::Agent {
                id: id.to_owned(),
                owner: HumanId(owner),
                groups,
                on_behalf_of: None,
            })
        }
        other => Err(Fail::with(
            exit::USAGE,
            format!("--principal kind {other:?}: expected agent or human"),
        )),
    }
}

/// What the PostgreSQL proxy for `resource` (its configured function
/// lists; the server's catalog is not read here) makes of `sql`.
fn classify_sql(
    loaded: &gavel_config::Loaded,
    resource: &str,
    sql: &str,
) -> anyhow::Result<gavel_postgres::Classification> {
    let proxy = loaded
        .config
        .resources
        .postgres
        .iter()
        .enumerate()
        .find(|(_, p)| p.name == resource);
    let classifier = match proxy {
        Some((i, config)) => {
            gavel_postgres::classifier_for(i, config).map_err(|e| Fail::with(exit::USAGE, e))?
        }
        None => gavel_postgres::Classifier::default(),
    };
    Ok(classifier.classify(sql, &gavel_postgres::classify::NoNames))
}

#[cfg(test)]
mod tests {
    use super::cap_mcp_bodies;

    #[test]
    fn rmcp_never_logs_message_bodies_whatever_rust_log_says() {
        assert_eq!(cap_mcp_bodies("debug"), "debug,rmcp=info");
        assert_eq!(
            cap_mcp_bodies("trace,hyper=warn"),
            "trace,hyper=warn,rmcp=info"
        );
        assert_eq!(cap_mcp_bodies("info,rmcp=trace"), "info,rmcp=info");
        assert_eq!(cap_mcp_bodies("rmcp::service=DEBUG"), "rmcp::service=info");
        assert_eq!(cap_mcp_bodies("warn,rmcp=warn"), "warn,rmcp=warn");
        assert_eq!(cap_mcp_bodies("info"), "info");
    }
}

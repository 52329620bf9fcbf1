//! Commands that talk to a running gateway over its REST API.

use crate::flags::RequestsArgs;
use crate::out::{Table, bold, relative, state};
use crate::{Fail, exit, outln};
use anyhow::Context as _;
use gavel_core::display::{one_line, visible};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;

/// Where `gavel login` keeps tokens: one per server, readable only by
/// the user.
fn credentials_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("gavel").join("credentials.json"))
}

fn stored_tokens() -> serde_json::Map<String, Value> {
    read_tokens().unwrap_or_default()
}

/// The stored tokens; an error when the file exists but is not what
/// `gavel login` writes (it is then left alone rather than overwritten).
fn read_tokens() -> anyhow::Result<serde_json::Map<String, Value>> {
    let Some(file) = credentials_file() else {
        return Ok(Default::default());
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .ok_or_else(|| {
            Fail::with(
                exit::FAILURE,
                format!(
                    "{} is not a gavel credentials file; not touching it",
                    file.display()
                ),
            )
        })
}

fn server_key(server: &str) -> String {
    server.trim_end_matches('/').to_owned()
}

/// GAVEL_TOKEN if set, else the token `gavel login` stored for `server`;
/// with where it came from, for error messages.
fn token(server: &str) -> anyhow::Result<(String, String)> {
    if let Some(t) = std::env::var("GAVEL_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok((t.trim().to_owned(), "GAVEL_TOKEN".into()));
    }
    let file = credentials_file()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "the stored login".into());
    stored_tokens()
        .get(&server_key(server))
        .and_then(|v| v.as_str())
        .map(|t| (t.to_owned(), format!("the login stored in {file}")))
        .ok_or_else(|| {
            Fail::with(
                exit::USAGE,
                format!(
                    "no token for {}: set GAVEL_TOKEN to your gavel token, or run `gavel login --server {}`",
                    server_key(server),
                    server_key(server)
                ),
            )
        })
}

fn store_tokens(tokens: &serde_json::Map<String, Value>) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let file = credentials_file()
        .ok_or_else(|| Fail::with(exit::FAILURE, "neither XDG_CONFIG_HOME nor HOME is set"))?;
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    // A fresh temporary file of our own (never an existing one), 0600 from
    // the start, then renamed over the old file.
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    out.write_all(serde_json::to_string_pretty(&Value::Object(tokens.clone()))?.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// `gavel login`: checks a token (an API or agent token, or an OIDC token
/// from the identity provider) against the server and keeps it for later
/// commands. The token is read from standard input, never from the
/// command line (where `ps` and shell history would see it).
pub async fn login(server: &str, paste: bool) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(QUICK + Duration::from_secs(10))
        .build()?;
    if !gavel_config::secure_or_loopback(server) {
        return Err(Fail::with(
            exit::USAGE,
            format!("{server} is neither https:// nor loopback: a token is not sent there"),
        ));
    }
    let device = if paste {
        None
    } else {
        device_flow(&client, server).await?
    };
    let candidates = match device {
        Some(tokens) => tokens,
        None => vec![read_pasted_token()?],
    };
    let mut accepted = None;
    let mut last_status = None;
    for candidate in candidates {
        let resp = client
            .get(format!("{}/api/v1/whoami", server_key(server)))
            .bearer_auth(&candidate)
            .send()
            .await
            .with_context(|| {
                format!("cannot reach gavel at {server} (set --server or GAVEL_SERVER)")
            })?;
        if resp.status().is_success() {
            let who: Value = resp.json().await.unwrap_or(Value::Null);
            accepted = Some((candidate, who));
            break;
        }
        last_status = Some(resp.status());
    }
    let Some((candidate, who)) = accepted else {
        return Err(Fail::with(
            exit::REFUSED,
            format!(
                "{server} does not accept this token (HTTP {})",
                last_status.map_or("?".to_owned(), |s| s.to_string())
            ),
        ));
    };
    let mut tokens = read_tokens()?;
    tokens.insert(server_key(server), Value::String(candidate));
    let file = store_tokens(&tokens)?;
    outln!(
        "logged in to {} as {} {} (token kept in {})",
        server_key(server),
        s(&who["principal"], "type"),
        s(&who["principal"], "id"),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_pasted_token() -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        eprint!("Paste your gavel token (API token, or a token from your identity provider): ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(Fail::with(exit::USAGE, "no token given on standard input"));
    }
    Ok(token)
}

/// The OAuth 2.0 device authorization grant (RFC 8628) at the identity
/// provider the server names, when it has a device endpoint. Returns the
/// tokens to try (access token, then ID token), or `None` when the device
/// flow is not available.
async fn device_flow(
    client: &reqwest::Client,
    server: &str,
) -> anyhow::Result<Option<Vec<String>>> {
    let info = client
        .get(format!("{}/api/v1/login", server_key(server)))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach gavel at {server} (set --server or GAVEL_SERVER)")
        })?;
    if !info.status().is_success() {
        return Ok(None);
    }
    let info: Value = info.json().await.unwrap_or(Value::Null);
    let (Some(device_endpoint), Some(token_endpoint), Some(client_id)) = (
        info["device_authorization_endpoint"].as_str(),
        info["token_endpoint"].as_str(),
        info["client_id"].as_str(),
    ) else {
        return Ok(None);
    };
    if !(gavel_config::secure_or_loopback(device_endpoint)
        && gavel_config::secure_or_loopback(token_endpoint))
    {
        return Err(Fail::with(
            exit::FAILURE,
            "the identity provider's endpoints are neither https:// nor loopback",
        ));
    }
    let started: Value = client
        .post(device_endpoint)
        .form(&[
            ("client_id", client_id),
            ("scope", "openid email profile groups"),
        ])
        .send()
        .await
        .context("the identity provider's device endpoint cannot be reached")?
        .error_for_status()
        .context("the identity provider refused to start a device sign-in")?
        .json()
        .await?;
    let device_code = started["device_code"]
        .as_str()
        .ok_or_else(|| Fail::with(exit::FAILURE, "the device endpoint sent no device_code"))?;
    let user_code = s(&started, "user_code");
    match started["verification_uri_complete"].as_str() {
        Some(uri) => eprintln!("To sign in, open {uri}\n(code {user_code})"),
        None => eprintln!(
            "To sign in, open {} and enter the code {user_code}",
            s(&started, "verification_uri")
        ),
    }
    let mut interval = Duration::from_secs(started["interval"].as_u64().unwrap_or(5).max(1));
    let deadline = std::time::Instant::now()
        + Duration::from_secs(started["expires_in"].as_u64().unwrap_or(600));
    loop {
        tokio::time::sleep(interval).await;
        if std::time::Instant::now() > deadline {
            return Err(Fail::with(
                exit::REFUSED,
                "the device sign-in expired; run gavel login again",
            ));
        }
        let resp = client
            .post(token_endpoint)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
                ("client_id", client_id),
            ])
            .send()
            .await
            .context("the identity provider's token endpoint cannot be reached")?;
        let ok = resp.status().is_success();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if ok {
            let tokens: Vec<String> = ["access_token", "id_token"]
                .iter()
                .filter_map(|k| body[*k].as_str().map(str::to_owned))
                .collect();
            return Ok(Some(tokens));
        }
        match body["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            Some(other) => {
                return Err(Fail::with(
                    exit::REFUSED,
                    format!("the identity provider ended the sign-in: {other}"),
                ));
            }
            None => {
                return Err(Fail::with(
                    exit::FAILURE,
                    "the token endpoint answered nonsense",
                ));
            }
        }
    }
}

/// `gavel logout`: forgets the stored token for the server.
pub async fn logout(server: &str) -> anyhow::Result<ExitCode> {
    let mut tokens = read_tokens()?;
    if tokens.remove(&server_key(server)).is_some() {
        store_tokens(&tokens)?;
        outln!("logged out of {}", server_key(server));
    } else {
        outln!("not logged in to {}", server_key(server));
    }
    Ok(ExitCode::SUCCESS)
}

async fn call(
    method: reqwest::Method,
    server: &str,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    if !gavel_config::secure_or_loopback(server) {
        return Err(Fail::with(
            exit::USAGE,
            format!(
                "{server} is neither https:// nor loopback: gavel does not send a token there in the clear. Use the https:// address (--server or GAVEL_SERVER)."
            ),
        ));
    }
    let client = reqwest::Client::builder()
        .timeout(timeout + Duration::from_secs(10))
        .build()?;
    let (token, source) = token(server)?;
    let mut req = client.request(method, &url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        Fail::with(
            exit::FAILURE,
            format!(
                "cannot reach gavel at {} ({}): is `gavel serve` running there? Point elsewhere with --server, GAVEL_SERVER or --config",
                server_key(server),
                root_cause(&e)
            ),
        )
    })?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() {
        return Ok(value);
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    let code = match status.as_u16() {
        401 | 403 | 409 => exit::REFUSED,
        404 => exit::NOT_FOUND,
        400 => exit::USAGE,
        _ => exit::FAILURE,
    };
    let message = one_line(&message);
    let server = server_key(server);
    let text = match status.as_u16() {
        401 if message.contains("expired") => format!(
            "{server} refused the token from {source}: {message}. Run `gavel login --server {server}` again, or set GAVEL_TOKEN to a fresh token"
        ),
        401 => format!(
            "{server} refused the token from {source}: {message}. Check the token (a reviewer's is gvl_human_…; `gavel whoami` says who it is), or run `gavel login --server {server}`"
        ),
        403 => format!("{server} refused: {message}"),
        _ => format!("{message} ({server}, HTTP {})", status.as_u16()),
    };
    Err(Fail::with(code, text))
}

/// The innermost cause of a transport error (`Connection refused`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

const QUICK: Duration = Duration::from_secs(30);

/// A string field as a terminal may show it: agent-written text is
/// inert (no escape sequences, bidi or zero-width characters; hidden
/// characters appear as `⟨U+XXXX⟩`), on one line.
fn s(v: &Value, key: &str) -> String {
    one_line(v[key].as_str().unwrap_or(""))
}

/// A multi-line field (an operation) made inert, its lines indented to
/// the column values start at.
fn block(text: &str) -> String {
    visible(text).replace('\n', "\n           ")
}

fn truncate(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}…", one_line.chars().take(max - 1).collect::<String>())
    }
}

fn initiator(v: &Value) -> String {
    let p = &v["initiator"];
    format!("{}:{}", s(p, "type"), s(p, "id"))
}

/// An initiator as the API wants it: `agent:NAME` or `human:ID`; a bare
/// name is an agent's, a bare address a human's.
fn qualified_initiator(given: &str) -> String {
    if given.contains(':') {
        given.to_owned()
    } else if given.contains('@') {
        format!("human:{given}")
    } else {
        format!("agent:{given}")
    }
}

/// Whether `me` (from whoami) is asked to review `r` and may: pending, an
/// approver entry covers me, and I am neither its initiator nor the
/// initiating agent's owner nor the human it acts for.
fn needs_review_by(r: &Value, me: &Value) -> bool {
    let my_id = me["id"].as_str().unwrap_or("");
    let my_groups: Vec<&str> = me["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let same = |v: &Value| v.as_str().is_some_and(|x| x.eq_ignore_ascii_case(my_id));
    let p = &r["initiator"];
    let accountable =
        (p["type"] == "human" && same(&p["id"])) || same(&p["owner"]) || same(&p["on_behalf_of"]);
    let covered = r["approvers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|a| match a.split_once(':') {
            Some(("group", g)) => my_groups.contains(&g),
            Some(("user", u)) => u.eq_ignore_ascii_case(my_id),
            _ => false,
        });
    r["state"] == "pending" && covered && !accountable
}

pub async fn requests(server: &str, a: RequestsArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut query = vec![format!("limit={}", a.limit)];
    let state = if a.mine {
        Some("pending".to_owned())
    } else {
        a.state.clone()
    };
    let initiator_filter = a.initiator.as_deref().map(qualified_initiator);
    for (k, v) in [
        ("state", &state),
        ("resource", &a.resource),
        ("initiator", &initiator_filter),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencode(v)));
        }
    }
    let v = call(
        reqwest::Method::GET,
        server,
        &format!("/api/v1/requests?{}", query.join("&")),
        None,
        QUICK,
    )
    .await?;
    let mut list = v["requests"].as_array().cloned().unwrap_or_default();
    if a.mine {
        let me = call(reqwest::Method::GET, server, "/api/v1/whoami", None, QUICK).await?;
        list.retain(|r| needs_review_by(r, &me["principal"]));
    }
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "requests": list }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if a.quiet {
        for r in &list {
            outln!("{}", s(r, "short_id"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        let what = match (&state, a.mine) {
            (_, true) => "no pending requests need your review".to_owned(),
            (Some(st), _) => format!("no {st} requests"),
            (None, _) => "no requests".to_owned(),
        };
        eprintln!("{what}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(vec![
        "ID",
        "STATE",
        "AGE",
        "EXPIRES",
        "APPROVALS",
        "INITIATOR",
        "RESOURCE",
        "ACTION",
        "OPERATION",
    ])
    .state_column(1);
    for r in &list {
        let pending = r["state"] == "pending";
        table.row(vec![
            s(r, "short_id"),
            s(r, "state"),
            relative(r["created_at"].as_str().unwrap_or("")).replace(" ago", ""),
            if pending {
                relative(r["expires_at"].as_str().unwrap_or(""))
            } else {
                "-".into()
            },
            format!("{}/{}", r["approvals"], r["quorum"]),
            truncate(&initiator(r), 32),
            truncate(&s(&r["resource"], "name"), 24),
            s(r, "action"),
            truncate(&s(r, "operation"), 60),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A time as `3m ago (2026-11-30T12:00:00.000Z)`.
fn when(v: &Value) -> String {
    let t = v.as_str().unwrap_or("");
    match relative(t) {
        r if r.is_empty() => one_line(t),
        r => format!("{r} ({})", one_line(t)),
    }
}

/// One field of `show`: a label column, then the value.
fn field(label: &str, value: impl std::fmt::Display) {
    outln!("{:<11}{value}", label);
}

/// What a surface put beside the operation for reviewers, in words.
fn print_data_context(context: &serde_json::Map<String, Value>) {
    for (k, v) in context {
        let text = |v: &Value| one_line(&v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        match (k.as_str(), v) {
            ("classification", v) => field("classified", text(v)),
            ("estimated_rows", v) => field("est. rows", text(v)),
            (_, Value::Array(items)) if items.is_empty() => {}
            ("recent_statements", Value::Array(items)) => {
                outln!("the session's recent statements:");
                for item in items {
                    outln!("  {}", text(item));
                }
            }
            (k, Value::Array(items)) => {
                outln!("{}:", one_line(&k.replace('_', " ")));
                for item in items {
                    outln!("  {}", text(item));
                }
            }
            (k, v) => field(&one_line(&k.replace('_', " ")), text(v)),
        }
    }
}

fn print_request(r: &Value) {
    field(
        "request",
        format!("{} ({})", bold(&s(r, "short_id")), s(r, "id")),
    );
    field("state", state(&s(r, "state"), 0));
    let p = &r["initiator"];
    match p["owner"].as_str() {
        Some(owner) => field(
            "initiator",
            format!("{} (agent, owner {})", s(p, "id"), one_line(owner)),
        ),
        None => field("initiator", format!("{} ({})", s(p, "id"), s(p, "type"))),
    }
    if let Some(h) = p["on_behalf_of"].as_str() {
        field("acting for", one_line(h));
    }
    field(
        "resource",
        format!(
            "{} ({})",
            s(&r["resource"], "name"),
            s(&r["resource"], "kind")
        ),
    );
    field("action", s(r, "action"));
    field("operation", block(r["operation"].as_str().unwrap_or("")));
    field(
        "intent",
        if s(r, "intent").is_empty() {
            "(none given)".to_owned()
        } else {
            s(r, "intent")
        },
    );
    if r["details"].as_object().is_some_and(|d| !d.is_empty()) {
        field("details", one_line(&r["details"].to_string()));
    }
    if let Some(settings) = r["settings"].as_object().filter(|m| !m.is_empty()) {
        outln!("settings (bound into the approval):");
        for (k, v) in settings {
            outln!("  {} = {}", one_line(k), one_line(v.as_str().unwrap_or("")));
        }
    }
    if let Some(context) = r["data_context"].as_object() {
        print_data_context(context);
    }
    let list = |key: &str| -> String {
        r[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(one_line)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    field(
        "approvers",
        format!(
            "{} ({} of {} approvals)",
            list("approvers"),
            r["approvals"],
            r["quorum"]
        ),
    );
    field("policies", list("policies"));
    field("created", when(&r["created_at"]));
    if r["state"] == "pending" {
        field("expires", when(&r["expires_at"]));
    }
    if let Some(g) = r["grant_expires_at"].as_str()
        && r["state"] == "approved"
    {
        field(
            "usable",
            format!("until {}", when(&Value::String(g.into()))),
        );
    }
    for review in r["reviews"].as_array().into_iter().flatten() {
        field(
            "review",
            format!(
                "{} {} {}{}",
                s(review, "reviewer"),
                s(review, "decision"),
                relative(review["at"].as_str().unwrap_or("")),
                if s(review, "comment").is_empty() {
                    String::new()
                } else {
                    format!(": {}", s(review, "comment"))
                }
            ),
        );
    }
    field("url", s(r, "url"));
    if r["state"] == "pending" {
        field(
            "decide",
            format!(
                "gavel approve {id}   or   gavel deny {id} --reason …",
                id = s(r, "short_id")
            ),
        );
    }
    for (title, key) in [
        ("the initiator's recent requests:", "initiator_recent"),
        ("recent requests on this resource:", "resource_recent"),
    ] {
        let items = r["history"][key].as_array().cloned().unwrap_or_default();
        if !items.is_empty() {
            outln!("{title}");
            let mut table = Table::new(vec!["", "", "", ""]).state_column(1);
            for h in items {
                table.row(vec![
                    format!("  {}", relative(h["created_at"].as_str().unwrap_or(""))),
                    s(&h, "state"),
                    s(&h, "action"),
                    truncate(&s(&h, "operation"), 60),
                ]);
            }
            table.print_rows();
        }
    }
}

pub async fn show(server: &str, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let v = call(
        reqwest::Method::GET,
        server,
        &format!("/api/v1/requests/{}", urlencode(id)),
        None,
        QUICK,
    )
    .await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_request(&v);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(
    server: &str,
    id: &str,
    comment: String,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let v = call(
        reqwest::Method::POST,
        server,
        &format!("/api/v1/requests/{}/approve", urlencode(id)),
        Some(json!({"comment": comment})),
        QUICK,
    )
    .await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let next = match v["state"].as_str() {
        Some("approved") => "; the initiator may now run it, once, unchanged",
        Some("pending") => "; more approvals are needed",
        _ => "",
    };
    outln!(
        "approved request {} ({} of {} approvals): it is {}{next}",
        s(&v, "short_id"),
        v["approvals"],
        v["quorum"],
        s(&v, "state")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn deny(
    server: &str,
    id: &str,
    reason: String,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let v = call(
        reqwest::Method::POST,
        server,
        &format!("/api/v1/requests/{}/deny", urlencode(id)),
        Some(json!({"reason": reason})),
        QUICK,
    )
    .await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "denied request {}: it is {}; the initiator sees your reason",
        s(&v, "short_id"),
        s(&v, "state")
    );
    Ok(ExitCode::SUCCESS)
}

/// `gavel wait`: prints the request once decided. Exit 0 when it was
/// approved (or has run since), DENIED when it was denied, expired or
/// failed, STILL_PENDING when the timeout passed first.
pub async fn wait(
    server: &str,
    id: &str,
    timeout: &str,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let d = humantime::parse_duration(timeout)
        .map_err(|e| Fail::with(exit::USAGE, format!("--timeout {timeout:?}: {e}")))?;
    let v = call(
        reqwest::Method::GET,
        server,
        &format!("/api/v1/requests/{}/wait?timeout={timeout}", urlencode(id)),
        None,
        d,
    )
    .await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_request(&v);
    }
    Ok(match v["state"].as_str() {
        Some("approved" | "admitted" | "executed") => ExitCode::SUCCESS,
        Some("pending") => {
            eprintln!(
                "request {} is still pending after {timeout}",
                s(&v, "short_id")
            );
            ExitCode::from(exit::STILL_PENDING)
        }
        _ => ExitCode::from(exit::DENIED),
    })
}

pub async fn whoami(server: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let v = call(reqwest::Method::GET, server, "/api/v1/whoami", None, QUICK).await?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let p = &v["principal"];
    let groups: Vec<&str> = p["groups"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match p["owner"].as_str() {
        Some(o) => outln!(
            "agent {} (owner {o}; groups: {})",
            s(p, "id"),
            groups.join(", ")
        ),
        None => outln!("human {} (groups: {})", s(p, "id"), groups.join(", ")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `gavel mcp`: MCP on stdio, relayed to the gateway's `/mcp`.
pub async fn mcp(server: &str, token_env: &str) -> anyhow::Result<ExitCode> {
    // stdout carries MCP; diagnostics go to stderr only.
    tracing_subscriber::fmt()
        .with_env_filter(crate::admin::log_filter("warn"))
        .with_writer(std::io::stderr)
        .init();
    let token = std::env::var(token_env)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            Fail::with(
                exit::USAGE,
                format!("set {token_env} to the agent's gavel token (or name another variable with --token-env)"),
            )
        })?;
    let url = format!("{}/mcp", server.trim_end_matches('/'));
    gavel_mcp::bridge_stdio(&url, token.trim()).await?;
    Ok(ExitCode::SUCCESS)
}

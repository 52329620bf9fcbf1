//! `gavel quickstart`: a working setup in a directory of its own (never in
//! the tracked examples), with a reviewer and an agent whose tokens are
//! printed once, as shell `export` lines on stdout so that
//! `eval "$(gavel quickstart)"` puts them in the shell. What a person
//! reads goes to stderr.

use crate::{Fail, exit, outln};
use gavel_core::{AgentRecord, AgentRegistry as _, Clock as _, HumanId, SystemClock};
use std::path::Path;
use std::process::ExitCode;

/// The example policies, as shipped in `examples/policies`.
const POLICIES: &[(&str, &str)] = &[
    (
        "approvals.cedar",
        include_str!("../../../examples/policies/approvals.cedar"),
    ),
    (
        "guardrails.cedar",
        include_str!("../../../examples/policies/guardrails.cedar"),
    ),
    (
        "reads.cedar",
        include_str!("../../../examples/policies/reads.cedar"),
    ),
];

const REVIEWER: &str = "alice@example.com";
const AGENT: &str = "deploy-bot";
const AGENT_OWNER: &str = "bob@example.com";

/// The address the quickstart's gateway listens on: the one `GAVEL_SERVER`
/// names when it is a loopback `http://` URL (so a second quickstart can
/// run beside the first), else 127.0.0.1:8470.
fn listen_address() -> String {
    std::env::var("GAVEL_SERVER")
        .ok()
        .and_then(|s| {
            s.trim_end_matches('/')
                .strip_prefix("http://")
                .map(str::to_owned)
        })
        .filter(|hostport| {
            hostport
                .rsplit_once(':')
                .is_some_and(|(host, port)| host == "127.0.0.1" && port.parse::<u16>().is_ok())
        })
        .unwrap_or_else(|| "127.0.0.1:8470".to_owned())
}

fn config_text(listen: &str, reviewer_sha256: &str) -> String {
    format!(
        r#"# Written by `gavel quickstart`. Relative paths are relative to this file.
data_dir = "data"

[server]
listen = "{listen}"
public_url = "http://{listen}"

[policy]
dir = "policies"                      # the example policies; edit them, gavel reloads

[approvals]
hold = "60s"
timeout = "15m"
grant_ttl = "10m"

# The reviewer. Only the SHA-256 of the token is here; the token was
# printed once by `gavel quickstart`.
[[identity.humans]]
id = "{REVIEWER}"
groups = ["dba"]
token_sha256 = "{reviewer_sha256}"

# Names agents use with POST /api/v1/actions; tags feed policies.
[[resources.api]]
name = "prod-db"
kind = "postgres"
tags = {{ env = "prod" }}

[[resources.api]]
name = "staging-db"
kind = "postgres"
tags = {{ env = "staging" }}
"#
    )
}

pub async fn quickstart(dir: &Path) -> anyhow::Result<ExitCode> {
    if dir.exists() {
        return Err(Fail::with(
            exit::USAGE,
            format!(
                "{} already exists; remove it (rm -rf {}) or choose another with --dir",
                dir.display(),
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir.join("policies"))?;
    for (name, text) in POLICIES {
        std::fs::write(dir.join("policies").join(name), text)?;
    }
    let listen = listen_address();
    let reviewer_token =
        gavel_identity::generate_agent_token().replacen("gvl_agent_", "gvl_human_", 1);
    let config_file = dir.join("gavel.toml");
    std::fs::write(
        &config_file,
        config_text(&listen, &gavel_identity::token_sha256(&reviewer_token)),
    )?;
    let loaded = crate::admin::load_config(Some(&config_file))?;
    let store = gavel_server::open_store(&loaded).await?;
    let agent_token = gavel_identity::generate_agent_token();
    store
        .create_agent(
            &AgentRecord {
                name: AGENT.to_owned(),
                owner: HumanId(AGENT_OWNER.to_owned()),
                groups: Vec::new(),
                created_at: SystemClock.now(),
                expires_at: None,
                revoked_at: None,
            },
            &gavel_identity::token_sha256(&agent_token),
        )
        .await?;
    let config_path = config_file.display();
    let server = format!("http://{listen}");
    eprintln!(
        "\
gavel quickstart: wrote {config_path}
  policies  {dir}/policies (the examples: prod writes wait for a dba, reads pass, unknown SQL is refused)
  state     {dir}/data (SQLite and the audit key)
  reviewer  {REVIEWER}, group dba
  agent     {AGENT}, owner {AGENT_OWNER}

The two tokens are printed once, as export lines on stdout; with
`eval \"$(gavel quickstart)\"` they are now in this shell as GAVEL_TOKEN
(the reviewer's, used by gavel's commands) and AGENT_TOKEN. gavel keeps
only their hashes. GAVEL_CONFIG points at the config.

Next:
  1. scripts/gavel serve &
  2. curl -s -H \"Authorization: Bearer $AGENT_TOKEN\" -d '{{\"resource\":\"prod-db\",\"action\":\"sql.write\",\"operation\":\"DELETE FROM sessions\"}}' {server}/api/v1/actions
  3. scripts/gavel requests",
        dir = dir.display(),
    );
    let absolute = std::fs::canonicalize(&config_file)?;
    outln!(
        "export GAVEL_CONFIG={}",
        shell_quote(&absolute.display().to_string())
    );
    outln!("export GAVEL_TOKEN={reviewer_token}");
    outln!("export AGENT_TOKEN={agent_token}");
    Ok(ExitCode::SUCCESS)
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_loads_and_the_policies_validate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gavel.toml");
        std::fs::write(&file, config_text("127.0.0.1:8470", &"a".repeat(64))).unwrap();
        let loaded = gavel_config::load(Some(&file)).unwrap();
        assert_eq!(loaded.config.identity.humans.len(), 1);
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        for (name, text) in POLICIES {
            std::fs::write(policies.join(name), text).unwrap();
        }
        let bundle = gavel_policy::load_dir(&policies).unwrap();
        assert!(bundle.policies.len() >= 5);
    }

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/tmp/a/gavel.toml"), "/tmp/a/gavel.toml");
        assert_eq!(shell_quote("/tmp/it's here"), r"'/tmp/it'\''s here'");
    }
}

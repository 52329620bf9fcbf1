//! `gavel`: the gateway and the tools around it (SPEC §7).

mod admin;
mod audit;
mod client;
mod flags;
mod out;
mod quickstart;
mod store;

use clap::Parser;
use flags::{AgentCommand, AuditCommand, Cli, Command, PolicyCommand, StoreCommand, TokenCommand};
use std::process::ExitCode;

/// Exit codes, so scripts can tell failure kinds apart.
pub mod exit {
    /// Something went wrong (network, storage, server error).
    pub const FAILURE: u8 = 1;
    /// Bad usage or configuration (clap also uses 2).
    pub const USAGE: u8 = 2;
    /// The server refused: unauthenticated, forbidden, or not pending.
    pub const REFUSED: u8 = 3;
    /// No such request or agent.
    pub const NOT_FOUND: u8 = 4;
    /// `gavel wait`: the request was denied, expired or failed.
    pub const DENIED: u8 = 5;
    /// `gavel wait`: still pending when the timeout passed.
    pub const STILL_PENDING: u8 = 6;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gavel: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // The reader went away (`gavel audit export | head`): it has all
        // it wanted.
        Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gavel: {e:#}");
            ExitCode::from(e.downcast_ref::<Fail>().map_or(exit::FAILURE, |f| f.code))
        }
    }
}

/// An error with a chosen exit code.
#[derive(Debug)]
pub struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn with(code: u8, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Fail {
            code,
            message: message.into(),
        })
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

/// The gateway client commands talk to: `--server` (or GAVEL_SERVER), else
/// the `server.public_url` of the config given, else the default address.
fn server_url(server: Option<&str>, config: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(server) = server {
        return Ok(server.to_owned());
    }
    match config {
        Some(file) => Ok(admin::load_config(Some(file))?.config.server.public_url),
        None => Ok(DEFAULT_SERVER.to_owned()),
    }
}

const DEFAULT_SERVER: &str = "http://127.0.0.1:8470";

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Resolved only for the commands that talk to a gateway.
    let (server_flag, config_file) = (cli.server.clone(), cli.config.clone());
    let server = || server_url(server_flag.as_deref(), config_file.as_deref());
    let config = config_file.as_deref();
    let json = cli.json;
    match cli.command {
        Command::Quickstart { ref dir } => quickstart::quickstart(dir).await,
        Command::Serve => admin::serve(config).await,
        Command::Requests(args) => client::requests(&server()?, args, json).await,
        Command::Show { id } => client::show(&server()?, &id, json).await,
        Command::Approve { id, comment } => client::approve(&server()?, &id, comment, json).await,
        Command::Deny { id, reason } => client::deny(&server()?, &id, reason, json).await,
        Command::Wait { id, timeout } => client::wait(&server()?, &id, &timeout, json).await,
        Command::Whoami => client::whoami(&server()?, json).await,
        Command::Login { paste } => client::login(&server()?, paste).await,
        Command::Logout => client::logout(&server()?).await,
        Command::Mcp { token_env } => client::mcp(&server()?, &token_env).await,
        Command::Agent(AgentCommand::Create {
            name,
            owner,
            group,
            expires,
        }) => admin::agent_create(config, &name, &owner, group, expires).await,
        Command::Agent(AgentCommand::List) => admin::agent_list(config, json).await,
        Command::Agent(AgentCommand::Revoke { name }) => admin::agent_revoke(config, &name).await,
        Command::Token(TokenCommand::Hash { token }) => {
            outln!("{}", gavel_identity::token_sha256(&token));
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Generate) => {
            let token =
                gavel_identity::generate_agent_token().replacen("gvl_agent_", "gvl_human_", 1);
            eprintln!(
                "token_sha256 = \"{}\"   # put this in [[identity.humans]]",
                gavel_identity::token_sha256(&token)
            );
            eprintln!("the token (shown once; give it to the human, store it nowhere else):");
            outln!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Validate { dir }) => {
            admin::policy_validate(config, dir, json)
        }
        Command::Policy(PolicyCommand::Explain(args)) => {
            admin::policy_explain(config, args, json).await
        }
        Command::Store(StoreCommand::Copy(args)) => store::copy(args, json).await,
        Command::Audit(AuditCommand::Key) => audit::key(config),
        Command::Audit(AuditCommand::Verify { checkpoint, pubkey }) => {
            audit::verify(config, checkpoint, pubkey, json).await
        }
        Command::Audit(AuditCommand::Proof { seq, size, pubkey }) => {
            audit::proof(config, seq, size, pubkey).await
        }
        Command::Audit(AuditCommand::Checkpoint) => audit::checkpoint(config).await,
        Command::Audit(AuditCommand::Export {
            format,
            since,
            until,
        }) => audit::export(config, &format, since, until).await,
        Command::Policy(PolicyCommand::Schema) => {
            out::text(gavel_policy::SCHEMA_TEXT);
            Ok(ExitCode::SUCCESS)
        }
    }
}

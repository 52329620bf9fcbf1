//! Command-line flags: parsing only, no I/O.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// gavel puts a human checkpoint on the privileged actions of AI agents.
///
/// Agents reach databases, tools and APIs through gavel. Every action is
/// identified, classified and checked against Cedar policy: harmless ones
/// pass, forbidden ones are refused, privileged ones wait for a human to
/// approve them here, in the REST API, or in chat.
///
/// Start:   gavel serve                      (SQLite in ./gavel-data, API on 127.0.0.1:8470)
/// Review:  GAVEL_TOKEN=… gavel requests     then  gavel approve ID  /  gavel deny ID --reason …
/// Agents:  gavel agent create NAME --owner you@example.com   (prints the token once)
#[derive(Debug, Parser)]
#[command(
    name = "gavel",
    version,
    about,
    long_about,
    max_term_width = 100,
    verbatim_doc_comment
)]
pub struct Cli {
    /// The configuration file (default: built-in defaults).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "GAVEL_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// A running gateway, for requests/show/approve/deny/wait/whoami
    /// (default: the config's server.public_url, else
    /// http://127.0.0.1:8470). The token comes from GAVEL_TOKEN or `gavel
    /// login`.
    #[arg(long, global = true, env = "GAVEL_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Print JSON instead of text (commands that print data: requests,
    /// show, wait, approve, deny, whoami, agent list, policy validate,
    /// policy explain, audit verify).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a working setup to try gavel with: a config, the example
    /// policies, a reviewer and an agent. Their tokens are printed once, as
    /// `export` lines: run it as `eval "$(gavel quickstart)"`.
    Quickstart {
        /// Where (must not exist yet).
        #[arg(long, default_value = "gavel-quickstart")]
        dir: PathBuf,
    },
    /// Run the gateway (API on [server] listen, default 127.0.0.1:8470).
    Serve,
    /// List approval requests (newest first).
    Requests(RequestsArgs),
    /// Show one request with everything a reviewer needs.
    Show {
        /// The request id, its short form, or an unambiguous prefix.
        id: String,
    },
    /// Approve a request (you must be in its approver set, and neither its
    /// initiator nor the initiating agent's owner).
    Approve {
        /// The request id, its short form, or an unambiguous prefix.
        id: String,
        /// A comment recorded with your approval.
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
    },
    /// Deny a request; one denial ends it.
    Deny {
        /// The request id, its short form, or an unambiguous prefix.
        id: String,
        /// Why; the initiator sees it and the audit log keeps it.
        #[arg(long, short = 'r')]
        reason: String,
    },
    /// Wait until a request is decided (or the timeout passes) and print
    /// it. Exits 0 when approved (or since run), 5 when denied, expired or
    /// failed, 6 when still pending at the timeout.
    Wait {
        /// The request id, its short form, or an unambiguous prefix.
        id: String,
        /// How long to wait, e.g. 30s or 5m.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Show who GAVEL_TOKEN (or the stored login) authenticates as.
    Whoami,
    /// Sign in and keep the token for later commands against --server, in
    /// ~/.config/gavel/credentials.json (mode 0600); GAVEL_TOKEN, when set,
    /// still wins. Uses the identity provider's device flow when the server
    /// has one configured; otherwise (or with --paste) reads a token on
    /// standard input: an API or agent token, or one from your IdP.
    Login {
        /// Read a token on standard input even if device sign-in is available.
        #[arg(long)]
        paste: bool,
    },
    /// Forget the token stored for --server.
    Logout,
    /// Speak MCP on stdio for clients that only launch local servers, and
    /// relay everything to the gateway's /mcp (at --server) as the agent
    /// whose token is in the variable --token-env names.
    Mcp {
        /// The environment variable that holds the agent's gavel token.
        #[arg(long, default_value = "GAVEL_TOKEN", value_name = "NAME")]
        token_env: String,
    },
    /// Manage agents in the store (works while `serve` runs).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Token helpers for `[[identity.humans]]`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check and explain Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The tamper-evident audit log: keys, offline verification, proofs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Work on a whole store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a whole state, audit log included, into a new, empty store
    /// (SQLite to PostgreSQL or back); then check the copy's audit log
    /// against the original's. Stop the gateways on the source first.
    Copy(StoreCopyArgs),
}

#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The store to copy: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    pub from: String,
    /// The new store: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    pub to: String,
    /// Environment variable with the source PostgreSQL password.
    #[arg(long, value_name = "VAR")]
    pub from_password_env: Option<String>,
    /// Environment variable with the target PostgreSQL password.
    #[arg(long, value_name = "VAR")]
    pub to_password_env: Option<String>,
    /// CA certificate (PEM) to verify the source PostgreSQL server with.
    #[arg(long, value_name = "FILE")]
    pub from_ca_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the target PostgreSQL server with.
    #[arg(long, value_name = "FILE")]
    pub to_ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the log's public verifier key (C2SP signed-note form). Give it
    /// to auditors; they verify with it, never with the data directory.
    Key,
    /// Recompute the whole log offline from the store and check every
    /// signed checkpoint. Exits 1 naming the first bad sequence number.
    Verify {
        /// A signed checkpoint kept elsewhere (detects truncation even if
        /// the stored checkpoints were deleted too).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The verifier key to trust (from `gavel audit key`, kept
        /// elsewhere). Default: derived from the key in the data directory.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
    },
    /// Print an inclusion proof for record SEQ and check it.
    Proof {
        /// The record's sequence number.
        seq: u64,
        /// Prove against this signed tree size (default: the latest checkpoint).
        #[arg(long)]
        size: Option<u64>,
        /// The verifier key to trust (default: derived from the data directory's key).
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
    },
    /// Print the latest signed checkpoint; keep copies outside gavel.
    Checkpoint,
    /// Export records for a SIEM, one per line, in sequence order.
    Export {
        /// jsonl (the hashed bytes), ocsf (API Activity), cef, or syslog (RFC 5424).
        #[arg(long, value_parser = ["jsonl", "ocsf", "cef", "syslog"])]
        format: String,
        /// Only records at or after this time: RFC 3339, or how long ago
        /// (1h, 30m, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339, or how long ago).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Only this state: pending, approved, admitted, executed, failed,
    /// denied, expired.
    #[arg(long)]
    pub state: Option<String>,
    /// Only the pending requests you are asked to review (and may).
    #[arg(long, conflicts_with = "state")]
    pub mine: bool,
    /// Only this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Only this initiator: agent:NAME or human:ID (a bare NAME is an
    /// agent, a bare address a human).
    #[arg(long)]
    pub initiator: Option<String>,
    /// Print only the short ids, one per line.
    #[arg(long, short = 'q', conflicts_with = "json")]
    pub quiet: bool,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent and print its token once, alone on the last line.
    Create {
        /// A unique name (never reused, so audit records stay unambiguous).
        name: String,
        /// The accountable human (email or IdP subject); never an approver
        /// of this agent's requests.
        #[arg(long)]
        owner: String,
        /// A group (repeatable), for policies and routing.
        #[arg(long)]
        group: Vec<String>,
        /// Token lifetime, e.g. 30d (default: until revoked).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List agents.
    List,
    /// Revoke an agent's token at once.
    Revoke {
        /// The agent's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the token_sha256 of TOKEN for [[identity.humans]].
    Hash {
        /// The token.
        token: String,
    },
    /// Make a new random human token and print its hash (stderr) and the
    /// token (stdout).
    Generate,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate the policy directory against gavel's schema; errors name
    /// file, line and column.
    Validate {
        /// The directory (default: [policy] dir of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Decide one hypothetical action and explain why.
    Explain(ExplainArgs),
    /// Print the Cedar schema policies are validated against.
    Schema,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// `agent:NAME` (owner and groups from the store, or --owner/--group)
    /// or `human:ID` (groups from the config, or --group).
    #[arg(long)]
    pub principal: String,
    /// The action class, e.g. sql.ddl (with --sql: what the classifier
    /// says, unless given).
    #[arg(long, required_unless_present = "sql")]
    pub action: Option<String>,
    /// A SQL statement: classified as the PostgreSQL proxy classifies it
    /// (class and tables), then judged.
    #[arg(long, value_name = "STATEMENT")]
    pub sql: Option<String>,
    /// The resource name (kind and tags from the config, or --kind/--tag).
    #[arg(long)]
    pub resource: String,
    /// The context as JSON: `operation`, `intent`, and the class's fields
    /// (`tables`, `tool`, `method`, `path`, `command`).
    #[arg(long, default_value = "{}")]
    pub context: String,
    /// Owner of an agent not in the store.
    #[arg(long)]
    pub owner: Option<String>,
    /// Groups of the principal (replaces what the store or config says).
    #[arg(long)]
    pub group: Vec<String>,
    /// Resource kind (default from config, else `api`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Resource tag KEY=VALUE (repeatable; replaces configured tags).
    #[arg(long)]
    pub tag: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }
}

//! `gavel store …`: work on a whole store.

use crate::{Fail, exit, outln};
use std::path::PathBuf;
use std::process::ExitCode;

/// Opens one side of `gavel store copy`: an SQLite source must exist (a
/// typo must not copy an empty store); the target is created.
async fn open_copy_side(
    side: &str,
    url: &str,
    password_env: Option<&str>,
    ca_file: Option<PathBuf>,
    must_exist: bool,
) -> anyhow::Result<(gavel_store::StorageUrl, gavel_store::Storage)> {
    let parsed = gavel_store::StorageUrl::parse(url)
        .map_err(|e| Fail::with(exit::USAGE, format!("--{side}: {e}")))?;
    if let gavel_store::StorageUrl::Sqlite(path) = &parsed {
        if must_exist && !path.exists() {
            return Err(Fail::with(
                exit::NOT_FOUND,
                format!("--{side}: no gavel store at {}", path.display()),
            ));
        }
        if password_env.is_some() || ca_file.is_some() {
            return Err(Fail::with(
                exit::USAGE,
                format!("--{side}-password-env and --{side}-ca-file are for a postgres:// URL"),
            ));
        }
    }
    let password = match password_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            Fail::with(
                exit::USAGE,
                format!("--{side}-password-env: the environment variable {var} is not set"),
            )
        })?),
        None => None,
    };
    let access = gavel_store::PostgresAccess { password, ca_file };
    let store = gavel_store::Storage::open(&parsed, &access)
        .await
        .map_err(|e| Fail::with(exit::FAILURE, format!("--{side}: {e}")))?;
    Ok((parsed, store))
}

/// `gavel store copy`: the whole state into a new store, then a check that
/// the copy's audit log is the original's, byte for byte, with the same
/// signed checkpoints.
pub async fn copy(args: crate::flags::StoreCopyArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let (from_url, from) = open_copy_side(
        "from",
        &args.from,
        args.from_password_env.as_deref(),
        args.from_ca_file,
        true,
    )
    .await?;
    let (to_url, to) = open_copy_side(
        "to",
        &args.to,
        args.to_password_env.as_deref(),
        args.to_ca_file,
        false,
    )
    .await?;
    if from_url == to_url {
        return Err(Fail::with(
            exit::USAGE,
            "--from and --to name the same store",
        ));
    }
    let report = gavel_store::copy_store(&from, &to)
        .await
        .map_err(|e| match e {
            gavel_core::Error::Invalid(m) => Fail::with(exit::USAGE, format!("--to: {m}")),
            other => Fail::with(exit::FAILURE, other.to_string()),
        })?;
    if as_json {
        let tables: serde_json::Map<String, serde_json::Value> = report
            .tables
            .iter()
            .map(|(t, n)| ((*t).to_owned(), (*n).into()))
            .collect();
        outln!(
            "{}",
            serde_json::json!({"from": from_url.redacted(), "to": to_url.redacted(), "rows": tables})
        );
    } else {
        for (table, rows) in &report.tables {
            outln!("{table:<18} {rows:>9} rows");
        }
        outln!(
            "copied {} to {}: {} audit records and {} signed checkpoints, identical to the original (checked before the copy was committed); run `gavel audit verify` with a config whose storage.url names the copy",
            from_url.redacted(),
            to_url.redacted(),
            report.rows("audit_log"),
            report.rows("audit_checkpoints"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `gavel audit …`: offline work on the audit log in the store.

use crate::admin::load_config;
use crate::admin::open_existing_store as open_store;
use crate::{Fail, exit, outln};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gavel_audit::{Checkpoint, NoteSigner, NoteVerifier, inclusion_proof, verify_log};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The gateway's signing key; never created here (the gateway creates it
/// on its first start).
fn signer(loaded: &gavel_config::Loaded) -> anyhow::Result<NoteSigner> {
    let path = loaded.audit_key_file();
    if !path.exists() {
        return Err(Fail::with(
            exit::NOT_FOUND,
            format!(
                "no audit key at {} (the gateway creates it on its first start); point --config at the gateway's config",
                path.display()
            ),
        ));
    }
    NoteSigner::load(&path).map_err(|e| Fail::with(exit::FAILURE, format!("audit key: {e}")))
}

pub fn key(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    outln!("{}", signer(&loaded)?.verifier().encode());
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Fail::with(exit::USAGE, format!("{what} {}: {e}", path.display())))
}

/// The key to verify with: `--pubkey` (kept elsewhere), or else the one
/// derived from the data directory's signing key, with a warning.
fn verifier(loaded: &gavel_config::Loaded, pubkey: Option<&Path>) -> anyhow::Result<NoteVerifier> {
    match pubkey {
        Some(p) => NoteVerifier::parse(&read(p, "--pubkey")?)
            .map_err(|e| Fail::with(exit::USAGE, format!("--pubkey: {e}"))),
        None => {
            eprintln!(
                "note: trusting the key in {}; pass --pubkey with a copy kept elsewhere for an independent check",
                loaded.audit_key_file().display()
            );
            Ok(signer(loaded)?.verifier())
        }
    }
}

pub async fn verify(
    file: Option<&Path>,
    checkpoint: Option<PathBuf>,
    pubkey: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    let verifier = verifier(&loaded, pubkey.as_deref())?;
    // Without --checkpoint, the gateway's own witness copy (beside its key,
    // outside the database) stands in for a checkpoint kept elsewhere.
    let witness = loaded.audit_witness_file();
    let external = match checkpoint.as_deref() {
        Some(p) => Some(read(p, "--checkpoint")?),
        None if witness.exists() => {
            eprintln!(
                "note: also checking the witness checkpoint {}",
                witness.display()
            );
            Some(read(&witness, "witness checkpoint")?)
        }
        None => None,
    };
    let store = open_store(&loaded).await?;
    let records = store.audit_stored(0, u64::MAX).await?;
    let checkpoints = store.checkpoints().await?;
    match verify_log(records, &checkpoints, &verifier, external.as_deref()) {
        Ok(report) if as_json => {
            outln!(
                "{}",
                serde_json::json!({
                    "verified": true,
                    "records": report.records,
                    "checkpoints": report.checkpoints,
                    "signed": report.signed,
                    "root": B64.encode(report.root),
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if as_json => {
            outln!(
                "{}",
                serde_json::json!({"verified": false, "error": e.to_string()})
            );
            Ok(ExitCode::from(exit::FAILURE))
        }
        Ok(report) => {
            outln!(
                "audit log verified: {} records, {} signed checkpoints, root {}",
                report.records,
                report.checkpoints,
                B64.encode(report.root)
            );
            if report.signed < report.records {
                outln!(
                    "note: records {}..{} are not yet covered by a signed checkpoint (the gateway signs one every audit.checkpoint_interval and at shutdown)",
                    report.signed,
                    report.records - 1
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("audit log FAILED verification: {e}");
            Ok(ExitCode::from(exit::FAILURE))
        }
    }
}

pub async fn proof(
    file: Option<&Path>,
    seq: u64,
    size: Option<u64>,
    pubkey: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    let verifier = verifier(&loaded, pubkey.as_deref())?;
    let store = open_store(&loaded).await?;
    let checkpoints = store.checkpoints().await?;
    let size = match size {
        Some(s) => s,
        None => checkpoints
            .last()
            .map(|c| c.size)
            .ok_or_else(|| Fail::with(exit::NOT_FOUND, "no signed checkpoint yet; pass --size"))?,
    };
    let leaves = store.audit_leaves(0, size).await?;
    let path = inclusion_proof(&leaves, seq, size)
        .map_err(|e| Fail::with(exit::NOT_FOUND, e.to_string()))?;
    let record = store.audit_stored(seq, seq + 1).await?;
    let record = record
        .first()
        .ok_or_else(|| Fail::with(exit::NOT_FOUND, format!("no record {seq}")))?;
    // A proof means something only against a root someone signed.
    let signed = checkpoints.iter().find(|c| c.size == size).ok_or_else(|| {
        let sizes: Vec<String> = checkpoints.iter().map(|c| c.size.to_string()).collect();
        Fail::with(
            exit::NOT_FOUND,
            format!(
                "no signed checkpoint at size {size}; signed sizes: {}",
                sizes.join(", ")
            ),
        )
    })?;
    let root = Checkpoint::open(&signed.note, &verifier)
        .map_err(|e| {
            Fail::with(
                exit::FAILURE,
                format!("stored checkpoint for size {size}: {e}"),
            )
        })?
        .root;
    let ok = gavel_audit::tree::verify_inclusion(&root, size, &record.data, seq, &path);
    let signed = Some(signed);
    let out = serde_json::json!({
        "seq": seq,
        "tree_size": size,
        "leaf_data": B64.encode(&record.data),
        "root": B64.encode(root),
        "proof": path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        "checkpoint": signed.map(|c| c.note.clone()),
        "verified": ok,
    });
    outln!("{}", serde_json::to_string_pretty(&out)?);
    if ok {
        eprintln!(
            "record {seq} is included in the {} tree of size {size}",
            if signed.is_some() {
                "signed"
            } else {
                "unsigned (no checkpoint at this size)"
            }
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("record {seq} does NOT verify against the root of size {size}");
        Ok(ExitCode::from(exit::FAILURE))
    }
}

pub async fn checkpoint(file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let loaded = load_config(file)?;
    let store = open_store(&loaded).await?;
    match store.latest_checkpoint().await? {
        Some(cp) => {
            crate::out::text(&cp.note);
            Ok(ExitCode::SUCCESS)
        }
        None => Err(Fail::with(
            exit::NOT_FOUND,
            "no signed checkpoint yet (the gateway signs them while it runs)",
        )),
    }
}

/// A time given as RFC 3339 (`2026-11-30T12:00:00Z`) or as a span back
/// from now (`90m`, `1h`, `7d`).
fn parse_time(flag: &str, v: Option<String>) -> anyhow::Result<Option<i64>> {
    use gavel_core::Clock as _;
    v.map(|s| {
        if let Ok(t) = gavel_core::Timestamp::parse_rfc3339(&s) {
            return Ok(t.0);
        }
        match humantime::parse_duration(&s) {
            Ok(ago) => Ok(gavel_core::SystemClock.now().0
                - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)),
            Err(_) => Err(Fail::with(
                exit::USAGE,
                format!(
                    "{flag} {s:?}: give a time (2026-11-30T12:00:00Z) or how long ago (1h, 30m, 7d)"
                ),
            )),
        }
    })
    .transpose()
}

pub async fn export(
    file: Option<&Path>,
    format: &str,
    since: Option<String>,
    until: Option<String>,
) -> anyhow::Result<ExitCode> {
    use gavel_audit::export;
    use std::io::Write;
    let loaded = load_config(file)?;
    let origin = loaded.config.audit.origin.clone();
    let since = parse_time("--since", since)?;
    let until = parse_time("--until", until)?;
    let store = open_store(&loaded).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = None;
    loop {
        let page = store
            .audit_page(&gavel_store::AuditFilter {
                after,
                since,
                until,
                limit: 5_000,
                ..Default::default()
            })
            .await?;
        let Some(&(last, _)) = page.last() else { break };
        for (seq, r) in &page {
            let line = match format {
                "jsonl" => export::jsonl(*seq, r),
                "ocsf" => export::ocsf(*seq, r, &origin).to_string(),
                "cef" => export::cef(*seq, r),
                _ => export::syslog(*seq, r),
            };
            writeln!(out, "{line}")?;
        }
        after = Some(last);
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

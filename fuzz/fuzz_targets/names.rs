//! The model-based differential test of the PostgreSQL surface's names,
//! with the fuzzer choosing the sequences: each input becomes rounds of
//! extended-protocol batches and query strings (`gavel_pg_model`), run
//! through a live gavel in front of the real PostgreSQL. After every
//! ReadyForQuery gavel's view of the session's prepared statements and
//! portals must equal the server's, and nothing but reads may run.
//!
//! `scripts/fuzz names` starts that gavel and passes it here:
//! GAVEL_FUZZ_PG (gavel's listener), GAVEL_FUZZ_TOKEN (an agent under a
//! read-only policy), GAVEL_FUZZ_DIRECT (the server itself).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rounds = gavel_pg_model::rounds_from_bytes(data);
    if rounds.is_empty() {
        return;
    }
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run scripts/fuzz names"));
    let target = gavel_pg_model::Target {
        gavel: env("GAVEL_FUZZ_PG"),
        token: env("GAVEL_FUZZ_TOKEN"),
        direct: env("GAVEL_FUZZ_DIRECT"),
        log: format!("gavel_fuzz_log_{}", std::process::id()),
    };
    if let Err(divergence) = gavel_pg_model::run(&target, &rounds) {
        panic!("{divergence}");
    }
});

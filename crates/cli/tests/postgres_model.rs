//! The model-based differential test of the PostgreSQL surface (see
//! `gavel-pg-model`): seeded random sequences of extended-protocol batches
//! and query strings through gavel against the machine's PostgreSQL;
//! after every ReadyForQuery gavel's view of the session's prepared
//! statements and portals must equal the server's, and nothing but reads
//! may have run. CI runs a few short seeds; `scripts/fuzz model SECONDS`
//! runs as many as fit (`GAVEL_MODEL_SEEDS`, `GAVEL_MODEL_ROUNDS`).

mod harness;

use harness::pg::Pg;

const READ_ONLY: &str =
    r#"@id("reads") permit(principal, action == Action::"sql.read", resource);"#;

#[tokio::test(flavor = "multi_thread")]
async fn gavels_view_of_a_sessions_names_is_the_servers() {
    let pg = Pg::start_policies("1s", READ_ONLY, "").await;
    let seeds: Vec<u64> = std::env::var("GAVEL_MODEL_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4, 5, 6]);
    let rounds: usize = std::env::var("GAVEL_MODEL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(80);
    let target = gavel_pg_model::Target {
        gavel: format!("127.0.0.1:{}", pg.port),
        token: pg.g.agent_token.clone(),
        direct: "127.0.0.1:5432".into(),
        log: format!("gavel_model_log_{}", std::process::id()),
    };
    let mut total = gavel_pg_model::Summary::default();
    for seed in seeds {
        let sequence = gavel_pg_model::random_rounds(seed, rounds);
        let target = gavel_pg_model::Target {
            gavel: target.gavel.clone(),
            token: target.token.clone(),
            direct: target.direct.clone(),
            log: target.log.clone(),
        };
        let summary = tokio::task::spawn_blocking(move || gavel_pg_model::run(&target, &sequence))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        total.rounds += summary.rounds;
        total.compared += summary.compared;
        total.stale += summary.stale;
        total.aborted += summary.aborted;
    }
    eprintln!("{total:?}");
    // The comparisons must mostly be real ones, not skipped as stale.
    assert!(total.compared > total.rounds / 2, "{total:?}");
}

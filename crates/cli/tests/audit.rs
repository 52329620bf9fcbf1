//! The audit log against a hostile database administrator: every kind of
//! tampering, made directly on the SQLite file, is caught by
//! `gavel audit verify`, which names the first bad sequence number.

mod harness;

use harness::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A log of 8 records with a signed checkpoint after each one, the
/// gateway stopped, and the verifier key and last checkpoint kept apart.
struct Log {
    g: Gavel,
    pubkey: PathBuf,
    external: PathBuf,
}

async fn log() -> Log {
    let mut g = Gavel::start().await;
    for i in 0..8 {
        g.act(&g.agent_token, "sql.read", "db", &format!("SELECT {i}"))
            .await;
        let (s, _) = g
            .call(
                reqwest::Method::GET,
                "/api/v1/audit/checkpoint",
                Some(ALICE),
                None,
            )
            .await;
        assert_eq!(s, 200);
    }
    let note = g
        .http
        .get(format!("{}/api/v1/audit/checkpoint", g.base))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(note.contains("\n8\n"), "{note}");
    g.kill();
    let key = g.cli(&["audit", "key"], None);
    assert!(key.status.success());
    let pubkey = g.dir.path().join("verifier.pub");
    std::fs::write(&pubkey, &key.stdout).unwrap();
    let external = g.dir.path().join("checkpoint.txt");
    std::fs::write(&external, note).unwrap();
    Log {
        g,
        pubkey,
        external,
    }
}

impl Log {
    fn db(&self) -> PathBuf {
        self.g.dir.path().join("state/gavel.db")
    }

    fn verify(&self, external: bool) -> (bool, String) {
        let mut args = vec![
            "audit".to_string(),
            "verify".into(),
            "--pubkey".into(),
            self.pubkey.display().to_string(),
        ];
        if external {
            args.extend(["--checkpoint".into(), self.external.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.g.cli(&args, None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Runs SQL as the hostile DBA: triggers dropped first.
    async fn tamper(&self, statements: &[&str]) {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", self.db().display()))
            .await
            .unwrap();
        for s in [
            "DROP TRIGGER IF EXISTS audit_log_no_update",
            "DROP TRIGGER IF EXISTS audit_log_no_delete",
            "DROP TRIGGER IF EXISTS audit_checkpoints_no_update",
            "DROP TRIGGER IF EXISTS audit_checkpoints_no_delete",
        ] {
            sqlx::query(s).execute(&pool).await.unwrap();
        }
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    }

    async fn record(&self, seq: u64) -> Vec<u8> {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", self.db().display()))
            .await
            .unwrap();
        let data: Vec<u8> = sqlx::query_scalar("SELECT record FROM audit_log WHERE seq = ?")
            .bind(seq as i64)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        data
    }
}

fn leaf_hash_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_first_bad(result: (bool, String), seq: u64, why: &str) {
    let (ok, text) = result;
    assert!(!ok, "verify passed a tampered log:\n{text}");
    assert!(
        text.contains(&format!("first bad record: seq {seq}:")),
        "expected seq {seq}:\n{text}"
    );
    assert!(text.contains(why), "expected {why:?}:\n{text}");
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let l = log().await;
    let (ok, text) = l.verify(true);
    assert!(ok, "{text}");
    assert!(
        text.contains("audit log verified: 8 records, 9 signed checkpoints"),
        "{text}"
    );
}

#[tokio::test]
async fn a_modified_record_is_named() {
    let l = log().await;
    let data = String::from_utf8(l.record(5).await)
        .unwrap()
        .replace("\"allow\"", "\"deny\"");
    l.tamper(&[&format!(
        "UPDATE audit_log SET record = CAST('{}' AS BLOB) WHERE seq = 5",
        data.replace('\'', "''")
    )])
    .await;
    assert_first_bad(l.verify(false), 5, "record modified");
}

#[tokio::test]
async fn a_modified_record_with_a_recomputed_hash_is_caught_by_the_signed_checkpoints() {
    let l = log().await;
    let data = String::from_utf8(l.record(3).await)
        .unwrap()
        .replace("SELECT 3", "SELECT 4");
    l.tamper(&[&format!(
        "UPDATE audit_log SET record = CAST('{}' AS BLOB), leaf_hash = X'{}' WHERE seq = 3",
        data.replace('\'', "''"),
        leaf_hash_hex(data.as_bytes())
    )])
    .await;
    assert_first_bad(l.verify(false), 3, "does not match the records");
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let l = log().await;
    l.tamper(&["DELETE FROM audit_log WHERE seq = 2"]).await;
    assert_first_bad(l.verify(false), 2, "records deleted");
}

#[tokio::test]
async fn an_inserted_record_is_named() {
    let l = log().await;
    // Make room at 4 by shifting the rest up, then forge a record there with
    // a correct hash of its own bytes.
    let forged = String::from_utf8(l.record(4).await)
        .unwrap()
        .replace("SELECT 4", "SELECT 'forged'");
    l.tamper(&[
        "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 4",
        "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 104",
        &format!(
            "INSERT INTO audit_log (seq, time, record, leaf_hash) VALUES (4, 0, CAST('{}' AS BLOB), X'{}')",
            forged.replace('\'', "''"),
            leaf_hash_hex(forged.as_bytes())
        ),
    ])
    .await;
    assert_first_bad(l.verify(false), 4, "does not match the records");
    // The shifted originals betray themselves even without checkpoints.
    l.tamper(&["DELETE FROM audit_checkpoints"]).await;
    assert_first_bad(l.verify(false), 5, "record moved");
}

#[tokio::test]
async fn reordered_records_are_named() {
    let l = log().await;
    l.tamper(&[
        "UPDATE audit_log SET seq = 100 WHERE seq = 6",
        "UPDATE audit_log SET seq = 6 WHERE seq = 7",
        "UPDATE audit_log SET seq = 7 WHERE seq = 100",
    ])
    .await;
    assert_first_bad(l.verify(false), 6, "record moved");
}

#[tokio::test]
async fn truncation_is_caught_by_stored_and_by_external_checkpoints() {
    let l = log().await;
    l.tamper(&["DELETE FROM audit_log WHERE seq >= 5"]).await;
    assert_first_bad(l.verify(false), 5, "records truncated");
    // A thorough DBA deletes the checkpoints as well: the witness beside the
    // key still tells.
    l.tamper(&["DELETE FROM audit_checkpoints WHERE size > 5"])
        .await;
    assert_first_bad(l.verify(false), 5, "records truncated");
    // With the data directory's witness gone too, only a checkpoint kept
    // elsewhere still tells.
    std::fs::remove_file(l.g.dir.path().join("state/audit.checkpoint")).unwrap();
    let (ok, text) = l.verify(false);
    assert!(
        ok,
        "without any checkpoint a clean truncation cannot be seen: {text}"
    );
    assert_first_bad(l.verify(true), 5, "records truncated");
}

#[tokio::test]
async fn forged_checkpoints_and_foreign_keys_are_refused() {
    let l = log().await;
    l.tamper(&["UPDATE audit_checkpoints SET note = replace(note, 'gavel.local/audit\n3\n', 'gavel.local/audit\n3\nx') WHERE size = 3"]).await;
    let (ok, text) = l.verify(false);
    assert!(!ok && text.contains("no valid signature"), "{text}");

    // Another gateway's key, of the same origin name.
    let other = tempfile::tempdir().unwrap();
    let foreign_key = gavel_audit::NoteSigner::generate("gavel.local/audit").unwrap();
    let foreign: &Path = &other.path().join("foreign.pub");
    std::fs::write(foreign, format!("{}\n", foreign_key.verifier().encode())).unwrap();
    let out = l.g.cli(
        &["audit", "verify", "--pubkey", foreign.to_str().unwrap()],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn proofs_from_the_api_and_the_cli_check_out() {
    let mut g = Gavel::start().await;
    for i in 0..5 {
        g.act(&g.agent_token, "sql.read", "db", &format!("SELECT {i}"))
            .await;
    }
    let (s, v) = g.get("/api/v1/audit/proof/2", ALICE).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tree_size"], 5);
    assert!(v["checkpoint"].as_str().unwrap().contains("\n5\n"));
    let (s, c) = g.get("/api/v1/audit/consistency?from=2&to=5", ALICE).await;
    assert_eq!(s, 200, "{c}");
    assert!(!c["proof"].as_array().unwrap().is_empty());
    let (s, page) = g.get("/api/v1/audit?event=decision&limit=2", ALICE).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], 1);
    let (s, page) = g
        .get("/api/v1/audit?after=1&principal=agent:bot", ALICE)
        .await;
    assert_eq!(s, 200);
    assert_eq!(page["records"].as_array().unwrap().len(), 3, "{page}");
    let (s, _) = g.get("/api/v1/audit", &g.agent_token).await;
    assert_eq!(s, 403, "agents cannot read the audit log");
    g.kill();
    let out = g.cli(&["audit", "proof", "3"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proof: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(proof["verified"], true);
    for format in ["jsonl", "ocsf", "cef", "syslog"] {
        let out = g.cli(&["audit", "export", "--format", format], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 5, "{format}:\n{text}");
    }
    let out = g.cli(
        &[
            "audit",
            "export",
            "--format",
            "jsonl",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
        None,
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

/// kill -9 while clients drive load: every action the gateway acknowledged
/// has its record after the crash, and the log still verifies.
#[tokio::test]
async fn no_acknowledged_record_is_lost_to_kill_9() {
    let mut g = Gavel::start().await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let http = g.http.clone();
            let url = format!("{}/api/v1/actions", g.base);
            let token = g.agent_token.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let op = format!("SELECT 'client {c} call {i}'");
                    i += 1;
                    let body = serde_json::json!({"resource": "db", "action": "sql.read", "operation": op});
                    let Ok(resp) = http.post(&url).bearer_auth(&token).json(&body).send().await else { break };
                    let Ok(v) = resp.json::<serde_json::Value>().await else { break };
                    if v["verdict"] == "allow" {
                        acknowledged.lock().unwrap().push(op);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    g.kill(); // SIGKILL mid-load: no shutdown, no final checkpoint
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "the load was too light to mean anything: {}",
        acknowledged.len()
    );

    let out = g.cli(&["audit", "verify"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = g.cli(&["audit", "export", "--format", "jsonl"], None);
    let recorded: std::collections::HashSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["decision"] == "allow")
        .map(|r| r["operation"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|op| !recorded.contains(*op))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged actions have no record, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    // The gateway comes back on the same log, which keeps verifying.
    g.launch().await;
    g.act(&g.agent_token, "sql.read", "db", "SELECT 'after the crash'")
        .await;
    let (s, _) = g
        .call(
            reqwest::Method::GET,
            "/api/v1/audit/checkpoint",
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(s, 200);
    g.kill();
    let out = g.cli(&["audit", "verify"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{} acknowledged actions, all recorded across kill -9",
        acknowledged.len()
    );
}

#[tokio::test]
async fn shutdown_signs_a_final_checkpoint() {
    // No periodic checkpoint may sign the records first: only the
    // shutdown's.
    let mut g = Gavel::start_custom(
        "60s",
        harness::POLICIES,
        "[audit]\ncheckpoint_interval = \"1h\"\n",
    )
    .await;
    for i in 0..3 {
        g.act(&g.agent_token, "sql.read", "db", &format!("SELECT {i}"))
            .await;
    }
    g.stop();
    let out = g.cli(&["audit", "checkpoint"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = String::from_utf8(out.stdout).unwrap();
    assert!(note.starts_with("gavel.local/audit\n3\n"), "{note}");
    assert!(
        g.log().contains("signed the final checkpoint"),
        "{}",
        g.log()
    );
}

/// The DBA rewrites a record with a correct hash, deletes every stored
/// checkpoint and restarts gavel: it refuses to sign the rewritten log.
#[tokio::test]
async fn a_restarted_gateway_refuses_to_sign_a_rewritten_log() {
    let mut l = log().await;
    let forged = String::from_utf8(l.record(3).await)
        .unwrap()
        .replace("SELECT 3", "SELECT 'nothing'");
    l.tamper(&[
        &format!(
            "UPDATE audit_log SET record = CAST('{}' AS BLOB), leaf_hash = X'{}' WHERE seq = 3",
            forged.replace('\'', "''"),
            leaf_hash_hex(forged.as_bytes())
        ),
        "DELETE FROM audit_checkpoints",
    ])
    .await;
    l.g.launch().await;
    let (s, _) =
        l.g.call(
            reqwest::Method::GET,
            "/api/v1/audit/checkpoint",
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(s, 500, "it must not sign");
    let (_, ready) = l.g.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["audit_error"]
            .as_str()
            .unwrap()
            .contains("refusing to sign"),
        "{ready}"
    );
    let metrics =
        l.g.http
            .get(format!("{}/metrics", l.g.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(
        metrics.contains("gavel_audit_checkpoint_refused 1"),
        "{metrics}"
    );
    l.g.kill();
    // verify uses the witness checkpoint by default and names the range.
    assert_first_bad(l.verify(false), 0, "does not match the records");

    // An attacker who also controls the data directory deletes the witness:
    // gavel then signs the forged log, and only a checkpoint kept elsewhere
    // still tells.
    std::fs::remove_file(l.g.dir.path().join("state/audit.checkpoint")).unwrap();
    l.g.launch().await;
    let (s, _) =
        l.g.call(
            reqwest::Method::GET,
            "/api/v1/audit/checkpoint",
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(s, 200);
    l.g.kill();
    let (ok, text) = l.verify(false);
    assert!(ok, "{text}");
    let (ok, text) = l.verify(true);
    assert!(
        !ok && text.contains("disagree on the root at size 8"),
        "{text}"
    );
}

#[tokio::test]
async fn time_filters_read_the_hashed_time_not_the_unverified_column() {
    let l = log().await;
    l.tamper(&["UPDATE audit_log SET time = 0 WHERE seq = 5"])
        .await;
    let out = l.g.cli(
        &[
            "audit",
            "export",
            "--format",
            "jsonl",
            "--since",
            "2000-01-01T00:00:00Z",
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 8);
}

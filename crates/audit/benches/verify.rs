//! Offline verification speed: `cargo bench -p gavel-audit --bench verify`.
//!
//! One million realistic records and a signed checkpoint every 10,000, all
//! in memory, verified on one core (reading from SQLite is not included).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gavel_audit::{
    Checkpoint, Frontier, NoteSigner, StoredCheckpoint, StoredRecord, leaf_data, leaf_hash,
    verify_log,
};
use gavel_core::{ActionClass, AuditEvent, AuditRecord, Timestamp};

const RECORDS: u64 = 1_000_000;

fn records() -> (Vec<StoredRecord>, Vec<StoredCheckpoint>, NoteSigner) {
    let signer = NoteSigner::generate("bench/audit").unwrap();
    let mut frontier = Frontier::default();
    let mut out = Vec::with_capacity(RECORDS as usize);
    let mut checkpoints = Vec::new();
    for seq in 0..RECORDS {
        let r = AuditRecord {
            time: Timestamp(1_764_000_000_000 + seq as i64),
            event: AuditEvent::Decision,
            initiator: format!("agent:bot-{}", seq % 50),
            owner: Some("owner@example.com".into()),
            on_behalf_of: None,
            reviewers: vec![],
            comment: None,
            resource: format!("db-{}", seq % 7),
            class: ActionClass::SqlRead,
            operation: format!("SELECT id, name, email FROM customers WHERE id = {seq}"),
            details: serde_json::Value::Null,
            intent: "look up a customer for a support ticket".into(),
            policies: vec!["reads-allowed".into()],
            decision: Some("allow".into()),
            outcome: None,
            source: Some("10.0.0.12".into()),
            surface: "postgres".into(),
            request_id: None,
            gateway_id: "gw-1".into(),
        };
        let data = leaf_data(seq, &r);
        let hash = leaf_hash(&data);
        frontier.push(hash);
        out.push(StoredRecord {
            seq,
            data,
            leaf_hash: hash,
        });
        if frontier.size() % 10_000 == 0 {
            let cp = Checkpoint {
                origin: "bench/audit".into(),
                size: frontier.size(),
                root: frontier.root(),
            };
            checkpoints.push(StoredCheckpoint {
                size: cp.size,
                note: signer.sign(&cp.body()),
            });
        }
    }
    (out, checkpoints, signer)
}

fn bench(c: &mut Criterion) {
    let (records, checkpoints, signer) = records();
    let verifier = signer.verifier();
    let bytes: usize = records.iter().map(|r| r.data.len()).sum();
    eprintln!(
        "{RECORDS} records, {} bytes on average",
        bytes / RECORDS as usize
    );
    let mut group = c.benchmark_group("audit_verify");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("1M records", |b| {
        b.iter_batched(
            || records.clone(),
            |rs| verify_log(rs, &checkpoints, &verifier, None).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

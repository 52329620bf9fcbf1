//! Cost of classifying one statement from scratch (no cache), and of the
//! shape scan that keys the cache:
//! `cargo bench -p gavel-postgres --bench classify`.

use criterion::{Criterion, criterion_group, criterion_main};
use gavel_postgres::Classifier;

fn bench(c: &mut Criterion) {
    let classifier = Classifier::default();
    let mut group = c.benchmark_group("classify");
    for (name, sql) in [
        (
            "pgbench_select",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
        ),
        (
            "join_with_functions",
            "SELECT c.name, lower(c.email), count(o.id) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.created_at > now() - interval '1 day' GROUP BY c.name, c.email ORDER BY 3 DESC LIMIT 10",
        ),
        (
            "cte_delete",
            "WITH gone AS (DELETE FROM sessions WHERE expires_at < now() RETURNING id) SELECT count(*) FROM gone",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| classifier.classify(sql, &gavel_postgres::classify::NoNames))
        });
        group.bench_function(format!("{name}/parse_only"), |b| {
            b.iter(|| pg_query::parse(sql, 0).unwrap())
        });
        // What the proxy pays on a cache hit: the shape scan (the map
        // lookup comes on top).
        group.bench_function(format!("{name}/shape"), |b| {
            b.iter(|| gavel_postgres::shape::shape(sql))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The classifier must never panic, and must answer every input: anything
//! it cannot prove harmless is `sql.unknown`, never a crash.
#![no_main]

use gavel_core::ActionClass;
use gavel_postgres::Classifier;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    thread_local!(static CLASSIFIER: Classifier = Classifier::default());
    CLASSIFIER.with(|c| {
        let verdict = c.classify(sql, &gavel_postgres::classify::NoNames);
        // A statement list the parser rejects can never come out as a read.
        if pg_query_rejects(sql) {
            assert_eq!(verdict.class, ActionClass::SqlUnknown, "{sql:?}");
        }
    });
});

fn pg_query_rejects(sql: &str) -> bool {
    gavel_postgres::classify::parses(sql).is_err()
}

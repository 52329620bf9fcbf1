//! The frontend message decoder must never panic on any byte stream, and
//! the statement-shape scan must never claim a shape for text whose
//! classification depends on its literals: replacing every literal the
//! scan found with another of the same kind keeps the shape and the class.
#![no_main]

use bytes::BytesMut;
use gavel_postgres::shape::{shape, with_literals};
use gavel_postgres::wire::{MAX_MESSAGE, decode_frontend, split_frame};
use gavel_postgres::Classifier;
use libfuzzer_sys::fuzz_target;
use pgwire::messages::PgWireFrontendMessage;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, MAX_MESSAGE) {
        let sql = match decode_frontend(&frame) {
            Ok(PgWireFrontendMessage::Query(q)) => q.query,
            Ok(PgWireFrontendMessage::Parse(p)) => p.query,
            _ => continue,
        };
        let Some(original) = shape(&sql) else { continue };
        let Some(other) = with_literals(&sql, "'x'", "7") else {
            panic!("shape without relabel: {sql:?}");
        };
        assert_eq!(shape(&other).as_deref(), Some(original.as_str()), "{sql:?}");
        thread_local!(static CLASSIFIER: Classifier = Classifier::default());
        CLASSIFIER.with(|c| {
            let a = c.classify(&sql, &gavel_postgres::classify::NoNames);
            let b = c.classify(&other, &gavel_postgres::classify::NoNames);
            // Only when both parse (a value the grammar refuses is not
            // cached, see surface.rs) and the classifier did not say a
            // literal decided (`current_setting('…')`, never cached).
            if !a.statements.is_empty()
                && !b.statements.is_empty()
                && !a.reads_literals()
                && !b.reads_literals()
            {
                assert_eq!(a.class, b.class, "{sql:?} vs {other:?}");
                assert_eq!(a.tables, b.tables, "{sql:?} vs {other:?}");
            }
        });
    }
});

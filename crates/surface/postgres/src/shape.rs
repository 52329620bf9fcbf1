//! Statement shapes: the classification cache's key.
//!
//! Parsing every statement with PostgreSQL's grammar costs tens of
//! microseconds; an agent's statements mostly repeat with other literals.
//! A statement's shape is its text with each string and number literal
//! replaced by a NUL byte. The classification does not depend on literal values
//! (only on the grammar's structure and on identifiers), so statements of
//! one shape share one classification; where a literal does decide
//! (`current_setting('data_directory')`, a COPY's file name), the
//! classification says so and is never cached (see `surface.rs`).
//!
//! The scan must never disagree with PostgreSQL about where a literal ends:
//! two statements of one shape must have the same structure. So it judges
//! only what is unambiguous whatever the session's settings, and gives up
//! (no shape: the statement is parsed in full, every time) on anything
//! else: backslashes inside strings (their meaning depends on
//! `standard_conforming_strings`), `E''`, `B''`, `X''`, `U&''` and other
//! prefixed strings, dollar quoting, unterminated quotes or comments, and
//! numbers run into letters (`0x1F`, `1_000`, `1e`).

use std::collections::HashMap;
use std::sync::Mutex;

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The shape of `sql`, or `None` when the scan cannot be sure of it.
pub fn shape(sql: &str) -> Option<String> {
    // NUL cannot occur in a statement (the protocol sends C strings), so a
    // placeholder can never read as part of an operator or identifier.
    scan(sql, "\0", "\0")
}

/// `sql` with every string literal replaced by `string` and every number
/// by `number`, under the same rules as [`shape`]: for fuzzing the claim
/// that literals never change a classification.
pub fn with_literals(sql: &str, string: &str, number: &str) -> Option<String> {
    scan(sql, string, number)
}

fn scan(sql: &str, string: &str, number: &str) -> Option<String> {
    let s = sql.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    let prev_ident = |i: usize| i > 0 && (is_ident(s[i - 1]) || s[i - 1] == b'&');
    while i < s.len() {
        let b = s[i];
        match b {
            b'\'' => {
                if prev_ident(i) {
                    return None;
                }
                i += 1;
                loop {
                    match s.get(i) {
                        None => return None,
                        Some(b'\\') => return None,
                        Some(b'\'') if s.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                out.extend_from_slice(string.as_bytes());
            }
            b'"' => {
                if prev_ident(i) {
                    return None;
                }
                let start = i;
                i += 1;
                loop {
                    match s.get(i) {
                        None => return None,
                        Some(b'"') if s.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                out.extend_from_slice(&s[start..i]);
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                let end = s[i..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .map_or(s.len(), |p| i + p);
                out.extend_from_slice(&s[i..end]);
                i = end;
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let start = i;
                let mut depth = 0usize;
                loop {
                    match (s.get(i), s.get(i + 1)) {
                        (None, _) => return None,
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
                out.extend_from_slice(&s[start..i]);
            }
            b'$' if !prev_ident(i) => {
                // `$1` is a parameter; anything else is dollar quoting.
                if !s.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                let start = i;
                i += 1;
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if s.get(i).is_some_and(|&c| is_ident(c)) {
                    return None;
                }
                out.extend_from_slice(&s[start..i]);
            }
            b'.' if s.get(i + 1).is_some_and(u8::is_ascii_digit) && !prev_ident(i) => {
                return None;
            }
            b'0'..=b'9' if !prev_ident(i) => {
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if s.get(i) == Some(&b'.') {
                    i += 1;
                    while s.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                }
                if matches!(s.get(i), Some(b'e' | b'E')) {
                    i += 1;
                    if matches!(s.get(i), Some(b'+' | b'-')) {
                        i += 1;
                    }
                    if !s.get(i).is_some_and(u8::is_ascii_digit) {
                        return None;
                    }
                    while s.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                }
                // A quote right after a number reads differently after
                // `5.` than after `5` (found by the `frontend` fuzz target:
                // `5.""`), so neither gets a shape.
                if s.get(i)
                    .is_some_and(|&c| is_ident(c) || matches!(c, b'.' | b'"' | b'\''))
                {
                    return None;
                }
                out.extend_from_slice(number.as_bytes());
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was replaced, at character boundaries.
    String::from_utf8(out).ok()
}

/// Most entries kept; past that the cache starts over.
const CAPACITY: usize = 16_384;

/// A bounded map from shape (or exact text) to a value, shared by every
/// connection of a listener.
#[derive(Debug)]
pub struct ShapeCache<V: Clone> {
    map: Mutex<HashMap<String, V>>,
}

impl<V: Clone> Default for ShapeCache<V> {
    fn default() -> Self {
        ShapeCache {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> ShapeCache<V> {
    /// The cached value for `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Remembers `value` for `key`.
    pub fn insert(&self, key: String, value: V) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            shape("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = \0;")
        );
        assert_eq!(
            shape("select * from t1 where a = 'it''s' and b > -1.5e3 and c = $1").as_deref(),
            Some("select * from t1 where a = \0 and b > -\0 and c = $1")
        );
        // A placeholder never fuses with operator characters.
        assert_ne!(shape("SELECT 1 =1- 2"), shape("SELECT 1 =?- 2"));
        assert_eq!(
            shape("SELECT \"x'1\" /* a 'comment' /* nested */ */ -- it's\nFROM t").as_deref(),
            Some("SELECT \"x'1\" /* a 'comment' /* nested */ */ -- it's\nFROM t")
        );
    }

    #[test]
    fn anything_ambiguous_has_no_shape() {
        for sql in [
            r"SELECT '\'; DROP TABLE t; --'",
            "SELECT E'x'",
            "SELECT B'101'",
            "SELECT X'ff'",
            "SELECT U&'d\\0061t'",
            "SELECT U&\"x\"",
            "SELECT $$ ' $$",
            "SELECT $tag$ x $tag$",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT 1 /* unterminated",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1e",
            "SELECT 123abc",
            "SELECT .5",
            "SELECT 1.2.3",
            "SELECT $1a",
            // Found by the fuzzer: `5.` then a quote shaped, `7` then a
            // quote did not.
            "SELECT \"\"5.\"\"( =",
            "SELECT 5'x'",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn identifiers_with_digits_are_kept() {
        assert_eq!(
            shape("SELECT t1.c2, a$1 FROM s3.t1").as_deref(),
            Some("SELECT t1.c2, a$1 FROM s3.t1")
        );
    }
}

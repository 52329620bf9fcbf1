//! What the upstream will read: resource URIs and path arguments in the
//! form an MCP server acts on, so that policy judges, the grant binds and
//! gavel forwards exactly that form. What cannot be normalized without
//! ambiguity is refused.
//!
//! MCP servers on the official TypeScript SDK look resources up by
//! `new URL(uri).href` (WHATWG): dot segments go, `%2e` included, tabs and
//! newlines anywhere are deleted, leading and trailing spaces trimmed. A
//! policy that judged the raw text would be judging something else.
//! [`normalize_uri`] normalizes what RFC 3986 (§6.2.2) declares equivalent
//! (case of scheme and host, percent-encoding of unreserved characters, hex
//! case, dot segments, default ports) and refuses what only WHATWG's error
//! recovery accepts (whitespace, controls, backslashes, encoded `/` or `\`,
//! `..` above the root, `//` inside a path). Its result is checked to be a
//! fixed point of a WHATWG parser (the `url` crate), so the upstream reads
//! it as itself.

use fluent_uri::{Iri, normalize::Normalizer};

/// A resource URI in the form the upstream reads, or why it is refused.
pub fn normalize_uri(raw: &str) -> Result<String, String> {
    // 1. Characters WHATWG strips or rewrites silently (C0/C1 controls, DEL,
    //    tab/LF/CR anywhere, leading/trailing space) or that special schemes
    //    read as '/' (backslash). Refuse rather than trim: no client needs them.
    if let Some(c) = raw
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == '\\' || *c == '\u{feff}')
    {
        return Err(format!("URI contains {c:?}"));
    }
    // 2. Strict RFC 3987 parse (absolute IRI; refuses %zz, lone %, relative refs, "<>{}|^`).
    let iri = Iri::parse(raw).map_err(|e| format!("not an absolute URI: {e}"))?;
    if let Some(auth) = iri.authority() {
        if auth.userinfo().is_some() {
            return Err("userinfo in URI".into());
        }
        if !auth.host().is_ascii() {
            return Err("non-ASCII host".into()); // WHATWG would IDNA-map special hosts
        }
        if let Some(port) = auth.port() {
            let p = port.as_str();
            if p.len() > 1 && p.starts_with('0') {
                return Err("port with leading zero".into()); // WHATWG rewrites 080 -> 80
            }
        }
    }
    // 3. Non-ASCII in path/query/fragment -> UTF-8 percent-encoding (what WHATWG does).
    let uri = iri.to_uri();
    // 4. Escapes that no normalization can make unambiguous.
    let (path, query, fragment) = (
        uri.path().as_str(),
        uri.query().map_or("", |q| q.as_str()),
        uri.fragment().map_or("", |f| f.as_str()),
    );
    check_escapes([path, query, fragment])?;
    for (what, part) in [
        ("path", Some(uri.path().decode().to_bytes())),
        ("query", uri.query().map(|q| q.decode().to_bytes())),
        ("fragment", uri.fragment().map(|f| f.decode().to_bytes())),
    ] {
        if let Some(bytes) = part
            && std::str::from_utf8(&bytes).is_err()
        {
            return Err(format!("{what} is not UTF-8 once decoded"));
        }
    }
    // 5. RFC 3986 §6.2.2 (+ default port): case, escapes, dot segments (incl. %2e).
    let n = Normalizer::new()
        .allow_path_underflow(false)
        .normalize(&uri)
        .map_err(|_| "'..' climbs above the root".to_owned())?;
    let mut n = n.into_string();
    // 6. What normalization leaves ambiguous.
    let (scheme, rest) = n.split_once(':').ok_or("not an absolute URI")?;
    let special = matches!(scheme, "http" | "https" | "ws" | "wss" | "ftp" | "file");
    let normal = fluent_uri::Uri::parse(n.as_str())
        .map_err(|e| format!("its normal form does not parse: {e}"))?;
    // Decoding can make an escape of one (`%25%32%46` is `%252F`).
    check_escapes([
        normal.path().as_str(),
        normal.query().map_or("", |q| q.as_str()),
        normal.fragment().map_or("", |f| f.as_str()),
    ])?;
    let npath = normal.path().as_str().to_owned();
    if npath.is_empty() && special && rest.starts_with("//") {
        // RFC 3986 §6.2.3: http://h == http://h/ ; WHATWG writes the '/'.
        let at = n.find(['?', '#']).unwrap_or(n.len());
        n.insert(at, '/');
    }
    let trimmed = npath.strip_prefix('/').unwrap_or(&npath);
    let segs: Vec<&str> = trimmed.split('/').collect();
    if segs.len() > 1 && segs[..segs.len() - 1].iter().any(|s| s.is_empty()) {
        return Err("empty path segment ('//')".into());
    }
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err("dot segment in a path that is not hierarchical".into());
    }
    // Query and fragment keep their dots under both RFC 3986 and WHATWG; a
    // template variable taken from them can still be joined onto a path.
    let tail = n.find(['?', '#']).map_or("", |at| &n[at..]);
    if tail
        .split(['/', '?', '#', '&', '=', ';', ','])
        .any(|p| p == "." || p == "..")
    {
        return Err("dot segment in query or fragment".into());
    }
    // 7. Fixed point of the upstream's parser: what we forward is what it reads.
    match url::Url::parse(&n) {
        Ok(u) if u.as_str() == n => Ok(n),
        Ok(u) => Err(format!("upstream would read it as {:?}", u.as_str())),
        Err(e) => Err(format!("upstream cannot parse it: {e}")),
    }
}

/// A path argument as a filesystem server resolves it lexically (Node's
/// `path.resolve` of an absolute POSIX path, then NFC, which
/// `@modelcontextprotocol/server-filesystem` matches names by), or why it
/// is refused. Symlinks cannot be seen from the text: policies for
/// filesystem tools should permit directories, not deny sub-directories.
pub fn normalize_fs_path(raw: &str) -> Result<String, String> {
    if let Some(c) = raw.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("path contains {c:?}"));
    }
    if raw != raw.trim() {
        return Err("path has surrounding whitespace".into());
    }
    if !raw.starts_with('/') {
        // '~', '~/x', '', '.', 'a/b', 'C:\x': the server resolves these against
        // $HOME or its own allowed directories, which gavel cannot see.
        return Err("path is not absolute".into());
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            } // path.resolve clamps at '/'
            s => out.push(s),
        }
    }
    // The server matches a missing name to an NFC-equivalent existing one.
    use unicode_normalization::UnicodeNormalization;
    let joined = format!("/{}", out.join("/"));
    Ok(joined.nfc().collect())
}

/// Escapes that no normalization can make unambiguous: a server that
/// decodes a template variable would see a separator, a control or a dot
/// the policy never saw. Checked in path, query and fragment alike:
/// `{+path}` and `{?x}` template variables capture query text too.
fn check_escapes(parts: [&str; 3]) -> Result<(), String> {
    for part in parts {
        for (i, _) in part.match_indices('%') {
            let hex = part
                .get(i + 1..i + 3)
                .ok_or("invalid percent-encoding")?
                .to_ascii_uppercase();
            let byte =
                u8::from_str_radix(&hex, 16).map_err(|_| "invalid percent-encoding".to_owned())?;
            if matches!(byte, b'/' | b'\\') || byte < 0x20 || byte == 0x7f {
                return Err(format!("encoded {:?} in URI", byte as char));
            }
            if byte == b'%' {
                let next = part.get(i + 3..i + 5).map(str::to_ascii_uppercase);
                if matches!(next.as_deref(), Some("2E" | "2F" | "5C")) {
                    return Err("double-encoded '.', '/' or '\\' in URI".into());
                }
            }
        }
    }
    Ok(())
}

/// Argument names that hold filesystem paths, by convention of the MCP
/// filesystem servers (`path`, `paths`, `source`, `destination`, …).
pub(crate) const PATH_ARGUMENTS: &[&str] = &[
    "path",
    "paths",
    "source",
    "destination",
    "file",
    "file_path",
    "filepath",
    "filename",
    "directory",
    "dir",
    "root",
];

/// Normalizes the path-like arguments of a tool call in place (strings,
/// or lists of strings, under a [`PATH_ARGUMENTS`] name) as
/// [`normalize_fs_path`] does: an absolute path, resolved lexically.
/// Anything else is refused, URIs included (`file://../x` is a relative
/// path to a filesystem server, not a URI).
pub(crate) fn normalize_path_arguments(
    args: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let one = |name: &str, v: &mut serde_json::Value| -> Result<(), String> {
        let Some(s) = v.as_str() else { return Ok(()) };
        let normal = normalize_fs_path(s).map_err(|e| format!("argument {name:?}: {e}"))?;
        *v = serde_json::Value::String(normal);
        Ok(())
    };
    for (name, value) in args.iter_mut() {
        if !PATH_ARGUMENTS.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        match value {
            serde_json::Value::Array(items) => {
                for item in items {
                    one(name, item)?;
                }
            }
            other => one(name, other)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_judged_as_the_upstream_reads_them() {
        let ok =
            |raw: &str, want: &str| assert_eq!(normalize_uri(raw).as_deref(), Ok(want), "{raw:?}");
        let refused = |raw: &str| {
            assert!(
                normalize_uri(raw).is_err(),
                "{raw:?} should be refused, got {:?}",
                normalize_uri(raw)
            )
        };
        let doc = "demo://resource/static/document/architecture.md";
        ok(
            "demo://resource/dynamic/text/1",
            "demo://resource/dynamic/text/1",
        );
        ok(
            "demo://resource/dynamic/text/%2e%2e/%2e%2e/static/document/architecture.md",
            doc,
        );
        ok(
            "demo://resource/dynamic/text/%2E%2E/%2E%2E/static/document/architecture.md",
            doc,
        );
        ok(
            "demo://resource/dynamic/text/.%2e/%2E./static/document/architecture.md",
            doc,
        );
        ok(
            "demo://resource/dynamic/text/../../static/document/architecture.md",
            doc,
        );
        ok("demo://resource/static/document/architecture%2emd", doc);
        ok("DEMO://Resource/static/document/architecture.md", doc);
        ok(
            "demo://resource/dynamic/text/%31",
            "demo://resource/dynamic/text/1",
        );
        ok("demo://resource/a?x=%3f", "demo://resource/a?x=%3F");
        ok("https://example.com", "https://example.com/");
        ok("https://example.com:443/a", "https://example.com/a");
        ok("file:///srv/data/../etc/passwd", "file:///srv/etc/passwd");
        for raw in [
            " demo://resource/static/document/architecture.md",
            "\tdemo://resource/static/document/architecture.md",
            "demo://resource/static/document/architecture.md\n",
            "demo://resource/sta\ttic/document/architecture.md",
            "demo://resource/../../x",
            "demo://resource/dynamic/text/..%2f..%2fstatic/document/architecture.md",
            "demo://resource/dynamic/text/..%5c..%5cstatic",
            "demo://resource/dynamic/text/%252e%252e/x",
            "demo://resource/dynamic/text/%00",
            "demo://resource//dynamic//text/1",
            "demo://resource/a/..//x",
            "demo://resource/x%zz",
            "http://user:pw@host/x",
            "https://host\\..\\x",
            "demo:x/../y",
            "demo://resource/x?a=..",
            "relative/path",
            "",
            "demo://resource/dynamic/text/%25%32%46..%25%32%46static",
            "demo://resource/dynamic/text/%25%32%65%25%32%65/x",
        ] {
            refused(raw);
        }
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        for raw in [
            "demo://resource/dynamic/text/%2e%2e/%2e%2e/static/x",
            "DEMO://R/%7e/%41?q=%3f#f",
            "https://EXAMPLE.com:443/./a/b/../c",
        ] {
            let once = normalize_uri(raw).unwrap();
            assert_eq!(normalize_uri(&once).as_deref(), Ok(once.as_str()));
        }
    }

    #[test]
    fn paths_are_resolved_as_the_filesystem_server_does() {
        assert_eq!(
            normalize_fs_path("/srv/data/../etc/passwd").as_deref(),
            Ok("/srv/etc/passwd")
        );
        assert_eq!(
            normalize_fs_path("/srv/data//a/./b/").as_deref(),
            Ok("/srv/data/a/b")
        );
        assert_eq!(normalize_fs_path("/../../etc").as_deref(), Ok("/etc"));
        assert_eq!(
            normalize_fs_path("/srv/cafe\u{301}.txt").as_deref(),
            Ok("/srv/caf\u{e9}.txt")
        );
        for raw in [
            "a.txt",
            "~/x",
            "",
            ".",
            " /srv/x",
            "/srv/x\n",
            "/srv\\..\\x",
            "C:\\x",
        ] {
            assert!(normalize_fs_path(raw).is_err(), "{raw:?}");
        }
        let mut args = serde_json::json!({
            "path": "/srv/data/../secret",
            "paths": ["/a/./b", "/c//d"],
            "content": "../not a path",
        });
        normalize_path_arguments(args.as_object_mut().unwrap()).unwrap();
        assert_eq!(args["path"], "/srv/secret");
        assert_eq!(args["paths"], serde_json::json!(["/a/b", "/c/d"]));
        assert_eq!(args["content"], "../not a path");
        for relative in [
            "notes.txt",
            "file://../secret.txt",
            "gavel://../x",
            "file:///srv/x",
            "~/x",
        ] {
            let mut args = serde_json::json!({ "path": relative });
            assert!(
                normalize_path_arguments(args.as_object_mut().unwrap()).is_err(),
                "{relative}"
            );
        }
    }
}

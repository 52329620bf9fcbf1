-- Browser sign-in state shared by every gateway on the store: sessions,
-- sign-ins in flight at the identity provider, and the key that signs
-- the sign-in form. Keyed by the SHA-256 of the cookie or state value
-- (never the value itself), so whoever reads the database cannot sign in.
CREATE TABLE web_state (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) STRICT;
CREATE INDEX web_state_expiry ON web_state (kind, expires_at);

-- How each channel delivery of each request went, whichever gateway made
-- it (`process`: the delivering process's random id; `seq`: its order
-- there).
CREATE TABLE deliveries (
    request_id TEXT NOT NULL,
    process    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    channel    TEXT NOT NULL,
    event      TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    began_at   INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (request_id, process, seq)
) STRICT;

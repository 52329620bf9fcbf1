-- Approval requests. `body` holds what never changes after creation (the
-- action, the policies and route); the columns hold what queries filter on
-- and what transitions change.
CREATE TABLE requests (
    id               TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending','approved','executed','failed','denied','expired')),
    initiator        TEXT NOT NULL,
    resource         TEXT NOT NULL,
    class            TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    grant_expires_at INTEGER,
    updated_at       INTEGER NOT NULL,
    body             TEXT NOT NULL
) STRICT;
CREATE INDEX requests_live ON requests (fingerprint) WHERE state IN ('pending', 'approved');
-- At most one pending request per fingerprint, however many gateways race.
CREATE UNIQUE INDEX requests_one_pending ON requests (fingerprint) WHERE state = 'pending';
CREATE INDEX requests_by_state ON requests (state, created_at);
CREATE INDEX requests_by_initiator ON requests (initiator, created_at);
CREATE INDEX requests_by_resource ON requests (resource, created_at);

-- One row per reviewer decision; a human counts once per request.
CREATE TABLE reviews (
    request_id TEXT NOT NULL REFERENCES requests (id),
    seq        INTEGER NOT NULL,
    reviewer   TEXT NOT NULL,
    decision   TEXT NOT NULL CHECK (decision IN ('approve','deny')),
    comment    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (request_id, seq),
    UNIQUE (request_id, reviewer)
) STRICT;

-- Agents and the SHA-256 of their tokens (never the tokens).
CREATE TABLE agents (
    name         TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    groups_json  TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER
) STRICT;

-- The audit log: leaf `seq` (0-based) of the RFC 6962 tree, its canonical
-- bytes exactly as hashed, and its leaf hash. Append-only.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY CHECK (seq >= 0),
    time      INTEGER NOT NULL,
    record    BLOB NOT NULL,
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32)
) STRICT;
CREATE INDEX audit_log_by_time ON audit_log (time);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Signed checkpoints (C2SP tlog-checkpoint notes), one per tree size.
CREATE TABLE audit_checkpoints (
    size       INTEGER PRIMARY KEY,
    root       BLOB NOT NULL CHECK (length(root) = 32),
    note       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;

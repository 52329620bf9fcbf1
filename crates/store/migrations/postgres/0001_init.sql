-- The PostgreSQL schema: the same tables, guards and invariants as the
-- SQLite migrations 0001-0007, written at once. Several gateways share it.

-- Approval requests. `body` holds what never changes after creation (the
-- action, the policies and route); the columns hold what queries filter on
-- and what transitions change.
CREATE TABLE requests (
    id               TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending','approved','admitted','executed','failed','denied','expired')),
    initiator        TEXT NOT NULL,
    resource         TEXT NOT NULL,
    class            TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    grant_expires_at BIGINT,
    updated_at       BIGINT NOT NULL,
    body             TEXT NOT NULL
);
CREATE INDEX requests_live ON requests (fingerprint) WHERE state IN ('pending', 'approved');
-- At most one pending request per fingerprint, however many gateways race.
CREATE UNIQUE INDEX requests_one_pending ON requests (fingerprint) WHERE state = 'pending';
CREATE INDEX requests_by_state ON requests (state, created_at);
CREATE INDEX requests_by_initiator ON requests (initiator, created_at);
CREATE INDEX requests_by_resource ON requests (resource, created_at);
-- Short ids (the random tail of the UUID) are looked up by prefix.
CREATE INDEX requests_by_short_id ON requests (substr(id, 29) text_pattern_ops);
CREATE INDEX requests_by_id_prefix ON requests (id text_pattern_ops);

-- One row per reviewer decision; a human counts once per request.
CREATE TABLE reviews (
    request_id TEXT NOT NULL REFERENCES requests (id),
    seq        BIGINT NOT NULL,
    reviewer   TEXT NOT NULL,
    decision   TEXT NOT NULL CHECK (decision IN ('approve','deny')),
    comment    TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (request_id, seq),
    UNIQUE (request_id, reviewer)
);

-- Agents and the SHA-256 of their tokens (never the tokens).
CREATE TABLE agents (
    name         TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    groups_json  TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);

-- The audit log: leaf `seq` (0-based) of the RFC 6962 tree, its canonical
-- bytes exactly as hashed, and its leaf hash. Append-only.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY CHECK (seq >= 0),
    time      BIGINT NOT NULL,
    record    BYTEA NOT NULL,
    leaf_hash BYTEA NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE INDEX audit_log_by_time ON audit_log (time);

-- The next free audit position. Every append takes it with
-- `UPDATE … RETURNING` in the appending transaction: the row lock hands
-- positions out one transaction at a time across every gateway, so
-- positions are gap-free (a rolled-back append gives its positions back)
-- and commit in order (nobody reads position n+1 before n is visible).
CREATE TABLE audit_head (
    one  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    next BIGINT NOT NULL CHECK (next >= 0)
);
INSERT INTO audit_head (one, next) VALUES (TRUE, 0);

-- Signed checkpoints (C2SP tlog-checkpoint notes), one per tree size.
CREATE TABLE audit_checkpoints (
    size       BIGINT PRIMARY KEY,
    root       BYTEA NOT NULL CHECK (length(root) = 32),
    note       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE FUNCTION gavel_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION gavel_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION gavel_append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION gavel_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION gavel_append_only();

-- The message a chat channel posted for a request (Slack `ts`, Teams
-- activity id), so its buttons keep working on every gateway.
CREATE TABLE channel_messages (
    request_id TEXT NOT NULL REFERENCES requests (id),
    channel    TEXT NOT NULL,
    reference  TEXT NOT NULL,
    PRIMARY KEY (request_id, channel)
);

-- Admissions of actions that their initiator performs itself (the REST
-- API's allow): the outcome is reported once, by that initiator.
CREATE TABLE admissions (
    id          TEXT PRIMARY KEY,
    initiator   TEXT NOT NULL,
    admission   TEXT NOT NULL,
    admitted_at BIGINT NOT NULL,
    finished_at BIGINT
);

-- One-time keys (a chat platform's request signatures): each is good
-- once across every gateway on this store, and forgotten when it expires.
CREATE TABLE one_time_keys (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX one_time_keys_expiry ON one_time_keys (expires_at);

-- Leases: which gateway does a job that exactly one may do at a time
-- (signing checkpoints), until when.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Browser sign-in state shared by every gateway: sessions, sign-ins in
-- flight at the identity provider, and the key that signs the sign-in
-- form. Keyed by the SHA-256 of the cookie or state value (never the
-- value itself), so whoever reads the database cannot sign in.
CREATE TABLE web_state (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX web_state_expiry ON web_state (kind, expires_at);

-- How each channel delivery of each request went, whichever gateway made
-- it (`process`: the delivering process's random id; `seq`: its order
-- there).
CREATE TABLE deliveries (
    request_id TEXT NOT NULL,
    process    TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    channel    TEXT NOT NULL,
    event      TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   BIGINT NOT NULL,
    last_error TEXT,
    began_at   BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (request_id, process, seq)
);

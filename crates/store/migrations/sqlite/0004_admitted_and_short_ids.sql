-- `admitted`: a grant spent by an initiator that performs the action
-- itself (the REST API) and has not reported how it went; its report moves
-- the request to `executed` or `failed`. SQLite cannot change a CHECK in
-- place, so the table is rebuilt (the documented procedure; references
-- from `reviews` and `channel_messages` are checked at commit).
PRAGMA defer_foreign_keys = ON;

CREATE TABLE requests_new (
    id               TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending','approved','admitted','executed','failed','denied','expired')),
    initiator        TEXT NOT NULL,
    resource         TEXT NOT NULL,
    class            TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    grant_expires_at INTEGER,
    updated_at       INTEGER NOT NULL,
    body             TEXT NOT NULL
) STRICT;
INSERT INTO requests_new SELECT id, fingerprint, state, initiator, resource, class,
    created_at, expires_at, grant_expires_at, updated_at, body FROM requests;
DROP TABLE requests;
ALTER TABLE requests_new RENAME TO requests;

CREATE INDEX requests_live ON requests (fingerprint) WHERE state IN ('pending', 'approved');
CREATE UNIQUE INDEX requests_one_pending ON requests (fingerprint) WHERE state = 'pending';
CREATE INDEX requests_by_state ON requests (state, created_at);
CREATE INDEX requests_by_initiator ON requests (initiator, created_at);
CREATE INDEX requests_by_resource ON requests (resource, created_at);
-- Short ids (the random tail of the UUID) are looked up by prefix.
CREATE INDEX requests_by_short_id ON requests (substr(id, 29));

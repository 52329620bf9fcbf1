-- One-time keys (a chat platform's request signatures): each is good
-- once across every gateway on this store, and forgotten when it expires.
CREATE TABLE one_time_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX one_time_keys_expiry ON one_time_keys (expires_at);

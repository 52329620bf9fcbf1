-- Leases: which gateway does a job that exactly one may do at a time
-- (signing checkpoints), until when.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- The message a chat channel posted for a request (Slack `ts`, Teams
-- activity id), so its buttons keep working, and later states update it,
-- after a restart.
CREATE TABLE channel_messages (
    request_id TEXT NOT NULL REFERENCES requests (id),
    channel    TEXT NOT NULL,
    reference  TEXT NOT NULL,
    PRIMARY KEY (request_id, channel)
) STRICT;

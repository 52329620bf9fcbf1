-- Admissions of actions that their initiator performs itself (the REST
-- API's allow): the outcome is reported once, by that initiator.
CREATE TABLE admissions (
    id          TEXT PRIMARY KEY,
    initiator   TEXT NOT NULL,
    admission   TEXT NOT NULL,       -- the ParkedAdmission as JSON
    admitted_at INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;

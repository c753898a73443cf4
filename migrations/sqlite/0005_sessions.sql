-- Finance page sign-ins. Only a SHA-256 of the session id is kept, so a copy of
-- the database does not open the page. A session grants reads only.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    client_addr TEXT
);
CREATE INDEX sessions_expires ON sessions (expires_at);

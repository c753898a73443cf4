-- notimeter schema, SQLite. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE channels (
    user_id     TEXT    NOT NULL,
    channel_id  TEXT    NOT NULL,
    integration TEXT    NOT NULL,
    enabled     INTEGER NOT NULL,
    spec        TEXT    NOT NULL, -- the channel body as JSON, secrets included
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, channel_id)
);

CREATE TABLE dedupe (
    key        TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX dedupe_expires ON dedupe (expires_at);

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL,
    channel_id  TEXT    NOT NULL,
    integration TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    alert_count INTEGER NOT NULL,
    alertnames  TEXT    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'pending', -- pending | delivered | failed
    created_at  INTEGER NOT NULL,
    due_at      INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER,
    last_reason TEXT,
    last_error  TEXT,
    final_at    INTEGER,
    period_id   TEXT
);
CREATE INDEX messages_due ON messages (due_at) WHERE state = 'pending';
CREATE INDEX messages_period ON messages (period_id, final_at);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  INTEGER NOT NULL REFERENCES messages (id),
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    result      TEXT    NOT NULL, -- success, or a failure reason
    status_code INTEGER,
    error       TEXT
);
CREATE INDEX attempts_message ON attempts (message_id);

CREATE TABLE undeliverable (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at INTEGER NOT NULL,
    user_id     TEXT    NOT NULL,
    raw_user_id TEXT,
    receiver    TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    alert       TEXT    NOT NULL
);

CREATE TABLE periods (
    id       TEXT    PRIMARY KEY,
    user_id  TEXT,             -- set for a user's settled statement
    start_at INTEGER NOT NULL,
    end_at   INTEGER            -- NULL while open
);
-- At most one open billing period.
CREATE UNIQUE INDEX periods_one_open ON periods ((COALESCE(user_id, ''))) WHERE end_at IS NULL;

CREATE TABLE usage (
    period_id   TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    integration TEXT    NOT NULL,
    delivered   INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (period_id, user_id, integration)
);

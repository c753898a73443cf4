-- Reconciliation with Alertmanager (see src/reconcile.rs). One row says since
-- when, and against which Alertmanagers, notimeter counts: `received` is the
-- webhook requests notimeter received since then, added to by every replica.
CREATE TABLE reconcile (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    urls      TEXT NOT NULL,
    since     BIGINT NOT NULL,
    received  BIGINT NOT NULL
);

-- One row per Alertmanager: its webhook requests (and failed ones) since the
-- count began, and the raw counters of its last reading, to take the next
-- reading's increase from (`start_time`: the process that counted them, so
-- that a restart, which resets them, is told from a stale reading).
CREATE TABLE reconcile_alertmanagers (
    url            TEXT PRIMARY KEY,
    start_time     BIGINT NOT NULL,
    last_requests  BIGINT NOT NULL,
    last_failed    BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    failed         BIGINT NOT NULL,
    scraped_at     BIGINT NOT NULL
);

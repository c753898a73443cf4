-- Every change to a channel (saved or deleted), in commit order: each process
-- keeps its routing index in memory and applies the changes logged after the
-- last one it saw (another replica's, the CLI's, the Consul import's).
-- Old entries are pruned; a process that fell behind them reloads everything.
CREATE TABLE channel_log (
    version    INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    changed_at INTEGER NOT NULL
);

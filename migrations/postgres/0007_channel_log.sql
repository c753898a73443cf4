-- Every change to a channel (saved or deleted), in commit order: each process
-- keeps its routing index in memory and applies the changes logged after the
-- last one it saw (another replica's, the CLI's, the Consul import's).
-- Writers of channels take one advisory lock first, so versions are assigned
-- in commit order and a reader never skips one that commits late.
-- Old entries are pruned; a process that fell behind them reloads everything.
CREATE TABLE channel_log (
    version    BIGSERIAL PRIMARY KEY,
    user_id    TEXT      NOT NULL,
    channel_id TEXT      NOT NULL,
    changed_at BIGINT    NOT NULL
);

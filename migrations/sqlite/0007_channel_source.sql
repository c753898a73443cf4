-- Where a channel comes from: 'api' (the admin API) or 'consul' (mirrored
-- from Consul KV by the watch or `import consul-export`, which own it: the
-- API does not change it, and a sync deletes it when its keys are gone).
-- Channels saved before this migration read 'api', whatever made them.
ALTER TABLE channels ADD COLUMN source TEXT NOT NULL DEFAULT 'api';

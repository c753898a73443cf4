-- Delivery order per (channel, Alertmanager groupKey): a message waits while
-- an older one of its group is pending, and an older one still waiting when a
-- newer one is queued becomes 'superseded' (final, never sent, not billed).
ALTER TABLE messages ADD COLUMN group_key TEXT NOT NULL DEFAULT '';
CREATE INDEX messages_group_pending ON messages (user_id, channel_id, group_key, id)
    WHERE state = 'pending';

-- Closed periods and statements carry what they were billed with.
ALTER TABLE periods ADD COLUMN closed_at INTEGER;
ALTER TABLE periods ADD COLUMN currency TEXT;
ALTER TABLE periods ADD COLUMN bill_failed INTEGER;
ALTER TABLE periods ADD COLUMN report_sha256 TEXT;
-- The unit price in force when the row's period closed (NULL while open).
ALTER TABLE usage ADD COLUMN unit_price TEXT;
CREATE INDEX messages_final ON messages (final_at);
CREATE INDEX periods_user ON periods (user_id, end_at);

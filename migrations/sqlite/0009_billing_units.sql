-- Billing units (DESIGN.md "Billing units"): an SMS bills its segments.
-- The segments of a final SMS (its last attempt's; NULL for other integrations).
ALTER TABLE messages ADD COLUMN segments INTEGER;
-- Per usage row, the segments of its delivered and failed SMS.
ALTER TABLE usage ADD COLUMN delivered_segments INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN failed_segments INTEGER NOT NULL DEFAULT 0;
-- What an SMS bills ('segment' or 'message'), frozen at close. NULL for periods
-- closed before units existed: their reports keep the columns they were
-- written with, should one ever be written again.
ALTER TABLE periods ADD COLUMN sms_unit TEXT;

-- SMS already final in periods still open bill their segments too: those of
-- their last successful attempt (a column since 0002), else one.
UPDATE messages SET segments = COALESCE(
    (SELECT a.segments FROM attempts a
      WHERE a.message_id = messages.id AND a.result = 'success' AND a.segments IS NOT NULL
      ORDER BY a.attempt DESC LIMIT 1),
    1)
WHERE integration = 'sms' AND state IN ('delivered', 'failed')
  AND period_id IN (SELECT id FROM periods WHERE end_at IS NULL);
UPDATE usage SET
    delivered_segments = (SELECT COALESCE(SUM(m.segments), 0) FROM messages m
        WHERE m.period_id = usage.period_id AND m.user_id = usage.user_id
          AND m.integration = usage.integration AND m.state = 'delivered'),
    failed_segments = (SELECT COALESCE(SUM(m.segments), 0) FROM messages m
        WHERE m.period_id = usage.period_id AND m.user_id = usage.user_id
          AND m.integration = usage.integration AND m.state = 'failed')
WHERE integration = 'sms' AND period_id IN (SELECT id FROM periods WHERE end_at IS NULL);

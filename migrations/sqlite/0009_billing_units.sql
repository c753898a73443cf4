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

-- A message deferred by per-destination pacing holds a reserved send slot:
-- when it comes due it is sent without waiting again.
ALTER TABLE messages ADD COLUMN paced INTEGER NOT NULL DEFAULT 0;
-- SMS segments an attempt used (NULL for other integrations).
ALTER TABLE attempts ADD COLUMN segments INTEGER;

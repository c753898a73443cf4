-- Booleans as booleans: flags were BIGINT 0/1 while the store ran on sqlx's
-- Any driver; now each backend reads its own types. (SQLite keeps its
-- INTEGER columns: 0/1 is how SQLite stores a boolean.)
ALTER TABLE channels ALTER COLUMN enabled TYPE BOOLEAN USING enabled <> 0;
ALTER TABLE messages
    ALTER COLUMN paced DROP DEFAULT,
    ALTER COLUMN paced TYPE BOOLEAN USING paced <> 0,
    ALTER COLUMN paced SET DEFAULT FALSE;
ALTER TABLE periods ALTER COLUMN bill_failed TYPE BOOLEAN USING bill_failed <> 0;

-- The delivery log (GET /v1/users/{user_id}/messages): a user's messages,
-- newest first, paged by id.
CREATE INDEX messages_user ON messages (user_id, id);
-- A failed message redelivered: the new message's id (a message is
-- redelivered at most once; the new one can be, if it fails in turn).
ALTER TABLE messages ADD COLUMN redelivered_as INTEGER;

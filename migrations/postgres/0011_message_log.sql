-- The delivery log (GET /v1/users/{user_id}/messages): a user's messages,
-- newest first, paged by id.
CREATE INDEX messages_user ON messages (user_id, id);

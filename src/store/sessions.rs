//! Finance page sessions: one row per sign-in, keyed by the SHA-256 of the
//! session id (the id itself is only ever in the browser's cookie). Every
//! statement here is a single statement outside an explicit transaction, so a
//! request dropped at any await leaves nothing half done.

use super::{on, NewSession, Result, Store};
use crate::clock::Millis;

/// Expired sessions deleted per sign-in: bounded work per request, and still
/// faster than sign-ins can add sessions.
const PRUNE_BATCH: i64 = 100;

impl Store {
    pub async fn create_session(&self, s: &NewSession) -> Result<()> {
        on!(self.writer(), |c| {
            sqlx::query(
                "INSERT INTO sessions (id_hash, role, created_at, expires_at, client_addr) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&s.id_hash)
            .bind(&s.role)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(&s.client_addr)
            .execute(c)
            .await?;
        });
        Ok(())
    }

    /// The role of the session with this id hash, if it exists and has not expired at `now`.
    pub async fn session_role(&self, id_hash: &str, now: Millis) -> Result<Option<String>> {
        Ok(on!(self.reader(), |c| sqlx::query_scalar(
            "SELECT role FROM sessions WHERE id_hash = $1 AND expires_at > $2"
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(c)
        .await?))
    }

    /// Revokes a session; true when it existed.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let deleted = on!(self.writer(), |c| sqlx::query(
            "DELETE FROM sessions WHERE id_hash = $1"
        )
        .bind(id_hash)
        .execute(c)
        .await?
        .rows_affected());
        Ok(deleted > 0)
    }

    /// Deletes up to [`PRUNE_BATCH`] sessions expired at `now`; returns how many.
    pub async fn prune_sessions(&self, now: Millis) -> Result<u64> {
        Ok(on!(self.writer(), |c| sqlx::query(
            "DELETE FROM sessions WHERE id_hash IN \
             (SELECT id_hash FROM sessions WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(PRUNE_BATCH)
        .execute(c)
        .await?
        .rows_affected()))
    }
}

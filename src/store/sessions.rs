//! Finance page sessions: one row per sign-in, keyed by the SHA-256 of the
//! session id (the id itself is only ever in the browser's cookie). Every
//! statement here is a single statement outside an explicit transaction, so a
//! request dropped at any await leaves nothing half done.

use sqlx::Row;

use super::{Result, Store};
use crate::clock::Millis;

/// Expired sessions deleted per sign-in: bounded work per request, and still
/// faster than sign-ins can add sessions.
const PRUNE_BATCH: i64 = 100;

#[derive(Clone, Debug)]
pub struct NewSession {
    /// Hex SHA-256 of the session id.
    pub id_hash: String,
    /// The role the session grants, for reads only.
    pub role: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub client_addr: Option<String>,
}

impl Store {
    pub async fn create_session(&self, s: &NewSession) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, role, created_at, expires_at, client_addr) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id_hash)
        .bind(&s.role)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(&s.client_addr)
        .execute(self.backend.writer())
        .await?;
        Ok(())
    }

    /// The role of the session with this id hash, if it exists and has not expired at `now`.
    pub async fn session_role(&self, id_hash: &str, now: Millis) -> Result<Option<String>> {
        let row = sqlx::query("SELECT role FROM sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash)
            .bind(now)
            .fetch_optional(self.backend.reader())
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("role")?),
            None => None,
        })
    }

    /// Revokes a session; true when it existed.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(self.backend.writer())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes up to [`PRUNE_BATCH`] sessions expired at `now`; returns how many.
    pub async fn prune_sessions(&self, now: Millis) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE id_hash IN \
             (SELECT id_hash FROM sessions WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(PRUNE_BATCH)
        .execute(self.backend.writer())
        .await?;
        Ok(done.rows_affected())
    }
}

//! PostgreSQL: for several replicas sharing one database. Claims use
//! `FOR UPDATE SKIP LOCKED`, so no two replicas ever hold the same message.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

use super::{Backend, Result};

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

pub struct Postgres {
    pool: AnyPool,
}

impl Postgres {
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn writer(&self) -> &AnyPool {
        &self.pool
    }
    fn reader(&self) -> &AnyPool {
        &self.pool
    }
    async fn migrate(&self) -> Result<()> {
        MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }
    fn begin_write(&self) -> Option<&'static str> {
        None
    }
    fn lock_open_period_sql(&self, exclusive: bool) -> &'static str {
        if exclusive {
            "SELECT id, start_at FROM periods WHERE end_at IS NULL AND user_id IS NULL FOR UPDATE"
        } else {
            "SELECT id, start_at FROM periods WHERE end_at IS NULL AND user_id IS NULL FOR SHARE"
        }
    }
    fn lock_group_sql(&self) -> Option<&'static str> {
        Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
    }
    fn read_only_sql(&self) -> Option<&'static str> {
        Some(
            "SELECT (pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on') \
             AS read_only",
        )
    }
    fn claim_sql(&self) -> &'static str {
        "UPDATE messages SET lease_owner = $1, lease_until = $2 \
         WHERE id IN (SELECT m.id FROM messages m \
                      WHERE m.state = 'pending' AND m.due_at <= $3 \
                        AND (m.lease_until IS NULL OR m.lease_until <= $3) \
                        AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.user_id = m.user_id \
                          AND o.channel_id = m.channel_id AND o.group_key = m.group_key \
                          AND o.state = 'pending' AND o.id < m.id AND m.group_key <> '') \
                      ORDER BY m.due_at LIMIT $4 FOR UPDATE OF m SKIP LOCKED) \
         RETURNING id, user_id, channel_id, integration, payload, created_at, attempts, paced"
    }
}

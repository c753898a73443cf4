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
        super::claim_sql!("FOR UPDATE OF m SKIP LOCKED")
    }
}

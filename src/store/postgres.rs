//! PostgreSQL: for several replicas sharing one database. Claims use
//! `FOR UPDATE SKIP LOCKED`, so no two replicas ever hold the same message;
//! the open period is row-locked (shared to record outcomes, exclusive to
//! close and settle), and a (channel, group) takes an advisory lock.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use super::{ledger, outbox, Dialect, Result};

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

impl Dialect for Postgres {
    const CLAIM: &'static str = outbox::claim_sql!("FOR UPDATE OF m SKIP LOCKED");
    const OPEN_PERIOD_SHARED: &'static str = ledger::open_period_sql!("FOR SHARE");
    const OPEN_PERIOD_EXCLUSIVE: &'static str = ledger::open_period_sql!("FOR UPDATE");
    const LOCK_GROUPS: Option<&'static str> = Some(
        "SELECT pg_advisory_xact_lock(h) FROM \
           (SELECT DISTINCT hashtextextended(k, 0) AS h \
            FROM jsonb_array_elements_text($1::jsonb) AS k ORDER BY h) AS locks",
    );
    const READ_ONLY: Option<&'static str> =
        Some("SELECT (pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on')");
    const REFRESH_STATS: Option<&'static str> = Some("ANALYZE messages");
    const POSITIONAL: bool = false;
}

pub(super) async fn connect(url: &str) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
}

pub(super) async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATIONS.run(pool).await?;
    Ok(())
}

//! SQLite: the embedded default. WAL journal with `synchronous = FULL` (a
//! commit is on disk before it returns, so an acknowledged payload survives
//! a power loss, not only a crash; group commit makes that affordable), one
//! writer connection (SQLite serialises writers anyway; one connection
//! avoids busy errors), several readers. Write transactions begin with `BEGIN IMMEDIATE`, and one writer
//! makes the period and group locks unnecessary.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{ledger, outbox, Dialect, Result};

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

impl Dialect for Sqlite {
    const CLAIM: &'static str = outbox::claim_sql!("");
    const OPEN_PERIOD_SHARED: &'static str = ledger::open_period_sql!("");
    const OPEN_PERIOD_EXCLUSIVE: &'static str = ledger::open_period_sql!("");
    const LOCK_GROUPS: Option<&'static str> = None;
    const READ_ONLY: Option<&'static str> = None;
    const REFRESH_STATS: Option<&'static str> = None;
    const POSITIONAL: bool = true;
}

#[derive(Clone, Debug)]
pub(super) struct Pools {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
}

/// `sqlite://notimeter.db` → the same URL asking SQLite to create the file.
fn with_create(url: &str) -> String {
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

impl Pools {
    pub(super) async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(&with_create(url))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // Statement journals (the multi-row statements' undo within a
            // transaction) in memory, not in temporary files.
            .pragma("temp_store", "memory")
            // An 8 MiB page cache (the default is 2 MiB): the outbox's
            // working set under a backlog, read from memory, not the OS.
            // 16 MiB delivered a backlog no faster here and held 6-8 MB
            // more at peak.
            .pragma("cache_size", "-8192");
        let pool = |max, options: &SqliteConnectOptions| {
            SqlitePoolOptions::new()
                .max_connections(max)
                // A connection to a local file cannot go stale: no ping
                // (a round trip to SQLite's thread) before each use.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
        };
        // Readers keep SQLite's default page cache (2 MiB): they read
        // little besides the whole channel table once, at start, which a
        // large cache would keep in memory for nothing.
        let reader_options = options.clone().pragma("cache_size", "-2048");
        Ok(Self {
            writer: pool(1, &options).await?,
            reader: pool(4, &reader_options).await?,
        })
    }

    pub(super) async fn migrate(&self) -> Result<()> {
        MIGRATIONS.run(&self.writer).await?;
        Ok(())
    }

    /// `BEGIN IMMEDIATE`: a second process sharing the file waits for the
    /// write lock instead of failing to upgrade a read.
    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with(BEGIN_WRITE).await?)
    }
}

/// How a write transaction begins: see [`Pools::begin_write`].
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// [`Pools::begin_write`] on a writer connection held across transactions.
pub(super) async fn begin_write_on(conn: &mut SqliteConnection) -> Result<Transaction<'_, Sqlite>> {
    Ok(Transaction::begin(conn, Some(BEGIN_WRITE.into())).await?)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn readers_keep_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("n.db").display());
        let pools = super::Pools::connect(&url).await.unwrap();
        let size = |pool| async move {
            sqlx::query_scalar::<_, i64>("PRAGMA cache_size")
                .fetch_one(pool)
                .await
                .unwrap()
        };
        assert_eq!(size(&pools.writer).await, -8192);
        assert_eq!(size(&pools.reader).await, -2048);
    }

    #[test]
    fn create_mode_is_added_once() {
        assert_eq!(
            super::with_create("sqlite://a.db"),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            super::with_create("sqlite://a.db?x=1"),
            "sqlite://a.db?x=1&mode=rwc"
        );
        assert_eq!(
            super::with_create("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
    }
}

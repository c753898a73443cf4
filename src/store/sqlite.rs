//! SQLite: the embedded default. WAL journal, one writer connection (SQLite
//! serialises writers anyway; one connection avoids busy errors), several readers.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use super::{Backend, Result};

static MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

pub struct Sqlite {
    writer: AnyPool,
    reader: AnyPool,
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

fn options(max: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        })
}

impl Sqlite {
    pub async fn connect(url: &str) -> Result<Self> {
        let url = with_create(url);
        let writer = options(1).connect(&url).await?;
        let reader = options(4).connect(&url).await?;
        Ok(Self { writer, reader })
    }
}

#[async_trait]
impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    fn writer(&self) -> &AnyPool {
        &self.writer
    }
    fn reader(&self) -> &AnyPool {
        &self.reader
    }
    async fn migrate(&self) -> Result<()> {
        MIGRATIONS.run(&self.writer).await?;
        Ok(())
    }
    fn begin_write(&self) -> Option<&'static str> {
        Some("BEGIN IMMEDIATE")
    }
    fn lock_open_period_sql(&self, _exclusive: bool) -> &'static str {
        "SELECT id, start_at FROM periods WHERE end_at IS NULL AND user_id IS NULL"
    }
    fn lock_group_sql(&self) -> Option<&'static str> {
        None
    }
    fn read_only_sql(&self) -> Option<&'static str> {
        None
    }
    fn claim_sql(&self) -> &'static str {
        super::claim_sql!("")
    }
}

#[cfg(test)]
mod tests {
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

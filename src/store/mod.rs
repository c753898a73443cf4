//! Persistence. One [`Store`] runs the SQL that both databases share; a
//! [`Backend`] (SQLite in `sqlite.rs`, PostgreSQL in `postgres.rs`) supplies
//! what differs: connecting, its own migrations, and how due messages are claimed.
//! The backend is chosen by the URL scheme.
//!
//! Times are stored as milliseconds since the Unix epoch, so the same statements
//! and types serve both databases.

mod ledger;
mod postgres;
mod sessions;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::AnyPool;

use crate::clock::Millis;

pub use sessions::NewSession;
pub use sql::Store;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store operation was interrupted: {0}")]
    Interrupted(String),
    #[error("the database takes no writes (a standby, or read-only)")]
    ReadOnly,
    #[error("the store did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What differs between the databases.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Pool for writes (SQLite: a single connection, so writers never contend).
    fn writer(&self) -> &AnyPool;
    /// Pool for reads (SQLite: several connections reading the WAL concurrently).
    fn reader(&self) -> &AnyPool;
    async fn migrate(&self) -> Result<()>;
    /// `UPDATE … RETURNING` that leases up to `$4` due messages to `$1` until `$2`
    /// (`$3` is now), none while an older message of its (channel, group) is
    /// still pending: a group is delivered in the order it was accepted. PostgreSQL adds `FOR UPDATE SKIP LOCKED` so replicas never
    /// claim the same row.
    fn claim_sql(&self) -> &'static str;
    /// How a write transaction starts (SQLite: `BEGIN IMMEDIATE`, so a second
    /// process sharing the file waits instead of failing to upgrade a read).
    fn begin_write(&self) -> Option<&'static str>;
    /// Selects the open period's `id, start_at`, locked: shared by transactions
    /// that record outcomes, exclusive for close and settle, so that no outcome
    /// straddles a close. (SQLite's single writer serialises them anyway.)
    fn lock_open_period_sql(&self, exclusive: bool) -> &'static str;
    /// Takes a transaction-scoped lock on one (channel, group), `$1` being its
    /// key, so that enqueues and recorded attempts of a group are serialised:
    /// ids follow commit order and no supersession is missed. None where
    /// write transactions are serialised anyway (SQLite).
    fn lock_group_sql(&self) -> Option<&'static str>;
    /// A query answering one boolean column `read_only`: whether a write
    /// would be refused (a standby, a read-only database). None where taking
    /// the write lock proves it (SQLite's `BEGIN IMMEDIATE`).
    fn read_only_sql(&self) -> Option<&'static str>;
}

/// Waits at most `limit` for a store operation: a request answers 503 (and
/// Alertmanager retries) instead of waiting on a stalled or locked store. A
/// write given up on this way still runs to its end (see `Store::detached`);
/// a retry of it is then caught by dedupe.
pub async fn within<T>(
    limit: std::time::Duration,
    op: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, op)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

/// The claim statement both backends run, with the row-locking clause a
/// backend adds to its inner select (PostgreSQL: `FOR UPDATE OF m SKIP LOCKED`).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE messages SET lease_owner = $1, lease_until = $2 \
             WHERE id IN (SELECT m.id FROM messages m \
                          WHERE m.state = 'pending' AND m.due_at <= $3 \
                            AND (m.lease_until IS NULL OR m.lease_until <= $3) \
                            AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.user_id = m.user_id \
                              AND o.channel_id = m.channel_id AND o.group_key = m.group_key \
                              AND o.state = 'pending' AND o.id < m.id AND m.group_key <> '') \
                          ORDER BY m.due_at LIMIT $4 ",
            $lock,
            ") RETURNING id, user_id, channel_id, integration, payload, created_at, attempts, paced"
        )
    };
}
use claim_sql;

/// Opens (creating it if needed) the database named by `url`.
pub async fn connect(url: &str) -> Result<Arc<Store>> {
    sqlx::any::install_default_drivers();
    let backend: Arc<dyn Backend> = if url.starts_with("sqlite:") {
        Arc::new(sqlite::Sqlite::connect(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(postgres::Postgres::connect(url).await?)
    } else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    Ok(Arc::new(Store::new(backend)))
}

/// A channel as stored: the body the admin API took (secrets included).
#[derive(Clone, Debug)]
pub struct ChannelRecord {
    pub user_id: String,
    pub channel_id: String,
    pub integration: String,
    pub enabled: bool,
    pub spec: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub user_id: String,
    pub channel_id: String,
    pub integration: String,
    /// Alertmanager's groupKey: messages of one (channel, group) are
    /// delivered in order, and a newer one supersedes an older one still
    /// waiting. Empty: no group, no ordering.
    pub group_key: String,
    pub payload: String,
    pub alert_count: i64,
    pub alertnames: String,
}

/// Alerts that could not be turned into a message; kept, never dropped silently.
#[derive(Clone, Debug)]
pub struct Undeliverable {
    pub user_id: String,
    pub raw_user_id: Option<String>,
    pub receiver: String,
    pub reason: &'static str,
    pub alert: String,
}

#[derive(Clone, Debug)]
pub struct IngestBatch {
    pub dedupe_key: String,
    pub now: Millis,
    pub dedupe_expires_at: Millis,
    pub messages: Vec<NewMessage>,
    pub undeliverable: Vec<Undeliverable>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored; older messages of the same (channel, group) that were still
    /// waiting became final as superseded.
    Accepted {
        superseded: Vec<Superseded>,
    },
    Duplicate,
}

/// A message that a newer one of its (channel, group) replaced before it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superseded {
    pub message_id: i64,
    pub user_id: String,
    pub integration: String,
}

/// What became of a recorded attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored as the attempt said.
    Applied,
    /// It would have waited (a retry, a hold, pacing), but a newer message of
    /// its (channel, group) is queued: final as superseded instead.
    Superseded,
    /// The lease was lost (another worker holds the message now): nothing stored.
    LeaseLost,
}

#[derive(Clone, Debug)]
pub struct ClaimedMessage {
    pub id: i64,
    pub user_id: String,
    pub channel_id: String,
    pub integration: String,
    pub payload: String,
    pub created_at: Millis,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Deferred by pacing into a reserved slot: send now, without waiting again.
    pub paced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
    Retry {
        due_at: Millis,
    },
    /// Not sent yet, and not an attempt: back to the outbox until `due_at`.
    /// `paced`: pacing reserved that slot for it, so it sends without waiting again.
    Defer {
        due_at: Millis,
        paced: bool,
    },
}

/// One finished attempt and what it means for its message.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub message_id: i64,
    pub user_id: String,
    pub integration: String,
    pub attempt: i64,
    pub started_at: Millis,
    pub duration_ms: i64,
    /// `success`, or the failure reason.
    pub result: String,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    /// SMS segments used, where the integration counts them.
    pub segments: Option<i64>,
    /// False when nothing was sent (a plan limit refused it, or pacing
    /// deferred it): no attempt row is stored and no attempt counted.
    pub attempted: bool,
    pub outcome: Outcome,
    pub finished_at: Millis,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Period {
    pub id: String,
    /// Set for a user's settled statement.
    pub user_id: Option<String>,
    pub start_at: Millis,
    /// None while open.
    pub end_at: Option<Millis>,
    pub closed_at: Option<Millis>,
    /// Frozen at close.
    pub currency: Option<String>,
    pub bill_failed: Option<bool>,
    pub report_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub user_id: String,
    pub integration: String,
    pub delivered: i64,
    pub failed: i64,
    /// The unit price frozen at close; None while the period is open.
    pub unit_price: Option<String>,
}

/// One message of a period, for the itemized export.
#[derive(Clone, Debug)]
pub struct ItemRow {
    pub message_id: i64,
    pub final_at: Millis,
    pub user_id: String,
    pub integration: String,
    pub channel_id: String,
    pub alertnames: String,
    pub outcome: String,
    pub attempts: i64,
    pub last_reason: Option<String>,
}

/// Prices to freeze into a closing period's rows.
#[derive(Clone, Debug)]
pub struct Freeze {
    pub currency: String,
    pub bill_failed: bool,
    /// (integration, unit price) for every integration.
    pub prices: Vec<(String, String)>,
    /// (user_id, integration, unit price) overrides.
    pub user_prices: Vec<(String, String, String)>,
}

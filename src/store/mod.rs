//! Persistence on SQLite (`sqlite.rs`) or PostgreSQL (`postgres.rs`), chosen
//! by the URL scheme, on each database's own pools and types.
//!
//! Every statement is written once, in the file of its concern (`channels.rs`,
//! `outbox.rs`, `ledger.rs`, `sessions.rs`), and runs on either database
//! through [`on!`]: the statement is expanded once per backend, so each copy
//! is type-checked against that backend's types. What differs between the
//! two (connecting, migrations, how a write transaction begins, the claim's
//! row locking, the period and group locks, the read-only check) lives in
//! `sqlite.rs` and `postgres.rs`.
//!
//! Times are stored as milliseconds since the Unix epoch; booleans as
//! booleans (SQLite keeps them as 0/1 integers, which sqlx reads as `bool`);
//! prices as the decimal text they were frozen with.

mod channels;
mod columns;
mod group;
mod ledger;
mod log;
mod outbox;
mod postgres;
mod reconcile;
mod records;
mod sessions;
mod sqlite;
pub mod statements;

use std::future::Future;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool, Transaction};

use crate::clock::Clock;

pub use log::{LogFilter, LoggedAttempt, LoggedMessage, LoggedUndeliverable, Redelivery};
pub use reconcile::{url_set, AlertmanagerCount, AlertmanagerReading, Reconciliation};
pub use records::{
    AttemptRecord, ChannelChange, ChannelList, ClaimedMessage, CorruptChannel, Enqueued, Freeze,
    IngestBatch, ItemRow, NewMessage, NewSession, Outcome, Period, Recorded, Superseded,
    Undeliverable, UsageRow,
};

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

/// One value per backend: the pools, a pool, a transaction, a connection.
#[derive(Clone, Debug)]
enum Db<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// Runs one statement on whichever backend `$db` (a [`Db`]) holds:
/// `on!(db, |c| sqlx::query(SQL).bind(x).execute(c).await)`. The body is
/// expanded once per backend with `c` that backend's executor, so it is
/// written once and type-checked for both; both expansions must give one type
/// (map rows to records inside the body). `|c, D|` also names the backend's
/// database type `D`, for what its [`Dialect`] says.
macro_rules! on {
    ($db:expr, |$c:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($c) => $body,
            $crate::store::Db::Postgres($c) => $body,
        }
    };
    ($db:expr, |$c:ident, $d:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($c) => {
                type $d = ::sqlx::Sqlite;
                $body
            }
            $crate::store::Db::Postgres($c) => {
                type $d = ::sqlx::Postgres;
                $body
            }
        }
    };
}
use on;

/// The SQL that differs between the backends, implemented for each
/// database type in `sqlite.rs` and `postgres.rs`.
trait Dialect {
    /// `UPDATE … RETURNING` that leases up to `$4` due messages to `$1`
    /// until `$2` (`$3` is now); see `outbox::claim_sql!`.
    const CLAIM: &'static str;
    /// Selects the open period's `id, start_at`, share-locked: taken by
    /// transactions that record outcomes, so that no outcome straddles a
    /// close. (SQLite's single writer serialises them anyway.)
    const OPEN_PERIOD_SHARED: &'static str;
    /// The same, locked exclusively: for close and settle.
    const OPEN_PERIOD_EXCLUSIVE: &'static str;
    /// Takes transaction-scoped locks on (channel, group)s, `$1` being their
    /// keys as a JSON array of strings, so that enqueues and recorded
    /// attempts of a group are serialised: ids follow commit order and no
    /// supersession is missed. One statement for all of them, each lock
    /// taken once, in the order of the locks' ids, so that two
    /// transactions never wait on each other. None where write
    /// transactions are serialised anyway (SQLite).
    const LOCK_GROUPS: Option<&'static str>;
    /// A query answering one boolean: whether a write would be refused (a
    /// standby, a read-only database). None where taking the write lock
    /// proves it (SQLite's `BEGIN IMMEDIATE`).
    const READ_ONLY: Option<&'static str>;
    /// Refreshes the planner's statistics of the outbox, where the plan of
    /// the claim depends on them (PostgreSQL; see `Store::claim`).
    const REFRESH_STATS: Option<&'static str>;
    /// Whether multi-row statements run faster with anonymous `?`
    /// parameters than with numbered ones (SQLite; see `outbox::for_backend`).
    const POSITIONAL: bool;
}

/// A write transaction on either backend, on a connection of the pool's
/// (`'static`) or on one held across transactions (see [`Held`]).
type Tx<'c> = Db<Transaction<'c, sqlx::Sqlite>, Transaction<'c, sqlx::Postgres>>;

/// A writer connection that ingest's writer keeps across its transactions
/// while jobs keep coming (see `group.rs`): taking one from the pool and
/// giving it back, each a hop through the runtime, cost as much as a
/// statement per transaction.
type Held = Db<PoolConnection<sqlx::Sqlite>, PoolConnection<sqlx::Postgres>>;

impl Held {
    /// The connection, to run statements on.
    fn conn(&mut self) -> Db<&mut SqliteConnection, &mut PgConnection> {
        match self {
            Db::Sqlite(c) => Db::Sqlite(&mut **c),
            Db::Postgres(c) => Db::Postgres(&mut **c),
        }
    }
}

impl Tx<'_> {
    /// The transaction's connection, to run statements on.
    fn conn(&mut self) -> Db<&mut SqliteConnection, &mut PgConnection> {
        match self {
            Db::Sqlite(tx) => Db::Sqlite(&mut **tx),
            Db::Postgres(tx) => Db::Postgres(&mut **tx),
        }
    }

    async fn commit(self) -> Result<()> {
        Ok(on!(self, |tx| tx.commit().await)?)
    }

    async fn rollback(self) -> Result<()> {
        Ok(on!(self, |tx| tx.rollback().await)?)
    }
}

/// The store. Cheap to clone: clones share the backend's pools.
#[derive(Clone)]
pub struct Store {
    pools: Db<sqlite::Pools, PgPool>,
    /// When outcomes become final and statements end: the application's clock.
    clock: Clock,
    /// Where ingest batches go to be written in groups (see `group.rs`);
    /// none in the writer's own copy of the store.
    ingest: Option<group::Queue>,
    /// When the outbox's statistics were last refreshed (ms), shared by clones.
    stats_refreshed: Arc<std::sync::atomic::AtomicI64>,
    /// The dispatcher of this process that ingest's writer hands messages
    /// to, leased at insert (see [`Store::hand_off_to`]); shared by clones.
    handoff: Arc<std::sync::RwLock<Option<Handoff>>>,
}

/// A dispatcher taking messages straight from ingest's writer: each is
/// inserted already leased to `owner` until `lease` from then, and sent on
/// `tx` once committed, so that it needs no claim (a write transaction) to
/// be sent.
#[derive(Clone)]
struct Handoff {
    owner: String,
    lease: crate::clock::Millis,
    tx: tokio::sync::mpsc::Sender<ClaimedMessage>,
    /// Set while the outbox holds more due messages than the dispatcher
    /// could take (see [`Store::note_backlog`]).
    backlog: Arc<std::sync::atomic::AtomicBool>,
}

/// The file a `sqlite:` URL names (none for other databases and in-memory ones).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory")).then(|| path.into())
}

/// Opens (creating it if needed) the database named by `url`, on the system clock.
pub async fn connect(url: &str) -> Result<Arc<Store>> {
    connect_with_clock(url, Clock::system()).await
}

/// Opens the database named by `url`; times the store takes itself (when an
/// outcome becomes final, when a statement ends) come from `clock`.
pub async fn connect_with_clock(url: &str, clock: Clock) -> Result<Arc<Store>> {
    let pools = if url.starts_with("sqlite:") {
        Db::Sqlite(sqlite::Pools::connect(url).await?)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Db::Postgres(postgres::connect(url).await?)
    } else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    let store = Store {
        pools,
        clock,
        ingest: None,
        stats_refreshed: Arc::default(),
        handoff: Arc::default(),
    };
    let ingest = Some(group::start(store.clone()));
    Ok(Arc::new(Store { ingest, ..store }))
}

impl Store {
    pub fn backend_name(&self) -> &'static str {
        match self.pools {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Pool for writes outside a transaction (SQLite: the single writer
    /// connection, so writers never contend).
    fn writer(&self) -> Db<&SqlitePool, &PgPool> {
        match &self.pools {
            Db::Sqlite(p) => Db::Sqlite(&p.writer),
            Db::Postgres(p) => Db::Postgres(p),
        }
    }

    /// Pool for reads (SQLite: several connections reading the WAL concurrently).
    fn reader(&self) -> Db<&SqlitePool, &PgPool> {
        match &self.pools {
            Db::Sqlite(p) => Db::Sqlite(&p.reader),
            Db::Postgres(p) => Db::Postgres(p),
        }
    }

    /// A write transaction, begun as the backend wants it.
    async fn write_tx(&self) -> Result<Tx<'static>> {
        Ok(match &self.pools {
            Db::Sqlite(p) => Db::Sqlite(p.begin_write().await?),
            Db::Postgres(p) => Db::Postgres(p.begin().await?),
        })
    }

    /// A writer connection taken from the pool, to hold (see [`Held`]).
    async fn hold_writer(&self) -> Result<Held> {
        Ok(match &self.pools {
            Db::Sqlite(p) => Db::Sqlite(p.writer.acquire().await?),
            Db::Postgres(p) => Db::Postgres(p.acquire().await?),
        })
    }

    /// A write transaction on `held`, or on a connection of the pool's.
    async fn write_tx_on<'c>(&self, held: Option<&'c mut Held>) -> Result<Tx<'c>> {
        Ok(match held {
            None => self.write_tx().await?,
            Some(Db::Sqlite(c)) => Db::Sqlite(sqlite::begin_write_on(c).await?),
            Some(Db::Postgres(c)) => Db::Postgres(Transaction::begin(&mut **c, None).await?),
        })
    }

    /// Runs a write on a task of its own and waits for it. The caller may
    /// go away at any await (a client hanging up, a timeout): the write still
    /// runs to its commit or rollback, so no connection is ever returned to
    /// the pool inside a transaction, and what was written is whole.
    async fn detached<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(tracing::Instrument::in_current_span(op(self.clone())))
            .await
            .map_err(|e| StoreError::Interrupted(e.to_string()))?
    }

    /// Applies pending migrations and makes sure an open billing period exists.
    pub async fn migrate(&self, now: crate::clock::Millis) -> Result<()> {
        match &self.pools {
            Db::Sqlite(p) => p.migrate().await?,
            Db::Postgres(p) => postgres::migrate(p).await?,
        }
        self.ensure_open_period(now).await
    }

    /// Whether the store takes a write: a write transaction (SQLite: one
    /// holding the database's write lock) is begun and rolled back.
    pub async fn check_writable(&self) -> Result<()> {
        self.detached(|store| async move {
            let mut tx = store.write_tx().await?;
            let read_only = on!(tx.conn(), |c, D| match <D as Dialect>::READ_ONLY {
                Some(sql) => sqlx::query_scalar::<_, bool>(sql).fetch_one(c).await?,
                None => false,
            });
            tx.rollback().await?;
            if read_only {
                return Err(StoreError::ReadOnly);
            }
            Ok(())
        })
        .await
    }

    /// From now on, ingest's writer leases the messages it inserts to
    /// `owner` for `lease` and sends them on the returned receiver once
    /// committed, as many as it has room for (`capacity` waiting at most):
    /// those need no claim. A message is leased at insert only when no
    /// older message of its (channel, group) is pending, so a group is
    /// still delivered in the order it was accepted; the others, and those
    /// without room, wait in the outbox to be claimed. Messages left in the
    /// receiver when it is dropped keep their lease until it expires, then
    /// are claimed as any other. One dispatcher at a time; a second call
    /// replaces the first.
    pub fn hand_off_to(
        &self,
        owner: &str,
        lease: std::time::Duration,
        capacity: usize,
    ) -> tokio::sync::mpsc::Receiver<ClaimedMessage> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        *self.handoff.write().unwrap_or_else(|e| e.into_inner()) = Some(Handoff {
            owner: owner.to_owned(),
            lease: crate::clock::duration_ms(lease),
            tx,
            backlog: Arc::default(),
        });
        rx
    }

    /// The dispatcher that ingest's writer hands messages to tells it
    /// whether its last claim left due messages in the outbox (it took as
    /// many as it asked for). While it did, the writer's transactions that
    /// record that dispatcher's outcomes also claim for it, as many as it
    /// has room for, and hand them over once committed: in a backlog a
    /// message then costs one write transaction (its outcome's, shared with
    /// others) instead of two, a claim's and an outcome's, each with its
    /// own commit. The writer clears it once such a claim finds fewer than
    /// it asked for.
    pub fn note_backlog(&self, backlog: bool) {
        if let Some(h) = &*self.handoff.read().unwrap_or_else(|e| e.into_inner()) {
            h.backlog
                .store(backlog, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Ingest's writer hands nothing more to a dispatcher (it is stopping).
    pub fn stop_handoff(&self) {
        *self.handoff.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn handoff(&self) -> Option<Handoff> {
        self.handoff
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once [`Store::close`] has been called: what holds a
    /// connection while idle gives it back then, for `close` waits for
    /// every connection.
    async fn closing(&self) {
        match &self.pools {
            Db::Sqlite(p) => p.writer.close_event().await,
            Db::Postgres(p) => p.close_event().await,
        }
    }

    pub async fn close(&self) {
        on!(self.writer(), |pool| pool.close().await);
        on!(self.reader(), |pool| pool.close().await);
    }
}

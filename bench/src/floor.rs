//! The floor of storing a message: notimeter's own outbox statements, as a
//! writer's cycle runs them under the `core` load, run in a tight loop
//! against the database with nothing around them: no HTTP, no JSON, no
//! async runtime, no pool; on SQLite not even sqlx (the engine through
//! rusqlite, on the same bundled SQLite, with notimeter's pragmas). What it
//! costs per message is about the least notimeter's write path could cost,
//! to compare with what `core`'s ratio leaves for storage (`core` prints
//! that budget).
//!
//! A cycle does less than notimeter's: per message, it inserts the dedupe
//! key, looks for a pending message of its group, inserts the message
//! leased (as the writer does when a dispatcher has room: no claim), and
//! makes the previous cycle's messages final with their attempts and usage;
//! it leaves out the period read, the claim statement, the look for a
//! waiting message of a finished one's group, supersession, undeliverable
//! alerts, PostgreSQL's group locks and everything outside the transaction.
//! It is a floor of notimeter's statements, not of the schema: other
//! statements, or outcomes batched over several cycles, could cost less.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use notimeter::store::statements;

use crate::common::{group_payload, machine_busy, thread_cpu_time, Common, Created, Database};

#[derive(Args)]
pub struct FloorArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Messages per cycle (one transaction): a list, each measured in turn.
    /// 32 is the most `core`'s 32 connections can put in one cycle.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    pub per: Vec<usize>,
    /// Users the messages are spread over (each its own dedupe key, group
    /// and usage row, as in `core`).
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// On SQLite, also run the loop through sqlx, as notimeter does.
    #[arg(long)]
    pub sqlx: bool,
}

/// One statement parameter, bound the same way on both backends.
enum Param {
    Text(String),
    Int(i64),
    NullText,
    NullInt,
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Text(t) => ValueRef::Text(t.as_bytes()),
            Param::Int(i) => ValueRef::Integer(*i),
            Param::NullText | Param::NullInt => ValueRef::Null,
        }))
    }
}

/// One statement: its text (numbered `$N`) and parameters.
pub struct Statement {
    sql: String,
    params: Vec<Param>,
}

/// A message for the writer to insert: its dedupe key, user, group key and
/// payload (its channel is `c`, its integration `webhook`).
pub struct Message {
    pub key: String,
    pub user: String,
    pub group_key: String,
    pub payload: String,
}

/// The statements of one cycle, in the writer's order: make `finished`
/// ((id, user) of messages leased by `floor`) final as delivered, with
/// their attempts and usage; then insert `new`, leased by `floor`.
pub fn cycle_statements(
    now: i64,
    period: &str,
    finished: &[(i64, String)],
    new: &[Message],
) -> Vec<Statement> {
    let mut statements = Vec::new();
    if !finished.is_empty() {
        let mut p = vec![Param::Int(now), Param::Text(period.to_owned())];
        for (id, _) in finished {
            p.extend([
                Param::Int(*id),
                Param::Text("delivered".into()),
                Param::Int(1),
                Param::NullText,
                Param::NullText,
                Param::NullInt,
            ]);
        }
        p.push(Param::Text("floor".into()));
        statements.push(Statement {
            sql: statements::finish_messages(finished.len()),
            params: p,
        });
        let mut p = Vec::new();
        for (id, _) in finished {
            p.extend([
                Param::Int(*id),
                Param::Int(1),
                Param::Int(now),
                Param::Int(2),
                Param::Text("success".into()),
                Param::Int(200),
                Param::NullText,
                Param::NullInt,
            ]);
        }
        statements.push(Statement {
            sql: statements::insert_attempts(finished.len()),
            params: p,
        });
        let mut users: Vec<&str> = finished.iter().map(|(_, u)| u.as_str()).collect();
        users.sort_unstable();
        let mut counts: Vec<(&str, i64)> = Vec::new();
        for u in users {
            match counts.last_mut() {
                Some((last, n)) if *last == u => *n += 1,
                _ => counts.push((u, 1)),
            }
        }
        let mut p = Vec::new();
        for (u, n) in &counts {
            p.extend([
                Param::Text(period.to_owned()),
                Param::Text((*u).into()),
                Param::Text("webhook".into()),
                Param::Int(*n),
                Param::Int(0),
                Param::Int(0),
                Param::Int(0),
            ]);
        }
        statements.push(Statement {
            sql: statements::count_usage(counts.len()),
            params: p,
        });
    }
    if new.is_empty() {
        return statements;
    }
    let (mut keys, mut groups, mut messages) = (Vec::new(), Vec::new(), Vec::new());
    for m in new {
        keys.extend([Param::Text(m.key.clone()), Param::Int(now + 30_000)]);
        groups.extend([
            Param::Text(m.user.clone()),
            Param::Text("c".into()),
            Param::Text(m.group_key.clone()),
        ]);
        messages.extend([
            Param::Text(m.user.clone()),
            Param::Text("c".into()),
            Param::Text("webhook".into()),
            Param::Text(m.group_key.clone()),
            Param::Text(m.payload.clone()),
            Param::Int(1),
            Param::Text("HighCPU".into()),
            Param::Int(now),
            Param::Int(now),
            Param::Text("floor".into()),
            Param::Int(now + 240_000),
        ]);
    }
    keys.push(Param::Int(now));
    statements.push(Statement {
        sql: statements::insert_dedupe(new.len()),
        params: keys,
    });
    statements.push(Statement {
        sql: statements::pending_groups(new.len(), false),
        params: groups,
    });
    statements.push(Statement {
        sql: statements::insert_messages(new.len()),
        params: messages,
    });
    statements
}

/// A dedupe key for message number `seq`: 64 hex digits, as notimeter's.
pub fn key(seq: u64) -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        seq.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
        seq.rotate_left(17).wrapping_mul(0x1656_67b1_9e37_79f9),
        seq
    )
}

/// What the loop produces: the statements of cycle `n` given the ids the
/// previous one inserted.
struct Workload {
    per: usize,
    users: u64,
    period: String,
    seq: u64,
    /// (id, user) of the messages inserted by the previous cycle.
    previous: Vec<(i64, String)>,
    /// One-alert payloads as `core` sends them, made before the loop (so
    /// that it measures storing them, not making them).
    payloads: Vec<String>,
}

impl Workload {
    fn new(per: usize, users: u64) -> Self {
        Workload {
            per,
            users,
            period: String::new(),
            seq: 0,
            previous: Vec::new(),
            payloads: (0..1024)
                .map(|i| group_payload(i, &format!("user{}", i % users), 1).to_string())
                .collect(),
        }
    }

    /// This cycle's statements, and the users of the messages it inserts.
    fn cycle(&mut self, now: i64) -> (Vec<Statement>, Vec<String>) {
        let previous = std::mem::take(&mut self.previous);
        let new: Vec<Message> = (0..self.per)
            .map(|_| {
                self.seq += 1;
                // Users in a scattered order, as 32 clients' requests arrive.
                let user = format!("user{}", self.seq.wrapping_mul(7919) % self.users);
                Message {
                    key: key(self.seq),
                    group_key: format!(
                        "{{}}:{{alertname=\"HighCPU\", user_id=\"{user}\"}}#{}",
                        self.seq
                    ),
                    user,
                    payload: self.payloads[self.seq as usize % self.payloads.len()].clone(),
                }
            })
            .collect();
        let users = new.iter().map(|m| m.user.clone()).collect();
        (cycle_statements(now, &self.period, &previous, &new), users)
    }
}

/// Per message: the loop's own CPU (the thread or process that ran it), the
/// whole machine's (SQLite: the kernel's writeback; PostgreSQL: its server
/// processes too), and the wall time.
pub struct Cost {
    messages: u64,
    own: Duration,
    machine: Duration,
    wall: Duration,
}

impl Cost {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }
    /// Microseconds of the machine's CPU per message.
    pub fn machine_us(&self) -> f64 {
        Self::per_message_us(self.machine, self.messages)
    }
    fn per_message_us(d: Duration, n: u64) -> f64 {
        d.as_secs_f64() * 1e6 / n.max(1) as f64
    }
    fn print(&self, what: &str, per: usize) {
        println!(
            "floor       {what}, {per:>3} messages a cycle: {:>6.1} µs of CPU per message in the loop, {:>6.1} µs on the machine; {:>6.0} messages/s",
            Self::per_message_us(self.own, self.messages),
            self.machine_us(),
            self.rate()
        );
    }
}

/// The open period's id (what `notimeter migrate` opened).
const OPEN_PERIOD: &str = "SELECT id FROM periods WHERE end_at IS NULL AND user_id IS NULL";

/// notimeter's writer connection on SQLite, through rusqlite: its pragmas
/// (`src/store/sqlite.rs`) and the open period.
pub struct SqliteWriter {
    c: rusqlite::Connection,
    /// Each statement's text as SQLite runs it (anonymous parameters).
    texts: std::collections::HashMap<String, String>,
    pub period: String,
}

impl SqliteWriter {
    pub fn open(path: &str) -> Result<Self> {
        let c = rusqlite::Connection::open(path)?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = memory; PRAGMA cache_size = -8192; PRAGMA busy_timeout = 5000;",
        )?;
        let period = c.query_row(OPEN_PERIOD, [], |r| r.get(0))?;
        // A statement's text depends on its row count: room for every
        // count a writer's batches take (sqlx keeps 100 a connection),
        // not rusqlite's 16, so that they are prepared once.
        c.set_prepared_statement_cache_capacity(1024);
        Ok(Self {
            c,
            texts: Default::default(),
            period,
        })
    }

    /// Runs `statements` in one transaction; answers the ids of the
    /// messages inserted (ascending, so in insert order) and how many were
    /// made final.
    pub fn cycle(&mut self, statements: &[Statement]) -> Result<(Vec<i64>, usize)> {
        self.c.execute_batch("BEGIN IMMEDIATE")?;
        let ran = self
            .run(statements)
            .and_then(|ran| Ok(self.c.execute_batch("COMMIT").map(|()| ran)?));
        if ran.is_err() && !self.c.is_autocommit() {
            let _ = self.c.execute_batch("ROLLBACK");
        }
        ran
    }

    fn run(&mut self, statements: &[Statement]) -> Result<(Vec<i64>, usize)> {
        let (mut ids, mut finished) = (Vec::new(), 0);
        for s in statements {
            if !self.texts.contains_key(&s.sql) {
                let text = statements::positional(&s.sql).unwrap_or_else(|| s.sql.clone());
                self.texts.insert(s.sql.clone(), text);
            }
            let mut st = self.c.prepare_cached(&self.texts[&s.sql])?;
            let mut rows = st.query(rusqlite::params_from_iter(s.params.iter()))?;
            let inserting = s.sql.starts_with("INSERT INTO messages");
            let finishing = s.sql.starts_with("UPDATE messages");
            while let Some(row) = rows.next()? {
                if inserting {
                    ids.push(row.get::<_, i64>(0)?);
                }
                finished += usize::from(finishing);
            }
        }
        ids.sort_unstable();
        Ok((ids, finished))
    }
}

fn sqlite_loop(path: &str, work: &mut Workload, seconds: u64) -> Result<Cost> {
    let mut writer = SqliteWriter::open(path)?;
    work.period = writer.period.clone();
    let started = Instant::now();
    let (own, machine) = (thread_cpu_time()?, machine_busy()?);
    let mut messages = 0;
    let mut now = notimeter::clock::now_ms();
    while started.elapsed() < Duration::from_secs(seconds) {
        now += 1;
        let finishing = work.previous.len();
        let (statements, users) = work.cycle(now);
        let (ids, finished) = writer.cycle(&statements)?;
        check_finished(finished, finishing)?;
        messages += finished as u64;
        work.previous = remember(ids, users)?;
    }
    Ok(Cost {
        messages,
        own: thread_cpu_time()? - own,
        machine: machine_busy()? - machine,
        wall: started.elapsed(),
    })
}

/// A cycle must make final every message of the one before (else the loop
/// would count work it did not do).
fn check_finished(finished: usize, expected: usize) -> Result<()> {
    if finished != expected {
        bail!("a cycle made {finished} messages final, not {expected}");
    }
    Ok(())
}

/// The (id, user) of each message a cycle inserted, in insert order.
pub fn remember(ids: Vec<i64>, users: Vec<String>) -> Result<Vec<(i64, String)>> {
    if users.len() != ids.len() {
        bail!("inserted {} messages, got {} ids", users.len(), ids.len());
    }
    Ok(ids.into_iter().zip(users).collect())
}

/// Runs `$statements` on the sqlx connection `$c` (no transaction of its
/// own), each statement's text as `$text` makes it, kept in `$texts`:
/// answers, as [`SqliteWriter::cycle`], the ids inserted and how many
/// messages were made final.
macro_rules! sqlx_run {
    ($c:expr, $texts:expr, $statements:expr, $text:expr) => {
        async {
            use sqlx::Row;
            let (mut ids, mut finished) = (Vec::new(), 0);
            for s in $statements {
                if !$texts.contains_key(&s.sql) {
                    let text: String = $text(&s.sql);
                    $texts.insert(s.sql.clone(), text);
                }
                let mut q = sqlx::query(&$texts[&s.sql]);
                for p in &s.params {
                    q = match p {
                        Param::Text(t) => q.bind(t.as_str()),
                        Param::Int(i) => q.bind(*i),
                        Param::NullText => q.bind(None::<String>),
                        Param::NullInt => q.bind(None::<i64>),
                    };
                }
                let rows = q.fetch_all(&mut *$c).await?;
                if s.sql.starts_with("INSERT INTO messages") {
                    for row in rows {
                        ids.push(row.try_get::<i64, _>(0)?);
                    }
                } else if s.sql.starts_with("UPDATE messages") {
                    finished += rows.len();
                }
            }
            ids.sort_unstable();
            Ok::<_, anyhow::Error>((ids, finished))
        }
    };
}

/// notimeter's statements on PostgreSQL through sqlx, on one connection.
pub struct PgWriter {
    c: sqlx::PgConnection,
    texts: std::collections::HashMap<String, String>,
    pub period: String,
}

impl PgWriter {
    pub async fn open(url: &str) -> Result<Self> {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(url).await?;
        let period = sqlx::query_scalar(OPEN_PERIOD).fetch_one(&mut c).await?;
        Ok(Self {
            c,
            texts: Default::default(),
            period,
        })
    }

    /// As [`SqliteWriter::cycle`].
    pub async fn cycle(&mut self, statements: &[Statement]) -> Result<(Vec<i64>, usize)> {
        sqlx::query("BEGIN").execute(&mut self.c).await?;
        let ran = sqlx_run!(&mut self.c, self.texts, statements, |sql: &str| sql
            .to_owned())
        .await;
        let end = if ran.is_ok() { "COMMIT" } else { "ROLLBACK" };
        sqlx::query(end).execute(&mut self.c).await?;
        ran
    }
}

/// The loop through sqlx on one connection `$c`, each cycle begun with
/// `$begin`, each statement's text as `$text` makes it.
macro_rules! sqlx_loop {
    ($c:ident, $work:ident, $seconds:ident, $begin:literal, $text:expr) => {{
        $work.period = sqlx::query_scalar(OPEN_PERIOD).fetch_one(&mut $c).await?;
        let mut texts = std::collections::HashMap::new();
        let me = std::process::id();
        let started = Instant::now();
        let own = crate::common::cpu_time(me).context("reading this process's CPU time")?;
        let machine = machine_busy()?;
        let mut messages = 0;
        let mut now = notimeter::clock::now_ms();
        while started.elapsed() < Duration::from_secs($seconds) {
            now += 1;
            let finishing = $work.previous.len();
            let (statements, users) = $work.cycle(now);
            sqlx::query($begin).execute(&mut $c).await?;
            let (ids, finished) = sqlx_run!(&mut $c, texts, &statements, $text).await?;
            sqlx::query("COMMIT").execute(&mut $c).await?;
            check_finished(finished, finishing)?;
            messages += finished as u64;
            $work.previous = remember(ids, users)?;
        }
        Ok(Cost {
            messages,
            own: crate::common::cpu_time(me).context("reading this process's CPU time")? - own,
            machine: machine_busy()? - machine,
            wall: started.elapsed(),
        })
    }};
}

async fn postgres_loop(url: &str, work: &mut Workload, seconds: u64) -> Result<Cost> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx_loop!(c, work, seconds, "BEGIN", |sql: &str| sql.to_owned())
}

/// The same statements on SQLite through sqlx, as notimeter runs them (its
/// pragmas, `BEGIN IMMEDIATE`, anonymous parameters): against the
/// rusqlite loop, what sqlx's hand-off to its SQLite thread costs.
async fn sqlite_sqlx_loop(url: &str, work: &mut Workload, seconds: u64) -> Result<Cost> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let mut c = SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        .pragma("temp_store", "memory")
        .pragma("cache_size", "-8192")
        .connect()
        .await?;
    sqlx_loop!(c, work, seconds, "BEGIN IMMEDIATE", |sql: &str| {
        statements::positional(sql).unwrap_or_else(|| sql.to_owned())
    })
}

/// The loop on a fresh database of `common`'s backend, `per` messages a
/// cycle over `users` users, for `seconds`: on SQLite through rusqlite.
pub async fn measure(common: &Common, per: usize, users: u64, seconds: u64) -> Result<Cost> {
    let dir = tempfile::tempdir()?;
    let created = Created::new(common, dir.path(), "").await?;
    created.migrate()?;
    let mut work = Workload::new(per, users);
    match common.database {
        Database::Sqlite => {
            let path = created
                .database_url
                .trim_start_matches("sqlite://")
                .to_owned();
            tokio::task::spawn_blocking(move || sqlite_loop(&path, &mut work, seconds)).await?
        }
        Database::Postgres => postgres_loop(&created.database_url, &mut work, seconds).await,
    }
}

pub async fn run(args: FloorArgs) -> Result<()> {
    println!(
        "floor: notimeter's outbox statements with nothing around them, {}, {} users, {} s a measurement",
        args.common.database_name(),
        args.users,
        args.seconds
    );
    for &per in &args.per {
        let cost = measure(&args.common, per, args.users, args.seconds).await?;
        match args.common.database {
            Database::Sqlite => {
                cost.print("SQLite (rusqlite)", per);
                if args.sqlx {
                    let dir = tempfile::tempdir()?;
                    let created = Created::new(&args.common, dir.path(), "").await?;
                    created.migrate()?;
                    let mut work = Workload::new(per, args.users);
                    let cost =
                        sqlite_sqlx_loop(&created.database_url, &mut work, args.seconds).await?;
                    cost.print("SQLite (sqlx, one connection)", per);
                }
            }
            Database::Postgres => cost.print("PostgreSQL (sqlx, one connection)", per),
        }
    }
    Ok(())
}

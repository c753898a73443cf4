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
struct Statement {
    sql: String,
    params: Vec<Param>,
}

/// The messages of one cycle and what it needs from the one before.
struct Cycle {
    /// Finish the previous cycle's messages, then insert this cycle's:
    /// the statements in the writer's order (outcomes first).
    statements: Vec<Statement>,
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

    fn cycle(&mut self, now: i64) -> Cycle {
        let mut statements = Vec::new();
        let previous = std::mem::take(&mut self.previous);
        if !previous.is_empty() {
            let mut p = vec![Param::Int(now), Param::Text(self.period.clone())];
            for (id, _) in &previous {
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
                sql: statements::finish_messages(previous.len()),
                params: p,
            });
            let mut p = Vec::new();
            for (id, _) in &previous {
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
                sql: statements::insert_attempts(previous.len()),
                params: p,
            });
            let mut users: Vec<&str> = previous.iter().map(|(_, u)| u.as_str()).collect();
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
                    Param::Text(self.period.clone()),
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
        let mut keys = Vec::new();
        let mut groups = Vec::new();
        let mut messages = Vec::new();
        for _ in 0..self.per {
            self.seq += 1;
            // Users in a scattered order, as 32 clients' requests arrive.
            let user = format!("user{}", self.seq.wrapping_mul(7919) % self.users);
            let group_key = format!(
                "{{}}:{{alertname=\"HighCPU\", user_id=\"{user}\"}}#{}",
                self.seq
            );
            let payload = &self.payloads[self.seq as usize % self.payloads.len()];
            keys.extend([
                Param::Text(format!(
                    "{:016x}{:016x}{:016x}{:016x}",
                    self.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    self.seq.wrapping_mul(0xc2b2_ae3d_27d4_eb4f),
                    self.seq.rotate_left(17).wrapping_mul(0x1656_67b1_9e37_79f9),
                    self.seq
                )),
                Param::Int(now + 30_000),
            ]);
            groups.extend([
                Param::Text(user.clone()),
                Param::Text("c".into()),
                Param::Text(group_key.clone()),
            ]);
            messages.extend([
                Param::Text(user),
                Param::Text("c".into()),
                Param::Text("webhook".into()),
                Param::Text(group_key),
                Param::Text(payload.clone()),
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
            sql: statements::insert_dedupe(self.per),
            params: keys,
        });
        statements.push(Statement {
            sql: statements::pending_groups(self.per, false),
            params: groups,
        });
        statements.push(Statement {
            sql: statements::insert_messages(self.per),
            params: messages,
        });
        Cycle { statements }
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

fn sqlite_loop(path: &str, work: &mut Workload, seconds: u64) -> Result<Cost> {
    let c = rusqlite::Connection::open(path)?;
    // Each statement's text as SQLite runs it (anonymous parameters).
    let mut texts = std::collections::HashMap::new();
    // notimeter's pragmas (src/store/sqlite.rs).
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = memory; PRAGMA cache_size = -8192; PRAGMA busy_timeout = 5000;",
    )?;
    work.period = c.query_row(OPEN_PERIOD, [], |r| r.get(0))?;
    let started = Instant::now();
    let (own, machine) = (thread_cpu_time()?, machine_busy()?);
    let mut messages = 0;
    let mut now = notimeter::clock::now_ms();
    while started.elapsed() < Duration::from_secs(seconds) {
        now += 1;
        let finishing = work.previous.len();
        let cycle = work.cycle(now);
        c.execute_batch("BEGIN IMMEDIATE")?;
        let mut ids = Vec::new();
        let mut finished = 0;
        for s in &cycle.statements {
            if !texts.contains_key(&s.sql) {
                let text = statements::positional(&s.sql).unwrap_or_else(|| s.sql.clone());
                texts.insert(s.sql.clone(), text);
            }
            let mut st = c.prepare_cached(&texts[&s.sql])?;
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
        c.execute_batch("COMMIT")?;
        check_finished(finished, finishing)?;
        messages += finished as u64;
        work.previous = remember(ids, &cycle)?;
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
fn remember(mut ids: Vec<i64>, cycle: &Cycle) -> Result<Vec<(i64, String)>> {
    ids.sort_unstable();
    let inserted = cycle.statements.last().context("a cycle inserts")?;
    let users: Vec<String> = inserted
        .params
        .chunks(11)
        .map(|row| match &row[0] {
            Param::Text(u) => u.clone(),
            _ => String::new(),
        })
        .collect();
    if users.len() != ids.len() {
        bail!("inserted {} messages, got {} ids", users.len(), ids.len());
    }
    Ok(ids.into_iter().zip(users).collect())
}

/// The loop through sqlx on one connection `$c`, each cycle begun with
/// `$begin`, each statement's text as `$text` makes it.
macro_rules! sqlx_loop {
    ($c:ident, $work:ident, $seconds:ident, $begin:literal, $text:expr) => {{
        use sqlx::Row;
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
            let cycle = $work.cycle(now);
            sqlx::query($begin).execute(&mut $c).await?;
            let mut ids = Vec::new();
            let mut finished = 0;
            for s in &cycle.statements {
                if !texts.contains_key(&s.sql) {
                    let text: String = $text(&s.sql);
                    texts.insert(s.sql.clone(), text);
                }
                let mut q = sqlx::query(&texts[&s.sql]);
                for p in &s.params {
                    q = match p {
                        Param::Text(t) => q.bind(t.as_str()),
                        Param::Int(i) => q.bind(*i),
                        Param::NullText => q.bind(None::<String>),
                        Param::NullInt => q.bind(None::<i64>),
                    };
                }
                let rows = q.fetch_all(&mut $c).await?;
                if s.sql.starts_with("INSERT INTO messages") {
                    for row in rows {
                        ids.push(row.try_get::<i64, _>(0)?);
                    }
                } else if s.sql.starts_with("UPDATE messages") {
                    finished += rows.len();
                }
            }
            sqlx::query("COMMIT").execute(&mut $c).await?;
            check_finished(finished, finishing)?;
            messages += finished as u64;
            $work.previous = remember(ids, &cycle)?;
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

//! What both scenarios share: the notimeter process, a fresh database, payloads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Database {
    Sqlite,
    Postgres,
}

#[derive(Args, Clone)]
pub struct Common {
    /// The notimeter binary to measure.
    #[arg(long, default_value = "target/release/notimeter")]
    pub notimeter: PathBuf,
    /// Database to run against.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub database: Database,
    /// PostgreSQL server for --database postgres (a fresh database is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
}

impl Common {
    pub fn database_name(&self) -> &'static str {
        match self.database {
            Database::Sqlite => "sqlite",
            Database::Postgres => "postgres",
        }
    }
}

/// A child process, stopped with SIGTERM when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Process {
    /// The most resident memory the process has had (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.status_mb("VmHWM:")
    }

    /// Its resident memory now (VmRSS), in MB.
    pub fn rss_mb(&self) -> Option<f64> {
        self.status_mb("VmRSS:")
    }

    /// Starts the peak (VmHWM) again from the current RSS, so that one phase
    /// of a run can be measured on its own (Linux `clear_refs`, value 5).
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.0.id()), "5").is_ok()
    }

    fn status_mb(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

pub fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub async fn wait_ready(http: &reqwest::Client, base: &str, path: &str) -> Result<()> {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}{path}")).send().await {
            if r.status().as_u16() < 500 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{base} did not become ready")
}

/// A fresh database and a settings file, before the server starts: a
/// benchmark can migrate the database and seed it (channels, history) first.
pub struct Created {
    binary: PathBuf,
    config: PathBuf,
    listen: SocketAddr,
    pub database_url: String,
    postgres: Option<(String, String)>,
}

impl Created {
    /// Creates the database (a fresh PostgreSQL one, or a SQLite file in
    /// `dir`) and writes the settings, with `extra` appended.
    pub async fn new(common: &Common, dir: &Path, extra: &str) -> Result<Self> {
        let binary = std::fs::canonicalize(&common.notimeter).with_context(|| {
            format!(
                "{} not found: build it with cargo build --release",
                common.notimeter.display()
            )
        })?;
        let (url, postgres) = match common.database {
            Database::Sqlite => (format!("sqlite://{}", dir.join("bench.db").display()), None),
            Database::Postgres => {
                use sqlx::Connection;
                let name = format!("notimeter_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&common.postgres_url).await?;
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await?;
                let mut url = url::Url::parse(&common.postgres_url)?;
                url.set_path(&name);
                (url.to_string(), Some((common.postgres_url.clone(), name)))
            }
        };
        let listen = free_addr()?;
        let config = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\ndatabase_url = \"{url}\"\nreports_dir = \"{}\"\noutbound_allow = [\"127.0.0.0/8\"]\n{extra}",
                dir.join("reports").display()
            ),
        )?;
        Ok(Self {
            binary,
            config,
            listen,
            database_url: url,
            postgres,
        })
    }

    /// Runs `notimeter migrate`: the schema and the open period, nothing else.
    pub fn migrate(&self) -> Result<()> {
        let status = Command::new(&self.binary)
            .args(["--config", self.config.to_str().unwrap(), "migrate"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .status()
            .context("running notimeter migrate")?;
        if !status.success() {
            bail!("notimeter migrate failed: {status}");
        }
        Ok(())
    }

    /// Starts `notimeter serve` and waits until it is ready.
    pub async fn spawn(mut self, http: &reqwest::Client) -> Result<Notimeter> {
        let process = Process(
            Command::new(&self.binary)
                .args(["--config", self.config.to_str().unwrap(), "serve"])
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting notimeter")?,
        );
        let base = format!("http://{}", self.listen);
        let server = Notimeter {
            process: Some(process),
            base,
            database_url: self.database_url.clone(),
            postgres: self.postgres.take(),
        };
        // Seeding a large store can make the first start slow (the routing
        // index loads every channel).
        wait_ready(http, &server.base, "/readyz").await?;
        Ok(server)
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if let Some((server, name)) = self.postgres.take() {
            drop_postgres(server, name);
        }
    }
}

/// Drops a benchmark's PostgreSQL database (best effort, on a thread of its
/// own so that it works from a destructor).
fn drop_postgres(server: String, name: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&server).await?;
            sqlx::Executor::execute(
                &mut conn,
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
            )
            .await?;
            anyhow::Ok(())
        })
    })
    .join();
}

/// Runs SQL on a database with the native driver its URL names.
pub async fn execute(url: &str, sql: &str) -> Result<()> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
    }
    Ok(())
}

/// `WITH RECURSIVE s(n) ...` for SQLite (PostgreSQL needs no prefix), and
/// the `FROM` that yields `n` = 0 .. count - 1 on each backend.
pub fn series(url: &str, count: u64) -> (String, String) {
    if url.starts_with("sqlite:") {
        (
            format!(
                "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < {}) ",
                count - 1
            ),
            "FROM s".into(),
        )
    } else {
        (
            String::new(),
            format!("FROM generate_series(0, {}) AS s(n)", count - 1),
        )
    }
}

/// Inserts `users` × `channels` webhook channels straight into the database
/// (the API would take minutes for 300,000): user `user{u}`'s channel `c`
/// matches `severity="critical"` (every benchmark alert) and posts to
/// `url(u)`; channels `c1`, `c2`, ... match other severities, so they are
/// routed past but make no message.
pub async fn seed_channels(
    database_url: &str,
    users: usize,
    channels: usize,
    url: impl Fn(usize) -> String,
) -> Result<()> {
    let mut sql = String::from("BEGIN;\n");
    let mut rows = Vec::with_capacity(1000);
    let flush = |sql: &mut String, rows: &mut Vec<String>| {
        if !rows.is_empty() {
            sql.push_str(
                "INSERT INTO channels (user_id, channel_id, integration, enabled, spec, created_at, updated_at) VALUES ",
            );
            sql.push_str(&rows.join(","));
            sql.push_str(";\n");
            rows.clear();
        }
    };
    for u in 0..users {
        for c in 0..channels {
            let (id, severity) = match c {
                0 => ("c".to_owned(), "critical".to_owned()),
                n => (format!("c{n}"), format!("level{n}")),
            };
            let spec = json!({"type": "webhook", "settings": {"url": url(u)},
                              "matchers": [format!("severity=\"{severity}\"")],
                              "send_resolved": true, "enabled": true});
            rows.push(format!(
                "('user{u}', '{id}', 'webhook', TRUE, '{}', 0, 0)",
                spec.to_string().replace('\'', "''")
            ));
            if rows.len() == 1000 {
                flush(&mut sql, &mut rows);
            }
        }
    }
    flush(&mut sql, &mut rows);
    sql.push_str("COMMIT;\n");
    execute(database_url, &sql).await
}

/// CPU time (user + system) a process has used so far, to 10 ms.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu_time(&format!("/proc/{pid}/stat"))
}

/// CPU time (user + system) the calling thread has used so far, to 10 ms.
pub fn thread_cpu_time() -> Result<Duration> {
    stat_cpu_time("/proc/thread-self/stat").context("reading /proc/thread-self/stat")
}

/// The user and system time in a `/proc/.../stat` file.
fn stat_cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

/// CPU time the whole machine has spent busy so far, summed over its cores
/// (`/proc/stat`: everything but idle, I/O wait, and time the hypervisor
/// gave another guest), to 10 ms.
pub fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("an empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user)
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| ![3, 4, 7].contains(i))
        .map(|(_, t)| t)
        .sum();
    Ok(Duration::from_millis(busy * 10))
}

/// notimeter running on a fresh database; the PostgreSQL database is dropped after.
pub struct Notimeter {
    pub process: Option<Process>,
    pub base: String,
    pub database_url: String,
    postgres: Option<(String, String)>,
}

impl Notimeter {
    /// Starts the binary with `extra` appended to its TOML settings.
    pub async fn start(
        common: &Common,
        dir: &Path,
        http: &reqwest::Client,
        extra: &str,
    ) -> Result<Self> {
        Created::new(common, dir, extra).await?.spawn(http).await
    }
    pub async fn put_channel(&self, http: &reqwest::Client, user: &str, body: Value) -> Result<()> {
        let r = http
            .put(format!("{}/v1/users/{user}/channels/c", self.base))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating a channel failed: {}", r.text().await?);
        }
        Ok(())
    }

    pub fn ingest_url(&self) -> String {
        format!("{}/v1/alertmanager", self.base)
    }

    pub async fn stop(mut self) -> Result<Option<f64>> {
        let rss = self.process.as_ref().and_then(Process::peak_rss_mb);
        drop(self.process.take());
        Ok(rss)
    }
}

impl Drop for Notimeter {
    fn drop(&mut self) {
        drop(self.process.take());
        if let Some((server, name)) = self.postgres.take() {
            drop_postgres(server, name);
        }
    }
}

/// One alert as Alertmanager sends it, unique per (`seq`, `i`).
pub fn alert(seq: u64, user: &str, i: usize) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": "HighCPU", "user_id": user, "instance": format!("host-{i}:9100"),
                   "job": "node", "severity": "critical"},
        "annotations": {"description": format!("CPU on host-{i} is above 90% for 5 minutes"), "summary": "High CPU"},
        "startsAt": "2026-11-24T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=node_cpu",
        "fingerprint": format!("{seq:x}-{i}")
    })
}

pub fn envelope(group_key: String, alerts: Vec<Value>) -> Value {
    json!({
        "version": "4", "groupKey": group_key, "truncatedAlerts": 0, "status": "firing", "receiver": "notimeter",
        "groupLabels": {"alertname": "HighCPU"}, "commonLabels": {"alertname": "HighCPU", "job": "node", "severity": "critical"},
        "commonAnnotations": {"summary": "High CPU"}, "externalURL": "http://alertmanager:9093",
        "alerts": alerts
    })
}

/// A group of `n` alerts of one user, unique per `seq` (so never a duplicate).
pub fn group_payload(seq: u64, user: &str, n: usize) -> Value {
    envelope(
        format!("{{}}:{{alertname=\"HighCPU\", user_id=\"{user}\"}}#{seq}"),
        (0..n).map(|i| alert(seq, user, i)).collect(),
    )
}

/// One alert for each of `users`: one message per user.
pub fn fanout_payload(seq: u64, users: &[String]) -> Value {
    envelope(
        format!("fanout#{seq}"),
        users
            .iter()
            .enumerate()
            .map(|(i, u)| alert(seq, u, i))
            .collect(),
    )
}

/// Posts `payloads` fan-out payloads over `users` (`per` users each, one
/// message each) with `clients` clients; a 503 (ingest busy) is retried, as
/// Alertmanager does; fails if a payload is refused otherwise.
pub async fn post_fanout(
    http: &reqwest::Client,
    url: &str,
    users: &[String],
    (per, clients): (usize, usize),
    payloads: u64,
    seq_base: u64,
) -> Result<()> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let users = std::sync::Arc::new(users.to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (http, url, next, users) = (http.clone(), url.to_owned(), next.clone(), users.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= payloads {
                    return anyhow::Ok(());
                }
                let start = (n as usize * per) % users.len();
                let batch: Vec<String> = (0..per)
                    .map(|k| users[(start + k) % users.len()].clone())
                    .collect();
                let body = fanout_payload(seq_base + n, &batch);
                loop {
                    let r = http.post(&url).json(&body).send().await?;
                    if r.status().is_success() {
                        break;
                    }
                    if r.status().as_u16() != 503 {
                        bail!("a fan-out payload was refused: {}", r.status());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Alertmanager 0.25 on a free port with `config` (YAML) written to `dir`,
/// its own storage and no cluster; answers the process and its base URL.
pub async fn alertmanager(
    dir: &Path,
    config: &str,
    http: &reqwest::Client,
) -> Result<(Process, String)> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("am-live.yml");
    std::fs::write(&file, config)?;
    let addr = free_addr()?;
    let am = Process(
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting prometheus-alertmanager (apt-get install prometheus-alertmanager)",
            )?,
    );
    let base = format!("http://{addr}");
    for _ in 0..200 {
        if http
            .get(format!("{base}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((am, base));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("Alertmanager did not become ready")
}

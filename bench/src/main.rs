//! notimeter-bench: measures a release build of notimeter on this machine.
//!
//! It starts notimeter (a subprocess, fresh database), a local sink that
//! answers 200 at once, creates users with one webhook channel each, and then:
//!
//! 1. throughput: `--concurrency` clients post realistic Alertmanager payloads
//!    (a group of `--alerts` alerts of one user) as fast as they are answered;
//! 2. latency: an open-loop load of `--rate` requests per second, p50/p99;
//! 3. delivery: a burst of fan-out payloads (one alert for each of 20 users)
//!    and the time until the sink has every message;
//! 4. peak RSS of the notimeter process (VmHWM).
//!
//! The same throughput and latency runs then hit a null server (this binary's
//! `null-server` verb: same HTTP stack, parses the payload, answers 200, no
//! store), so the cost of durability shows as a ratio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Benchmarks a release build of notimeter")]
struct Args {
    #[command(subcommand)]
    verb: Option<Verb>,
    /// The notimeter binary to measure.
    #[arg(long, default_value = "target/release/notimeter")]
    notimeter: PathBuf,
    /// Database to run against.
    #[arg(long, value_enum, default_value = "sqlite")]
    database: Database,
    /// PostgreSQL server for --database postgres (a fresh database is created on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Seconds per throughput and latency run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Alerts per payload in the throughput and latency runs.
    #[arg(long, default_value_t = 10)]
    alerts: usize,
    /// Users (each with one webhook channel).
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Fan-out payloads in the delivery run (20 messages each).
    #[arg(long, default_value_t = 1000)]
    fanout_payloads: usize,
}

#[derive(Subcommand)]
enum Verb {
    /// Serve a handler that parses the webhook payload and answers 200 without a store.
    NullServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Database {
    Sqlite,
    Postgres,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.verb {
        Some(Verb::NullServer { listen }) => runtime.block_on(null_server(listen)),
        None => runtime.block_on(run(args)),
    }
}

// ---- servers ------------------------------------------------------------------

async fn null_handler(body: axum::body::Bytes) -> (axum::http::StatusCode, &'static str) {
    match serde_json::from_slice::<notimeter::domain::alert::Envelope>(&body) {
        Ok(envelope) => {
            let parsed: Vec<_> = envelope
                .alerts
                .iter()
                .map(notimeter::domain::alert::parse_alert)
                .collect();
            std::hint::black_box(parsed);
            (axum::http::StatusCode::OK, "{\"status\":\"accepted\"}")
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, "{}"),
    }
}

async fn null_server(listen: SocketAddr) -> Result<()> {
    let app = axum::Router::new().route("/v1/alertmanager", axum::routing::post(null_handler));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The local sink: answers 200 `ok` at once and counts what it got.
async fn start_sink(count: Arc<AtomicU64>) -> Result<SocketAddr> {
    let app = axum::Router::new().fallback(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Process {
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_ready(http: &reqwest::Client, base: &str, path: &str) -> Result<()> {
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

/// A fresh database; for PostgreSQL also its name, to drop it afterwards.
async fn database_url(args: &Args, dir: &std::path::Path) -> Result<(String, Option<String>)> {
    match args.database {
        Database::Sqlite => Ok((format!("sqlite://{}", dir.join("bench.db").display()), None)),
        Database::Postgres => {
            use sqlx::Connection;
            let name = format!("notimeter_bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&args.postgres_url).await?;
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await?;
            let mut url = url::Url::parse(&args.postgres_url)?;
            url.set_path(&name);
            Ok((url.to_string(), Some(name)))
        }
    }
}

// ---- payloads -----------------------------------------------------------------

/// One alert as Alertmanager sends it, unique per (`seq`, `i`).
fn alert(seq: u64, user: usize, i: usize) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": "HighCPU", "user_id": format!("user{user}"), "instance": format!("host-{i}:9100"),
                   "job": "node", "severity": "critical"},
        "annotations": {"description": format!("CPU on host-{i} is above 90% for 5 minutes"), "summary": "High CPU"},
        "startsAt": "2026-11-24T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=node_cpu",
        "fingerprint": format!("{seq:x}-{i}")
    })
}

fn envelope(group_key: String, alerts: Vec<Value>) -> Value {
    json!({
        "version": "4", "groupKey": group_key, "truncatedAlerts": 0, "status": "firing", "receiver": "notimeter",
        "groupLabels": {"alertname": "HighCPU"}, "commonLabels": {"alertname": "HighCPU", "job": "node", "severity": "critical"},
        "commonAnnotations": {"summary": "High CPU"}, "externalURL": "http://alertmanager:9093",
        "alerts": alerts
    })
}

/// A group of `n` alerts of one user, unique per `seq` (so never a duplicate).
fn group_payload(seq: u64, user: usize, n: usize) -> Value {
    envelope(
        format!("{{}}:{{alertname=\"HighCPU\", user_id=\"user{user}\"}}#{seq}"),
        (0..n).map(|i| alert(seq, user, i)).collect(),
    )
}

/// One alert for each of `users` users: `users` messages.
fn fanout_payload(seq: u64, users: usize) -> Value {
    envelope(
        format!("fanout#{seq}"),
        (0..users).map(|u| alert(seq, u, u)).collect(),
    )
}

// ---- runs ---------------------------------------------------------------------

struct Throughput {
    requests: u64,
    alerts: u64,
    errors: u64,
    elapsed: Duration,
}

async fn throughput(http: &reqwest::Client, url: &str, args: &Args, seq_base: u64) -> Throughput {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(seq_base));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (http, url, ok, errors, seq) = (
            http.clone(),
            url.to_owned(),
            ok.clone(),
            errors.clone(),
            seq.clone(),
        );
        let (users, alerts) = (args.users, args.alerts);
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body =
                    serde_json::to_vec(&group_payload(n, n as usize % users, alerts)).unwrap();
                match http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    let requests = ok.load(Ordering::Relaxed);
    Throughput {
        requests,
        alerts: requests * args.alerts as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    sent: u64,
    errors: u64,
}

async fn latency(http: &reqwest::Client, url: &str, args: &Args, seq_base: u64) -> Latency {
    let histogram = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let total = args.rate * args.seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        let (http, url, histogram, errors) = (
            http.clone(),
            url.to_owned(),
            histogram.clone(),
            errors.clone(),
        );
        let body = serde_json::to_vec(&group_payload(
            seq_base + i,
            i as usize % args.users,
            args.alerts,
        ))
        .unwrap();
        tasks.spawn(async move {
            // Open loop: time from when the request was due, so queueing counts.
            let t = Instant::now();
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let us = t.elapsed().as_micros() as u64;
            match r {
                Ok(r) if r.status().is_success() => {
                    histogram.lock().unwrap().record(us.max(1)).unwrap()
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let h = histogram.lock().unwrap();
    Latency {
        p50_ms: h.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
        sent: total,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Posts fan-out payloads (one alert for each of 20 users: 20 messages each)
/// and measures until the sink has received every message.
async fn delivery(
    http: &reqwest::Client,
    url: &str,
    args: &Args,
    sink_count: &AtomicU64,
) -> Result<(u64, Duration)> {
    let before = sink_count.load(Ordering::Relaxed);
    let started = Instant::now();
    let per = 20.min(args.users);
    let mut clients = tokio::task::JoinSet::new();
    let next = Arc::new(AtomicU64::new(0));
    let payloads = args.fanout_payloads as u64;
    for _ in 0..args.concurrency.min(16) {
        let (http, url, next) = (http.clone(), url.to_owned(), next.clone());
        clients.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= payloads {
                    break;
                }
                let body = fanout_payload((1 << 48) + n, per);
                let _ = http.post(&url).json(&body).send().await;
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let expected = payloads * per as u64;
    let limit = Instant::now() + Duration::from_secs(600);
    while sink_count.load(Ordering::Relaxed) - before < expected {
        if Instant::now() > limit {
            bail!("delivery did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((expected, started.elapsed()))
}

async fn run(args: Args) -> Result<()> {
    let notimeter = std::fs::canonicalize(&args.notimeter).with_context(|| {
        format!(
            "{} not found: build it with cargo build --release",
            args.notimeter.display()
        )
    })?;
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let sink_count = Arc::new(AtomicU64::new(0));
    let sink = start_sink(sink_count.clone()).await?;

    let listen = free_addr()?;
    let (db, pg_database) = database_url(&args, dir.path()).await?;
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\ndatabase_url = \"{db}\"\nreports_dir = \"{}\"\noutbound_allow = [\"127.0.0.0/8\"]\n",
            dir.path().join("reports").display()
        ),
    )?;
    let server = Process(
        Command::new(&notimeter)
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting notimeter")?,
    );
    let base = format!("http://{listen}");
    wait_ready(&http, &base, "/readyz").await?;
    for u in 0..args.users {
        let r = http
            .put(format!("{base}/v1/users/user{u}/channels/hook"))
            .json(
                &json!({"type": "webhook", "settings": {"url": format!("http://{sink}/user{u}")}}),
            )
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating a channel failed: {}", r.text().await?);
        }
    }
    let ingest = format!("{base}/v1/alertmanager");
    let db_name = if args.database == Database::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    println!(
        "notimeter-bench: {db_name}, {} alerts/payload, {} users, {} s runs, {} cores",
        args.alerts,
        args.users,
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let t = throughput(&http, &ingest, &args, 0).await;
    let durable_aps = t.alerts as f64 / t.elapsed.as_secs_f64();
    println!(
        "throughput  notimeter: {:>8.0} alerts/s accepted ({:.0} req/s, {} errors)",
        durable_aps,
        t.requests as f64 / t.elapsed.as_secs_f64(),
        t.errors
    );
    // Let the backlog drain before the latency run.
    let drain_started = Instant::now();
    while sink_count.load(Ordering::Relaxed) < t.requests {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if drain_started.elapsed() > Duration::from_secs(600) {
            bail!("backlog did not drain");
        }
    }
    let l = latency(&http, &ingest, &args, 1 << 40).await;
    println!(
        "latency     notimeter: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms at {} req/s ({} sent, {} errors)",
        l.p50_ms, l.p99_ms, l.max_ms, args.rate, l.sent, l.errors
    );
    let (messages, took) = delivery(&http, &ingest, &args, &sink_count).await?;
    println!(
        "delivery    notimeter: {:>8.0} messages/s delivered ({messages} messages in {:.2} s, accepted to received)",
        messages as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let rss = server.peak_rss_mb().unwrap_or(f64::NAN);
    println!("memory      notimeter: peak RSS {rss:.1} MB");
    drop(server);
    if let Some(name) = pg_database {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&args.postgres_url).await?;
        sqlx::Executor::execute(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
        )
        .await?;
    }

    // The same load against a handler that parses and answers without a store.
    let null_addr = free_addr()?;
    let null = Process(
        Command::new(std::env::current_exe()?)
            .args(["null-server", "--listen", &null_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let null_url = format!("http://{null_addr}/v1/alertmanager");
    wait_ready(&http, &format!("http://{null_addr}"), "/").await?;
    let tn = throughput(&http, &null_url, &args, 2 << 40).await;
    let null_aps = tn.alerts as f64 / tn.elapsed.as_secs_f64();
    println!("throughput  null:      {null_aps:>8.0} alerts/s answered");
    let ln = latency(&http, &null_url, &args, 3 << 40).await;
    println!(
        "latency     null:      p50 {:.2} ms, p99 {:.2} ms at {} req/s",
        ln.p50_ms, ln.p99_ms, args.rate
    );
    drop(null);
    println!(
        "durability cost: {:.2}x the null handler's throughput, p99 {:.2} ms vs {:.2} ms",
        durable_aps / null_aps,
        l.p99_ms,
        ln.p99_ms
    );
    Ok(())
}

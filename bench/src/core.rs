//! The core path, measured as issue 10 asks: one-alert Alertmanager payloads
//! for 1,000 users whose webhooks are distinct URLs on a local sink, 32
//! clients, while the dispatcher delivers; ingest latency at a fixed rate;
//! delivery of a queued backlog to distinct URLs and to one shared URL;
//! peak RSS. Then the same ingest load against a handler that parses the
//! payload and answers 200 without a store, and the ratio; then the
//! no-store forwarder and the durable forwarder (see `durable`) under the
//! same load, the least a design that delivers (and stores) costs here.
//!
//! `--history N` seeds N finished messages (with their attempts) before the
//! run and `--channels 3` gives every user two more channels that match
//! nothing, so the same figures can be read against a large store.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::common::{
    execute, free_addr, group_payload, machine_busy, post_fanout, seed_channels, series,
    wait_ready, Common, Created, Database, Notimeter, Process,
};

#[derive(Args)]
pub struct CoreArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds per throughput and latency run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Alerts per payload in the throughput and latency runs.
    #[arg(long, default_value_t = 1)]
    pub alerts: usize,
    /// Users, each with a webhook channel at a URL of its own.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Channels per user: the first matches every alert, the others none.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Messages queued (the sink held closed), then delivered to distinct URLs.
    #[arg(long, default_value_t = 100_000)]
    pub queued: u64,
    /// Messages queued for 1,000 channels sharing one URL, then delivered (0 skips).
    #[arg(long, default_value_t = 100_000)]
    pub shared: u64,
    /// Finished messages (each with one attempt) in the store before the run.
    #[arg(long, default_value_t = 0)]
    pub history: u64,
    /// Skip the no-store handler (when only notimeter's figures are wanted).
    #[arg(long)]
    pub no_null: bool,
    /// More `[dispatch]` settings for notimeter, `key = value` each (say
    /// `--dispatch 'workers = 128'`), to compare them.
    #[arg(long)]
    pub dispatch: Vec<String>,
}

/// Settings for the bench: sends held by the closed sink must not time out
/// while a backlog is queued behind them.
const SETTINGS: &str = "[dispatch]\nsend_timeout = \"120s\"\nlease = \"240s\"\n";

async fn null_handler(body: axum::body::Bytes) -> (axum::http::StatusCode, &'static str) {
    // Parses like notimeter: the envelope, and each alert on its own.
    match serde_json::from_slice::<notimeter::domain::alert::Envelope>(&body) {
        Ok(envelope) => {
            std::hint::black_box(envelope);
            (axum::http::StatusCode::OK, "{\"status\":\"accepted\"}")
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, "{}"),
    }
}

/// Parses the webhook payload like notimeter and answers 200, with no store.
pub async fn null_server(listen: SocketAddr) -> Result<()> {
    serve_ingest(
        listen,
        axum::Router::new().route("/v1/alertmanager", axum::routing::post(null_handler)),
    )
    .await
}

/// Serves `app`, whose webhook route is `/v1/alertmanager`, on `listen`.
pub async fn serve_ingest(listen: SocketAddr, app: axum::Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Where the forwarders post, and with what.
pub struct Forward {
    http: reqwest::Client,
    sink: String,
}

impl Forward {
    /// Posting to the sink at `sink` (`http://host:port`).
    pub fn new(sink: String) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()?,
            sink,
        })
    }

    /// Posts `body` to `user`'s URL on the sink (`user7` → `/u7`); answers
    /// whether the sink took it.
    pub async fn post(&self, user: &str, body: axum::body::Bytes) -> bool {
        let url = format!("{}/u{}", self.sink, user.trim_start_matches("user"));
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        sent.is_ok_and(|r| r.status().is_success())
    }
}

/// Parses like the no-store handler, then posts the payload to each alert's
/// user's URL on the sink (`user7` → `/u7`) and answers once the sink has
/// answered: delivery with no store at all, the ceiling of any design that
/// stores and forwards on this machine.
async fn forward_handler(
    axum::extract::State(f): axum::extract::State<Arc<Forward>>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, &'static str) {
    let Ok(envelope) = serde_json::from_slice::<notimeter::domain::alert::Envelope>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "{}");
    };
    for alert in envelope.alerts.iter().flatten() {
        let user = alert.labels.get("user_id").unwrap_or_default();
        if !f.post(user, body.clone()).await {
            return (axum::http::StatusCode::BAD_GATEWAY, "{}");
        }
    }
    (axum::http::StatusCode::OK, "{\"status\":\"accepted\"}")
}

/// The forwarder (see `forward_handler`), posting to `sink` (`http://host:port`).
pub async fn forward_server(listen: SocketAddr, sink: String) -> Result<()> {
    let app = axum::Router::new()
        .route("/v1/alertmanager", axum::routing::post(forward_handler))
        .with_state(Arc::new(Forward::new(sink)?));
    serve_ingest(listen, app).await
}

/// Starts the forwarder (`forward-server`, see `forward_handler`) posting
/// to the sink at `sink`, or with `database` the durable forwarder
/// (`durable-forward-server` on that migrated database, see `durable`);
/// answers it and its ingest URL once it is ready.
pub async fn start_forwarder(
    http: &reqwest::Client,
    sink: SocketAddr,
    database: Option<&str>,
) -> Result<(Process, String)> {
    let listen = free_addr()?;
    let (listen_arg, sink_arg) = (listen.to_string(), format!("http://{sink}"));
    let mut args = vec![
        "forward-server",
        "--listen",
        &listen_arg,
        "--sink",
        &sink_arg,
    ];
    if let Some(database) = database {
        args[0] = "durable-forward-server";
        args.extend(["--database", database]);
    }
    let forward = Process(
        Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_ready(http, &format!("http://{listen}"), "/").await?;
    Ok((forward, format!("http://{listen}/v1/alertmanager")))
}

/// The durable forwarder (see `durable`) running on a migrated database of
/// its own in `dir`; the process stops before its database is dropped.
pub struct DurableForwarder {
    pub process: Process,
    pub url: String,
    _db: Created,
}

impl DurableForwarder {
    /// Creates and migrates its database, then starts it posting to `sink`.
    pub async fn start(
        common: &Common,
        dir: &Path,
        http: &reqwest::Client,
        sink: SocketAddr,
    ) -> Result<Self> {
        let dir = dir.join("durable");
        std::fs::create_dir(&dir)?;
        let db = Created::new(common, &dir, "").await?;
        db.migrate()?;
        let (process, url) = start_forwarder(http, sink, Some(&db.database_url)).await?;
        Ok(Self {
            process,
            url,
            _db: db,
        })
    }
}

/// The local sink: answers 200 `ok` and counts what it got. While its gate
/// is closed it holds every request (a backlog builds up behind them).
pub struct Sink {
    pub addr: SocketAddr,
    pub count: Arc<AtomicU64>,
    gate: watch::Sender<bool>,
}

impl Sink {
    pub async fn start() -> Result<Self> {
        let count = Arc::new(AtomicU64::new(0));
        let (gate, open) = watch::channel(true);
        let counted = count.clone();
        let app = axum::Router::new().fallback(move || {
            let (count, mut open) = (counted.clone(), open.clone());
            async move {
                let _ = open.wait_for(|open| *open).await;
                count.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { addr, count, gate })
    }

    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn hold(&self) {
        self.gate.send_replace(false);
    }

    pub fn open(&self) {
        self.gate.send_replace(true);
    }
}

/// A sink on `listen` that answers every request 200 at once, until killed.
pub async fn sink_server(listen: SocketAddr) -> Result<()> {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The count sink used by other benchmarks.
pub async fn start_sink(count: Arc<AtomicU64>) -> Result<SocketAddr> {
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

/// A closed-loop load: `concurrency` clients posting payloads of `alerts`
/// alerts of one of `users` users, for `seconds`.
pub struct Load {
    pub seconds: u64,
    pub alerts: usize,
    pub users: usize,
    pub concurrency: usize,
}

impl CoreArgs {
    fn load(&self) -> Load {
        Load {
            seconds: self.seconds,
            alerts: self.alerts,
            users: self.users,
            concurrency: self.concurrency,
        }
    }
}

pub struct Throughput {
    pub requests: u64,
    pub alerts: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Mean time a successful request took, in ms.
    pub mean_ms: f64,
}

pub async fn throughput(
    http: &reqwest::Client,
    url: &str,
    args: &Load,
    seq_base: u64,
) -> Throughput {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let ok = Arc::new(AtomicU64::new(0));
    let busy_us = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(seq_base));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (http, url, ok, busy_us, errors, seq) = (
            http.clone(),
            url.to_owned(),
            ok.clone(),
            busy_us.clone(),
            errors.clone(),
            seq.clone(),
        );
        let (users, alerts) = (args.users as u64, args.alerts);
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body =
                    serde_json::to_vec(&group_payload(n, &format!("user{}", n % users), alerts))
                        .unwrap();
                let t = Instant::now();
                match http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        busy_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
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
        mean_ms: busy_us.load(Ordering::Relaxed) as f64 / 1000.0 / requests.max(1) as f64,
    }
}

/// The same closed-loop load generated by wrk (one-alert payloads from
/// `bench/wrk/alerts.lua`), as issue 10 measured it: a load generator much
/// lighter than this process's own client. None when wrk is not installed
/// (`apt-get install wrk`).
pub fn wrk_throughput(url: &str, args: &Load, dir: &Path) -> Result<Option<Throughput>> {
    if args.alerts != 1 {
        return Ok(None);
    }
    let script = dir.join("alerts.lua");
    std::fs::write(&script, include_str!("../wrk/alerts.lua"))?;
    let out = match Command::new("wrk")
        .args(["-t2", &format!("-c{}", args.concurrency)])
        .arg(format!("-d{}s", args.seconds))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .env("USERS", args.users.to_string())
        .output()
    {
        Ok(out) => out,
        Err(_) => return Ok(None),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let number = |line: &str, word: usize| -> Option<f64> {
        let l = text.lines().find(|l| l.trim_start().starts_with(line))?;
        let w = l.split_whitespace().nth(word)?;
        let (digits, unit): (String, String) = (
            w.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect(),
            w.chars()
                .skip_while(|c| c.is_ascii_digit() || *c == '.')
                .collect(),
        );
        let v: f64 = digits.parse().ok()?;
        Some(match unit.as_str() {
            "us" => v / 1000.0,
            "s" => v * 1000.0,
            _ => v,
        })
    };
    let Some(total) = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
    else {
        bail!("wrk printed no result: {text}");
    };
    let refused = number("Non-2xx", 4).unwrap_or(0.0) as u64;
    let timeouts = text
        .lines()
        .find(|l| l.contains("Socket errors"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let requests = total.saturating_sub(refused);
    Ok(Some(Throughput {
        requests,
        alerts: requests,
        errors: refused + timeouts,
        elapsed: Duration::from_secs(args.seconds),
        mean_ms: number("Latency", 1).unwrap_or(f64::NAN),
    }))
}

/// wrk where it is installed, this process's client otherwise.
async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    args: &Load,
    seq_base: u64,
    dir: &Path,
) -> Result<(Throughput, &'static str)> {
    match wrk_throughput(url, args, dir)? {
        Some(t) => Ok((t, "wrk")),
        None => Ok((throughput(http, url, args, seq_base).await, "reqwest")),
    }
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    sent: u64,
    errors: u64,
}

async fn latency(http: &reqwest::Client, url: &str, args: &CoreArgs, seq_base: u64) -> Latency {
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
            &format!("user{}", i % args.users as u64),
            args.alerts,
        ))
        .unwrap();
        tasks.spawn(async move {
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

/// The latency run against `url` (see [`latency`]), printed as `who`'s;
/// returns once the sink has every payload it accepted.
async fn latency_delivered(
    http: &reqwest::Client,
    url: &str,
    args: &CoreArgs,
    seq_base: u64,
    sink: &Sink,
    who: &str,
) -> Result<()> {
    let before = sink.received();
    let l = latency(http, url, args, seq_base).await;
    println!(
        "latency     {who}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms at {} req/s ({} sent, {} errors)",
        l.p50_ms, l.p99_ms, l.max_ms, args.rate, l.sent, l.errors
    );
    wait_count(
        &sink.count,
        before + l.sent - l.errors,
        "delivering what the latency run sent",
    )
    .await
}

pub async fn wait_count(count: &AtomicU64, target: u64, what: &str) -> Result<()> {
    let limit = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < target {
        if Instant::now() > limit {
            bail!("{what} did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Seeds `count` finished messages (delivered, a few failed), each with one
/// attempt, spread over `users`' channel `c`, final before now: history that
/// the claim, record and usage paths must not slow down with.
async fn seed_history(database_url: &str, count: u64, users: usize) -> Result<()> {
    let now = notimeter::clock::now_ms();
    let payload = "{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"labels\":{\"alertname\":\"HighCPU\",\"severity\":\"critical\"},\"annotations\":{}}]}";
    let user = if database_url.starts_with("sqlite:") {
        format!("'user' || (n % {users})")
    } else {
        format!("'user' || (n % {users})::text")
    };
    // In chunks of a million, each its own statement (bounded memory and WAL).
    let chunk = 1_000_000;
    let mut done = 0;
    while done < count {
        let n = chunk.min(count - done);
        let (with, from) = series(database_url, n);
        execute(database_url, &format!(
            "{with}INSERT INTO messages (user_id, channel_id, integration, payload, alert_count, alertnames, state, \
               created_at, due_at, attempts, final_at, period_id, group_key) \
             SELECT {user}, 'c', 'webhook', '{payload}', 1, 'HighCPU', CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'delivered' END, \
               {now} - 86400000 + n, {now} - 86400000 + n, 1, {now} - 86400000 + n + 5, \
               (SELECT id FROM periods WHERE end_at IS NULL AND user_id IS NULL), 'g' {from}",
        )).await?;
        done += n;
    }
    execute(
        database_url,
        "INSERT INTO attempts (message_id, attempt, started_at, duration_ms, result, status_code) \
         SELECT id, 1, created_at, 5, CASE WHEN state = 'delivered' THEN 'success' ELSE 'serverError' END, \
           CASE WHEN state = 'delivered' THEN 200 ELSE 500 END FROM messages",
    )
    .await?;
    // PostgreSQL's autovacuum would have analysed a table this size; SQLite
    // has statistics only where someone ran ANALYZE, which notimeter does not.
    // Then a checkpoint, so that writing back the seed's gigabyte of WAL does
    // not fall into the measurement.
    if database_url.starts_with("sqlite:") {
        execute(database_url, "PRAGMA wal_checkpoint(TRUNCATE)").await
    } else {
        execute(database_url, "VACUUM ANALYZE").await?;
        execute(database_url, "CHECKPOINT").await
    }
}

/// notimeter on a fresh database whose users' channels post to `url(user)`.
async fn launch(
    args: &CoreArgs,
    dir: &Path,
    http: &reqwest::Client,
    users: usize,
    channels: usize,
    url: impl Fn(usize) -> String,
) -> Result<Notimeter> {
    let settings = args
        .dispatch
        .iter()
        .fold(SETTINGS.to_owned(), |s, line| s + line + "\n");
    let created = Created::new(&args.common, dir, &settings).await?;
    created.migrate()?;
    let seeding = Instant::now();
    seed_channels(&created.database_url, users, channels, url).await?;
    if args.history > 0 {
        seed_history(&created.database_url, args.history, users).await?;
    }
    if users * channels > 10_000 || args.history > 0 {
        println!(
            "seeded      {} channels and {} finished messages in {:.1} s",
            users * channels,
            args.history,
            seeding.elapsed().as_secs_f64()
        );
    }
    created.spawn(http).await
}

/// Holds the sink, queues `messages` (fan-out payloads of up to 1,000 users),
/// opens the sink and answers messages delivered per second.
async fn backlog(
    http: &reqwest::Client,
    server: &Notimeter,
    sink: &Sink,
    users: usize,
    messages: u64,
    seq_base: u64,
) -> Result<(f64, Duration, f64)> {
    let users: Vec<String> = (0..users).map(|u| format!("user{u}")).collect();
    let per = users.len().min(1000);
    let payloads = messages.div_ceil(per as u64);
    let before = sink.received();
    sink.hold();
    let queued = Instant::now();
    post_fanout(
        http,
        &server.ingest_url(),
        &users,
        (per, 8),
        payloads,
        seq_base,
    )
    .await?;
    let queueing = queued.elapsed();
    let started = Instant::now();
    let busy = machine_busy()?;
    sink.open();
    let total = payloads * per as u64;
    wait_count(&sink.count, before + total, "delivering the backlog").await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    Ok((
        rate,
        queueing,
        per_payload_us(machine_busy()? - busy, total),
    ))
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

pub async fn run(args: CoreArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let sink = Sink::start().await?;
    println!(
        "notimeter-bench core: {}, {} alert(s)/payload, {} users × {} channel(s), {} clients, {} finished messages of history, {} s runs, {} cores",
        args.common.database_name(),
        args.alerts,
        args.users,
        args.channels,
        args.concurrency,
        args.history,
        args.seconds,
        cores()
    );
    let addr = sink.addr;
    let server = launch(&args, dir.path(), &http, args.users, args.channels, |u| {
        format!("http://{addr}/u{u}")
    })
    .await?;
    let ingest = server.ingest_url();

    let before = sink.received();
    let busy = machine_busy()?;
    let (t, generator) = closed_loop(&http, &ingest, &args.load(), 0, dir.path()).await?;
    let durable_cpu = per_payload_us(machine_busy()? - busy, t.requests);
    let during = sink.received() - before;
    let durable_rps = t.requests as f64 / t.elapsed.as_secs_f64();
    println!("load        {generator}, {} connections", args.concurrency);
    println!(
        "ingest      notimeter: {durable_rps:>8.0} payloads/s accepted, mean {:.2} ms ({} errors); {:.0} messages/s delivered meanwhile",
        t.mean_ms,
        t.errors,
        during as f64 / t.elapsed.as_secs_f64()
    );
    let drained = Instant::now();
    wait_count(&sink.count, before + t.requests, "draining the backlog").await?;
    println!(
        "            backlog left at the end of the run delivered in {:.2} s",
        drained.elapsed().as_secs_f64()
    );
    latency_delivered(&http, &ingest, &args, 1 << 40, &sink, "notimeter").await?;
    let (rate, queueing, cpu) =
        backlog(&http, &server, &sink, args.users, args.queued, 1 << 44).await?;
    println!(
        "delivery    notimeter: {rate:>8.0} messages/s, {cpu:.1} µs of machine CPU a message, {} queued messages to distinct URLs (queued in {:.1} s)",
        args.queued,
        queueing.as_secs_f64()
    );
    let rss = server.stop().await?.unwrap_or(f64::NAN);

    let mut shared_rss = f64::NAN;
    if args.shared > 0 {
        let sub = dir.path().join("shared");
        std::fs::create_dir_all(&sub)?;
        let server = launch(&args, &sub, &http, 1000, 1, |_| {
            format!("http://{addr}/shared")
        })
        .await?;
        let (rate, queueing, cpu) =
            backlog(&http, &server, &sink, 1000, args.shared, 1 << 46).await?;
        println!(
            "delivery    notimeter: {rate:>8.0} messages/s, {cpu:.1} µs of machine CPU a message, {} queued messages of 1,000 channels sharing one URL, 8 in flight (queued in {:.1} s)",
            args.shared,
            queueing.as_secs_f64()
        );
        shared_rss = server.stop().await?.unwrap_or(f64::NAN);
    }
    println!("memory      notimeter: peak RSS {rss:.1} MB (shared-URL run {shared_rss:.1} MB)");

    if args.no_null {
        return Ok(());
    }
    let null_addr = free_addr()?;
    let null = Process(
        Command::new(std::env::current_exe()?)
            .args(["null-server", "--listen", &null_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let null_url = format!("http://{null_addr}/v1/alertmanager");
    wait_ready(&http, &format!("http://{null_addr}"), "/").await?;
    let busy = machine_busy()?;
    let (tn, _) = closed_loop(&http, &null_url, &args.load(), 2 << 40, dir.path()).await?;
    let null_cpu = per_payload_us(machine_busy()? - busy, tn.requests);
    let null_rps = tn.requests as f64 / tn.elapsed.as_secs_f64();
    println!(
        "ingest      no store:  {null_rps:>8.0} payloads/s answered, mean {:.2} ms",
        tn.mean_ms
    );
    let ln = latency(&http, &null_url, &args, 3 << 40).await;
    println!(
        "latency     no store:  p50 {:.2} ms, p99 {:.2} ms at {} req/s",
        ln.p50_ms, ln.p99_ms, args.rate
    );
    drop(null);
    // The same load against a forwarder that delivers each payload to the
    // sink before it answers, with no store: what delivery alone costs.
    let (forward, forward_url) = start_forwarder(&http, addr, None).await?;
    let before = sink.received();
    let busy = machine_busy()?;
    let (tf, _) = closed_loop(&http, &forward_url, &args.load(), 4 << 40, dir.path()).await?;
    let forward_cpu = per_payload_us(machine_busy()? - busy, tf.requests);
    let forward_rps = tf.requests as f64 / tf.elapsed.as_secs_f64();
    println!(
        "ingest      no store, delivering: {forward_rps:>8.0} payloads/s answered once delivered, mean {:.2} ms ({} delivered)",
        tf.mean_ms,
        sink.received() - before
    );
    drop(forward);
    // The same load against the durable forwarder (see `durable`): that
    // forwarder with `floor`'s statements run by one writer before it
    // answers, and each message made final once delivered. The least a
    // design that stores before answering costs here, delivering as it
    // takes more in, on a database of its own.
    let least = DurableForwarder::start(&args.common, dir.path(), &http, addr).await?;
    let least_url = least.url.clone();
    let before = sink.received();
    let busy = machine_busy()?;
    let (td, _) = closed_loop(&http, &least_url, &args.load(), 5 << 40, dir.path()).await?;
    let least_cpu = per_payload_us(machine_busy()? - busy, td.requests);
    let least_rps = td.requests as f64 / td.elapsed.as_secs_f64();
    println!(
        "ingest      durable forwarder: {least_rps:>8.0} payloads/s answered once stored, mean {:.2} ms ({} errors); {:.0} messages/s delivered meanwhile",
        td.mean_ms,
        td.errors,
        (sink.received() - before) as f64 / td.elapsed.as_secs_f64()
    );
    wait_count(
        &sink.count,
        before + td.requests - td.errors,
        "the durable forwarder delivering",
    )
    .await?;
    latency_delivered(
        &http,
        &least_url,
        &args,
        6 << 40,
        &sink,
        "durable forwarder",
    )
    .await?;
    drop(least);
    println!(
        "ratio       durable ingest ÷ no-store handler: {:.3} ({durable_rps:.0} ÷ {null_rps:.0} payloads/s)",
        durable_rps / null_rps
    );
    println!(
        "ratio       durable forwarder ÷ no-store handler: {:.3} ({least_rps:.0} ÷ {null_rps:.0} payloads/s); durable ingest ÷ durable forwarder: {:.3}",
        least_rps / null_rps,
        durable_rps / least_rps
    );
    println!(
        "ceiling     no store, delivering ÷ no-store handler: {:.3}; durable ingest ÷ that: {:.3}",
        forward_rps / null_rps,
        durable_rps / forward_rps
    );
    // What 0.20 leaves for storage: at that rate the machine's cores give
    // each payload cores ÷ rate of CPU, of which receiving and delivering it
    // with no store (the load generator and sink included) take what the
    // forwarder's run took. `notimeter-bench floor` measures the least that
    // storing a message costs, to compare with it.
    let target = 0.20 * null_rps;
    let budget = cores() as f64 * 1e6 / target - forward_cpu;
    println!(
        "cpu         machine CPU per payload: durable {durable_cpu:.1} µs, no store {null_cpu:.1} µs, no store delivering {forward_cpu:.1} µs, durable forwarder {least_cpu:.1} µs; storage costs durable's less no store delivering: {:.1} µs (the durable forwarder's: {:.1} µs)",
        durable_cpu - forward_cpu,
        least_cpu - forward_cpu
    );
    println!(
        "budget      at 0.20 ({target:.0} payloads/s) the {} cores give {:.1} µs per payload: storing a message may cost at most {:.1} µs of machine CPU",
        cores(),
        cores() as f64 * 1e6 / target,
        budget
    );
    // The floor in the same run: notimeter's outbox statements alone, as
    // many messages a cycle as the clients can put in one (each client
    // waits for its answer, so a cycle holds at most one payload of each).
    let per = args.concurrency * args.alerts;
    let floor = crate::floor::measure(&args.common, per, args.users as u64, args.seconds).await?;
    println!(
        "floor       the bare statements, {per} messages a cycle: {:.0} messages/s = {:.3} × the no-store handler, {:.1} µs of machine CPU a message",
        floor.rate(),
        floor.rate() / null_rps,
        floor.machine_us()
    );
    // One connection writes at a time: no implementation of these
    // statements takes more than `per` messages a cycle faster.
    if args.common.database == Database::Sqlite {
        println!(
            "bound       SQLite writes one transaction at a time: with these statements durable ingest ÷ no-store handler stays under {:.3} ({} 0.20)",
            floor.rate() / null_rps,
            if floor.rate() / null_rps < 0.20 { "below" } else { "not below" }
        );
    }
    // Both: the cores are the bound, receiving and delivering take what
    // the no-store forwarder took, storing at least what the floor takes.
    println!(
        "bound       {}: the bare statements cost {:.1} µs of machine CPU a message, the budget at 0.20 is {:.1} µs ({})",
        args.common.database_name(),
        floor.machine_us(),
        budget,
        if floor.machine_us() > budget { "over" } else { "within" }
    );
    // The durable forwarder with the cores fully used, at the CPU a payload
    // it took: how far a design of its kind could go.
    println!(
        "bound       the durable forwarder at {least_cpu:.1} µs of machine CPU a payload, the {} cores fully used: {:.0} payloads/s = {:.3} × the no-store handler",
        cores(),
        cores() as f64 * 1e6 / least_cpu,
        cores() as f64 * 1e6 / least_cpu / null_rps
    );
    Ok(())
}

/// Microseconds of `cpu` per payload of `payloads`.
fn per_payload_us(cpu: Duration, payloads: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / payloads.max(1) as f64
}

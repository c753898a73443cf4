//! The core path: alerts accepted per second, ingest latency at a fixed rate,
//! messages delivered per second, peak RSS; and the same load against a null
//! handler, so the cost of durability shows.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::common::{
    free_addr, group_payload, post_fanout, wait_ready, Common, Notimeter, Process,
};

#[derive(Args)]
pub struct CoreArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds per throughput and latency run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Alerts per payload in the throughput and latency runs.
    #[arg(long, default_value_t = 10)]
    pub alerts: usize,
    /// Users (each with one webhook channel).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Fan-out payloads in the delivery run (20 messages each).
    #[arg(long, default_value_t = 1000)]
    pub fanout_payloads: u64,
}

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
    let app = axum::Router::new().route("/v1/alertmanager", axum::routing::post(null_handler));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The local sink: answers 200 `ok` at once and counts what it got.
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
}

pub async fn throughput(
    http: &reqwest::Client,
    url: &str,
    args: &Load,
    seq_base: u64,
) -> Throughput {
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
        let (users, alerts) = (args.users as u64, args.alerts);
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body =
                    serde_json::to_vec(&group_payload(n, &format!("user{}", n % users), alerts))
                        .unwrap();
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

pub async fn run(args: CoreArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let sink_count = Arc::new(AtomicU64::new(0));
    let sink = start_sink(sink_count.clone()).await?;
    let server = Notimeter::start(&args.common, dir.path(), &http, "").await?;
    let users: Vec<String> = (0..args.users).map(|u| format!("user{u}")).collect();
    for u in &users {
        server
            .put_channel(
                &http,
                u,
                json!({"type": "webhook", "settings": {"url": format!("http://{sink}/{u}")}}),
            )
            .await?;
    }
    let ingest = server.ingest_url();
    println!(
        "notimeter-bench core: {}, {} alerts/payload, {} users, {} s runs, {} cores",
        args.common.database_name(),
        args.alerts,
        args.users,
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let t = throughput(&http, &ingest, &args.load(), 0).await;
    let durable_aps = t.alerts as f64 / t.elapsed.as_secs_f64();
    println!(
        "throughput  notimeter: {:>8.0} alerts/s accepted ({:.0} req/s, {} errors)",
        durable_aps,
        t.requests as f64 / t.elapsed.as_secs_f64(),
        t.errors
    );
    wait_count(&sink_count, t.requests, "draining the backlog").await?;
    let l = latency(&http, &ingest, &args, 1 << 40).await;
    println!(
        "latency     notimeter: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms at {} req/s ({} sent, {} errors)",
        l.p50_ms, l.p99_ms, l.max_ms, args.rate, l.sent, l.errors
    );
    wait_count(
        &sink_count,
        t.requests + l.sent - l.errors,
        "draining the backlog",
    )
    .await?;
    let before = sink_count.load(Ordering::Relaxed);
    let per = 20.min(args.users);
    let started = Instant::now();
    post_fanout(&http, &ingest, &users, per, args.fanout_payloads, 1 << 48).await;
    let messages = args.fanout_payloads * per as u64;
    wait_count(&sink_count, before + messages, "delivery").await?;
    let took = started.elapsed();
    println!(
        "delivery    notimeter: {:>8.0} messages/s delivered ({messages} messages in {:.2} s, accepted to received)",
        messages as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let rss = server.stop().await?.unwrap_or(f64::NAN);
    println!("memory      notimeter: peak RSS {rss:.1} MB");

    let null_addr = free_addr()?;
    let null = Process(
        Command::new(std::env::current_exe()?)
            .args(["null-server", "--listen", &null_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let null_url = format!("http://{null_addr}/v1/alertmanager");
    wait_ready(&http, &format!("http://{null_addr}"), "/").await?;
    let tn = throughput(&http, &null_url, &args.load(), 2 << 40).await;
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

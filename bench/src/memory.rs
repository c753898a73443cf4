//! Memory: notimeter's resident memory idle, under the normal load (the `core`
//! workload with one-alert payloads) and with large payloads posted at once
//! (16 × 20,000 alerts, each under 1 MiB), peak and after the load; and the
//! same for the no-store handler, in the same run.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axum::body::Bytes;
use clap::Args;
use serde_json::json;

use crate::common::{envelope, free_addr, wait_ready, Common, Notimeter, Process};
use crate::core::{start_sink, throughput, wait_count, Load};

#[derive(Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds of normal load.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Users (each with one webhook channel).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Concurrent clients of the normal load (one-alert payloads).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Large payloads posted at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Alerts per large payload (spread over the users; must fit in 1 MiB).
    #[arg(long, default_value_t = 20_000)]
    pub large_alerts: usize,
    /// Rounds of large payloads.
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// TOML appended to notimeter's settings, e.g. "max_concurrent_ingests = 4".
    #[arg(long, default_value = "")]
    pub settings: String,
}

const MIB: usize = 1024 * 1024;

/// `n` short alerts spread over `users` users, unique per `seq`: the shape of a
/// large notification (Alertmanager with `max_alerts: 0` and a wide group).
fn large_payload(seq: u64, users: usize, n: usize) -> Result<Bytes> {
    let alerts = (0..n)
        .map(|i| json!({"labels": {"user_id": format!("user{}", i % users), "i": i.to_string()}}))
        .collect();
    let body = serde_json::to_vec(&envelope(format!("large#{seq}"), alerts))?;
    if body.len() > MIB {
        bail!(
            "a payload of {n} alerts is {} bytes, over notimeter's 1 MiB limit",
            body.len()
        );
    }
    Ok(body.into())
}

#[derive(Default)]
struct LargeRun {
    accepted: AtomicU64,
    /// 503 answers (each retried after its Retry-After, as Alertmanager does).
    busy: AtomicU64,
    errors: AtomicU64,
}

/// Posts one payload until it is accepted, retrying 503s after `Retry-After`.
async fn post_until_accepted(http: &reqwest::Client, url: &str, body: Bytes, run: &LargeRun) {
    for _ in 0..600 {
        match http
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                run.accepted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) if r.status() == 503 => {
                run.busy.fetch_add(1, Ordering::Relaxed);
                let wait = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            _ => {
                run.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    run.errors.fetch_add(1, Ordering::Relaxed);
}

/// `rounds` times, `parallel` large payloads at once.
async fn large_rounds(http: &reqwest::Client, url: &str, args: &MemoryArgs) -> Result<LargeRun> {
    let run = Arc::new(LargeRun::default());
    for round in 0..args.rounds {
        let mut posts = tokio::task::JoinSet::new();
        for k in 0..args.parallel as u64 {
            let body = large_payload(
                round * args.parallel as u64 + k,
                args.users,
                args.large_alerts,
            )?;
            let (http, url, run) = (http.clone(), url.to_owned(), run.clone());
            posts.spawn(async move { post_until_accepted(&http, &url, body, &run).await });
        }
        while posts.join_next().await.is_some() {}
    }
    Ok(Arc::into_inner(run).unwrap_or_default())
}

/// Peak RSS during a phase and RSS once it is over, in MB.
struct Phase {
    peak: f64,
    after: f64,
}

struct Measured {
    idle: f64,
    normal: Phase,
    large: Phase,
    normal_rate: f64,
    large_run: LargeRun,
}

/// Runs the phases against one server; `sink` counts what notimeter delivered
/// (the no-store handler delivers nothing).
async fn measure(
    process: &Process,
    http: &reqwest::Client,
    url: &str,
    args: &MemoryArgs,
    sink: Option<&AtomicU64>,
    seq_base: u64,
) -> Result<Measured> {
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let idle = process.rss_mb().unwrap_or(f64::NAN);

    if !process.reset_peak_rss() {
        eprintln!("note: cannot reset VmHWM; peaks include the earlier phases");
    }
    let load = Load {
        seconds: args.seconds,
        alerts: 1,
        users: args.users,
        concurrency: args.concurrency,
    };
    let t = throughput(http, url, &load, seq_base).await;
    if let Some(count) = sink {
        wait_count(count, t.requests, "delivering the normal load").await?;
    }
    let normal_peak = process.peak_rss_mb().unwrap_or(f64::NAN);
    settle().await;
    let normal = Phase {
        peak: normal_peak,
        after: process.rss_mb().unwrap_or(f64::NAN),
    };

    process.reset_peak_rss();
    let before = sink.map(|c| c.load(Ordering::Relaxed)).unwrap_or(0);
    let large_run = large_rounds(http, url, args).await?;
    if let Some(count) = sink {
        let per_payload = args.users.min(args.large_alerts) as u64;
        let expected = before + large_run.accepted.load(Ordering::Relaxed) * per_payload;
        wait_count(count, expected, "delivering the large payloads").await?;
    }
    let large_peak = process.peak_rss_mb().unwrap_or(f64::NAN);
    settle().await;
    Ok(Measured {
        idle,
        normal,
        large: Phase {
            peak: large_peak,
            after: process.rss_mb().unwrap_or(f64::NAN),
        },
        normal_rate: t.alerts as f64 / t.elapsed.as_secs_f64(),
        large_run,
    })
}

fn print(who: &str, m: &Measured, args: &MemoryArgs, payload_mb: f64) {
    println!("idle        {who}: RSS {:.1} MB", m.idle);
    println!(
        "normal load {who}: peak RSS {:.1} MB, {:.1} MB after ({:.0} alerts/s, {} clients)",
        m.normal.peak, m.normal.after, m.normal_rate, args.concurrency
    );
    println!(
        "large       {who}: peak RSS {:.1} MB, {:.1} MB after ({} × {} payloads of {} alerts, {:.2} MB each: {} accepted, {} answers 503 retried, {} errors)",
        m.large.peak,
        m.large.after,
        args.rounds,
        args.parallel,
        args.large_alerts,
        payload_mb,
        m.large_run.accepted.load(Ordering::Relaxed),
        m.large_run.busy.load(Ordering::Relaxed),
        m.large_run.errors.load(Ordering::Relaxed),
    );
}

pub async fn run(args: MemoryArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let payload_mb = large_payload(0, args.users, args.large_alerts)?.len() as f64 / 1e6;
    println!(
        "notimeter-bench memory: {}, {} users, normal load {} s × {} clients, large: {} rounds of {} × {} alerts ({payload_mb:.2} MB), {} cores",
        args.common.database_name(),
        args.users,
        args.seconds,
        args.concurrency,
        args.rounds,
        args.parallel,
        args.large_alerts,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let sink_count = Arc::new(AtomicU64::new(0));
    let sink = start_sink(sink_count.clone()).await?;
    let server = Notimeter::start(&args.common, dir.path(), &http, &args.settings).await?;
    for u in 0..args.users {
        server
            .put_channel(
                &http,
                &format!("user{u}"),
                json!({"type": "webhook", "settings": {"url": format!("http://{sink}/user{u}")}}),
            )
            .await?;
    }
    let started = Instant::now();
    let process = server.process.as_ref().expect("notimeter runs");
    let m = measure(
        process,
        &http,
        &server.ingest_url(),
        &args,
        Some(&sink_count),
        0,
    )
    .await?;
    print("notimeter", &m, &args, payload_mb);
    println!(
        "            notimeter: {} messages delivered in {:.0} s",
        sink_count.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    server.stop().await?;

    let null_addr = free_addr()?;
    let null = Process(
        Command::new(std::env::current_exe()?)
            .args(["null-server", "--listen", &null_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_ready(&http, &format!("http://{null_addr}"), "/").await?;
    let null_url = format!("http://{null_addr}/v1/alertmanager");
    let n = measure(&null, &http, &null_url, &args, None, 1 << 40).await?;
    print("null     ", &n, &args, payload_mb);
    drop(null);
    println!(
        "notimeter ÷ null: idle {:.1}x, normal load peak {:.1}x, large peak {:.1}x",
        m.idle / n.idle,
        m.normal.peak / n.normal.peak,
        m.large.peak / n.large.peak
    );
    Ok(())
}

//! Per integration: messages delivered per second to local servers that answer
//! as the real APIs do (email to a local SMTP server); and, side by side in one
//! run, the throughput of fast destinations alone and next to a slow and a
//! rate-limited one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Args;
use serde_json::{json, Value};

use crate::common::{free_addr, group_payload, post_fanout, Common, Notimeter, Process};

#[derive(Args)]
pub struct IntegrationArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users per integration, each with one channel (its own destination).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Messages per HTTP integration.
    #[arg(long, default_value_t = 5000)]
    pub messages: u64,
    /// Messages for email (the local SMTP server is the slow part).
    #[arg(long, default_value_t = 1000)]
    pub email_messages: u64,
    /// Fast webhook messages in each isolation run.
    #[arg(long, default_value_t = 20000)]
    pub isolation_messages: u64,
    /// Messages queued for the slow and for the rate-limited destination.
    #[arg(long, default_value_t = 500)]
    pub noisy_messages: u64,
    /// The SMTP server script (aiosmtpd, run with /usr/bin/python3).
    #[arg(long, default_value = "tests/smtp_server.py")]
    pub smtp_script: PathBuf,
}

const KINDS: [&str; 6] = ["webhook", "slack", "telegram", "sms", "slow", "limited"];

/// Counts per path kind and answers as the API behind it would.
async fn upstream(counts: Arc<HashMap<&'static str, AtomicU64>>, uri: Uri) -> Response {
    let path = uri.path();
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| path.starts_with(&format!("/{k}/")))
        .unwrap_or("webhook");
    if kind == "slow" {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    counts[kind].fetch_add(1, Ordering::Relaxed);
    match kind {
        "telegram" => (StatusCode::OK, r#"{"ok":true,"result":{"message_id":1}}"#).into_response(),
        "sms" => (
            StatusCode::CREATED,
            r#"{"sid":"SM1","status":"queued","num_segments":"1"}"#,
        )
            .into_response(),
        "limited" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "rate_limited",
        )
            .into_response(),
        _ => (StatusCode::OK, "ok").into_response(),
    }
}

struct Smtp {
    port: u16,
    dir: tempfile::TempDir,
    _process: Process,
}

impl Smtp {
    fn start(script: &Path) -> Result<Option<Self>> {
        let python = "/usr/bin/python3";
        let ok = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("email: skipped (apt-get install python3-aiosmtpd)");
            return Ok(None);
        }
        let port = free_addr()?.port();
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the SMTP server")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )?;
        Ok(Some(Self {
            port,
            dir,
            _process: Process(child),
        }))
    }

    fn count(&self) -> u64 {
        std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
                .count() as u64
            })
            .unwrap_or(0)
    }
}

async fn until(what: &str, target: u64, count: impl Fn() -> u64) -> Result<Duration> {
    let started = Instant::now();
    while count() < target {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{what}: {} of {target} after 10 minutes", count());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

fn channel(kind: &str, up: &str, user: &str) -> Value {
    match kind {
        "webhook" => {
            json!({"type": "webhook", "settings": {"url": format!("{up}/webhook/{user}")}})
        }
        "slack" => json!({"type": "slack", "settings": {"api_url": format!("{up}/slack/{user}")}}),
        "telegram" => {
            json!({"type": "telegram", "settings": {"bot_token": format!("1:{user}"), "chat_id": 1, "api_url": format!("{up}/telegram")}})
        }
        "sms" => json!({"type": "sms", "settings": {"to": "+14155550100"}}),
        "email" => json!({"type": "email", "settings": {"to": format!("{user}@example.com")}}),
        other => json!({"type": "webhook", "settings": {"url": format!("{up}/{other}/{user}")}}),
    }
}

pub async fn run(args: IntegrationArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let counts: Arc<HashMap<&'static str, AtomicU64>> =
        Arc::new(KINDS.iter().map(|k| (*k, AtomicU64::new(0))).collect());
    let app = {
        let counts = counts.clone();
        axum::Router::new().fallback(move |uri: Uri| upstream(counts.clone(), uri))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let up = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let smtp = Smtp::start(&args.smtp_script)?;
    let smtp_conf = smtp
        .as_ref()
        .map(|s| format!("[smtp]\nsmarthost = \"127.0.0.1:{}\"\nfrom = \"bench@example.com\"\ntls = \"none\"\n", s.port))
        .unwrap_or_default();
    // Raw throughput: per-destination pacing off (each user has its own destination anyway).
    let extra = format!(
        "[dispatch.pace]\nslack = \"0s\"\ntelegram = \"0s\"\n[sms]\napi_url = \"{up}/sms\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\nfrom = \"+15005550006\"\n{smtp_conf}"
    );
    let server = Notimeter::start(&args.common, dir.path(), &http, &extra).await?;
    let ingest = server.ingest_url();
    println!(
        "notimeter-bench integrations: {}, {} users per integration, {} cores",
        args.common.database_name(),
        args.users,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let mut seq = 1u64 << 50;
    let mut kinds: Vec<&str> = vec!["webhook", "slack", "telegram", "sms"];
    if smtp.is_some() {
        kinds.push("email");
    }
    let mut users_of = HashMap::new();
    for kind in &kinds {
        let users: Vec<String> = (0..args.users).map(|u| format!("{kind}{u}")).collect();
        for u in &users {
            server.put_channel(&http, u, channel(kind, &up, u)).await?;
        }
        users_of.insert(*kind, users);
    }
    for kind in &kinds {
        let messages = if *kind == "email" {
            args.email_messages
        } else {
            args.messages
        };
        let target = messages - messages % 20;
        let count = || match *kind {
            "email" => smtp.as_ref().map(Smtp::count).unwrap_or(0),
            k => counts[k].load(Ordering::Relaxed),
        };
        let before = count();
        let started = Instant::now();
        post_fanout(&http, &ingest, &users_of[kind], (20, 16), target / 20, seq).await?;
        seq += target;
        until(kind, before + target, count).await?;
        let took = started.elapsed();
        println!(
            "{kind:<9} {:>8.0} messages/s ({target} messages in {:.2} s)",
            target as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        );
    }

    // Fast webhooks alone, then the same next to a slow and a rate-limited destination.
    let webhook = || counts["webhook"].load(Ordering::Relaxed);
    let target = args.isolation_messages - args.isolation_messages % 20;
    let before = webhook();
    let started = Instant::now();
    post_fanout(
        &http,
        &ingest,
        &users_of["webhook"],
        (20, 16),
        target / 20,
        seq,
    )
    .await?;
    seq += target;
    until("fast alone", before + target, webhook).await?;
    let alone = target as f64 / started.elapsed().as_secs_f64();

    for noisy in ["slow", "limited"] {
        server
            .put_channel(&http, noisy, channel(noisy, &up, noisy))
            .await?;
    }
    let mut noise = tokio::task::JoinSet::new();
    for n in 0..args.noisy_messages {
        for noisy in ["slow", "limited"] {
            let (http, ingest) = (http.clone(), ingest.clone());
            let body = group_payload(seq + 2 * n + u64::from(noisy == "limited"), noisy, 1);
            noise.spawn(async move { http.post(ingest).json(&body).send().await.map(drop) });
        }
    }
    while noise.join_next().await.is_some() {}
    seq += 2 * args.noisy_messages;
    let before = webhook();
    let started = Instant::now();
    post_fanout(
        &http,
        &ingest,
        &users_of["webhook"],
        (20, 16),
        target / 20,
        seq,
    )
    .await?;
    until("fast next to noisy", before + target, webhook).await?;
    let beside = target as f64 / started.elapsed().as_secs_f64();
    println!(
        "isolation  fast webhooks alone: {alone:.0} messages/s | next to a slow (1 s) and a rate-limited (429) destination with {} queued each: {beside:.0} messages/s ({:.0}%); meanwhile slow got {}, rate-limited answered {} times",
        args.noisy_messages,
        100.0 * beside / alone,
        counts["slow"].load(Ordering::Relaxed),
        counts["limited"].load(Ordering::Relaxed)
    );
    let rss = server.stop().await?.unwrap_or(f64::NAN);
    println!("memory     peak RSS {rss:.1} MB");
    Ok(())
}

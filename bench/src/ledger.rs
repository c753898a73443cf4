//! The ledger at size: close a period holding 1,000,000 messages of 10,000
//! users and write its CSV; export the open period's CSV with 100,000 user ×
//! integration rows; stream the 1,000,000-row itemized export; peak RSS.
//!
//! The messages are written straight into the database (as delivery would
//! have left them) rather than sent through HTTP, which would take minutes.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use futures::StreamExt;

use crate::common::{execute, series, Common, Database, Notimeter};

#[derive(Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages in the period that is closed.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Users they belong to.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// User × integration rows in the open period that is exported.
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
}

const INTEGRATIONS: &str = "CASE n % 5 WHEN 0 THEN 'webhook' WHEN 1 THEN 'slack' WHEN 2 THEN 'telegram' WHEN 3 THEN 'email' ELSE 'sms' END";

fn concat(db: Database, a: &str, b: &str) -> String {
    match db {
        Database::Sqlite => format!("{a} || ({b})"),
        Database::Postgres => format!("{a} || ({b})::text"),
    }
}

pub async fn run(args: LedgerArgs) -> Result<()> {
    let db = args.common.database;
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::new();
    let server = Notimeter::start(&args.common, dir.path(), &http, "").await?;
    let usage: serde_json::Value = http
        .get(format!("{}/v1/usage", server.base))
        .send()
        .await?
        .json()
        .await?;
    let open = usage["period_id"].as_str().unwrap_or_default().to_owned();
    println!(
        "notimeter-bench ledger: {}, {} messages of {} users, {} open rows, {} cores",
        args.common.database_name(),
        args.messages,
        args.users,
        args.rows,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let seeding = Instant::now();
    let now = notimeter::clock::now_ms();
    let payload = "{\"version\":\"4\",\"status\":\"firing\",\"alerts\":[{\"labels\":{\"alertname\":\"HighCPU\",\"instance\":\"host-1:9100\",\"severity\":\"critical\"},\"annotations\":{\"description\":\"CPU on host-1 is above 90% for 5 minutes\"}}]}";
    let user = concat(db, "'user'", &format!("n % {}", args.users));
    execute(&server.database_url, &format!(
        "{}INSERT INTO messages (user_id, channel_id, integration, payload, alert_count, alertnames, state, created_at, due_at, \
           attempts, final_at, period_id) \
         SELECT {user}, 'c', {INTEGRATIONS}, '{payload}', 1, 'HighCPU', CASE WHEN n % 50 = 0 THEN 'failed' ELSE 'delivered' END, \
           {now}, {now}, 1, {now} - 1000000 + n, '{open}' {}",
        series(&server.database_url, args.messages).0,
        series(&server.database_url, args.messages).1
    )).await?;
    execute(&server.database_url, &format!(
        "INSERT INTO usage (period_id, user_id, integration, delivered, failed) \
         SELECT period_id, user_id, integration, SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END), \
                SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) \
         FROM messages WHERE period_id = '{open}' GROUP BY period_id, user_id, integration"
    )).await?;
    println!(
        "seeded     {} messages in {:.1} s",
        args.messages,
        seeding.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let r = http
        .post(format!("{}/v1/ledger/close", server.base))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("close failed: {}", r.text().await?);
    }
    let closed: serde_json::Value = r.json().await?;
    let took = started.elapsed();
    let id = closed["closed"]["period_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let report = std::fs::read(dir.path().join("reports").join(format!("{id}.csv")))?;
    let rss_close = server
        .process
        .as_ref()
        .and_then(|p| p.peak_rss_mb())
        .unwrap_or(f64::NAN);
    println!(
        "close      {:.2} s for {} messages: {} ledger rows, report {:.1} MB written with its SHA-256; peak RSS {rss_close:.1} MB",
        took.as_secs_f64(),
        args.messages,
        report.iter().filter(|b| **b == b'\n').count() - 1,
        report.len() as f64 / 1e6
    );

    let next = closed["opened"]["period_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let user = concat(db, "'user'", "n / 5");
    execute(&server.database_url, &format!(
        "{}INSERT INTO usage (period_id, user_id, integration, delivered, failed) SELECT '{next}', {user}, {INTEGRATIONS}, n % 97, n % 3 {}",
        series(&server.database_url, args.rows).0,
        series(&server.database_url, args.rows).1
    )).await?;
    let started = Instant::now();
    let csv = http
        .get(format!("{}/v1/ledger/current.csv", server.base))
        .send()
        .await?
        .bytes()
        .await?;
    let took = started.elapsed();
    let rss_export = server
        .process
        .as_ref()
        .and_then(|p| p.peak_rss_mb())
        .unwrap_or(f64::NAN);
    println!(
        "export     {:.2} s for the open period's CSV: {} rows, {:.1} MB; peak RSS {rss_export:.1} MB",
        took.as_secs_f64(),
        csv.iter().filter(|b| **b == b'\n').count() - 1,
        csv.len() as f64 / 1e6
    );

    let started = Instant::now();
    let mut body = http
        .get(format!("{}/v1/ledger/periods/{id}/items.csv", server.base))
        .send()
        .await?
        .bytes_stream();
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let took = started.elapsed();
    let rss_items = server
        .process
        .as_ref()
        .and_then(|p| p.peak_rss_mb())
        .unwrap_or(f64::NAN);
    println!(
        "itemized   {:.2} s to stream {} rows ({:.1} MB) of the closed period; peak RSS {rss_items:.1} MB",
        took.as_secs_f64(),
        lines - 1,
        bytes as f64 / 1e6
    );
    server.stop().await?;
    Ok(())
}

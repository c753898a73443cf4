//! End to end through a real Alertmanager: 1,000 users, one alert each,
//! `group_by: [user_id]`, `group_wait: 0s`. The time from posting the alerts
//! to Alertmanager until a local sink has all 1,000 notifications, when
//! Alertmanager posts to notimeter (which delivers to each user's webhook on
//! the sink) and when it posts straight to the same sink; side by side,
//! alternating, a fresh Alertmanager each time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use crate::common::{seed_channels, Common, Created, Process};
use crate::core::{wait_count, Sink};

#[derive(Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users, one alert (and one notification) each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Measurements of each path; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Alertmanager with one webhook receiver posting to `url`.
async fn alertmanager(dir: &Path, url: &str, http: &reqwest::Client) -> Result<(Process, String)> {
    let config = format!(
        "route:\n  receiver: r\n  group_by: [user_id]\n  group_wait: 0s\n  group_interval: 1m\n  repeat_interval: 4h\n\
         receivers:\n  - name: r\n    webhook_configs:\n      - url: {url}\n        send_resolved: false\n        max_alerts: 0\n"
    );
    crate::common::alertmanager(dir, &config, http).await
}

/// Posts one alert per user to Alertmanager and waits until the sink has
/// `users` more notifications.
async fn measure(
    http: &reqwest::Client,
    am: &str,
    sink: &Sink,
    users: usize,
    tag: &str,
) -> Result<Duration> {
    let alerts: Vec<_> = (0..users)
        .map(|u| {
            json!({"labels": {"alertname": format!("E2E{tag}"), "user_id": format!("user{u}"),
                              "severity": "critical", "instance": format!("host-{u}")},
                   "annotations": {"description": "end to end"}})
        })
        .collect();
    let before = sink.received();
    let started = Instant::now();
    let r = http
        .post(format!("{am}/api/v2/alerts"))
        .json(&alerts)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("Alertmanager refused the alerts: {}", r.status());
    }
    wait_count(&sink.count, before + users as u64, "end-to-end delivery").await?;
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn run(args: E2eArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let http = reqwest::Client::new();
    let sink = Sink::start().await?;
    let addr = sink.addr;
    let created = Created::new(&args.common, dir.path(), "").await?;
    created.migrate()?;
    seed_channels(&created.database_url, args.users, 1, |u| {
        format!("http://{addr}/u{u}")
    })
    .await?;
    let server = created.spawn(&http).await?;
    println!(
        "notimeter-bench e2e: {}, Alertmanager 0.25, {} users with one alert each, {} rounds",
        args.common.database_name(),
        args.users,
        args.rounds
    );
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let sub = dir.path().join(format!("direct{round}"));
        let (am, base) = alertmanager(&sub, &format!("http://{addr}/direct"), &http).await?;
        let d = measure(&http, &base, &sink, args.users, &format!("d{round}")).await?;
        drop(am);
        let sub = dir.path().join(format!("via{round}"));
        let (am, base) = alertmanager(&sub, &server.ingest_url(), &http).await?;
        let v = measure(&http, &base, &sink, args.users, &format!("v{round}")).await?;
        drop(am);
        println!(
            "round {round}: via notimeter {:.3} s, Alertmanager straight to the sink {:.3} s",
            v.as_secs_f64(),
            d.as_secs_f64()
        );
        via.push(v);
        direct.push(d);
    }
    let (v, d) = (median(via), median(direct));
    let rss = server.stop().await?.unwrap_or(f64::NAN);
    println!(
        "e2e         median: via notimeter {:.3} s ÷ straight {:.3} s = {:.2}; notimeter peak RSS {rss:.1} MB",
        v.as_secs_f64(),
        d.as_secs_f64(),
        v.as_secs_f64() / d.as_secs_f64()
    );
    Ok(())
}

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

use crate::common::{cpu_time, seed_channels, Common, Created, Process};
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

/// One measurement: the time, and the CPU time Alertmanager, notimeter or
/// the forwarder (none when posting straight; PostgreSQL's server is not
/// counted) and
/// this process (the sink, and posting the alerts) used in it.
struct Measured {
    time: Duration,
    alertmanager: Duration,
    notimeter: Duration,
    sink: Duration,
}

/// Posts one alert per user to Alertmanager and waits until the sink has
/// `users` more notifications.
async fn measure(
    http: &reqwest::Client,
    (am, am_pid): (&str, u32),
    notimeter: Option<u32>,
    sink: &Sink,
    users: usize,
    tag: &str,
) -> Result<Measured> {
    let cpu = |pid: Option<u32>| pid.and_then(cpu_time).unwrap_or_default();
    let me = Some(std::process::id());
    let alerts: Vec<_> = (0..users)
        .map(|u| {
            json!({"labels": {"alertname": format!("E2E{tag}"), "user_id": format!("user{u}"),
                              "severity": "critical", "instance": format!("host-{u}")},
                   "annotations": {"description": "end to end"}})
        })
        .collect();
    let before = sink.received();
    let cpu_before = [cpu(Some(am_pid)), cpu(notimeter), cpu(me)];
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
    let time = started.elapsed();
    let used = |i: usize, pid| cpu(pid).saturating_sub(cpu_before[i]);
    Ok(Measured {
        time,
        alertmanager: used(0, Some(am_pid)),
        notimeter: used(1, notimeter),
        sink: used(2, me),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    let pid = server.process.as_ref().map(|p| p.0.id());
    // The ceiling of any store-and-forward design here: the bench's
    // forwarder (see `core::forward_handler`), which posts each alert to
    // its user's webhook on the same sink and answers once the sink has,
    // with no store at all.
    let (forward, forward_url) = crate::core::start_forwarder(&http, addr).await?;
    println!(
        "notimeter-bench e2e: {}, Alertmanager 0.25, {} users with one alert each, {} rounds",
        args.common.database_name(),
        args.users,
        args.rounds
    );
    let (mut via, mut direct, mut forwarded) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let sub = dir.path().join(format!("direct{round}"));
        let (am, base) = alertmanager(&sub, &format!("http://{addr}/direct"), &http).await?;
        let tag = format!("d{round}");
        let d = measure(&http, (&base, am.0.id()), None, &sink, args.users, &tag).await?;
        drop(am);
        let sub = dir.path().join(format!("via{round}"));
        let (am, base) = alertmanager(&sub, &server.ingest_url(), &http).await?;
        let tag = format!("v{round}");
        let v = measure(&http, (&base, am.0.id()), pid, &sink, args.users, &tag).await?;
        drop(am);
        let sub = dir.path().join(format!("forward{round}"));
        let (am, base) = alertmanager(&sub, &forward_url, &http).await?;
        let tag = format!("f{round}");
        let f = measure(
            &http,
            (&base, am.0.id()),
            Some(forward.0.id()),
            &sink,
            args.users,
            &tag,
        )
        .await?;
        drop(am);
        println!(
            "round {round}: via notimeter {:.3} s (CPU: Alertmanager {:.0} ms, notimeter {:.0} ms, sink {:.0} ms), \
             Alertmanager straight to the sink {:.3} s (CPU: Alertmanager {:.0} ms, sink {:.0} ms), \
             via the no-store forwarder {:.3} s (CPU: Alertmanager {:.0} ms, forwarder {:.0} ms, sink {:.0} ms)",
            v.time.as_secs_f64(),
            ms(v.alertmanager),
            ms(v.notimeter),
            ms(v.sink),
            d.time.as_secs_f64(),
            ms(d.alertmanager),
            ms(d.sink),
            f.time.as_secs_f64(),
            ms(f.alertmanager),
            ms(f.notimeter),
            ms(f.sink),
        );
        via.push(v.time);
        direct.push(d.time);
        forwarded.push(f.time);
    }
    let (v, d, f) = (median(via), median(direct), median(forwarded));
    drop(forward);
    let rss = server.stop().await?.unwrap_or(f64::NAN);
    println!(
        "e2e         median: via notimeter {:.3} s ÷ straight {:.3} s = {:.2}; notimeter peak RSS {rss:.1} MB",
        v.as_secs_f64(),
        d.as_secs_f64(),
        v.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "ceiling     median: via the no-store forwarder {:.3} s ÷ straight {:.3} s = {:.2}; via notimeter ÷ via the forwarder = {:.2}",
        f.as_secs_f64(),
        d.as_secs_f64(),
        f.as_secs_f64() / d.as_secs_f64(),
        v.as_secs_f64() / f.as_secs_f64()
    );
    Ok(())
}

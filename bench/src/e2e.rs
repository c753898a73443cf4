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

use crate::common::{cpu_time, machine_busy, seed_channels, Common, Created, Process};
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
    /// The machine's CPU time less Alertmanager's and the sink's, read
    /// `SETTLE` after the sink had everything, so that work a route does
    /// after delivering (notimeter's and the durable forwarder's outcomes)
    /// counts: the process in between, and on PostgreSQL its server.
    between: Duration,
}

/// How long after the last delivery the CPU in between is read.
const SETTLE: Duration = Duration::from_millis(300);

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
    let machine = machine_busy()?;
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
    let (alertmanager, notimeter_cpu, sink_cpu) =
        (used(0, Some(am_pid)), used(1, notimeter), used(2, me));
    tokio::time::sleep(SETTLE).await;
    let machine = machine_busy()?.saturating_sub(machine);
    Ok(Measured {
        time,
        alertmanager,
        notimeter: notimeter_cpu,
        sink: sink_cpu,
        between: machine.saturating_sub(used(0, Some(am_pid)) + used(2, me)),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The target: via notimeter ÷ straight.
const TARGET: f64 = 1.2;

/// One route from Alertmanager to the sink: what it is called, where
/// Alertmanager posts, and the process in between (none when straight).
struct Route {
    name: &'static str,
    url: String,
    pid: Option<u32>,
    times: Vec<Duration>,
    /// The machine's CPU time less Alertmanager's and the sink's, each round.
    between: Vec<Duration>,
    /// CPU time Alertmanager and the sink left for it, each round (straight only; see `run`).
    budget: Vec<Duration>,
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
    // The ceiling of any store-and-forward design here: the bench's
    // forwarder (see `core::forward_handler`), which posts each alert to
    // its user's webhook on the same sink and answers once the sink has,
    // with no store at all.
    let (forward, forward_url) = crate::core::start_forwarder(&http, addr, None).await?;
    // The least a durable one costs: the same with `floor`'s statements
    // run before it answers (see `durable`), on a database of its own.
    let durable =
        crate::core::DurableForwarder::start(&args.common, dir.path(), &http, addr).await?;
    println!(
        "notimeter-bench e2e: {}, Alertmanager 0.25, {} users with one alert each, {} rounds",
        args.common.database_name(),
        args.users,
        args.rounds
    );
    let path = |name, url: String, pid| Route {
        name,
        url,
        pid,
        times: Vec::new(),
        between: Vec::new(),
        budget: Vec::new(),
    };
    let mut paths = [
        path(
            "Alertmanager straight to the sink",
            format!("http://{addr}/direct"),
            None,
        ),
        path(
            "via notimeter",
            server.ingest_url(),
            server.process.as_ref().map(|p| p.0.id()),
        ),
        path(
            "via the no-store forwarder",
            forward_url,
            Some(forward.0.id()),
        ),
        path(
            "via the durable forwarder",
            durable.url.clone(),
            Some(durable.process.0.id()),
        ),
    ];
    for round in 0..args.rounds {
        // Each round starts one route further on, so that no route always
        // follows the same one (and takes on its leftover work).
        let mut measured: Vec<Option<Measured>> = paths.iter().map(|_| None).collect();
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let p = &paths[i];
            let sub = dir.path().join(format!("p{i}r{round}"));
            let (am, base) = alertmanager(&sub, &p.url, &http).await?;
            let tag = format!("{i}r{round}");
            measured[i] =
                Some(measure(&http, (&base, am.0.id()), p.pid, &sink, args.users, &tag).await?);
            drop(am);
        }
        let mut line = format!("round {round}:");
        for (p, m) in paths.iter_mut().zip(measured.into_iter().flatten()) {
            line += &format!(
                " {} {:.3} s (CPU: Alertmanager {:.0} ms,{} sink {:.0} ms);",
                p.name,
                m.time.as_secs_f64(),
                ms(m.alertmanager),
                if p.pid.is_some() {
                    format!(" in between {:.0} ms,", ms(m.notimeter))
                } else {
                    String::new()
                },
                ms(m.sink),
            );
            p.times.push(m.time);
            p.between.push(m.between);
            // What the cores could give in 1.2 × this time, less what
            // Alertmanager and the sink used: the CPU left for whatever
            // sits between them, if they use no less with it there.
            let cores = crate::core::cores() as f64;
            let budget = (m.time.mul_f64(TARGET * cores)).saturating_sub(m.alertmanager + m.sink);
            p.budget.push(budget);
        }
        println!("{}", line.trim_end_matches(';'));
    }
    let budget = median(paths[0].budget.clone());
    let between: Vec<String> = paths
        .iter()
        .map(|p| format!("{} {:.0} ms", p.name, ms(median(p.between.clone()))))
        .collect();
    let [d, v, f, s] = paths.map(|p| median(p.times));
    drop((forward, durable));
    let rss = server.stop().await?.unwrap_or(f64::NAN);
    println!(
        "e2e         median: via notimeter {:.3} s ÷ straight {:.3} s = {:.2}; notimeter peak RSS {rss:.1} MB",
        v.as_secs_f64(),
        d.as_secs_f64(),
        v.as_secs_f64() / d.as_secs_f64()
    );
    // Each forwarder against straight, and notimeter against it.
    for (label, name, x) in [
        ("ceiling", "the no-store forwarder", f),
        ("durable", "the durable forwarder", s),
    ] {
        println!(
            "{label:<11} median: via {name} {:.3} s ÷ straight {:.3} s = {:.2}; via notimeter ÷ via {name} = {:.2}",
            x.as_secs_f64(),
            d.as_secs_f64(),
            x.as_secs_f64() / d.as_secs_f64(),
            v.as_secs_f64() / x.as_secs_f64()
        );
    }
    println!(
        "bound       median: straight, {TARGET} × its time on {} cores less Alertmanager's and the sink's CPU leaves {:.0} ms of CPU for {} messages in between; the machine's CPU less theirs: {}",
        crate::core::cores(),
        ms(budget),
        args.users,
        between.join(", ")
    );
    Ok(())
}

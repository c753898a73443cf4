//! Rendering at size: 10,000 users × 3 channels, in both modes, side by side:
//! render time (notimeter's renderer in this process, release build), file
//! size, `amtool check-config` time, Alertmanager's reload time for that file,
//! and Alertmanager's CPU time per 1,000 alerts routed through that tree.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::common::cpu_time;

#[derive(Args)]
pub struct RenderArgs {
    /// Users, each with `--channels` channels.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Alerts posted to Alertmanager per mode to measure its CPU.
    #[arg(long, default_value_t = 1000)]
    pub alerts: usize,
}

struct Measured {
    render: Duration,
    bytes: usize,
    amtool: Duration,
    reload: Duration,
    cpu: Duration,
}

async fn measure(
    mode: notimeter::config::RenderMode,
    args: &RenderArgs,
    store: &notimeter::store::Store,
    dir: &Path,
    http: &reqwest::Client,
) -> Result<Measured> {
    let mut settings = notimeter::config::Settings::default();
    settings.render.mode = mode;
    settings.render.public_url = "http://127.0.0.1:9".into();
    settings.render.credentials_file = Some("/etc/alertmanager/notimeter-token".into());
    // Long group_wait: Alertmanager routes and groups, but sends nothing while we measure.
    let base: serde_norway::Mapping = serde_norway::from_str("route:\n  group_by: [alertname, user_id]\n  group_wait: 1h\n  group_interval: 1h\n  repeat_interval: 4h\n")?;
    let started = Instant::now();
    let candidate = notimeter::render::render(store, &settings, base).await?;
    let render = started.elapsed();
    let file = dir.join("alertmanager.yml");
    std::fs::write(&file, &candidate.yaml)?;

    let started = Instant::now();
    let out = Command::new("amtool")
        .arg("check-config")
        .arg(&file)
        .output()
        .context("running amtool")?;
    let amtool = started.elapsed();
    if !out.status.success() {
        bail!(
            "amtool rejected the render: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Alertmanager starts small, then reloads the rendered file.
    let (am, url) = crate::common::alertmanager(
        dir,
        "route:\n  receiver: x\nreceivers:\n  - name: x\n",
        http,
    )
    .await?;
    let am_file = dir.join("am-live.yml");
    std::fs::copy(&file, &am_file)?;
    let started = Instant::now();
    notimeter::render::publish::reload(http, &url, Duration::from_secs(120))
        .await
        .map_err(anyhow::Error::msg)?;
    let reload = started.elapsed();

    // Settle, then the CPU Alertmanager spends routing the alerts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = am.0.id();
    let before = cpu_time(pid).unwrap_or_default();
    for batch in 0..args.alerts.div_ceil(100) {
        let alerts: Vec<_> = (0..100.min(args.alerts - batch * 100))
            .map(|i| {
                let n = batch * 100 + i;
                json!({"labels": {"alertname": format!("Alert{}", n % 20), "user_id": format!("user{}", (n * 7919) % args.users),
                                  "severity": if n % 2 == 0 { "critical" } else { "warning" }, "instance": format!("host-{n}")}})
            })
            .collect();
        let r = http
            .post(format!("{url}/api/v2/alerts"))
            .json(&alerts)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("Alertmanager refused alerts: {}", r.status());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_time(pid).unwrap_or_default().saturating_sub(before);
    drop(am);
    Ok(Measured {
        render,
        bytes: candidate.yaml.len(),
        amtool,
        reload,
        cpu,
    })
}

pub async fn run(args: RenderArgs) -> Result<()> {
    for binary in ["amtool", "prometheus-alertmanager"] {
        if Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{binary} is not installed (apt-get install prometheus-alertmanager)");
        }
    }
    let dir = tempfile::tempdir()?;
    let store = notimeter::store::connect(&format!(
        "sqlite://{}",
        dir.path().join("render.db").display()
    ))
    .await?;
    store.migrate(notimeter::clock::now_ms()).await?;
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("render.db").display()
    ))
    .await?;
    let mut tx = pool.begin().await?;
    for u in 0..args.users {
        for c in 0..args.channels {
            let matchers = match c {
                0 => json!(["severity=\"critical\""]),
                1 => json!(["severity=~\"critical|warning\"", "alertname!=\"Watchdog\""]),
                _ => json!([]),
            };
            let spec = json!({"type": "webhook", "settings": {"url": format!("https://example.com/u{u}/c{c}")},
                              "matchers": matchers, "send_resolved": true, "enabled": true});
            sqlx::query("INSERT INTO channels (user_id, channel_id, integration, enabled, spec, created_at, updated_at) VALUES ($1, $2, 'webhook', 1, $3, 0, 0)")
                .bind(format!("user{u}"))
                .bind(format!("c{c}"))
                .bind(spec.to_string())
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    pool.close().await;
    let http = reqwest::Client::new();
    println!(
        "notimeter-bench render: {} users × {} channels, {} alerts for the CPU figure, {} cores",
        args.users,
        args.channels,
        args.alerts,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut rows = Vec::new();
    for (name, mode) in [
        ("per-channel", notimeter::config::RenderMode::PerChannel),
        ("compact", notimeter::config::RenderMode::Compact),
    ] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub)?;
        rows.push((name, measure(mode, &args, &store, &sub, &http).await?));
    }
    println!(
        "{:<12} {:>10} {:>10} {:>12} {:>12} {:>22}",
        "mode", "render", "file", "amtool", "AM reload", "AM CPU per 1,000 alerts"
    );
    for (name, m) in &rows {
        println!(
            "{name:<12} {:>8.0}ms {:>8.1}MB {:>10.0}ms {:>10.0}ms {:>20.0}ms",
            m.render.as_secs_f64() * 1000.0,
            m.bytes as f64 / 1e6,
            m.amtool.as_secs_f64() * 1000.0,
            m.reload.as_secs_f64() * 1000.0,
            m.cpu.as_secs_f64() * 1000.0 * 1000.0 / args.alerts as f64
        );
    }
    Ok(())
}

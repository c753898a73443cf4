//! Publishing a rendered file: guards, `amtool check-config`, an atomic write
//! that keeps the previous file as the last good one, then a reload of
//! Alertmanager confirmed through its `/metrics`; a failed reload puts the
//! last good file back and reloads that.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{load_base, render, rendered_channels, Candidate};
use crate::config::Settings;
use crate::metering::{Metrics, RenderResult};
use crate::store::Store;

#[derive(Clone, Debug, PartialEq)]
pub enum Published {
    /// The same bytes as the current file: nothing written, nothing reloaded.
    Unchanged,
    /// Written (and reloaded, when an Alertmanager URL is set).
    Written { reloaded: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Render(#[from] super::RenderError),
    #[error("refused: {0} (use --force to publish anyway)")]
    Guard(String),
    #[error("amtool check-config rejected the candidate:\n{0}")]
    Amtool(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "Alertmanager did not take the new configuration ({0}); the last good one was restored"
    )]
    Reload(String),
    #[error("render.output is not set")]
    NoOutput,
}

/// The shrink and emptiness guards against the current file.
pub fn guard(candidate: &Candidate, current: Option<&str>, max_shrink: f64) -> Result<(), String> {
    let Some(before) = current.and_then(rendered_channels) else {
        return Ok(());
    };
    if before > 0 && candidate.channels == 0 {
        return Err(format!(
            "the result has no channels, the current file has {before}"
        ));
    }
    let lost = before.saturating_sub(candidate.channels);
    if before > 0 && lost as f64 / before as f64 > max_shrink {
        return Err(format!(
            "the result has {} channels, {lost} fewer than the current {before} (more than {:.0}% at once)",
            candidate.channels,
            max_shrink * 100.0
        ));
    }
    Ok(())
}

/// How long `amtool check-config` may take before it is killed and the
/// candidate refused (it checks a 1,000-channel file in well under a second).
pub const AMTOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// `amtool check-config` on the candidate, written next to the output (so
/// relative template paths resolve the same). Skipped when amtool is "" or
/// not installed. Runs as a child of the runtime (not blocking a worker
/// thread), killed when it takes longer than `timeout`.
pub async fn amtool_check(
    amtool: &str,
    yaml: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<(), PublishError> {
    if amtool.is_empty() {
        return Ok(());
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".notimeter-candidate-")
        .suffix(".yml")
        .tempfile_in(dir)
        .map_err(|source| PublishError::Write {
            path: dir.display().to_string(),
            source,
        })?;
    tmp.write_all(yaml.as_bytes())
        .map_err(|source| PublishError::Write {
            path: tmp.path().display().to_string(),
            source,
        })?;
    let child = tokio::process::Command::new(amtool)
        .arg("check-config")
        .arg(tmp.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warn!(
                amtool,
                "amtool not found; publishing with the renderer's own checks only"
            );
            return Ok(());
        }
        Err(e) => return Err(PublishError::Amtool(e.to_string())),
    };
    let finished = tokio::time::timeout(timeout, output_of(&mut child)).await;
    match finished {
        Ok(Ok((status, _))) if status.success() => Ok(()),
        Ok(Ok((_, out))) => Err(PublishError::Amtool(out)),
        Ok(Err(e)) => Err(PublishError::Amtool(e.to_string())),
        Err(_) => {
            // Kill and reap it now rather than leave it to kill_on_drop.
            let _ = child.kill().await;
            Err(PublishError::Amtool(format!(
                "amtool check-config did not finish within {}; killed",
                humantime::format_duration(timeout)
            )))
        }
    }
}

/// Waits for a child while reading its stdout and stderr (so a full pipe
/// cannot stall it), and returns its status and both outputs, stdout first.
async fn output_of(
    child: &mut tokio::process::Child,
) -> std::io::Result<(std::process::ExitStatus, String)> {
    use tokio::io::AsyncReadExt;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read_out = async {
        match stdout.as_mut() {
            Some(s) => s.read_to_end(&mut out).await.map(drop),
            None => Ok(()),
        }
    };
    let read_err = async {
        match stderr.as_mut() {
            Some(s) => s.read_to_end(&mut err).await.map(drop),
            None => Ok(()),
        }
    };
    let (status, read_out, read_err) = tokio::join!(child.wait(), read_out, read_err);
    read_out?;
    read_err?;
    Ok((
        status?,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    ))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    crate::atomic::write(path, bytes).map_err(|source| PublishError::Write {
        path: path.display().to_string(),
        source,
    })
}

pub fn last_good_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".last-good");
    output.with_file_name(name)
}

async fn am_metrics(http: &reqwest::Client, url: &str) -> Result<(f64, f64), String> {
    let scrape = crate::outbound::scrape_metrics(http, url).await?;
    let value = |name: &str| crate::outbound::sample_value(&scrape, name);
    Ok((
        value("alertmanager_config_last_reload_successful")
            .ok_or("no alertmanager_config_last_reload_successful")?,
        value("alertmanager_config_hash").ok_or("no alertmanager_config_hash")?,
    ))
}

/// Reloads Alertmanager and waits until its `/metrics` confirm the new file:
/// the last reload succeeded and the config hash changed.
pub async fn reload(http: &reqwest::Client, url: &str, timeout: Duration) -> Result<(), String> {
    let url = url.trim_end_matches('/');
    let (_, before) = am_metrics(http, url).await?;
    let r = http
        .post(format!("{url}/-/reload"))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !r.status().is_success() {
        return Err(format!(
            "reload answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default().trim()
        ));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, hash) = am_metrics(http, url).await?;
        if ok == 0.0 {
            return Err("alertmanager_config_last_reload_successful is 0".into());
        }
        if hash != before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("alertmanager_config_hash did not change".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Renders, checks and publishes once.
pub struct Renderer<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub http: reqwest::Client,
    pub metrics: Option<&'a Metrics>,
}

impl Renderer<'_> {
    pub async fn candidate(&self) -> Result<Candidate, PublishError> {
        super::check_auth(self.settings)?;
        let base = load_base(self.settings.render.base_config.as_deref())?;
        let candidate = render(self.store, self.settings, base).await?;
        self.metrics().render_candidate(
            candidate.channels,
            candidate
                .skipped
                .iter()
                .map(|s| (s.user_id.as_str(), s.channel_id.as_str(), s.reason.as_str())),
        );
        Ok(candidate)
    }

    /// Where this renderer's events are counted: the server's metrics, or
    /// (the CLI) none, and then they are only logged.
    fn metrics(&self) -> &Metrics {
        self.metrics.unwrap_or_else(|| Metrics::detached())
    }

    /// Renders and, unless the bytes are unchanged, checks, writes and reloads.
    pub async fn run(&self, force: bool) -> Result<Published, PublishError> {
        let result = self.publish(force).await;
        self.metrics().render_finished(match &result {
            Ok(Published::Unchanged) => RenderResult::Unchanged,
            Ok(Published::Written { .. }) => RenderResult::Published,
            Err(PublishError::Guard(_) | PublishError::Amtool(_) | PublishError::Render(_)) => {
                RenderResult::Rejected
            }
            Err(PublishError::Reload(_)) => RenderResult::ReloadFailed,
            Err(_) => RenderResult::Error,
        });
        result
    }

    async fn publish(&self, force: bool) -> Result<Published, PublishError> {
        let output = self
            .settings
            .render
            .output
            .as_deref()
            .ok_or(PublishError::NoOutput)?;
        let candidate = self.candidate().await?;
        let current = std::fs::read_to_string(output).ok();
        if current.as_deref() == Some(candidate.yaml.as_str()) {
            return Ok(Published::Unchanged);
        }
        if !force {
            guard(
                &candidate,
                current.as_deref(),
                self.settings.render.max_shrink,
            )
            .map_err(PublishError::Guard)?;
        }
        let dir = output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        amtool_check(
            &self.settings.render.amtool,
            &candidate.yaml,
            dir,
            AMTOOL_TIMEOUT,
        )
        .await?;
        let last_good = last_good_path(output);
        if let Some(current) = &current {
            write_atomically(&last_good, current.as_bytes())?;
        }
        write_atomically(output, candidate.yaml.as_bytes())?;
        info!(output = %output.display(), channels = candidate.channels, "Alertmanager configuration written");
        let Some(url) = &self.settings.render.alertmanager_url else {
            return Ok(Published::Written { reloaded: false });
        };
        match reload(&self.http, url, self.settings.render.reload_timeout).await {
            Ok(()) => {
                self.metrics().alertmanager_reloaded();
                Ok(Published::Written { reloaded: true })
            }
            Err(why) => {
                self.metrics().alertmanager_reload_failed(&why);
                if let Some(current) = &current {
                    write_atomically(output, current.as_bytes())?;
                    if let Err(e) =
                        reload(&self.http, url, self.settings.render.reload_timeout).await
                    {
                        warn!(error = %e, "reloading the last good configuration did not confirm");
                    }
                }
                Err(PublishError::Reload(why))
            }
        }
    }
}

/// A line diff of `before` → `after`, as `diff -u` shows it.
pub fn diff(before: &str, after: &str, path: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(path, &format!("{path} (rendered)"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(channels: usize) -> Candidate {
        Candidate {
            yaml: String::new(),
            channels,
            skipped: vec![],
        }
    }

    /// An executable script in `dir` standing in for amtool.
    #[cfg(unix)]
    fn fake_amtool(dir: &Path, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("amtool");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn amtool_verdicts_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let ok = fake_amtool(dir.path(), "exit 0");
        amtool_check(&ok, "route: {}\n", dir.path(), AMTOOL_TIMEOUT)
            .await
            .unwrap();
        let no = fake_amtool(
            dir.path(),
            "echo checking \"$2\"; echo bad regex >&2; exit 1",
        );
        let err = amtool_check(&no, "route: {}\n", dir.path(), AMTOOL_TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("checking") && err.contains("bad regex"),
            "{err}"
        );
        let missing = dir.path().join("no-such-amtool").display().to_string();
        amtool_check(&missing, "route: {}\n", dir.path(), AMTOOL_TIMEOUT)
            .await
            .expect("a missing amtool is skipped");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_hung_amtool_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let hung = fake_amtool(
            dir.path(),
            &format!("echo $$ > {}; exec sleep 30", pid_file.display()),
        );
        let started = Instant::now();
        let err = amtool_check(&hung, "route: {}\n", dir.path(), Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish within 300ms; killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // (No pid file: killed before the script got that far.)
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            assert!(
                !Path::new(&format!("/proc/{}", pid.trim())).exists(),
                "amtool (pid {}) is gone, killed and reaped",
                pid.trim()
            );
        }
    }

    #[tokio::test]
    async fn a_silent_alertmanager_times_out() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        let started = Instant::now();
        let err = reload(
            &crate::outbound::operator_client(Duration::from_millis(300)),
            &url,
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        held.abort();
    }

    #[test]
    fn guards() {
        let current = format!(
            "{} (per-channel, channels: 10). x\n",
            super::super::HEADER_PREFIX
        );
        assert!(guard(&candidate(0), Some(&current), 0.5)
            .unwrap_err()
            .contains("no channels"));
        assert!(guard(&candidate(4), Some(&current), 0.5)
            .unwrap_err()
            .contains("6 fewer"));
        assert!(guard(&candidate(5), Some(&current), 0.5).is_ok());
        assert!(
            guard(&candidate(0), None, 0.5).is_ok(),
            "a first render may be empty"
        );
        assert!(
            guard(&candidate(0), Some("route: {}\n"), 0.5).is_ok(),
            "not our file: no count to compare"
        );
    }
}

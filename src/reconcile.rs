//! Reconciliation with Alertmanager (DESIGN.md): what the Alertmanagers say
//! they sent to webhooks, against what notimeter received.
//!
//! Every `[reconcile] interval`, each Alertmanager's `/metrics` is read:
//! `alertmanager_notification_requests_total` and `…_failed_total` of
//! `integration="webhook"` (and, where Alertmanager labels them with
//! `receiver_name`, only notimeter's receivers). Their increase since the
//! count began is added up in the store, as is every webhook request
//! notimeter answered (whatever it answered: Alertmanager counts those too).
//! Sent minus received is the drift: requests that never arrived (notimeter
//! down, a proxy or network in between failing).
//!
//! The count lives in the store, so it survives restarts and outages — the
//! requests Alertmanager tried while notimeter was down are in its counters
//! when notimeter is back — and every replica adds its own requests to it.
//! It begins at the first reading of every watched Alertmanager and begins
//! again when `alertmanager_urls` changes. Requests in flight at a reading
//! make a drift of a few for a moment; what matters is drift that stays.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::outbound::{operator_client, sample_value, scrape_metrics};
use crate::render::CATCH_ALL;
use crate::state::AppState;
use crate::store::{url_set, AlertmanagerReading};

const REQUESTS: &str = "alertmanager_notification_requests_total";
const FAILED: &str = "alertmanager_notification_requests_failed_total";
const START_TIME: &str = "process_start_time_seconds";
const RELOADED: &str = "alertmanager_config_last_reload_success_timestamp_seconds";
/// The receivers the renderer names (`notimeter/<user>/<channel>`).
const RECEIVER_PREFIX: &str = "notimeter/";

/// Reconciles every `interval` until `shutdown` (nothing when no
/// Alertmanager is configured).
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let settings = &state.settings.reconcile;
    if settings.alertmanager_urls.is_empty() {
        return;
    }
    let http = operator_client(settings.timeout);
    for url in &settings.alertmanager_urls {
        state.metrics.reconcile_started(url);
    }
    loop {
        tokio::select! {
            _ = round(&state, &http) => {}
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One round: read every Alertmanager, add what they sent and what was
/// received since the last round to the stored count (or begin it), and
/// publish the count.
pub async fn round(state: &AppState, http: &reqwest::Client) {
    let urls = &state.settings.reconcile.alertmanager_urls;
    let current = match state.store.reconciliation().await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %crate::error::Causes(&e), "reading the reconciliation failed");
            return;
        }
    };
    let counting = current.is_some_and(|c| c.urls == url_set(urls));
    state.metrics.set_reconciling(counting);
    // All at once, so that the readings and the count they begin from are
    // taken as close together as they can be.
    let readings = futures::future::join_all(urls.iter().map(|url| read(http, url))).await;
    if !counting {
        // What was received before the count begins is not part of it.
        state.metrics.take_received();
    }
    for (url, reading) in urls.iter().zip(&readings) {
        state.metrics.reconcile_scraped(url, reading.as_ref().err());
    }
    let now = state.clock.now_ms();
    let stored = if counting {
        add(state, readings, now).await
    } else if let Ok(all) = readings.into_iter().collect::<anyhow::Result<Vec<_>>>() {
        state
            .store
            .begin_reconciliation(all, now)
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
    } else {
        Ok(()) // it begins when every Alertmanager has answered once
    };
    if let Err(e) = stored {
        warn!(error = %crate::error::Causes(&*e), "storing the reconciliation failed");
    }
    match state.store.reconciliation().await {
        Ok(Some(count)) => state.metrics.reconciled(&count),
        Ok(None) => {}
        Err(e) => warn!(error = %crate::error::Causes(&e), "reading the reconciliation failed"),
    }
}

/// Adds the readings that succeeded, and what was received, to the count.
async fn add(
    state: &AppState,
    readings: Vec<anyhow::Result<AlertmanagerReading>>,
    now: i64,
) -> anyhow::Result<()> {
    for reading in readings.into_iter().flatten() {
        state.store.observe_alertmanager(&reading, now).await?;
    }
    store_received(state).await
}

/// Adds the webhook requests answered since the last time to the count
/// (kept for the next time when the store fails). At shutdown too, once the
/// server has drained.
pub async fn store_received(state: &AppState) -> anyhow::Result<()> {
    let n = state.metrics.take_received();
    if n == 0 {
        return Ok(());
    }
    if let Err(e) = state.store.add_received(n).await {
        state.metrics.untake_received(n);
        return Err(e.into());
    }
    Ok(())
}

/// One Alertmanager's webhook requests, as its `/metrics` says.
async fn read(http: &reqwest::Client, url: &str) -> anyhow::Result<AlertmanagerReading> {
    let scrape = scrape_metrics(http, url)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("reading {url}/metrics"))?;
    reading(url, &scrape)
}

/// The reading in one scrape.
fn reading(url: &str, scrape: &prometheus_parse::Scrape) -> anyhow::Result<AlertmanagerReading> {
    let sum = |name: &str| {
        let mut found = false;
        let mut total = 0.0;
        for s in scrape.samples.iter().filter(|s| s.metric == name) {
            found = true;
            let ours = s.labels.get("integration") == Some("webhook")
                && s.labels
                    .get("receiver_name")
                    .is_none_or(|r| r == CATCH_ALL || r.starts_with(RECEIVER_PREFIX));
            if let (
                true,
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
            ) = (ours, &s.value)
            {
                total += v;
            }
        }
        found.then_some(total as i64)
    };
    let requests = sum(REQUESTS)
        .with_context(|| format!("{url}/metrics has no {REQUESTS}: is it an Alertmanager?"))?;
    let failed = sum(FAILED).unwrap_or(0);
    let gauge = |name: &str| sample_value(scrape, name).map(|v| (v * 1000.0).round() as i64);
    // The incarnation of the counters: the process's start. Alertmanagers
    // that label them by receiver set them up again, from zero, at every
    // configuration reload: there the last reload starts one too. Without a
    // start time (not on Linux), a restart is seen only as counters going
    // down, which reads as stale: its requests up to the reading are missed,
    // not counted twice.
    let by_receiver = scrape
        .samples
        .iter()
        .any(|s| s.metric == REQUESTS && s.labels.get("receiver_name").is_some());
    let reloaded = if by_receiver { gauge(RELOADED) } else { None };
    let start_time = gauge(START_TIME).max(reloaded).unwrap_or(0);
    Ok(AlertmanagerReading {
        url: url.to_owned(),
        start_time,
        requests,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    #[test]
    fn reads_webhook_requests_of_notimeter_receivers() {
        let old = parse(
            "# TYPE alertmanager_notification_requests_total counter\n\
             alertmanager_notification_requests_total{integration=\"email\"} 7\n\
             alertmanager_notification_requests_total{integration=\"webhook\"} 12\n\
             # TYPE alertmanager_notification_requests_failed_total counter\n\
             alertmanager_notification_requests_failed_total{integration=\"webhook\"} 3\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds 1.7e+09\n",
        );
        let r = reading("http://am", &old).unwrap();
        assert_eq!(
            (r.requests, r.failed, r.start_time),
            (12, 3, 1_700_000_000_000)
        );

        // Newer Alertmanagers label by receiver: only notimeter's count.
        let new = parse(
            "# TYPE alertmanager_notification_requests_total counter\n\
             alertmanager_notification_requests_total{integration=\"webhook\",receiver_name=\"notimeter/u1/a\"} 5\n\
             alertmanager_notification_requests_total{integration=\"webhook\",receiver_name=\"notimeter\"} 2\n\
             alertmanager_notification_requests_total{integration=\"webhook\",receiver_name=\"ops-pager\"} 40\n\
             alertmanager_notification_requests_total{integration=\"webhook\",receiver_name=\"notimeter-ops\"} 9\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds 1.7e+09\n\
             # TYPE alertmanager_config_last_reload_success_timestamp_seconds gauge\n\
             alertmanager_config_last_reload_success_timestamp_seconds 1.8e+09\n",
        );
        let r = reading("http://am", &new).unwrap();
        // Their counters start again at each reload: the reload is the incarnation.
        assert_eq!(
            (r.requests, r.failed, r.start_time),
            (7, 0, 1_800_000_000_000)
        );

        let err = reading("http://x", &parse("up 1\n")).unwrap_err();
        assert!(
            format!("{err:#}").contains("is it an Alertmanager?"),
            "{err:#}"
        );
    }
}

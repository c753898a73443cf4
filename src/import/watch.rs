//! Consul as a live source: `serve` follows the prefix with Consul's blocking
//! queries and mirrors every change into channels (see [`super::consul::sync`]).
//!
//! Following Consul's guidance for blocking queries: the next query blocks
//! on the `X-Consul-Index` of the last answer; an answer whose index went
//! backwards (a restored snapshot, a new cluster) is mirrored and the watch
//! blocks on its index from then on; an index of 0 is treated as 1; errors back off (1 s doubling up to
//! `max_backoff`); and an answer whose index has not moved (the wait ran
//! out) changes nothing. An error, a timeout or an answer the deletion guard
//! refuses keeps the channels as they are: the last good state.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::consul::{self, SyncOptions};
use crate::config::ConsulSettings;
use crate::metering::ConsulSyncResult;
use crate::state::AppState;

/// Least time between two reads, so that a prefix changing without pause
/// cannot make the watch spin.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Where the watch stands between two reads.
struct Cursor {
    index: u64,
    backoff: Duration,
    failing: bool,
}

/// Follows Consul until `shutdown`; nothing when `[consul] address` is unset.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let consul = state.settings.consul.clone();
    let Some(address) = consul.address.clone() else {
        return;
    };
    state.metrics.consul_watch_started();
    tracing::info!(address = %address, prefix = %consul.prefix, "following Consul KV");
    let mut cursor = Cursor {
        index: 0,
        backoff: Duration::ZERO,
        failing: false,
    };
    loop {
        let pause = cursor.backoff.max(MIN_INTERVAL);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let block = (cursor.index > 0).then_some((cursor.index, consul.wait));
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = consul::read(&consul, &address, block) => read,
        };
        match read {
            Ok(read) => once(&state, &consul, &mut cursor, read).await,
            Err(e) => failed(&state, &consul, &mut cursor, &e),
        }
    }
}

/// Mirrors one answer, unless its index shows nothing changed.
async fn once(state: &AppState, consul: &ConsulSettings, cursor: &mut Cursor, read: consul::Read) {
    let index = read.index.unwrap_or(0).max(1);
    if cursor.index > 0 && index == cursor.index {
        // The wait ran out with nothing changed.
        cursor.backoff = Duration::ZERO;
        return;
    }
    for problem in &read.problems {
        tracing::warn!(problem = %problem, "a Consul key was skipped");
    }
    let options = SyncOptions {
        prune: true,
        force: false,
    };
    let report = match consul::sync(
        &state.store,
        &state.settings,
        &state.clock,
        &read.entries,
        options,
    )
    .await
    {
        Ok(report) => report,
        Err(e) => return failed(state, consul, cursor, &e),
    };
    if cursor.failing {
        tracing::info!("Consul is read again");
        cursor.failing = false;
    }
    cursor.backoff = Duration::ZERO;
    let now = state.clock.now_ms();
    // Counted by the sync from what it read and wrote: no second read.
    let count = Some(report.consul_channels);
    if let Some(why) = &report.refused {
        tracing::error!(reason = %why, "a Consul answer was refused; the channels stay as they are");
        state
            .metrics
            .consul_synced(ConsulSyncResult::Refused, count, now);
        // Read again only when Consul changes again.
        cursor.index = index;
        return;
    }
    for (key, why) in &report.skipped {
        tracing::warn!(key = %key, reason = %why, "a Consul alarm was skipped");
    }
    let result = if report.changed() {
        tracing::info!(
            changed = report.imported.len(),
            deleted = report.deleted.len(),
            unchanged = report.unchanged,
            "channels mirrored from Consul"
        );
        state.channels_changed().await;
        ConsulSyncResult::Applied
    } else {
        ConsulSyncResult::Unchanged
    };
    state.metrics.consul_synced(result, count, now);
    cursor.index = index;
}

fn failed(state: &AppState, consul: &ConsulSettings, cursor: &mut Cursor, e: &anyhow::Error) {
    if !cursor.failing {
        tracing::error!(error = %format!("{e:#}"),
            "reading Consul failed; the channels stay as they are, retrying");
        cursor.failing = true;
    }
    state
        .metrics
        .consul_synced(ConsulSyncResult::Error, None, state.clock.now_ms());
    cursor.backoff = (cursor.backoff * 2)
        .max(Duration::from_secs(1))
        .min(consul.max_backoff);
}

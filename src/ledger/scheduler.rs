//! Closes periods on the `[billing] schedule` and prunes old delivery details.
//!
//! The next boundary is computed from the open period's start, so a close
//! missed while the service was down happens at the next start with the
//! boundary the schedule gave (several, if several were missed). Replicas may
//! all run this: a close that finds the period already closed does nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Ledger;
use crate::clock::{duration_ms, Millis};

/// The first boundary of `schedule` (read in `tz`) strictly after `start`.
pub fn next_boundary(
    schedule: &cron::Schedule,
    tz: &chrono_tz::Tz,
    start: Millis,
) -> Option<Millis> {
    let start = tz.timestamp_millis_opt(start).single()?;
    schedule.after(&start).next().map(|t| t.timestamp_millis())
}

pub async fn run_closes(ledger: Arc<Ledger>, shutdown: CancellationToken) {
    let (schedule, tz) = (
        &ledger.settings.billing.schedule,
        &ledger.settings.billing.timezone,
    );
    let now_ms = || ledger.clock.now_ms();
    loop {
        let wait = match ledger.store.open_period().await {
            Err(e) => {
                error!(error = %crate::error::Causes(&e), "reading the open period failed");
                Duration::from_secs(5)
            }
            Ok(open) => match next_boundary(schedule, tz, open.start_at) {
                None => Duration::from_secs(3600),
                Some(boundary) if boundary <= now_ms() => match ledger.close_at(boundary).await {
                    Ok(_) => continue,
                    Err(e) => {
                        error!(error = %crate::error::Causes(&*e), boundary, "scheduled close failed; retrying");
                        Duration::from_secs(5)
                    }
                },
                // Look again at least every minute: a manual close moves the start.
                Some(boundary) => {
                    Duration::from_millis((boundary - now_ms()).clamp(1, 60_000) as u64)
                }
            },
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // Woken early when a test moves the clock.
            _ = ledger.clock.sleep(wait) => {}
        }
    }
}

pub async fn run_retention(ledger: Arc<Ledger>, shutdown: CancellationToken) {
    let r = ledger.settings.retention.clone();
    let now_ms = || ledger.clock.now_ms();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(r.interval) => {}
        }
        match ledger.store.prune(now_ms() - duration_ms(r.messages)).await {
            Ok((0, 0)) => {}
            Ok((attempts, payloads)) => info!(
                attempts,
                payloads, "pruned delivery details of closed periods"
            ),
            Err(e) => error!(error = %crate::error::Causes(&e), "pruning failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn monthly_in_utc_and_in_a_zone() {
        let monthly: cron::Schedule = "0 0 0 1 * *".parse().unwrap();
        assert_eq!(
            next_boundary(&monthly, &chrono_tz::UTC, ms("2026-11-24T23:08:00Z")),
            Some(ms("2026-12-01T00:00:00Z"))
        );
        // A period that opened exactly on a boundary closes at the next one.
        assert_eq!(
            next_boundary(&monthly, &chrono_tz::UTC, ms("2026-12-01T00:00:00Z")),
            Some(ms("2027-01-01T00:00:00Z"))
        );
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            next_boundary(&monthly, &berlin, ms("2026-11-24T23:08:00Z")),
            Some(ms("2026-11-30T23:00:00Z"))
        );
    }
}

//! Time as the store keeps it (milliseconds since the Unix epoch, UTC), and
//! the [`Clock`] the service reads it from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The system's time. Outside `store/`, read the injected [`Clock`] instead,
/// so that tests can move time forward.
pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

/// The clock the service decides by: dedupe windows, leases, retries and
/// pacing, sessions and login throttling, billing periods. Cheap to clone;
/// clones share one time.
///
/// [`Clock::system`] in production. Tests use [`Clock::adjustable`]: the
/// system's time plus an offset that [`Clock::advance`] moves forward, so
/// that real I/O and timeouts keep their pace while what depends on the time
/// of day (a dedupe window running out, a lease expiring) can be skipped to.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// `None` for the system clock itself, which cannot be advanced.
    adjust: Option<Arc<Adjust>>,
}

#[derive(Debug, Default)]
struct Adjust {
    /// How far ahead of the system clock, in nanoseconds.
    offset: AtomicU64,
    /// Wakes [`Clock::sleep`]ers when the clock is advanced.
    advanced: Notify,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self { adjust: None }
    }

    /// The system's clock plus an offset, zero until [`Clock::advance`]d.
    pub fn adjustable() -> Self {
        Self {
            adjust: Some(Arc::default()),
        }
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    ///
    /// # Panics
    ///
    /// On [`Clock::system`]: only an adjustable clock moves.
    pub fn advance(&self, by: Duration) {
        let adjust = self
            .adjust
            .as_ref()
            .expect("only a Clock::adjustable() can be advanced");
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = adjust
            .offset
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| {
                Some(o.saturating_add(by))
            });
        adjust.advanced.notify_waiters();
    }

    /// Sleeps for `d`, or until the clock is advanced, whichever is first: a
    /// task waiting for a time of day (the next billing boundary) then looks
    /// at the clock again. On the system clock, just `tokio::time::sleep`.
    pub async fn sleep(&self, d: Duration) {
        match &self.adjust {
            None => tokio::time::sleep(d).await,
            Some(adjust) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = adjust.advanced.notified() => {}
                }
            }
        }
    }

    /// How far this clock is ahead of the system's.
    pub fn offset(&self) -> Duration {
        self.adjust.as_ref().map_or(Duration::ZERO, |a| {
            Duration::from_nanos(a.offset.load(Ordering::SeqCst))
        })
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> Millis {
        now_ms().saturating_add(duration_ms(self.offset()))
    }

    /// Now, for in-memory windows and deadlines (pacing, plan limits, the
    /// login throttle). Monotonic, moved forward with the clock.
    pub fn instant(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.offset()).unwrap_or(now)
    }
}

pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// RFC 3339 in UTC with a `Z` suffix, as the ledger CSV and the API show times.
pub fn rfc3339(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn duration_ms(d: std::time::Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_moves_with_its_clones() {
        let clock = Clock::adjustable();
        let twin = clock.clone();
        let (before, at) = (now_ms(), Instant::now());
        twin.advance(Duration::from_secs(3600));
        assert!(clock.now_ms() >= before + 3_600_000);
        assert!(clock.instant() >= at + Duration::from_secs(3600));
        assert_eq!(clock.offset(), Duration::from_secs(3600));
    }

    #[test]
    fn the_system_clock_is_the_systems() {
        let clock = Clock::system();
        let before = now_ms();
        let now = clock.now_ms();
        assert!(now >= before && now - before < 60_000);
        assert_eq!(clock.offset(), Duration::ZERO);
    }

    #[tokio::test]
    async fn advancing_wakes_sleepers() {
        let clock = Clock::adjustable();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep(Duration::from_secs(3600)).await }
        });
        // Until the sleeper waits, an advance would not wake it: advance until it is done.
        let woke = tokio::time::timeout(Duration::from_secs(10), async {
            while !sleeper.is_finished() {
                clock.advance(Duration::from_millis(1));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(woke.is_ok(), "the sleeper woke when the clock moved");
    }

    #[test]
    #[should_panic(expected = "only a Clock::adjustable() can be advanced")]
    fn the_system_clock_cannot_be_advanced() {
        Clock::system().advance(Duration::from_secs(1));
    }
}

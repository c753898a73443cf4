//! Per-destination pacing: at most one send per interval to one destination
//! (a Slack webhook, a Telegram chat), without holding back the others. A
//! message that must wait gets a reserved slot and goes back to the outbox
//! until then, so it holds no worker. Per process: replicas pace separately.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Pacer {
    next_free: Mutex<HashMap<String, Instant>>,
}

/// Entries kept before slots in the past are forgotten.
const PRUNE_AT: usize = 10_000;

impl Pacer {
    /// Reserves the next free slot for `key`: `now` if it is free, else later.
    pub fn reserve(&self, key: &str, interval: Duration, now: Instant) -> Instant {
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        if next.len() >= PRUNE_AT {
            next.retain(|_, t| *t > now);
        }
        let slot = next.get(key).copied().filter(|t| *t > now).unwrap_or(now);
        next.insert(key.to_owned(), slot + interval);
        slot
    }

    /// Holds `key` until `until` (the destination asked to wait, e.g. a 429).
    pub fn hold(&self, key: &str, until: Instant) {
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let entry = next.entry(key.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_per_key() {
        let p = Pacer::default();
        let t = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(p.reserve("a", s, t), t);
        assert_eq!(p.reserve("a", s, t), t + s);
        assert_eq!(p.reserve("a", s, t), t + 2 * s);
        assert_eq!(
            p.reserve("b", s, t),
            t,
            "another destination is not held back"
        );
        assert_eq!(
            p.reserve("a", s, t + 10 * s),
            t + 10 * s,
            "free again later"
        );
        p.hold("b", t + 5 * s);
        assert_eq!(p.reserve("b", s, t + s), t + 5 * s);
    }
}

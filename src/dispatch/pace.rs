//! Per-destination pacing and concurrency. Pacing: at most one send per
//! interval to one destination (a Slack webhook, a Telegram chat); a message
//! that must wait gets a reserved slot and goes back to the outbox until then,
//! so it holds no worker. Concurrency: at most N sends in flight to one
//! destination, so a slow receiver cannot take every worker. Neither holds
//! back other destinations. Per process: replicas pace separately.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Pacer {
    next_free: Mutex<HashMap<String, Instant>>,
    in_flight: Mutex<HashMap<String, usize>>,
}

/// A send in flight to a destination; leaving it frees the place.
pub struct InFlight<'a> {
    pacer: &'a Pacer,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self
            .pacer
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Entries kept before slots in the past are forgotten.
const PRUNE_AT: usize = 10_000;

impl Pacer {
    /// Reserves the next free slot for `key`: `now` if it is free, else later.
    /// With a zero interval this only waits out a hold.
    pub fn reserve(&self, key: &str, interval: Duration, now: Instant) -> Instant {
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        if next.len() >= PRUNE_AT {
            next.retain(|_, t| *t > now);
        }
        let slot = next.get(key).copied().filter(|t| *t > now).unwrap_or(now);
        next.insert(key.to_owned(), slot + interval);
        slot
    }

    /// Takes one of `max` places for sends in flight to `key`, if one is free.
    pub fn enter(&self, key: &str, max: usize) -> Option<InFlight<'_>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(InFlight {
            pacer: self,
            key: key.to_owned(),
        })
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
        // Unpaced destinations only wait out holds.
        assert_eq!(p.reserve("c", Duration::ZERO, t), t);
        assert_eq!(p.reserve("c", Duration::ZERO, t), t);
        p.hold("c", t + s);
        assert_eq!(p.reserve("c", Duration::ZERO, t), t + s);
    }

    #[test]
    fn in_flight_places_are_bounded_and_freed() {
        let p = Pacer::default();
        let a1 = p.enter("a", 2).unwrap();
        let _a2 = p.enter("a", 2).unwrap();
        assert!(p.enter("a", 2).is_none());
        assert!(
            p.enter("b", 2).is_some(),
            "other destinations are not affected"
        );
        drop(a1);
        assert!(p.enter("a", 2).is_some());
    }
}

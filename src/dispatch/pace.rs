//! Per-destination pacing and concurrency. Pacing: at most one send per
//! interval to one destination (a Slack webhook, a Telegram chat); a message
//! that must wait gets a reserved slot and goes back to the outbox until then,
//! so it holds no worker. Concurrency: at most N sends in flight to one
//! destination, so a slow receiver cannot take every worker; a message for a
//! destination at its cap waits in the process, in a queue of its own
//! (first come, first served), holding no worker, and is sent as soon as a
//! place frees: a busy destination stays busy without its messages going
//! back to the outbox. Only when that queue is full (or all queues together
//! are) does a message go back to the outbox to wait. Neither holds back
//! other destinations. Per process: replicas pace separately.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages waiting in the process for one destination at most.
pub const QUEUE_PER_DESTINATION: usize = 256;

/// Messages waiting in the process for any destination at most.
pub const QUEUED_IN_ALL: usize = 4096;

#[derive(Default)]
pub struct Pacer {
    next_free: Mutex<HashMap<String, Instant>>,
    destinations: Mutex<Destinations>,
}

#[derive(Default)]
struct Destinations {
    by_key: HashMap<String, Destination>,
    /// Messages waiting, over every destination.
    waiting: usize,
}

struct Destination {
    places: Arc<Semaphore>,
    max: usize,
    waiting: usize,
}

impl Destination {
    fn idle(&self) -> bool {
        self.waiting == 0 && self.places.available_permits() == self.max
    }
}

/// A send in flight to a destination; leaving it frees the place.
pub struct InFlight<'a> {
    pacer: &'a Pacer,
    key: String,
    place: Option<OwnedSemaphorePermit>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        drop(self.place.take());
        self.pacer.forget_if_idle(&self.key);
    }
}

/// A message waiting for a place; leaving (its place came, it timed out, or
/// it was dropped) takes it out of the counts.
struct Waiting<'a> {
    pacer: &'a Pacer,
    key: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut d = self.pacer.destinations();
        d.waiting -= 1;
        if let Some(dest) = d.by_key.get_mut(self.key) {
            dest.waiting -= 1;
            if dest.idle() {
                d.by_key.remove(self.key);
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

    fn destinations(&self) -> std::sync::MutexGuard<'_, Destinations> {
        self.destinations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_if_idle(&self, key: &str) {
        let mut d = self.destinations();
        if d.by_key.get(key).is_some_and(Destination::idle) {
            d.by_key.remove(key);
        }
    }

    /// Takes one of `max` places for sends in flight to `key`, if one is free.
    pub fn enter(&self, key: &str, max: usize) -> Option<InFlight<'_>> {
        self.try_enter(key, max, false).ok()
    }

    /// A free place now, or else (with `queue`) the destination's places to
    /// wait on, the message counted as waiting; `None` when the queues are
    /// full (or without `queue`).
    fn try_enter(
        &self,
        key: &str,
        max: usize,
        queue: bool,
    ) -> Result<InFlight<'_>, Option<Arc<Semaphore>>> {
        let mut d = self.destinations();
        let total_waiting = d.waiting;
        let dest = d
            .by_key
            .entry(key.to_owned())
            .or_insert_with(|| Destination {
                places: Arc::new(Semaphore::new(max)),
                max,
                waiting: 0,
            });
        // A place is free only when nobody waits for one: first come, first served.
        if dest.waiting == 0 {
            if let Ok(place) = dest.places.clone().try_acquire_owned() {
                return Ok(InFlight {
                    pacer: self,
                    key: key.to_owned(),
                    place: Some(place),
                });
            }
        }
        if !queue || dest.waiting >= QUEUE_PER_DESTINATION || total_waiting >= QUEUED_IN_ALL {
            if dest.idle() {
                d.by_key.remove(key);
            }
            return Err(None);
        }
        dest.waiting += 1;
        let places = dest.places.clone();
        d.waiting += 1;
        Err(Some(places))
    }

    /// Takes one of `max` places for sends in flight to `key`, waiting for
    /// one in the destination's queue up to `patience`. `None` when the
    /// queues are full or the wait ran out: the message goes back to the
    /// outbox.
    pub async fn enter_queued(
        &self,
        key: &str,
        max: usize,
        patience: Duration,
    ) -> Option<InFlight<'_>> {
        let places = match self.try_enter(key, max, true) {
            Ok(place) => return Some(place),
            Err(places) => places?,
        };
        let waiting = Waiting { pacer: self, key };
        let place = tokio::time::timeout(patience, places.acquire_owned()).await;
        drop(waiting);
        match place {
            Ok(Ok(place)) => Some(InFlight {
                pacer: self,
                key: key.to_owned(),
                place: Some(place),
            }),
            _ => {
                self.forget_if_idle(key);
                None
            }
        }
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

    #[tokio::test]
    async fn a_busy_destination_queues_in_order_and_forgets_when_idle() {
        let p = Arc::new(Pacer::default());
        let first = p.enter("a", 1).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = tokio::task::JoinSet::new();
        for n in 0..3 {
            let (pacer, tx) = (p.clone(), tx.clone());
            waiters.spawn(async move {
                let place = pacer.enter_queued("a", 1, Duration::from_secs(10)).await;
                tx.send(n).unwrap();
                drop(place);
            });
            // Each waiter is queued before the next one starts.
            while p.destinations().by_key["a"].waiting < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert!(p.enter("a", 1).is_none(), "no overtaking the queue");
        drop(first);
        while waiters.join_next().await.is_some() {}
        let order: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, [0, 1, 2], "first come, first served");
        assert!(
            p.destinations().by_key.is_empty(),
            "idle destinations are forgotten"
        );
        assert_eq!(p.destinations().waiting, 0);
    }

    #[tokio::test]
    async fn a_wait_runs_out_or_is_dropped_without_leaking_its_place() {
        let p = Pacer::default();
        let held = p.enter("a", 1).unwrap();
        assert!(p
            .enter_queued("a", 1, Duration::from_millis(10))
            .await
            .is_none());
        let dropped = p.enter_queued("a", 1, Duration::from_secs(10));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), dropped)
                .await
                .is_err(),
            "still waiting when dropped"
        );
        assert_eq!(p.destinations().waiting, 0);
        drop(held);
        assert!(p.destinations().by_key.is_empty());
        assert!(p.enter("a", 1).is_some());
    }
}

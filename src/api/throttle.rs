//! Throttles wrong tokens on `/login`, per client address: at most
//! `page.login_failures` per `page.login_window`, then 429 until the oldest
//! failure leaves the window. In memory (each replica counts its own), and
//! bounded: at most [`MAX_CLIENTS`] addresses are tracked.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Addresses tracked at once. When full, addresses whose failures have all
/// left the window are forgotten first, then the one that failed longest ago.
pub const MAX_CLIENTS: usize = 10_000;

/// Whom failures are counted against: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64). `None`: the server did not say who the
/// client is, and all such requests share one count.
pub type ClientKey = Option<IpAddr>;

pub fn client_key(addr: Option<IpAddr>) -> ClientKey {
    addr.map(|ip| match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    })
}

pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<ClientKey, VecDeque<Instant>>>,
    clock: Clock,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration, clock: Clock) -> Self {
        Self {
            max_failures: max_failures.max(1) as usize,
            window,
            failures: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Runs `token_ok` for a sign-in from `client` unless the client has used
    /// up its failures (then `Err(seconds to wait)`, and the token is not
    /// looked at). A `false` from `token_ok` counts as a failure. One lock
    /// covers the check and the count, so parallel guesses cannot slip past it.
    pub fn attempt(&self, client: ClientKey, token_ok: impl FnOnce() -> bool) -> Result<bool, u64> {
        self.attempt_at(client, self.clock.instant(), token_ok)
    }

    fn attempt_at(
        &self,
        client: ClientKey,
        now: Instant,
        token_ok: impl FnOnce() -> bool,
    ) -> Result<bool, u64> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(times) = map.get_mut(&client) {
            self.expire(times, now);
            if times.len() >= self.max_failures {
                let oldest = times.front().copied().unwrap_or(now);
                let wait = (oldest + self.window).saturating_duration_since(now);
                return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
            }
        }
        if token_ok() {
            return Ok(true);
        }
        if !map.contains_key(&client) && map.len() >= MAX_CLIENTS {
            map.retain(|_, times| times.back().is_some_and(|t| now - *t < self.window));
            if map.len() >= MAX_CLIENTS {
                let stalest = map
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(k, _)| *k);
                if let Some(k) = stalest {
                    map.remove(&k);
                }
            }
        }
        let times = map.entry(client).or_default();
        times.push_back(now);
        while times.len() > self.max_failures {
            times.pop_front();
        }
        Ok(false)
    }

    fn expire(&self, times: &mut VecDeque<Instant>, now: Instant) {
        while times.front().is_some_and(|t| now - *t >= self.window) {
            times.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_per_window() {
        let t = LoginThrottle::new(3, Duration::from_secs(60), Clock::system());
        let a = client_key(Some("192.0.2.1".parse().unwrap()));
        let b = client_key(Some("192.0.2.2".parse().unwrap()));
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(
            t.attempt_at(a, at(0), || true),
            Ok(true),
            "success is not counted"
        );
        for i in 0..3 {
            assert_eq!(t.attempt_at(a, at(i), || false), Ok(false));
        }
        let mut looked = false;
        assert_eq!(
            t.attempt_at(a, at(10), || {
                looked = true;
                true
            }),
            Err(50)
        );
        assert!(!looked, "the token is not checked once throttled");
        assert_eq!(
            t.attempt_at(b, at(10), || false),
            Ok(false),
            "other addresses go on"
        );
        assert_eq!(
            t.attempt_at(a, at(60), || true),
            Ok(true),
            "the oldest failure left the window"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_the_map_is_bounded() {
        assert_eq!(
            client_key(Some("2001:db8::1".parse().unwrap())),
            client_key(Some("2001:db8::2:3".parse().unwrap()))
        );
        assert_eq!(
            client_key(Some("::ffff:192.0.2.1".parse().unwrap())),
            client_key(Some("192.0.2.1".parse().unwrap()))
        );
        let t = LoginThrottle::new(1, Duration::from_secs(60), Clock::system());
        let now = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let _ = t.attempt_at(Some(IpAddr::from(i.to_be_bytes())), now, || false);
        }
        assert_eq!(t.failures.lock().unwrap().len(), MAX_CLIENTS);
    }
}

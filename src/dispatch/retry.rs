//! When to try again. Exponential backoff with jitter, a destination's own hint
//! honoured (clamped), and limits on attempts and age.

use std::time::Duration;

use rand::Rng;

use crate::config::DispatchSettings;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub max_retry_after: Duration,
}

impl From<&DispatchSettings> for RetryPolicy {
    fn from(d: &DispatchSettings) -> Self {
        Self {
            min_backoff: d.min_backoff,
            max_backoff: d.max_backoff,
            max_attempts: d.max_attempts,
            max_age: d.max_age,
            max_retry_after: d.max_retry_after,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt, or `None` when the failure is final.
    /// `attempt` counts the attempts made so far (1 after the first); `age` is
    /// the time since the message was accepted.
    pub fn next_delay(
        &self,
        attempt: u32,
        age: Duration,
        hint: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exp = self
            .min_backoff
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let mut rng = rand::rng();
        // Equal jitter: half fixed, half random, so delays still grow.
        let jittered = exp / 2 + exp.mul_f64(rng.random::<f64>() / 2.0);
        let delay = match hint {
            // Never sooner than the destination asked; a little jitter on top so
            // that many messages held back by one hint do not return at once.
            Some(h) => {
                let h = h.min(self.max_retry_after);
                h + h.mul_f64(rng.random::<f64>() * 0.1)
            }
            None => jittered,
        };
        (age + delay <= self.max_age).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_attempts: 5,
            max_age: Duration::from_secs(3600),
            max_retry_after: Duration::from_secs(300),
        }
    }

    #[test]
    fn gives_up_after_max_attempts_and_age() {
        let p = policy();
        assert!(p.next_delay(4, Duration::ZERO, None).is_some());
        assert!(p.next_delay(5, Duration::ZERO, None).is_none());
        assert!(p.next_delay(1, Duration::from_secs(3600), None).is_none());
    }

    proptest! {
        #[test]
        fn delays_are_bounded(attempt in 1u32..5, hint in proptest::option::of(0u64..1000)) {
            let p = policy();
            let d = p.next_delay(attempt, Duration::ZERO, hint.map(Duration::from_secs)).unwrap();
            match hint {
                Some(h) => {
                    let h = Duration::from_secs(h).min(p.max_retry_after);
                    prop_assert!(d >= h && d <= h + h / 10 + Duration::from_millis(1));
                }
                None => {
                    let exp = (p.min_backoff * 2u32.pow(attempt - 1)).min(p.max_backoff);
                    prop_assert!(d >= exp / 2 && d <= exp);
                }
            }
        }
    }
}

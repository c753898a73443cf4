//! Per-user plan limits, like Grafana Mimir's per-tenant notification rate
//! limits: a token bucket per (user, integration) holding `limit` messages and
//! refilled at `limit` per `interval`. Per process: replicas limit separately.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::LimitSettings;
use crate::domain::IntegrationKind;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct PlanLimits {
    settings: LimitSettings,
    buckets: Mutex<HashMap<(String, IntegrationKind), Bucket>>,
}

impl PlanLimits {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one message from the user's allowance, or returns the limit it is over.
    pub fn admit(
        &self,
        user_id: &str,
        integration: IntegrationKind,
        now: Instant,
    ) -> Result<(), u32> {
        let Some(limit) = self.settings.limit(user_id, integration) else {
            return Ok(());
        };
        let rate = f64::from(limit) / self.settings.interval.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets
            .entry((user_id.to_owned(), integration))
            .or_insert(Bucket {
                tokens: f64::from(limit),
                updated: now,
            });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(limit));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(limit)
        }
    }

    pub fn describe(&self, limit: u32, integration: IntegrationKind) -> String {
        format!(
            "plan limit of {limit} {integration} messages per {} reached; not sent",
            humantime::format_duration(self.settings.interval)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use IntegrationKind::{Slack, Sms};

    #[test]
    fn bucket_refills() {
        let mut s = LimitSettings {
            interval: Duration::from_secs(60),
            ..LimitSettings::default()
        };
        s.default.insert(Sms, 2);
        s.users.insert("vip".into(), [(Sms, 5)].into());
        let l = PlanLimits::new(s);
        let t = Instant::now();
        assert!(l.admit("u1", Sms, t).is_ok());
        assert!(l.admit("u1", Sms, t).is_ok());
        assert_eq!(l.admit("u1", Sms, t), Err(2));
        assert!(l.admit("u1", Slack, t).is_ok(), "no limit for slack");
        assert!(l.admit("u2", Sms, t).is_ok(), "per user");
        assert!(
            l.admit("u1", Sms, t + Duration::from_secs(30)).is_ok(),
            "refilled one"
        );
        for _ in 0..5 {
            assert!(l.admit("vip", Sms, t).is_ok());
        }
        assert_eq!(l.admit("vip", Sms, t), Err(5));
    }
}

//! Every metric of DESIGN.md. Counters are process-local and monotonic; the
//! `notimeter_period_*` gauges are read from the store at scrape time, so they
//! agree with the ledger whichever replica is scraped. A scrape never waits
//! long for the store: when it does not answer within the budget, the
//! store-derived gauges keep their last reading and `notimeter_store_up` is 0.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::store::{Store, StoreError, UsageRow};

/// The label under which users beyond `max_user_series` are counted.
pub const OTHER_USERS: &str = "_other";

pub struct Metrics {
    registry: Registry,
    pub notifications: IntCounterVec,
    pub alerts_received: IntCounterVec,
    pub delivery_attempts: IntCounterVec,
    pub delivery_latency: HistogramVec,
    pub webhook_requests: IntCounterVec,
    pub duplicates: IntCounter,
    pub alerts_undeliverable: IntCounterVec,
    pub ledger_closes: IntCounterVec,
    pub render_total: IntCounterVec,
    pub reload_total: IntCounterVec,
    pub render_channels: IntGauge,
    pub render_skipped: IntGauge,
    outbox_pending: IntGauge,
    store_up: IntGauge,
    period_start: prometheus::Gauge,
    period_notifications: IntGaugeVec,
    users: Mutex<HashSet<String>>,
    max_user_series: usize,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    pub fn new(max_user_series: usize) -> Self {
        let registry = Registry::new();
        let notifications = counter_vec(
            &registry,
            "notimeter_notifications_total",
            "Messages whose outcome became final, by user, integration and outcome.",
            &["user_id", "integration", "outcome"],
        );
        let alerts_received = counter_vec(
            &registry,
            "notimeter_alerts_received_total",
            "Alerts received from Alertmanager, by the user they were attributed to.",
            &["user_id"],
        );
        let delivery_attempts = counter_vec(
            &registry,
            "notimeter_delivery_attempts_total",
            "Delivery attempts, by integration and result (success or a failure reason).",
            &["integration", "result"],
        );
        let webhook_requests = counter_vec(
            &registry,
            "notimeter_webhook_requests_total",
            "Requests to the Alertmanager webhook, by HTTP status code.",
            &["code"],
        );
        let alerts_undeliverable = counter_vec(
            &registry,
            "notimeter_alerts_undeliverable_total",
            "Alerts recorded as undeliverable (no matching channel, bad alert, ...), by reason.",
            &["reason"],
        );
        let ledger_closes = counter_vec(
            &registry,
            "notimeter_ledger_closes_total",
            "Billing period closes (scheduled or requested), by result.",
            &["result"],
        );
        let render_total = counter_vec(
            &registry,
            "notimeter_render_total",
            "Renders of Alertmanager's configuration, by result (published, unchanged, rejected, reload_failed, error).",
            &["result"],
        );
        let reload_total = counter_vec(
            &registry,
            "notimeter_alertmanager_reload_total",
            "Alertmanager reloads after a render, by result (success: confirmed through its /metrics).",
            &["result"],
        );
        let render_channels = IntGauge::new(
            "notimeter_render_channels",
            "Channels in the last rendered Alertmanager configuration.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(render_channels.clone()))
            .expect("unique metric");
        let render_skipped = IntGauge::new(
            "notimeter_render_skipped_channels",
            "Channels left out of the last render because they cannot be rendered (see the log).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(render_skipped.clone()))
            .expect("unique metric");
        let period_start = prometheus::Gauge::new(
            "notimeter_period_start_timestamp_seconds",
            "When the open billing period started, in seconds since the Unix epoch.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(period_start.clone()))
            .expect("unique metric");
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "notimeter_delivery_latency_seconds",
                "Time from acceptance to final outcome, by integration.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                3600.0,
            ]),
            &["integration"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_latency.clone()))
            .expect("unique metric");
        let duplicates = IntCounter::new(
            "notimeter_duplicates_total",
            "Notifications dropped as duplicates of one seen within the dedupe window.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(duplicates.clone()))
            .expect("unique metric");
        let outbox_pending = IntGauge::new(
            "notimeter_outbox_pending",
            "Messages accepted and not yet final.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(outbox_pending.clone()))
            .expect("unique metric");
        let store_up = IntGauge::new(
            "notimeter_store_up",
            "1 when the store answered this scrape's reads in time; 0 when it did not, and the \
             store-derived gauges show their last reading.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_up.clone()))
            .expect("unique metric");
        let period_notifications = IntGaugeVec::new(
            Opts::new(
                "notimeter_period_notifications",
                "Messages final in the open billing period so far, by user, integration and outcome.",
            ),
            &["user_id", "integration", "outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(period_notifications.clone()))
            .expect("unique metric");
        Self {
            registry,
            notifications,
            alerts_received,
            delivery_attempts,
            delivery_latency,
            webhook_requests,
            duplicates,
            alerts_undeliverable,
            ledger_closes,
            render_total,
            reload_total,
            render_channels,
            render_skipped,
            outbox_pending,
            period_start,
            period_notifications,
            store_up,
            users: Mutex::new(HashSet::new()),
            max_user_series,
        }
    }

    /// The `user_id` label for a user: itself while fewer than `max_user_series`
    /// users have been seen, `_other` beyond.
    pub fn user_label<'a>(&self, user_id: &'a str) -> &'a str {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.contains(user_id) {
            return user_id;
        }
        if users.len() < self.max_user_series {
            users.insert(user_id.to_owned());
            return user_id;
        }
        OTHER_USERS
    }

    /// Counts a message that a newer one of its (channel, group) replaced
    /// before it was sent: final, never sent, not billed.
    pub fn superseded(&self, user_id: &str, integration: &str) {
        let user = self.user_label(user_id);
        self.notifications
            .with_label_values(&[user, integration, "superseded"])
            .inc();
    }

    /// Refreshes the store-derived gauges, waiting at most `budget` for the
    /// store, and renders the text format. Never fails: without the store the
    /// gauges keep their last reading and `notimeter_store_up` says so.
    pub async fn render(&self, store: &Store, budget: Duration) -> String {
        match tokio::time::timeout(budget, Self::read_store(store)).await {
            Ok(Ok(reading)) => {
                self.apply(reading);
                self.store_up.set(1);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = ?anyhow::Error::from(e), "reading the store for /metrics failed; serving the last reading");
                self.store_up.set(0);
            }
            Err(_) => {
                tracing::warn!(
                    budget = ?budget,
                    "the store did not answer /metrics in time; serving the last reading"
                );
                self.store_up.set(0);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn read_store(store: &Store) -> Result<StoreReading, StoreError> {
        let pending = store.pending_count().await?;
        let period = store.open_period().await?;
        let usage = store.usage(&period.id).await?;
        Ok(StoreReading {
            pending,
            period_start: period.start_at,
            usage,
        })
    }

    fn apply(&self, reading: StoreReading) {
        self.outbox_pending.set(reading.pending);
        self.period_start.set(reading.period_start as f64 / 1000.0);
        let mut sums: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for row in reading.usage {
            let user = self.user_label(&row.user_id).to_owned();
            let e = sums.entry((user, row.integration)).or_default();
            e.0 += row.delivered;
            e.1 += row.failed;
        }
        self.period_notifications.reset();
        for ((user, integration), (delivered, failed)) in sums {
            self.period_notifications
                .with_label_values(&[user.as_str(), integration.as_str(), "delivered"])
                .set(delivered);
            self.period_notifications
                .with_label_values(&[user.as_str(), integration.as_str(), "failed"])
                .set(failed);
        }
    }
}

/// What a scrape reads from the store.
struct StoreReading {
    pending: i64,
    period_start: i64,
    usage: Vec<UsageRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_series_are_capped() {
        let m = Metrics::new(2);
        assert_eq!(m.user_label("a"), "a");
        assert_eq!(m.user_label("b"), "b");
        assert_eq!(m.user_label("c"), OTHER_USERS);
        assert_eq!(m.user_label("a"), "a");
    }
}

//! Every metric of DESIGN.md. Counters are process-local and monotonic; the
//! `notimeter_period_*` gauges are read from the store at scrape time, so they
//! agree with the ledger whichever replica is scraped. A scrape never waits
//! long for the store: when it does not answer within the budget, the
//! store-derived gauges keep their last reading and `notimeter_store_up` is 0.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::store::{Store, StoreError, UsageRow};

/// The label under which users beyond `max_user_series` are counted.
pub const OTHER_USERS: &str = "_other";

/// The registry and its series. The counters are written only by the event
/// functions of [`super::events`], each of which also logs its event; the
/// store-derived gauges only by [`Metrics::render`].
pub struct Metrics {
    registry: Registry,
    pub(super) notifications: IntCounterVec,
    pub(super) alerts_received: IntCounterVec,
    pub(super) delivery_attempts: IntCounterVec,
    pub(super) delivery_latency: HistogramVec,
    pub(super) webhook_requests: IntCounterVec,
    pub(super) duplicates: IntCounter,
    pub(super) sms_segments: IntCounterVec,
    pub(super) test_sends: IntCounterVec,
    pub(super) template_failures: IntCounterVec,
    pub(super) alerts_undeliverable: IntCounterVec,
    pub(super) ledger_closes: IntCounterVec,
    pub(super) render_total: IntCounterVec,
    pub(super) reload_total: IntCounterVec,
    pub(super) render_channels: IntGauge,
    pub(super) render_skipped: IntGauge,
    pub(super) consul_syncs: IntCounterVec,
    pub(super) consul_last_sync: prometheus::Gauge,
    pub(super) consul_channels: IntGauge,
    pub(super) reconcile_scrapes: IntCounterVec,
    pub(super) reconcile_alertmanager: IntGaugeVec,
    pub(super) reconcile_received: IntGauge,
    pub(super) reconcile_drift: IntGauge,
    /// Webhook requests answered and not yet added to the stored count (see
    /// `crate::reconcile`).
    pub(super) received_unstored: AtomicI64,
    /// Whether the last reconciliation round found its count begun (and so
    /// whether shutdown stores what was received since).
    pub(super) reconciling: AtomicBool,
    outbox_pending: IntGauge,
    store_up: IntGauge,
    period_start: prometheus::Gauge,
    period_notifications: IntGaugeVec,
    users: Mutex<HashSet<String>>,
    max_user_series: usize,
}

/// Registers `metric` (every name is unique and valid: a failure is a bug).
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

const LATENCY_BUCKETS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

impl Metrics {
    /// Every metric of DESIGN.md, registered. (A list, one entry a metric:
    /// longer than most functions, and clearer in one piece.)
    pub fn new(max_user_series: usize) -> Self {
        let r = Registry::new();
        let metrics = Self {
            notifications: counters(
                &r,
                "notimeter_notifications_total",
                "Messages whose outcome became final, by user, integration and outcome.",
                &["user_id", "integration", "outcome"],
            ),
            alerts_received: counters(
                &r,
                "notimeter_alerts_received_total",
                "Alerts received from Alertmanager, by the user they were attributed to.",
                &["user_id"],
            ),
            delivery_attempts: counters(
                &r,
                "notimeter_delivery_attempts_total",
                "Delivery attempts, by integration and result (success or a failure reason).",
                &["integration", "result"],
            ),
            webhook_requests: counters(
                &r,
                "notimeter_webhook_requests_total",
                "Requests to the Alertmanager webhook, by HTTP status code.",
                &["code"],
            ),
            sms_segments: counters(
                &r,
                "notimeter_sms_segments_total",
                "SMS segments of delivered SMS, by user (what gateways charge).",
                &["user_id"],
            ),
            test_sends: counters(
                &r,
                "notimeter_test_sends_total",
                "Test notifications sent through the API (not billed), by integration and result \
                 (success or a failure reason).",
                &["integration", "result"],
            ),
            template_failures: counters(
                &r,
                "notimeter_template_failures_total",
                "Message templates that failed at send time (the field's default text was sent \
                 instead), by integration and field.",
                &["integration", "field"],
            ),
            alerts_undeliverable: counters(
                &r,
                "notimeter_alerts_undeliverable_total",
                "Alerts recorded as undeliverable (no matching channel, bad alert, ...), by reason.",
                &["reason"],
            ),
            ledger_closes: counters(
                &r,
                "notimeter_ledger_closes_total",
                "Billing period closes (scheduled or requested), by result.",
                &["result"],
            ),
            render_total: counters(
                &r,
                "notimeter_render_total",
                "Renders of Alertmanager's configuration, by result (published, unchanged, rejected, reload_failed, error).",
                &["result"],
            ),
            reload_total: counters(
                &r,
                "notimeter_alertmanager_reload_total",
                "Alertmanager reloads after a render, by result (success: confirmed through its /metrics).",
                &["result"],
            ),
            render_channels: gauge(
                &r,
                "notimeter_render_channels",
                "Channels in the last rendered Alertmanager configuration.",
            ),
            render_skipped: gauge(
                &r,
                "notimeter_render_skipped_channels",
                "Channels left out of the last render because they cannot be rendered (see the log).",
            ),
            consul_syncs: counters(
                &r,
                "notimeter_consul_sync_total",
                "Reads of Consul KV mirrored into channels, by result (applied, unchanged, refused: the \
                 deletion guard, error).",
                &["result"],
            ),
            consul_last_sync: register(
                &r,
                prometheus::Gauge::new(
                    "notimeter_consul_last_sync_timestamp_seconds",
                    "When Consul KV was last read and mirrored (applied or unchanged), in seconds since the Unix epoch.",
                ),
            ),
            consul_channels: gauge(
                &r,
                "notimeter_consul_channels",
                "Channels mirrored from Consul KV, after the last sync.",
            ),
            reconcile_scrapes: counters(
                &r,
                "notimeter_reconcile_scrapes_total",
                "Scrapes of the Alertmanagers' /metrics for reconciliation, by Alertmanager and result \
                 (success, error).",
                &["alertmanager", "result"],
            ),
            reconcile_alertmanager: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "notimeter_reconcile_alertmanager_requests",
                        "Webhook requests an Alertmanager says it sent since the reconciliation began.",
                    ),
                    &["alertmanager"],
                ),
            ),
            reconcile_received: gauge(
                &r,
                "notimeter_reconcile_received_requests",
                "Webhook requests notimeter received (all replicas) since the reconciliation began.",
            ),
            reconcile_drift: gauge(
                &r,
                "notimeter_reconcile_drift_requests",
                "Webhook requests the Alertmanagers sent minus those notimeter received, since the \
                 reconciliation began: requests lost on the way (notimeter down, network).",
            ),
            received_unstored: AtomicI64::new(0),
            reconciling: AtomicBool::new(false),
            period_start: register(
                &r,
                prometheus::Gauge::new(
                    "notimeter_period_start_timestamp_seconds",
                    "When the open billing period started, in seconds since the Unix epoch.",
                ),
            ),
            delivery_latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "notimeter_delivery_latency_seconds",
                        "Time from acceptance to final outcome, by integration.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["integration"],
                ),
            ),
            duplicates: register(
                &r,
                IntCounter::new(
                    "notimeter_duplicates_total",
                    "Notifications dropped as duplicates of one seen within the dedupe window.",
                ),
            ),
            outbox_pending: gauge(
                &r,
                "notimeter_outbox_pending",
                "Messages accepted and not yet final.",
            ),
            store_up: gauge(
                &r,
                "notimeter_store_up",
                "1 when the store answered this scrape's reads in time; 0 when it did not, and the \
                 store-derived gauges show their last reading.",
            ),
            period_notifications: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "notimeter_period_notifications",
                        "Messages final in the open billing period so far, by user, integration and outcome.",
                    ),
                    &["user_id", "integration", "outcome"],
                ),
            ),
            registry: r,
            users: Mutex::new(HashSet::new()),
            max_user_series,
        };
        metrics.known_series_at_zero();
        metrics
    }

    /// Metrics that no `/metrics` serves, for the CLI's one-shot verbs
    /// (`render`, `ledger close`), which have no registry to count into: the
    /// events still log. Keeps no user labels (every user is `_other`).
    pub fn detached() -> &'static Metrics {
        static DETACHED: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(0));
        &DETACHED
    }

    /// The `user_id` label for a user: itself while fewer than `max_user_series`
    /// users have been seen, `_other` beyond.
    pub(super) fn user_label<'a>(&self, user_id: &'a str) -> &'a str {
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
                tracing::warn!(error = %crate::error::Causes(&e), "reading the store for /metrics failed; serving the last reading");
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
        self.encode()
    }

    /// The registry in the text format, as it stands.
    pub(super) fn encode(&self) -> String {
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
        let mut sums: BTreeMap<(String, &str), (i64, i64)> = BTreeMap::new();
        for row in reading.usage {
            let user = self.user_label(&row.user_id).to_owned();
            let e = sums.entry((user, row.integration.as_str())).or_default();
            e.0 += row.delivered;
            e.1 += row.failed;
        }
        self.period_notifications.reset();
        for ((user, integration), (delivered, failed)) in sums {
            self.period_notifications
                .with_label_values(&[user.as_str(), integration, "delivered"])
                .set(delivered);
            self.period_notifications
                .with_label_values(&[user.as_str(), integration, "failed"])
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

//! One function per counted event: each logs the event (at the level and with
//! the fields the code logged it with before these functions existed) and
//! counts it, so that the log and the counters cannot drift apart (Vector's
//! `emit`). Events that were only counted log at TRACE.
//!
//! Label values stay bounded: `user_id` through the `max_user_series` cap,
//! the other labels from fixed sets (the domain's enums, status codes).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use tracing::{debug, info, trace, warn};

use super::Metrics;
use crate::domain::{
    AttemptResult, ChannelId, IntegrationKind, MessageState, Reason, TemplateField,
    UndeliverableReason, UserId,
};
use crate::store::Superseded;

// Each event logs under the target of the module it happens in, as it did
// before it moved here, so that `RUST_LOG` filters keep working.
const INGEST: &str = "notimeter::ingest";
const DISPATCH: &str = "notimeter::dispatch::worker";
const LEDGER: &str = "notimeter::ledger";
const RENDER: &str = "notimeter::render::publish";
const RECONCILE: &str = "notimeter::reconcile";

/// The `outcome` of a message that was sent or tried: what bills. A message
/// superseded before it was sent is final too; it has events of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    Delivered,
    Failed,
}

impl Final {
    pub fn as_str(self) -> &'static str {
        MessageState::from(self).as_str()
    }
}

impl From<Final> for MessageState {
    fn from(outcome: Final) -> Self {
        match outcome {
            Final::Delivered => MessageState::Delivered,
            Final::Failed => MessageState::Failed,
        }
    }
}

/// The `result` of one render (`notimeter_render_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderResult {
    /// Written (and reloaded, when an Alertmanager URL is set).
    Published,
    /// The same bytes as the current file.
    Unchanged,
    /// Refused by a guard, amtool or the renderer itself.
    Rejected,
    /// Written, but Alertmanager did not confirm it; the last good file is back.
    ReloadFailed,
    /// Anything else (no output set, a write that failed).
    Error,
}

impl RenderResult {
    pub const ALL: [RenderResult; 5] = [
        RenderResult::Published,
        RenderResult::Unchanged,
        RenderResult::Rejected,
        RenderResult::ReloadFailed,
        RenderResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RenderResult::Published => "published",
            RenderResult::Unchanged => "unchanged",
            RenderResult::Rejected => "rejected",
            RenderResult::ReloadFailed => "reload_failed",
            RenderResult::Error => "error",
        }
    }
}

/// The `result` of one Consul sync (`notimeter_consul_sync_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsulSyncResult {
    /// Channels were created, changed or deleted.
    Applied,
    /// Consul describes the channels as they are stored.
    Unchanged,
    /// The deletion guard refused the sync; nothing changed.
    Refused,
    /// Consul could not be read (or the store written); nothing changed.
    Error,
}

impl ConsulSyncResult {
    pub const ALL: [ConsulSyncResult; 4] = [
        ConsulSyncResult::Applied,
        ConsulSyncResult::Unchanged,
        ConsulSyncResult::Refused,
        ConsulSyncResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsulSyncResult::Applied => "applied",
            ConsulSyncResult::Unchanged => "unchanged",
            ConsulSyncResult::Refused => "refused",
            ConsulSyncResult::Error => "error",
        }
    }
}

/// The `result` of a billing period close (`notimeter_ledger_closes_total`).
#[derive(Clone, Copy)]
enum CloseResult {
    Success,
    Error,
}

impl CloseResult {
    const ALL: [CloseResult; 2] = [CloseResult::Success, CloseResult::Error];

    fn as_str(self) -> &'static str {
        match self {
            CloseResult::Success => "success",
            CloseResult::Error => "error",
        }
    }
}

/// The `result` of an Alertmanager reload (`notimeter_alertmanager_reload_total`).
#[derive(Clone, Copy)]
enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    const ALL: [ReloadResult; 2] = [ReloadResult::Success, ReloadResult::Failure];

    fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// The webhook route's answers that a rule may watch from the first scrape.
const WEBHOOK_CODES: [u16; 8] = [200, 400, 401, 403, 408, 413, 422, 503];

impl Metrics {
    /// The label sets known up front, at 0, as Alertmanager does: so that
    /// `rate()` and `increase()` in rules and dashboards work from the first
    /// scrape, and see the first failure. (Series with a `user_id` appear
    /// with their user.)
    pub(super) fn known_series_at_zero(&self) {
        for integration in IntegrationKind::ALL {
            let results = std::iter::once("success").chain(Reason::ALL.iter().map(|r| r.as_str()));
            for result in results {
                let labels = [integration.as_str(), result];
                self.delivery_attempts.with_label_values(&labels);
                self.test_sends.with_label_values(&labels);
            }
        }
        for integration in IntegrationKind::ALL {
            for field in TemplateField::of(integration) {
                self.template_failures
                    .with_label_values(&[integration.as_str(), field.as_str()]);
            }
        }
        for reason in UndeliverableReason::ALL {
            self.alerts_undeliverable
                .with_label_values(&[reason.as_str()]);
        }
        for code in WEBHOOK_CODES {
            let code = StatusCode::from_u16(code).expect("a valid status code");
            self.webhook_requests.with_label_values(&[code.as_str()]);
        }
    }

    // Ingest.

    /// An answer to the webhook route, refusals and body timeouts included.
    pub fn webhook_request(&self, status: StatusCode) {
        trace!(
            target: INGEST,
            status = status.as_u16(),
            "webhook request answered"
        );
        self.webhook_requests
            .with_label_values(&[status.as_str()])
            .inc();
        self.received_unstored.fetch_add(1, Ordering::Relaxed);
    }

    /// `alerts` alerts of one stored notification attributed to `user_id`.
    pub fn alerts_received(&self, user_id: &str, alerts: u64) {
        trace!(target: INGEST, user_id = %user_id, alerts, "alerts received");
        let user = self.user_label(user_id);
        self.alerts_received
            .with_label_values(&[user])
            .inc_by(alerts);
    }

    /// An alert recorded as undeliverable (kept in the store, never sent).
    pub fn alert_undeliverable(&self, reason: UndeliverableReason) {
        trace!(target: INGEST, reason = %reason, "alert recorded as undeliverable");
        self.alerts_undeliverable
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A notification dropped as a duplicate of one seen within the dedupe
    /// window. Its alert count is a field of the ingest span.
    pub fn duplicate(&self) {
        info!(target: INGEST, "duplicate notification ignored");
        self.duplicates.inc();
    }

    /// Older messages of a group, still waiting, that a newly stored one
    /// replaced: final, never sent, not billed.
    pub fn superseded_on_enqueue(&self, superseded: &[Superseded]) {
        if superseded.is_empty() {
            return;
        }
        for s in superseded {
            self.count_superseded(&s.user_id, s.integration);
        }
        info!(
            target: INGEST,
            messages = superseded.len(),
            "older messages of the group superseded before they were sent"
        );
    }

    // Delivery.

    /// A stored attempt. Its failure, if any, was logged when it happened.
    pub fn attempt_recorded(
        &self,
        message_id: i64,
        integration: IntegrationKind,
        result: AttemptResult,
    ) {
        trace!(
            target: DISPATCH,
            message_id,
            integration = %integration,
            result = %result,
            "attempt recorded"
        );
        self.delivery_attempts
            .with_label_values(&[integration.as_str(), result.as_str()])
            .inc();
    }

    /// A message whose outcome became final, `accepted_to_final` after it
    /// was accepted.
    pub fn message_final(
        &self,
        message_id: i64,
        user_id: &str,
        integration: IntegrationKind,
        outcome: Final,
        accepted_to_final: Duration,
    ) {
        let user = self.user_label(user_id);
        self.notifications
            .with_label_values(&[user, integration.as_str(), outcome.as_str()])
            .inc();
        self.delivery_latency
            .with_label_values(&[integration.as_str()])
            .observe(accepted_to_final.as_secs_f64());
        debug!(
            target: DISPATCH,
            message_id,
            user_id = %user_id,
            outcome = outcome.as_str(),
            "message final"
        );
    }

    /// A test notification sent to a channel: delivered, or failed for `failure`.
    pub fn test_sent(
        &self,
        user_id: &UserId,
        channel_id: &ChannelId,
        integration: IntegrationKind,
        failure: Option<Reason>,
    ) {
        let result = failure.map_or("success", Reason::as_str);
        info!(target: DISPATCH, user_id = %user_id, channel_id = %channel_id, integration = integration.as_str(), result, "test notification sent");
        self.test_sends
            .with_label_values(&[integration.as_str(), result])
            .inc();
    }

    /// A channel's template for `field` failed on a message's data: its
    /// default text goes out instead.
    pub fn template_failed(
        &self,
        message_id: i64,
        channel_id: &str,
        integration: IntegrationKind,
        field: TemplateField,
        error: &str,
    ) {
        warn!(
            target: DISPATCH,
            message_id, channel_id = %channel_id, field = field.as_str(), error = %error,
            "a message template failed; its field's default text is sent instead"
        );
        self.template_failures
            .with_label_values(&[integration.as_str(), field.as_str()])
            .inc();
    }

    /// A delivered SMS, sent in `segments` segments.
    pub fn sms_sent(&self, user_id: &str, segments: i64) {
        trace!(target: DISPATCH, user_id = %user_id, segments, "sms segments counted");
        let user = self.user_label(user_id);
        self.sms_segments
            .with_label_values(&[user])
            .inc_by(segments.max(0) as u64);
    }

    /// A message that would have waited (a retry, a hold, pacing) while a
    /// newer one of its group was queued: final as superseded, not billed.
    pub fn message_superseded(&self, message_id: i64, user_id: &str, integration: IntegrationKind) {
        debug!(
            target: DISPATCH,
            message_id,
            "superseded by a newer message of its group"
        );
        self.count_superseded(user_id, integration);
    }

    fn count_superseded(&self, user_id: &str, integration: IntegrationKind) {
        let user = self.user_label(user_id);
        self.notifications
            .with_label_values(&[
                user,
                integration.as_str(),
                MessageState::Superseded.as_str(),
            ])
            .inc();
    }

    // Ledger.

    /// The close schedule started: both results' series exist from the first
    /// scrape, so a rule on `increase(...{result="error"})` sees the first error.
    pub fn ledger_closes_started(&self) {
        for result in CloseResult::ALL {
            self.ledger_closes.with_label_values(&[result.as_str()]);
        }
    }

    /// The open period closed and its report written; `opened_id` is the
    /// period that counting goes on in. The closed period's id is a field of
    /// the ledger's span.
    pub fn ledger_closed(&self, opened_id: &str) {
        info!(target: LEDGER, opened = %opened_id, "billing period closed");
        self.ledger_closes
            .with_label_values(&[CloseResult::Success.as_str()])
            .inc();
    }

    /// A close that failed in the store or in writing its report. The caller
    /// reports the error (the scheduler logs it, the API answers 503).
    pub fn ledger_close_failed(&self) {
        debug!(target: LEDGER, "billing period close failed");
        self.ledger_closes
            .with_label_values(&[CloseResult::Error.as_str()])
            .inc();
    }

    // Consul.

    /// The watch started: every result's series exists from the first scrape.
    pub fn consul_watch_started(&self) {
        for result in ConsulSyncResult::ALL {
            self.consul_syncs.with_label_values(&[result.as_str()]);
        }
    }

    /// One sync ended; `channels`: the Consul channels stored after it
    /// (unknown after an error), `at`: now, in milliseconds.
    pub fn consul_synced(&self, result: ConsulSyncResult, channels: Option<usize>, at: i64) {
        debug!(target: "notimeter::consul", result = result.as_str(), "consul sync finished");
        // The gauges first: whoever sees the sync counted sees its figures.
        if matches!(
            result,
            ConsulSyncResult::Applied | ConsulSyncResult::Unchanged
        ) {
            self.consul_last_sync.set(at as f64 / 1000.0);
        }
        if let Some(n) = channels {
            self.consul_channels.set(n as i64);
        }
        self.consul_syncs
            .with_label_values(&[result.as_str()])
            .inc();
    }

    // Reconciliation.

    /// Takes the webhook requests answered since the last call (to add to
    /// the stored count).
    pub fn take_received(&self) -> i64 {
        self.received_unstored.swap(0, Ordering::Relaxed)
    }

    /// Whether the last round found the count begun, for this process's
    /// replicas' URL set.
    pub fn set_reconciling(&self, counting: bool) {
        self.reconciling.store(counting, Ordering::Relaxed);
    }

    pub fn reconciling(&self) -> bool {
        self.reconciling.load(Ordering::Relaxed)
    }

    /// Gives back requests taken by [`Metrics::take_received`] that could
    /// not be stored, to be added next time.
    pub fn untake_received(&self, n: i64) {
        self.received_unstored.fetch_add(n, Ordering::Relaxed);
    }

    /// Reconciliation with `alertmanager` starts: its scrape counters from zero.
    pub fn reconcile_started(&self, alertmanager: &str) {
        for result in ["success", "error"] {
            self.reconcile_scrapes
                .with_label_values(&[alertmanager, result]);
        }
    }

    /// One scrape of an Alertmanager's `/metrics`: failed with `error`, or not.
    pub fn reconcile_scraped(&self, alertmanager: &str, error: Option<&anyhow::Error>) {
        let result = match error {
            None => "success",
            Some(e) => {
                warn!(target: RECONCILE, alertmanager, error = %crate::error::Causes(&**e), "scraping Alertmanager for reconciliation failed");
                "error"
            }
        };
        self.reconcile_scrapes
            .with_label_values(&[alertmanager, result])
            .inc();
    }

    /// The count as it stands after a round.
    pub fn reconciled(&self, count: &crate::store::Reconciliation) {
        for am in &count.alertmanagers {
            self.reconcile_alertmanager
                .with_label_values(&[am.url.as_str()])
                .set(am.requests);
        }
        self.reconcile_received.set(count.received);
        let drift = count.drift();
        if drift != self.reconcile_drift.get() {
            info!(target: RECONCILE, sent = count.sent(), received = count.received, drift, "reconciliation with Alertmanager changed");
        }
        self.reconcile_drift.set(drift);
    }

    // Render.

    /// The renderer started (`render.output` set): every render result's
    /// series exists from the first scrape, and with an Alertmanager to
    /// reload (`reloads`), every reload result's too.
    pub fn renderer_started(&self, reloads: bool) {
        for result in RenderResult::ALL {
            self.render_total.with_label_values(&[result.as_str()]);
        }
        if reloads {
            for result in ReloadResult::ALL {
                self.reload_total.with_label_values(&[result.as_str()]);
            }
        }
    }

    /// A rendered candidate: `channels` in it, and the channels left out as
    /// (user_id, channel_id, reason).
    pub fn render_candidate<'a>(
        &self,
        channels: usize,
        skipped: impl ExactSizeIterator<Item = (&'a str, &'a str, &'a str)>,
    ) {
        let left_out = skipped.len();
        for (user_id, channel_id, reason) in skipped {
            warn!(
                target: RENDER,
                user_id = %user_id,
                channel_id = %channel_id,
                reason = %reason,
                "channel left out of the rendered config"
            );
        }
        self.render_channels.set(channels as i64);
        self.render_skipped.set(left_out as i64);
    }

    /// How one render ended.
    pub fn render_finished(&self, result: RenderResult) {
        debug!(target: RENDER, result = result.as_str(), "render finished");
        self.render_total
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Alertmanager reloaded and its `/metrics` confirmed the new file.
    pub fn alertmanager_reloaded(&self) {
        info!(
            target: RENDER,
            "Alertmanager reloaded and confirmed the new configuration"
        );
        self.reload_total
            .with_label_values(&[ReloadResult::Success.as_str()])
            .inc();
    }

    /// Alertmanager did not take (or confirm) the new file; the caller
    /// restores the last good one.
    pub fn alertmanager_reload_failed(&self, error: &str) {
        warn!(
            target: RENDER,
            error = %error,
            "Alertmanager reload failed; restoring the last good configuration"
        );
        self.reload_total
            .with_label_values(&[ReloadResult::Failure.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;
    use crate::metering::metrics::OTHER_USERS;

    /// The value of one sample of `name` with exactly `labels`, read from the
    /// text format as `/metrics` shows it (a histogram gives its count).
    fn sample(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = m.encode();
        let lines = text.lines().map(|l| Ok::<_, std::io::Error>(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
        let sample = scrape.samples.into_iter().find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })?;
        Some(match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => unreachable!("no summaries"),
        })
    }

    #[test]
    fn known_label_sets_exist_at_zero() {
        let m = Metrics::new(10);
        let attempts = |i, r| {
            sample(
                &m,
                "notimeter_delivery_attempts_total",
                &[("integration", i), ("result", r)],
            )
        };
        assert_eq!(attempts("webhook", "success"), Some(0.0));
        assert_eq!(attempts("sms", "rateLimited"), Some(0.0));
        let undeliverable =
            |r| sample(&m, "notimeter_alerts_undeliverable_total", &[("reason", r)]);
        assert_eq!(undeliverable("no_channel"), Some(0.0));
        assert_eq!(
            sample(&m, "notimeter_webhook_requests_total", &[("code", "503")]),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &m,
                "notimeter_test_sends_total",
                &[("integration", "slack"), ("result", "success")]
            ),
            Some(0.0)
        );
    }

    fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(m, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// One logged event: its level, target and message.
    type Logged = (Level, &'static str, String);

    /// Every event logged while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<Logged> {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<Logged>>>);
        impl<S: tracing::Subscriber> Layer<S> for Capture {
            fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
                struct Message(String);
                impl tracing::field::Visit for Message {
                    fn record_debug(
                        &mut self,
                        field: &tracing::field::Field,
                        value: &dyn std::fmt::Debug,
                    ) {
                        if field.name() == "message" {
                            self.0 = format!("{value:?}");
                        }
                    }
                }
                let mut message = Message(String::new());
                event.record(&mut message);
                self.0.lock().unwrap().push((
                    *event.metadata().level(),
                    event.metadata().target(),
                    message.0,
                ));
            }
        }
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, f);
        let events = capture.0.lock().unwrap().clone();
        events
    }

    fn superseded(user_id: &str, integration: &str) -> Superseded {
        Superseded {
            message_id: 1,
            user_id: user_id.into(),
            integration: integration.parse().unwrap(),
        }
    }

    #[test]
    fn ingest_events_count_their_series() {
        let m = Metrics::new(10);
        let log = logged(|| {
            m.webhook_request(StatusCode::OK);
            m.webhook_request(StatusCode::OK);
            m.webhook_request(StatusCode::SERVICE_UNAVAILABLE);
            m.alerts_received("u1", 3);
            m.alerts_received("u1", 2);
            m.alert_undeliverable(UndeliverableReason::NoChannel);
            m.duplicate();
            m.superseded_on_enqueue(&[]);
            m.superseded_on_enqueue(&[superseded("u1", "slack"), superseded("u2", "slack")]);
        });
        let code = |c| value(&m, "notimeter_webhook_requests_total", &[("code", c)]);
        assert_eq!((code("200"), code("503")), (2.0, 1.0));
        assert_eq!(
            value(&m, "notimeter_alerts_received_total", &[("user_id", "u1")]),
            5.0
        );
        assert_eq!(
            value(
                &m,
                "notimeter_alerts_undeliverable_total",
                &[("reason", "no_channel")]
            ),
            1.0
        );
        assert_eq!(value(&m, "notimeter_duplicates_total", &[]), 1.0);
        for user in ["u1", "u2"] {
            let labels = [
                ("user_id", user),
                ("integration", "slack"),
                ("outcome", "superseded"),
            ];
            assert_eq!(value(&m, "notimeter_notifications_total", &labels), 1.0);
        }
        let info: Vec<&str> = log
            .iter()
            .filter(|(level, _, _)| *level == Level::INFO)
            .map(|(_, _, message)| message.as_str())
            .collect();
        assert_eq!(
            info,
            [
                "duplicate notification ignored",
                "older messages of the group superseded before they were sent"
            ],
            "an empty superseded list logs nothing"
        );
        assert!(log.iter().all(|(_, target, _)| *target == INGEST));
    }

    #[test]
    fn delivery_events_count_their_series() {
        let m = Metrics::new(10);
        let log = logged(|| {
            m.attempt_recorded(1, "slack".parse().unwrap(), "serverError".parse().unwrap());
            m.attempt_recorded(1, "slack".parse().unwrap(), "success".parse().unwrap());
            m.message_final(
                1,
                "u1",
                "slack".parse().unwrap(),
                Final::Delivered,
                Duration::from_millis(1500),
            );
            m.attempt_recorded(
                2,
                "webhook".parse().unwrap(),
                "clientError".parse().unwrap(),
            );
            m.message_final(
                2,
                "u1",
                "webhook".parse().unwrap(),
                Final::Failed,
                Duration::ZERO,
            );
            m.message_superseded(3, "u2", "email".parse().unwrap());
        });
        let attempts = |i, r| {
            value(
                &m,
                "notimeter_delivery_attempts_total",
                &[("integration", i), ("result", r)],
            )
        };
        assert_eq!(attempts("slack", "serverError"), 1.0);
        assert_eq!(attempts("slack", "success"), 1.0);
        assert_eq!(attempts("webhook", "clientError"), 1.0);
        let notifications = |u, i, o| {
            sample(
                &m,
                "notimeter_notifications_total",
                &[("user_id", u), ("integration", i), ("outcome", o)],
            )
        };
        assert_eq!(notifications("u1", "slack", "delivered"), Some(1.0));
        assert_eq!(notifications("u1", "webhook", "failed"), Some(1.0));
        assert_eq!(notifications("u2", "email", "superseded"), Some(1.0));
        assert_eq!(notifications("u1", "slack", "failed"), None);
        // Latency is observed for sent messages only, not for superseded ones.
        let latency = |i| {
            sample(
                &m,
                "notimeter_delivery_latency_seconds",
                &[("integration", i)],
            )
        };
        assert_eq!(
            (latency("slack"), latency("webhook"), latency("email")),
            (Some(1.0), Some(1.0), None)
        );
        let debug: Vec<&str> = log
            .iter()
            .filter(|(level, _, _)| *level == Level::DEBUG)
            .map(|(_, _, message)| message.as_str())
            .collect();
        assert_eq!(
            debug,
            [
                "message final",
                "message final",
                "superseded by a newer message of its group"
            ]
        );
        assert!(log.iter().all(|(_, target, _)| *target == DISPATCH));
    }

    #[test]
    fn ledger_and_render_events_count_their_series() {
        let m = Metrics::new(10);
        let log = logged(|| {
            m.ledger_closed("p2");
            m.ledger_close_failed();
            m.ledger_close_failed();
            m.render_candidate(
                3,
                [("u1", "c1", "no address"), ("u2", "c9", "bad url")].into_iter(),
            );
            m.render_finished(RenderResult::Published);
            m.render_finished(RenderResult::ReloadFailed);
            m.alertmanager_reloaded();
            m.alertmanager_reload_failed("no confirmation");
        });
        let closes = |r| value(&m, "notimeter_ledger_closes_total", &[("result", r)]);
        assert_eq!((closes("success"), closes("error")), (1.0, 2.0));
        assert_eq!(value(&m, "notimeter_render_channels", &[]), 3.0);
        assert_eq!(value(&m, "notimeter_render_skipped_channels", &[]), 2.0);
        let renders = |r| value(&m, "notimeter_render_total", &[("result", r)]);
        assert_eq!((renders("published"), renders("reload_failed")), (1.0, 1.0));
        assert_eq!(
            sample(&m, "notimeter_render_total", &[("result", "error")]),
            None
        );
        let reloads = |r| value(&m, "notimeter_alertmanager_reload_total", &[("result", r)]);
        assert_eq!((reloads("success"), reloads("failure")), (1.0, 1.0));
        let warned: Vec<&str> = log
            .iter()
            .filter(|(level, _, _)| *level == Level::WARN)
            .map(|(_, target, _)| *target)
            .collect();
        assert_eq!(
            warned, [RENDER; 3],
            "two channels left out, one failed reload"
        );
        assert!(log.contains(&(Level::INFO, LEDGER, "billing period closed".into())));
    }

    #[test]
    fn started_tasks_show_their_results_at_zero() {
        let m = Metrics::new(10);
        assert_eq!(
            sample(&m, "notimeter_ledger_closes_total", &[("result", "error")]),
            None
        );
        m.ledger_closes_started();
        m.renderer_started(false);
        for r in ["success", "error"] {
            assert_eq!(
                value(&m, "notimeter_ledger_closes_total", &[("result", r)]),
                0.0
            );
        }
        for r in RenderResult::ALL {
            assert_eq!(
                value(&m, "notimeter_render_total", &[("result", r.as_str())]),
                0.0
            );
        }
        assert_eq!(
            sample(
                &m,
                "notimeter_alertmanager_reload_total",
                &[("result", "failure")]
            ),
            None,
            "no Alertmanager to reload: no reload series"
        );
        m.renderer_started(true);
        for r in ["success", "failure"] {
            assert_eq!(
                value(&m, "notimeter_alertmanager_reload_total", &[("result", r)]),
                0.0
            );
        }
    }

    #[test]
    fn user_labels_stay_capped_across_events() {
        let m = Metrics::new(2);
        m.alerts_received("a", 1);
        m.message_final(
            1,
            "b",
            "slack".parse().unwrap(),
            Final::Delivered,
            Duration::ZERO,
        );
        // Beyond the cap: counted, under `_other`.
        m.alerts_received("c", 1);
        m.message_final(
            2,
            "d",
            "slack".parse().unwrap(),
            Final::Delivered,
            Duration::ZERO,
        );
        m.message_superseded(3, "e", "slack".parse().unwrap());
        m.superseded_on_enqueue(&[superseded("f", "slack")]);
        // Users seen before the cap was reached keep their own label.
        m.alerts_received("b", 1);
        let received = |u| sample(&m, "notimeter_alerts_received_total", &[("user_id", u)]);
        assert_eq!(
            (
                received("a"),
                received("b"),
                received("c"),
                received(OTHER_USERS)
            ),
            (Some(1.0), Some(1.0), None, Some(1.0))
        );
        let notifications = |u, o| {
            sample(
                &m,
                "notimeter_notifications_total",
                &[("user_id", u), ("integration", "slack"), ("outcome", o)],
            )
        };
        assert_eq!(notifications("b", "delivered"), Some(1.0));
        assert_eq!(notifications(OTHER_USERS, "delivered"), Some(1.0));
        assert_eq!(notifications(OTHER_USERS, "superseded"), Some(2.0));
        assert_eq!(notifications("d", "delivered"), None);
    }

    #[test]
    fn detached_metrics_log_and_keep_no_users() {
        let m = Metrics::detached();
        let log = logged(|| m.ledger_closed("p2"));
        assert_eq!(
            log,
            [(Level::INFO, LEDGER, "billing period closed".to_owned())]
        );
        m.alerts_received("u1", 1);
        assert_eq!(
            sample(m, "notimeter_alerts_received_total", &[("user_id", "u1")]),
            None
        );
    }
}

//! The worker pool. Due messages are claimed in batches with a lease; each is
//! sent on its own task (at most `workers` at once); finished attempts are
//! written back in batches by one recorder. A message whose holder died is
//! claimed again once its lease has expired.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::limits::PlanLimits;
use super::pace::Pacer;
use super::retry::RetryPolicy;
use super::{Integration, Reason, Registry, SendContext, SendError, Sent};
use crate::clock::{duration_ms, now_ms};
use crate::config::{DispatchSettings, LimitSettings};
use crate::domain::{ChannelSpec, WebhookPayload};
use crate::metering::Metrics;
use crate::store::{AttemptRecord, ClaimedMessage, Outcome, Recorded, Store};

pub struct Dispatcher {
    store: Arc<Store>,
    registry: Registry,
    ctx: Arc<SendContext>,
    policy: RetryPolicy,
    settings: DispatchSettings,
    owner: String,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<i64>>,
    pacer: Pacer,
    limits: PlanLimits,
}

/// What became of one claimed message this round.
enum Step {
    Sent(Sent),
    Failed(SendError),
    /// Over the user's plan limit: final, and never sent.
    OverLimit(String),
    /// Not now (pacing or the destination's in-flight cap); back to the
    /// outbox until `due_at`. `paced`: a pace slot is reserved for it.
    Deferred {
        due_at: i64,
        paced: bool,
    },
}

/// A message ready to send: its integration, settings and payload.
struct Prepared {
    integration: Arc<dyn Integration>,
    settings: serde_json::Value,
    payload: WebhookPayload,
}

/// An attempt's record plus what the metrics need once it is stored.
struct Finished {
    record: AttemptRecord,
    accepted_at: i64,
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        registry: Registry,
        ctx: Arc<SendContext>,
        settings: DispatchSettings,
        limits: LimitSettings,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            registry,
            ctx,
            policy: RetryPolicy::from(&settings),
            settings,
            owner: format!("{}-{}", hostname(), uuid::Uuid::new_v4()),
            metrics,
            wake,
            in_flight: Mutex::new(HashSet::new()),
            pacer: Pacer::default(),
            limits: PlanLimits::new(limits),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Works off the outbox until `shutdown`; then stops claiming, waits up to
    /// `grace` for sends in flight and releases what did not finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        info!(owner = %self.owner, workers = self.settings.workers, "dispatcher started");
        let (tx, rx) = mpsc::channel::<Finished>(4 * self.settings.workers.max(64));
        let recorder = tokio::spawn(self.clone().record_loop(rx));
        let permits = Arc::new(Semaphore::new(self.settings.workers));
        let mut tasks = JoinSet::new();
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tasks.join_next() => continue,
                }
            }
            let limit = free.min(self.settings.batch_size) as i64;
            let now = now_ms();
            let lease_until = now + duration_ms(self.settings.lease);
            match self.store.claim(&self.owner, now, lease_until, limit).await {
                Ok(batch) if !batch.is_empty() => {
                    debug!(claimed = batch.len(), "claimed messages");
                    for msg in batch {
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        self.in_flight().insert(msg.id);
                        let this = self.clone();
                        let tx = tx.clone();
                        tasks.spawn(async move {
                            let finished = this.deliver(msg).await;
                            // The recorder owns it now; it takes it out of `in_flight`.
                            let _ = tx.send(finished).await;
                            drop(permit);
                        });
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
                Err(e) => {
                    error!(error = ?anyhow::Error::from(e), "claiming messages failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(self.settings.poll_interval.max(Duration::from_millis(500))) => {}
                    }
                }
            }
        }
        let pending = tasks.len();
        if pending > 0 {
            info!(in_flight = pending, "waiting for sends in flight");
        }
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(tx);
        let _ = recorder.await;
        let left: Vec<i64> = self.in_flight().drain().collect();
        if !left.is_empty() {
            warn!(
                messages = left.len(),
                "releasing messages whose send did not finish in time"
            );
            if let Err(e) = self.store.release(&self.owner, &left).await {
                error!(error = ?anyhow::Error::from(e), "releasing leases failed; they expire on their own");
            }
        }
        info!("dispatcher stopped");
    }

    /// Loads what a send needs; failures here are permanent, but for a store error.
    async fn prepare(&self, msg: &ClaimedMessage) -> Result<Prepared, SendError> {
        let integration = self
            .registry
            .get(&msg.integration)
            .cloned()
            .ok_or_else(|| {
                SendError::permanent(
                    Reason::Other,
                    format!("unknown integration {:?}", msg.integration),
                )
            })?;
        let channel = self
            .store
            .get_channel(&msg.user_id, &msg.channel_id)
            .await
            .map_err(|e| SendError {
                reason: Reason::Other,
                retryable: true,
                retry_after: None,
                status: None,
                detail: format!("loading the channel failed: {e}"),
            })?
            .ok_or_else(|| SendError::permanent(Reason::Other, "the channel was deleted"))?;
        let spec: ChannelSpec = serde_json::from_str(&channel.spec).map_err(|e| {
            SendError::permanent(Reason::Other, format!("stored channel is corrupt: {e}"))
        })?;
        if !spec.enabled {
            return Err(SendError::permanent(
                Reason::Other,
                "the channel was disabled",
            ));
        }
        let payload: WebhookPayload = serde_json::from_str(&msg.payload).map_err(|e| {
            SendError::permanent(Reason::Other, format!("stored message is corrupt: {e}"))
        })?;
        Ok(Prepared {
            integration,
            settings: spec.settings,
            payload,
        })
    }

    /// Plan limit (on a message's first try), pacing, then the send itself.
    async fn step(&self, msg: &ClaimedMessage) -> Step {
        let p = match self.prepare(msg).await {
            Ok(p) => p,
            Err(e) => return Step::Failed(e),
        };
        let now = Instant::now();
        if msg.attempts == 0 && !msg.paced {
            if let Err(limit) = self.limits.admit(&msg.user_id, &msg.integration, now) {
                return Step::OverLimit(self.limits.describe(limit, &msg.integration));
            }
        }
        let destination = p.integration.destination(&p.settings);
        let pace = self.settings.pace_for(&msg.integration);
        // With a pace, the slot is reserved for this message; with none, only a
        // destination's own "wait" (a 429's hint) defers it, and it checks again.
        if let (Some(key), false) = (&destination, msg.paced) {
            let slot = self.pacer.reserve(key, pace, now);
            let wait = slot.saturating_duration_since(now);
            if wait > Duration::from_millis(5) {
                return Step::Deferred {
                    due_at: now_ms() + duration_ms(wait),
                    paced: !pace.is_zero(),
                };
            }
        }
        // A slow destination holds at most this many workers; the rest of its
        // messages wait briefly in the outbox, keeping a reserved pace slot.
        let _in_flight = match &destination {
            Some(key) => match self
                .pacer
                .enter(key, self.settings.max_in_flight_per_destination)
            {
                Some(place) => Some(place),
                None => {
                    let wait = rand::random_range(800..1200);
                    return Step::Deferred {
                        due_at: now_ms() + wait,
                        paced: msg.paced || !pace.is_zero(),
                    };
                }
            },
            None => None,
        };
        let sent = tokio::time::timeout(
            self.settings.send_timeout,
            p.integration.send(&self.ctx, &p.settings, &p.payload),
        )
        .await;
        match sent {
            Ok(Ok(sent)) => Step::Sent(sent),
            Ok(Err(e)) => {
                if let (Some(key), Some(hint)) = (&destination, e.retry_after) {
                    // The destination asked everyone to wait, not just this message.
                    self.pacer
                        .hold(key, Instant::now() + hint.min(self.policy.max_retry_after));
                }
                Step::Failed(e)
            }
            Err(_) => Step::Failed(SendError {
                reason: Reason::ContextDeadlineExceeded,
                retryable: true,
                retry_after: None,
                status: None,
                detail: format!("no answer within {:?}", self.settings.send_timeout),
            }),
        }
    }

    async fn deliver(&self, msg: ClaimedMessage) -> Finished {
        let started_at = now_ms();
        let clock = Instant::now();
        let step = self.step(&msg).await;
        let finished_at = now_ms();
        let attempt = msg.attempts + 1;
        let mut attempted = true;
        let mut segments = None;
        let (outcome, result_label, status_code, error) = match step {
            Step::Sent(sent) => {
                segments = sent.segments;
                (Outcome::Delivered, "success".to_owned(), sent.status, None)
            }
            Step::Deferred { due_at, paced } => {
                attempted = false;
                debug!(
                    message_id = msg.id,
                    due_at, paced, "deferred: destination paced or busy"
                );
                (Outcome::Defer { due_at, paced }, String::new(), None, None)
            }
            Step::OverLimit(why) => {
                attempted = false;
                warn!(message_id = msg.id, user_id = %msg.user_id, integration = %msg.integration, "{why}");
                (
                    Outcome::Failed,
                    Reason::RateLimited.as_str().to_owned(),
                    None,
                    Some(why),
                )
            }
            Step::Failed(e) => {
                let age = Duration::from_millis((finished_at - msg.created_at).max(0) as u64);
                let retry = e
                    .retryable
                    .then(|| self.policy.next_delay(attempt as u32, age, e.retry_after))
                    .flatten();
                let outcome = match retry {
                    Some(delay) => Outcome::Retry {
                        due_at: finished_at + duration_ms(delay),
                    },
                    None => Outcome::Failed,
                };
                warn!(
                    message_id = msg.id, user_id = %msg.user_id, channel_id = %msg.channel_id,
                    integration = %msg.integration, attempt, reason = %e.reason, status = e.status,
                    error = %e.detail, final = outcome == Outcome::Failed, "delivery attempt failed"
                );
                (
                    outcome,
                    e.reason.as_str().to_owned(),
                    e.status,
                    Some(e.detail),
                )
            }
        };
        Finished {
            accepted_at: msg.created_at,
            record: AttemptRecord {
                message_id: msg.id,
                user_id: msg.user_id,
                integration: msg.integration,
                attempt,
                started_at,
                duration_ms: clock.elapsed().as_millis() as i64,
                result: result_label,
                status_code: status_code.map(i64::from),
                error,
                segments,
                attempted,
                outcome,
                finished_at,
            },
        }
    }

    /// Writes finished attempts back in batches; counts only what was applied.
    async fn record_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Finished>) {
        let mut batch: Vec<Finished> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            let records: Vec<AttemptRecord> = batch.iter().map(|f| f.record.clone()).collect();
            let mut tries = 0;
            let applied = loop {
                match self.store.record(&self.owner, &records).await {
                    Ok(applied) => break applied,
                    Err(e) => {
                        tries += 1;
                        error!(error = ?anyhow::Error::from(e), tries, "recording attempts failed; retrying");
                        if tries >= 20 {
                            // The leases expire and the messages are sent again:
                            // at least once, never lost.
                            break vec![Recorded::LeaseLost; records.len()];
                        }
                        tokio::time::sleep(Duration::from_millis(250 * tries)).await;
                    }
                }
            };
            {
                let mut in_flight = self.in_flight();
                for f in &batch {
                    in_flight.remove(&f.record.message_id);
                }
            }
            for (f, recorded) in batch.drain(..).zip(applied) {
                self.count(&f, recorded);
            }
            // A final outcome may let the next message of its group go.
            self.wake.notify_one();
        }
    }

    fn count(&self, f: &Finished, recorded: Recorded) {
        let r = &f.record;
        if recorded == Recorded::LeaseLost {
            warn!(
                message_id = r.message_id,
                "lease lost before the attempt was recorded; not counted here"
            );
            return;
        }
        if r.attempted {
            self.metrics
                .delivery_attempts
                .with_label_values(&[r.integration.as_str(), r.result.as_str()])
                .inc();
        }
        let outcome = match (recorded, r.outcome) {
            (Recorded::Superseded, _) => {
                debug!(
                    message_id = r.message_id,
                    "superseded by a newer message of its group"
                );
                self.metrics.superseded(&r.user_id, &r.integration);
                return;
            }
            (_, Outcome::Delivered) => "delivered",
            (_, Outcome::Failed) => "failed",
            (_, Outcome::Retry { .. } | Outcome::Defer { .. }) => return,
        };
        let user = self.metrics.user_label(&r.user_id);
        self.metrics
            .notifications
            .with_label_values(&[user, r.integration.as_str(), outcome])
            .inc();
        self.metrics
            .delivery_latency
            .with_label_values(&[r.integration.as_str()])
            .observe((r.finished_at - f.accepted_at).max(0) as f64 / 1000.0);
        debug!(message_id = r.message_id, user_id = %r.user_id, outcome, "message final");
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "notimeter".into())
}

//! The worker pool. Due messages are claimed in batches with a lease; each is
//! sent on its own task (at most `workers` at once); finished attempts are
//! written back in batches by one recorder. A message whose holder died is
//! claimed again once its lease has expired.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use super::limits::PlanLimits;
use super::pace::Pacer;
use super::retry::RetryPolicy;
use super::{Reason, Registry, SendContext, SendError, Sent};
use crate::clock::{duration_ms, Clock};
use crate::config::{DispatchSettings, Settings};
use crate::domain::{AttemptResult, ChannelSettings, Templates, WebhookPayload};
use crate::metering::{Final, Metrics};
use crate::routing::{Routes, Sendable};
use crate::store::{AttemptRecord, ClaimedMessage, Outcome, Recorded, Store, StoreError};
use crate::templating::{self, Texts};

/// How long a claim waits for more workers to be free, once one is (see
/// [`Dispatcher::run`]).
const CLAIM_WAIT: Duration = Duration::from_millis(5);

pub struct Dispatcher {
    store: Arc<Store>,
    /// The channels, as the routing index holds them.
    routes: Arc<Routes>,
    registry: Registry,
    ctx: Arc<SendContext>,
    policy: RetryPolicy,
    settings: DispatchSettings,
    owner: String,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<i64>>,
    /// Sends at once (`workers`); a message waiting for a busy destination
    /// holds none.
    workers: Arc<Semaphore>,
    pacer: Pacer,
    limits: PlanLimits,
    /// Due times, leases, pacing and plan limits are read from it.
    clock: Clock,
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

/// A message ready to send: its channel's settings and templates, and its payload.
struct Prepared {
    settings: ChannelSettings,
    templates: Templates,
    payload: WebhookPayload,
}

/// An attempt's record plus what the metrics need once it is stored.
struct Finished {
    record: AttemptRecord,
    accepted_at: i64,
}

impl Dispatcher {
    /// A dispatcher working by `settings`' `[dispatch]` and `[limits]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        routes: Arc<Routes>,
        registry: Registry,
        ctx: Arc<SendContext>,
        settings: &Settings,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        clock: Clock,
    ) -> Self {
        let (settings, limits) = (settings.dispatch.clone(), settings.limits.clone());
        Self {
            store,
            routes,
            registry,
            ctx,
            policy: RetryPolicy::from(&settings),
            workers: Arc::new(Semaphore::new(settings.workers)),
            settings,
            owner: format!("{}-{}", hostname(), uuid::Uuid::new_v4()),
            metrics,
            wake,
            in_flight: Mutex::new(HashSet::new()),
            pacer: Pacer::default(),
            limits: PlanLimits::new(limits),
            clock,
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Works off the outbox until `shutdown`; then stops claiming, waits up to
    /// `grace` for sends in flight and releases what did not finish.
    ///
    /// Messages come two ways: claimed from the outbox in batches (retries
    /// and deferrals coming due, messages whose lease expired elsewhere, and
    /// whatever ingest could not hand over), and handed over by ingest's
    /// writer, leased at insert (see `Store::hand_off_to`). A claim runs at
    /// once after a full batch, and otherwise when ingest or the recorder
    /// wakes it or at the next `poll_interval`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        info!(owner = %self.owner, workers = self.settings.workers, "dispatcher started");
        let (tx, rx) = mpsc::channel::<Finished>(4 * self.settings.workers.max(64));
        let recorder = tokio::spawn(self.clone().record_loop(rx));
        let mut handed =
            self.store
                .hand_off_to(&self.owner, self.settings.lease, self.settings.workers);
        let permits = self.workers.clone();
        let mut tasks = JoinSet::new();
        let mut claim_now = true;
        let mut next_poll = tokio::time::Instant::now();
        // With a backlog, a claim waits until a quarter of a batch's workers
        // are free, or `CLAIM_WAIT` after the first one was: a claim of one
        // message costs a write transaction as much as one of a full batch,
        // and claiming each time a send ended made one per message or two.
        let enough = (self.settings.batch_size.min(self.settings.workers) / 4).max(1);
        let mut fill_by: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let mut batch = Vec::new();
            let free = permits.available_permits();
            // Set while some workers but too few are free.
            if free == 0 || free >= enough {
                fill_by = None;
            } else {
                fill_by.get_or_insert_with(|| tokio::time::Instant::now() + CLAIM_WAIT);
            }
            let hold = fill_by.is_some_and(|t| tokio::time::Instant::now() < t);
            // What was handed over is sent first: with a backlog, the
            // writer claims for this dispatcher as it records outcomes
            // (see `Store::note_backlog`), so a claim of its own is needed
            // only once that runs dry, or at the next poll at the latest:
            // under steady ingest the queue may never be empty, and only a
            // claim finds retries and deferred messages coming due.
            let own_claim = handed.is_empty() || tokio::time::Instant::now() >= next_poll;
            if claim_now && free > 0 && !hold && own_claim {
                fill_by = None;
                let limit = free.min(self.settings.batch_size) as i64;
                let now = self.clock.now_ms();
                let lease_until = now + duration_ms(self.settings.lease);
                next_poll = tokio::time::Instant::now() + self.settings.poll_interval;
                match self.store.claim(&self.owner, now, lease_until, limit).await {
                    Ok(claimed) => {
                        debug!(claimed = claimed.len(), "claimed messages");
                        // Fewer than asked for: nothing else is due now. Claim
                        // again when woken (or at the next poll), not at
                        // once: back-to-back claims of one or two messages
                        // each are write transactions that crowd out
                        // ingest's commits.
                        claim_now = claimed.len() as i64 == limit;
                        self.store.note_backlog(claim_now);
                        batch = claimed;
                    }
                    Err(e) => {
                        error!(error = %crate::error::Causes(&e), "claiming messages failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(self.settings.poll_interval.max(Duration::from_millis(500))) => {}
                        }
                        continue;
                    }
                }
            } else if claim_now {
                // Too few workers free: wait for more (or for `fill_by`),
                // taking what ingest hands over meanwhile.
                let fill = fill_by.unwrap_or_else(tokio::time::Instant::now);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tasks.join_next() => {}
                    _ = tokio::time::sleep_until(fill), if fill_by.is_some() => {}
                    Some(msg) = handed.recv() => batch.push(msg),
                }
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => claim_now = true,
                    _ = tokio::time::sleep_until(next_poll) => claim_now = true,
                    Some(msg) = handed.recv() => batch.push(msg),
                }
            }
            while batch.len() < self.settings.batch_size {
                match handed.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            for msg in batch {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                self.in_flight().insert(msg.id);
                let this = self.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    let mut permit = Some(permit);
                    let finished = this.deliver(msg, &mut permit).await;
                    // The recorder owns it now; it takes it out of `in_flight`.
                    let _ = tx.send(finished).await;
                    drop(permit);
                });
            }
        }
        // Ingest hands nothing more over; what it did and was not taken goes back.
        self.store.stop_handoff();
        handed.close();
        while let Ok(msg) = handed.try_recv() {
            self.in_flight().insert(msg.id);
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
        // A write under way when the hand-over stopped may have sent more
        // since (leased at insert, or claimed with outcomes): released too,
        // not left to wait out their lease.
        while let Ok(msg) = handed.try_recv() {
            self.in_flight().insert(msg.id);
        }
        let left: Vec<i64> = self.in_flight().drain().collect();
        if !left.is_empty() {
            warn!(
                messages = left.len(),
                "releasing messages whose send did not finish in time"
            );
            if let Err(e) = self.store.release(&self.owner, &left).await {
                error!(error = %crate::error::Causes(&e), "releasing leases failed; they expire on their own");
            }
        }
        info!("dispatcher stopped");
    }

    /// Works off what is due now, on the caller's task, until a claim finds
    /// nothing (Zero To Production's `try_execute_task`, for tests): each
    /// message goes through what the workers of [`Dispatcher::run`] do with
    /// it (plan limit, pacing, the integration's send, the record, the
    /// metrics), one at a time. Returns how many messages it claimed; those
    /// put back for later (a retry, pacing) count too, and are due again only
    /// when the clock says so. Safe while `run` works the same outbox: the
    /// store's leases keep the two from taking the same message.
    pub async fn drain_outbox(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut processed = 0;
        loop {
            let now = self.clock.now_ms();
            let lease_until = now + duration_ms(self.settings.lease);
            let limit = self.settings.batch_size.max(1) as i64;
            let batch = self
                .store
                .claim(&self.owner, now, lease_until, limit)
                .await?;
            if batch.is_empty() {
                return Ok(processed);
            }
            processed += batch.len();
            // The workers' recorder, for this batch alone: it is stored and
            // counted before the next claim, which may then find the next
            // message of a group.
            let (tx, rx) = mpsc::channel::<Finished>(batch.len());
            let recorder = tokio::spawn(self.clone().record_loop(rx));
            for msg in batch {
                self.in_flight().insert(msg.id);
                let finished = self.deliver(msg, &mut None).await;
                let _ = tx.send(finished).await;
            }
            drop(tx);
            let _ = recorder.await;
        }
    }

    /// What a send needs: the channel (from the routing index) and the
    /// payload. Failures here are permanent.
    fn prepare(&self, msg: &ClaimedMessage) -> Result<Prepared, SendError> {
        let Some((channel, sendable)) = self.routes.sendable(&msg.user_id, &msg.channel_id) else {
            return Err(SendError::permanent(
                Reason::Other,
                "the channel was deleted",
            ));
        };
        if !channel.enabled {
            return Err(SendError::permanent(
                Reason::Other,
                "the channel was disabled",
            ));
        }
        let Sendable {
            settings,
            templates,
        } = sendable.map_err(|e| {
            SendError::permanent(
                Reason::Other,
                format!("the channel's settings are corrupt: {e}"),
            )
        })?;
        let payload: WebhookPayload = serde_json::from_str(&msg.payload).map_err(|e| {
            SendError::permanent(Reason::Other, format!("stored message is corrupt: {e}"))
        })?;
        Ok(Prepared {
            settings,
            templates,
            payload,
        })
    }

    /// Plan limit (on a message's first try), pacing, a place at the
    /// destination, then the send itself. `worker`: the worker place this
    /// send holds (none when drained on demand), given up while the message
    /// waits for the destination.
    async fn step(&self, msg: &ClaimedMessage, worker: &mut Option<OwnedSemaphorePermit>) -> Step {
        let p = match self.prepare(msg) {
            Ok(p) => p,
            Err(e) => return Step::Failed(e),
        };
        let settings = &p.settings;
        let kind = settings.kind();
        let now = self.clock.instant();
        if msg.attempts == 0 && !msg.paced {
            if let Err(limit) = self.limits.admit(&msg.user_id, kind, now) {
                return Step::OverLimit(self.limits.describe(limit, kind));
            }
        }
        let destination = self.registry.destination(settings);
        let pace = self.settings.pace_for(kind);
        // With a pace, the slot is reserved for this message; with none, only a
        // destination's own "wait" (a 429's hint) defers it, and it checks again.
        if let (Some(key), false) = (&destination, msg.paced) {
            let slot = self.pacer.reserve(key, pace, now);
            let wait = slot.saturating_duration_since(now);
            if wait > Duration::from_millis(5) {
                return Step::Deferred {
                    due_at: self.clock.now_ms() + duration_ms(wait),
                    paced: !pace.is_zero(),
                };
            }
        }
        // A slow destination holds at most this many workers; the rest of its
        // messages wait in its queue here, or (that queue full) briefly in
        // the outbox, keeping a reserved pace slot.
        let _in_flight = match &destination {
            Some(key) => match self.destination_place(key, worker).await {
                Some(place) => Some(place),
                None => {
                    let wait = rand::random_range(800..1200);
                    return Step::Deferred {
                        due_at: self.clock.now_ms() + wait,
                        paced: msg.paced || !pace.is_zero(),
                    };
                }
            },
            None => None,
        };
        let texts = texts(&self.metrics, msg, &p);
        let sent = tokio::time::timeout(
            self.settings.send_timeout,
            self.registry.send(&self.ctx, settings, &p.payload, &texts),
        )
        .await;
        match sent {
            Ok(Ok(sent)) => Step::Sent(sent),
            Ok(Err(e)) => {
                if let (Some(key), Some(hint)) = (&destination, e.retry_after) {
                    // The destination asked everyone to wait, not just this message.
                    self.pacer.hold(
                        key,
                        self.clock.instant() + hint.min(self.policy.max_retry_after),
                    );
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

    /// A place among the sends in flight to `key`: at once if one is free,
    /// else after waiting in the destination's queue, without `worker`'s
    /// place meanwhile (taken again before the send). At most half a lease
    /// is spent waiting, so the message is sent well before its lease ends.
    async fn destination_place(
        &self,
        key: &str,
        worker: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<super::pace::InFlight<'_>> {
        let max = self.settings.max_in_flight_per_destination;
        if let Some(place) = self.pacer.enter(key, max) {
            return Some(place);
        }
        let had_worker = worker.take().is_some();
        let place = self
            .pacer
            .enter_queued(key, max, self.settings.lease / 2)
            .await;
        if had_worker {
            *worker = self.workers.clone().acquire_owned().await.ok();
        }
        place
    }

    #[instrument(skip_all, fields(
        message_id = msg.id,
        user_id = %msg.user_id,
        integration = %msg.integration,
        attempt = msg.attempts + 1,
    ))]
    async fn deliver(
        &self,
        msg: ClaimedMessage,
        worker: &mut Option<OwnedSemaphorePermit>,
    ) -> Finished {
        let started_at = self.clock.now_ms();
        let timer = Instant::now();
        let step = self.step(&msg, worker).await;
        let finished_at = self.clock.now_ms();
        let attempt = msg.attempts + 1;
        let mut attempted = true;
        let mut segments = None;
        let (outcome, result, status_code, error) = match step {
            Step::Sent(sent) => {
                segments = sent.segments;
                (
                    Outcome::Delivered,
                    Some(AttemptResult::Success),
                    sent.status,
                    None,
                )
            }
            Step::Deferred { due_at, paced } => {
                attempted = false;
                debug!(due_at, paced, "deferred: destination paced or busy");
                (Outcome::Defer { due_at, paced }, None, None, None)
            }
            Step::OverLimit(why) => {
                attempted = false;
                warn!("{why}");
                (
                    Outcome::Failed,
                    Some(AttemptResult::Failed(Reason::RateLimited)),
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
                    channel_id = %msg.channel_id, reason = %e.reason, status = e.status,
                    error = %e.detail, final = outcome == Outcome::Failed, "delivery attempt failed"
                );
                (
                    outcome,
                    Some(AttemptResult::Failed(e.reason)),
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
                duration_ms: timer.elapsed().as_millis() as i64,
                result,
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
            let mut tries = 0;
            let (applied, released) = loop {
                let records = batch.iter().map(|f| f.record.clone()).collect();
                match self.store.record_telling(&self.owner, records).await {
                    Ok(done) => break done,
                    Err(e) => {
                        tries += 1;
                        error!(error = %crate::error::Causes(&e), tries, "recording attempts failed; retrying");
                        if tries >= 20 {
                            // The leases expire and the messages are sent again:
                            // at least once, never lost.
                            break (vec![Recorded::LeaseLost; batch.len()], true);
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
            // A final outcome may have let the next message of its group
            // go: claim it now. (Otherwise there is nothing new to claim:
            // claiming anyway took the writer once per batch recorded.)
            if released {
                self.wake.notify_one();
            }
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
        if let (true, Some(result)) = (r.attempted, r.result) {
            self.metrics
                .attempt_recorded(r.message_id, r.integration, result);
        }
        let outcome = match (recorded, r.outcome) {
            (Recorded::Superseded, _) => {
                self.metrics
                    .message_superseded(r.message_id, &r.user_id, r.integration);
                return;
            }
            (_, Outcome::Delivered) => Final::Delivered,
            (_, Outcome::Failed) => Final::Failed,
            (_, Outcome::Retry { .. } | Outcome::Defer { .. }) => return,
        };
        let accepted_to_final =
            Duration::from_millis((r.finished_at - f.accepted_at).max(0) as u64);
        self.metrics.message_final(
            r.message_id,
            &r.user_id,
            r.integration,
            outcome,
            accepted_to_final,
        );
        if let (crate::domain::IntegrationKind::Sms, Final::Delivered, Some(segments)) =
            (r.integration, outcome, r.segments)
        {
            self.metrics.sms_sent(&r.user_id, segments);
        }
    }
}

/// The texts of `p`'s message from its channel's templates. A template that
/// fails on this message's data leaves its field's default text, logged and
/// counted: the message is sent all the same.
fn texts(metrics: &Metrics, msg: &ClaimedMessage, p: &Prepared) -> Texts {
    let rendered = templating::render(&p.templates, &p.payload);
    for (field, error) in &rendered.failures {
        metrics.template_failed(msg.id, &msg.channel_id, p.settings.kind(), *field, error);
    }
    rendered.texts
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "notimeter".into())
}

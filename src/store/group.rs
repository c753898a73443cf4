//! Group commit for ingest: concurrent webhook requests share one write
//! transaction. A writer task takes every batch waiting (up to
//! [`MAX_GROUP`]), writes them in one transaction, commits, and only then
//! answers each request: never before its rows are committed. One commit
//! (one fsync) then serves many requests, which is what lets SQLite run
//! with `synchronous = FULL`. SQLite has one writer; PostgreSQL two, which
//! take turns at the queue (see [`POSTGRES_WRITERS`]).
//!
//! A batch is written whole or not at all, as before: should the group's
//! transaction fail, its batches are written again one transaction each, so
//! one that cannot be written fails alone. The writer owns each batch until
//! it is answered, so a request that goes away (a client hanging up, a
//! timeout) leaves its write to run to its end; a retry is then a duplicate.
//!
//! The dispatchers' outcomes go the same way: what the recorder hands over
//! is written in the same transaction as the ingest batches waiting with it
//! (outcomes first), so that one commit serves both, and neither waits for
//! the other's.
//!
//! While jobs keep coming, the writer keeps its connection from one
//! transaction to the next (at most [`HOLD`], then it gives it back so that
//! claims and other writes take their turn): taking a connection from the
//! pool and returning it cost as much as a statement per transaction. On
//! PostgreSQL, where the pool has connections for everyone, each writer
//! keeps its connection between transactions, as long as they follow each
//! other within [`POSTGRES_IDLE`] (and for [`POSTGRES_HOLD`] at most): the
//! pool pings a connection before it lends it, a round trip per
//! transaction. A connection idle longer goes back to the pool, so that
//! one gone dead in silence (a dropped flow, a failover) is found by the
//! ping, within the pool's acquire timeout, not by a write that hangs.
//!
//! Where this process runs a dispatcher, the writer leases the messages it
//! inserts to it (as many as it has room for, in the same transaction) and
//! hands them over once committed: they need no claim, which is a write
//! transaction of its own (see `Store::hand_off_to`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::outbox::{Leasing, Outcomes};
use super::{
    AttemptRecord, ClaimedMessage, Enqueued, Held, IngestBatch, Recorded, Result, Store, StoreError,
};

/// Jobs (batches and outcome lists) written in one transaction at most.
const MAX_GROUP: usize = 256;

/// Longest the writer keeps a connection while jobs keep coming (see the
/// module's comment); it gives it back at once when none is waiting.
const HOLD: std::time::Duration = std::time::Duration::from_millis(10);

/// Longest a writer keeps a connection on PostgreSQL; then the pool takes
/// it back (and may replace it, as its lifetime says). A connection that
/// fails is given back at once.
const POSTGRES_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// Longest a PostgreSQL writer keeps a connection with nothing to write:
/// one idle longer is given back before the next write, and the pool pings
/// the one it lends instead.
const POSTGRES_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Jobs waiting for the writer at most; a request beyond that waits for
/// a place (within its `store_timeout`).
const QUEUE: usize = 1024;

/// Bytes that requests' batches may hold waiting for the writer or being
/// written, at most; a request beyond that waits for room (within its
/// `store_timeout`). A batch whose request gave up (a timeout) is still
/// written, so without this bound the retries of slow writes piled up in
/// memory: PostgreSQL over 10 M of history peaked at 226 MB, the queue
/// holding some hundred batches of 1,000 messages.
const QUEUED_BYTES: usize = 64 << 20;

/// What the writer is given: a request's batch, or a dispatcher's outcomes.
pub(super) enum Job {
    Ingest(IngestJob),
    Record(RecordJob),
}

/// A dispatcher's finished attempts, and where their answer goes.
pub(super) struct RecordJob {
    pub owner: String,
    pub records: Vec<AttemptRecord>,
    pub done: oneshot::Sender<Result<(Vec<Recorded>, bool)>>,
}

/// One request's batch, and where its answer goes.
pub(super) struct IngestJob {
    pub batch: IngestBatch,
    /// Told once the write transaction holding the batch has begun.
    pub begun: Option<oneshot::Sender<()>>,
    pub done: oneshot::Sender<Result<Enqueued>>,
    /// The request's span, for what the write logs.
    pub span: tracing::Span,
    /// The batch's share of [`QUEUED_BYTES`], given back once it is written.
    pub _room: OwnedSemaphorePermit,
}

/// Where jobs go to the writer, and the room left for batches' bytes.
#[derive(Clone)]
pub(super) struct Queue {
    jobs: mpsc::Sender<Job>,
    room: Arc<Semaphore>,
}

/// Writers on PostgreSQL. A cycle there is a dozen round trips to the
/// server, each a wait, so a second writer fills those waits with its own
/// cycle (two writers of one process are as two replicas are: their group
/// locks order them). SQLite has one writer connection, so one writer.
const POSTGRES_WRITERS: usize = 2;

/// How a backend's writers run.
#[derive(Clone, Copy)]
struct Policy {
    /// How many.
    writers: usize,
    /// Longest one keeps a connection.
    hold: std::time::Duration,
    /// Whether one keeps its connection with nothing waiting (within
    /// [`POSTGRES_IDLE`]), or gives it back at once.
    keep_idle: bool,
}

impl Policy {
    fn of(store: &Store) -> Self {
        match store.pools {
            super::Db::Sqlite(_) => Policy {
                writers: 1,
                hold: HOLD,
                keep_idle: false,
            },
            super::Db::Postgres(_) => Policy {
                writers: POSTGRES_WRITERS,
                hold: POSTGRES_HOLD,
                keep_idle: true,
            },
        }
    }
}

/// The jobs waiting, taken by one writer at a time (see [`write_groups`]).
type Jobs = Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>;

/// Starts the writers for `store` (a store without a queue of its own);
/// they end when every sender of the returned queue is gone.
pub(super) fn start(store: Store) -> Queue {
    let (jobs, rx) = mpsc::channel(QUEUE);
    let policy = Policy::of(&store);
    let rx: Jobs = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..policy.writers {
        tokio::spawn(write_groups(store.clone(), rx.clone(), policy));
    }
    Queue {
        jobs,
        room: Arc::new(Semaphore::new(QUEUED_BYTES)),
    }
}

/// About how many bytes `batch` holds (what [`QUEUED_BYTES`] counts), at
/// least 1 and at most all of it.
fn footprint(batch: &IngestBatch) -> u32 {
    let messages: usize = batch
        .messages
        .iter()
        .map(|m| {
            m.user_id.len()
                + m.channel_id.len()
                + m.group_key.len()
                + m.payload.len()
                + m.alertnames.len()
                + 64
        })
        .sum();
    let undeliverable: usize = batch
        .undeliverable
        .iter()
        .map(|u| u.user_id.len() + u.receiver.len() + u.alert.len() + 64)
        .sum();
    let bytes = batch.dedupe_key.len() + messages + undeliverable;
    bytes.clamp(1, QUEUED_BYTES) as u32
}

/// One writer: takes every job waiting, writes them in one transaction,
/// and so on. Where there are several, a writer keeps its turn to take jobs
/// until its transaction has locked its groups, so that jobs of one group
/// are written in the order they came. (Should that transaction fail after
/// it, its jobs are written again one by one, after what the other writer
/// took meanwhile: two states of one group in flight at once could then be
/// accepted the other way round. One Alertmanager never sends those: it
/// waits for a group's notification to be answered before the next.)
async fn write_groups(store: Store, rx: Jobs, policy: Policy) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    // The connection held, and since when.
    let mut held: Option<(Held, std::time::Instant)> = None;
    // When the last write ended.
    let mut last = std::time::Instant::now();
    loop {
        let (turn, taken) = loop {
            let take = take_jobs(&rx, &mut jobs);
            if held.is_none() {
                break take.await;
            }
            // Idle with a connection: given back if the store closes.
            tokio::select! {
                taken = take => break taken,
                () = store.closing() => held = None,
            }
        };
        if taken == 0 {
            return;
        }
        if policy.keep_idle && last.elapsed() >= POSTGRES_IDLE {
            held = None;
        }
        if held.is_none() {
            // Failing, the write takes a connection of its own (and fails
            // as that does).
            held = store
                .hold_writer()
                .await
                .ok()
                .map(|c| (c, std::time::Instant::now()));
        }
        let span = tracing::debug_span!("store.group_commit", jobs = jobs.len());
        let (locked, taken) = oneshot::channel();
        // The turn passes on once the groups are locked; should the write
        // fail before, once it has ended (its parts written one by one).
        let pass = async move {
            match taken.await {
                Ok(()) => None,
                Err(_) => Some(turn),
            }
        };
        let (ok, turn) = tokio::join!(
            write_group(&store, std::mem::take(&mut jobs), &mut held, locked).instrument(span),
            pass
        );
        drop(turn);
        last = std::time::Instant::now();
        // Nothing waiting (or another writer taking it): the connection
        // goes back to the pool.
        let idle = !policy.keep_idle && rx.try_lock().map_or(true, |rx| rx.is_empty());
        if !ok
            || idle
            || held
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= policy.hold)
        {
            held = None;
        }
    }
}

/// The turn to take jobs, and the jobs waiting (at least one; none once
/// every sender is gone). Dropped while waiting, it takes none.
async fn take_jobs(
    rx: &Jobs,
    jobs: &mut Vec<Job>,
) -> (tokio::sync::OwnedMutexGuard<mpsc::Receiver<Job>>, usize) {
    let mut turn = rx.clone().lock_owned().await;
    let taken = turn.recv_many(jobs, MAX_GROUP).await;
    (turn, taken)
}

/// Writes `all` in one transaction (on the connection `held`, if any) and
/// answers each; false if that transaction failed (then `held` is given
/// back before each part is written alone).
async fn write_group(
    store: &Store,
    all: Vec<Job>,
    held: &mut Option<(Held, std::time::Instant)>,
    locked: oneshot::Sender<()>,
) -> bool {
    let (mut jobs, mut outcomes) = (Vec::with_capacity(all.len()), Vec::new());
    for job in all {
        match job {
            Job::Ingest(j) => jobs.push(j),
            Job::Record(r) => outcomes.push(r),
        }
    }
    let begun: Vec<oneshot::Sender<()>> = jobs.iter_mut().filter_map(|j| j.begun.take()).collect();
    // Places on the way to this process's dispatcher, taken before the
    // write: as many messages are leased at insert (and need no claim).
    // With a backlog, the room left is filled by a claim in the same
    // transaction (see `Store::note_backlog`).
    let messages: usize = jobs.iter().map(|j| j.batch.messages.len()).sum();
    let handoff = store.handoff();
    let (mut places, mut leasing) = (None, None);
    if let Some(h) = &handoff {
        let claim = !outcomes.is_empty() && h.backlog.load(Ordering::Relaxed);
        let room = match claim {
            true => h.tx.capacity(),
            false => h.tx.capacity().min(messages),
        };
        if let Ok(reserved) = h.tx.try_reserve_many(room) {
            places = Some(reserved);
            leasing = Some(Leasing {
                owner: h.owner.clone(),
                until: store.clock.now_ms() + h.lease,
                room,
                leased: Vec::new(),
                claim,
                claimed: Vec::new(),
            });
        }
    }
    let batches: Vec<&IngestBatch> = jobs.iter().map(|j| &j.batch).collect();
    let lists: Vec<Outcomes> = outcomes
        .iter()
        .map(|r| Outcomes {
            owner: &r.owner,
            records: &r.records,
        })
        .collect();
    let written = store
        .write_group(
            held.as_mut().map(|(c, _)| c),
            &lists,
            &batches,
            begun,
            Some(locked),
            leasing.as_mut(),
        )
        .await;
    if written.is_err() {
        // What follows takes connections of the pool's.
        *held = None;
    }
    match written {
        Ok((recorded, results)) => {
            if let (Some(places), Some(leasing)) = (places.as_mut(), leasing) {
                for (b, m, id) in leasing.leased {
                    let batch = &mut jobs[b].batch;
                    let message = &mut batch.messages[m];
                    let claimed = ClaimedMessage {
                        id,
                        user_id: std::mem::take(&mut message.user_id),
                        channel_id: std::mem::take(&mut message.channel_id),
                        integration: message.integration,
                        payload: std::mem::take(&mut message.payload),
                        created_at: batch.now,
                        attempts: 0,
                        paced: false,
                    };
                    // As many places as messages leased.
                    if let Some(place) = places.next() {
                        place.send(claimed);
                    }
                }
                if let (true, Some(h)) = (leasing.claim, &handoff) {
                    // Fewer than asked for: nothing else is due now.
                    if leasing.claimed.len() < leasing.room {
                        h.backlog.store(false, Ordering::Relaxed);
                    }
                }
                for (claimed, place) in leasing.claimed.into_iter().zip(places.by_ref()) {
                    place.send(claimed);
                }
            }
            // The places not used go back before anyone is answered: what
            // an answer sets off (the next request, written by the other
            // writer) finds the room these left.
            drop(places);
            for (r, recorded) in outcomes.into_iter().zip(recorded) {
                let _ = r.done.send(Ok(recorded));
            }
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.done.send(Ok(result));
            }
            true
        }
        Err(e) if jobs.len() + outcomes.len() == 1 => {
            if let Some(job) = jobs.pop() {
                let _ = job.done.send(Err(e));
            } else if let Some(r) = outcomes.pop() {
                let _ = r.done.send(Err(e));
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = jobs.len(), outcome_lists = outcomes.len(),
                "a grouped write failed; writing its parts one by one");
            for r in outcomes {
                let _ = r.done.send(store.record_now(&r.owner, &r.records).await);
            }
            for job in jobs {
                let result = store
                    .enqueue_group(&[&job.batch], Vec::new(), None)
                    .instrument(job.span)
                    .await
                    .map(|mut r| r.pop().expect("one result"));
                let _ = job.done.send(result);
            }
            false
        }
    }
}

/// Hands `batch` to the writer and waits for its answer.
pub(super) async fn enqueue_grouped(
    queue: &Queue,
    batch: IngestBatch,
    begun: Option<oneshot::Sender<()>>,
) -> Result<Enqueued> {
    // Room for the batch first: dropped while waiting for it, nothing is queued.
    let room = queue
        .room
        .clone()
        .acquire_many_owned(footprint(&batch))
        .await
        .map_err(|_| StoreError::Interrupted("the store is closing".into()))?;
    let (done, answer) = oneshot::channel();
    let job = Job::Ingest(IngestJob {
        batch,
        begun,
        done,
        span: tracing::Span::current(),
        _room: room,
    });
    hand_over(queue, job, answer).await
}

/// Hands a dispatcher's finished attempts to the writer and waits for its
/// answer (see [`Store::record_telling`]).
pub(super) async fn record_grouped(
    queue: &Queue,
    owner: &str,
    records: Vec<AttemptRecord>,
) -> Result<(Vec<Recorded>, bool)> {
    let (done, answer) = oneshot::channel();
    let job = Job::Record(RecordJob {
        owner: owner.to_owned(),
        records,
        done,
    });
    hand_over(queue, job, answer).await
}

/// Queues `job` for the writer, then waits for `answer`. Dropped at any
/// await, it leaves the job, once queued, to be written to its end.
async fn hand_over<T>(queue: &Queue, job: Job, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
    queue
        .jobs
        .send(job)
        .await
        .map_err(|_| StoreError::Interrupted("the store is closing".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Interrupted("the writer stopped".into()))?
}

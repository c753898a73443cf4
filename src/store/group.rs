//! Group commit for ingest: concurrent webhook requests share one write
//! transaction. One writer task takes every batch waiting (up to
//! [`MAX_GROUP`]), writes them in one transaction, commits, and only then
//! answers each request: never before its rows are committed. One commit
//! (one fsync) then serves many requests, which is what lets SQLite run
//! with `synchronous = FULL`.
//!
//! A batch is written whole or not at all, as before: should the group's
//! transaction fail, its batches are written again one transaction each, so
//! one that cannot be written fails alone. The writer owns each batch until
//! it is answered, so a request that goes away (a client hanging up, a
//! timeout) leaves its write to run to its end; a retry is then a duplicate.
//!
//! Where this process runs a dispatcher, the writer leases the messages it
//! inserts to it (as many as it has room for, in the same transaction) and
//! hands them over once committed: they need no claim, which is a write
//! transaction of its own (see `Store::hand_off_to`).

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::outbox::Leasing;
use super::{ClaimedMessage, Enqueued, IngestBatch, Result, Store, StoreError};

/// Batches written in one transaction at most.
const MAX_GROUP: usize = 256;

/// Batches waiting for the writer at most; a request beyond that waits for
/// a place (within its `store_timeout`).
const QUEUE: usize = 1024;

/// One request's batch, and where its answer goes.
pub(super) struct Job {
    pub batch: IngestBatch,
    /// Told once the write transaction holding the batch has begun.
    pub begun: Option<oneshot::Sender<()>>,
    pub done: oneshot::Sender<Result<Enqueued>>,
    /// The request's span, for what the write logs.
    pub span: tracing::Span,
}

pub(super) type Queue = mpsc::Sender<Job>;

/// Starts the writer for `store` (a store without a queue of its own); it
/// ends when every sender of the returned queue is gone.
pub(super) fn start(store: Store) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(write_groups(store, rx));
    tx
}

async fn write_groups(store: Store, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let span = tracing::debug_span!("store.group_commit", batches = jobs.len());
        write_group(&store, std::mem::take(&mut jobs))
            .instrument(span)
            .await;
    }
}

async fn write_group(store: &Store, mut jobs: Vec<Job>) {
    let begun: Vec<oneshot::Sender<()>> = jobs.iter_mut().filter_map(|j| j.begun.take()).collect();
    // Places on the way to this process's dispatcher, taken before the
    // write: as many messages are leased at insert (and need no claim).
    let messages: usize = jobs.iter().map(|j| j.batch.messages.len()).sum();
    let handoff = store.handoff();
    let (mut places, mut leasing) = (None, None);
    if let Some(h) = &handoff {
        let room = h.tx.capacity().min(messages);
        if let Ok(reserved) = h.tx.try_reserve_many(room) {
            places = Some(reserved);
            leasing = Some(Leasing {
                owner: h.owner.clone(),
                until: store.clock.now_ms() + h.lease,
                room,
                leased: Vec::new(),
            });
        }
    }
    let batches: Vec<&IngestBatch> = jobs.iter().map(|j| &j.batch).collect();
    let written = store.enqueue_group(&batches, begun, leasing.as_mut()).await;
    match written {
        Ok(results) => {
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
            }
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.done.send(Ok(result));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let job = jobs.pop().expect("one job");
            let _ = job.done.send(Err(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, batches = jobs.len(),
                "a grouped ingest write failed; writing its batches one by one");
            for job in jobs {
                let result = store
                    .enqueue_group(&[&job.batch], Vec::new(), None)
                    .instrument(job.span)
                    .await
                    .map(|mut r| r.pop().expect("one result"));
                let _ = job.done.send(result);
            }
        }
    }
}

/// Hands `batch` to the writer and waits for its answer.
pub(super) async fn enqueue_grouped(
    queue: &Queue,
    batch: IngestBatch,
    begun: Option<oneshot::Sender<()>>,
) -> Result<Enqueued> {
    let (done, answer) = oneshot::channel();
    let job = Job {
        batch,
        begun,
        done,
        span: tracing::Span::current(),
    };
    queue
        .send(job)
        .await
        .map_err(|_| StoreError::Interrupted("the store is closing".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Interrupted("the ingest writer stopped".into()))?
}

//! The outbox's statements: enqueue (with dedupe and supersession), claim,
//! release, record, the pending count, dedupe pruning.

use super::ledger::{period_now, PeriodNow};
use super::statements;
use super::{
    group, on, AttemptRecord, ClaimedMessage, Db, Dialect, Enqueued, IngestBatch, NewMessage,
    Outcome, Recorded, Result, Store, StoreError, Superseded, Tx,
};
use crate::clock::Millis;
use crate::domain::{AttemptResult, Reason};
use sqlx::{PgConnection, SqliteConnection};

/// The claim statement both backends run, with the row-locking clause a
/// backend adds to its inner select (PostgreSQL: `FOR UPDATE OF m SKIP
/// LOCKED`, so replicas never claim the same row). It leases up to `$4` due
/// messages to `$1` until `$2` (`$3` is now), none while an older message of
/// its (channel, group) is still pending: a group is delivered in the order
/// it was accepted.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE messages SET lease_owner = $1, lease_until = $2 \
             WHERE id IN (SELECT m.id FROM messages m \
                          WHERE m.state = 'pending' AND m.due_at <= $3 \
                            AND (m.lease_until IS NULL OR m.lease_until <= $3) \
                            AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.user_id = m.user_id \
                              AND o.channel_id = m.channel_id AND o.group_key = m.group_key \
                              AND o.state = 'pending' AND o.id < m.id AND m.group_key <> '') \
                          ORDER BY m.due_at LIMIT $4 ",
            $lock,
            ") RETURNING id, user_id, channel_id, integration, payload, created_at, attempts, paced"
        )
    };
}
pub(super) use claim_sql;

/// A claim slower than this, of a full batch, means the planner may be
/// working from statistics older than the backlog (see `Store::refresh_stats`).
const SLOW_CLAIM: std::time::Duration = std::time::Duration::from_millis(50);

/// A writer's transaction slower than this may be working from statistics
/// older than the backlog too: its look for pending messages of a batch's
/// groups was then planned as a scan of every pending message per group
/// (3 s for 54 groups with 68,000 pending on PostgreSQL, against 0.06 ms
/// once analysed), so ingest slowed most just when a backlog built up.
const SLOW_WRITE: std::time::Duration = std::time::Duration::from_millis(250);

/// Least time between two refreshes of the outbox's statistics, in ms.
const STATS_EVERY: Millis = 30_000;

/// The key of a (channel, group) lock: user, channel and group joined by a
/// separator that none of them contains.
fn group_lock_key(user_id: &str, channel_id: &str, group_key: &str) -> String {
    format!("{user_id}\u{1f}{channel_id}\u{1f}{group_key}")
}

/// Locks these (channel, group) keys for the rest of the transaction, with
/// one statement (see `Dialect::LOCK_GROUPS`). Nothing where the backend has
/// no group locks, or for no keys.
pub(super) async fn lock_groups(tx: &mut Tx<'_>, keys: impl Iterator<Item = String>) -> Result<()> {
    if !locks_groups(tx) {
        return Ok(());
    }
    let keys: Vec<String> = keys.collect();
    if keys.is_empty() {
        return Ok(());
    }
    let keys = serde_json::to_string(&keys).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    on!(
        tx.conn(),
        |c, D| if let Some(sql) = <D as Dialect>::LOCK_GROUPS {
            sqlx::query(sql).bind(keys).execute(c).await?;
        }
    );
    Ok(())
}

/// Whether the backend takes (channel, group) locks at all.
fn locks_groups(tx: &mut Tx<'_>) -> bool {
    on!(tx.conn(), |_c, D| <D as Dialect>::LOCK_GROUPS.is_some())
}

/// The state a recorded message ends in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Final {
    Delivered,
    Failed,
    /// A newer message of its (channel, group) is queued: never sent again,
    /// not billed.
    Superseded,
}

impl Final {
    fn as_str(self) -> &'static str {
        match self {
            Final::Delivered => "delivered",
            Final::Failed => "failed",
            Final::Superseded => "superseded",
        }
    }
}

/// Attempts made, this one included if anything was sent.
fn attempts_made(r: &AttemptRecord) -> i64 {
    if r.attempted {
        r.attempt
    } else {
        r.attempt - 1
    }
}

/// The failure reason, none for a success.
fn reason(r: &AttemptRecord) -> Option<Reason> {
    r.result.and_then(AttemptResult::reason)
}

impl Store {
    /// Records the dedupe key and every message and undeliverable alert in one
    /// transaction. A key seen within its window makes the whole batch a duplicate.
    pub async fn enqueue(&self, batch: IngestBatch) -> Result<Enqueued> {
        self.enqueue_telling(batch, None).await
    }

    /// Like [`Store::enqueue`], sending on `begun` once the write transaction
    /// has begun (SQLite: once it holds the write lock), so that a caller can
    /// tell a store that cannot take the write from one that is taking it.
    /// Concurrent calls share one transaction (see `group.rs`).
    #[tracing::instrument(name = "store.enqueue", skip_all, fields(
        messages = batch.messages.len(),
        undeliverable = batch.undeliverable.len(),
    ))]
    pub async fn enqueue_telling(
        &self,
        batch: IngestBatch,
        begun: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Enqueued> {
        match &self.ingest {
            Some(queue) => group::enqueue_grouped(queue, batch, begun).await,
            None => {
                self.detached(move |store| async move {
                    let begun = begun.into_iter().collect();
                    let mut done = store.enqueue_group(&[&batch], begun, None).await?;
                    Ok(done.pop().expect("one result"))
                })
                .await
            }
        }
    }

    /// Writes `batches` in one transaction, telling `begun` once it has
    /// begun; returns, per batch, whether it was accepted or a duplicate.
    /// With `leasing`, messages are leased at insert as it allows (see
    /// [`Leasing`]).
    pub(super) async fn enqueue_group(
        &self,
        batches: &[&IngestBatch],
        begun: Vec<tokio::sync::oneshot::Sender<()>>,
        leasing: Option<&mut Leasing>,
    ) -> Result<Vec<Enqueued>> {
        Ok(self
            .write_group(None, &[], batches, begun, None, leasing)
            .await?
            .1)
    }

    /// One transaction of the writer's (see `group.rs`): first `outcomes`,
    /// the attempts that dispatchers of this process finished, then
    /// `batches`, as [`Store::enqueue_group`] writes them. Outcomes go first
    /// so that a message made final here no longer holds back a new one of
    /// its group. Returns, per outcome list, what [`Store::record_telling`]
    /// does, and per batch what [`Store::enqueue_group`] does. On `held`
    /// where the writer holds a connection, else on one of the pool's.
    pub(super) async fn write_group(
        &self,
        held: Option<&mut super::Held>,
        outcomes: &[Outcomes<'_>],
        batches: &[&IngestBatch],
        begun: Vec<tokio::sync::oneshot::Sender<()>>,
        locked: Option<tokio::sync::oneshot::Sender<()>>,
        mut leasing: Option<&mut Leasing>,
    ) -> Result<(Vec<(Vec<Recorded>, bool)>, Vec<Enqueued>)> {
        let started = std::time::Instant::now();
        let mut tx = self.write_tx_on(held).await?;
        for b in begun {
            let _ = b.send(());
        }
        // Every group of every batch and of every outcome that sends its
        // message back to wait, locked up front in one order, so that two
        // grouped writers (replicas) never wait on each other. No keys are
        // made where the backend takes no group locks.
        if locks_groups(&mut tx) {
            let mut groups = waiting_group_keys(&mut tx, outcomes).await?;
            groups.extend(
                batches
                    .iter()
                    .flat_map(|b| b.messages.iter())
                    .filter(|m| !m.group_key.is_empty())
                    .map(|m| group_lock_key(&m.user_id, &m.channel_id, &m.group_key)),
            );
            lock_groups(&mut tx, groups.into_iter()).await?;
        }
        if let Some(locked) = locked {
            let _ = locked.send(());
        }
        // The open period, and the time outcomes become final: read once,
        // under the period lock, so that every final_at lies inside the
        // period billing it.
        let mut period = PeriodNow::new(&self.clock);
        let mut recorded = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            recorded.push(record_in(&mut tx, o.owner, o.records, &mut period).await?);
        }
        let results = if repeats_within(batches) {
            // Two batches of one group that share a dedupe key or a (channel,
            // group): each must see the one before it, so one at a time.
            let mut results = Vec::with_capacity(batches.len());
            for (i, batch) in batches.iter().enumerate() {
                let leasing = leasing.as_deref_mut();
                results.extend(enqueue_many(&mut tx, &[batch], i, &mut period, leasing).await?);
            }
            results
        } else {
            enqueue_many(&mut tx, batches, 0, &mut period, leasing.as_deref_mut()).await?
        };
        // Last, so that what the outcomes above let go of its group is
        // claimed too, and so that its row locks (PostgreSQL) are held
        // only until the commit that follows.
        if let Some(l) = leasing.filter(|l| l.claim && l.room > 0) {
            let now = self.clock.now_ms();
            l.claimed = claim_on(tx.conn(), &l.owner, now, l.until, l.room as i64).await?;
        }
        tx.commit().await?;
        if started.elapsed() > SLOW_WRITE {
            self.refresh_stats(self.clock.now_ms(), "a write was slow");
        }
        Ok((recorded, results))
    }

    /// Deletes up to `limit` dedupe keys expired by `now`; returns how many.
    pub async fn prune_dedupe(&self, now: Millis, limit: u64) -> Result<u64> {
        Ok(on!(self.writer(), |c| sqlx::query(
            "DELETE FROM dedupe WHERE key IN \
             (SELECT key FROM dedupe WHERE expires_at <= $1 LIMIT $2)"
        )
        .bind(now)
        .bind(limit as i64)
        .execute(c)
        .await?
        .rows_affected()))
    }

    /// Leases up to `limit` due messages to `owner` until `lease_until`.
    #[tracing::instrument(name = "store.claim", level = "debug", skip_all, fields(limit = limit))]
    pub async fn claim(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        let started = std::time::Instant::now();
        let mut writer = self.hold_writer().await?;
        let claimed = claim_on(writer.conn(), owner, now, lease_until, limit).await?;
        drop(writer);
        if started.elapsed() > SLOW_CLAIM && claimed.len() as i64 == limit {
            self.refresh_stats(now, "claims were slow");
        }
        Ok(claimed)
    }

    /// Refreshes the outbox's statistics (at most every [`STATS_EVERY`]
    /// ms), on a task of its own. PostgreSQL plans the claim from them: when
    /// a backlog builds up faster than autovacuum samples it (an outage, a
    /// burst), stale statistics that count a few pending messages make it
    /// sort every pending message on each claim (a claim of 64 then took
    /// 250 ms with 100,000 pending) instead of reading them in order, and
    /// look for a group's pending messages by scanning them all (see
    /// [`SLOW_WRITE`]).
    fn refresh_stats(&self, now: Millis, why: &'static str) {
        use std::sync::atomic::Ordering;
        let Some(sql) = on!(&self.pools, |_p, D| <D as Dialect>::REFRESH_STATS) else {
            return;
        };
        let last = self.stats_refreshed.load(Ordering::Relaxed);
        if now - last < STATS_EVERY
            || self
                .stats_refreshed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let done = on!(store.writer(), |c| sqlx::query(sql)
                .execute(c)
                .await
                .map(|_| ()));
            match done {
                Ok(_) => tracing::info!(why, "the outbox's statistics refreshed"),
                Err(e) => tracing::warn!(error = %e, "refreshing the outbox's statistics failed"),
            }
        });
    }

    /// Gives leased messages back (on shutdown) so another worker takes them now.
    pub async fn release(&self, owner: &str, ids: &[i64]) -> Result<()> {
        let (owner, ids) = (owner.to_owned(), ids.to_vec());
        self.detached(move |store| async move { store.release_now(&owner, &ids).await })
            .await
    }

    async fn release_now(&self, owner: &str, ids: &[i64]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            on!(tx.conn(), |c| {
                sqlx::query(
                    "UPDATE messages SET lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
                )
                .bind(id)
                .bind(owner)
                .execute(c)
                .await?;
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores finished attempts in one transaction. Only an owner still holding
    /// its lease may write: a message taken over after an expired lease is
    /// counted by its new holder, never twice. Returns, per record, whether it
    /// was applied.
    pub async fn record(&self, owner: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>> {
        Ok(self.record_telling(owner, records.to_vec()).await?.0)
    }

    /// [`Store::record`], also telling whether a message may now be claimed
    /// that could not be before: a pending message of a group whose older
    /// message these records made final (or superseded). Only then does the
    /// dispatcher need to claim at once.
    #[tracing::instrument(name = "store.record", skip_all, fields(
        records = records.len(),
        message_id = records.first().map(|r| r.message_id),
    ))]
    pub async fn record_telling(
        &self,
        owner: &str,
        records: Vec<AttemptRecord>,
    ) -> Result<(Vec<Recorded>, bool)> {
        match &self.ingest {
            Some(queue) => group::record_grouped(queue, owner, records).await,
            None => {
                let owner = owner.to_owned();
                self.detached(move |store| async move { store.record_now(&owner, &records).await })
                    .await
            }
        }
    }

    /// Records `records` in a transaction of their own.
    pub(super) async fn record_now(
        &self,
        owner: &str,
        records: &[AttemptRecord],
    ) -> Result<(Vec<Recorded>, bool)> {
        let outcomes = [Outcomes { owner, records }];
        let (mut recorded, _) = self
            .write_group(None, &outcomes, &[], Vec::new(), None, None)
            .await?;
        Ok(recorded.pop().expect("one outcome list"))
    }

    pub async fn pending_count(&self) -> Result<i64> {
        Ok(on!(self.reader(), |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE state = 'pending'"
        )
        .fetch_one(c)
        .await?))
    }
}

/// Leases up to `limit` messages due by `now` to `owner` until
/// `lease_until`, with the claim statement, on `c`: a writer connection of
/// its own ([`Store::claim`]) or a writer's transaction, which then claims
/// with the outcomes it records ([`Store::write_group`]).
async fn claim_on(
    c: Db<&mut SqliteConnection, &mut PgConnection>,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: i64,
) -> Result<Vec<ClaimedMessage>> {
    Ok(on!(c, |c, D| sqlx::query_as(<D as Dialect>::CLAIM)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(c)
        .await?))
}

/// Rows per multi-row statement: well inside both backends' limits on
/// bound parameters (SQLite 32,766, PostgreSQL 65,535).
const ROWS_PER_STATEMENT: usize = 400;

/// A multi-row statement as `tx`'s backend runs it fastest. SQLite looks a
/// numbered parameter up by name in a list, once when it prepares the
/// statement and once more each time sqlx binds it: for a statement of
/// hundreds of parameters that cost more than the statement itself (11 % of
/// the writer thread under the `core` bench). Anonymous `?` parameters are
/// in no list, so where `$1, $2, …` appear in the text in that order they
/// become `?`; anything else is left as it is.
fn for_backend(tx: &mut Tx<'_>, sql: String) -> String {
    if !on!(tx.conn(), |_c, D| <D as Dialect>::POSITIONAL) {
        return sql;
    }
    statements::positional(&sql).unwrap_or(sql)
}

/// Whether two of `batches` share a dedupe key, or two of their messages a
/// (channel, group): then each must be written after the one before it.
fn repeats_within(batches: &[&IngestBatch]) -> bool {
    let mut keys = std::collections::HashSet::new();
    let mut groups = std::collections::HashSet::new();
    batches.iter().any(|b| !keys.insert(b.dedupe_key.as_str()))
        || batches
            .iter()
            .flat_map(|b| b.messages.iter())
            .filter(|m| !m.group_key.is_empty())
            .any(|m| !groups.insert((&m.user_id, &m.channel_id, &m.group_key)))
}

/// Messages leased at insert to a dispatcher of this process (see
/// `Store::hand_off_to`), so that they need no claim: at most `room` of
/// them, and only those with no older message of their (channel, group)
/// pending (which the claim would hold back). With `claim`, the room left
/// after the inserts is filled by a claim in the same transaction, as
/// `Store::claim` would make it (see `Store::note_backlog`).
pub(super) struct Leasing {
    pub owner: String,
    pub until: Millis,
    /// How many more may be leased.
    pub room: usize,
    /// Each leased message: its batch's index, its index in the batch, its id.
    pub leased: Vec<(usize, usize, i64)>,
    /// Whether to claim due messages into the room left.
    pub claim: bool,
    /// What that claim took.
    pub claimed: Vec<ClaimedMessage>,
}

/// Records `batches` (no two sharing a dedupe key or a (channel, group)) in
/// `tx` with a few multi-row statements: each batch's dedupe key, then
/// (unless the key was seen within its window) its messages, superseding
/// the waiting ones of their groups, and its undeliverable alerts. (One
/// payload makes at most one message per channel, so a single batch never
/// holds two messages of one (channel, group).) `first`: the index of
/// `batches[0]` among the group's, for what `leasing` records.
async fn enqueue_many(
    tx: &mut Tx<'_>,
    batches: &[&IngestBatch],
    first: usize,
    period: &mut PeriodNow,
    mut leasing: Option<&mut Leasing>,
) -> Result<Vec<Enqueued>> {
    let keys = insert_dedupe_keys(tx, batches).await?;
    let fresh: Vec<(usize, &IngestBatch)> = batches
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, b)| keys.contains(&b.dedupe_key))
        .collect();
    let fresh_batches: Vec<&IngestBatch> = fresh.iter().map(|(_, b)| *b).collect();
    let (superseded, busy) = supersede_waiting_many(tx, &fresh_batches, period).await?;
    let mut superseded = superseded.into_iter();
    let mut waiting = vec![0; batches.len()];
    let mut rows = Vec::new();
    for (i, b) in &fresh {
        for (j, m) in b.messages.iter().enumerate() {
            let lease = match leasing.as_deref_mut() {
                Some(l) if l.room > 0 && (busy.is_empty() || !busy.contains(&group_of(m))) => {
                    l.room -= 1;
                    true
                }
                _ => false,
            };
            waiting[*i] += usize::from(!lease);
            rows.push(Row {
                message: m,
                now: b.now,
                lease,
                at: (first + i, j),
            });
        }
    }
    let lease = leasing.as_deref().map(|l| (l.owner.as_str(), l.until));
    let ids = insert_messages(tx, &rows, lease).await?;
    if let Some(l) = leasing {
        for (row, id) in rows.iter().zip(ids).filter(|(r, _)| r.lease) {
            l.leased.push((row.at.0, row.at.1, id));
        }
    }
    for batch in &fresh_batches {
        insert_undeliverable(tx, batch).await?;
    }
    // `superseded` holds one list per fresh batch, in the batches' order.
    Ok(batches
        .iter()
        .zip(waiting)
        .map(|(b, waiting)| match keys.contains(&b.dedupe_key) {
            true => Enqueued::Accepted {
                superseded: superseded.next().unwrap_or_default(),
                waiting,
            },
            false => Enqueued::Duplicate,
        })
        .collect())
}

/// A message's (channel, group): user, channel, group key.
type GroupOf = (String, String, String);

/// The same, borrowed.
type GroupRef<'a> = (&'a str, &'a str, &'a str);

fn group_of(m: &NewMessage) -> GroupOf {
    (m.user_id.clone(), m.channel_id.clone(), m.group_key.clone())
}

/// One message to insert.
struct Row<'a> {
    message: &'a NewMessage,
    /// When its batch was accepted.
    now: Millis,
    /// Leased at insert.
    lease: bool,
    /// Its batch's index among the group's, and its own in the batch.
    at: (usize, usize),
}

/// Inserts the batches' dedupe keys (or renews expired ones); answers the
/// keys that were fresh. A key seen within its window is left as it is.
async fn insert_dedupe_keys(
    tx: &mut Tx<'_>,
    batches: &[&IngestBatch],
) -> Result<std::collections::HashSet<String>> {
    // The group is written now: a key expired by the latest request's time
    // is fresh again.
    let now = batches.iter().map(|b| b.now).max().unwrap_or_default();
    let mut fresh = std::collections::HashSet::new();
    // In key order, so that two writers (replicas, or a process's writers
    // on PostgreSQL) inserting one key never wait on each other in a cycle.
    let mut batches = batches.to_vec();
    batches.sort_unstable_by(|a, b| a.dedupe_key.cmp(&b.dedupe_key));
    for chunk in batches.chunks(ROWS_PER_STATEMENT) {
        let sql = statements::insert_dedupe(chunk.len());
        let sql = for_backend(tx, sql);
        let keys: Vec<String> = on!(tx.conn(), |c| {
            let mut q = sqlx::query_scalar(&sql);
            for b in chunk {
                q = q.bind(&b.dedupe_key).bind(b.dedupe_expires_at);
            }
            q.bind(now).fetch_all(c).await?
        });
        fresh.extend(keys);
    }
    Ok(fresh)
}

/// [`supersede_waiting`] for every message of `batches` at once (no two in
/// one (channel, group)): answers, per batch, the messages it superseded,
/// and the (channel, group)s that had a message pending (waiting, or being
/// sent: the new message must not be leased at insert).
async fn supersede_waiting_many(
    tx: &mut Tx<'_>,
    batches: &[&IngestBatch],
    period: &mut PeriodNow,
) -> Result<(Vec<Vec<Superseded>>, std::collections::HashSet<GroupOf>)> {
    let mut superseded = vec![Vec::new(); batches.len()];
    let grouped: Vec<(usize, &NewMessage)> = batches
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.messages.iter().map(move |m| (i, m)))
        .filter(|(_, m)| !m.group_key.is_empty())
        .collect();
    let groups: Vec<GroupRef> = grouped
        .iter()
        .map(|(_, m)| {
            (
                m.user_id.as_str(),
                m.channel_id.as_str(),
                m.group_key.as_str(),
            )
        })
        .collect();
    let busy = pending_groups(tx, &groups, false).await?;
    // Rarely any: only then is each such message's group looked at again.
    if !busy.is_empty() {
        for (i, m) in &grouped {
            if busy.contains(&group_of(m)) {
                supersede_waiting(tx, m, period, &mut superseded[*i]).await?;
            }
        }
    }
    Ok((superseded, busy))
}

/// Inserts pending messages, each accepted at its time, in their order
/// (ids follow it: a group is delivered in the order it was accepted); those
/// marked `lease` leased to `lease`'s owner until its time. Answers their
/// ids, in the same order.
async fn insert_messages(
    tx: &mut Tx<'_>,
    rows: &[Row<'_>],
    lease: Option<(&str, Millis)>,
) -> Result<Vec<i64>> {
    let mut all = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = statements::insert_messages(chunk.len());
        let sql = for_backend(tx, sql);
        let mut ids: Vec<i64> = on!(tx.conn(), |c| {
            let mut q = sqlx::query_scalar(&sql);
            for row in chunk {
                let m = row.message;
                let (owner, until) = match lease.filter(|_| row.lease) {
                    Some((owner, until)) => (Some(owner), Some(until)),
                    None => (None, None),
                };
                q = q
                    .bind(&m.user_id)
                    .bind(&m.channel_id)
                    .bind(m.integration)
                    .bind(&m.group_key)
                    .bind(&m.payload)
                    .bind(m.alert_count)
                    .bind(&m.alertnames)
                    .bind(row.now)
                    .bind(row.now)
                    .bind(owner)
                    .bind(until);
            }
            q.fetch_all(c).await?
        });
        if ids.len() != chunk.len() {
            return Err(StoreError::Corrupt(format!(
                "inserting {} messages returned {} ids",
                chunk.len(),
                ids.len()
            )));
        }
        // Ids are given in the rows' order; RETURNING need not list them so.
        ids.sort_unstable();
        all.extend(ids);
    }
    Ok(all)
}

/// Makes the messages of `finals` (delivered or failed) final with a few
/// multi-row statements: each message, if `owner` still holds its lease;
/// then the attempts and the usage of those applied. Answers, per record,
/// whether it was applied.
async fn finish_many(
    tx: &mut Tx<'_>,
    owner: &str,
    finals: &[&AttemptRecord],
    period: &mut PeriodNow,
) -> Result<(Vec<bool>, Vec<GroupOf>)> {
    if finals.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (period_id, final_at) = period_now(tx, period).await?;
    let mut applied = std::collections::HashSet::new();
    let mut groups = Vec::new();
    for chunk in finals.chunks(ROWS_PER_STATEMENT) {
        let sql = statements::finish_messages(chunk.len());
        let sql = for_backend(tx, sql);
        let rows: Vec<(i64, String, String, String)> = on!(tx.conn(), |c| {
            let mut q = sqlx::query_as(&sql).bind(final_at).bind(&period_id);
            for r in chunk {
                let state = if r.outcome == Outcome::Delivered {
                    Final::Delivered
                } else {
                    Final::Failed
                };
                q = q
                    .bind(r.message_id)
                    .bind(state.as_str())
                    .bind(attempts_made(r))
                    .bind(reason(r))
                    .bind(&r.error)
                    .bind(r.segments);
            }
            q.bind(owner).fetch_all(c).await?
        });
        for (id, user_id, channel_id, group_key) in rows {
            applied.insert(id);
            if !group_key.is_empty() {
                groups.push((user_id, channel_id, group_key));
            }
        }
    }
    let done: Vec<&AttemptRecord> = finals
        .iter()
        .copied()
        .filter(|r| applied.contains(&r.message_id))
        .collect();
    let attempted: Vec<&AttemptRecord> = done.iter().copied().filter(|r| r.attempted).collect();
    insert_attempts(tx, &attempted).await?;
    count_usage_many(tx, &period_id, &done).await?;
    let applied = finals
        .iter()
        .map(|r| applied.contains(&r.message_id))
        .collect();
    Ok((applied, groups))
}

/// Which of `groups` (user, channel, group key) have a message pending;
/// with `first`, at most one of them (enough to tell whether any has). A
/// subquery per row, so that each is an index look-up whatever the planner
/// believes of the pending rows: a join was planned as a scan of every
/// pending message, seconds for a backlog on PostgreSQL.
async fn pending_groups(
    tx: &mut Tx<'_>,
    groups: &[GroupRef<'_>],
    first: bool,
) -> Result<std::collections::HashSet<GroupOf>> {
    let mut found = std::collections::HashSet::new();
    for chunk in groups.chunks(ROWS_PER_STATEMENT) {
        let sql = statements::pending_groups(chunk.len(), first);
        let sql = for_backend(tx, sql);
        let rows: Vec<GroupOf> = on!(tx.conn(), |c| {
            let mut q = sqlx::query_as(&sql);
            for (user_id, channel_id, group_key) in chunk {
                q = q.bind(*user_id).bind(*channel_id).bind(*group_key);
            }
            q.fetch_all(c).await?
        });
        found.extend(rows);
        if first && !found.is_empty() {
            break;
        }
    }
    Ok(found)
}

async fn insert_attempts(tx: &mut Tx<'_>, records: &[&AttemptRecord]) -> Result<()> {
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let sql = statements::insert_attempts(chunk.len());
        let sql = for_backend(tx, sql);
        on!(tx.conn(), |c| {
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.message_id)
                    .bind(r.attempt)
                    .bind(r.started_at)
                    .bind(r.duration_ms)
                    .bind(r.result)
                    .bind(r.status_code)
                    .bind(&r.error)
                    .bind(r.segments);
            }
            q.execute(c).await?;
        });
    }
    Ok(())
}

/// Counts delivered and failed messages in their period's usage, summed per
/// (user, integration) and written in key order (so that two writers lock
/// usage rows in one order).
async fn count_usage_many(
    tx: &mut Tx<'_>,
    period_id: &str,
    records: &[&AttemptRecord],
) -> Result<()> {
    // (delivered, failed, delivered segments, failed segments)
    let mut sums: std::collections::BTreeMap<(&str, &str), [i64; 4]> = Default::default();
    for r in records {
        let sum = sums
            .entry((r.user_id.as_str(), r.integration.as_str()))
            .or_default();
        let segments = r.segments.unwrap_or(0);
        if r.outcome == Outcome::Delivered {
            sum[0] += 1;
            sum[2] += segments;
        } else {
            sum[1] += 1;
            sum[3] += segments;
        }
    }
    let sums: Vec<_> = sums.into_iter().collect();
    for chunk in sums.chunks(ROWS_PER_STATEMENT) {
        let sql = statements::count_usage(chunk.len());
        let sql = for_backend(tx, sql);
        on!(tx.conn(), |c| {
            let mut q = sqlx::query(&sql);
            for ((user_id, integration), counts) in chunk {
                q = q.bind(period_id).bind(*user_id).bind(*integration);
                for n in counts {
                    q = q.bind(*n);
                }
            }
            q.execute(c).await?;
        });
    }
    Ok(())
}

/// The batch's undeliverable alerts (rare: one statement each).
async fn insert_undeliverable(tx: &mut Tx<'_>, batch: &IngestBatch) -> Result<()> {
    for u in &batch.undeliverable {
        on!(tx.conn(), |c| {
            sqlx::query(
                "INSERT INTO undeliverable (received_at, user_id, raw_user_id, receiver, reason, alert) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(batch.now)
            .bind(&u.user_id)
            .bind(&u.raw_user_id)
            .bind(&u.receiver)
            .bind(u.reason)
            .bind(&u.alert)
            .execute(c)
            .await?;
        });
    }
    Ok(())
}

/// Makes the messages of `m`'s (channel, group) that are still waiting
/// (for a retry, a hold or pacing; not those being sent right now) final
/// as superseded: `m` carries the group's newer state.
async fn supersede_waiting(
    tx: &mut Tx<'_>,
    m: &NewMessage,
    period: &mut PeriodNow,
    superseded: &mut Vec<Superseded>,
) -> Result<()> {
    let waiting: Vec<i64> = on!(tx.conn(), |c| sqlx::query_scalar(
        "SELECT id FROM messages WHERE user_id = $1 AND channel_id = $2 AND group_key = $3 \
         AND state = 'pending' AND lease_owner IS NULL",
    )
    .bind(&m.user_id)
    .bind(&m.channel_id)
    .bind(&m.group_key)
    .fetch_all(c)
    .await?);
    if waiting.is_empty() {
        return Ok(());
    }
    let (period_id, final_at) = period_now(tx, period).await?;
    for id in waiting {
        let done = on!(tx.conn(), |c| sqlx::query(
            "UPDATE messages SET state = 'superseded', final_at = $1, period_id = $2, \
               paced = FALSE, lease_owner = NULL, lease_until = NULL \
             WHERE id = $3 AND state = 'pending' AND lease_owner IS NULL",
        )
        .bind(final_at)
        .bind(&period_id)
        .bind(id)
        .execute(c)
        .await?
        .rows_affected());
        if done > 0 {
            superseded.push(Superseded {
                message_id: id,
                user_id: m.user_id.clone(),
                integration: m.integration,
            });
        }
    }
    Ok(())
}

/// The lock keys of the groups whose messages `outcomes` send back to wait
/// (asked only where the backend takes group locks). Locked, they make a newer
/// message of the group either committed before (and the record
/// supersedes) or enqueued after (and supersedes the waiting one).
async fn waiting_group_keys(tx: &mut Tx<'_>, outcomes: &[Outcomes<'_>]) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let waiting = outcomes.iter().flat_map(|o| o.records.iter());
    for r in waiting.filter(|r| waits(r.outcome)) {
        let row: Option<(String, String, String)> = on!(tx.conn(), |c| sqlx::query_as(
            "SELECT user_id, channel_id, group_key FROM messages WHERE id = $1"
        )
        .bind(r.message_id)
        .fetch_optional(c)
        .await?);
        if let Some((user_id, channel_id, group)) = row.filter(|(_, _, g)| !g.is_empty()) {
            keys.push(group_lock_key(&user_id, &channel_id, &group));
        }
    }
    Ok(keys)
}

/// Attempts one dispatcher finished, to record.
pub(super) struct Outcomes<'a> {
    /// The dispatcher: only a lease it still holds is written.
    pub owner: &'a str,
    pub records: &'a [AttemptRecord],
}

/// Records `records` in `tx` (their groups locked): per record whether it
/// was applied, and whether a held-back message of a group may now go.
async fn record_in(
    tx: &mut Tx<'_>,
    owner: &str,
    records: &[AttemptRecord],
    period: &mut PeriodNow,
) -> Result<(Vec<Recorded>, bool)> {
    // Final outcomes (the common case) are written a few statements for
    // all of them; those that send a message back to wait, one by one.
    let finals: Vec<&AttemptRecord> = records.iter().filter(|r| !waits(r.outcome)).collect();
    let (applied, groups) = finish_many(tx, owner, &finals, period).await?;
    let groups: Vec<GroupRef> = groups
        .iter()
        .map(|(u, c, g)| (u.as_str(), c.as_str(), g.as_str()))
        .collect();
    let mut released = !pending_groups(tx, &groups, true).await?.is_empty();
    let mut applied = applied.into_iter();
    let mut recorded = Vec::with_capacity(records.len());
    for r in records {
        recorded.push(if waits(r.outcome) {
            let done = record_waiting(tx, owner, r, period).await?;
            // Superseded: the newer message of its group may go.
            released |= done == Recorded::Superseded;
            done
        } else if applied.next() == Some(true) {
            Recorded::Applied
        } else {
            Recorded::LeaseLost
        });
    }
    Ok((recorded, released))
}

/// Whether an outcome sends its message back to wait (a retry, a deferral).
fn waits(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Defer { .. } | Outcome::Retry { .. })
}

/// Stores the outcome of an attempt that sends its message back to wait (a
/// retry, a deferral) and its attempt row. A message that would wait while
/// a newer one of its group is queued is superseded instead: final, never
/// sent again, not billed.
async fn record_waiting(
    tx: &mut Tx<'_>,
    owner: &str,
    r: &AttemptRecord,
    period: &mut PeriodNow,
) -> Result<Recorded> {
    let superseded = has_newer_in_group(tx, r.message_id).await?;
    let applied = if superseded {
        let (period_id, final_at) = period_now(tx, period).await?;
        finish_message(tx, owner, r, Final::Superseded, &period_id, final_at).await?
    } else {
        reschedule_message(tx, owner, r).await?
    };
    if !applied {
        return Ok(Recorded::LeaseLost);
    }
    if r.attempted {
        insert_attempts(tx, &[r]).await?;
    }
    Ok(if superseded {
        Recorded::Superseded
    } else {
        Recorded::Applied
    })
}

/// Makes a message final in `period_id` at `final_at`, if `owner` still
/// holds its lease; false when it does not.
async fn finish_message(
    tx: &mut Tx<'_>,
    owner: &str,
    r: &AttemptRecord,
    state: Final,
    period_id: &str,
    final_at: Millis,
) -> Result<bool> {
    let updated = on!(tx.conn(), |c| sqlx::query(
        "UPDATE messages SET state = $1, attempts = $2, final_at = $3, last_reason = $4, \
           last_error = $5, period_id = $6, paced = FALSE, lease_owner = NULL, lease_until = NULL \
         WHERE id = $7 AND state = 'pending' AND lease_owner = $8",
    )
    .bind(state.as_str())
    .bind(attempts_made(r))
    .bind(final_at)
    .bind(reason(r))
    .bind(&r.error)
    .bind(period_id)
    .bind(r.message_id)
    .bind(owner)
    .execute(c)
    .await?
    .rows_affected());
    Ok(updated > 0)
}

/// Sends a message back to wait (a retry, a deferral), if `owner` still
/// holds its lease; false when it does not.
async fn reschedule_message(tx: &mut Tx<'_>, owner: &str, r: &AttemptRecord) -> Result<bool> {
    let updated = match r.outcome {
        Outcome::Defer { due_at, paced } => on!(tx.conn(), |c| {
            sqlx::query(
                "UPDATE messages SET due_at = $1, paced = $2, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $3 AND state = 'pending' AND lease_owner = $4",
            )
            .bind(due_at)
            .bind(paced)
            .bind(r.message_id)
            .bind(owner)
            .execute(c)
            .await?
            .rows_affected()
        }),
        Outcome::Retry { due_at } => on!(tx.conn(), |c| {
            sqlx::query(
                "UPDATE messages SET attempts = $1, due_at = $2, last_reason = $3, \
                   last_error = $4, paced = FALSE, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $5 AND state = 'pending' AND lease_owner = $6",
            )
            .bind(attempts_made(r))
            .bind(due_at)
            .bind(reason(r))
            .bind(&r.error)
            .bind(r.message_id)
            .bind(owner)
            .execute(c)
            .await?
            .rows_affected()
        }),
        Outcome::Delivered | Outcome::Failed => unreachable!("final outcomes have a state"),
    };
    Ok(updated > 0)
}

/// Whether a newer message of this message's (channel, group) is pending.
async fn has_newer_in_group(tx: &mut Tx<'_>, message_id: i64) -> Result<bool> {
    Ok(on!(tx.conn(), |c| sqlx::query(
        "SELECT 1 FROM messages m JOIN messages n ON n.user_id = m.user_id \
           AND n.channel_id = m.channel_id AND n.group_key = m.group_key \
         WHERE m.id = $1 AND m.group_key <> '' AND n.state = 'pending' AND n.id > m.id LIMIT 1",
    )
    .bind(message_id)
    .fetch_optional(c)
    .await?
    .is_some()))
}

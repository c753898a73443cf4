//! The statements both databases share (`$N` placeholders work in both).

use std::future::Future;
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{
    AttemptRecord, Backend, ChannelRecord, ClaimedMessage, Enqueued, IngestBatch, NewMessage,
    Outcome, Period, Recorded, Result, StoreError, Superseded, UsageRow,
};
use crate::clock::{now_ms, rfc3339, Millis};

/// The store. Cheap to clone: clones share the backend's pools.
#[derive(Clone)]
pub struct Store {
    pub(super) backend: Arc<dyn Backend>,
}

fn channel_from_row(row: &AnyRow) -> Result<ChannelRecord> {
    Ok(ChannelRecord {
        user_id: row.try_get("user_id")?,
        channel_id: row.try_get("channel_id")?,
        integration: row.try_get("integration")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        spec: row.try_get("spec")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn period_from_row(row: &AnyRow) -> Result<Period> {
    Ok(Period {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        start_at: row.try_get("start_at")?,
        end_at: row.try_get("end_at")?,
        closed_at: row.try_get("closed_at")?,
        currency: row.try_get("currency")?,
        bill_failed: row
            .try_get::<Option<i64>, _>("bill_failed")?
            .map(|b| b != 0),
        report_sha256: row.try_get("report_sha256")?,
    })
}

pub(super) const PERIOD_COLUMNS: &str =
    "id, user_id, start_at, end_at, closed_at, currency, bill_failed, report_sha256";

const CHANNEL_COLUMNS: &str =
    "user_id, channel_id, integration, enabled, spec, created_at, updated_at";

/// The key of a (channel, group) lock: user, channel and group joined by a
/// separator that none of them contains.
fn group_lock_key(user_id: &str, channel_id: &str, group_key: &str) -> String {
    format!("{user_id}\u{1f}{channel_id}\u{1f}{group_key}")
}

/// Period ids are the open time in compact UTC, e.g. `20261101T000000Z`, with
/// milliseconds when it has any (`20261124T101500.250Z`).
pub fn period_id_for(start: Millis) -> String {
    let compact = rfc3339(start).replace(['-', ':'], "");
    match compact.strip_suffix(".000Z") {
        Some(whole_seconds) => format!("{whole_seconds}Z"),
        None => compact,
    }
}

impl Store {
    pub(super) fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Runs a write on a task of its own and waits for it. The caller may
    /// go away at any await (a client hanging up, a timeout): the write still
    /// runs to its commit or rollback, so no connection is ever returned to
    /// the pool inside a transaction, and what was written is whole.
    pub(super) async fn detached<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(op(self.clone()))
            .await
            .map_err(|e| StoreError::Interrupted(e.to_string()))?
    }

    /// A write transaction, begun as the backend wants it.
    pub(super) async fn write_tx(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend.begin_write() {
            Some(statement) => self.backend.writer().begin_with(statement).await?,
            None => self.backend.writer().begin().await?,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Applies pending migrations and makes sure an open billing period exists.
    pub async fn migrate(&self, now: Millis) -> Result<()> {
        self.backend.migrate().await?;
        self.ensure_open_period(now).await
    }

    /// Whether the store takes a write: a write transaction (SQLite: one
    /// holding the database's write lock) is begun and rolled back.
    pub async fn check_writable(&self) -> Result<()> {
        self.detached(|store| async move {
            let mut tx = store.write_tx().await?;
            let read_only = match store.backend.read_only_sql() {
                Some(sql) => sqlx::query(sql)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get::<bool, _>("read_only")?,
                None => false,
            };
            tx.rollback().await?;
            if read_only {
                return Err(StoreError::ReadOnly);
            }
            Ok(())
        })
        .await
    }

    pub async fn close(&self) {
        self.backend.writer().close().await;
        self.backend.reader().close().await;
    }

    // ---- channels ------------------------------------------------------------

    /// Creates or replaces a channel; returns true when it was created.
    pub async fn put_channel(&self, ch: &ChannelRecord) -> Result<bool> {
        let ch = ch.clone();
        self.detached(move |store| async move { store.put_channel_now(&ch).await })
            .await
    }

    async fn put_channel_now(&self, ch: &ChannelRecord) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let existed = sqlx::query("SELECT 1 FROM channels WHERE user_id = $1 AND channel_id = $2")
            .bind(&ch.user_id)
            .bind(&ch.channel_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO channels (user_id, channel_id, integration, enabled, spec, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (user_id, channel_id) DO UPDATE SET integration = excluded.integration, \
               enabled = excluded.enabled, spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(&ch.user_id)
        .bind(&ch.channel_id)
        .bind(&ch.integration)
        .bind(i64::from(ch.enabled))
        .bind(&ch.spec)
        .bind(ch.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!existed)
    }

    pub async fn get_channel(
        &self,
        user_id: &str,
        channel_id: &str,
    ) -> Result<Option<ChannelRecord>> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE user_id = $1 AND channel_id = $2"
        );
        sqlx::query(&sql)
            .bind(user_id)
            .bind(channel_id)
            .fetch_optional(self.backend.reader())
            .await?
            .as_ref()
            .map(channel_from_row)
            .transpose()
    }

    pub async fn delete_channel(&self, user_id: &str, channel_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM channels WHERE user_id = $1 AND channel_id = $2")
            .bind(user_id)
            .bind(channel_id)
            .execute(self.backend.writer())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn list_channels(&self, user_id: &str) -> Result<Vec<ChannelRecord>> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE user_id = $1 ORDER BY channel_id"
        );
        sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(self.backend.reader())
            .await?
            .iter()
            .map(channel_from_row)
            .collect()
    }

    /// Every enabled channel, sorted by user_id then channel_id.
    pub async fn enabled_channels(&self) -> Result<Vec<ChannelRecord>> {
        let sql = format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE enabled = 1 ORDER BY user_id, channel_id"
        );
        sqlx::query(&sql)
            .fetch_all(self.backend.reader())
            .await?
            .iter()
            .map(channel_from_row)
            .collect()
    }

    // ---- ingest --------------------------------------------------------------

    /// Records the dedupe key and every message and undeliverable alert in one
    /// transaction. A key seen within its window makes the whole batch a duplicate.
    pub async fn enqueue(&self, batch: IngestBatch) -> Result<Enqueued> {
        self.enqueue_telling(batch, None).await
    }

    /// Like [`Store::enqueue`], sending on `begun` once the write transaction
    /// has begun (SQLite: once it holds the write lock), so that a caller can
    /// tell a store that cannot take the write from one that is taking it.
    pub async fn enqueue_telling(
        &self,
        batch: IngestBatch,
        begun: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Enqueued> {
        self.detached(move |store| async move { store.enqueue_now(&batch, begun).await })
            .await
    }

    async fn enqueue_now(
        &self,
        batch: &IngestBatch,
        begun: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<Enqueued> {
        let mut tx = self.write_tx().await?;
        if let Some(begun) = begun {
            let _ = begun.send(());
        }
        let groups = batch
            .messages
            .iter()
            .filter(|m| !m.group_key.is_empty())
            .map(|m| group_lock_key(&m.user_id, &m.channel_id, &m.group_key));
        self.lock_groups(&mut tx, groups).await?;
        let fresh = sqlx::query(
            "INSERT INTO dedupe (key, expires_at) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE dedupe.expires_at <= $3",
        )
        .bind(&batch.dedupe_key)
        .bind(batch.dedupe_expires_at)
        .bind(batch.now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !fresh {
            tx.rollback().await?;
            return Ok(Enqueued::Duplicate);
        }
        let mut superseded = Vec::new();
        let mut period: Option<(String, Millis)> = None;
        for m in &batch.messages {
            if !m.group_key.is_empty() {
                self.supersede_waiting(&mut tx, m, &mut period, &mut superseded)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO messages (user_id, channel_id, integration, group_key, payload, \
                   alert_count, alertnames, state, created_at, due_at, attempts) \
                 VALUES ($1, $2, $3, $8, $4, $5, $6, 'pending', $7, $7, 0)",
            )
            .bind(&m.user_id)
            .bind(&m.channel_id)
            .bind(&m.integration)
            .bind(&m.payload)
            .bind(m.alert_count)
            .bind(&m.alertnames)
            .bind(batch.now)
            .bind(&m.group_key)
            .execute(&mut *tx)
            .await?;
        }
        for u in &batch.undeliverable {
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Enqueued::Accepted { superseded })
    }

    /// Makes the messages of `m`'s (channel, group) that are still waiting
    /// (for a retry, a hold or pacing; not those being sent right now) final
    /// as superseded: `m` carries the group's newer state. The open period and
    /// the time are read under the period lock, once per transaction.
    async fn supersede_waiting(
        &self,
        tx: &mut Transaction<'static, Any>,
        m: &NewMessage,
        period: &mut Option<(String, Millis)>,
        superseded: &mut Vec<Superseded>,
    ) -> Result<()> {
        let waiting = sqlx::query(
            "SELECT id FROM messages WHERE user_id = $1 AND channel_id = $2 AND group_key = $3 \
             AND state = 'pending' AND lease_owner IS NULL",
        )
        .bind(&m.user_id)
        .bind(&m.channel_id)
        .bind(&m.group_key)
        .fetch_all(&mut **tx)
        .await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let (period_id, final_at) = self.period_now(tx, period).await?;
        for row in waiting {
            let id: i64 = row.try_get("id")?;
            let done = sqlx::query(
                "UPDATE messages SET state = 'superseded', final_at = $1, period_id = $2, paced = 0, \
                   lease_owner = NULL, lease_until = NULL \
                 WHERE id = $3 AND state = 'pending' AND lease_owner IS NULL",
            )
            .bind(final_at)
            .bind(&period_id)
            .bind(id)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() > 0 {
                superseded.push(Superseded {
                    message_id: id,
                    user_id: m.user_id.clone(),
                    integration: m.integration.clone(),
                });
            }
        }
        Ok(())
    }

    pub async fn prune_dedupe(&self, now: Millis) -> Result<u64> {
        let done = sqlx::query("DELETE FROM dedupe WHERE expires_at <= $1")
            .bind(now)
            .execute(self.backend.writer())
            .await?;
        Ok(done.rows_affected())
    }

    // ---- dispatch ------------------------------------------------------------

    /// Leases up to `limit` due messages to `owner` until `lease_until`.
    pub async fn claim(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>> {
        let rows = sqlx::query(self.backend.claim_sql())
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(self.backend.writer())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedMessage {
                    id: row.try_get("id")?,
                    user_id: row.try_get("user_id")?,
                    channel_id: row.try_get("channel_id")?,
                    integration: row.try_get("integration")?,
                    payload: row.try_get("payload")?,
                    created_at: row.try_get("created_at")?,
                    attempts: row.try_get("attempts")?,
                    paced: row.try_get::<i64, _>("paced")? != 0,
                })
            })
            .collect()
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
            sqlx::query(
                "UPDATE messages SET lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
            )
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The open period's id, share-locked for the rest of the transaction. A
    /// close that commits while this waits leaves no open row in this
    /// statement's snapshot; the next statement sees the new period.
    async fn open_period_id(&self, tx: &mut Transaction<'static, Any>) -> Result<(String, Millis)> {
        for _ in 0..3 {
            let row = sqlx::query(self.backend.lock_open_period_sql(false))
                .fetch_optional(&mut **tx)
                .await?;
            if let Some(row) = row {
                return Ok((row.try_get("id")?, row.try_get("start_at")?));
            }
        }
        Err(StoreError::Corrupt("no open billing period".into()))
    }

    /// Stores finished attempts in one transaction. Only an owner still holding
    /// its lease may write: a message taken over after an expired lease is
    /// counted by its new holder, never twice. Returns, per record, whether it
    /// was applied.
    pub async fn record(&self, owner: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>> {
        let (owner, records) = (owner.to_owned(), records.to_vec());
        self.detached(move |store| async move { store.record_now(&owner, &records).await })
            .await
    }

    async fn record_now(&self, owner: &str, records: &[AttemptRecord]) -> Result<Vec<Recorded>> {
        let mut tx = self.write_tx().await?;
        if self.backend.lock_group_sql().is_some() {
            let waiting: Vec<i64> = records
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Defer { .. } | Outcome::Retry { .. }))
                .map(|r| r.message_id)
                .collect();
            let mut groups = Vec::new();
            for id in waiting {
                let row = sqlx::query(
                    "SELECT user_id, channel_id, group_key FROM messages WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = row {
                    let group: String = row.try_get("group_key")?;
                    if !group.is_empty() {
                        groups.push(group_lock_key(
                            &row.try_get::<String, _>("user_id")?,
                            &row.try_get::<String, _>("channel_id")?,
                            &group,
                        ));
                    }
                }
            }
            self.lock_groups(&mut tx, groups.into_iter()).await?;
        }
        // The open period, and the time outcomes become final: read under the
        // period lock, so that every final_at lies inside the period billing it.
        let mut period: Option<(String, Millis)> = None;
        let mut applied = Vec::with_capacity(records.len());
        for r in records {
            let attempts = if r.attempted {
                r.attempt
            } else {
                r.attempt - 1
            };
            let reason = (r.result != "success").then_some(&r.result);
            // A message that would wait while a newer one of its group is
            // queued is superseded instead: final, never sent again.
            let waits = matches!(r.outcome, Outcome::Defer { .. } | Outcome::Retry { .. });
            let superseded = waits && self.has_newer_in_group(&mut tx, r.message_id).await?;
            let final_state = match r.outcome {
                _ if superseded => Some("superseded"),
                Outcome::Delivered => Some("delivered"),
                Outcome::Failed => Some("failed"),
                Outcome::Retry { .. } | Outcome::Defer { .. } => None,
            };
            let updated = match (final_state, r.outcome) {
                (Some(state), _) => {
                    let (period_id, final_at) = self.period_now(&mut tx, &mut period).await?;
                    sqlx::query(
                        "UPDATE messages SET state = $1, attempts = $2, final_at = $3, last_reason = $4, \
                           last_error = $5, period_id = $6, paced = 0, lease_owner = NULL, lease_until = NULL \
                         WHERE id = $7 AND state = 'pending' AND lease_owner = $8",
                    )
                    .bind(state)
                    .bind(attempts)
                    .bind(final_at)
                    .bind(reason)
                    .bind(&r.error)
                    .bind(period_id)
                    .bind(r.message_id)
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                }
                (None, Outcome::Defer { due_at, paced }) => sqlx::query(
                    "UPDATE messages SET due_at = $1, paced = $4, lease_owner = NULL, lease_until = NULL \
                     WHERE id = $2 AND state = 'pending' AND lease_owner = $3",
                )
                .bind(due_at)
                .bind(r.message_id)
                .bind(owner)
                .bind(i64::from(paced))
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                (None, Outcome::Retry { due_at }) => sqlx::query(
                    "UPDATE messages SET attempts = $1, due_at = $2, last_reason = $3, last_error = $4, \
                       paced = 0, lease_owner = NULL, lease_until = NULL \
                     WHERE id = $5 AND state = 'pending' AND lease_owner = $6",
                )
                .bind(attempts)
                .bind(due_at)
                .bind(reason)
                .bind(&r.error)
                .bind(r.message_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                (None, Outcome::Delivered | Outcome::Failed) => unreachable!("final outcomes have a state"),
            };
            if updated == 0 {
                applied.push(Recorded::LeaseLost);
                continue;
            }
            if r.attempted {
                Self::insert_attempt(&mut tx, r).await?;
            }
            if matches!(final_state, Some("delivered" | "failed")) {
                let (d, f) = if r.outcome == Outcome::Delivered {
                    (1_i64, 0_i64)
                } else {
                    (0, 1)
                };
                sqlx::query(
                    "INSERT INTO usage (period_id, user_id, integration, delivered, failed) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (period_id, user_id, integration) DO UPDATE SET \
                       delivered = usage.delivered + excluded.delivered, failed = usage.failed + excluded.failed",
                )
                .bind(period.as_ref().map(|(id, _)| id))
                .bind(&r.user_id)
                .bind(&r.integration)
                .bind(d)
                .bind(f)
                .execute(&mut *tx)
                .await?;
            }
            applied.push(if superseded {
                Recorded::Superseded
            } else {
                Recorded::Applied
            });
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// The open period's id and the time to stamp outcomes with, read once per
    /// transaction under the period lock.
    async fn period_now(
        &self,
        tx: &mut Transaction<'static, Any>,
        period: &mut Option<(String, Millis)>,
    ) -> Result<(String, Millis)> {
        if period.is_none() {
            let (id, start_at) = self.open_period_id(tx).await?;
            // Never before the period's start, even on a replica whose clock
            // is behind the one that opened it.
            *period = Some((id, now_ms().max(start_at)));
        }
        Ok(period.clone().expect("set above"))
    }

    /// Locks these (channel, group) keys for the rest of the transaction, in
    /// sorted order so that two transactions never wait on each other.
    async fn lock_groups(
        &self,
        tx: &mut Transaction<'static, Any>,
        keys: impl Iterator<Item = String>,
    ) -> Result<()> {
        let Some(sql) = self.backend.lock_group_sql() else {
            return Ok(());
        };
        let keys: std::collections::BTreeSet<String> = keys.collect();
        for key in keys {
            sqlx::query(sql).bind(key).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Whether a newer message of this message's (channel, group) is pending.
    async fn has_newer_in_group(
        &self,
        tx: &mut Transaction<'static, Any>,
        message_id: i64,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM messages m JOIN messages n ON n.user_id = m.user_id \
               AND n.channel_id = m.channel_id AND n.group_key = m.group_key \
             WHERE m.id = $1 AND m.group_key <> '' AND n.state = 'pending' AND n.id > m.id LIMIT 1",
        )
        .bind(message_id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
    }

    async fn insert_attempt(tx: &mut Transaction<'static, Any>, r: &AttemptRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO attempts (message_id, attempt, started_at, duration_ms, result, status_code, error, segments) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.message_id)
        .bind(r.attempt)
        .bind(r.started_at)
        .bind(r.duration_ms)
        .bind(&r.result)
        .bind(r.status_code)
        .bind(&r.error)
        .bind(r.segments)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn pending_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM messages WHERE state = 'pending'")
            .fetch_one(self.backend.reader())
            .await?;
        Ok(row.try_get("n")?)
    }

    // ---- periods and usage ---------------------------------------------------

    async fn ensure_open_period(&self, now: Millis) -> Result<()> {
        sqlx::query(
            "INSERT INTO periods (id, user_id, start_at, end_at) \
             SELECT $1, NULL, $2, NULL \
             WHERE NOT EXISTS (SELECT 1 FROM periods WHERE end_at IS NULL AND user_id IS NULL) \
             ON CONFLICT DO NOTHING",
        )
        .bind(period_id_for(now))
        .bind(now)
        .execute(self.backend.writer())
        .await?;
        Ok(())
    }

    pub async fn open_period(&self) -> Result<Period> {
        let row = sqlx::query(
            format!(
                "SELECT {PERIOD_COLUMNS} FROM periods WHERE end_at IS NULL AND user_id IS NULL"
            )
            .as_str(),
        )
        .fetch_optional(self.backend.reader())
        .await?
        .ok_or_else(|| StoreError::Corrupt("no open billing period".into()))?;
        period_from_row(&row)
    }

    /// A period's counts, sorted by user_id then integration.
    pub async fn usage(&self, period_id: &str) -> Result<Vec<UsageRow>> {
        use futures::TryStreamExt;
        self.usage_rows(period_id).try_collect().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn period_id_is_compact_utc() {
        assert_eq!(super::period_id_for(1_793_491_200_000), "20261101T000000Z");
        assert_eq!(
            super::period_id_for(1_793_491_200_250),
            "20261101T000000.250Z"
        );
    }
}

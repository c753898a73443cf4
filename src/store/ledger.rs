//! The ledger's statements: the open period and its lock, usage, closing the
//! open period, settling a user, listing periods, the itemized rows, pruning.

use futures::stream::{BoxStream, StreamExt};
use rust_decimal::Decimal;

use super::{on, Dialect, Freeze, ItemRow, Period, Result, Store, StoreError, Tx, UsageRow};
use crate::clock::{rfc3339, Clock, Millis};
use crate::domain::IntegrationKind;

/// Selects the open period's `id, start_at`, with the row-locking clause a
/// backend adds (PostgreSQL: `FOR SHARE` to record outcomes, `FOR UPDATE`
/// to close and settle).
macro_rules! open_period_sql {
    ($lock:literal) => {
        concat!(
            "SELECT id, start_at FROM periods WHERE end_at IS NULL AND user_id IS NULL ",
            $lock
        )
    };
}
pub(super) use open_period_sql;

/// Selects every column of [`Period`] from `periods`.
macro_rules! select_periods {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_id, start_at, end_at, closed_at, currency, bill_failed, report_sha256, sms_unit \
             FROM periods ",
            $rest
        )
    };
}

/// Period ids are the open time in compact UTC, e.g. `20261101T000000Z`, with
/// milliseconds when it has any (`20261124T101500.250Z`).
fn period_id_for(start: Millis) -> String {
    let compact = rfc3339(start).replace(['-', ':'], "");
    match compact.strip_suffix(".000Z") {
        Some(whole_seconds) => format!("{whole_seconds}Z"),
        None => compact,
    }
}

fn no_open_period() -> StoreError {
    StoreError::Corrupt("no open billing period".into())
}

/// The open period's id and the time to stamp outcomes with, once read in
/// a transaction (see [`period_now`]).
pub(super) struct PeriodNow {
    clock: Clock,
    known: Option<(String, Millis)>,
}

impl PeriodNow {
    pub(super) fn new(clock: &Clock) -> Self {
        Self {
            clock: clock.clone(),
            known: None,
        }
    }
}

/// The open period's id and the time to stamp outcomes with, read once per
/// transaction under the shared period lock.
pub(super) async fn period_now(
    tx: &mut Tx<'_>,
    period: &mut PeriodNow,
) -> Result<(String, Millis)> {
    if let Some(known) = &period.known {
        return Ok(known.clone());
    }
    let (id, start_at) = open_period_shared(tx).await?;
    // Never before the period's start, even on a replica whose clock is
    // behind the one that opened it.
    let known = (id, period.clock.now_ms().max(start_at));
    period.known = Some(known.clone());
    Ok(known)
}

/// The open period's id and start, share-locked for the rest of the
/// transaction. A close that commits while this waits leaves no open row in
/// this statement's snapshot; the next statement sees the new period.
async fn open_period_shared(tx: &mut Tx<'_>) -> Result<(String, Millis)> {
    for _ in 0..3 {
        let open = on!(tx.conn(), |c, D| sqlx::query_as(
            <D as Dialect>::OPEN_PERIOD_SHARED
        )
        .fetch_optional(c)
        .await?);
        if let Some(open) = open {
            return Ok(open);
        }
    }
    Err(no_open_period())
}

/// The open period's id and start, locked exclusively for the rest of the
/// transaction: no outcome is recorded meanwhile.
async fn open_period_exclusive(tx: &mut Tx<'_>) -> Result<(String, Millis)> {
    on!(tx.conn(), |c, D| sqlx::query_as(
        <D as Dialect>::OPEN_PERIOD_EXCLUSIVE
    )
    .fetch_optional(c)
    .await?)
    .ok_or_else(no_open_period)
}

/// Sets the prices to bill `period_id`'s rows with, stored as the decimals'
/// text.
async fn freeze(tx: &mut Tx<'_>, period_id: &str, f: &Freeze) -> Result<()> {
    for (integration, price) in &f.prices {
        on!(tx.conn(), |c| {
            sqlx::query(
                "UPDATE usage SET unit_price = $1 WHERE period_id = $2 AND integration = $3",
            )
            .bind(price.to_string())
            .bind(period_id)
            .bind(integration)
            .execute(c)
            .await?;
        });
    }
    for (user, integration, price) in &f.user_prices {
        on!(tx.conn(), |c| {
            sqlx::query(
                "UPDATE usage SET unit_price = $1 \
                 WHERE period_id = $2 AND user_id = $3 AND integration = $4",
            )
            .bind(price.to_string())
            .bind(period_id)
            .bind(user)
            .bind(integration)
            .execute(c)
            .await?;
        });
    }
    Ok(())
}

/// Moves the outcomes of `open` final at or after `boundary` (a close that
/// runs late) into `next`, with their counts.
async fn move_late_outcomes(
    tx: &mut Tx<'_>,
    open: &str,
    next: &str,
    boundary: Millis,
) -> Result<()> {
    on!(tx.conn(), |c| {
        sqlx::query(
            "INSERT INTO usage (period_id, user_id, integration, delivered, failed, \
               delivered_segments, failed_segments) \
             SELECT $1, user_id, integration, \
                    SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN state = 'delivered' THEN COALESCE(segments, 0) ELSE 0 END), \
                    SUM(CASE WHEN state = 'failed' THEN COALESCE(segments, 0) ELSE 0 END) \
             FROM messages WHERE period_id = $2 AND final_at >= $3 AND state IN ('delivered', 'failed') \
             GROUP BY user_id, integration",
        )
        .bind(next)
        .bind(open)
        .bind(boundary)
        .execute(c)
        .await?;
    });
    on!(tx.conn(), |c| {
        sqlx::query(
            "UPDATE usage SET delivered = usage.delivered - late.delivered, \
               failed = usage.failed - late.failed, \
               delivered_segments = usage.delivered_segments - late.delivered_segments, \
               failed_segments = usage.failed_segments - late.failed_segments \
             FROM (SELECT user_id, integration, \
                     SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered, \
                     SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed, \
                     SUM(CASE WHEN state = 'delivered' THEN COALESCE(segments, 0) ELSE 0 END) \
                       AS delivered_segments, \
                     SUM(CASE WHEN state = 'failed' THEN COALESCE(segments, 0) ELSE 0 END) \
                       AS failed_segments \
                   FROM messages WHERE period_id = $1 AND final_at >= $2 \
                   GROUP BY user_id, integration) AS late \
             WHERE usage.period_id = $1 AND usage.user_id = late.user_id \
               AND usage.integration = late.integration",
        )
        .bind(open)
        .bind(boundary)
        .execute(c)
        .await?;
    });
    on!(tx.conn(), |c| {
        sqlx::query("UPDATE messages SET period_id = $1 WHERE period_id = $2 AND final_at >= $3")
            .bind(next)
            .bind(open)
            .bind(boundary)
            .execute(c)
            .await?;
    });
    on!(tx.conn(), |c| {
        sqlx::query("DELETE FROM usage WHERE period_id = $1 AND delivered = 0 AND failed = 0")
            .bind(open)
            .execute(c)
            .await?;
    });
    Ok(())
}

/// A usage row as stored: the frozen price as text.
#[derive(sqlx::FromRow)]
struct StoredUsage {
    user_id: String,
    integration: IntegrationKind,
    delivered: i64,
    failed: i64,
    delivered_segments: i64,
    failed_segments: i64,
    unit_price: Option<String>,
}

impl StoredUsage {
    /// The row with its price parsed: a price that does not parse is an
    /// error, never a price of zero.
    fn parse(self, period_id: &str) -> Result<UsageRow> {
        let unit_price = match self.unit_price {
            None => None,
            Some(text) => Some(text.parse::<Decimal>().map_err(|_| {
                StoreError::Corrupt(format!(
                    "the unit price {text:?} frozen in period {period_id} for user {:?}, \
                     integration {:?} is not a decimal",
                    self.user_id,
                    self.integration.as_str()
                ))
            })?),
        };
        Ok(UsageRow {
            user_id: self.user_id,
            integration: self.integration,
            delivered: self.delivered,
            failed: self.failed,
            delivered_segments: self.delivered_segments,
            failed_segments: self.failed_segments,
            unit_price,
        })
    }
}

impl Store {
    pub(super) async fn ensure_open_period(&self, now: Millis) -> Result<()> {
        on!(self.writer(), |c| {
            sqlx::query(
                "INSERT INTO periods (id, user_id, start_at, end_at) \
                 SELECT $1, NULL, $2, NULL \
                 WHERE NOT EXISTS (SELECT 1 FROM periods WHERE end_at IS NULL AND user_id IS NULL) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(period_id_for(now))
            .bind(now)
            .execute(c)
            .await?;
        });
        Ok(())
    }

    pub async fn open_period(&self) -> Result<Period> {
        on!(self.reader(), |c| sqlx::query_as(select_periods!(
            "WHERE end_at IS NULL AND user_id IS NULL"
        ))
        .fetch_optional(c)
        .await?)
        .ok_or_else(no_open_period)
    }

    /// A period's counts, sorted by user_id then integration.
    pub async fn usage(&self, period_id: &str) -> Result<Vec<UsageRow>> {
        use futures::TryStreamExt;
        self.usage_rows(period_id).try_collect().await
    }

    /// Closes the open period at `boundary` and opens the next, in one
    /// transaction, freezing the prices in force. Messages that became final at
    /// or after the boundary (a close that runs late) move to the new period.
    /// Returns `None` when the open period started at or after `boundary`
    /// (another replica closed it already).
    #[tracing::instrument(name = "store.close_period", skip_all, fields(boundary = boundary))]
    pub async fn close_period(
        &self,
        boundary: Millis,
        now: Millis,
        f: &Freeze,
    ) -> Result<Option<(Period, Period)>> {
        let f = f.clone();
        self.detached(move |store| async move { store.close_period_now(boundary, now, &f).await })
            .await
    }

    async fn close_period_now(
        &self,
        boundary: Millis,
        now: Millis,
        f: &Freeze,
    ) -> Result<Option<(Period, Period)>> {
        let mut tx = self.write_tx().await?;
        let (open, start) = open_period_exclusive(&mut tx).await?;
        if boundary <= start {
            tx.rollback().await?;
            return Ok(None);
        }
        let next = period_id_for(boundary);
        on!(tx.conn(), |c| {
            sqlx::query(
                "UPDATE periods SET end_at = $1, closed_at = $2, currency = $3, bill_failed = $4, \
                   sms_unit = $6 \
                 WHERE id = $5 AND end_at IS NULL",
            )
            .bind(boundary)
            .bind(now)
            .bind(&f.currency)
            .bind(f.bill_failed)
            .bind(&open)
            .bind(f.sms_unit.as_str())
            .execute(c)
            .await?;
        });
        on!(tx.conn(), |c| {
            sqlx::query(
                "INSERT INTO periods (id, user_id, start_at, end_at) VALUES ($1, NULL, $2, NULL)",
            )
            .bind(&next)
            .bind(boundary)
            .execute(c)
            .await?;
        });
        move_late_outcomes(&mut tx, &open, &next, boundary).await?;
        freeze(&mut tx, &open, f).await?;
        tx.commit().await?;
        let closed = self
            .get_period(&open)
            .await?
            .ok_or_else(|| StoreError::Corrupt("closed period vanished".into()))?;
        let opened = self
            .get_period(&next)
            .await?
            .ok_or_else(|| StoreError::Corrupt("new period vanished".into()))?;
        Ok(Some((closed, opened)))
    }

    /// Closes `user_id`'s open statement at `now`: their rows of the open period
    /// (since their last settle) move into a closed statement, and their count
    /// in the open period restarts from zero. Settling twice gives an empty
    /// second statement.
    #[tracing::instrument(name = "store.settle", skip_all, fields(user_id = %user_id))]
    pub async fn settle(&self, user_id: &str, now: Millis, f: &Freeze) -> Result<Period> {
        let (user_id, f) = (user_id.to_owned(), f.clone());
        self.detached(move |store| async move { store.settle_now(&user_id, now, &f).await })
            .await
    }

    async fn settle_now(&self, user_id: &str, now: Millis, f: &Freeze) -> Result<Period> {
        let mut tx = self.write_tx().await?;
        let (open, start) = open_period_exclusive(&mut tx).await?;
        // Under the lock, so that the statement ends after every outcome
        // recorded before it (outcomes take their final_at under the same lock).
        let now = now.max(self.clock.now_ms() + 1);
        let last: Option<Millis> = on!(tx.conn(), |c| sqlx::query_scalar(
            "SELECT MAX(end_at) FROM periods WHERE user_id = $1 AND end_at >= $2"
        )
        .bind(user_id)
        .bind(start)
        .fetch_one(c)
        .await?);
        let from = last.unwrap_or(start).max(start);
        // Two settles in one millisecond still get distinct, ordered statements.
        let end = now.max(from + 1);
        let id = format!("{}-{user_id}", period_id_for(end));
        on!(tx.conn(), |c| {
            sqlx::query(
                "INSERT INTO periods (id, user_id, start_at, end_at, closed_at, currency, bill_failed, \
                   sms_unit) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&id)
            .bind(user_id)
            .bind(from)
            .bind(end)
            .bind(now)
            .bind(&f.currency)
            .bind(f.bill_failed)
            .bind(f.sms_unit.as_str())
            .execute(c)
            .await?;
        });
        for table in ["usage", "messages"] {
            let sql =
                format!("UPDATE {table} SET period_id = $1 WHERE period_id = $2 AND user_id = $3");
            on!(tx.conn(), |c| {
                sqlx::query(&sql)
                    .bind(&id)
                    .bind(&open)
                    .bind(user_id)
                    .execute(c)
                    .await?;
            });
        }
        freeze(&mut tx, &id, f).await?;
        // Outcomes recorded after this commits take their final_at at or
        // after `end`, so they belong to the user's next statement.
        while self.clock.now_ms() < end {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tx.commit().await?;
        self.get_period(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("statement vanished".into()))
    }

    pub async fn get_period(&self, id: &str) -> Result<Option<Period>> {
        Ok(on!(self.writer(), |c| sqlx::query_as(select_periods!(
            "WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(c)
        .await?))
    }

    /// Every period and statement, oldest first.
    pub async fn list_periods(&self) -> Result<Vec<Period>> {
        Ok(on!(self.reader(), |c| sqlx::query_as(select_periods!(
            "ORDER BY start_at, COALESCE(user_id, ''), id"
        ))
        .fetch_all(c)
        .await?))
    }

    /// The `limit` closed periods and statements that ended last, newest
    /// first, and how many closed ones there are in all.
    pub async fn recent_closed_periods(&self, limit: i64) -> Result<(Vec<Period>, i64)> {
        let recent = on!(self.reader(), |c| sqlx::query_as(select_periods!(
            "WHERE end_at IS NOT NULL ORDER BY end_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(c)
        .await?);
        let count = on!(self.reader(), |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM periods WHERE end_at IS NOT NULL"
        )
        .fetch_one(c)
        .await?);
        Ok((recent, count))
    }

    pub async fn set_report_sha256(&self, id: &str, sha256: &str) -> Result<()> {
        on!(self.writer(), |c| {
            sqlx::query("UPDATE periods SET report_sha256 = $1 WHERE id = $2")
                .bind(sha256)
                .bind(id)
                .execute(c)
                .await?;
        });
        Ok(())
    }

    /// A period's ledger rows, sorted by user_id then integration, as a
    /// stream. A frozen price that does not parse ends it with
    /// [`StoreError::Corrupt`].
    pub fn usage_rows<'a>(&'a self, period_id: &'a str) -> BoxStream<'a, Result<UsageRow>> {
        on!(self.reader(), |c| sqlx::query_as::<_, StoredUsage>(
            "SELECT user_id, integration, delivered, failed, delivered_segments, failed_segments, \
               unit_price FROM usage \
             WHERE period_id = $1 ORDER BY user_id, integration",
        )
        .bind(period_id)
        .fetch(c)
        .map(move |row| row?.parse(period_id))
        .boxed())
    }

    /// Every message of a period, in the order they became final.
    pub fn items<'a>(&'a self, period_id: &'a str) -> BoxStream<'a, Result<ItemRow>> {
        on!(self.reader(), |c| sqlx::query_as::<_, ItemRow>(
            "SELECT id AS message_id, final_at, user_id, integration, channel_id, alertnames, \
               state AS outcome, attempts, last_reason, segments \
             FROM messages WHERE period_id = $1 ORDER BY final_at, id",
        )
        .bind(period_id)
        .fetch(c)
        .map(|row| Ok(row?))
        .boxed())
    }

    /// Drops the attempts and payloads of messages final before `before` in
    /// closed periods. The message rows (the itemized ledger) stay.
    pub async fn prune(&self, before: Millis) -> Result<(u64, u64)> {
        self.detached(move |store| async move { store.prune_now(before).await })
            .await
    }

    async fn prune_now(&self, before: Millis) -> Result<(u64, u64)> {
        let mut tx = self.write_tx().await?;
        let attempts = on!(tx.conn(), |c| sqlx::query(
            "DELETE FROM attempts WHERE message_id IN (SELECT m.id FROM messages m \
               JOIN periods p ON p.id = m.period_id \
             WHERE p.end_at IS NOT NULL AND m.final_at < $1 AND m.payload <> '')",
        )
        .bind(before)
        .execute(c)
        .await?
        .rows_affected());
        let payloads = on!(tx.conn(), |c| sqlx::query(
            "UPDATE messages SET payload = '' WHERE final_at < $1 AND payload <> '' \
             AND period_id IN (SELECT id FROM periods WHERE end_at IS NOT NULL)",
        )
        .bind(before)
        .execute(c)
        .await?
        .rows_affected());
        tx.commit().await?;
        Ok((attempts, payloads))
    }

    /// Messages final per UTC day and integration since `since`: (day start, integration, count).
    pub async fn daily_counts(&self, since: Millis) -> Result<Vec<(Millis, String, i64)>> {
        let days: Vec<(i64, String, i64)> = on!(self.reader(), |c| sqlx::query_as(
            "SELECT final_at / 86400000 AS day, integration, COUNT(*) AS n FROM messages \
             WHERE final_at >= $1 AND state IN ('delivered', 'failed') \
             GROUP BY final_at / 86400000, integration ORDER BY day, integration",
        )
        .bind(since)
        .fetch_all(c)
        .await?);
        Ok(days
            .into_iter()
            .map(|(day, integration, n)| (day * 86_400_000, integration, n))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{connect, on, StoreError};

    #[test]
    fn period_id_is_compact_utc() {
        assert_eq!(super::period_id_for(1_793_491_200_000), "20261101T000000Z");
        assert_eq!(
            super::period_id_for(1_793_491_200_250),
            "20261101T000000.250Z"
        );
    }

    #[tokio::test]
    async fn a_frozen_price_that_does_not_parse_is_corrupt_data_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = connect(&url).await.unwrap();
        store.migrate(0).await.unwrap();
        on!(store.writer(), |c| {
            sqlx::query(
                "INSERT INTO usage (period_id, user_id, integration, delivered, failed, unit_price) \
                 VALUES ('p1', 'u1', 'sms', 3, 0, '0.01'), ('p1', 'u2', 'sms', 3, 0, '0,01')",
            )
            .execute(c)
            .await
            .unwrap();
        });
        let err = store.usage("p1").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        let said = err.to_string();
        for named in ["\"0,01\"", "p1", "\"u2\"", "\"sms\""] {
            assert!(said.contains(named), "{said} names {named}");
        }
        store.close().await;
    }
}

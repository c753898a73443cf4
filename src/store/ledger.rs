//! The ledger's statements: closing the open period, settling a user,
//! listing periods, the itemized rows, pruning. Shared by both databases.

use futures::{Stream, StreamExt};
use sqlx::{Any, Row, Transaction};

use super::sql::{period_from_row, period_id_for, PERIOD_COLUMNS};
use super::{Freeze, ItemRow, Period, Result, Store, StoreError, UsageRow};
use crate::clock::{now_ms, Millis};

impl Store {
    async fn lock_open_period(
        &self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<(String, Millis)> {
        let row = sqlx::query(self.backend.lock_open_period_sql(true))
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("no open billing period".into()))?;
        Ok((row.try_get("id")?, row.try_get("start_at")?))
    }

    async fn freeze(tx: &mut Transaction<'static, Any>, period_id: &str, f: &Freeze) -> Result<()> {
        for (integration, price) in &f.prices {
            sqlx::query(
                "UPDATE usage SET unit_price = $1 WHERE period_id = $2 AND integration = $3",
            )
            .bind(price)
            .bind(period_id)
            .bind(integration)
            .execute(&mut **tx)
            .await?;
        }
        for (user, integration, price) in &f.user_prices {
            sqlx::query("UPDATE usage SET unit_price = $1 WHERE period_id = $2 AND user_id = $3 AND integration = $4")
                .bind(price)
                .bind(period_id)
                .bind(user)
                .bind(integration)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Closes the open period at `boundary` and opens the next, in one
    /// transaction, freezing the prices in force. Messages that became final at
    /// or after the boundary (a close that runs late) move to the new period.
    /// Returns `None` when the open period started at or after `boundary`
    /// (another replica closed it already).
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
        let (open, start) = self.lock_open_period(&mut tx).await?;
        if boundary <= start {
            tx.rollback().await?;
            return Ok(None);
        }
        let next = period_id_for(boundary);
        sqlx::query(
            "UPDATE periods SET end_at = $1, closed_at = $2, currency = $3, bill_failed = $4 \
             WHERE id = $5 AND end_at IS NULL",
        )
        .bind(boundary)
        .bind(now)
        .bind(&f.currency)
        .bind(i64::from(f.bill_failed))
        .bind(&open)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO periods (id, user_id, start_at, end_at) VALUES ($1, NULL, $2, NULL)",
        )
        .bind(&next)
        .bind(boundary)
        .execute(&mut *tx)
        .await?;
        // Outcomes final at or after the boundary belong to the new period.
        sqlx::query(
            "INSERT INTO usage (period_id, user_id, integration, delivered, failed) \
             SELECT $1, user_id, integration, \
                    SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END), \
                    SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) \
             FROM messages WHERE period_id = $2 AND final_at >= $3 AND state IN ('delivered', 'failed') \
             GROUP BY user_id, integration",
        )
        .bind(&next)
        .bind(&open)
        .bind(boundary)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE usage SET \
               delivered = delivered - (SELECT COUNT(*) FROM messages m WHERE m.period_id = $1 AND m.final_at >= $2 \
                 AND m.user_id = usage.user_id AND m.integration = usage.integration AND m.state = 'delivered'), \
               failed = failed - (SELECT COUNT(*) FROM messages m WHERE m.period_id = $1 AND m.final_at >= $2 \
                 AND m.user_id = usage.user_id AND m.integration = usage.integration AND m.state = 'failed') \
             WHERE period_id = $1 AND EXISTS (SELECT 1 FROM messages m WHERE m.period_id = $1 AND m.final_at >= $2 \
                 AND m.user_id = usage.user_id AND m.integration = usage.integration)",
        )
        .bind(&open)
        .bind(boundary)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE messages SET period_id = $1 WHERE period_id = $2 AND final_at >= $3")
            .bind(&next)
            .bind(&open)
            .bind(boundary)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM usage WHERE period_id = $1 AND delivered = 0 AND failed = 0")
            .bind(&open)
            .execute(&mut *tx)
            .await?;
        Self::freeze(&mut tx, &open, f).await?;
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
    pub async fn settle(&self, user_id: &str, now: Millis, f: &Freeze) -> Result<Period> {
        let (user_id, f) = (user_id.to_owned(), f.clone());
        self.detached(move |store| async move { store.settle_now(&user_id, now, &f).await })
            .await
    }

    async fn settle_now(&self, user_id: &str, now: Millis, f: &Freeze) -> Result<Period> {
        let mut tx = self.write_tx().await?;
        let (open, start) = self.lock_open_period(&mut tx).await?;
        // Under the lock, so that the statement ends after every outcome
        // recorded before it (outcomes take their final_at under the same lock).
        let now = now.max(now_ms() + 1);
        let last: Option<Millis> = sqlx::query(
            "SELECT MAX(end_at) AS last FROM periods WHERE user_id = $1 AND end_at >= $2",
        )
        .bind(user_id)
        .bind(start)
        .fetch_one(&mut *tx)
        .await?
        .try_get("last")?;
        let from = last.unwrap_or(start).max(start);
        // Two settles in one millisecond still get distinct, ordered statements.
        let end = now.max(from + 1);
        let id = format!("{}-{user_id}", period_id_for(end));
        sqlx::query(
            "INSERT INTO periods (id, user_id, start_at, end_at, closed_at, currency, bill_failed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(from)
        .bind(end)
        .bind(now)
        .bind(&f.currency)
        .bind(i64::from(f.bill_failed))
        .execute(&mut *tx)
        .await?;
        for table in ["usage", "messages"] {
            sqlx::query(&format!(
                "UPDATE {table} SET period_id = $1 WHERE period_id = $2 AND user_id = $3"
            ))
            .bind(&id)
            .bind(&open)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        }
        Self::freeze(&mut tx, &id, f).await?;
        // Outcomes recorded after this commits take their final_at at or
        // after `end`, so they belong to the user's next statement.
        while now_ms() < end {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tx.commit().await?;
        self.get_period(&id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("statement vanished".into()))
    }

    pub async fn get_period(&self, id: &str) -> Result<Option<Period>> {
        sqlx::query(&format!(
            "SELECT {PERIOD_COLUMNS} FROM periods WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.backend.writer())
        .await?
        .as_ref()
        .map(period_from_row)
        .transpose()
    }

    /// Every period and statement, oldest first.
    pub async fn list_periods(&self) -> Result<Vec<Period>> {
        sqlx::query(&format!(
            "SELECT {PERIOD_COLUMNS} FROM periods ORDER BY start_at, COALESCE(user_id, ''), id"
        ))
        .fetch_all(self.backend.reader())
        .await?
        .iter()
        .map(period_from_row)
        .collect()
    }

    pub async fn set_report_sha256(&self, id: &str, sha256: &str) -> Result<()> {
        sqlx::query("UPDATE periods SET report_sha256 = $1 WHERE id = $2")
            .bind(sha256)
            .bind(id)
            .execute(self.backend.writer())
            .await?;
        Ok(())
    }

    /// A period's ledger rows, sorted by user_id then integration, as a stream.
    pub fn usage_rows<'a>(
        &'a self,
        period_id: &'a str,
    ) -> impl Stream<Item = Result<UsageRow>> + Send + 'a {
        sqlx::query(
            "SELECT user_id, integration, delivered, failed, unit_price FROM usage \
             WHERE period_id = $1 ORDER BY user_id, integration",
        )
        .bind(period_id)
        .fetch(self.backend.reader())
        .map(|row| {
            let row = row?;
            Ok(UsageRow {
                user_id: row.try_get("user_id")?,
                integration: row.try_get("integration")?,
                delivered: row.try_get("delivered")?,
                failed: row.try_get("failed")?,
                unit_price: row.try_get("unit_price")?,
            })
        })
    }

    /// Every message of a period, in the order they became final.
    pub fn items<'a>(
        &'a self,
        period_id: &'a str,
    ) -> impl Stream<Item = Result<ItemRow>> + Send + 'a {
        sqlx::query(
            "SELECT id, final_at, user_id, integration, channel_id, alertnames, state, attempts, last_reason \
             FROM messages WHERE period_id = $1 ORDER BY final_at, id",
        )
        .bind(period_id)
        .fetch(self.backend.reader())
        .map(|row| {
            let row = row?;
            Ok(ItemRow {
                message_id: row.try_get("id")?,
                final_at: row.try_get("final_at")?,
                user_id: row.try_get("user_id")?,
                integration: row.try_get("integration")?,
                channel_id: row.try_get("channel_id")?,
                alertnames: row.try_get("alertnames")?,
                outcome: row.try_get("state")?,
                attempts: row.try_get("attempts")?,
                last_reason: row.try_get("last_reason")?,
            })
        })
    }

    /// Drops the attempts and payloads of messages final before `before` in
    /// closed periods. The message rows (the itemized ledger) stay.
    pub async fn prune(&self, before: Millis) -> Result<(u64, u64)> {
        self.detached(move |store| async move { store.prune_now(before).await })
            .await
    }

    async fn prune_now(&self, before: Millis) -> Result<(u64, u64)> {
        let mut tx = self.write_tx().await?;
        let attempts = sqlx::query(
            "DELETE FROM attempts WHERE message_id IN (SELECT m.id FROM messages m JOIN periods p ON p.id = m.period_id \
             WHERE p.end_at IS NOT NULL AND m.final_at < $1 AND m.payload <> '')",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let payloads = sqlx::query(
            "UPDATE messages SET payload = '' WHERE final_at < $1 AND payload <> '' \
             AND period_id IN (SELECT id FROM periods WHERE end_at IS NOT NULL)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((attempts, payloads))
    }

    /// Messages final per UTC day and integration since `since`: (day start, integration, count).
    pub async fn daily_counts(&self, since: Millis) -> Result<Vec<(Millis, String, i64)>> {
        sqlx::query(
            "SELECT final_at / 86400000 AS day, integration, COUNT(*) AS n FROM messages \
             WHERE final_at >= $1 AND state IN ('delivered', 'failed') \
             GROUP BY final_at / 86400000, integration ORDER BY day, integration",
        )
        .bind(since)
        .fetch_all(self.backend.reader())
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("day")? * 86_400_000,
                r.try_get("integration")?,
                r.try_get("n")?,
            ))
        })
        .collect()
    }
}

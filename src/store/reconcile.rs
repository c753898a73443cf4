//! Reconciliation with Alertmanager: since when notimeter counts, the webhook
//! requests it received since then, and each Alertmanager's requests over the
//! same time (see `crate::reconcile`). Every write is one statement, or one
//! detached transaction, so a caller going away leaves nothing half done; and
//! every count is added to in SQL, so replicas sharing the database add up.

use sqlx::FromRow;

use super::{on, Result, Store};
use crate::clock::Millis;

/// One reading of an Alertmanager's `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertmanagerReading {
    pub url: String,
    /// `process_start_time_seconds`, in ms: which process counted.
    pub start_time: i64,
    /// Its webhook requests (`alertmanager_notification_requests_total`).
    pub requests: i64,
    /// Those that failed (`alertmanager_notification_requests_failed_total`).
    pub failed: i64,
}

/// One Alertmanager's requests since the count began.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct AlertmanagerCount {
    pub url: String,
    pub requests: i64,
    pub failed: i64,
    pub scraped_at: Millis,
}

/// The count as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconciliation {
    /// The Alertmanagers counted, one per line, sorted.
    pub urls: String,
    pub since: Millis,
    pub received: i64,
    pub alertmanagers: Vec<AlertmanagerCount>,
}

impl Reconciliation {
    /// What the Alertmanagers sent.
    pub fn sent(&self) -> i64 {
        self.alertmanagers.iter().map(|a| a.requests).sum()
    }

    /// Requests the Alertmanagers sent that notimeter did not receive
    /// (negative: notimeter received requests from elsewhere too).
    pub fn drift(&self) -> i64 {
        self.sent() - self.received
    }
}

/// The form `urls` is stored in: sorted, one per line.
pub fn url_set(urls: &[String]) -> String {
    let mut urls = urls.to_vec();
    urls.sort();
    urls.join("\n")
}

impl Store {
    /// The count, if one has begun.
    pub async fn reconciliation(&self) -> Result<Option<Reconciliation>> {
        let head: Option<(String, Millis, i64)> = on!(self.reader(), |c| sqlx::query_as(
            "SELECT urls, since, received FROM reconcile WHERE id = 1"
        )
        .fetch_optional(c)
        .await?);
        let Some((urls, since, received)) = head else {
            return Ok(None);
        };
        let alertmanagers = on!(self.reader(), |c| {
            sqlx::query_as(
            "SELECT url, requests, failed, scraped_at FROM reconcile_alertmanagers ORDER BY url"
        )
        .fetch_all(c)
        .await?
        });
        Ok(Some(Reconciliation {
            urls,
            since,
            received,
            alertmanagers,
        }))
    }

    /// Begins the count at `now` from these readings (one of every watched
    /// Alertmanager), replacing a count of another set of Alertmanagers.
    /// False when a count of the same set already exists (another replica
    /// began it first): that one stands.
    pub async fn begin_reconciliation(
        &self,
        readings: Vec<AlertmanagerReading>,
        now: Millis,
    ) -> Result<bool> {
        self.detached(move |store| async move {
            let urls: Vec<String> = readings.iter().map(|r| r.url.clone()).collect();
            let urls = url_set(&urls);
            let mut tx = store.write_tx().await?;
            on!(tx.conn(), |c| sqlx::query("DELETE FROM reconcile WHERE urls <> $1")
                .bind(&urls)
                .execute(c)
                .await?
                .rows_affected());
            let begun = on!(tx.conn(), |c| sqlx::query(
                "INSERT INTO reconcile (id, urls, since, received) VALUES (1, $1, $2, 0) \
                 ON CONFLICT (id) DO NOTHING"
            )
            .bind(&urls)
            .bind(now)
            .execute(c)
            .await?
            .rows_affected())
                > 0;
            if begun {
                on!(tx.conn(), |c| sqlx::query("DELETE FROM reconcile_alertmanagers")
                    .execute(c)
                    .await?
                    .rows_affected());
                for r in &readings {
                    on!(tx.conn(), |c| sqlx::query(
                        "INSERT INTO reconcile_alertmanagers \
                         (url, start_time, last_requests, last_failed, requests, failed, scraped_at) \
                         VALUES ($1, $2, $3, $4, 0, 0, $5)"
                    )
                    .bind(&r.url)
                    .bind(r.start_time)
                    .bind(r.requests)
                    .bind(r.failed)
                    .bind(now)
                    .execute(c)
                    .await?
                    .rows_affected());
                }
            }
            tx.commit().await?;
            Ok(begun)
        })
        .await
    }

    /// Adds what an Alertmanager sent since its last reading. A later
    /// `start_time` is a new incarnation whose counters started again from
    /// zero (a restart; a reload, where reloads reset them): all of the
    /// reading is new. An earlier one is a stale reading of a past
    /// incarnation, and a lower reading of the same one is stale too (another
    /// replica stored a newer one): they add nothing. One statement, so
    /// replicas reading at once add each request once.
    pub async fn observe_alertmanager(&self, r: &AlertmanagerReading, now: Millis) -> Result<()> {
        on!(self.writer(), |c| sqlx::query(
            "UPDATE reconcile_alertmanagers SET \
             requests = requests + CASE WHEN $2 > start_time THEN $3 \
                 WHEN $3 > last_requests THEN $3 - last_requests ELSE 0 END, \
             failed = failed + CASE WHEN $2 > start_time THEN $4 \
                 WHEN $4 > last_failed THEN $4 - last_failed ELSE 0 END, \
             last_requests = CASE WHEN $2 > start_time OR $3 > last_requests THEN $3 \
                 ELSE last_requests END, \
             last_failed = CASE WHEN $2 > start_time OR $4 > last_failed THEN $4 \
                 ELSE last_failed END, \
             start_time = $2, scraped_at = $5 \
             WHERE url = $1 AND $2 >= start_time"
        )
        .bind(&r.url)
        .bind(r.start_time)
        .bind(r.requests)
        .bind(r.failed)
        .bind(now)
        .execute(c)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Adds `n` webhook requests received to the count (when one has begun),
    /// on a task of its own: a caller going away (shutdown) never leaves the
    /// taken count neither stored nor given back.
    pub async fn add_received(&self, n: i64) -> Result<()> {
        self.detached(move |store| async move {
            on!(store.writer(), |c| sqlx::query(
                "UPDATE reconcile SET received = received + $1 WHERE id = 1"
            )
            .bind(n)
            .execute(c)
            .await?
            .rows_affected());
            Ok(())
        })
        .await
    }
}

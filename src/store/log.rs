//! The delivery log and the undeliverable list (read, newest first, paged
//! by id), and redelivery of a failed message as a new one. Reads are single
//! statements; a redelivery is one detached transaction, so a caller going
//! away leaves either the new message or nothing.

use sqlx::FromRow;

use super::statements::placeholders;
use super::{on, Result, Store};
use crate::clock::Millis;

/// Which messages (or undeliverable alerts) a page holds: `before` is the
/// cursor (the last id of the previous page), `limit` the page's size.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    /// A message state, or an undeliverable reason.
    pub state: Option<String>,
    /// Accepted (received) at or after this time.
    pub since: Option<Millis>,
    pub before: Option<i64>,
    pub limit: i64,
}

/// A message as the delivery log shows it.
#[derive(Clone, Debug, FromRow)]
pub struct LoggedMessage {
    pub id: i64,
    pub channel_id: String,
    pub integration: String,
    pub state: String,
    pub alert_count: i64,
    pub alertnames: String,
    pub created_at: Millis,
    pub final_at: Option<Millis>,
    pub attempts: i64,
    pub last_reason: Option<String>,
    pub last_error: Option<String>,
    pub segments: Option<i64>,
    pub period_id: Option<String>,
    #[sqlx(skip)]
    pub attempt_log: Vec<LoggedAttempt>,
}

/// One attempt of a logged message.
#[derive(Clone, Debug, FromRow)]
pub struct LoggedAttempt {
    pub message_id: i64,
    pub attempt: i64,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub result: String,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub segments: Option<i64>,
}

/// An undeliverable alert as the list shows it.
#[derive(Clone, Debug, FromRow)]
pub struct LoggedUndeliverable {
    pub id: i64,
    pub received_at: Millis,
    pub user_id: String,
    pub raw_user_id: Option<String>,
    pub receiver: String,
    pub reason: String,
    pub alert: String,
}

/// What a redelivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redelivery {
    /// Queued as this new message.
    Queued { message_id: i64 },
    /// No such message.
    NotFound,
    /// The message is not failed (its state).
    NotFailed(String),
    /// It was redelivered already, as this message.
    Already(i64),
    /// Its channel is gone, disabled, or now of another integration.
    ChannelUnusable,
}

impl Store {
    /// A user's messages, newest first, each with its attempts.
    pub async fn user_messages(&self, user_id: &str, f: &LogFilter) -> Result<Vec<LoggedMessage>> {
        let mut messages: Vec<LoggedMessage> = on!(self.reader(), |c| sqlx::query_as(
            "SELECT id, channel_id, integration, state, alert_count, alertnames, created_at, \
               final_at, attempts, last_reason, last_error, segments, period_id \
             FROM messages WHERE user_id = $1 \
               AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR created_at >= $3) \
               AND ($4 IS NULL OR id < $4) \
             ORDER BY id DESC LIMIT $5"
        )
        .bind(user_id)
        .bind(&f.state)
        .bind(f.since)
        .bind(f.before)
        .bind(f.limit)
        .fetch_all(c)
        .await?);
        if messages.is_empty() {
            return Ok(messages);
        }
        let sql = format!(
            "SELECT message_id, attempt, started_at, duration_ms, result, status_code, error, segments \
             FROM attempts WHERE message_id IN {} ORDER BY message_id, attempt",
            placeholders(1, messages.len())
        );
        let attempts: Vec<LoggedAttempt> = on!(self.reader(), |c| {
            let mut q = sqlx::query_as(&sql);
            for m in &messages {
                q = q.bind(m.id);
            }
            q.fetch_all(c).await?
        });
        for a in attempts {
            if let Some(m) = messages.iter_mut().find(|m| m.id == a.message_id) {
                m.attempt_log.push(a);
            }
        }
        Ok(messages)
    }

    /// Undeliverable alerts, newest first (`state` filters by reason).
    pub async fn undeliverable(&self, f: &LogFilter) -> Result<Vec<LoggedUndeliverable>> {
        Ok(on!(self.reader(), |c| sqlx::query_as(
            "SELECT id, received_at, user_id, raw_user_id, receiver, reason, alert \
             FROM undeliverable WHERE ($1 IS NULL OR reason = $1) \
               AND ($2 IS NULL OR received_at >= $2) AND ($3 IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        )
        .bind(&f.state)
        .bind(f.since)
        .bind(f.before)
        .bind(f.limit)
        .fetch_all(c)
        .await?))
    }

    /// Queues a failed message again as a new message of its own group (so
    /// that it neither waits for nor supersedes the group's later messages),
    /// due now.
    pub async fn redeliver(
        &self,
        message_id: i64,
        group_key: String,
        now: Millis,
    ) -> Result<Redelivery> {
        self.detached(move |store| async move {
            let mut tx = store.write_tx().await?;
            let found: Option<(String, Option<i64>)> = on!(tx.conn(), |c| sqlx::query_as(
                "SELECT state, redelivered_as FROM messages WHERE id = $1"
            )
            .bind(message_id)
            .fetch_optional(c)
            .await?);
            let outcome = match found {
                None => Redelivery::NotFound,
                Some((_, Some(new))) => Redelivery::Already(new),
                Some((state, None)) if state != "failed" => Redelivery::NotFailed(state),
                Some(_) if !channel_usable(&mut tx, message_id).await? => {
                    Redelivery::ChannelUnusable
                }
                Some(_) => {
                    let id: i64 = on!(tx.conn(), |c| sqlx::query_scalar(
                        "INSERT INTO messages (user_id, channel_id, integration, group_key, payload, \
                           alert_count, alertnames, created_at, due_at) \
                         SELECT user_id, channel_id, integration, $2, payload, alert_count, alertnames, $3, $3 \
                         FROM messages WHERE id = $1 RETURNING id"
                    )
                    .bind(message_id)
                    .bind(&group_key)
                    .bind(now)
                    .fetch_one(c)
                    .await?);
                    // Conditional, so that of two redeliveries at once (on
                    // PostgreSQL, where both may get here) one wins.
                    let marked = on!(tx.conn(), |c| sqlx::query(
                        "UPDATE messages SET redelivered_as = $2 \
                         WHERE id = $1 AND redelivered_as IS NULL"
                    )
                    .bind(message_id)
                    .bind(id)
                    .execute(c)
                    .await?
                    .rows_affected());
                    if marked == 0 {
                        tx.rollback().await?;
                        return Ok(Redelivery::Already(0));
                    }
                    Redelivery::Queued { message_id: id }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
        .await
    }
}

/// Whether the message's channel still exists, is enabled and sends with the
/// message's integration (a channel id saved again with another type would
/// be sent one way and billed another).
async fn channel_usable(tx: &mut super::Tx<'_>, message_id: i64) -> Result<bool> {
    let enabled: Option<bool> = on!(tx.conn(), |c| {
        sqlx::query_scalar(
        "SELECT c.enabled FROM messages m JOIN channels c \
           ON c.user_id = m.user_id AND c.channel_id = m.channel_id AND c.integration = m.integration \
         WHERE m.id = $1"
    )
    .bind(message_id)
    .fetch_optional(c)
    .await?
    });
    Ok(enabled == Some(true))
}

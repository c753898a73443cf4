//! The channels' statements: put, get, delete, list. A channel is stored as
//! the body the admin API took (secrets included) and parsed into a
//! [`Channel`] before it leaves the store.

use super::outbox::lock_groups;
use super::{on, ChannelChange, ChannelList, CorruptChannel, Result, Store, StoreError, Tx};
use crate::clock::Millis;
use crate::domain::{Channel, ChannelId, ChannelSource, ChannelSpec, UserId};

/// Selects every column of [`ChannelRow`] from `channels`.
macro_rules! select_channels {
    ($rest:literal) => {
        concat!(
            "SELECT user_id, channel_id, integration, enabled, spec, source, created_at, updated_at \
             FROM channels ",
            $rest
        )
    };
}

/// A channel's row: its body as the admin API took it (secrets included).
#[derive(sqlx::FromRow)]
struct ChannelRow {
    user_id: String,
    channel_id: String,
    integration: String,
    enabled: bool,
    spec: String,
    source: String,
    created_at: Millis,
    updated_at: Millis,
}

impl ChannelRow {
    fn decode(self) -> Result<Channel> {
        let corrupt = |e: String| {
            StoreError::Corrupt(format!("channel {}/{}: {e}", self.user_id, self.channel_id))
        };
        let spec: ChannelSpec =
            serde_json::from_str(&self.spec).map_err(|e| corrupt(e.to_string()))?;
        let user_id = UserId::parse(&self.user_id).map_err(corrupt)?;
        let channel_id = ChannelId::parse(&self.channel_id).map_err(corrupt)?;
        let mut channel = Channel::parse(user_id, channel_id, spec).map_err(corrupt)?;
        if channel.kind().as_str() != self.integration {
            return Err(corrupt(format!(
                "its integration column says {:?}, its body {:?}",
                self.integration,
                channel.kind().as_str()
            )));
        }
        channel.enabled = self.enabled;
        channel.source = ChannelSource::parse(&self.source)
            .ok_or_else(|| corrupt(format!("unknown source {:?}", self.source)))?;
        channel.created_at = self.created_at;
        channel.updated_at = self.updated_at;
        Ok(channel)
    }
}

/// Channels that parse; one that does not is logged and left out, so that it
/// stops no other.
fn decode_all(rows: Vec<ChannelRow>) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(rows.len());
    for row in rows {
        match row.decode() {
            Ok(ch) => channels.push(ch),
            Err(e) => tracing::error!(error = %e, "a stored channel is corrupt; it is left out"),
        }
    }
    channels
}

impl Store {
    /// Creates or replaces a channel (its `updated_at` is the time saved;
    /// `created_at` is kept on a replace); returns true when it was created.
    pub async fn put_channel(&self, ch: &Channel) -> Result<bool> {
        let ch = ch.clone();
        self.detached(move |store| async move { store.put_channel_now(&ch).await })
            .await
    }

    async fn put_channel_now(&self, ch: &Channel) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        log_change(
            &mut tx,
            ch.user_id.as_str(),
            ch.channel_id.as_str(),
            ch.updated_at,
        )
        .await?;
        let existed = on!(tx.conn(), |c| sqlx::query(
            "SELECT 1 FROM channels WHERE user_id = $1 AND channel_id = $2"
        )
        .bind(ch.user_id.as_str())
        .bind(ch.channel_id.as_str())
        .fetch_optional(c)
        .await?
        .is_some());
        on!(tx.conn(), |c| {
            sqlx::query(
                "INSERT INTO channels (user_id, channel_id, integration, enabled, spec, source, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (user_id, channel_id) DO UPDATE SET integration = excluded.integration, \
                   enabled = excluded.enabled, spec = excluded.spec, source = excluded.source, \
                   updated_at = excluded.updated_at",
            )
            .bind(ch.user_id.as_str())
            .bind(ch.channel_id.as_str())
            .bind(ch.kind().as_str())
            .bind(ch.enabled)
            .bind(ch.stored_spec())
            .bind(ch.source.as_str())
            .bind(ch.updated_at)
            .execute(c)
            .await?;
        });
        tx.commit().await?;
        Ok(!existed)
    }

    /// One channel; a stored channel that no longer parses is `Corrupt`.
    pub async fn get_channel(&self, user_id: &str, channel_id: &str) -> Result<Option<Channel>> {
        let row: Option<ChannelRow> = on!(self.reader(), |c| sqlx::query_as(select_channels!(
            "WHERE user_id = $1 AND channel_id = $2"
        ))
        .bind(user_id)
        .bind(channel_id)
        .fetch_optional(c)
        .await?);
        row.map(ChannelRow::decode).transpose()
    }

    pub async fn delete_channel(&self, user_id: &str, channel_id: &str) -> Result<bool> {
        self.delete_channel_of(user_id, channel_id, None).await
    }

    /// Deletes a channel if it is `source`'s (any channel when `None`);
    /// returns whether one was deleted.
    pub async fn delete_channel_of(
        &self,
        user_id: &str,
        channel_id: &str,
        source: Option<ChannelSource>,
    ) -> Result<bool> {
        let (user_id, channel_id) = (user_id.to_owned(), channel_id.to_owned());
        let source = source.map(ChannelSource::as_str);
        self.detached(move |store| async move {
            let mut tx = store.write_tx().await?;
            let now = store.clock.now_ms();
            let deleted = on!(tx.conn(), |c| sqlx::query(
                "DELETE FROM channels WHERE user_id = $1 AND channel_id = $2 \
                 AND ($3 IS NULL OR source = $3)"
            )
            .bind(&user_id)
            .bind(&channel_id)
            .bind(source)
            .execute(c)
            .await?
            .rows_affected());
            if deleted > 0 {
                log_change(&mut tx, &user_id, &channel_id, now).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(deleted > 0)
        })
        .await
    }

    /// Every channel, enabled or not, handed to `each` as it is read (so that
    /// 300,000 channels are never all held at once, parsed), with the channel
    /// log's last version read before them: changes logged after it are
    /// applied on top (a change made while the channels were read is applied
    /// twice, harmlessly). Returns that version and the channels that no
    /// longer parse.
    pub async fn channel_snapshot(
        &self,
        mut each: impl FnMut(Channel) + Send,
    ) -> Result<(i64, Vec<CorruptChannel>)> {
        let head: Option<i64> = on!(self.reader(), |c| sqlx::query_scalar(
            "SELECT MAX(version) FROM channel_log"
        )
        .fetch_one(c)
        .await?);
        let mut corrupt = Vec::new();
        on!(self.reader(), |c| {
            let mut rows =
                sqlx::query_as::<_, ChannelRow>(select_channels!("ORDER BY user_id, channel_id"))
                    .fetch(c);
            while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
                match decode_row(row) {
                    Ok(ch) => each(ch),
                    Err(bad) => corrupt.push(bad),
                }
            }
        });
        Ok((head.unwrap_or(0), corrupt))
    }

    /// The channels changed after `version`, in order, or `None` when the log
    /// no longer reaches back that far (pruned): then everything is reloaded.
    pub async fn channel_changes(&self, version: i64) -> Result<Option<Vec<ChannelChange>>> {
        let oldest: Option<i64> = on!(self.reader(), |c| sqlx::query_scalar(
            "SELECT MIN(version) FROM channel_log"
        )
        .fetch_one(c)
        .await?);
        if oldest.is_some_and(|oldest| oldest > version + 1) {
            return Ok(None);
        }
        let rows: Vec<(i64, String, String)> = on!(self.reader(), |c| {
            sqlx::query_as(
            "SELECT version, user_id, channel_id FROM channel_log WHERE version > $1 ORDER BY version"
        )
        .bind(version)
        .fetch_all(c)
        .await?
        });
        let mut changes = Vec::with_capacity(rows.len());
        for (version, user_id, channel_id) in rows {
            let channel = match self.get_channel(&user_id, &channel_id).await {
                Ok(channel) => channel,
                Err(StoreError::Corrupt(e)) => {
                    tracing::error!(error = %e, "a stored channel is corrupt; it is left out");
                    None
                }
                Err(e) => return Err(e),
            };
            changes.push(ChannelChange {
                version,
                user_id,
                channel_id,
                channel,
            });
        }
        Ok(Some(changes))
    }

    /// Forgets channel log entries older than `before` (milliseconds), always
    /// keeping the newest; a process further behind reloads every channel.
    pub async fn prune_channel_log(&self, before: Millis) -> Result<u64> {
        Ok(on!(self.writer(), |c| sqlx::query(
            "DELETE FROM channel_log WHERE changed_at < $1 \
             AND version < (SELECT MAX(version) FROM channel_log)"
        )
        .bind(before)
        .execute(c)
        .await?
        .rows_affected()))
    }

    /// A user's channels, by channel_id.
    pub async fn list_channels(&self, user_id: &str) -> Result<Vec<Channel>> {
        let rows = on!(self.reader(), |c| sqlx::query_as(select_channels!(
            "WHERE user_id = $1 ORDER BY channel_id"
        ))
        .bind(user_id)
        .fetch_all(c)
        .await?);
        Ok(decode_all(rows))
    }

    /// Every channel of `source`, sorted by user_id then channel_id, and
    /// those that no longer parse.
    pub async fn channels_of(&self, source: ChannelSource) -> Result<ChannelList> {
        let rows: Vec<ChannelRow> = on!(self.reader(), |c| sqlx::query_as(select_channels!(
            "WHERE source = $1 ORDER BY user_id, channel_id"
        ))
        .bind(source.as_str())
        .fetch_all(c)
        .await?);
        Ok(decode_list(rows))
    }

    /// Every channel's (user_id, channel_id) and source.
    pub async fn channel_sources(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), String>> {
        let rows: Vec<(String, String, String)> = on!(self.reader(), |c| sqlx::query_as(
            "SELECT user_id, channel_id, source FROM channels"
        )
        .fetch_all(c)
        .await?);
        Ok(rows.into_iter().map(|(u, c, s)| ((u, c), s)).collect())
    }

    /// Every enabled channel, sorted by user_id then channel_id, and those
    /// that no longer parse.
    pub async fn enabled_channels(&self) -> Result<ChannelList> {
        let rows: Vec<ChannelRow> = on!(self.reader(), |c| sqlx::query_as(select_channels!(
            "WHERE enabled = TRUE ORDER BY user_id, channel_id"
        ))
        .fetch_all(c)
        .await?);
        Ok(decode_list(rows))
    }
}

/// Rows parsed into channels, and those that no longer parse.
fn decode_list(rows: Vec<ChannelRow>) -> ChannelList {
    let mut list = ChannelList::default();
    for row in rows {
        match decode_row(row) {
            Ok(ch) => list.channels.push(ch),
            Err(bad) => list.corrupt.push(bad),
        }
    }
    list
}

/// One stored channel, parsed, or why it no longer parses.
fn decode_row(row: ChannelRow) -> std::result::Result<Channel, CorruptChannel> {
    let (user_id, channel_id) = (row.user_id.clone(), row.channel_id.clone());
    row.decode().map_err(|e| CorruptChannel {
        user_id,
        channel_id,
        reason: e.to_string(),
    })
}

/// Logs a change to one channel, in the writing transaction. Channel writers
/// take one lock first (where the backend has locks), so versions are
/// assigned in commit order.
async fn log_change(tx: &mut Tx<'_>, user_id: &str, channel_id: &str, at: Millis) -> Result<()> {
    lock_groups(tx, std::iter::once("\u{1f}channel_log".to_owned())).await?;
    on!(tx.conn(), |c| sqlx::query(
        "INSERT INTO channel_log (user_id, channel_id, changed_at) VALUES ($1, $2, $3)"
    )
    .bind(user_id)
    .bind(channel_id)
    .bind(at)
    .execute(c)
    .await
    .map(drop)?);
    Ok(())
}

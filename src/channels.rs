//! Saving a channel: the one path that `PUT /v1/users/{user_id}/channels/{channel_id}`
//! and the imports take, so a channel is checked the same way wherever it comes from.

use crate::clock::Clock;
use crate::config::Settings;
use crate::dispatch::{Registry, ValidateContext};
use crate::domain::{Channel, ChannelSource};
use crate::outbound::Guard;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The channel is refused; the message says why (answered as 422).
    #[error("{0}")]
    Invalid(String),
    /// The channel belongs to another source (answered as 409).
    #[error("{0}")]
    Owned(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A saved channel, as the store now holds it.
#[derive(Debug)]
pub struct Saved {
    pub created: bool,
    pub channel: Channel,
}

/// Checks `channel` (its timing, its templates on a sample notification) and
/// against the operator's configuration (outbound guard, a configured SMTP
/// server or SMS gateway), and creates or replaces it.
/// Secrets sent back as the placeholder keep their stored values; the save is
/// stamped with `clock`'s time.
pub async fn save(
    store: &Store,
    registry: &Registry,
    settings: &Settings,
    clock: &Clock,
    mut channel: Channel,
) -> Result<Saved, SaveError> {
    channel
        .timing
        .check(settings.dedupe_window)
        .map_err(SaveError::Invalid)?;
    crate::templating::check(&channel.templates).map_err(SaveError::Invalid)?;
    match store
        .get_channel(channel.user_id.as_str(), channel.channel_id.as_str())
        .await
    {
        Ok(Some(previous)) => {
            if previous.source != channel.source {
                return Err(SaveError::Owned(owned_by(&previous)));
            }
            channel.settings.keep_secrets(&previous.settings)
        }
        Ok(None) => {}
        // Whatever was stored is replaced; it has no secrets to keep.
        Err(StoreError::Corrupt(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let guard = Guard::new(settings.outbound_allow.clone());
    let ctx = ValidateContext {
        settings,
        guard: &guard,
    };
    registry
        .validate(&channel.settings, &ctx)
        .map_err(SaveError::Invalid)?;
    let now = clock.now_ms();
    channel.created_at = now;
    channel.updated_at = now;
    let created = store.put_channel(&channel).await?;
    let channel = store
        .get_channel(channel.user_id.as_str(), channel.channel_id.as_str())
        .await?
        .ok_or_else(|| StoreError::Corrupt("the channel vanished after it was saved".into()))?;
    Ok(Saved { created, channel })
}

/// Why a channel cannot be changed by anyone but its source.
pub fn owned_by(channel: &Channel) -> String {
    match channel.source {
        ChannelSource::Consul => format!(
            "channel {}/{} is managed by Consul (source \"consul\"): change or delete it there, \
             under users/{}/alarms/",
            channel.user_id, channel.channel_id, channel.user_id
        ),
        ChannelSource::Api => format!(
            "channel {}/{} was made through the API (source \"api\"); Consul does not replace it",
            channel.user_id, channel.channel_id
        ),
    }
}

//! Saving a channel: the one path that `PUT /v1/users/{user_id}/channels/{channel_id}`
//! and the imports take, so a channel is checked the same way wherever it comes from.

use crate::clock::Clock;
use crate::config::Settings;
use crate::dispatch::{Registry, ValidateContext};
use crate::domain::Channel;
use crate::outbound::Guard;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The channel is refused; the message says why (answered as 422).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A saved channel, as the store now holds it.
#[derive(Debug)]
pub struct Saved {
    pub created: bool,
    pub channel: Channel,
}

/// Checks `channel` against the operator's configuration (timing, outbound
/// guard, a configured SMTP server or SMS gateway) and creates or replaces it.
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
    match store
        .get_channel(channel.user_id.as_str(), channel.channel_id.as_str())
        .await
    {
        Ok(Some(previous)) => channel.settings.keep_secrets(&previous.settings),
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
